"""Bad input: a clear TypeError/ValueError naming the problem, raised before anything is written.

Each row of the catalogue (RELIABILITY.md D1) is one case: (call, exception, message regex).
Every call runs under assert_unchanged, so a failing call must leave its arguments alone.
"""

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
from conftest import assert_unchanged

x4 = np.ones((2, 3, 8, 8), np.float32)
w = np.ones((4, 3, 3, 3), np.float32)
y4 = np.ones((2, 4, 6, 6), np.float32)
rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
mask = np.ones((2, 3, 8, 8), np.uint8)

CASES = {
    # common
    "float16 x": (lambda: F.conv2d(x4.astype(np.float16), w), TypeError, "float16"),
    "int32 x": (lambda: F.relu(np.ones(3, np.int32)), TypeError, "int32"),
    "bool x": (lambda: F.relu(np.ones(3, bool)), TypeError, "bool"),
    "complex x": (lambda: F.max_pool2d(x4.astype(np.complex64), 2), TypeError, "complex64"),
    "mixed dtypes": (lambda: F.conv2d(x4, w.astype(np.float64)), TypeError, "same dtype"),
    "list input": (lambda: F.relu([1.0, 2.0]), TypeError, "list"),
    "None input": (lambda: F.conv2d(None, w), TypeError, "NoneType"),
    "scalar input": (lambda: F.relu(1.0), TypeError, "float"),
    "2-D conv input": (lambda: F.conv2d(np.ones((3, 8), np.float32), w), ValueError, "2-D"),
    "3-tuple stride": (lambda: F.conv2d(x4, w, stride=(1, 1, 1)), ValueError, "3 values"),
    "empty tuple padding": (lambda: F.conv2d(x4, w, padding=()), ValueError, "0 values"),
    "string kernel": (lambda: F.max_pool2d(x4, "2"), TypeError, "str"),
    "float stride": (lambda: F.conv2d(x4, w, stride=1.5), TypeError, "float"),
    "bool stride": (lambda: F.conv2d(x4, w, stride=True), TypeError, "bool"),
    "overflowing stride": (lambda: F.conv2d(x4, w, stride=2**70), ValueError, "too large"),
    # conv2d
    "stride 0": (lambda: F.conv2d(x4, w, stride=0), ValueError, "non-positive stride"),
    "stride pair (1, 0)": (lambda: F.conv2d(x4, w, stride=(1, 0)), ValueError, "non-positive stride"),
    "stride -1": (lambda: F.conv2d(x4, w, stride=-1), ValueError, "non-positive stride"),
    "padding -1": (lambda: F.conv2d(x4, w, padding=-1), ValueError, "negative padding"),
    "dilation 0": (lambda: F.conv2d(x4, w, dilation=0), ValueError, "dilation should be greater than zero"),
    "groups 0": (lambda: F.conv2d(x4, w, groups=0), ValueError, "non-positive groups"),
    "channel mismatch": (lambda: F.conv2d(np.ones((2, 5, 8, 8), np.float32), w), ValueError, "to have 3 channels"),
    "groups mismatch": (lambda: F.conv2d(x4, np.ones((4, 3, 3, 3), np.float32), groups=3), ValueError, "channels|divisible"),
    "weight not divisible": (lambda: F.conv2d(np.ones((1, 4, 8, 8), np.float32), np.ones((3, 2, 3, 3), np.float32), groups=2),
                             ValueError, "divisible by 2"),
    "bias shape": (lambda: F.conv2d(x4, w, np.ones((4, 1), np.float32)), ValueError, "bias"),
    "kernel larger than input": (lambda: F.conv2d(np.ones((1, 3, 1, 1), np.float32), np.ones((1, 3, 10, 10), np.float32)),
                                 ValueError, "Kernel size can't be greater"),
    "dilated kernel larger": (lambda: F.conv2d(np.ones((1, 3, 4, 4), np.float32), w, stride=2, dilation=2),
                              ValueError, "Kernel size can't be greater"),
    "huge dilation": (lambda: F.conv2d(x4, w, dilation=2**31 - 1), ValueError, "Kernel size"),
    "huge padding": (lambda: F.conv2d(x4, w, padding=2**31 - 1), ValueError, "too large"),
    "zero in-channels": (lambda: F.conv2d(np.ones((1, 0, 4, 4), np.float32), np.ones((2, 0, 3, 3), np.float32)),
                         ValueError, "zero dimension"),
    "zero height": (lambda: F.conv2d(np.ones((1, 3, 0, 4), np.float32), w), ValueError, "empty spatial"),
    "backward grad_out shape": (lambda: F.conv2d_backward(np.ones((2, 4, 5, 5), np.float32), x4, w), ValueError, "grad_out has shape"),
    "backward bias not bool": (lambda: F.conv2d_backward(y4, x4, w, bias=1), TypeError, "bool"),
    # max_pool2d
    "pool kernel 0": (lambda: F.max_pool2d(x4, 0), ValueError, "kernel size should be greater than zero"),
    "pool stride -1": (lambda: F.max_pool2d(x4, 2, -1), ValueError, "stride should be greater than zero"),
    "pool dilation 0": (lambda: F.max_pool2d(x4, 2, dilation=0), ValueError, "dilation should be greater than zero"),
    "pool padding -1": (lambda: F.max_pool2d(x4, 2, padding=-1), ValueError, "pad must be non-negative"),
    "pool padding > k/2": (lambda: F.max_pool2d(x4, 2, padding=4), ValueError, "at most half"),
    "pool kernel > input": (lambda: F.max_pool2d(np.ones((1, 1, 2, 2), np.float32), 3), ValueError, "Output size is too small"),
    "pool zero width": (lambda: F.max_pool2d(np.ones((2, 1, 10, 0), np.float32), 2), ValueError, "non-zero"),
    "pool 2-D input": (lambda: F.max_pool2d(np.ones((4, 4), np.float32), 2), ValueError, "2-D"),
    "maxpool bwd int32 indices": (lambda: F.max_pool2d_backward(np.ones((2, 3, 4, 4), np.float32),
                                                                np.zeros((2, 3, 4, 4), np.int32), x4.shape), TypeError, "int64"),
    "maxpool bwd indices shape": (lambda: F.max_pool2d_backward(np.ones((2, 3, 4, 4), np.float32),
                                                                np.zeros((2, 3, 4, 3), np.int64), x4.shape), ValueError, "indices has shape"),
    "maxpool bwd index out of plane": (lambda: F.max_pool2d_backward(np.ones((1, 1, 1, 1), np.float32),
                                                                     np.full((1, 1, 1, 1), 64, np.int64), (1, 1, 8, 8)), ValueError, "outside"),
    "maxpool bwd input_shape": (lambda: F.max_pool2d_backward(np.ones((1, 1, 1, 1), np.float32),
                                                              np.zeros((1, 1, 1, 1), np.int64), (1, 8, 8)), ValueError, "does not match"),
    "maxpool bwd input_shape type": (lambda: F.max_pool2d_backward(np.ones((1, 1, 1, 1), np.float32),
                                                                   np.zeros((1, 1, 1, 1), np.int64), 5), ValueError, "input_shape"),
    # avg_pool2d
    "avgpool padding > k/2": (lambda: F.avg_pool2d(x4, 3, padding=2), ValueError, "at most half"),
    "avgpool cip not bool": (lambda: F.avg_pool2d(x4, 2, count_include_pad="yes"), TypeError, "bool"),
    "avgpool bwd grad shape": (lambda: F.avg_pool2d_backward(np.ones((2, 3, 3, 3), np.float32), x4.shape, 2),
                               ValueError, "grad_out has shape"),
    # batch_norm
    "bn 3-D x": (lambda: F.batch_norm(np.ones((2, 3, 4), np.float32), None, None, None, None, True), ValueError, "3-D"),
    "bn weight length": (lambda: F.batch_norm(x4, np.ones(2, np.float32), None, None, None, True), ValueError, "3 elements not 2"),
    "bn running_mean length": (lambda: F.batch_norm(x4, None, None, np.zeros(4, np.float32), rv, True), ValueError, "running_mean"),
    "bn running_var length": (lambda: F.batch_norm(x4, None, None, rm, np.ones(2, np.float32), True), ValueError, "running_var"),
    "bn mean without var": (lambda: F.batch_norm(x4, None, None, rm, None, True), ValueError, "together"),
    "bn eval without stats": (lambda: F.batch_norm(x4, None, None, None, None, False), ValueError, "required"),
    "bn one value per channel": (lambda: F.batch_norm(np.ones((1, 3), np.float32), None, None, None, None, True),
                                 ValueError, "more than 1 value per channel"),
    "bn empty batch training": (lambda: F.batch_norm(np.ones((0, 3), np.float32), None, None, None, None, True),
                                ValueError, "more than 1 value"),
    "bn eps 0": (lambda: F.batch_norm(x4, None, None, rm, rv, True, eps=0.0), ValueError, "eps"),
    "bn eps nan": (lambda: F.batch_norm(x4, None, None, rm, rv, True, eps=float("nan")), ValueError, "eps"),
    "bn momentum nan": (lambda: F.batch_norm(x4, None, None, rm, rv, True, momentum=float("nan")), ValueError, "momentum"),
    "bn running dtype": (lambda: F.batch_norm(x4, None, None, rm.astype(np.float64), rv.astype(np.float64), True),
                         TypeError, "float64"),
    "bn running readonly": (lambda: F.batch_norm(x4, None, None, np.broadcast_to(np.float32(0), (3,)), rv, True),
                            ValueError, "C-contiguous|not writeable"),
    "bn running noncontiguous": (lambda: F.batch_norm(x4, None, None, np.zeros(6, np.float32)[::2], rv, True),
                                 ValueError, "C-contiguous"),
    "bn mean is var": (lambda: F.batch_norm(x4, None, None, rm, rm, True), ValueError, "share memory"),
    "bn training not bool": (lambda: F.batch_norm(x4, None, None, rm, rv, 1), TypeError, "bool"),
    "bn bwd grad shape": (lambda: F.batch_norm_backward(np.ones((2, 3, 8, 7), np.float32), x4, None, rm, rv), ValueError, "grad_out"),
    "bn bwd save_mean length": (lambda: F.batch_norm_backward(x4, x4, None, np.zeros(2, np.float32), rv), ValueError, "save_mean"),
    # dropout
    "dropout p -0.1": (lambda: F.dropout(x4, -0.1), ValueError, "between 0 and 1"),
    "dropout p 1.5": (lambda: F.dropout(x4, 1.5), ValueError, "between 0 and 1"),
    "dropout p nan": (lambda: F.dropout(x4, float("nan")), ValueError, "between 0 and 1"),
    "dropout p str": (lambda: F.dropout(x4, "0.5"), TypeError, "real number"),
    "dropout seed negative": (lambda: F.dropout(x4, 0.5, seed=-1), ValueError, "seed"),
    "dropout seed 2**64": (lambda: F.dropout(x4, 0.5, seed=2**64), ValueError, "seed"),
    "dropout seed float": (lambda: F.dropout(x4, 0.5, seed=1.0), TypeError, "seed"),
    "dropout bwd mask dtype": (lambda: F.dropout_backward(x4, mask.astype(bool), 0.5), TypeError, "uint8"),
    "dropout bwd mask shape": (lambda: F.dropout_backward(x4, mask[:1], 0.5), ValueError, "mask has shape"),
    "dropout bwd p": (lambda: F.dropout_backward(x4, mask, 2.0), ValueError, "between 0 and 1"),
    # relu
    "relu bwd shape": (lambda: F.relu_backward(np.ones(3, np.float32), np.ones(4, np.float32)), ValueError, "shape"),
    "relu bwd mixed dtype": (lambda: F.relu_backward(np.ones(3, np.float32), np.ones(3)), TypeError, "same dtype"),
    # top level
    "missing backend": (lambda: deepkern.use_backend("cuda").__enter__(), RuntimeError, "not available"),
    "unknown backend": (lambda: deepkern.use_backend("tpu").__enter__(), ValueError, "unknown backend"),
    "threads 0": (lambda: deepkern.set_num_threads(0), ValueError, ">= 1"),
    "threads float": (lambda: deepkern.set_num_threads(1.5), TypeError, "int"),
    "manual_seed negative": (lambda: deepkern.manual_seed(-3), ValueError, "seed"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_raises_before_writing(name):
    if name == "missing backend" and "cuda" in deepkern.backends():
        pytest.skip("this build has a usable CUDA backend")
    call, exc, pattern = CASES[name]
    with assert_unchanged(x4, w, y4, rm, rv, mask):
        with pytest.raises(exc, match=pattern):
            call()


def test_read_only_inputs_are_accepted():
    a = np.ones((2, 3, 8, 8), np.float32)
    a.flags.writeable = False
    F.conv2d(a, w)
    F.max_pool2d(a, 2)
    F.relu(a)


def test_direct_C_calls_cannot_crash():
    """The binding layer re-checks what the kernels rely on (shapes, dtypes, writeability)."""
    from deepkern import _C
    with pytest.raises(ValueError):
        _C.conv2d_forward(np.empty((2, 4, 5, 5), np.float32), x4, w, None, (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(TypeError):
        _C.relu_forward(np.empty(3, np.float64), np.ones(3, np.float32))
    ro = np.empty(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _C.relu_forward(ro, np.ones(3, np.float32))
    with pytest.raises(ValueError):
        _C.max_pool2d_backward(np.empty((1, 1, 2, 2), np.float32), np.ones((1, 1, 1, 1), np.float32),
                               np.full((1, 1, 1, 1), 99, np.int64))
