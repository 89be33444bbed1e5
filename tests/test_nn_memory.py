"""The cpu backend keeps freed output buffers mapped (glibc M_TOP_PAD, see deepkern/_cpu.py):
repeated training steps do not page-fault on their fresh outputs."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

PROBE = """
import resource, numpy as np, deepkern, deepkern.nn as nn
from deepkern import _cpu
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
x = np.random.default_rng(0).standard_normal((64, 1, 32, 32)).astype(np.float32)
def step():
    y = model(x)
    model.zero_grad()
    model.backward(np.ones_like(y))
for _ in range(5):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(_cpu._malloc_tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""


def run(env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


def test_steps_reuse_mapped_memory():
    """~900 page faults per step without the setting on this machine, ~13 with it."""
    tuned, faults = run({"DEEPKERN_MALLOC_TUNE": "1"})
    off, faults_off = run({"DEEPKERN_MALLOC_TUNE": "0"})
    assert tuned and not off
    assert faults < 50, f"{faults} page faults per step ({faults_off} when off)"
    assert faults_off < 50 or faults < faults_off / 10       # (transparent huge pages can hide the effect)
