"""Running the suite: validate each backend once against the reference, then time it.

For every case, for every selected backend (numpy reference, cpu, cuda, torch) in that order:

1. build the call on the case's inputs (a backend or a case that cannot run here gives an
   ``n/a`` row with the reason, never an error);
2. run it once and compare its outputs with the reference (llm.c: "all results match,
   starting benchmarks"); a mismatch gives a ``failed`` row and no timing;
3. warm up and time it (timing.py): the NumPy reference alone, then the other backends and
   PyTorch's modes interleaved, one run of each in turn;
4. derive the rate (GFLOP/s or GB/s), the fraction of the machine's limit and the speed-ups
   over the reference and over PyTorch, measured side by side in this process.

The limit of a memory-bound row on the CPU (deepkern's cpu rows and PyTorch's) is measured
with the row, not taken from the calibration: the op and a triad on a working set of the
case's footprint are each timed back-to-back (both in their steady cache state), alternated in
4 rounds, and the row's % triad is the op's median rate over the triad's. The bandwidth a
16-48 MiB working set gets here depends on how much of the shared L3 the machine's other
tenants leave, which changes over minutes (measured: 193 GB/s at 32 MiB in one calibration,
113-131 GB/s two hours later), and the interleaved runs' re-warmed state flatters or punishes
a triad differently from an op (bench/NOTES.md). The calibration curve's figure stays in the
row (``triad_curve_gbps``) and is the limit of the other rows.
"""

from __future__ import annotations

import itertools
import sys
import time
import traceback

from . import calibrate
from .backends import ORDER, Unavailable, available
from .cases import Case, ValidationError, compare
from .timing import CpuTimer, Entry, TimingPolicy, _in_context, measure_interleaved


def _row(case: Case, backend: str, **kw) -> dict:
    row = {"case": case.id, "op": case.op, "direction": case.direction, "shape": case.shape,
           "backend": backend, "impl": backend, "status": "ok", "reason": None,
           "flops": case.flops, "bytes": case.bytes, "footprint_bytes": case.footprint,
           "work_note": case.work_note, "bound": case.bound}
    row.update(kw)
    return row


def _limits(case: Case, calib: dict, device: str = "cpu") -> dict:
    """The machine's limit for this case on ``device`` ("cpu" or "cuda").

    Memory-bound: the CPU's triad bandwidth on a working set of the case's footprint, or the
    GPU's device-to-device copy bandwidth ("copy").
    Convolution: the roofline min(FMA peak, arithmetic intensity x that bandwidth), so a conv
    with few flops per byte (the depthwise c7) is held to what memory allows.
    """
    if case.bound is None or not calib:
        return {}
    if device == "cuda":
        gpu = calib.get("gpu")
        if not gpu:
            return {}
        bw, peak, bw_kind = gpu["copy_gbps"], gpu["fma_gflops"], "copy"
    else:
        bw, peak, bw_kind = calibrate.triad_gbps_at(calib, case.footprint or case.bytes or 0), None, "triad"
    if case.bound == "bytes":
        out = {"limit": bw, "limit_unit": "GB/s", "limit_kind": bw_kind}
        return dict(out, triad_curve_gbps=bw, limit_source="calibration curve") if device == "cpu" else out
    peak = calib["fma_gflops"] if peak is None else peak
    mem_roof = (case.flops / case.bytes) * bw if case.bytes else float("inf")
    if peak <= mem_roof:
        return {"limit": peak, "limit_unit": "GFLOP/s", "limit_kind": "FMA"}
    return {"limit": mem_roof, "limit_unit": "GFLOP/s", "limit_kind": bw_kind}


def _derive(rows: list[dict], case: Case, calib: dict) -> None:
    """Rates, % of limit and speed-ups of the ok rows of one case (in place)."""
    ok = {r["backend"]: r for r in rows if r["status"] == "ok"}
    ref_ms = ok["numpy"]["median_ms"] if "numpy" in ok else None
    # PyTorch on the same device: its CPU path for cpu rows, its CUDA path for cuda rows
    torch_ms = {dev: ok[name]["median_ms"] if name in ok else None
                for dev, name in (("cpu", "torch"), ("cuda", "torch_cuda"))}
    for r in rows:
        if r["status"] != "ok":
            continue
        s = r["median_ms"] * 1e-3
        r["gflops"] = case.flops / s / 1e9 if case.flops else None
        r["gbps"] = case.bytes / s / 1e9 if case.bytes else None
        rate = r["gflops"] if case.bound == "flops" else r["gbps"]
        dev = r.get("device", "cpu")
        lim = _limits(case, calib, dev)  # the CPU's measured limits, or the GPU's (calib["gpu"])
        r.update(lim)
        r["pct_of_limit"] = 100.0 * rate / lim["limit"] if lim and rate else None
        if lim and r.get("steady_ms") and r.get("steady_triad_gbps"):  # measured with the row
            r["steady_gbps"] = case.bytes / (r["steady_ms"] * 1e-3) / 1e9
            r.update(limit=r["steady_triad_gbps"], limit_source="triad timed with the row, both back-to-back",
                     pct_of_limit=100.0 * r["steady_gbps"] / r["steady_triad_gbps"])
        r["speedup_vs_ref"] = ref_ms / r["median_ms"] if ref_ms and r["backend"] != "numpy" else None
        t_ms = torch_ms.get(dev)
        is_torch = r["backend"] in ("torch", "torch_cuda")
        r["speedup_vs_torch"] = t_ms / r["median_ms"] if t_ms and not is_torch else None


def _validate(case: Case, backend, got, get_ref, inputs) -> None:
    custom = case.torch_check if (backend.kind == "torch" and case.torch_check) else case.check
    ref = get_ref() if case.reference is not None else None
    if custom is not None:
        custom(got, ref, inputs, backend.name)
    elif ref is not None:
        compare(got, ref, case.rtol, f"{case.id} on {backend.name}")


def _prepare(case: Case, name: str, b, inputs: dict, get_ref, refs: dict) -> list:
    """Build and validate the calls of one backend: [(impl, Prepared)]. Raises Unavailable,
    ValidationError, or whatever the backend raised."""
    with b.context():
        if b.kind == "deepkern":
            impls = [(name, case.deepkern(b, inputs))]
        elif case.torch is not None:
            impls = case.torch(b, inputs)
        else:
            raise Unavailable("no PyTorch equivalent")
        ready = []
        for impl, prep in impls:
            got = b.to_host(prep.run_first())
            if name == "numpy" and case.numpy_is_reference and case.id not in refs:
                refs[case.id] = got  # the numpy backend IS the reference: not computed twice
            _validate(case, b, got, get_ref, inputs)
            ready.append((impl, prep))
    if not ready:
        raise Unavailable("no implementation available")
    return ready


def run_case(case: Case, backends: dict, policy: TimingPolicy, calib: dict, inputs: dict,
             refs: dict, tick=lambda: None) -> list[dict]:
    """All rows of one case. ``backends``: name -> Backend, or the reason it is unavailable.
    ``refs`` caches reference outputs by case id for the length of the group.

    Every backend is validated first. The NumPy reference is then timed on its own (it is the
    slow baseline, and its temporaries would flush the caches between the others' runs); the
    other backends, and PyTorch's modes, are timed interleaved (timing.measure_interleaved), so
    the ratios between them see the same machine load.
    """

    def get_ref():
        if case.id not in refs:
            refs[case.id] = case.reference(inputs)
        return refs[case.id]

    rows: dict = {}
    entries = []  # (backend name, impl, Prepared, Backend)
    for name, b in backends.items():
        tick()
        if isinstance(b, str):
            rows[name] = _row(case, name, status="n/a", reason=b)
            continue
        if name == "numpy" and case.numpy_na:
            rows[name] = _row(case, name, status="n/a", reason=case.numpy_na)
            continue
        try:
            ready = _prepare(case, name, b, inputs, get_ref, refs)
            if name == "numpy":  # timed now, alone, and released
                (impl, prep), = ready
                timings = {impl: measure_interleaved([Entry(prep.fn, b.timer, b.context)], policy)[0]}
                rows[name] = _timed_row(case, name, b, timings)
                del prep, ready
            else:
                entries += [(name, impl, prep, b) for impl, prep in ready]
        except Unavailable as e:
            rows[name] = _row(case, name, status="n/a", reason=str(e))
        except ValidationError as e:
            rows[name] = _row(case, name, status="failed", reason=f"validation: {e}")
        except Exception as e:  # a crash of one backend must not hide the other figures
            rows[name] = _row(case, name, status="failed", reason=f"error: {_one_line(e)}")
    if entries:
        time.sleep(policy.settle_s)  # let NumPy's BLAS threads park (TimingPolicy.settle_s)
        try:
            timings = measure_interleaved([Entry(p.fn, b.timer, b.context) for _, _, p, b in entries], policy)
            by_backend: dict = {}
            for (name, impl, _, b), t in zip(entries, timings):
                by_backend.setdefault(name, (b, {}))[1][impl] = t
            for name, (b, ts) in by_backend.items():
                rows[name] = _timed_row(case, name, b, ts)
            _steady_limits(case, entries, rows)
        except Exception as e:
            for name, *_ in entries:
                rows[name] = _row(case, name, status="failed", reason=f"error while timing: {_one_line(e)}")
    del entries
    out = [rows[name] for name in backends]
    _derive(out, case, calib)
    return out


def _steady_limits(case: Case, entries: list, rows: dict, rounds: int = 4) -> None:
    """For a memory-bound case: each CPU row's op (its fastest mode) and a triad on a working
    set of the case's footprint, timed back-to-back in turn for ``rounds`` rounds; sets
    row["steady_ms"] (the op's median) and row["steady_triad_gbps"] (see the module doc)."""
    if case.bound != "bytes" or not case.bytes:
        return
    import numpy as np

    from .. import _C

    todo = [(name, p, b) for name, impl, p, b in entries
            if b.device == "cpu" and rows.get(name, {}).get("impl") == impl and rows[name]["status"] == "ok"]
    if not todo:
        return
    n = max(16, int(case.footprint or case.bytes) // 12)
    # one buffer, the arrays a few cache lines apart modulo 4 KiB (as calibrate.cpp's triad:
    # Intel cores slow down loads that alias an earlier store's address modulo 4 KiB)
    stride = (n + 15) // 16 * 16 + 16 * 5
    buf = np.empty(3 * stride + 48, np.float32)
    a, bb, cc = buf[:n], buf[stride + 16:stride + 16 + n], buf[2 * stride + 48:2 * stride + 48 + n]
    a[:], bb[:], cc[:] = 0.0, 1.0, 2.0
    triad = Entry(lambda: _C.triad_pass(a, bb, cc, 3.0), CpuTimer())
    for name, p, b in todo:
        per_run = rows[name]["median_ms"] * 1e-3
        k = max(3, min(10, int(0.03 / max(per_run, 1e-6))))  # ~30 ms of runs per turn at most
        ops, tri = [], []
        for _ in range(rounds):
            for e, out in ((Entry(p.fn, b.timer, b.context), ops), (triad, tri)):
                with _in_context(e):
                    e.fn()                                # back into its steady state
                    e.fn()
                    out += [e.timer.time(e.fn) for _ in range(k)]
        rows[name]["steady_ms"] = 1e3 * float(np.median(ops))
        rows[name]["steady_triad_gbps"] = 12.0 * n / float(np.median(tri)) / 1e9


def _one_line(e: Exception) -> str:
    return traceback.format_exception_only(type(e), e)[-1].strip()


def _timed_row(case: Case, name: str, b, timings: dict) -> dict:
    """The row of one backend; for PyTorch the fastest of its modes, naming it."""
    best = min(timings, key=lambda k: timings[k].median)
    row = _row(case, name, impl=best, validated=True, device=b.device, **timings[best].as_ms())
    if b.kind == "torch":
        row["torch_modes"] = {k: t.median * 1e3 for k, t in timings.items()}
    return row


def resolve_backends(names: list[str] | None, threads: int | None) -> dict:
    """name -> Backend for the ones that can run, or -> the reason for those that cannot.

    Without ``names``: every deepkern backend this build has, plus torch when installed
    (missing ones are skipped silently). Named ones that cannot run give n/a rows."""
    import deepkern

    explicit = bool(names)
    if not names:  # PyTorch's GPU rows when deepkern's cuda backend runs here
        names = [n for n in ORDER if n in deepkern.backends() or n == "torch"
                 or (n == "torch_cuda" and "cuda" in deepkern.backends())]
    out = {}
    for n in sorted(set(names), key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        try:
            out[n] = available(n, threads)
        except Unavailable as e:
            if explicit or n == "torch":
                out[n] = str(e)
    return out


def run(cases: list[Case], backends: dict, policy: TimingPolicy, calib: dict,
        progress: bool | None = None) -> list[dict]:
    """Every row of every case (cases of one group share inputs, freed after the group)."""
    from tqdm.auto import tqdm

    total = len(cases) * len(backends)
    rows = []
    # progress None: a bar when stderr is a terminal (tqdm's disable=None)
    disable = True if progress is False else None
    with tqdm(total=total, desc="bench", unit="row", file=sys.stderr, disable=disable,
              leave=False, dynamic_ncols=True) as bar:
        for _group, group_cases in itertools.groupby(cases, key=lambda c: c.group):
            group_cases = list(group_cases)
            inputs, refs = None, {}
            for case in group_cases:
                if inputs is None:
                    bar.set_postfix_str(f"{case.group}: preparing inputs")
                    inputs = case.setup()
                bar.set_postfix_str(case.id)
                rows += run_case(case, backends, policy, calib, inputs, refs, tick=lambda: bar.update(1))
            del inputs, refs
    return rows
