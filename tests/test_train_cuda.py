"""deepkern.train with --backend cuda, on machines without a GPU: the Trainer's device path and
the commands run end to end on a NumPy-backed CuPy whose _cuda kernels are emulated on the
host (tests/cuda_host/fake_cupy.py), and match the CPU run. What this cannot check: speed, or
anything about a real GPU (the same code then runs on real CuPy arrays)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import deepkern
from deepkern import data, models, nn, optim
from deepkern.cli import main
from deepkern.nn import _array as NA
from deepkern.train import Trainer, benchmark_epoch


@pytest.fixture
def fake(monkeypatch):
    from cuda_host import fake_cupy
    return fake_cupy.install(monkeypatch)


@pytest.fixture(scope="module")
def small():
    (x, y), (xv, yv), _ = data.digits_splits(val_size=0.1, seed=0)
    std = data.Standardizer().fit(x)
    return (std.transform(x[:96]), y[:96]), (std.transform(xv[:40]), yv[:40])


def _trainer(device, **kw):
    deepkern.manual_seed(0)
    m = models.digits_cnn(channels=(4, 8))
    if device:
        NA.module_to(m, device)
    return Trainer(m, optim.Adam(m.parameters(), lr=1e-2), nn.CrossEntropyLoss(label_smoothing=0.1),
                   batch_size=32, progress=False, device=device, **kw)


def test_trainer_on_cuda_arrays_matches_the_cpu(fake, small, tmp_path):
    cp = fake[0]
    (x, y), val = small
    runs = []
    for device in (None, "cuda"):
        t = _trainer(device, ema=None, patience=5)
        t.fit(x, y, 2, val=val)
        runs.append(t)
    cpu, gpu = runs
    assert all(isinstance(p.data, cp.ndarray) for p in gpu.model.parameters())
    np.testing.assert_allclose(gpu.history["train_loss"], cpu.history["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(gpu.history["val_loss"], cpu.history["val_loss"], rtol=1e-4)
    assert gpu.history["train_acc"] == cpu.history["train_acc"]
    proba = gpu.predict_proba(val[0])
    assert isinstance(proba, np.ndarray) and proba.shape == (len(val[1]), 10)
    # a checkpoint of the cuda run holds host arrays and resumes into a cuda trainer
    path = tmp_path / "gpu.npz"
    gpu.save_checkpoint(path)
    again = _trainer("cuda", patience=5)
    again.load_checkpoint(path)
    assert again.epoch == 2 and isinstance(next(again.model.parameters()).data, cp.ndarray)
    for (k, a), b in zip(gpu.model.state_dict().items(), again.model.state_dict().values()):
        np.testing.assert_array_equal(cp.asnumpy(a), cp.asnumpy(b), err_msg=k)


def test_trainer_cuda_ema_and_snapshots(fake, small):
    (x, y), val = small
    t = _trainer("cuda")
    t.ema = optim.EMA(t.model.parameters(), decay=0.5)
    before = [fake[0].asnumpy(p.data) for p in t.model.parameters()]
    t.fit(x, y, 1, val=val)
    weights = [fake[0].asnumpy(p.data) for p in t.model.parameters()]
    assert not all(np.array_equal(a, b) for a, b in zip(before, weights))
    t.evaluate(*val)                                           # swaps the averages in and back
    for p, w in zip(t.model.parameters(), weights):
        np.testing.assert_array_equal(fake[0].asnumpy(p.data), w)


def test_trainer_device_errors(small, monkeypatch):
    from deepkern import _backend
    deepkern.manual_seed(0)
    m = models.digits_cnn(channels=(2, 2))
    with pytest.raises(ValueError, match="device"):
        Trainer(m, optim.Adam(m.parameters()), device="tpu")
    monkeypatch.setattr(_backend, "_cuda_state", {"module": None, "reason": "test: no driver here"})
    with pytest.raises(RuntimeError, match="test: no driver here"):
        Trainer(m, optim.Adam(m.parameters()), device="cuda")


def test_trainer_refuses_a_model_left_on_the_host(fake):
    deepkern.manual_seed(0)
    m = models.digits_cnn(channels=(2, 2))
    with pytest.raises(ValueError, match="module_to"):
        Trainer(m, optim.Adam(m.parameters()), device="cuda")


def _tiny_digits(tmp_path):
    """120 digits as a .npz: the commands' --data, so the emulated kernels finish quickly."""
    (x, y), _, _ = data.digits_splits(val_size=0.1, seed=0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x[:120, 0], y=y[:120])
    return str(path)


def test_train_command_backend_cuda(fake, capsys, tmp_path):
    ck = tmp_path / "c.npz"
    tiny = _tiny_digits(tmp_path)
    code = main(["train", "--backend", "cuda", "--epochs", "1", "--quiet", "--channels", "4,4",
                 "--ema-decay", "0.9", "--save", str(ck), "--data", tiny])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "cuda backend" in out
    assert re.match(r"^test accuracy \d+\.\d%$", out.strip().splitlines()[-1])
    code = main(["train", "--backend", "cuda", "--epochs", "2", "--quiet", "--channels", "4,4",
                 "--ema-decay", "0.9", "--resume", str(ck), "--data", tiny])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "resumed at epoch 1" in out


def test_finetune_and_bench_hook_on_cuda(fake, capsys):
    code = main(["finetune", "--backend", "cuda", "--epochs", "1", "--finetune-epochs", "2", "--repeats", "1",
                 "--shots", "3", "--channels", "2,2", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "from scratch" in out
    loss = benchmark_epoch("cuda", steps=2)()
    assert math.isfinite(loss) and loss > 0


def test_backend_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    from deepkern import _backend
    monkeypatch.setattr(_backend, "_cuda_state", {"module": None, "reason": "test: no driver here"})
    code = main(["train", "--backend", "cuda", "--epochs", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "--backend cuda" in err and "test: no driver here" in err
    with pytest.raises(RuntimeError, match="test: no driver here"):
        benchmark_epoch("cuda")
