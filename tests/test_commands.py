"""The train, compare and finetune commands, with tiny settings (seconds each)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from deepkern.cli import main

ACC = re.compile(r"^test accuracy (\d+\.\d)%$")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_accuracy(out):
    m = ACC.match(out.strip().splitlines()[-1])
    assert m, f"the last line is not the test accuracy: {out.strip().splitlines()[-1]!r}"
    return float(m.group(1))


def test_train_command_in_a_subprocess():
    """`deepkern train` as a user runs it; the last line states the test accuracy."""
    p = subprocess.run([sys.executable, "-m", "deepkern", "train", "--epochs", "2", "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "deepkern train: digits 8x8 (1,294 train / 144 val / 359 test, 10 classes)" in p.stdout
    assert "epoch 2/2" in p.stdout
    assert last_accuracy(p.stdout) > 80.0
    assert "step" in p.stderr                                      # the progress bar


def test_train_options_save_resume(capsys, tmp_path):
    ck = tmp_path / "run.npz"
    code, out, _ = run(capsys, "train", "--epochs", "1", "--quiet", "--save", str(ck), "--optimizer", "momentum",
                       "--schedule", "cosine", "--ema-decay", "0.9", "--batch-size", "128", "--channels", "4,8")
    assert code == 0 and ck.exists() and "epoch 1/1" not in out     # --quiet: no epoch lines
    assert "Momentum lr 0.01" in out and "CosineAnnealingLR" in out and "EMA 0.9" in out
    acc1 = last_accuracy(out)
    code, out, _ = run(capsys, "train", "--epochs", "2", "--quiet", "--resume", str(ck), "--optimizer", "momentum",
                       "--schedule", "cosine", "--ema-decay", "0.9", "--batch-size", "128", "--channels", "4,8")
    assert code == 0 and "resumed at epoch 1" in out and "trained 1 epochs" in out
    assert last_accuracy(out) >= 0 and acc1 >= 0
    # a checkpoint of another architecture: a clear error, exit code 2
    code, _, err = run(capsys, "train", "--epochs", "2", "--quiet", "--resume", str(ck), "--optimizer", "momentum",
                       "--schedule", "cosine", "--ema-decay", "0.9", "--channels", "4,16")
    assert code == 2 and "does not match this model" in err


@pytest.mark.parametrize("extra", [["--augment", "--scale", "0.1", "--rotate", "5", "--jitter", "0.1"],
                                   ["--snapshots", "--cycle", "1"],
                                   ["--patience", "1", "--schedule", "plateau", "--clip-norm", "1.0"],
                                   ["--backend", "numpy", "--channels", "2,2"]])
def test_train_option_combinations(capsys, extra):
    code, out, err = run(capsys, "train", "--epochs", "2", "--quiet", *extra)
    assert code == 0, err
    last_accuracy(out)
    if "--snapshots" in extra:
        assert "of the 2 snapshots averaged" in out
    if "--backend" in extra:
        assert "numpy backend" in out


def test_train_errors(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--backend", "cuda", "--epochs", "1")
    assert code == 2 and "cuda" in err
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "nothing.npz"), "--epochs", "1")
    assert code == 2 and "no such file" in err
    bad = tmp_path / "feat.npz"
    np.savez(bad, x=np.zeros((20, 5), np.float32), y=np.arange(20) % 2)
    code, _, err = run(capsys, "train", "--data", str(bad), "--epochs", "1")
    assert code == 2 and "needs images" in err
    with pytest.raises(SystemExit):
        main(["train", "--batch-size", "0"])
    capsys.readouterr()


def test_train_on_an_npz_file(capsys, tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(200) % 3
    x = rng.standard_normal((200, 12, 12)).astype(np.float32) + 3 * y[:, None, None]   # learnable
    path = tmp_path / "toy.npz"
    np.savez(path, x=x, y=y)
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "8", "--quiet", "--channels", "4,4")
    assert code == 0, err
    assert "toy.npz 12x12 (144 train / 16 val / 40 test, 3 classes)" in out
    assert last_accuracy(out) > 60


def test_plot(capsys, tmp_path, monkeypatch):
    png = tmp_path / "curves.png"
    try:
        import matplotlib  # noqa: F401
        have = True
    except ImportError:
        have = False
    if have:
        code, out, _ = run(capsys, "train", "--epochs", "2", "--quiet", "--channels", "2,2", "--plot", str(png))
        assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)             # as if it were not installed
    code, out, err = run(capsys, "train", "--epochs", "2", "--quiet", "--plot", str(tmp_path / "x.png"))
    assert code == 2 and "pip install 'deepkern[plot]'" in err and out == ""


def test_compare_command(capsys, tmp_path):
    code, out, err = run(capsys, "compare", "--epochs", "1", "--quiet", "--channels", "2,4",
                         "--optimizers", "sgd,adam,adadelta")
    assert code == 0, err
    rows = [l for l in out.splitlines() if l.startswith("| ") and "%" in l]
    assert [r.split("|")[1].strip() for r in rows] == ["SGD", "Adam", "Adadelta"]
    assert "| optimizer | lr | train loss (epoch 1) | val loss | test accuracy | time (s) |" in out
    code, _, err = run(capsys, "compare", "--optimizers", "sgd,lbfgs", "--epochs", "1")
    assert code == 2 and "lbfgs" in err


def test_compare_all_eight_with_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    code, out, err = run(capsys, "compare", "--epochs", "2", "--quiet", "--channels", "2,2", "--plot", str(png))
    assert code == 0, err
    names = [l.split("|")[1].strip() for l in out.splitlines() if l.startswith("| ") and "%" in l]
    assert names == ["SGD", "Momentum", "NAG", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"]
    assert png.stat().st_size > 10_000


def test_finetune_command(capsys):
    code, out, err = run(capsys, "finetune", "--epochs", "2", "--finetune-epochs", "3", "--repeats", "2",
                         "--shots", "3", "--quiet", "--channels", "4,8")
    assert code == 0, err
    assert "pretrained on digits 0-4" in out
    rows = [l for l in out.splitlines() if l.startswith("| ") and "%" in l]
    assert len(rows) == 4 and rows[0].startswith("| from scratch") and "frozen" in rows[1]
    assert out.strip().splitlines()[-1].startswith("transfer learning:")
    code, _, err = run(capsys, "finetune", "--shots", "500", "--epochs", "1", "--quiet")
    assert code == 2 and "fewer than --shots 500" in err


def test_threads_default_and_restore(capsys):
    """Small images train on one thread unless --threads says otherwise; the caller's thread
    count is back afterwards (also after an error)."""
    import deepkern
    before = deepkern.get_num_threads()
    deepkern.set_num_threads(2)
    try:
        code, out, _ = run(capsys, "train", "--epochs", "1", "--quiet", "--channels", "2,2")
        assert code == 0 and "cpu backend, 1 thread," in out
        assert deepkern.get_num_threads() == 2
        code, out, _ = run(capsys, "train", "--epochs", "1", "--quiet", "--channels", "2,2", "--threads", "2")
        assert code == 0 and "cpu backend, 2 threads," in out
        code, _, err = run(capsys, "train", "--epochs", "1", "--quiet", "--threads", "3", "--data", "/nonexistent.npz")
        assert code == 2 and deepkern.get_num_threads() == 2
    finally:
        deepkern.set_num_threads(before)
