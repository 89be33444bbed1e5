"""Data-parallel scaling of deepkern.distributed: measurements and the scaling model.

    python bench/distributed.py all            # everything below, then the README tables
    python bench/distributed.py throughput     # 1 rank x 1 thread vs mpirun -n 2 x 1 thread, alternated
    python bench/distributed.py allreduce      # allreduce times on 2, 3, 4 ranks -> alpha, beta fit
    python bench/distributed.py overlap        # backward, allreduce, and DDP backward with/without overlap
    python bench/distributed.py model          # predicted throughput/efficiency to 64 ranks

The sub-modes run under mpirun are the same file with ``worker-*`` modes. Results go to
bench/results/distributed.json. Every comparison alternates its two sides in one run and
reports medians (the machine is shared: see the load averages printed with each result).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "distributed.json")
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           PYTHONUNBUFFERED="1")


def mpirun(n, *args, timeout=600):
    exe = os.path.join(os.path.dirname(sys.executable), "mpirun")
    fits = n <= (os.cpu_count() or 1)
    # one core per rank when they fit; more ranks than cores: no binding, and no spinning waits
    cmd = [exe if os.path.exists(exe) else "mpirun", "-n", str(n), "--oversubscribe", "--bind-to",
           "core" if fits else "none", sys.executable, __file__, *args]
    env = ENV if fits else dict(ENV, DEEPKERN_DIST_SPIN_US="0")
    return _json_tail(subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout))


def single(*args, timeout=600):
    # pinned to one core, as mpirun --bind-to core pins each rank: the same treatment by the scheduler
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    return _json_tail(subprocess.run(pin + [sys.executable, __file__, *args], capture_output=True, text=True,
                                     env=ENV, timeout=timeout))


def _json_tail(p):
    if p.returncode != 0:
        raise RuntimeError(f"{p.args} failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def med(v):
    return float(np.median(v))


# ---------------------------------------------------------------------------- workers (each rank)

def _setup(model_name, per_rank_batch):
    import deepkern
    import deepkern.distributed as dist
    from deepkern import data, models, nn, optim
    deepkern.set_num_threads(1)
    g = dist.init()
    deepkern.manual_seed(0)
    if model_name == "digits":
        model = models.digits_cnn()
    elif model_name == "wide":                   # the digits CNN at 128-256 channels
        model = models.digits_cnn(channels=(128, 256))
    else:                                        # "vgg": 3 convolutions and a 2 MB hidden layer,
        model = nn.Sequential(                   # whose gradient is ready first in backward
            nn.Conv2d(1, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 10))
        models.init_weights(model)
    (x, y), _, _ = data.digits_splits(val_size=0.1, seed=0)
    x = data.Standardizer().fit(x).transform(x)
    idx = np.random.default_rng(g.rank).integers(0, len(x), (64, per_rank_batch))
    batches = [(np.ascontiguousarray(x[i]), y[i]) for i in idx]
    return dist, g, model, optim.Adam(model.parameters(), lr=2e-3), nn.CrossEntropyLoss(label_smoothing=0.1), batches


def worker_step(model_name, global_batch, steps, overlap="1", progress_thread="auto"):
    """Training steps at global batch B split over the ranks; rank 0 prints the timings."""
    global_batch, steps = int(global_batch), int(steps)
    import deepkern.distributed as dist
    g0 = dist.init()
    dist_, g, model, opt, crit, batches = _setup(model_name, global_batch // g0.size)
    net = (dist.DistributedDataParallel(model, overlap=overlap == "1", broadcast_buffers=False,
                                        progress_thread={"1": True, "0": False}.get(progress_thread))
           if g.size > 1
           else model)                            # as DistributedTrainer: buffers synced before evaluation
    times, cpu = [], []
    block = 10                                   # timed in blocks of 10 steps, as training runs: no
    for i in range(steps // block + 1):          # barrier between steps (only the gradient allreduce)
        g.barrier()
        c0 = time.thread_time()                  # CPU time of this rank's main thread: what the
        t0 = time.perf_counter()                 # step costs when no other process takes the core
        for j in range(block):
            xb, yb = batches[(i * block + j) % len(batches)]
            crit(net(xb), yb)
            net.zero_grad()
            net.backward(crit.backward())
            opt.step()
        # the wait spins (bench/NOTES.md: its adaptive spin), so its CPU time is its wall time
        exposed = net.timings["exposed_comm"] if g.size > 1 else ()
        waited = sum(exposed[-k] for k in range(1, block + 1)) if exposed else 0.0
        t = np.array([(time.perf_counter() - t0) / block, (time.thread_time() - c0 - waited) / block])
        g.allreduce_(t, op="max")                # a block lasts as long as its slowest rank
        if i >= 1:                               # the first block warms up
            times.append(float(t[0]))
            cpu.append(float(t[1]))
    out = {"ranks": g.size, "step_ms": 1e3 * med(times), "samples_per_s": global_batch / med(times),
           "cpu_step_ms": 1e3 * med(cpu)}
    if g.size > 1:
        out["exposed_comm_ms"] = 1e3 * med(list(net.timings["exposed_comm"])[10:])
        out["backward_ms"] = 1e3 * med(list(net.timings["backward"])[10:])
        out["buckets"] = net.buckets
    if g.rank == 0:
        print(json.dumps(out))


def worker_allreduce(reps):
    """Median time of a blocking (deepkern Group) allreduce of n bytes, for n = 4 B .. 16 MiB."""
    import deepkern.distributed as dist
    g = dist.init()
    rows = []
    for nbytes in [4, 64, 1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22, 1 << 24]:
        buf = np.ones(nbytes // 4, np.float32)
        ts = []
        for _ in range(int(reps) + 2):
            g.barrier()
            t0 = time.perf_counter()
            g.allreduce_(buf)
            ts.append(time.perf_counter() - t0)
        t = np.array([med(ts[2:])])
        g.allreduce_(t, op="max")
        rows.append((nbytes, float(t[0])))
    if g.rank == 0:
        print(json.dumps({"ranks": g.size, "rows": rows}))


def worker_overlap(model_name, per_rank_batch, reps):
    """Per step: backward alone (no communication), the buckets' allreduce alone, and DDP's
    backward with the allreduces started during backward (overlap) or after it (none)."""
    import deepkern.distributed as dist
    per_rank_batch, reps = int(per_rank_batch), int(reps)
    dist_, g, model, opt, crit, batches = _setup(model_name, per_rank_batch)
    nets = {k: dist.DistributedDataParallel(model, broadcast_buffers=False, progress_thread=k == "thread")
            for k in ("plain", "thread")}
    res = {"bwd": [], "comm": [], True: [], False: [], "thread": []}
    for i in range(reps + 2):
        xb, yb = batches[i % len(batches)]
        for kind in ("bwd", "comm", True, False, "thread"):
            net = nets["thread" if kind == "thread" else "plain"]
            net.overlap = kind is not False
            crit(net(xb), yb)
            net.zero_grad()
            grad = crit.backward()
            g.barrier()
            t0 = time.perf_counter()
            if kind == "bwd":
                model.backward(grad)               # the layers' hooks are idle outside DDP.backward
            elif kind == "comm":
                net.allreduce_buckets()
            else:
                net.backward(grad)
            t = np.array([time.perf_counter() - t0])
            g.allreduce_(t, op="max")
            if i >= 2:
                res[kind].append(float(t[0]))
    bwd, comm, on, off, thr = (1e3 * med(res[k]) for k in ("bwd", "comm", True, False, "thread"))
    # hidden: what the overlapped DDP backward saves against backward + allreduce measured alone
    # (the conservative reading: starting the allreduce after backward costs more than that sum
    # on a loaded machine, which would credit the overlap with more than it hides)
    hidden = max(0.0, bwd + comm - on)
    out = {"model": model_name, "per_rank_batch": per_rank_batch, "backward_ms": bwd, "allreduce_ms": comm,
           "ddp_backward_overlap_ms": on, "ddp_backward_no_overlap_ms": off, "hidden_ms": hidden,
           "overlap_fraction": min(1.0, hidden / comm) if comm > 0 else 0.0,
           "ddp_backward_progress_thread_ms": thr,
           "overlap_fraction_progress_thread": min(1.0, max(0.0, bwd + comm - thr) / comm) if comm > 0 else 0.0,
           "grad_bytes": int(sum(p.data.nbytes for p in model.parameters())), "buckets": net.buckets}
    if g.rank == 0:
        print(json.dumps(out))


def worker_compute(per_rank_batch, reps):
    """1 thread: conv2d 64->64 3x3 on 32x32 (ResNet-18's CIFAR layer) forward + backward GFLOP/s,
    and Adam over 11.7M float32 parameters (ResNet-18's size)."""
    import deepkern
    from deepkern import nn, optim
    deepkern.set_num_threads(1)
    b = int(per_rank_batch)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = np.random.default_rng(0).standard_normal((b, 64, 32, 32)).astype(np.float32)
    ts = []
    for _ in range(int(reps) + 1):
        t0 = time.perf_counter()
        y = conv(x)
        conv.backward(np.ones_like(y))
        conv.weight.grad = None
        ts.append(time.perf_counter() - t0)
    flops = 3 * 2 * b * 64 * 64 * 9 * 32 * 32          # forward + input grad + weight grad
    p = nn.Parameter(np.zeros(11_700_000, np.float32))
    p.grad = np.ones_like(p.data)
    opt = optim.Adam([p], lr=1e-3)
    ots = []
    for _ in range(4):
        t0 = time.perf_counter()
        opt.step()
        ots.append(time.perf_counter() - t0)
    print(json.dumps({"conv_gflops": flops / med(ts[1:]) / 1e9, "adam_11.7M_ms": 1e3 * med(ots[1:])}))


# ---------------------------------------------------------------------------- drivers

def load_results():
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {}


def save_results(res):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(res, f, indent=1)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def running_now():
    """Processes running or runnable right now (/proc/loadavg's 4th field), this reader excluded."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0]) - 1


def wait_quiet(below, max_wait):
    """Wait (up to max_wait s) until fewer than ``below`` other processes are runnable."""
    t0 = time.monotonic()
    while below and running_now() >= below and time.monotonic() - t0 < max_wait:
        time.sleep(0.5)
    return running_now()


def run_throughput(repeats, steps, quiet_below=0, max_wait=0):
    one, two, half, thread_on = [], [], [], []
    loads, running = [], []
    for r in range(repeats):                     # alternate the sides: both see the same load drift
        running.append(wait_quiet(quiet_below, max_wait))
        loads.append(os.getloadavg()[0])
        one.append(single("worker-step", "digits", "256", str(steps)))
        two.append(mpirun(2, "worker-step", "digits", "256", str(steps)))
        # one rank at the per-rank batch (128): separates the parallel efficiency from the
        # kernels' own batch-size effects (a smaller batch can be faster per sample: caches)
        half.append(single("worker-step", "digits", "128", str(steps)))
        thread_on.append(mpirun(2, "worker-step", "digits", "256", str(steps), "1", "1"))
        print(f"  repeat {r + 1}: 1 rank {one[-1]['samples_per_s']:.0f} samples/s, 2 ranks "
              f"{two[-1]['samples_per_s']:.0f} samples/s (exposed comm {two[-1]['exposed_comm_ms']:.3f} ms, "
              f"load {loads[-1]:.1f}, {running[-1]} other processes runnable); 2 ranks with the progress "
              f"thread forced on {thread_on[-1]['samples_per_s']:.0f}", file=sys.stderr)
    s1, s2 = med([o["samples_per_s"] for o in one]), med([o["samples_per_s"] for o in two])
    ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(one, two)]
    return {"global_batch": 256, "steps": steps, "repeats": repeats, "one_rank_samples_per_s": s1,
            "two_ranks_samples_per_s": s2, "ratio_of_medians": s2 / s1, "median_paired_ratio": med(ratios),
            "paired_ratios": ratios, "one_rank_step_ms": med([o["step_ms"] for o in one]),
            "two_ranks_step_ms": med([o["step_ms"] for o in two]),
            "two_ranks_backward_ms": med([o["backward_ms"] for o in two]),
            "two_ranks_exposed_comm_ms": med([o["exposed_comm_ms"] for o in two]),
            "one_rank_batch128_step_ms": med([o["step_ms"] for o in half]),
            "two_ranks_progress_thread_on_samples_per_s": med([o["samples_per_s"] for o in thread_on]),
            "parallel_efficiency_at_128_per_rank": med([o["step_ms"] for o in half]) / med([o["step_ms"] for o in two]),
            "load_averages": loads, "runnable_at_start": running,
            # the CPU time a step costs the busiest rank's main thread outside the gradient
            # allreduce's wait: the work each rank does (its compute, the hooks, starting and
            # polling the collectives); + the allreduce's latency on a quiet machine, it is the
            # step the 2 ranks would take with a core each and nobody else
            "one_rank_cpu_step_ms": med([o["cpu_step_ms"] for o in one]),
            "two_ranks_cpu_step_ms": med([o["cpu_step_ms"] for o in two]),
            "cpu_time_ratio": med([o["cpu_step_ms"] for o in one]) / med([o["cpu_step_ms"] for o in two])}


def run_allreduce(reps):
    out = {}
    for n in (2, 3, 4):
        out[str(n)] = mpirun(n, "worker-allreduce", str(reps))["rows"]
    # ring allreduce: T(R, n) = 2 alpha + 2 (R-1)/R * n / beta; least squares in alpha, 1/beta
    A, t = [], []
    for R, rows in out.items():
        R = int(R)
        for nbytes, secs in rows:
            A.append([2 * (R - 1), 2 * (R - 1) / R * nbytes])
            t.append(secs)
    A, t = np.array(A), np.array(t)
    w = 1.0 / t                                   # relative error: small messages count as much as large
    coef, *_ = np.linalg.lstsq(A * w[:, None], t * w, rcond=None)
    alpha, inv_beta = float(coef[0]), float(coef[1])
    return {"times": out, "alpha_us": 1e6 * alpha, "beta_GBps": 1e-9 / inv_beta if inv_beta > 0 else float("inf")}


def run_overlap(reps):
    return [mpirun(2, "worker-overlap", m, str(b), str(reps)) for m, b in (("digits", 128), ("wide", 32), ("vgg", 32))]


def t_allreduce(R, nbytes, alpha, beta):
    return 0.0 if R == 1 else 2 * (R - 1) * alpha + 2 * (R - 1) / R * nbytes / beta


def predict(step_ms, bwd_ms, grad_bytes, last_bucket_bytes, alpha_us, beta_GBps, per_rank_batch, hidden=1.0,
            ranks=(1, 2, 4, 8, 16, 32, 64)):
    """Weak scaling at a fixed per-rank batch: a step is the 1-rank compute plus the part of the
    gradient allreduce that backward does not hide. ``hidden``: the fraction of the allreduce
    that runs behind backward (1: ideal, all of it up to the backward time; the benchmark's
    measured fraction otherwise); the last bucket, which starts when backward ends, is always
    exposed."""
    a, b = alpha_us * 1e-6, beta_GBps * 1e9
    rows = []
    for R in ranks:
        comm = t_allreduce(R, grad_bytes, a, b)
        exposed = 0.0
        if R > 1:
            exposed = max(t_allreduce(R, last_bucket_bytes, a, b), comm - min(hidden * comm, bwd_ms * 1e-3))
        step = step_ms * 1e-3 + exposed
        rows.append({"ranks": R, "allreduce_ms": 1e3 * comm, "exposed_ms": 1e3 * exposed,
                     "samples_per_s": R * per_rank_batch / step, "efficiency": (step_ms * 1e-3) / step,
                     "hidden": comm <= bwd_ms * 1e-3})
    return rows


def _best_overlap(o):
    """The hidden fraction of the better of DDP's two ways to poll (hooks only, or the progress
    thread): the one its default picks on a machine with cores to spare or without."""
    return max(o["overlap_fraction"], o["overlap_fraction_progress_thread"])


def run_model(res):
    ar = res["allreduce"]
    alpha, beta = ar["alpha_us"], ar["beta_GBps"]
    thr = res["throughput"]
    ov = {o["model"]: dict(o) for o in res["overlap"]}
    for o in ov.values():                        # the conservative hidden fraction, from the raw times
        o["overlap_fraction_progress_thread"] = min(1.0, max(0.0, o["backward_ms"] + o["allreduce_ms"] - o[
            "ddp_backward_progress_thread_ms"]) / o["allreduce_ms"])
    d = ov["digits"]
    comp = res["compute"]
    # digits: the 1-rank step at batch 128 (the per-rank work of global batch 256 on 2 ranks)
    # ResNet-18 on 32x32 inputs: 0.56 GFLOP forward per image, x3 with backward, at the measured
    # 1-thread conv rate, plus Adam over 11.7M parameters (measured); backward = 2/3 of compute;
    # its measured overlap is the vgg model's (the one with a large gradient early in backward),
    # with the better of hooks-only polling and the progress thread (_best_overlap)
    rb = 32
    r_compute = rb * 3 * 0.56 / comp["conv_gflops"] * 1e3
    nets = {
        "digits CNN (6,138 params, 24.6 KB of gradients, 1 bucket), 128 per rank":
            dict(step_ms=thr["one_rank_batch128_step_ms"], bwd_ms=d["backward_ms"], grad_bytes=d["grad_bytes"],
                 last_bucket_bytes=d["buckets"][-1][1], per_rank_batch=128,
                 # one bucket, complete when backward is: nothing can overlap, whatever the
                 # (noise-level) timing difference says
                 measured=0.0 if len(d["buckets"]) == 1 else _best_overlap(d)),
        "ResNet-18-sized (11.7M params, 46.8 MB of gradients, 1 MiB buckets), 32x32 images, 32 per rank":
            dict(step_ms=r_compute + comp["adam_11.7M_ms"], bwd_ms=r_compute * 2 / 3, grad_bytes=46_800_000,
                 last_bucket_bytes=1 << 20, per_rank_batch=rb,
                 measured=_best_overlap(ov["vgg"])),
    }
    networks = {
        "this machine's shared memory (fitted)": (alpha, beta),
        "assumed 10 GbE (alpha 30 us, beta 1.1 GB/s)": (30.0, 1.1),
        "assumed 100 Gb/s InfiniBand (alpha 3 us, beta 11 GB/s)": (3.0, 11.0),
    }
    out = {}
    for name, kw in nets.items():
        kw = dict(kw)
        measured = kw.pop("measured")
        out[name] = {"inputs": dict(kw, measured_hidden=measured)}
        for net, (a, b) in networks.items():
            out[name][net] = {"ideal": predict(alpha_us=a, beta_GBps=b, hidden=1.0, **kw),
                              "measured": predict(alpha_us=a, beta_GBps=b, hidden=measured, **kw)}
    return out


def print_tables(res):
    print(f"CPU: {res.get('cpu')}")
    t = res["throughput"]
    print(f"\nthroughput at global batch 256, 1 thread per rank, {t['repeats']} alternated repeats (medians):")
    print(f"  1 rank : {t['one_rank_samples_per_s']:.0f} samples/s ({t['one_rank_step_ms']:.2f} ms a step)")
    print(f"  2 ranks: {t['two_ranks_samples_per_s']:.0f} samples/s ({t['two_ranks_step_ms']:.2f} ms a step, "
          f"exposed allreduce {t['two_ranks_exposed_comm_ms']:.3f} ms)")
    print(f"  speed-up {t['ratio_of_medians']:.2f}x (median of paired ratios {t['median_paired_ratio']:.2f}x; "
          f"paired {', '.join(f'{r:.2f}' for r in t['paired_ratios'])}); load averages "
          f"{', '.join(f'{v:.1f}' for v in t['load_averages'])}")
    if "two_ranks_progress_thread_on_samples_per_s" in t:
        print(f"  2 ranks with DDP's progress thread forced on: {t['two_ranks_progress_thread_on_samples_per_s']:.0f} "
              "samples/s")
    print(f"  CPU time a step outside the allreduce wait (busiest rank's main thread): 1 rank "
          f"{t['one_rank_cpu_step_ms']:.2f} ms, 2 ranks {t['two_ranks_cpu_step_ms']:.2f} ms: {t['cpu_time_ratio']:.2f}x")
    print(f"  1 rank at batch 128 (the per-rank work): {t['one_rank_batch128_step_ms']:.2f} ms a step; "
          f"parallel efficiency of 2 ranks at 128 each: {100 * t['parallel_efficiency_at_128_per_rank']:.0f}%")
    a = res["allreduce"]
    print(f"\nallreduce fit (ring model): alpha {a['alpha_us']:.1f} us, beta {a['beta_GBps']:.2f} GB/s")
    print("| bytes | " + " | ".join(f"{r} ranks ms" for r in a["times"]) + " |")
    print("|---:|" + "---:|" * len(a["times"]))
    rows = list(zip(*[a["times"][r] for r in a["times"]]))
    for row in rows:
        print(f"| {row[0][0]:,} | " + " | ".join(f"{1e3 * s:.3f}" for _, s in row) + " |")
    print("\noverlap on 2 ranks (medians):")
    print("| model | per-rank batch | gradient bytes | buckets | backward ms | allreduce ms | DDP bwd, overlap ms "
          "| DDP bwd, after ms | hidden | DDP bwd, progress thread ms | hidden |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for o in res["overlap"]:
        print(f"| {o['model']} | {o['per_rank_batch']} | {o['grad_bytes']:,} | {len(o['buckets'])} | "
              f"{o['backward_ms']:.2f} | {o['allreduce_ms']:.3f} | {o['ddp_backward_overlap_ms']:.2f} | "
              f"{o['ddp_backward_no_overlap_ms']:.2f} | {100 * o['overlap_fraction']:.0f}% | "
              f"{o['ddp_backward_progress_thread_ms']:.2f} | {100 * o['overlap_fraction_progress_thread']:.0f}% |")
    for name, per_net in res["model"].items():
        inp = per_net["inputs"]
        print(f"\npredicted: {name} (step {inp['step_ms']:.1f} ms, backward {inp['bwd_ms']:.1f} ms, measured "
              f"overlap {100 * inp['measured_hidden']:.0f}%); cells: samples/s with the measured overlap, "
              "efficiency with the measured / ideal overlap")
        nets = [k for k in per_net if k != "inputs"]
        print("| ranks | " + " | ".join(nets) + " |")
        print("|---:|" + "---:|" * len(nets))
        for i, row0 in enumerate(per_net[nets[0]]["ideal"]):
            cells = []
            for k in nets:
                m, ideal = per_net[k]["measured"][i], per_net[k]["ideal"][i]
                cells.append(f"{m['samples_per_s']:,.0f} ({100 * m['efficiency']:.0f}% / {100 * ideal['efficiency']:.0f}%)"
                             + ("" if ideal["hidden"] else " *"))
            print(f"| {row0['ranks']} | " + " | ".join(cells) + " |")
        print("(* the whole gradient allreduce takes longer than backward: it can no longer hide)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode")
    ap.add_argument("args", nargs="*")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--quiet-below", type=int, default=0, metavar="K",
                    help="throughput: before each repeat wait until fewer than K other processes are runnable")
    ap.add_argument("--max-wait", type=float, default=120, metavar="S", help="...but at most S seconds")
    a = ap.parse_args(argv)
    if a.mode.startswith("worker-"):
        globals()["worker_" + a.mode[7:]](*a.args)
        return
    res = load_results()
    res["cpu"] = cpu_model()
    if a.mode in ("all", "throughput"):
        res["throughput"] = run_throughput(a.repeats, a.steps, a.quiet_below, a.max_wait)
    if a.mode in ("all", "allreduce"):
        res["allreduce"] = run_allreduce(20)
    if a.mode in ("all", "overlap"):
        res["overlap"] = run_overlap(20)
    if a.mode in ("all", "compute"):
        res["compute"] = single("worker-compute", "8", "5")
    if a.mode in ("all", "model", "compute", "throughput", "allreduce", "overlap") and \
            all(k in res for k in ("throughput", "allreduce", "overlap", "compute")):
        res["model"] = run_model(res)
    save_results(res)
    if "model" in res:
        print_tables(res)
    else:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
