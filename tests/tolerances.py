"""Tolerances: (op, dtype) -> (rtol, atol) for the cpu backend against the float64 reference.

Each entry says why. Inputs in the tests are N(0, 1) with weights scaled by 1/sqrt(fan_in),
so values are O(1). See RELIABILITY.md D3.
"""

import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

TOL = {
    # float32 accumulation over K = C/G*KH*KW <= ~150 terms in tests: a few ulp * sqrt(K)
    ("conv2d", F32): (1e-5, 2e-5),
    ("conv2d_backward", F32): (1e-4, 1e-4),   # sums over N*OH*OW for the weight gradient
    ("conv2d", F64): (1e-10, 1e-12),
    ("conv2d_backward", F64): (1e-10, 1e-12),
    # averages: one rounding of a sum of <= k*k terms and one division
    ("avg_pool2d", F32): (2e-6, 1e-6),
    ("avg_pool2d", F64): (1e-12, 1e-14),
    # normalized outputs are O(1); statistics are accumulated in double
    ("batch_norm", F32): (1e-5, 1e-5),
    ("batch_norm", F64): (1e-10, 1e-12),
    ("batch_norm_backward", F32): (1e-4, 1e-5),
    ("batch_norm_backward", F64): (1e-9, 1e-11),
}


def tol(op, dtype):
    return TOL[(op, np.dtype(dtype))]
