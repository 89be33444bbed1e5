"""The machine's limits, measured by deepkern itself on the machine at hand.

Two numbers make "how fast is this kernel?" answerable on any CPU:

- **triad bandwidth**, a STREAM-like ``a[i] = b[i] + s*c[i]`` over float32 arrays
  (``csrc/cpu/calibrate.cpp``), on the configured thread count and the SIMD level in use. It
  is measured as a *function of the working-set size* (16 KiB ... far beyond the last-level
  cache), because a benchmark that reuses the same 30 MB of inputs on every run streams from
  L3, not DRAM: a memory-bound op is compared with the triad measured on a working set of the
  same size (``triad_gbps_at``). 12 bytes are counted per element (STREAM's convention), so the
  write-allocate read of ``a`` is not counted: an in-place update, which pays no write
  allocate, can beat "100% of triad".
- **peak FMA rate** of the SIMD level in use: independent FMA chains held in registers on
  every thread, 2 flops per lane per FMA.

Measure once per run, or once per machine with ``deepkern bench --calibrate``, which stores
the result in ``<user cache dir>/deepkern/calibration.json`` keyed by CPU model, thread count
and SIMD level; later runs with the same key reuse it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import statistics
from pathlib import Path

CACHE_VERSION = 2


def triad(n: int, min_seconds: float = 0.02, repeats: int = 5) -> dict:
    """Triad bandwidth over n float32 elements per array (working set 12*n bytes).

    Returns {"bytes": working set, "gbps": best run, "gbps_median": median run, "passes",
    "threads", "isa"}; bandwidth counts 12 bytes per element and pass.
    """
    from .. import _C

    r = _C.calibrate_triad(int(n), float(min_seconds), int(repeats))
    secs = r["seconds"]
    per_run = r["bytes_per_run"]
    return {"bytes": 12 * int(n), "gbps": per_run / min(secs) / 1e9,
            "gbps_median": per_run / statistics.median(secs) / 1e9,
            "passes": r["passes"], "threads": r["threads"], "isa": r["isa"]}


def fma_peak(isa: str = "", min_seconds: float = 0.05, repeats: int = 5) -> dict:
    """Peak FMA rate of ``isa`` ('' = the level in use) on every configured thread.

    Returns {"gflops": best run, "gflops_median", "isa", "threads"}.
    """
    from .. import _C

    r = _C.calibrate_fma(isa, float(min_seconds), int(repeats))
    secs = r["seconds"]
    return {"gflops": r["flops_per_run"] / min(secs) / 1e9,
            "gflops_median": r["flops_per_run"] / statistics.median(secs) / 1e9,
            "isa": r["isa"], "threads": r["threads"]}


def _sizes(quick: bool, l3_bytes: int) -> list[int]:
    """Working-set sizes of the triad curve: powers of two from 16 KiB to far beyond L3.

    "Far beyond" = at least 8x the last-level cache and 512 MiB (a quarter of the machine's
    memory at most); quick runs stop at 64 MiB in steps of 4.
    """
    if quick:
        return [16 << 10 << (2 * k) for k in range(7)]  # 16 KiB .. 64 MiB
    top = max(512 << 20, 8 * int(l3_bytes or 0))
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        top = min(top, max(64 << 20, mem // 4))
    except (ValueError, OSError, AttributeError):
        pass
    sizes, s = [], 16 << 10
    while s <= top:
        sizes.append(s)
        s *= 2
    return sizes


def measure(quick: bool = False, progress=None) -> dict:
    """Measure the triad curve and the FMA peak now; returns the calibration dict.

    progress: optional callable(str) told what is being measured, and None when done.
    """
    import deepkern

    info = deepkern.build_info()
    min_s, reps = (0.005, 3) if quick else (0.02, 5)
    # The FMA peak first: it is short (15 runs of 20 ms), and a calibration started at a quiet
    # moment is then most likely to keep it. Many short runs: the best one is the limit, and
    # on a shared machine a short run has a better chance of having both cores to itself.
    if progress:
        progress("FMA peak")
    fma = fma_peak("", 0.01 if quick else 0.02, 5 if quick else 15)
    # One thread's peak too: stable even on a busy machine (one free core is easy to get), so
    # threads x this, against the all-threads figure, shows what the other load took away.
    threads = deepkern.get_num_threads()
    try:
        deepkern.set_num_threads(1)
        fma1 = fma_peak("", 0.01 if quick else 0.02, 5)
    finally:
        deepkern.set_num_threads(threads)
    curve = []
    for ws in _sizes(quick, info.get("l3_bytes", 0)):
        if progress:
            progress(f"triad on {ws >> 10} KiB" if ws < 1 << 20 else f"triad on {ws >> 20} MiB")
        r = triad(max(1, ws // 12), min_s, reps)
        curve.append({"bytes": r["bytes"], "gbps": r["gbps"], "gbps_median": r["gbps_median"]})
    if progress:
        progress(None)
    large = curve[-1]
    return {
        "version": CACHE_VERSION,
        "cpu": info["cpu"], "threads": deepkern.get_num_threads(), "isa": info["simd"],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "deepkern": info["version"], "quick": bool(quick),
        "l3_bytes": info.get("l3_bytes", 0),
        "triad_large_gbps": large["gbps"], "triad_large_bytes": large["bytes"],
        "triad_curve": curve,
        "fma_gflops": fma["gflops"], "fma_gflops_median": fma["gflops_median"],
        "fma_gflops_1thread": fma1["gflops"], "fma_isa": fma["isa"],
        "loadavg": loadavg(),
    }


def loadavg():
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def triad_gbps_at(calib: dict, nbytes: float) -> float:
    """The triad bandwidth on a working set of ``nbytes``: interpolated in log2(size)
    between the two nearest measured sizes, clamped to the ends of the curve."""
    curve = calib["triad_curve"]
    if nbytes <= curve[0]["bytes"]:
        return curve[0]["gbps"]
    if nbytes >= curve[-1]["bytes"]:
        return curve[-1]["gbps"]
    for lo, hi in zip(curve, curve[1:]):
        if lo["bytes"] <= nbytes <= hi["bytes"]:
            f = (math.log2(nbytes) - math.log2(lo["bytes"])) / (
                math.log2(hi["bytes"]) - math.log2(lo["bytes"]))
            return lo["gbps"] + f * (hi["gbps"] - lo["gbps"])
    return curve[-1]["gbps"]  # pragma: no cover  (the curve is sorted)


def gpu(quick: bool = False, device: int | None = None):
    """The current GPU's limits for the cuda rows (deepkern._cuda_backend.calibrate: a
    device-to-device copy of 1 GiB (quick: 256 MiB) and an FMA-rate kernel), measured now;
    None when deepkern's cuda backend is not available."""
    from .._backend import _load_cuda

    mod = _load_cuda()
    if mod is None:
        return None
    if device is None:
        try:
            import cupy
            device = cupy.cuda.Device().id
        except ImportError:
            device = 0
    return mod.calibrate(device, (256 << 20) if quick else (1 << 30), 5 if quick else 10)


# ---------------------------------------------------------------------------- the cache

def cache_path() -> Path:
    """``$XDG_CACHE_HOME/deepkern/calibration.json`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepkern" / "calibration.json"


def cache_key(cpu: str, threads: int, isa: str) -> str:
    return f"{cpu}|{threads} threads|{isa}"


def _read_cache(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_cached(cpu: str, threads: int, isa: str, path: Path | None = None) -> dict | None:
    """The stored calibration for this (cpu, threads, isa), or None."""
    entry = _read_cache(path or cache_path()).get(cache_key(cpu, threads, isa))
    if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION:
        return None
    if not entry.get("triad_curve") or not entry.get("fma_gflops"):
        return None
    return entry


def store(calib: dict, path: Path | None = None) -> Path:
    """Add ``calib`` to the cache file (other keys are kept); returns the file's path."""
    path = path or cache_path()
    data = _read_cache(path)
    data[cache_key(calib["cpu"], calib["threads"], calib["isa"])] = calib
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return path


def get(quick: bool = False, progress=None) -> dict:
    """The calibration for the current settings: from the cache when present, else measured
    now (and not stored; ``deepkern bench --calibrate`` stores). ``source`` says which."""
    import deepkern

    info = deepkern.build_info()
    cached = load_cached(info["cpu"], deepkern.get_num_threads(), info["simd"])
    if cached is not None:
        return dict(cached, source=f"cache {cache_path()} ({cached['date']})")
    calib = measure(quick=quick, progress=progress)
    calib["source"] = "measured in this run" + (" (quick)" if quick else "")
    return calib
