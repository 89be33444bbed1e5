"""deepkern.distributed in one process: the sampler's shards, the world of size 1, bucket
planning, SyncBatchNorm and DistributedDataParallel degenerating to the plain layers, bad
input. (The 2-rank tests are in test_distributed_mpi.py.) These run without mpi4py too."""

from __future__ import annotations

import os
import sys
import time
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import assert_bitwise, assert_close

import deepkern
import deepkern.distributed as dist
from deepkern import models, nn, optim
from deepkern.data import DataLoader


# ---------------------------------------------------------------------------- sampler

@given(n=st.integers(1, 300), R=st.integers(1, 6), seed=st.integers(0, 2**32), epoch=st.integers(0, 50),
       shuffle=st.booleans())
def test_sampler_shards_partition_each_epoch(n, R, seed, epoch, shuffle):
    """Equal shard sizes; disjoint and exactly covering when R divides n; otherwise every
    sample is covered and fewer than R appear twice (padding) -- or, with drop_last, disjoint
    shards leaving fewer than R out."""
    shards = [dist.DistributedSampler(n, R, r, shuffle=shuffle, seed=seed).indices(epoch) for r in range(R)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-n // R)
    allidx = np.concatenate(shards)
    assert set(allidx.tolist()) == set(range(n))
    assert len(allidx) - n == (-n) % R                       # the padding, and nothing else, repeats
    if n >= R:
        dropped = [dist.DistributedSampler(n, R, r, shuffle=shuffle, seed=seed, drop_last=True).indices(epoch)
                   for r in range(R)]
        d = np.concatenate(dropped)
        assert len(set(d.tolist())) == len(d) == n - n % R
        assert len({len(s) for s in dropped}) == 1


def test_sampler_is_seeded_per_epoch():
    s = dist.DistributedSampler(100, 2, 0, seed=3)
    a, b, a2 = s.indices(0), s.indices(1), dist.DistributedSampler(100, 2, 0, seed=3).indices(0)
    assert not np.array_equal(a, b)
    assert_bitwise(a, a2)
    assert not np.array_equal(a, dist.DistributedSampler(100, 2, 0, seed=4).indices(0))


@pytest.mark.parametrize("R", [1, 2, 3, 4])
def test_ranks_batches_together_are_the_single_process_batches(R):
    """Rank r's j-th batch of b samples: together they are DataLoader's j-th batch of b*R."""
    n, b = 97, 5
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    y = np.arange(n)
    single = DataLoader(x, y, batch_size=b * R, shuffle=True, seed=11)
    single.set_epoch(3)
    loaders = [dist.DistributedLoader(x, y, b, seed=11, num_replicas=R, rank=r) for r in range(R)]
    for ld in loaders:
        ld.set_epoch(3)
    per_rank = [list(ld) for ld in loaders]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(loaders[0])
    for j, (xb, yb) in enumerate(single):
        got = np.concatenate([per_rank[r][j][1] for r in range(R)])
        if (j + 1) * b * R <= n:                              # the padded last batch aside
            assert sorted(got.tolist()) == sorted(yb.tolist())


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match="out of range"):
        dist.DistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match="leaves nothing"):
        dist.DistributedSampler(1, 2, 0, drop_last=True)
    with pytest.raises(TypeError):
        dist.DistributedSampler(10.5, 2, 0)
    with pytest.raises(ValueError):
        dist.DistributedLoader(np.zeros((3, 1)), np.zeros(4, int), 2)


# ---------------------------------------------------------------------------- a world of size 1

def test_world_of_size_one_without_mpirun():
    g = dist.init()
    assert (dist.rank(), dist.world_size()) == (0, 1) and g.size == 1
    buf = np.arange(4.0)
    g.allreduce_(buf)
    assert_bitwise(buf, np.arange(4.0))
    assert dist.reduce_metrics(3.0, 2, 4) == (0.75, 0.5, 4)


def test_without_mpi4py_the_world_has_size_one_and_the_command_says_what_to_install(monkeypatch, capsys):
    from deepkern.cli import main
    from deepkern.distributed import _comm
    monkeypatch.setattr(_comm, "_GROUP", None)
    monkeypatch.setattr(_comm, "_mpi_available", lambda: False)
    assert dist.init().size == 1 and dist.init().comm is None
    monkeypatch.setattr(_comm, "_GROUP", None)
    with pytest.raises(RuntimeError, match=r"pip install 'deepkern\[mpi\]'"):
        dist.init(require_mpi=True)
    monkeypatch.setattr(_comm, "_GROUP", None)
    assert main(["train", "--distributed", "--epochs", "1", "-q"]) == 2
    assert "deepkern[mpi]" in capsys.readouterr().err


def test_open_mpi_eager_limit_is_set_before_mpi_starts_unless_the_user_chose(monkeypatch):
    import sys

    from deepkern.distributed import _comm
    key = "OMPI_MCA_btl_sm_eager_limit"
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    for k in (key, "OMPI_MCA_btl_vader_eager_limit"):
        monkeypatch.delenv(k, raising=False)
    _comm._tune_open_mpi()
    assert os.environ[key] == "32768"
    monkeypatch.setenv(key, "8192")                           # the user's value stays
    _comm._tune_open_mpi()
    assert os.environ[key] == "8192"
    monkeypatch.delenv(key)
    monkeypatch.setenv("OMPI_MCA_btl_vader_eager_limit", "4096")  # ... also under its old name
    _comm._tune_open_mpi()
    assert key not in os.environ
    monkeypatch.delenv("OMPI_MCA_btl_vader_eager_limit")
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", types.ModuleType("mpi4py.MPI"))
    _comm._tune_open_mpi()                                    # MPI already started: too late to matter
    assert key not in os.environ


class _FakeRequest:
    """Completes at a given time.monotonic()."""

    def __init__(self, at):
        self.at = at


def _fake_mpi(monkeypatch):
    """Install a stand-in mpi4py.MPI whose Testall completes requests by their deadline, and
    return a Group on a fake 2-rank communicator (no MPI is started)."""
    import sys

    mpi = types.ModuleType("mpi4py.MPI")
    mpi.Request = types.SimpleNamespace(Testall=lambda reqs: all(time.monotonic() >= r.at for r in reqs))
    mpi.Status = lambda: None
    mpi.ANY_SOURCE = -1
    pkg = types.ModuleType("mpi4py")
    pkg.MPI = mpi
    monkeypatch.setitem(sys.modules, "mpi4py", pkg)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", mpi)

    class Comm:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 2

        def Dup(self):
            return self

        def Iprobe(self, **kw):
            return False

    return Comm()


def test_wait_spins_long_while_peers_keep_up_and_briefly_after_a_late_one(monkeypatch):
    monkeypatch.delenv("DEEPKERN_DIST_SPIN_US", raising=False)
    from deepkern.distributed import _comm
    g = dist.Group(_fake_mpi(monkeypatch), timeout=5)
    long, short = _comm.SPIN_MAX_US * 1e-6, _comm.SPIN_MIN_US * 1e-6
    assert g.adaptive_spin and g.spin == pytest.approx(long)
    g.wait([_FakeRequest(time.monotonic() + 0.0002)], "quick")     # ends inside the spin
    assert g.spin == pytest.approx(long)
    g.wait([_FakeRequest(time.monotonic() + 0.004)], "late peer")  # outlasts it: stop holding the core
    assert g.spin == pytest.approx(short)
    for expect in (2 * short, 4 * short, 8 * short):             # doubles back, wait by wait
        g.wait([_FakeRequest(time.monotonic())], "quick")
        assert g.spin == pytest.approx(expect)
    for _ in range(10):
        g.wait([_FakeRequest(time.monotonic())], "quick")
    assert g.spin == pytest.approx(long)                          # ... up to the cap
    with pytest.raises(dist.DistributedTimeout, match="stuck"):
        dist.Group(g.comm, timeout=0.05).wait([_FakeRequest(time.monotonic() + 60)], "stuck")


def test_a_fixed_spin_from_the_environment_does_not_adapt(monkeypatch):
    monkeypatch.setenv("DEEPKERN_DIST_SPIN_US", "200")
    g = dist.Group(_fake_mpi(monkeypatch), timeout=5)
    assert not g.adaptive_spin and g.spin == pytest.approx(2e-4)
    g.wait([_FakeRequest(time.monotonic() + 0.002)], "late peer")
    assert g.spin == pytest.approx(2e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_TIMERSLACK is Linux's")
def test_a_group_of_several_ranks_asks_for_a_short_timer_slack(monkeypatch):
    import ctypes
    libc = ctypes.CDLL(None)
    before = libc.prctl(30, 0, 0, 0, 0)                           # PR_GET_TIMERSLACK, ns
    try:
        dist.Group(_fake_mpi(monkeypatch), timeout=5)
        assert libc.prctl(30, 0, 0, 0, 0) == 1000
    finally:
        libc.prctl(29, before, 0, 0, 0)


def test_group_rejects_bad_timeouts_and_arrays():
    with pytest.raises(ValueError, match="timeout"):
        dist.Group(None, timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        dist.init(timeout=-1)


def test_plan_buckets_caps_sizes_and_splits_dtypes():
    ps = [nn.Parameter(np.zeros(n, dt)) for n, dt in
          [(100, np.float32), (200, np.float32), (50, np.float64), (1000, np.float32), (10, np.float32)]]
    b = dist.plan_buckets(ps, bucket_mb=1200 / 2**20)          # 1200 bytes
    assert [[p.size for p in bk] for bk in b] == [[100, 200], [50], [1000], [10]]
    assert [p for bk in b for p in bk] == ps


def _step(model, opt, crit, xb, yb):
    loss = crit(model(xb), yb)
    model.zero_grad()
    model.backward(crit.backward())
    opt.step()
    return loss


def test_ddp_of_one_rank_trains_bitwise_like_the_model(rng):
    """With one rank the wrapper only moves the gradients into buckets: identical training."""
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    crit = nn.CrossEntropyLoss()
    runs = []
    for wrap in (False, True):
        deepkern.manual_seed(0)
        m = models.digits_cnn(dropout=0.0)
        opt = optim.Adam(m.parameters(), lr=1e-2)
        model = dist.DistributedDataParallel(m, bucket_mb=0.001) if wrap else m
        for i in range(3):
            _step(model, opt, crit, x[i * 10:(i + 1) * 10], y[i * 10:(i + 1) * 10])
        runs.append(m.state_dict(copy=True))
        if wrap:
            assert len(model.buckets) >= 3
            assert all(p.grad.base is not None for p in m.parameters())      # views of the buckets
            assert model.state_dict().keys() == m.state_dict().keys()      # no "module." prefix
            assert len(model.timings["backward"]) == 3
    for k in runs[0]:
        assert_bitwise(runs[1][k], runs[0][k], k)


def test_ddp_timings_keep_only_the_last_passes(rng, monkeypatch):
    """``timings`` holds the last TIMINGS_KEPT backward passes: a long run does not grow it."""
    from deepkern.distributed import ddp
    monkeypatch.setattr(ddp, "TIMINGS_KEPT", 4)
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    crit = nn.CrossEntropyLoss()
    model = dist.DistributedDataParallel(models.digits_cnn(dropout=0.0))
    opt = optim.SGD(model.parameters(), lr=0.1)
    for i in range(6):
        _step(model, opt, crit, x, y)
        assert len(model.timings["backward"]) == len(model.timings["exposed_comm"]) == min(i + 1, 4)
    assert all(t >= 0 for t in model.timings["backward"])


def test_ddp_zero_grad_drops_gradients_of_parameters_without_a_bucket(rng):
    """A frozen parameter at wrapping time, and one added to the model afterwards, have no
    bucket: zero_grad sets their gradients to None (the list follows the model's structure)."""
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    m[2].bias.requires_grad = False
    ddp = dist.DistributedDataParallel(m)
    m[2].bias.grad = np.ones(2, np.float32)
    ddp.zero_grad()
    assert m[2].bias.grad is None and m[0].weight.grad is not None
    m.add_module("extra", nn.Linear(2, 2))
    m.extra.weight.grad = np.ones((2, 2), np.float32)
    ddp.zero_grad()
    assert m.extra.weight.grad is None and m[2].bias.grad is None


def test_allreduce_gradients_of_one_rank_keeps_values():
    ps = [nn.Parameter(np.ones((2, 3), np.float32)), nn.Parameter(np.ones(4, np.float32))]
    ps[0].grad = np.full((2, 3), 2.0, np.float32)
    dist.allreduce_gradients(ps)
    assert_bitwise(ps[0].grad, np.full((2, 3), 2.0, np.float32))
    assert ps[1].grad is None                                  # size 1: untouched
    with pytest.raises(TypeError, match="Parameter"):
        dist.allreduce_gradients([np.zeros(3)])


def test_ddp_rejects_non_modules():
    with pytest.raises(TypeError, match="Module"):
        dist.DistributedDataParallel(np.zeros(3))
    with pytest.raises(ValueError, match="bucket_mb"):
        dist.DistributedDataParallel(nn.Linear(2, 2), bucket_mb=0)


# ---------------------------------------------------------------------------- SyncBatchNorm

@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (4, 3, 5, 5)])
def test_sync_batchnorm_of_one_rank_is_batchnorm(rng, shape):
    """World of size 1: SyncBatchNorm is BatchNorm (forward, backward, running statistics)."""
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(3)
    bn.weight.data[...] = rng.standard_normal(3)
    sync = dist.convert_sync_batchnorm(nn.Sequential(bn))[0]
    assert isinstance(sync, dist.SyncBatchNorm) and sync.weight is bn.weight
    ref = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(3)
    ref.weight.data[...] = bn.weight.data
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    assert_close(sync(x), ref(x), 1e-5, 1e-5, "forward")
    assert_close(sync.backward(g), ref.backward(g), 1e-4, 1e-5, "backward")
    assert_close(sync.running_var, ref.running_var, 1e-6, 1e-6, "running_var")


def test_sync_batchnorm_math_against_the_reference(rng):
    """The synchronized path itself (as if 1 of 1 ranks went through it), in float64, vs the
    BatchNorm reference: forward, input and parameter gradients, running statistics."""

    class OneRank:
        size, rank = 2, 0                  # claims two ranks: forces the synchronized path

        def allreduce_(self, buf, what=""):
            return buf                       # ...whose other rank contributes nothing

    x = rng.standard_normal((5, 3, 4, 4))
    g = rng.standard_normal((5, 3, 4, 4))
    sync = dist.SyncBatchNorm(3, dtype=np.float64, group=OneRank())
    ref = nn.BatchNorm2d(3, dtype=np.float64)
    for m in (sync, ref):
        m.weight.data[...] = [0.5, 2.0, -1.0]
        m.bias.data[...] = [0.1, 0.2, 0.3]
    assert_close(sync(x), ref(x), 1e-12, 1e-12, "forward")
    assert sync._sync_saved is not None
    assert_close(sync.backward(g), ref.backward(g), 1e-10, 1e-12, "input gradient")
    for k in ("weight", "bias"):
        assert_close(getattr(sync, k).grad, getattr(ref, k).grad, 1e-10, 1e-12, k)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(sync, k), getattr(ref, k), 1e-12, 1e-12, k)


def test_sync_batchnorm_bad_input():
    with pytest.raises(ValueError, match="2D, 3D or 4D"):
        dist.SyncBatchNorm(3)(np.zeros((2, 3, 1, 1, 1), np.float32))


# ---------------------------------------------------------------------------- the trainer

def test_distributed_trainer_of_one_rank_matches_trainer():
    """One rank: the same history and weights as Trainer (size-1 hooks are the Trainer's)."""
    from deepkern.train import Trainer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    out = []
    for cls in (Trainer, dist.DistributedTrainer):
        deepkern.manual_seed(0)
        m = models.digits_cnn()
        t = cls(m, optim.Adam(m.parameters(), lr=1e-2), batch_size=16, progress=False, seed=3)
        t.fit(x, y, 2, val=(x[:20], y[:20]))
        out.append((t.history, m.state_dict(copy=True)))
    h0, h1 = out[0][0], out[1][0]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert h0[k] == h1[k], k
    for k in out[0][1]:
        assert_bitwise(out[1][1][k], out[0][1][k], k)


def test_cli_has_the_distributed_options(capsys):
    from deepkern.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--distributed" in out and "--sync-bn" in out and "--bucket-mb" in out


def test_cuda_path_imports_and_falls_back_to_mpi_without_cupy(monkeypatch):
    """The NCCL path never ran (no GPU here): it imports, and without CuPy CUDA buckets go
    through MPI with host copies."""
    import sys
    from deepkern.distributed import cuda
    monkeypatch.setitem(sys.modules, "cupy", None)          # import cupy -> ImportError
    r = cuda.cuda_reducer(dist.init())
    assert isinstance(r, cuda.HostStagedReducer)
    assert callable(cuda.NcclReducer)


def test_progress_thread_by_default_only_with_a_cpu_to_spare(monkeypatch):
    from deepkern.distributed import ddp
    monkeypatch.setattr(deepkern, "get_num_threads", lambda: 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)   # mpirun --bind-to core
    assert not ddp._spare_cpu()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert ddp._spare_cpu()
    monkeypatch.setattr(deepkern, "get_num_threads", lambda: 3)                   # the kernels use them all
    assert not ddp._spare_cpu()
