"""deepkern bench: the quick suite runs and reports sane figures; calibration and napkin math.

No speed is asserted here (speed is proven by benchmarks, not tests): only that the harness
produces a complete table of finite, positive figures, a JSON file of the documented shape,
and that its flop and byte counts are the formulas they claim to be.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import deepkern
from deepkern.bench import calibrate, cases, report
from deepkern.bench.timing import CpuTimer, TimingPolicy, measure


# ---------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `deepkern bench --quick --json` in a subprocess, with a private cache dir."""
    d = tmp_path_factory.mktemp("bench")
    out = d / "quick.json"
    env = dict(os.environ, XDG_CACHE_HOME=str(d / "cache"))
    r = subprocess.run([sys.executable, "-m", "deepkern", "bench", "--quick", "--no-progress",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out, encoding="utf-8") as f:
        doc = json.load(f)
    return r.stdout, doc


FAKE_CALIB = {"triad_curve": [{"bytes": 1 << 14, "gbps": 100.0}, {"bytes": 1 << 30, "gbps": 20.0}],
              "fma_gflops": 100.0, "triad_large_gbps": 20.0, "triad_large_bytes": 1 << 30,
              "threads": 1, "isa": "scalar", "fma_isa": "scalar", "source": "test"}


def _finite_positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_quick_table_has_every_case_and_backend(quick_run):
    stdout, doc = quick_run
    suite = cases.suite(quick=True)
    backends = doc["settings"]["backends"]
    assert {"numpy", "cpu"} <= set(backends)
    # one row per (case, backend), in suite order
    want = [(c.id, b) for c in suite for b in backends]
    assert [(r["case"], r["backend"]) for r in doc["results"]] == want
    # the printed table: a header, and a line for each row
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("op ") and "median ms" in line)
    body = [line for line in lines[header + 2:] if line.strip()]
    assert len(body) >= len(want)
    for col in report.COLUMNS:
        assert col in lines[header]
    for c in suite:
        assert any(line.startswith(c.op) for line in body), c.op
    assert f"{len(want)} rows in" in stdout


def test_quick_figures_are_finite_and_positive(quick_run):
    _, doc = quick_run
    rows = doc["results"]
    assert not [r for r in rows if r["status"] == "failed"], [r["reason"] for r in rows if r["status"] == "failed"]
    ok = [r for r in rows if r["status"] == "ok"]
    # the layer ops always run on numpy and cpu
    for op in ("conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "dropout", "relu"):
        assert {r["backend"] for r in ok if r["op"] == op} >= {"numpy", "cpu"}, op
    for r in ok:
        for k in report.OK_NUMBERS:
            assert _finite_positive(r[k]), (r["case"], r["backend"], k, r[k])
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["runs"] >= 1 and r["validated"] is True
        if r["bound"] == "flops":
            assert _finite_positive(r["gflops"]) and _finite_positive(r["flops"])
        if r["bound"] is not None:
            assert _finite_positive(r["gbps"]) and _finite_positive(r["bytes"])
            assert _finite_positive(r["limit"]) and _finite_positive(r["pct_of_limit"])
            assert r["limit_kind"] in ("FMA", "triad")
        for k in ("speedup_vs_ref", "speedup_vs_torch"):
            assert r[k] is None or _finite_positive(r[k])
        if r["backend"] == "cpu" and r["case"].startswith(("relu", "conv2d/c2/fwd")):
            assert _finite_positive(r["speedup_vs_ref"])
    for r in rows:
        if r["status"] == "n/a":
            assert r["reason"] and "median_ms" not in r


def test_quick_json_schema(quick_run):
    _, doc = quick_run
    assert doc["schema"] == report.SCHEMA
    for key in ("date", "command", "commit", "machine", "versions", "settings", "backends",
                "calibration", "elapsed_s", "results"):
        assert key in doc, key
    m = doc["machine"]
    for key in ("cpu", "simd", "num_threads", "openmp", "l3_bytes", "version"):
        assert key in m, key
    assert doc["versions"]["deepkern"] == deepkern.__version__
    assert doc["versions"]["numpy"] == np.__version__
    s = doc["settings"]
    assert s["quick"] is True and s["threads"] >= 1
    c = doc["calibration"]
    assert c["threads"] == s["threads"] and c["isa"] == m["simd"]
    assert _finite_positive(c["fma_gflops"]) and _finite_positive(c["triad_large_gbps"])
    sizes = [p["bytes"] for p in c["triad_curve"]]
    assert sizes == sorted(sizes) and len(sizes) >= 3
    assert all(_finite_positive(p["gbps"]) for p in c["triad_curve"])
    for r in doc["results"]:
        assert r["status"] in ("ok", "n/a", "failed")
        for key in ("case", "op", "direction", "shape", "backend", "work_note"):
            assert isinstance(r[key], str) and r[key], key


def test_torch_rows_name_the_fastest_mode(quick_run):
    _, doc = quick_run
    if "torch" not in doc["settings"]["backends"] or doc["versions"]["torch"] is None:
        pytest.skip("PyTorch is not installed")
    rows = [r for r in doc["results"] if r["backend"] == "torch" and r["op"].startswith("optim.")
            and r["status"] == "ok"]
    assert rows
    for r in rows:
        modes = r["torch_modes"]
        assert r["impl"] in modes and set(modes) <= {"fused", "foreach", "for-loop"}
        assert modes[r["impl"]] == pytest.approx(r["median_ms"]) and r["median_ms"] <= min(modes.values()) + 1e-12


def test_ops_filter_and_bad_arguments(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "deepkern", "bench", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300, env=env)
    r = run("--quick", "--ops", "relu/fwd", "--backend", "cpu", "--no-progress", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(x["case"], x["backend"]) for x in doc["results"]] == [("relu/fwd", "cpu")]
    r = run("--quick", "--ops", "no_such_op")
    assert r.returncode == 2 and "matches no case" in r.stderr
    r = run("--list")
    assert r.returncode == 0 and "conv2d/c7/bwd_weight" in r.stdout and "optim/adamw" in r.stdout


def test_python_m_deepkern_bench_module():
    r = subprocess.run([sys.executable, "-m", "deepkern.bench", "--list", "--ops", "relu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() and r.stdout.splitlines()[0].startswith("relu/fwd")


# ---------------------------------------------------------------------------- calibration

def test_triad_and_fma_are_positive_and_finite():
    t = calibrate.triad(4096, min_seconds=0.001, repeats=2)
    assert t["bytes"] == 12 * 4096 and _finite_positive(t["gbps"]) and t["gbps"] >= t["gbps_median"] * 0.999
    assert t["passes"] >= 1 and t["isa"] == deepkern.build_info()["simd"]
    for isa in ("", "scalar", "avx2", "avx512"):
        f = calibrate.fma_peak(isa, min_seconds=0.001, repeats=2)
        assert _finite_positive(f["gflops"]) and f["isa"] in ("scalar", "avx2", "avx512")
        if isa == "scalar":
            assert f["isa"] == "scalar"


def test_triad_odd_sizes_and_bad_arguments():
    from deepkern import _C

    for n in (1, 15, 17, 1000003):
        r = _C.calibrate_triad(n, 0.0, 1)  # verifies a = b + s*c on every slice boundary in C++
        assert r["bytes_per_run"] == 12.0 * n * r["passes"]
    with pytest.raises(ValueError, match="n must be"):
        _C.calibrate_triad(0, 0.0, 1)
    with pytest.raises(ValueError, match="repeats"):
        _C.calibrate_fma("", 0.0, 0)
    with pytest.raises(ValueError, match="isa must be"):
        _C.calibrate_fma("sse9", 0.0, 1)


def test_triad_uses_the_configured_threads():
    from deepkern import _C

    old = deepkern.get_num_threads()
    try:
        deepkern.set_num_threads(1)
        assert _C.calibrate_triad(1 << 12, 0.0, 1)["threads"] == 1
        assert _C.calibrate_fma("", 0.0, 1)["threads"] == 1
    finally:
        deepkern.set_num_threads(old)


def test_triad_curve_interpolation():
    calib = {"triad_curve": [{"bytes": 1 << 10, "gbps": 100.0}, {"bytes": 1 << 12, "gbps": 50.0},
                             {"bytes": 1 << 14, "gbps": 10.0}]}
    assert calibrate.triad_gbps_at(calib, 1 << 10) == 100.0
    assert calibrate.triad_gbps_at(calib, 100) == 100.0           # clamped below
    assert calibrate.triad_gbps_at(calib, 1 << 20) == 10.0        # clamped above
    assert calibrate.triad_gbps_at(calib, 1 << 11) == pytest.approx(75.0)  # halfway in log2
    assert calibrate.triad_gbps_at(calib, 1 << 13) == pytest.approx(30.0)


def test_calibration_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert calibrate.cache_path() == tmp_path / "deepkern" / "calibration.json"
    info = deepkern.build_info()
    assert calibrate.load_cached(info["cpu"], deepkern.get_num_threads(), info["simd"]) is None
    calib = calibrate.measure(quick=True)
    assert calib["cpu"] == info["cpu"] and calib["threads"] == deepkern.get_num_threads()
    calibrate.store(calib)
    got = calibrate.load_cached(info["cpu"], deepkern.get_num_threads(), info["simd"])
    assert got == json.loads(json.dumps(calib))
    assert calibrate.load_cached(info["cpu"], deepkern.get_num_threads() + 1, info["simd"]) is None
    assert calibrate.get()["source"].startswith("cache")
    (tmp_path / "deepkern" / "calibration.json").write_text("not json")
    assert calibrate.load_cached(info["cpu"], deepkern.get_num_threads(), info["simd"]) is None


# ---------------------------------------------------------------------------- napkin math

def test_conv_flops_formula_by_counting():
    # A conv of all-ones input and weight without padding: every output is the number of
    # multiply-adds that made it, so 2 * y.sum() counts the flops the formula claims.
    for C, OC, K, s, G in ((4, 6, 3, 1, 2), (3, 8, 1, 1, 1), (6, 6, 3, 2, 6), (2, 4, 2, 2, 1)):
        N, H, W = 2, 7, 6
        x = np.ones((N, C, H, W), np.float64)
        w = np.ones((OC, C // G, K, K), np.float64)
        y = deepkern.reference.conv2d(x, w, None, stride=s, groups=G)
        OH, OW = y.shape[2:]
        assert cases.conv_flops(N, C, OC, OH, OW, K, K, G) == 2 * y.sum()


def test_conv_bytes_formula():
    N, C, H, W, OC, OH, OW, K, G = 2, 4, 5, 5, 6, 3, 3, 3, 2
    x, w, y = N * C * H * W, OC * (C // G) * K * K, N * OC * OH * OW
    dims = (N, C, H, W, OC, OH, OW, K, K, G)
    assert cases.conv_bytes("fwd", *dims) == 4 * (x + w + y)
    assert cases.conv_bytes("bwd_data", *dims) == 4 * (y + w + x)
    assert cases.conv_bytes("bwd_weight", *dims) == 4 * (y + x + w)
    assert cases.conv_bytes("bwd", *dims) == 4 * (y + 2 * x + 2 * w)


def test_memory_bound_bytes_match_the_arrays():
    # the minimal bytes of each layer case = nbytes of the arrays it must read and write,
    # computed here from real arrays of the quick shapes
    ref = deepkern.reference
    by_id = {c.id: c for c in cases.layer_cases(2)}
    inp = by_id["relu/fwd"].setup()
    x, dy = inp["x"], inp["dy"]
    y, idx = ref.max_pool2d(x, 2, 2)
    _, mask = ref.dropout(x, 0.5, True, seed=1)
    expect = {
        "max_pool2d/fwd": x.nbytes + y.nbytes + idx.nbytes,
        "max_pool2d/bwd": y.nbytes + idx.nbytes + x.nbytes,
        "avg_pool2d/fwd": 2 * x.nbytes, "avg_pool2d/bwd": 2 * x.nbytes,
        "batch_norm/train_fwd": 2 * x.nbytes, "batch_norm/train_bwd": 3 * x.nbytes,
        "batch_norm/eval_fwd": 2 * x.nbytes,
        "batch_norm_relu/train_fwd": 2 * x.nbytes, "batch_norm_relu/train_bwd": 4 * x.nbytes,
        "dropout/fwd": 2 * x.nbytes + mask.nbytes, "dropout/bwd": 2 * dy.nbytes + mask.nbytes,
        "relu/fwd": 2 * x.nbytes, "relu/bwd": 3 * x.nbytes,
    }
    assert set(expect) == set(by_id)
    for cid, nbytes in expect.items():
        assert by_id[cid].bytes == nbytes, cid
        assert by_id[cid].footprint == nbytes, cid


def test_optimizer_bytes():
    specs = {s.name: s for s in cases.OPTIMIZERS}
    assert set(specs) == {"SGD", "Momentum", "NAG", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"}
    per_param = {"SGD": 12, "Momentum": 20, "NAG": 20, "Adagrad": 20, "Adadelta": 28,
                 "RMSprop": 20, "Adam": 28, "AdamW": 28}
    for name, b in per_param.items():
        moved, footprint = cases.optim_bytes(specs[name], 10)
        assert moved == 10 * b and footprint == 10 * 4 * specs[name].arrays_read
    oc = cases.optim_cases(1001, ntensors=20)
    sizes = [p.size for p in oc[0].setup()["p"]]
    assert len(sizes) == 20 and sum(sizes) == 1001


def test_optimizer_first_step_formulas_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(257).astype(np.float32)
    g = (0.1 * rng.standard_normal(257)).astype(np.float32)
    for spec in cases.OPTIMIZERS:
        t = torch.tensor(p0, requires_grad=True)
        t.grad = torch.tensor(g)
        getattr(torch.optim, spec.torch_name)([t], **spec.torch_kwargs, foreach=False).step()
        want = cases.optim_first_step(spec, p0, g) - p0
        got = t.detach().numpy().astype(np.float64) - p0
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max(), err_msg=spec.name)


def test_compare_catches_wrong_results():
    a = np.arange(10, dtype=np.float32)
    cases.compare([a], [a + 1e-6], 1e-3, "ok")
    with pytest.raises(cases.ValidationError, match="max"):
        cases.compare([a], [a * 1.01], 1e-3, "bad")
    with pytest.raises(cases.ValidationError, match="integer"):
        cases.compare([np.array([1, 2])], [np.array([1, 3])], 1e-3, "idx")
    with pytest.raises(cases.ValidationError, match="shape"):
        cases.compare([a[:5]], [a], 1e-3, "shape")
    with pytest.raises(cases.ValidationError, match="non-finite"):
        cases.compare([np.array([np.nan], np.float32)], [np.array([1.0])], 1e-3, "nan")
    cases.compare([a, None], [a, None], 1e-3, "None skipped")


def test_select_patterns():
    suite = cases.suite(quick=True)
    ids = lambda pats: [c.id for c in cases.select(suite, pats)]  # noqa: E731
    assert ids(["conv2d/c3"]) == ["conv2d/c3/fwd", "conv2d/c3/bwd", "conv2d/c3/bwd_data", "conv2d/c3/bwd_weight"]
    assert ids(["relu"]) == ["relu/fwd", "relu/bwd"]
    assert len(ids(["optim"])) == 8 and ids(["optim/adam*"]) == ["optim/adam", "optim/adamw"]
    assert ids(["*/bwd_weight"]) == [f"conv2d/c{k}/bwd_weight" for k in range(1, 8)]
    assert ids([]) == [c.id for c in suite]


def test_default_suite_shapes_are_the_issue_shapes():
    full = {c.id: c for c in cases.suite(quick=False)}
    assert len(full) == 7 * 4 + 13 + 8 + 1
    assert full["conv2d/c1/fwd"].shape == "c1 3->32 32x32 3x3 p1 N=64"
    assert full["conv2d/c6/fwd"].shape == "c6 64->64 32x32 3x3 s2 p1 N=64"
    assert full["conv2d/c7/fwd"].shape == "c7 64->64 32x32 3x3 p1 g64 N=64"
    assert full["conv2d/c4/fwd"].flops == 2 * 64 * 256 * 8 * 8 * 128 * 9
    assert full["relu/fwd"].bytes == 2 * 4 * 64 * 64 * 32 * 32
    assert full["optim/adam"].bytes == 28 * 10_000_000


def test_measure_policy():
    calls = []
    t = measure(lambda: calls.append(1), CpuTimer(), TimingPolicy(warmup=2, max_runs=5, min_runs=3, budget_s=10))
    assert len(t.runs) == 5 and len(calls) == 7 and t.min <= t.median <= t.max
    t = measure(lambda: None, CpuTimer(), TimingPolicy(warmup=0, max_runs=100, min_runs=3, budget_s=0.0))
    assert len(t.runs) == 3


def test_markdown_summary(quick_run):
    _, doc = quick_run
    md = report.markdown(doc)
    assert "| conv2d/c1/fwd |" in md and "| relu/bwd |" in md and "| optim/adamw |" in md
    head = report.markdown(doc, cases=report.HEADLINE)
    assert "| conv2d/c2/fwd |" in head and "| conv2d/c1/fwd |" not in head


def test_plot(quick_run, tmp_path):
    pytest.importorskip("matplotlib")
    _, doc = quick_run
    report.plot(doc, str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(quick_run, tmp_path, monkeypatch):
    _, doc = quick_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=r"pip install 'deepkern\[bench\]'"):
        report.plot(doc, str(tmp_path / "b.png"))
    assert not (tmp_path / "b.png").exists()


def test_without_torch_the_torch_rows_say_why(monkeypatch):
    from deepkern.bench import run_suite

    monkeypatch.setitem(sys.modules, "torch", None)
    doc = run_suite(ops=["relu/fwd"], quick=True, progress=False, calibration=FAKE_CALIB)
    rows = {r["backend"]: r for r in doc["results"]}
    assert rows["cpu"]["status"] == "ok" and rows["cpu"]["speedup_vs_torch"] is None
    assert rows["torch"]["status"] == "n/a" and "PyTorch is not installed" in rows["torch"]["reason"]


# ---------------------------------------------------------------------------- the hooks

def _fake_optim_module(lr_scale=1.0):
    """A stand-in for deepkern.optim with API.md's interface (SGD only), to exercise the
    optimizer cases before the real module lands; lr_scale != 1 makes it wrong."""
    import types

    class SGD:
        def __init__(self, params, lr=1e-3, momentum=0, nesterov=False):
            self.params, self.lr = list(params), lr * lr_scale

        def step(self):
            for p in self.params:
                p.data -= np.float32(self.lr) * p.grad

    mod = types.ModuleType("deepkern.optim")
    mod.SGD = SGD
    return mod


def test_optimizer_case_through_the_public_interface(monkeypatch):
    from deepkern.bench import run_suite

    monkeypatch.setitem(sys.modules, "deepkern.optim", _fake_optim_module())
    doc = run_suite(ops=["optim/sgd", "optim/adam"], backends=["numpy", "cpu"], quick=True,
                    progress=False, calibration=FAKE_CALIB)
    rows = {(r["case"], r["backend"]): r for r in doc["results"]}
    for b in ("numpy", "cpu"):
        r = rows[("optim/sgd", b)]
        assert r["status"] == "ok" and r["validated"] and _finite_positive(r["gbps"]), r
        assert r["limit_kind"] == "triad" and _finite_positive(r["pct_of_limit"])
        assert rows[("optim/adam", b)]["status"] == "n/a"
        assert rows[("optim/adam", b)]["reason"] == "deepkern.optim has no Adam"
    assert _finite_positive(rows[("optim/sgd", "cpu")]["speedup_vs_ref"])

    monkeypatch.setitem(sys.modules, "deepkern.optim", _fake_optim_module(lr_scale=1.5))
    doc = run_suite(ops=["optim/sgd"], backends=["cpu"], quick=True, progress=False, calibration=FAKE_CALIB)
    (r,) = doc["results"]
    assert r["status"] == "failed" and "validation" in r["reason"] and "median_ms" not in r


def test_optimizer_case_without_the_module(monkeypatch):
    from deepkern.bench import run_suite

    monkeypatch.setitem(sys.modules, "deepkern.optim", None)  # import raises ModuleNotFoundError
    doc = run_suite(ops=["optim/sgd"], backends=["cpu"], quick=True, progress=False, calibration=FAKE_CALIB)
    (r,) = doc["results"]
    assert r["status"] == "n/a" and r["reason"].startswith("deepkern.optim not available")


def test_training_epoch_hook(monkeypatch):
    import types

    from deepkern.bench import run_suite

    calls = []

    def benchmark_epoch(framework, *, batch_size=64, seed=0, steps=None):
        if framework == "cpu":
            raise RuntimeError("no cpu today")
        calls.append((framework, batch_size, seed, steps))
        return lambda: 2.25

    train = types.ModuleType("deepkern.train")
    train.benchmark_epoch = benchmark_epoch
    monkeypatch.setitem(sys.modules, "deepkern.train", train)
    doc = run_suite(ops=["train"], backends=["numpy", "cpu"], quick=True, progress=False, calibration=FAKE_CALIB)
    rows = {r["backend"]: r for r in doc["results"]}
    assert rows["numpy"]["status"] == "ok" and _finite_positive(rows["numpy"]["median_ms"])
    assert rows["numpy"]["bound"] is None and rows["numpy"].get("pct_of_limit") is None
    assert rows["cpu"]["status"] == "n/a" and rows["cpu"]["reason"] == "no cpu today"
    assert calls == [("numpy", 64, 0, 2)]

    del train.benchmark_epoch
    doc = run_suite(ops=["train"], backends=["cpu"], quick=True, progress=False, calibration=FAKE_CALIB)
    assert doc["results"][0]["reason"] == "deepkern.train has no benchmark_epoch hook yet"


def _fake_cupy():
    """Just enough of CuPy's surface (asarray, asnumpy, events) to run the cuda rows' plumbing
    on the host: device arrays are an ndarray subclass, events read the host clock."""
    import time
    import types

    cp = types.ModuleType("cupy")

    class ndarray(np.ndarray):
        pass

    class Event:
        def record(self):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    cp.ndarray = ndarray
    cp.asarray = lambda a: np.array(a).view(ndarray)
    cp.asnumpy = lambda a: np.asarray(a).view(np.ndarray)
    cp.cuda = types.SimpleNamespace(
        Event=Event, get_elapsed_time=lambda s, e: (e.t - s.t) * 1e3,
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
        Device=lambda: types.SimpleNamespace(id=0),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"Fake GPU"}))
    return cp


def test_cuda_rows_plumbing_with_a_stand_in_cupy(monkeypatch):
    from deepkern.bench import backends, runner
    from deepkern.bench.timing import TimingPolicy

    cp = _fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    b = backends.CudaBackend()
    assert b.describe() == "cuda (Fake GPU)" and b.timer.name == "cuda_events"
    inp = {"x": np.ones(3, np.float32), "_memo": object(), "k": 2}
    dev = b.to_device(inp)
    assert isinstance(dev["x"], cp.ndarray) and "_memo" not in dev and dev["k"] == 2
    assert type(b.to_host((dev["x"], None))[0]) is np.ndarray
    case = next(c for c in cases.suite(quick=True) if c.id == "relu/fwd")
    rows = runner.run_case(case, {"cuda": b}, TimingPolicy(warmup=0, max_runs=3, min_runs=1, budget_s=0),
                           FAKE_CALIB, case.setup(), {})
    assert rows[0]["status"] == "ok" and rows[0]["validated"] and _finite_positive(rows[0]["median_ms"])
    assert rows[0]["device"] == "cuda" and rows[0]["pct_of_limit"] is None  # CPU limits don't apply
    # the split conv rows call the _cuda kernels directly: n/a in a build without them
    if "cuda" not in deepkern.backends():
        split = next(c for c in cases.suite(quick=True) if c.id == "conv2d/c1/bwd_data")
        rows = runner.run_case(split, {"cuda": b}, TimingPolicy(warmup=0, max_runs=1, min_runs=1, budget_s=0),
                               FAKE_CALIB, split.setup(), {})
        assert rows[0]["status"] == "n/a" and "no CUDA module" in rows[0]["reason"]


def test_cuda_backend_without_cupy_says_why(monkeypatch):
    from deepkern.bench import backends

    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(backends.Unavailable, match="CuPy"):
        backends.CudaBackend()


# ---------------------------------------------------------------------------- the side-by-side triad

@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 4099])
def test_triad_pass_is_b_plus_s_c_on_any_thread_count(n):
    from deepkern import _C
    rng = np.random.default_rng(n)
    b, c = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    want = b + np.float32(0.5) * c
    outs, saved = [], deepkern.get_num_threads()
    try:
        for t in (1, 2, 3):
            deepkern.set_num_threads(t)
            a = np.full(n, np.nan, np.float32)
            _C.triad_pass(a, b, c, 0.5)
            outs.append(a)
    finally:
        deepkern.set_num_threads(saved)
    np.testing.assert_allclose(outs[0], want, rtol=1e-6, atol=1e-6)   # one FMA or a multiply and an add
    assert all(np.array_equal(o, outs[0]) for o in outs)


def test_triad_pass_rejects_bad_arrays_before_writing():
    from deepkern import _C
    a, b, c = np.zeros(8, np.float32), np.ones(8, np.float32), np.ones(8, np.float32)
    ro = a.copy()
    ro.setflags(write=False)
    for args, err in [((a.astype(np.float64), b, c), TypeError), ((a[::2], b[::2], c[::2]), ValueError),
                      ((a, b[:4], c), ValueError), ((a, a, c), ValueError), ((a[:6], a[2:], a[2:]), ValueError),
                      ((ro, b, c), ValueError), ((a.reshape(2, 4), b, c), ValueError)]:
        before = args[0].copy()
        with pytest.raises(err):
            _C.triad_pass(*args, 3.0)
        assert np.array_equal(args[0], before)


def test_memory_bound_rows_are_held_to_a_triad_timed_with_them():
    from deepkern.bench import run_suite

    doc = run_suite(ops=["relu/fwd"], backends=["numpy", "cpu"], quick=True, progress=False, calibration=FAKE_CALIB)
    rows = {r["backend"]: r for r in doc["results"]}
    cpu, ref = rows["cpu"], rows["numpy"]
    assert cpu["limit_source"].startswith("triad timed with the row")
    assert _finite_positive(cpu["steady_ms"]) and _finite_positive(cpu["steady_triad_gbps"])
    assert cpu["limit"] == cpu["steady_triad_gbps"]
    assert cpu["pct_of_limit"] == pytest.approx(100 * cpu["bytes"] / (cpu["steady_ms"] * 1e-3) / 1e9
                                                / cpu["steady_triad_gbps"])
    # the reference row (timed alone) keeps the calibration curve's figure
    assert ref["limit_source"] == "calibration curve" and ref["limit"] == ref["triad_curve_gbps"]
