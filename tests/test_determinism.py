"""Determinism: every op gives bitwise identical results for any thread count, in any process,
at any buffer alignment.

Tolerance policy (issue 7, RELIABILITY.md D4): **bitwise everywhere**. There is no reduction
tolerance to document because no kernel needs one: work is split at boundaries that depend
only on the problem size and partial sums are folded in a fixed order (csrc/common/parallel.h),
so even the reductions (conv2d's weight and bias gradients over the batch, batch_norm's
statistics and its backward sums) are bitwise the same for 1 or 8 threads. A kernel that breaks
this fails here with the op's name; a tolerance would only be added with a written reason.

- Processes started with OMP_NUM_THREADS in {1, 2, 3, 4, 8} (8 oversubscribes a 2-core CI box:
  thread timing then varies the most) hash every output of every op (both dtypes, batches
  spanning several parallel chunks) with SHA-256: the digests must be identical.
- In one process, inputs placed at every 4-byte offset within a 64-byte line give bitwise equal
  results: a vectorized loop that peeled iterations to reach alignment would sum in a different
  order on differently aligned buffers (the address-dependence that MKL's "CNR" mode exists for).
- The same call twice gives the same bits (no state carried between calls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import deepkern
import deepkern.functional as F
from opinfo import make_kernel_calls, run_calls, under_sanitizer

THREADS = (1, 2, 3, 4, 8)
HERE = os.path.dirname(os.path.abspath(__file__))

DIGEST_SCRIPT = """
import hashlib, json, sys
import numpy as np
import deepkern
from opinfo import make_kernel_calls, run_calls
out = {"threads": deepkern.get_num_threads(), "digests": {}}
for dtype in (np.float32, np.float64):
    for seed in (0, 1):
        for name, outputs in run_calls(make_kernel_calls(seed, dtype, scale=SCALE)).items():
            h = hashlib.sha256()
            for o in outputs:
                if o is not None:
                    h.update(str((o.dtype.str, o.shape)).encode())
                    h.update(np.ascontiguousarray(o).tobytes())
            out["digests"][f"{name}/{np.dtype(dtype).name}/seed{seed}"] = h.hexdigest()
print(json.dumps(out))
"""


def _digests(threads, scale):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT.replace("SCALE", str(scale))], capture_output=True,
                       text=True, timeout=600, env=env, cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not deepkern.build_info()["openmp"], reason="a build without OpenMP runs one thread")
def test_same_digests_for_every_thread_count_across_processes():
    scale = 1 if under_sanitizer() else 3
    results = {t: _digests(t, scale) for t in THREADS}
    for t, r in results.items():
        assert r["threads"] == t, f"OMP_NUM_THREADS={t} gave {r['threads']} threads"
    ref = results[1]["digests"]
    differ = [f"{op}: {t} threads" for t in THREADS[1:] for op in ref if results[t]["digests"][op] != ref[op]]
    assert not differ, "not bitwise identical to 1 thread: " + ", ".join(differ)
    assert len(ref) == 2 * 2 * 15  # every op, both dtypes, two seeds


def _at_offset(a, offset):
    """A C-contiguous copy of a whose data starts `offset` bytes after a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    v = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    v[...] = a
    assert v.ctypes.data % 64 == offset and v.flags.c_contiguous
    return v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_buffer_alignment(dtype):
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((5, 6, 13, 15)).astype(dtype)
    w0 = (rng.standard_normal((8, 6, 3, 3)) / 7).astype(dtype)
    e0 = rng.standard_normal(70_001).astype(dtype)

    def run(off):
        x, w, e = _at_offset(x0, off), _at_offset(w0, off), _at_offset(e0, off)
        y = F.conv2d(x, w, padding=1)
        dy = _at_offset(y, off)
        out = [y, *F.conv2d_backward(dy, x, w, padding=1), *F.max_pool2d(x, 3, 2, 1),
               F.avg_pool2d(x, 3, 2, 1), *F.batch_norm(x, None, None, None, None, True),
               *F.batch_norm_backward(x, x, _at_offset(x0[0, :, 0, 0].copy(), off), *F.batch_norm(x, None, None, None, None, True)[1:]),
               *F.dropout(e, 0.4, seed=9), F.relu(e), F.relu_backward(e, e)]
        return [o for o in out if o is not None]

    step = np.dtype(dtype).itemsize
    ref = run(0)
    for off in range(step, 64, step):
        for k, (a, b) in enumerate(zip(run(off), ref)):
            assert a.tobytes() == b.tobytes(), f"output {k} differs with inputs at byte offset {off}"


def test_same_call_twice_gives_the_same_bits():
    calls = make_kernel_calls(seed=5, dtype=np.float32, scale=2)
    first, second = run_calls(calls), run_calls(calls)
    for name in first:
        for k, (a, b) in enumerate(zip(first[name], second[name])):
            assert (a is None and b is None) or a.tobytes() == b.tobytes(), f"{name} output {k}"
