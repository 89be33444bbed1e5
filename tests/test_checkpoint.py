"""Checkpoints: .npz without pickle, bitwise resume, and damaged or mismatched files that
raise a clear ValueError and leave the model, optimizer, scheduler, EMA and trainer untouched."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import deepkern
from deepkern import checkpoint, data, models, nn, optim
from deepkern.train import Trainer

from test_train import _one_thread  # noqa: F401  (autouse: these tests train on one thread)


@pytest.fixture(scope="module")
def digits():
    (x, y), (xv, yv), _ = data.digits_splits(val_size=0.1, seed=0)
    std = data.Standardizer().fit(x)
    return (std.transform(x[:192]), y[:192]), (std.transform(xv[:64]), yv[:64])


SETUPS = {
    "adam": {},
    "adam+ema+cosine+augment": {"ema": True, "sched": "cosine", "augment": True},
    "momentum+restarts+snapshots": {"opt": "momentum", "sched": "restarts", "snapshots": True},
    "rmsprop+plateau+patience": {"opt": "rmsprop", "sched": "plateau", "patience": 50},
}


def make_trainer(setup, seed=3, channels=(4, 8)):
    """A fresh trainer for a setup: what a new process would build from the same options."""
    deepkern.manual_seed(seed)
    m = models.digits_cnn(channels=channels)
    if setup.get("opt") == "momentum":
        opt = optim.Momentum(m.parameters(), lr=0.02)
    elif setup.get("opt") == "rmsprop":
        opt = optim.RMSprop(m.parameters(), lr=1e-3, momentum=0.5)
    else:
        opt = optim.Adam(m.parameters(), lr=3e-3)
    sched = {"cosine": lambda: optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
             "restarts": lambda: optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1),
             "plateau": lambda: optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
             None: lambda: None}[setup.get("sched")]()
    ema = optim.EMA(m.parameters(), decay=0.8) if setup.get("ema") else None
    aug = data.Compose([data.RandomCrop(8, padding=1), data.GaussianNoise(0.1)]) if setup.get("augment") else None
    return Trainer(m, opt, nn.CrossEntropyLoss(label_smoothing=0.1), scheduler=sched, ema=ema, seed=seed,
                   transform=aug, snapshots=setup.get("snapshots", False), patience=setup.get("patience"),
                   progress=False)


def full_state(t):
    """Everything that decides what the trainer does next, as plain comparable values."""
    model, tree = t.state_dict()
    tree = dict(tree)
    tree["history"] = {k: v for k, v in tree["history"].items() if k != "seconds"}
    return model, tree


def assert_same(a, b, path="state"):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(map(str, a)) == set(map(str, b)), path
        bs = {str(k): v for k, v in b.items()}
        for k, v in a.items():
            assert_same(v, bs[str(k)], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", list(SETUPS))
def test_resume_is_bitwise_identical(digits, tmp_path, name):
    (x, y), val = digits
    setup = SETUPS[name]
    straight = make_trainer(setup)
    straight.fit(x, y, 4, val=val)

    first = make_trainer(setup)
    first.fit(x, y, 2, val=val)
    path = tmp_path / "ckpt.npz"
    first.save_checkpoint(path, extra={"note": "half way", "mean": np.arange(3.0)})

    deepkern.manual_seed(12345)                       # a different process: another global stream...
    resumed = make_trainer(setup, seed=7)             # ...and other initial weights and seed
    extra = resumed.load_checkpoint(path)
    assert extra["note"] == "half way" and np.array_equal(extra["mean"], np.arange(3.0))
    assert resumed.epoch == 2 and resumed.seed == 3
    resumed.fit(x, y, 4, val=val)

    sm, st = full_state(straight)
    rm, rt = full_state(resumed)
    assert_same(sm, rm, "model")
    assert_same(st, rt)
    if setup.get("snapshots"):
        assert len(resumed.snapshots) == 4


def test_file_is_plain_npz_with_named_model_arrays(digits, tmp_path):
    (x, y), val = digits
    t = make_trainer(SETUPS["adam+ema+cosine+augment"])
    t.fit(x, y, 1, val=val)
    path = tmp_path / "c.npz"
    t.save_checkpoint(path)
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        np.testing.assert_array_equal(z["model/0.weight"], t.model[0].weight.data)
        meta = json.loads(str(z["__deepkern_checkpoint__"]))
    assert "model/1.running_mean" in names and "model/10.bias" in names
    assert meta["format"] == "deepkern.checkpoint" and meta["version"] == 1
    assert all(n.startswith(("model/", "state/", "__deepkern")) for n in names)
    assert not list(tmp_path.glob(".ckpt-*"))                     # the temporary file was renamed


def test_fit_saves_a_checkpoint_every_epoch(digits, tmp_path):
    (x, y), val = digits
    path = tmp_path / "run.npz"
    t = make_trainer(SETUPS["adam"])
    t.fit(x, y, 2, val=val, checkpoint=path, checkpoint_extra={"k": 1})
    _, tree = checkpoint.load(path)
    assert tree["epoch"] == 2 and tree["extra"] == {"k": 1}


# ---------------------------------------------------------------------------- damaged files

@pytest.fixture
def saved(digits, tmp_path):
    """(path of a checkpoint after 1 epoch, a trainer after 2 epochs to load it into)."""
    (x, y), val = digits
    setup = SETUPS["adam+ema+cosine+augment"]
    a = make_trainer(setup)
    a.fit(x, y, 1, val=val)
    path = tmp_path / "good.npz"
    a.save_checkpoint(path)
    b = make_trainer(setup, seed=5)
    b.fit(x, y, 2, val=val)
    return path, b


def snapshot(t):
    model, tree = full_state(t)
    return model, tree, t.scheduler.state_dict(), t.optimizer.param_groups[0]["lr"]


def assert_untouched(t, before):
    after = snapshot(t)
    assert_same(before[0], after[0], "model")
    assert_same(before[1], after[1], "trainer")
    assert_same(before[2], after[2], "scheduler")
    assert before[3] == after[3]


def _rewrite(src, dst, drop=(), replace=None):
    """Copy the zip entries of src to dst, without `drop`, with `replace` {name: bytes}."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            body = (replace or {}).get(info.filename, zin.read(info.filename))
            zout.writestr(info.filename, body)


def test_truncated_files(saved, tmp_path):
    path, t = saved
    raw = path.read_bytes()
    before = snapshot(t)
    for cut in (0, 10, len(raw) // 3, len(raw) // 2, len(raw) - 30, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="load_checkpoint"):
            t.load_checkpoint(bad)
        assert_untouched(t, before)


def test_corrupted_bytes(saved, tmp_path):
    path, t = saved
    raw = bytearray(path.read_bytes())
    good = make_trainer(SETUPS["adam+ema+cosine+augment"])
    good.load_checkpoint(path)
    rng = np.random.default_rng(0)
    failed = 0
    for pos in rng.choice(len(raw), 40, replace=False):
        bad = tmp_path / "flip.npz"
        flipped = bytearray(raw)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        before = snapshot(t)
        try:
            t.load_checkpoint(bad)
        except ValueError as e:
            assert "load_checkpoint" in str(e)
            assert_untouched(t, before)
            failed += 1
        else:
            # the flip hit a byte nothing reads (a timestamp in a zip header): then the
            # loaded state is exactly the saved one (the CRC guards every entry's bytes)
            assert_untouched(t, snapshot(good))
    assert failed >= 30


def test_not_a_checkpoint(saved, tmp_path):
    path, t = saved
    before = snapshot(t)
    other = tmp_path / "data.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a deepkern checkpoint"):
        t.load_checkpoint(other)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npz"):
        t.load_checkpoint(text)
    obj = tmp_path / "pickle.npz"
    np.savez(obj, __deepkern_checkpoint__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        t.load_checkpoint(obj)
    with pytest.raises(FileNotFoundError):
        t.load_checkpoint(tmp_path / "missing.npz")
    assert_untouched(t, before)


def test_missing_entries_and_bad_metadata(saved, tmp_path):
    path, t = saved
    before = snapshot(t)
    with zipfile.ZipFile(path) as z:
        meta = json.loads(str(np.load(z.open("__deepkern_checkpoint__.npy"))))
        state_names = [n for n in z.namelist() if n.startswith("state/")]
    cases = {
        "missing model entries": {"drop": ["model/4.weight.npy"]},
        "incomplete or malformed": {"drop": [state_names[0]]},
    }
    for what, kw in cases.items():
        bad = tmp_path / "bad.npz"
        _rewrite(path, bad, **kw)
        with pytest.raises(ValueError, match=what):
            t.load_checkpoint(bad)
        assert_untouched(t, before)

    def with_meta(m, name):
        import io
        buf = io.BytesIO()
        np.save(buf, np.array(json.dumps(m)))
        bad = tmp_path / name
        _rewrite(path, bad, replace={"__deepkern_checkpoint__.npy": buf.getvalue()})
        return bad

    for change, what in (({"version": 99}, "version 99"), ({"format": "other"}, "not a deepkern checkpoint"),
                         ({"model": "x"}, "malformed metadata")):
        with pytest.raises(ValueError, match=what):
            t.load_checkpoint(with_meta({**meta, **change}, "meta.npz"))
        assert_untouched(t, before)
    broken = dict(meta)
    broken["tree"] = {"__dict__": [["epoch", -1]]}
    with pytest.raises(ValueError, match="malformed checkpoint"):
        t.load_checkpoint(with_meta(broken, "tree.npz"))
    assert_untouched(t, before)


# ---------------------------------------------------------------------------- mismatches

def test_mismatched_model(saved):
    path, _ = saved
    t = make_trainer(SETUPS["adam+ema+cosine+augment"], channels=(4, 16))
    before = snapshot(t)
    with pytest.raises(ValueError, match=r"'4.weight' has shape \(8, 4, 3, 3\) in the checkpoint, \(16, 4, 3, 3\)"):
        t.load_checkpoint(path)
    assert_untouched(t, before)


def test_mismatched_dtype_and_keys(saved, tmp_path):
    path, _ = saved
    deepkern.manual_seed(0)
    m = models.digits_cnn(channels=(4, 8), dtype=np.float64)
    t = Trainer(m, optim.Adam(m.parameters()), progress=False,
                scheduler=None, ema=optim.EMA(m.parameters()))
    with pytest.raises(ValueError, match="float32 in the checkpoint, float64 in the model"):
        t.load_checkpoint(path)
    deepkern.manual_seed(0)
    m2 = nn.Sequential(models.digits_cnn(channels=(4, 8)))         # keys "0.0.weight"...
    t2 = Trainer(m2, optim.Adam(m2.parameters()), progress=False)
    with pytest.raises(ValueError, match="missing '0.0.weight'"):
        t2.load_checkpoint(path)


def test_mismatched_components(saved):
    path, _ = saved
    deepkern.manual_seed(0)

    def trainer(opt_cls=optim.Adam, sched=True, ema=True):
        m = models.digits_cnn(channels=(4, 8))
        opt = opt_cls(m.parameters(), lr=0.01)
        s = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4) if sched == True else (  # noqa: E712
            optim.lr_scheduler.StepLR(opt, 2) if sched == "step" else None)
        return Trainer(m, opt, scheduler=s, ema=optim.EMA(m.parameters()) if ema else None, progress=False)

    for t, what in ((trainer(optim.SGD), "optimizer is Adam, this trainer's is SGD"),
                    (trainer(sched=None), "has a learning-rate scheduler, this trainer has none"),
                    (trainer(sched="step"), "scheduler is CosineAnnealingLR, this trainer's is StepLR"),
                    (trainer(ema=False), "saved with an EMA, this trainer has none")):
        before = snapshot(t) if t.scheduler is not None else None
        model_before = t.model.state_dict(copy=True)
        with pytest.raises(ValueError, match=what):
            t.load_checkpoint(path)
        if before is not None:
            assert_untouched(t, before)
        assert_same(model_before, t.model.state_dict())


def test_bad_component_state_rolls_back(saved, tmp_path):
    """A checkpoint whose optimizer loads but whose EMA does not: the optimizer is restored."""
    path, t = saved
    model_state, tree = checkpoint.load(path)
    before = snapshot(t)
    bad_ema = dict(tree)
    bad_ema["ema"] = dict(tree["ema"])
    bad_ema["ema"]["shadow"] = [np.zeros(3, np.float32)] + list(tree["ema"]["shadow"][1:])
    p1 = tmp_path / "ema.npz"
    checkpoint.save(p1, model_state, bad_ema)
    with pytest.raises(ValueError, match="EMA state_dict shadow"):
        t.load_checkpoint(p1)
    assert_untouched(t, before)

    bad_opt = dict(tree)
    st = {k: dict(v) for k, v in tree["optimizer"]["state"]["state"].items()}
    first = next(iter(st))
    st[first]["exp_avg"] = np.zeros((2, 2), np.float32)
    bad_opt["optimizer"] = {"class": "Adam", "state": {"state": st,
                                                      "param_groups": tree["optimizer"]["state"]["param_groups"]}}
    p2 = tmp_path / "opt.npz"
    checkpoint.save(p2, model_state, bad_opt)
    with pytest.raises(ValueError, match="exp_avg"):
        t.load_checkpoint(p2)
    assert_untouched(t, before)

    bad_sched = dict(tree)
    bad_sched["scheduler"] = {"class": "CosineAnnealingLR", "state": {"T_max": 4}}
    p3 = tmp_path / "sched.npz"
    checkpoint.save(p3, model_state, bad_sched)
    with pytest.raises(ValueError, match="scheduler state has keys"):
        t.load_checkpoint(p3)
    assert_untouched(t, before)


def test_save_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError):
        checkpoint.save(tmp_path / "x.npz", {"w": np.zeros(2)}, {"f": object()})
    with pytest.raises(TypeError, match="model state"):
        checkpoint.save(tmp_path / "x.npz", {"w": [1, 2]}, {})
    assert not os.listdir(tmp_path)                                   # no partial file left behind
