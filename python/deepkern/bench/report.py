"""Presenting the rows: the terminal table, the JSON file, a Markdown summary, the PNG chart.

How to read the table (also in bench/README.md):

    median ms (min-max)  the median of the timed runs, and their spread
    rate                 GFLOP/s for convolutions (2*N*OC*OH*OW*(C/G)*KH*KW per direction),
                         GB/s for memory-bound ops (the minimal bytes they must move)
    % limit              the rate as a fraction of what this machine can do for this case:
                         the triad bandwidth on a working set of the case's size (triad), or
                         for convolutions the roofline min(FMA peak, intensity x bandwidth).
                         Memory-bound CPU rows: the op and that triad each timed back-to-back,
                         alternated, in the same run (runner.py), so % triad is their ratio
                         in the same cache state and moment (the rate column stays the
                         interleaved median's)
    vs ref, vs torch     median time of the NumPy reference (or PyTorch) / this row's median:
                         above 1 means this row is faster
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys

SCHEMA = "deepkern-bench/1"

# Keys every "ok" row carries with a positive finite number (tests/test_bench.py checks them).
OK_NUMBERS = ("median_ms", "min_ms", "max_ms")


def _fmt_ms(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_x(v) -> str:
    if v is None:
        return ""
    return f"{v:.0f}x" if v >= 100 else (f"{v:.1f}x" if v >= 10 else f"{v:.2f}x")


def rate_str(r: dict) -> str:
    if r.get("bound") == "flops" and r.get("gflops"):
        return f"{r['gflops']:.1f} GFLOP/s"
    if r.get("gbps"):
        return f"{r['gbps']:.1f} GB/s"
    return ""


def pct_str(r: dict) -> str:
    if r.get("pct_of_limit") is None:
        return ""
    return f"{r['pct_of_limit']:.0f}% {r['limit_kind']}"


def backend_str(r: dict) -> str:
    if r["backend"] == "torch" and r.get("impl") not in (None, "torch", "aten"):
        return f"torch ({r['impl']})"
    return r["backend"]


COLUMNS = ("op", "dir", "shape", "backend", "median ms (min-max)", "rate", "% limit", "vs ref", "vs torch")


def table_lines(rows: list[dict]) -> list[str]:
    """The table, one line per row; op, direction and shape only on a case's first row."""
    cells, prev = [], None
    for r in rows:
        first = r["case"] != prev
        prev = r["case"]
        head = [r["op"], r["direction"], r["shape"]] if first else ["", "", ""]
        if r["status"] == "ok":
            t = f"{_fmt_ms(r['median_ms'])} ({_fmt_ms(r['min_ms'])}-{_fmt_ms(r['max_ms'])})"
            cells.append((first, head + [backend_str(r), t, rate_str(r), pct_str(r),
                                         _fmt_x(r.get("speedup_vs_ref")), _fmt_x(r.get("speedup_vs_torch"))]))
        else:
            cells.append((first, head + [r["backend"], f"{r['status']} ({r['reason']})"]))
    widths = [len(c) for c in COLUMNS]
    for _, c in cells:
        # every row sets the first four widths (n/a rows too: they may hold a case's name)
        n = len(c) if len(c) == len(COLUMNS) else 4
        widths[:n] = [max(w, len(x)) for w, x in zip(widths[:n], c[:n])]
    right = {4, 5, 6, 7, 8}

    def line(c):
        if len(c) < len(COLUMNS):  # n/a and failed rows: the message runs to the end
            return "  ".join(x.ljust(w) for x, w in zip(c[:4], widths)) + "  " + c[4]
        return "  ".join(x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(c, widths)))

    out = [line(list(COLUMNS)), "  ".join("-" * w for w in widths)]
    for first, c in cells:
        if first and len(out) > 2:
            out.append("")
        out.append(line(c).rstrip())
    return out


def calibration_lines(calib: dict) -> list[str]:
    curve = calib["triad_curve"]

    def at(nbytes):
        from .calibrate import triad_gbps_at

        return triad_gbps_at(calib, nbytes)

    pts = ", ".join(f"{_size(p['bytes'])} {p['gbps']:.0f}" for p in curve[:: max(1, len(curve) // 6)])
    return [
        f"machine limits ({calib['threads']} threads, {calib['isa']}; {calib['source']}):",
        f"  FMA peak     {calib['fma_gflops']:.1f} GFLOP/s ({calib['fma_isa']}; one thread "
        f"{calib.get('fma_gflops_1thread', float('nan')):.1f})"
        + (f"; load average {calib['loadavg']} when measured" if calib.get("loadavg") else ""),
        f"  triad        {calib['triad_large_gbps']:.1f} GB/s on {_size(calib['triad_large_bytes'])} "
        f"(far beyond the {_size(calib.get('l3_bytes') or 0)} L3); "
        f"{at(32 << 20):.0f} GB/s on 32 MiB",
        f"  triad curve  GB/s by working set: {pts}",
    ] + ([f"  GPU          {g['device']}: device-to-device copy {g['copy_gbps']:.0f} GB/s, "
          f"FMA {g['fma_gflops'] / 1e3:.1f} TFLOP/s (measured now; limits of the cuda rows)"]
         if (g := calib.get("gpu")) else [])


def _size(n: float) -> str:
    if not n:
        return "?"
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 0.99 * (1 << k):  # the triad sizes are multiples of 12 bytes, just under 2**k
            return f"{n / (1 << k):.3g} {unit}"
    return f"{n:.0f} B"


def header_lines() -> list[str]:
    """What runs: the machine and the build, in two lines."""
    import deepkern

    i = deepkern.build_info()
    return [f"deepkern bench: deepkern {i['version']} on {i['cpu']}, {deepkern.get_num_threads()} threads, "
            f"{i['simd']}; backends {', '.join(deepkern.backends())}"]


def progress_printer(enabled: bool):
    """A progress callback writing one updating line to stderr (when it is a terminal)."""
    if not enabled or not sys.stderr.isatty():
        return None

    def show(msg: str | None) -> None:  # None clears the line
        sys.stderr.write("\r\033[K" + (f"calibrating: {msg}" if msg else ""))
        sys.stderr.flush()
    return show


# ---------------------------------------------------------------------------- JSON

def _commit() -> tuple[str | None, bool | None]:
    """The git commit of the deepkern checkout the run comes from, if there is one: the
    current directory's repository when it holds deepkern's sources."""
    for d in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))):
        if not os.path.exists(os.path.join(d, "python", "deepkern", "__init__.py")):
            continue
        try:
            head = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=10)
            if head.returncode != 0:
                continue
            dirty = subprocess.run(["git", "-C", d, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip(), bool(dirty.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            continue
    return None, None


def versions() -> dict:
    import numpy

    import deepkern

    v = {"deepkern": deepkern.__version__, "numpy": numpy.__version__,
         "python": platform.python_version()}
    for mod in ("torch", "cupy"):
        m = sys.modules.get(mod)
        v[mod] = getattr(m, "__version__", None) if m else None
    return v


def document(rows, calib, settings, backends, elapsed_s) -> dict:
    import deepkern

    commit, dirty = _commit()
    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "deepkern " + " ".join(sys.argv[1:]) if sys.argv else None,
        "commit": commit, "dirty": dirty,
        "machine": {**deepkern.build_info(), "platform": platform.platform(),
                    "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "versions": versions(),
        "settings": settings,
        "backends": {k: (v if isinstance(v, str) else v.describe()) for k, v in backends.items()},
        "calibration": calib,
        "elapsed_s": elapsed_s,
        "results": rows,
    }


def _clean(x):
    """JSON has no inf/nan: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(doc: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_clean(doc), f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------- Markdown

HEADLINE = ("conv2d/c2/fwd", "conv2d/c2/bwd", "conv2d/c3/fwd", "conv2d/c3/bwd", "conv2d/c7/fwd",
            "max_pool2d/fwd", "avg_pool2d/fwd", "batch_norm/train_fwd", "batch_norm/train_bwd",
            "dropout/fwd", "relu/fwd", "optim/adam", "train/epoch")


def markdown(doc: dict, backend: str = "cpu", cases=None) -> str:
    """A summary table of one backend (default cpu) against the reference and PyTorch;
    ``cases``: only these case ids (``HEADLINE`` is the README's selection)."""
    m, c = doc["machine"], doc["calibration"]
    lines = [
        f"{m['cpu']}, {doc['settings']['threads']} threads, {m['simd']}; deepkern {doc['versions']['deepkern']}, "
        f"PyTorch {doc['versions'].get('torch') or 'absent'}, NumPy {doc['versions']['numpy']}; {doc['date'][:10]}. "
        f"Limits measured: FMA peak {c['fma_gflops']:.0f} GFLOP/s, triad {c['triad_large_gbps']:.1f} GB/s "
        f"(beyond cache).",
        "",
        f"| case | shape | {backend} ms | rate | % of limit | vs NumPy | vs PyTorch | PyTorch ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_case = {}
    for r in doc["results"]:
        by_case.setdefault(r["case"], {})[r["backend"]] = r
    for case, rs in by_case.items():
        r, t = rs.get(backend), rs.get("torch_cuda" if backend == "cuda" else "torch")
        if r is None or (cases is not None and case not in cases):
            continue
        tms = f"{_fmt_ms(t['median_ms'])} ({t['impl']})" if t and t["status"] == "ok" and \
            t.get("impl") not in ("aten", "torch") else (_fmt_ms(t["median_ms"]) if t and t["status"] == "ok" else "")
        if r["status"] != "ok":
            lines.append(f"| {case} | {r['shape']} | {r['status']}: {r['reason']} | | | | | {tms} |")
            continue
        lines.append(f"| {case} | {r['shape']} | {_fmt_ms(r['median_ms'])} | {rate_str(r)} | "
                     f"{pct_str(r)} | {_fmt_x(r.get('speedup_vs_ref'))} | "
                     f"{_fmt_x(r.get('speedup_vs_torch'))} | {tms} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the chart

def plot(doc: dict, path: str) -> None:
    """A PNG of two bar charts per case: deepkern's speed-ups (over NumPy and over PyTorch,
    log scale) and the % of the machine's limit reached by deepkern and by PyTorch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'deepkern[bench]' "
                           "(or pip install matplotlib)") from None
    import numpy as np

    dk = next((b for b in ("cuda", "cpu") if any(r["backend"] == b and r["status"] == "ok"
                                                 for r in doc["results"])), None)
    if dk is None:
        raise RuntimeError("--plot: no deepkern row ran, nothing to plot")
    by_case = {}
    for r in doc["results"]:
        by_case.setdefault(r["case"], {})[r["backend"]] = r
    names = [c for c, rs in by_case.items() if rs.get(dk, {}).get("status") == "ok"]
    get = lambda b, key: [by_case[c].get(b, {}).get(key) or np.nan for c in names]  # noqa: E731
    y = np.arange(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 1.2 + 0.22 * len(names)), sharey=True)
    h = 0.4
    a1.barh(y - h / 2, get(dk, "speedup_vs_ref"), h, label=f"{dk} vs NumPy reference", color="#4c72b0")
    a1.barh(y + h / 2, get(dk, "speedup_vs_torch"), h, label=f"{dk} vs PyTorch", color="#dd8452")
    a1.axvline(1.0, color="k", lw=0.8)
    a1.set_xscale("log")
    a1.set_xlabel("speed-up (x, log scale; > 1 = deepkern faster)")
    a1.set_yticks(y, names, fontsize=7)
    a1.invert_yaxis()
    a1.legend(fontsize=8, loc="lower right")
    a1.grid(axis="x", which="both", alpha=0.3)
    a2.barh(y - h / 2, get(dk, "pct_of_limit"), h, label=dk, color="#4c72b0")
    a2.barh(y + h / 2, get("torch", "pct_of_limit"), h, label="PyTorch", color="#dd8452")
    a2.axvline(100.0, color="k", lw=0.8)
    a2.set_xlabel("% of the machine's limit (triad bandwidth or FMA roofline)")
    a2.legend(fontsize=8, loc="lower right")
    a2.grid(axis="x", alpha=0.3)
    m = doc["machine"]
    fig.suptitle(f"deepkern bench: {m['cpu']}, {doc['settings']['threads']} threads, {m['simd']} "
                 f"({doc['date'][:10]})", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
