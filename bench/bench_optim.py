"""The optimizer steps of `deepkern bench`: 10M float32 parameters in 20 tensors, every
optimizer of API.md, against PyTorch's fastest CPU mode (fused, foreach or for-loop).

    python bench/bench_optim.py [any deepkern bench option, e.g. --json optim.json]
"""

import sys

from deepkern.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["--ops", "optim", *sys.argv[1:]]))
