"""Timing one callable: warm-up, repeated runs, median (and min, max).

The machine deepkern is developed on is shared and noisy, so every figure is the median of
several runs taken after warm-up, in the same process as the figures it is compared with.
Min and max are kept to show the spread.

Timers are pluggable (``CpuTimer`` here, ``CudaEventTimer`` for the cuda backend): a timer
measures the time of ``fn()`` on its device, so asynchronous GPU work is timed with events
recorded on the stream rather than with the host clock.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Times of the timed runs of one measurement, in seconds."""

    runs: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    def as_ms(self) -> dict:
        return {"median_ms": self.median * 1e3, "min_ms": self.min * 1e3,
                "max_ms": self.max * 1e3, "runs": len(self.runs)}


class CpuTimer:
    """Host wall clock (``time.perf_counter``) around a synchronous call."""

    name = "perf_counter"

    def time(self, fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def synchronize(self) -> None:
        pass


class CudaEventTimer:
    """CUDA events recorded on the current CuPy stream around the call.

    ``fn`` launches work asynchronously; the end event is waited for, and the elapsed time
    between the two events is the device time of everything launched in between (llm.c's
    ``benchmark_kernel`` does the same with cudaEvent*).
    """

    name = "cuda_events"

    def __init__(self):
        import cupy  # noqa: F401  (ImportError means: no CuPy, no cuda rows)

        self._cupy = cupy

    def time(self, fn) -> float:
        cp = self._cupy
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) * 1e-3

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()


class TorchCudaEventTimer:
    """CudaEventTimer for PyTorch's rows: torch.cuda events on its current stream."""

    name = "cuda_events"

    def __init__(self, torch):
        self._torch = torch

    def time(self, fn) -> float:
        cuda = self._torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()


@dataclass
class TimingPolicy:
    """How many runs a measurement gets.

    warmup:   untimed calls after the validation call (which is itself the first warm-up).
    max_runs: the number of timed runs (``--repeat``).
    min_runs: fewer runs are never taken, even when the budget is spent.
    budget_s: once the timed runs have used this much time and min_runs are done, stop: this
              keeps slow cases (the NumPy reference of a large convolution) from dominating the
              suite's run time while fast ones still get max_runs samples.
    settle_s: pause after NumPy work before timing the others. NumPy's BLAS (OpenBLAS) keeps
              its worker threads spinning for ~0.1 s after a multi-threaded call (2**28
              cycles); on a machine with few cores they take the cores the next kernel wants:
              the first deepkern call after a reference convolution measured 2x slower.
    """

    warmup: int = 2
    max_runs: int = 20
    min_runs: int = 3
    budget_s: float = 1.0
    settle_s: float = 0.15


@dataclass
class Entry:
    """One thing to time: the call, the timer of its device, the context it runs in (entered
    around each call, outside the timed region)."""

    fn: object
    timer: object
    context: object = None  # a zero-argument callable returning a context manager


def _in_context(e: Entry):
    import contextlib

    return e.context() if e.context is not None else contextlib.nullcontext()


def measure_interleaved(entries: list, policy: TimingPolicy) -> list:
    """Time several calls round-robin: run 1 of each, then run 2 of each, ...

    Comparing A with B on a shared machine, the load drifts over seconds; timing all of A and
    then all of B would put the drift into the ratio. Interleaving gives every entry the same
    share of quiet and busy moments. Each entry stops on its own terms (policy).

    With several entries, each turn first makes one untimed call, then the timed one: the
    previous entry's turn has evicted this one's arrays from the caches (a 16 MiB tensor and
    its output fill a 32 MiB L3), and without the re-warming call every entry would be timed
    cold, from DRAM, while the triad it is held to is measured warm on the same working set
    (calibrate.py). Measured: avg_pool2d on (64, 64, 32, 32) 0.84 ms interleaved cold with
    PyTorch vs 0.38 ms warm (bench/NOTES.md). Every entry, PyTorch's included, gets the same
    treatment, so the ratios stay fair.
    """
    for e in entries:
        with _in_context(e):
            for _ in range(policy.warmup):
                # A call slower than half the budget is already warm after the validation call.
                if e.timer.time(e.fn) > policy.budget_s / 2:
                    break
    timings = [Timing() for _ in entries]
    spent = [0.0] * len(entries)
    active = list(range(len(entries)))
    while active:
        for i in list(active):
            e = entries[i]
            with _in_context(e):
                if len(entries) > 1 and len(active) > 1:
                    e.fn()                                   # re-warm the caches (see above)
                t = e.timer.time(e.fn)
            timings[i].runs.append(t)
            spent[i] += t
            n = len(timings[i].runs)
            if n >= policy.max_runs or (n >= policy.min_runs and spent[i] >= policy.budget_s):
                active.remove(i)
    return timings


def measure(fn, timer, policy: TimingPolicy) -> Timing:
    """Warm up, then time ``fn`` per ``policy``; returns the per-run times."""
    return measure_interleaved([Entry(fn, timer)], policy)[0]
