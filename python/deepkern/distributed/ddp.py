"""DistributedDataParallel: gradients averaged over the ranks while backward is still running.

Backward visits the layers last to first, and a layer's parameter gradients are final as soon
as its own backward returns (nothing later in backward touches them). So the gradient of the
classifier is ready long before the first convolution's, and its allreduce can travel while
the rest of backward computes::

    backward:   [ fc ][ conv2 ............ ][ conv1 ............ ]
    allreduce:        [bucket 0]           [bucket 1]            [bucket 2]
                                                                 ^ only this part is exposed

The wrapper lays the trainable parameters out in *buckets* (flat arrays of at most
``bucket_mb`` MiB, in reverse registration order, which is backward's order), binds every
``p.grad`` to its slice of a bucket so the layers accumulate straight into it, and wraps each
layer's ``backward`` with a hook. When the last parameter of a bucket has its gradient the hook
starts that bucket's non-blocking ``Iallreduce``; buckets start in a fixed order (bucket i only
after bucket i-1), because MPI requires every rank to start collectives in the same order.
Each hook also calls ``Testall`` on the buckets in flight: Open MPI's non-blocking collectives
advance only inside MPI calls. After the model's backward returns the wrapper waits for the
rest and divides by the world size.

``timings`` records, per backward, the backward time and the *exposed* communication time (the
wait after backward), in seconds, for the last ``TIMINGS_KEPT`` (10,000) backward passes (deques:
a long run does not grow them). With a separately measured allreduce time T_comm, the hidden
fraction is 1 - exposed / T_comm (bench/distributed.py reports it).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque

import numpy as np

from .. import nn
from ..nn import module as _module
from ..nn._array import array_module
from ._comm import group
from .collectives import DEFAULT_BUCKET_MB, broadcast_buffers, broadcast_parameters, plan_buckets

__all__ = ["DistributedDataParallel"]

TIMINGS_KEPT = 10_000       # backward passes whose times ``timings`` keeps


class _Bucket:
    __slots__ = ("index", "params", "flat", "views", "expected", "remaining", "req", "launched", "scale")

    def __init__(self, index, params, xp):
        self.index = index
        self.params = params
        self.flat = xp.zeros(sum(p.data.size for p in params), params[0].data.dtype)
        self.views, off = [], 0
        for p in params:
            n = p.data.size
            self.views.append(self.flat[off:off + n].reshape(p.data.shape))
            off += n
        self.expected = 0
        self.remaining = 0
        self.req = None
        self.launched = False


class DistributedDataParallel(nn.Module):
    """Wrap a model for data-parallel training: forward as the model, backward averages the
    gradients over the ranks, overlapping the allreduce with backward.

    Args:
      module             the model (a deepkern.nn Module); its parameters are broadcast from
                         rank 0 at construction, so every replica starts bitwise equal (the
                         ranks' models must have the same names, shapes and dtypes, else a
                         DistributedError on every rank)
      bucket_mb          bucket size cap in MiB (default 1): smaller buckets start sooner but
                         pay the per-message latency more often
      broadcast_buffers  copy rank 0's buffers (BatchNorm running statistics) to every rank at
                         each training forward, as PyTorch's DDP does, so evaluation agrees on
                         every rank (not needed with SyncBatchNorm). False saves that
                         collective per step: then call ``sync_buffers()`` (on every rank)
                         before evaluating, as DistributedTrainer does
      average            divide the summed gradients by the world size (the gradient of the
                         global mean loss when every rank's batch has the same size)
      group              the process group (default: deepkern.distributed.init())
      overlap            start each bucket's allreduce during backward (default); False
                         starts them all after backward (the baseline the benchmark compares)
      progress_thread    a Python thread polls the buckets in flight every 100 us while the
                         kernels run (they release the GIL): Open MPI's non-blocking
                         collectives advance only when polled, and the layer hooks poll only
                         between layers. Needs MPI_THREAD_MULTIPLE (mpi4py's default). None
                         (default): on only when this process may run on a CPU its kernels do
                         not use (``os.sched_getaffinity`` larger than ``get_num_threads()``).
                         In shared memory the allreduce is CPU work (copies and sums), so a
                         rank pinned to one core has no spare CPU to hide it on; there the
                         thread only takes turns with the kernels, measured 20-45% slower
                         backward (bench/NOTES.md). True/False force it on/off

    Call ``zero_grad()`` (on the wrapper) before every backward, as the Trainer does: it zeroes
    the buckets and binds each ``p.grad`` to its slice. ``state_dict`` and ``load_state_dict``
    are the wrapped model's (no "module." prefix: checkpoints load into a plain model).
    Unlike PyTorch there is no autograd graph: a layer of the model whose backward does not run
    contributes zeros, and ranks must run the same layers (data-dependent skipping would start
    the buckets in different orders; it is detected as a timeout, not silently wrong).
    """

    def __init__(self, module, *, bucket_mb=DEFAULT_BUCKET_MB, broadcast_buffers=True, average=True, group=None,
                 overlap=True, progress_thread=None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"DistributedDataParallel wraps a deepkern.nn.Module, got {type(module).__name__}")
        bucket_mb = float(bucket_mb)
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
        self.module = module
        object.__setattr__(self, "group", group if group is not None else _default_group())
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "average", bool(average))
        object.__setattr__(self, "overlap", bool(overlap))
        if progress_thread is None:
            progress_thread = _spare_cpu()
        object.__setattr__(self, "_poller", _Poller() if progress_thread and self.group.size > 1
                           and _thread_multiple() else None)
        object.__setattr__(self, "timings", {"backward": deque(maxlen=TIMINGS_KEPT),
                                             "exposed_comm": deque(maxlen=TIMINGS_KEPT)})
        params = [p for p in module.parameters() if p.requires_grad]
        xp = array_module(params[0].data) if params else np
        if _is_cuda(params):                       # NCCL through CuPy, or MPI through host copies
            from .cuda import cuda_reducer
            reducer = cuda_reducer(self.group)
            reducer.broadcast_module(module)
        else:
            reducer = self.group
            broadcast_parameters(module, g=self.group)
        object.__setattr__(self, "_reducer", reducer)
        buckets = [_Bucket(i, b, xp) for i, b in enumerate(plan_buckets(params[::-1], bucket_mb))]
        slots = {}
        for b in buckets:
            for p, v in zip(b.params, b.views):
                slots[id(p)] = (b, v)
        object.__setattr__(self, "_buckets", buckets)
        object.__setattr__(self, "_slots", slots)
        object.__setattr__(self, "_unbucketed", (None, []))
        object.__setattr__(self, "_wait_what", f"gradient allreduce ({len(buckets)} buckets)")
        for b in buckets:
            b.scale = b.flat.dtype.type(1.0 / self.group.size)
        object.__setattr__(self, "_active", False)
        object.__setattr__(self, "_next_launch", 0)
        # hook every module that owns trainable parameters directly; a parameter shared by
        # k modules is ready after k hooks
        owners = Counter()
        hooked = []
        for m in module.modules():
            own = [p for p in m._parameters.values() if p is not None and id(p) in slots]
            if own:
                hooked.append((m, own))
                for p in own:
                    owners[id(p)] += 1
        for b in buckets:
            b.expected = sum(owners[id(p)] for p in b.params)
        if len(buckets) <= 1:
            # one bucket is complete only when backward is: nothing to overlap, so no hooks (the
            # default digits CNN: 24.6 KB; this saves ~20 us of Python a step)
            hooked = []
        object.__setattr__(self, "_owners", owners)
        object.__setattr__(self, "_hooked", [m for m, _ in hooked])
        for m, own in hooked:
            _install_hook(self, m, own)
        self.zero_grad()

    # ------------------------------------------------------------------ forward / backward

    def forward(self, x):
        if self.training and self.broadcast_buffers and self.group.size > 1 and self._reducer is self.group:
            broadcast_buffers(self.module, g=self.group)
        return self.module(x)

    def sync_buffers(self):
        """Copy rank 0's buffers to every rank (a collective: every rank calls it)."""
        if self.group.size > 1 and self._reducer is self.group:
            broadcast_buffers(self.module, g=self.group)

    def zero_grad(self, set_to_none=True):
        """Zero the buckets and bind every trainable p.grad to its slice (set_to_none is
        accepted for the Module interface; the gradients live in the buckets)."""
        for b in self._buckets:
            b.flat.fill(0)
            for p, v in zip(b.params, b.views):
                p.grad = v
        for p in self._unbucketed_params():
            p.grad = None

    def _unbucketed_params(self):
        """The model's parameters without a bucket (frozen ones, or added after wrapping), whose
        gradients zero_grad drops; listed again only when the model's structure changed."""
        version, params = self._unbucketed
        if version != _module._structure_version:
            version = _module._structure_version
            params = [p for p in self.module.parameters() if id(p) not in self._slots]
            object.__setattr__(self, "_unbucketed", (version, params))
        return params

    def backward(self, grad_out):
        for b in self._buckets:
            b.remaining = b.expected
            b.req = None
            b.launched = False
        object.__setattr__(self, "_next_launch", 0)
        t0 = time.perf_counter()
        object.__setattr__(self, "_active", True)
        try:
            gx = self.module.backward(grad_out)
        finally:
            object.__setattr__(self, "_active", False)
        t1 = time.perf_counter()
        for b in self._buckets:                    # parameters whose layer did not run
            if not b.launched:
                for p, v in zip(b.params, b.views):
                    if p.grad is not v:
                        _bind(p, v)
                b.remaining = 0
        self._launch_ready()
        if self._poller is not None:
            self._poller.stop()                    # no two threads may test one request
        self._reducer.wait([b.req for b in self._buckets if b.req is not None], self._wait_what)
        if self.average and self.group.size > 1:
            for b in self._buckets:
                b.flat *= b.scale
        self._reducer.finish(self._buckets)
        t2 = time.perf_counter()
        self.timings["backward"].append(t1 - t0)
        self.timings["exposed_comm"].append(t2 - t1)
        return gx

    # ------------------------------------------------------------------ hooks

    def _produced(self, own):
        """A hooked layer's backward returned: its parameters' gradients are final."""
        for p in own:
            b, v = self._slots[id(p)]
            _bind(p, v)
            b.remaining -= 1
        if self.overlap:
            launched = self._next_launch
            self._launch_ready()
            reqs = [b.req for b in self._buckets if b.req is not None]
            if self._poller is None:
                self._reducer.progress(reqs)
            elif launched < self._next_launch < len(self._buckets):
                # buckets went out and layers with gradients are still to come: poll while they
                # compute (after the last bucket, backward's own wait polls)
                self._poller.watch(reqs)

    def _launch_ready(self):
        """Start, in bucket order, every bucket whose gradients are all final."""
        i = self._next_launch
        buckets = self._buckets
        while i < len(buckets) and buckets[i].remaining <= 0:
            b = buckets[i]
            b.req = self._reducer.iallreduce_(b.flat) if self.group.size > 1 else None
            b.launched = True
            i += 1
        object.__setattr__(self, "_next_launch", i)

    def allreduce_buckets(self):
        """Allreduce (and average) the buckets as they are, now, blocking: the communication of
        one step without the backward (the benchmark's T_comm)."""
        reqs = [self._reducer.iallreduce_(b.flat) for b in self._buckets] if self.group.size > 1 else []
        self._reducer.wait([r for r in reqs if r is not None], "allreduce_buckets")
        if self.average and self.group.size > 1:
            for b in self._buckets:
                b.flat *= b.scale
        self._reducer.finish(self._buckets)

    def remove_hooks(self):
        """Give the wrapped layers their own backward back (the wrapper stops working)."""
        for m in self._hooked:
            m.__dict__.pop("backward", None)

    # ------------------------------------------------------------------ state: the wrapped model's

    def state_dict(self, copy=False):
        return self.module.state_dict(copy=copy)

    def load_state_dict(self, state_dict, strict=True):
        return self.module.load_state_dict(state_dict, strict=strict)

    @property
    def buckets(self):
        """[(number of parameters, bytes)] per bucket, in launch order."""
        return [(len(b.params), int(b.flat.nbytes)) for b in self._buckets]

    def extra_repr(self):
        return f"ranks={self.group.size}, buckets={len(self._buckets)}"


class _Poller:
    """A daemon thread that calls Testall on the requests it is given every ``interval``
    seconds, until ``stop()`` (which returns only once the thread is out of MPI)."""

    def __init__(self, interval=1e-4):
        self.interval = interval
        self.lock = threading.Lock()
        self.work = threading.Event()
        self.reqs = []
        threading.Thread(target=self._run, daemon=True, name="deepkern-mpi-progress").start()

    def watch(self, reqs):
        with self.lock:
            self.reqs = list(reqs)
        self.work.set()

    def stop(self):
        self.work.clear()
        with self.lock:                      # waits for a Testall in progress
            self.reqs = []

    def _run(self):
        from mpi4py import MPI
        while True:
            self.work.wait()
            with self.lock:
                if self.reqs:
                    try:
                        if MPI.Request.Testall(self.reqs):
                            self.reqs = []
                    except Exception:                # the main thread's wait reports errors
                        self.reqs = []
            time.sleep(self.interval)


def _spare_cpu():
    """Whether this process may run on more CPUs than its kernels' threads use (a rank bound to
    one core by ``mpirun --bind-to core``, with one thread: no)."""
    from .. import get_num_threads
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus > get_num_threads()


def _thread_multiple():
    """Whether MPI lets two threads call it at once (else: polls at the hooks only)."""
    from mpi4py import MPI
    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


def _default_group():
    return group()


def _is_cuda(params):
    return bool(params) and not isinstance(params[0].data, np.ndarray)


def _bind(p, view):
    """Make p.grad the bucket slice ``view`` (copying a gradient a layer assigned elsewhere)."""
    g = p.grad
    if g is view:
        return
    if g is None:
        view[...] = 0
    else:
        view[...] = g
    p.grad = view


def _install_hook(ddp, m, own):
    inner = m.backward                  # the layer's own (bound) backward

    def backward(grad_out):
        out = inner(grad_out)
        if ddp._active:
            ddp._produced(own)
        return out

    object.__setattr__(m, "backward", backward)
