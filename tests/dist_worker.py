"""One rank of the distributed tests (tests/test_distributed_mpi.py runs it under mpirun -n 2).

    mpirun -n 2 python tests/dist_worker.py CASE OUTDIR [ARGS...]

Each case writes what the test checks into OUTDIR (rank{r}_*.npz / .json); the assertions are
in the test, which also computes the single-process reference itself.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import deepkern
import deepkern.distributed as dist
from deepkern import nn, optim

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dist_cases import CASES, batches, make_model, make_optimizer  # noqa: E402


def save(outdir, name, arrays):
    np.savez(os.path.join(outdir, f"rank{dist.rank()}_{name}.npz"), **arrays)


def case_equivalence(outdir, model_kind, opt_kind, dtype):
    """k steps at per-rank batch B/R over DistributedLoader; final parameters and buffers."""
    dtype = np.dtype(dtype)
    g = dist.init(timeout=60)
    model = make_model(model_kind, dtype, seed=0)
    if model_kind == "bn":
        model = dist.convert_sync_batchnorm(model)
    ddp = dist.DistributedDataParallel(model, bucket_mb=0.002)       # several buckets even here
    opt = make_optimizer(opt_kind, model.parameters())
    crit = nn.CrossEntropyLoss()
    losses = []
    for xb, yb in batches(dtype, per_rank=True, rank=g.rank, size=g.size):
        loss = crit(ddp(xb), yb)
        ddp.zero_grad()
        ddp.backward(crit.backward())
        opt.step()
        losses.append(dist.all_reduce_sum([loss])[0] / g.size)
    save(outdir, f"eq_{model_kind}_{opt_kind}_{dtype.name}", dict(model.state_dict(), losses=np.array(losses)))
    with open(os.path.join(outdir, f"rank{g.rank}_buckets.json"), "w") as f:
        json.dump(ddp.buckets, f)


def case_equivalence_all(outdir):
    for m, o, d in CASES:
        case_equivalence(outdir, m, o, d)


def case_broadcast(outdir):
    """Different initial weights per rank; after DistributedDataParallel every rank holds rank 0's."""
    deepkern.manual_seed(100 + dist.rank())
    model = make_model("bn", np.float32, seed=100 + dist.rank())
    rng = np.random.default_rng(dist.rank())
    model[1].running_mean[...] = rng.standard_normal(model[1].num_features)    # buffers too
    save(outdir, "before", model.state_dict())
    dist.DistributedDataParallel(model)
    save(outdir, "after", model.state_dict())
    # allreduce_gradients averages (the functional, no overlap), metrics reduce
    for p in model.parameters():
        p.grad = np.full(p.shape, float(dist.rank() + 1), p.dtype)
    dist.allreduce_gradients(model)
    save(outdir, "avg_grads", {str(i): p.grad for i, p in enumerate(model.parameters())})
    loss, acc, n = dist.reduce_metrics(2.0 * (dist.rank() + 1), dist.rank() + 1, 4)
    with open(os.path.join(outdir, f"rank{dist.rank()}_metrics.json"), "w") as f:
        json.dump([loss, acc, n, dist.world_size()], f)


def case_mismatch(outdir):
    """Rank 1's model has other shapes: every rank must end with a DistributedError."""
    model = make_model("plain", np.float32, seed=0, width=4 if dist.rank() == 0 else 5)
    try:
        dist.DistributedDataParallel(model)
    except dist.DistributedError as e:
        print(f"[rank {dist.rank()}] DistributedError: {e}", flush=True)
        sys.exit(3)
    print(f"[rank {dist.rank()}] no error", flush=True)


def case_raise(outdir):
    """Rank 1 raises in the middle of training; rank 0 is (or will be) waiting in an allreduce."""
    dist.init(timeout=120)

    def main():
        model = make_model("plain", np.float32, seed=0)
        ddp = dist.DistributedDataParallel(model)
        opt = optim.SGD(model.parameters(), lr=0.1)
        crit = nn.CrossEntropyLoss()
        for step, (xb, yb) in enumerate(batches(np.float32, per_rank=True, rank=dist.rank(), size=2) * 20):
            if dist.rank() == 1 and step == 3:
                raise ValueError("boom at step 3")
            crit(ddp(xb), yb)
            ddp.zero_grad()
            ddp.backward(crit.backward())
            opt.step()
        print(f"[rank {dist.rank()}] finished without error", flush=True)

    dist.run(main)


def case_timeout(outdir):
    """Rank 1 never joins the allreduce (stuck for a minute): rank 0 times out with a message."""
    dist.init(timeout=2)

    def main():
        if dist.rank() == 1:
            time.sleep(60)
        dist.all_reduce_sum([1.0])

    dist.run(main)


if __name__ == "__main__":
    case, outdir, *rest = sys.argv[1:]
    deepkern.set_num_threads(1)
    globals()[f"case_{case}"](outdir, *rest)
