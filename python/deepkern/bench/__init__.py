"""deepkern.bench: the microbenchmark harness behind ``deepkern bench``.

    deepkern bench                       # the full suite (a few minutes), table on stdout
    deepkern bench --quick               # every case on small shapes, a few seconds
    deepkern bench --ops conv2d/c3 relu --backend cpu,torch --json out.json --plot out.png
    deepkern bench --calibrate           # measure the machine's limits once and cache them

Every op and direction is validated once against the NumPy reference, then timed in this
process (warm-up, median of repeated runs, min and max) on each backend (``numpy``
reference, ``cpu``, ``cuda`` when built) and on PyTorch when it is installed, on the same
inputs, so the speed-ups are ratios measured side by side. Rates are expressed as a fraction
of the machine's own limits, measured by deepkern itself (``calibrate.py``).

Modules: ``cases`` (the suite and its napkin math), ``backends`` (where rows run),
``timing`` (timers and the run policy), ``calibrate`` (triad bandwidth, FMA peak, cache),
``runner`` (validate, time, derive), ``report`` (table, JSON, Markdown, PNG).
Importing this package is cheap (the CLI builds its parser from it); the work is imported
when a benchmark runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["add_parser", "main", "run_suite"]


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.replace(" ", ",").split(",") if x.strip()]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``deepkern bench`` on the CLI's subparsers (cli.EXTERNAL_COMMANDS)."""
    p = sub.add_parser(
        "bench", help="microbenchmarks: every op against the machine's limits, NumPy and PyTorch",
        description="Time every op and direction on each backend and on PyTorch, side by side, "
                    "against the machine's own measured limits (triad bandwidth, FMA peak).")
    p.add_argument("--ops", nargs="+", metavar="PATTERN", default=None,
                   help="cases to run: op names (conv2d, max_pool2d, batch_norm, dropout, relu, optim, "
                        "train), case ids or shell patterns (conv2d/c3/*, '*/bwd*', optim/adam*); "
                        "comma or space separated. --list shows them all")
    p.add_argument("--backend", type=_csv, default=None, metavar="NAMES",
                   help="comma-separated subset of numpy,cpu,cuda,torch (default: all available)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for deepkern, PyTorch and the calibration (default: deepkern's)")
    p.add_argument("--repeat", type=int, default=0,
                   help="timed runs per row (default 20, quick 3); slow rows stop after ~1 s "
                        "once 3 runs are done")
    p.add_argument("--quick", action="store_true",
                   help="every case on small shapes, few runs: a smoke test in seconds")
    p.add_argument("--json", metavar="PATH", help="write machine info, versions and every figure as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a Markdown summary table (cpu rows)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of speed-ups and %% of limit "
                                                  "(needs matplotlib: pip install 'deepkern[bench]')")
    p.add_argument("--calibrate", action="store_true",
                   help="measure the machine's limits now, store them in the user cache "
                        "(keyed by CPU, threads, SIMD level) and exit")
    p.add_argument("--list", action="store_true", help="list the cases (id, shape, work) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
    return p


def run_suite(ops=None, backends=None, threads=0, repeat=0, quick=False, progress=None,
              calibration=None):
    """Run the (selected) suite; returns the JSON document (dict) of the run.

    ops: list of patterns (see ``--ops``); backends: list of names; threads: 0 = unchanged;
    repeat: timed runs per row (0 = default); calibration: a calibration dict (None: cached or
    measured now).
    """
    import deepkern

    from . import calibrate, cases, report, runner
    from .timing import TimingPolicy

    t0 = time.perf_counter()
    load_start = calibrate.loadavg()
    if threads:
        deepkern.set_num_threads(threads)
    threads = deepkern.get_num_threads()
    selected = cases.select(cases.suite(quick=quick), [x for o in (ops or []) for x in _csv(o)])
    if not selected:
        raise ValueError(f"--ops {' '.join(ops)} matches no case; see `deepkern bench --list`")
    policy = TimingPolicy(warmup=1 if quick else 2, max_runs=repeat or (3 if quick else 20),
                          min_runs=min(repeat or 3, 2 if quick else 3), budget_s=0.05 if quick else 1.0,
                          settle_s=0.02 if quick else 0.15)
    be = runner.resolve_backends(backends, threads)
    calib = calibration or calibrate.get(quick=quick, progress=report.progress_printer(progress is not False))
    if any(getattr(b, "device", None) == "cuda" for b in be.values()) and "gpu" not in calib:
        calib = dict(calib, gpu=calibrate.gpu(quick=quick))  # the limits of the cuda rows
    rows = runner.run(selected, be, policy, calib, progress=progress)
    settings = {"threads": threads, "quick": quick, "ops": ops, "backends": list(be),
                "warmup": policy.warmup, "max_runs": policy.max_runs, "min_runs": policy.min_runs,
                "budget_s": policy.budget_s, "settle_s": policy.settle_s}
    doc = report.document(rows, calib, settings, be, time.perf_counter() - t0)
    # how busy the machine was: a load near the core count means other processes competed
    doc["machine"]["loadavg_start"], doc["machine"]["loadavg_end"] = load_start, calibrate.loadavg()
    return doc



def cmd_bench(args) -> int:
    import deepkern

    from . import calibrate, cases, report

    if args.threads < 0 or args.repeat < 0:
        print("deepkern bench: --threads and --repeat must be positive", file=sys.stderr)
        return 2
    if args.threads:
        deepkern.set_num_threads(args.threads)
    if args.list:
        for c in cases.select(cases.suite(quick=args.quick), [x for o in (args.ops or []) for x in _csv(o)]):
            work = ", ".join(([f"{c.flops / 1e9:.3g} GFLOP"] if c.flops else []) +
                             ([f"{c.bytes / 1e6:.4g} MB"] if c.bytes else []))
            print(f"{c.id:26s} {c.shape:40s} {work:28s} {c.work_note}")
        return 0
    if args.calibrate:
        calib = calibrate.measure(quick=False, progress=report.progress_printer(not args.no_progress))
        calib["source"] = "measured now"
        path = calibrate.store(calib)
        print("\n".join(report.calibration_lines(calib)))
        print(f"stored in {path}")
        return 0

    print("\n".join(report.header_lines()), flush=True)
    load, ncpu = calibrate.loadavg(), os.cpu_count() or 1
    if load is not None and load > 0.5 * ncpu:
        print(f"note: load average {load} on {ncpu} CPUs before starting: other processes compete "
              "for the cores, expect noisy figures", flush=True)
    try:
        doc = run_suite(ops=args.ops, backends=args.backend, threads=args.threads, repeat=args.repeat,
                        quick=args.quick, progress=False if args.no_progress else None)
    except ValueError as e:
        print(f"deepkern bench: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.calibration_lines(doc["calibration"])))
    print()
    print("\n".join(report.table_lines(doc["results"])))
    n_failed = sum(r["status"] == "failed" for r in doc["results"])
    print(f"\n{len(doc['results'])} rows in {doc['elapsed_s']:.0f} s; "
          f"{sum(r['status'] == 'ok' for r in doc['results'])} timed, "
          f"{sum(r['status'] == 'n/a' for r in doc['results'])} n/a, {n_failed} failed")
    if args.json:
        report.write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report.markdown(doc))
        print(f"wrote {args.markdown}")
    if args.plot:
        try:
            report.plot(doc, args.plot)
            print(f"wrote {args.plot}")
        except RuntimeError as e:
            print(f"deepkern bench: {e}", file=sys.stderr)
            return 2
    return 1 if n_failed else 0


def main(argv=None) -> int:
    """``python -m deepkern.bench`` (same options as ``deepkern bench``)."""
    p = argparse.ArgumentParser(prog="deepkern")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
