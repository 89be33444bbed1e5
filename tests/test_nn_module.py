"""deepkern.nn.Module and Sequential: registration, modes, gradients, freezing, state_dict."""

import io

import numpy as np
import pytest

import deepkern
import deepkern.nn as nn


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.25), nn.Linear(4 * 4 * 4, 10))


KEYS = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "6.weight", "6.bias"]


def snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_state_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class Net(nn.Module):
    """A user-defined module: attributes register themselves, as in PyTorch."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        self.head = nn.Linear(2 * 6 * 6, 3)
        self.scale = nn.Parameter(np.ones(1, np.float32))
        self.register_buffer("calls", np.zeros((), np.int64))
        self.register_buffer("cache", np.zeros(2, np.float32), persistent=False)
        self.not_registered = np.zeros(3)

    def forward(self, x):
        self.calls += 1
        self._shape = self.features(x).shape
        return self.head(self.features(x).reshape(len(x), -1)) * self.scale.data

    def backward(self, g):
        g = g * self.scale.data
        g = self.head.backward(g)
        return self.features.backward(g.reshape(self._shape))


def test_registration_names_and_order():
    m = Net()
    assert [n for n, _ in m.named_parameters()] == ["scale", "features.0.weight", "features.0.bias",
                                                     "head.weight", "head.bias"]
    assert list(m.state_dict()) == ["scale", "calls", "features.0.weight", "features.0.bias", "head.weight",
                                    "head.bias"]
    assert [n for n, _ in m.named_buffers()] == ["calls", "cache"]
    assert [n for n, _ in m.named_modules()] == ["", "features", "features.0", "features.1", "head"]
    assert [n for n, _ in m.named_children()] == ["features", "head"]
    assert len(list(m.parameters(recurse=False))) == 1
    m.head = None                                   # a child set to None is skipped, not an error
    assert [n for n, _ in m.named_modules()] == ["", "features", "features.0", "features.1"]
    with pytest.raises(TypeError, match="parameter 'scale'"):
        m.scale = np.ones(1)
    with pytest.raises(TypeError, match="buffer 'calls'"):
        m.calls = [1]
    del m.scale
    assert "scale" not in dict(m.named_parameters())


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(model.parameters())) == 2
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_module_before_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Bad()


def test_user_module_trains(rng):
    m = Net()
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    y = m(x)
    gx = m.backward(np.ones_like(y))
    assert gx.shape == x.shape and m.head.weight.grad.shape == (3, 72)
    assert int(m.calls) == 1


def test_train_eval_and_zero_grad(rng):
    m = cnn()
    assert m.training and all(c.training for c in m.modules())
    assert m.eval() is m and not any(c.training for c in m.modules())
    m.train()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    m.backward(np.ones_like(m(x)))
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_gradients_accumulate_until_zero_grad(rng):
    m = cnn().eval()            # eval: no dropout and fixed statistics, so passes are identical
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    g = rng.standard_normal((4, 10)).astype(np.float32)
    m(x)
    m.backward(g)
    once = [p.grad.copy() for p in m.parameters()]
    m(x)
    m.backward(g)
    for a, p in zip(once, m.parameters()):
        np.testing.assert_allclose(p.grad, 2 * a, rtol=1e-6, atol=1e-7)


def test_freezing_skips_gradients_but_not_the_input_gradient(rng):
    m = cnn().eval()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    g = rng.standard_normal((4, 10)).astype(np.float32)
    m(x)
    gx_all = m.backward(g)
    m.zero_grad()
    m[0].requires_grad_(False)
    m[1].weight.requires_grad = False
    m(x)
    gx = m.backward(g)
    np.testing.assert_array_equal(gx, gx_all)
    assert m[0].weight.grad is None and m[0].bias.grad is None and m[1].weight.grad is None
    assert m[1].bias.grad is not None and m[6].weight.grad is not None
    m.requires_grad_(False)
    m.zero_grad()
    m(x)
    m.backward(g)
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_keys_and_round_trip(rng):
    deepkern.manual_seed(0)
    a = cnn()
    a(rng.standard_normal((4, 1, 8, 8)).astype(np.float32))           # move the running statistics
    sd = a.state_dict()
    assert list(sd) == KEYS
    assert sd["0.weight"] is a[0].weight.data                           # the module's own arrays
    assert sd["1.num_batches_tracked"].dtype == np.int64 and int(sd["1.num_batches_tracked"]) == 1
    copied = a.state_dict(copy=True)
    assert copied["0.weight"] is not a[0].weight.data
    # through a .npz file, as checkpoints are saved
    buf = io.BytesIO()
    np.savez(buf, **sd)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    b = cnn()
    w_before = b[0].weight.data
    assert b.load_state_dict(loaded) == ([], [])
    assert b[0].weight.data is w_before                                 # copied in place
    assert_state_equal(snapshot(b), snapshot(a))
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("0.bias"), "missing keys: '0.bias'"),
    (lambda d: d.update(extra=np.zeros(1)), "unexpected keys: 'extra'"),
    (lambda d: d.update({"6.weight": np.zeros((10, 65), np.float32)}), r"6.weight: shape \(10, 65\)"),
    (lambda d: d.update({"1.running_var": np.ones(4, np.float64)}), "1.running_var: dtype float64"),
    (lambda d: d.update({"1.num_batches_tracked": np.zeros((), np.int32)}), "num_batches_tracked: dtype int32"),
    (lambda d: d.update({"0.weight": [[1.0]]}), "0.weight: expected an array, got list"),
])
def test_load_state_dict_errors_change_nothing(mutate, match, rng):
    src, dst = cnn(), cnn()
    d = src.state_dict(copy=True)
    d["0.weight"] += 1                      # the first entry would be loaded before the bad one
    mutate(d)
    before = snapshot(dst)
    with pytest.raises(ValueError, match=match) as e:
        dst.load_state_dict(d)
    assert "nothing was changed" in str(e.value)
    assert_state_equal(snapshot(dst), before)


def test_load_state_dict_reports_every_problem_at_once():
    d = cnn().state_dict(copy=True)
    d.pop("0.bias")
    d["junk"] = np.zeros(1)
    d["6.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        cnn().load_state_dict(d)
    msg = str(e.value)
    assert "'0.bias'" in msg and "'junk'" in msg and "6.bias: shape (3,)" in msg


def test_load_state_dict_strict_false_for_transfer_learning(rng):
    """Pretrained features, a new head: load what matches, report the rest (PyTorch's way)."""
    pre = cnn()
    pre(rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    body = {k: v for k, v in pre.state_dict().items() if not k.startswith("6.")}
    body["aux.weight"] = np.zeros(2, np.float32)
    new = cnn()
    head_before = new[6].weight.data.copy()
    result = new.load_state_dict(body, strict=False)
    assert result.missing_keys == ["6.weight", "6.bias"] and result.unexpected_keys == ["aux.weight"]
    np.testing.assert_array_equal(new[0].weight.data, pre[0].weight.data)
    np.testing.assert_array_equal(new[1].running_mean, pre[1].running_mean)
    np.testing.assert_array_equal(new[6].weight.data, head_before)
    # a mismatched shape is an error even with strict=False (as in PyTorch), and changes nothing
    five = nn.Sequential(*list(cnn())[:6], nn.Linear(64, 5))
    before = snapshot(five)
    with pytest.raises(ValueError, match="6.weight: shape"):
        five.load_state_dict(pre.state_dict(), strict=False)
    assert_state_equal(snapshot(five), before)
    # freeze the features, train only the head
    for m in list(new)[:6]:
        m.requires_grad_(False)
    new.zero_grad()
    new(rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    new.backward(np.ones((4, 10), np.float32))
    assert [n for n, p in new.named_parameters() if p.grad is not None] == ["6.weight", "6.bias"]


def test_load_state_dict_type_errors():
    with pytest.raises(TypeError, match="dict-like"):
        cnn().load_state_dict([("0.weight", np.zeros(1))])
    with pytest.raises(TypeError, match="strict"):
        cnn().load_state_dict(cnn().state_dict(), strict="yes")


def test_sequential_indexing_iteration_and_replacement():
    m = cnn()
    assert len(m) == 7 and isinstance(m[0], nn.Conv2d) and isinstance(m[-1], nn.Linear)
    assert [type(c).__name__ for c in m][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    head = m[:4]
    assert isinstance(head, nn.Sequential) and len(head) == 4 and head[0] is m[0]
    with pytest.raises(IndexError):
        m[7]
    with pytest.raises(TypeError):
        m["0"]
    m[-1] = nn.Linear(64, 5)
    assert m(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 5)
    assert m.state_dict()["6.weight"].shape == (5, 64)
    m.append(nn.Sigmoid())
    assert len(m) == 8 and m(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 5)
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    assert "(0): Conv2d(1, 4, kernel_size=(3, 3)" in repr(m)


def test_double_and_float(rng):
    m = cnn()
    x = rng.standard_normal((2, 1, 8, 8))
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m[1].running_mean.dtype == np.float64 and m[1].num_batches_tracked.dtype == np.int64
    assert m(x).dtype == np.float64
    m.float()
    assert m(x.astype(np.float32)).dtype == np.float32
    assert list(m.state_dict()) == KEYS
