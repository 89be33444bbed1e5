"""deepkern bench's cuda parts without a GPU: the GPU limits of cuda rows, PyTorch CUDA as their
comparison, the optimizer cases on CUDA arrays (NumPy-backed CuPy, emulated kernels)."""

from __future__ import annotations

import pytest

from deepkern.bench import cases, report, runner
from deepkern.bench.backends import Backend

GPU = {"device": "test GPU", "compute_capability": "9.0", "copy_bytes": 1 << 30,
       "copy_gbps": 3000.0, "copy_gbps_median": 2900.0, "fma_gflops": 60000.0, "fma_gflops_median": 59000.0}
CPU = {"triad_curve": [{"bytes": 1 << 14, "gbps": 100.0}, {"bytes": 1 << 30, "gbps": 20.0}],
       "fma_gflops": 500.0, "gpu": GPU}


def _case(**kw):
    return cases.Case(id="x/y", op="x", direction="fwd", shape="s", group="g", setup=dict,
                      deepkern=None, torch=None, reference=None, **kw)


def test_cuda_rows_are_held_to_the_gpu_limits():
    mem = _case(bytes=3e9, footprint=3e9)
    assert runner._limits(mem, CPU, "cuda") == {"limit": 3000.0, "limit_unit": "GB/s", "limit_kind": "copy"}
    assert runner._limits(mem, CPU, "cpu")["limit_kind"] == "triad"
    conv = _case(flops=1e12, bytes=1e9, footprint=1e9)  # intensity 1000 flop/byte: compute-bound
    assert runner._limits(conv, CPU, "cuda") == {"limit": 60000.0, "limit_unit": "GFLOP/s", "limit_kind": "FMA"}
    thin = _case(flops=1e9, bytes=1e9, footprint=1e9)  # 1 flop/byte: the copy bandwidth bounds it
    assert runner._limits(thin, CPU, "cuda")["limit"] == pytest.approx(3000.0)
    assert runner._limits(mem, dict(CPU, gpu=None), "cuda") == {}


def test_cuda_rows_compare_with_pytorch_cuda():
    c = _case(bytes=3e9, footprint=3e9)

    def row(backend, ms, device):
        r = runner._row(c, backend, median_ms=ms, device=device)
        return r
    rows = [row("cpu", 100.0, "cpu"), row("cuda", 2.0, "cuda"), row("torch", 50.0, "cpu"),
            row("torch_cuda", 3.0, "cuda")]
    runner._derive(rows, c, CPU)
    cpu, cuda, torch, torch_cuda = rows
    assert cuda["speedup_vs_torch"] == pytest.approx(1.5) and cpu["speedup_vs_torch"] == pytest.approx(0.5)
    assert torch_cuda["speedup_vs_torch"] is None
    assert cuda["pct_of_limit"] == pytest.approx(100 * (3e9 / 2e-3 / 1e9) / 3000.0)
    assert any("GPU" in line and "copy 3000 GB/s" in line
               for line in report.calibration_lines(dict(CPU, threads=1, isa="avx2", source="t", fma_isa="avx2",
                                                         triad_large_gbps=20.0, triad_large_bytes=1 << 30)))


def test_optimizer_cases_run_on_cuda_arrays(monkeypatch):
    """The optim cases' deepkern build on the cuda backend: CuPy parameters stepped by the
    (emulated) CUDA kernels, validated against the first-step formula like the other rows."""
    from cuda_host import fake_cupy

    cp, _, _ = fake_cupy.install(monkeypatch)

    class FakeCudaBackend(Backend):
        device = "cuda"

        def to_device(self, inputs):
            return {k: [cp.asarray(a) for a in v] for k, v in inputs.items()}

        def to_host(self, out):
            return [cp.asnumpy(a) for a in out] if isinstance(out, list) else cp.asnumpy(out)

    b = FakeCudaBackend("cuda")
    for case in cases.optim_cases(20_000, 3):
        inp = case.setup()
        prep = case.deepkern(b, inp)
        got = prep.run_first()
        case.check(got, case.reference(inp), inp, "cuda")
        prep.fn()  # a timed step
