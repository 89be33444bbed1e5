"""deepkern.nn against torch.nn (optional: skipped without torch): the same state_dict keys,
weights loaded across, and the same forward and backward for a whole CNN."""

import numpy as np
import pytest

import deepkern.nn as nn
from conftest import assert_close

torch = pytest.importorskip("torch")


def models(dropout=0.0):
    ours = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * 2 * 2, 5), nn.Sigmoid(), nn.Linear(5, 3))
    t = torch.nn
    theirs = t.Sequential(
        t.Conv2d(1, 6, 3, padding=1), t.BatchNorm2d(6), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(6, 8, 3, padding=1, bias=False), t.BatchNorm2d(8), t.ReLU(), t.AvgPool2d(2),
        t.Flatten(), t.Dropout(dropout), t.Linear(8 * 2 * 2, 5), t.Sigmoid(), t.Linear(5, 3))
    return ours, theirs


def test_same_state_dict_keys_shapes_and_dtypes():
    ours, theirs = models()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == tuple(b[k].shape), k
        assert a[k].dtype == b[k].numpy().dtype, k


def test_pytorch_weights_load_and_give_the_same_results(rng):
    ours, theirs = models()
    theirs.train()
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    theirs(torch.from_numpy(x))                       # move PyTorch's running statistics
    ours.load_state_dict({k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()})
    for mode in ("eval", "train"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = theirs(tx)
        y = ours(x)
        assert_close(y, ty.detach().numpy(), 1e-5, 1e-5, f"{mode} output")
        g = rng.standard_normal(y.shape).astype(np.float32)
        theirs.zero_grad()
        ty.backward(torch.from_numpy(g))
        ours.zero_grad()
        gx = ours.backward(g)
        assert_close(gx, tx.grad.numpy(), 1e-4, 1e-5, f"{mode} grad_x")
        for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert name == tname
            assert_close(p.grad, tp.grad.numpy(), 1e-4, 1e-5, f"{mode} {name}.grad")
    # running statistics after a training forward: same update rule (unbiased variance)
    for k in ("1.running_mean", "1.running_var", "5.running_var", "1.num_batches_tracked"):
        assert_close(ours.state_dict()[k], theirs.state_dict()[k].numpy(), 1e-5, 1e-6, k)


def test_our_weights_load_into_pytorch(rng):
    ours, theirs = models()
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    ours.eval()
    theirs.eval()
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), 1e-5, 1e-5)


@pytest.mark.parametrize("momentum", [0.3, None])
def test_batch_norm_running_statistics_like_pytorch(momentum, rng):
    ours, theirs = nn.BatchNorm1d(4, momentum=momentum), torch.nn.BatchNorm1d(4, momentum=momentum)
    for _ in range(5):
        x = (rng.standard_normal((6, 4, 3)) * 2 + 1).astype(np.float32)
        ours(x)
        theirs(torch.from_numpy(x))
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(ours.state_dict()[k], theirs.state_dict()[k].numpy(), 1e-5, 1e-6, k)
