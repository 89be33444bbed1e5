"""The command line: `deepkern info` names the CPU, the SIMD level and the threads; demo runs."""

import subprocess
import sys

import deepkern


def run(*args):
    return subprocess.run([sys.executable, "-m", "deepkern", *args], capture_output=True, text=True, timeout=300)


def test_info():
    r = run("info")
    assert r.returncode == 0, r.stderr
    info = deepkern.build_info()
    assert info["cpu"] in r.stdout
    assert f"{info['simd']} in use" in r.stdout
    assert f"threads:    {info['num_threads']}" in r.stdout


def test_build_info_keys():
    info = deepkern.build_info()
    for key in ("version", "compiler", "openmp", "num_threads", "simd", "cuda"):
        assert key in info
    assert info["version"] == deepkern.__version__
    assert info["simd"] in ("scalar", "avx2", "avx512")
    assert isinstance(info["openmp"], bool) and info["num_threads"] >= 1
    assert info["cuda"] is None or {"version", "archs"} <= set(info["cuda"])
    assert set(deepkern.backends()) >= {"numpy", "cpu"}


def test_demo_smoke():
    r = run("demo", "--batch", "2", "--repeat", "1")
    assert r.returncode == 0, r.stderr
    assert "conv2d fwd" in r.stdout and "relu bwd" in r.stdout
