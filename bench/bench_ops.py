"""The layer ops of `deepkern bench`: conv2d, pooling, batch norm, dropout, relu.

    python bench/bench_ops.py [any deepkern bench option, e.g. --backend cpu,torch --json ops.json]
"""

import sys

from deepkern.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["--ops", "conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "dropout", "relu",
                           *sys.argv[1:]]))
