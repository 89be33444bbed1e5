"""Model-level collectives: broadcast the parameters, allreduce the gradients, reduce metrics.

Data parallelism in one paragraph: every rank holds the same model, takes a different shard
of each global batch, and computes the gradient of its own mean loss. The gradient of the
global mean loss is the *average* of the ranks' gradients (equal shard sizes), so after one
allreduce of the gradients (a sum, then / world size) every rank holds the same gradient and
its optimizer takes the same step: the replicas never drift apart, provided they started equal
(``broadcast_parameters``).

Gradients travel in a few large *flat buckets*, not one message per tensor: an allreduce costs
a latency alpha (microseconds to tens of microseconds) plus bytes / bandwidth, and a CNN has
dozens of small tensors (biases, BatchNorm weights) whose latency would dominate.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .. import nn
from ._comm import DistributedError, group

__all__ = ["broadcast_parameters", "broadcast_buffers", "allreduce_gradients", "check_same_model",
           "all_reduce_sum", "reduce_metrics", "plan_buckets", "DEFAULT_BUCKET_MB"]

DEFAULT_BUCKET_MB = 1.0


def _params_of(model_or_params):
    if isinstance(model_or_params, nn.Module):
        return list(model_or_params.parameters())
    params = list(model_or_params)
    for i, p in enumerate(params):
        if not isinstance(p, nn.Parameter):
            raise TypeError(f"params[{i}] is a {type(p).__name__}, not a deepkern.nn.Parameter")
    return params


def _host_array(a, what):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what}: MPI collectives take NumPy arrays here, got {type(a).__name__} "
                        "(CUDA arrays go through deepkern.distributed.cuda)")
    return a


def _signature(entries):
    """One line per (name, shape, dtype): what every rank must agree on."""
    return "\n".join(f"{k} {tuple(a.shape)} {np.dtype(a.dtype).name}" for k, a in entries)


def check_same_model(entries, what="model", g=None):
    """Raise DistributedError on every rank unless every rank has the same (name, shape,
    dtype) list. entries: [(name, array)]. Costs one allgather of a 32-byte digest (and, only
    on a mismatch, one of the full descriptions, so the message can name the difference)."""
    g = g or group()
    if g.size == 1:
        return
    sig = _signature(entries).encode()
    digest = np.frombuffer(hashlib.sha256(sig).digest(), np.uint8)
    digests = g.allgather(digest, f"{what}: comparing the ranks' {what}s")
    if (digests == digests[0]).all():
        return
    sigs = [s.decode().splitlines() for s in g.allgather_bytes(sig, f"{what}: describing a mismatch")]
    mine = sigs[g.rank]
    for r, other in enumerate(sigs):
        if other == mine:
            continue
        diff = [f"{a!r} here vs {b!r} on rank {r}" for a, b in zip(mine, other) if a != b][:3]
        if len(mine) != len(other):
            diff.append(f"{len(mine)} entries here vs {len(other)} on rank {r}")
        raise DistributedError(f"rank {g.rank}: the ranks' {what}s differ: " + "; ".join(diff))


def _pack(arrays):
    """Every array's bytes, back to back, in one uint8 buffer."""
    if not arrays:
        return np.zeros(0, np.uint8)
    return np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays])


def _unpack(flat, arrays):
    off = 0
    for a in arrays:
        n = a.nbytes
        a[...] = flat[off:off + n].view(a.dtype).reshape(a.shape)
        off += n


def broadcast_parameters(model, root=0, buffers=True, g=None):
    """Make every rank's parameters (and persistent buffers: BatchNorm statistics) bitwise
    equal to root's. model: a Module, or a list of Parameters. The ranks' models must have the
    same names, shapes and dtypes (else DistributedError on every rank, naming the first
    differences). One broadcast of all the bytes."""
    g = g or group()
    if isinstance(model, nn.Module):
        entries = list(model.state_dict().items()) if buffers else [(k, p.data) for k, p in model.named_parameters()]
    else:
        entries = [(str(i), p.data) for i, p in enumerate(_params_of(model))]
    arrays = [_host_array(a, f"broadcast_parameters: {k}") for k, a in entries]
    check_same_model(entries, "model", g)
    if g.size == 1:
        return
    flat = _pack(arrays)
    g.bcast_(flat, root, f"broadcast_parameters ({flat.nbytes:,} bytes from rank {root})")
    _unpack(flat, arrays)


def broadcast_buffers(model, root=0, g=None):
    """Copy root's buffers (running statistics) into every rank's model: one broadcast."""
    g = g or group()
    if g.size == 1:
        return
    arrays = [b for _, b in model.named_buffers() if isinstance(b, np.ndarray) and b.size]
    if arrays:
        flat = _pack(arrays)
        g.bcast_(flat, root, "broadcast_buffers")
        _unpack(flat, arrays)


def plan_buckets(params, bucket_mb=DEFAULT_BUCKET_MB):
    """Split params (in the order given) into buckets of one dtype and at most ``bucket_mb``
    MiB each (a tensor larger than that gets a bucket of its own). Returns a list of lists."""
    cap = max(1, int(float(bucket_mb) * (1 << 20)))
    buckets, cur, cur_bytes, cur_dtype = [], [], 0, None
    for p in params:
        nbytes = p.data.nbytes
        if cur and (p.data.dtype != cur_dtype or cur_bytes + nbytes > cap):
            buckets.append(cur)
            cur, cur_bytes = [], 0
        cur.append(p)
        cur_bytes += nbytes
        cur_dtype = p.data.dtype
    if cur:
        buckets.append(cur)
    return buckets


def allreduce_gradients(model_or_params, average=True, bucket_mb=DEFAULT_BUCKET_MB, g=None):
    """Sum (average=True: average) every trainable parameter's gradient over the ranks.

    The gradients are copied into flat buckets of up to ``bucket_mb`` MiB, the buckets'
    allreduces all started, then completed; each ``p.grad`` ends as a view of its bucket. A
    parameter without a gradient counts as zeros (every rank must send the same layout) and
    gets the reduced gradient. Frozen parameters are skipped. For overlap with backward, wrap
    the model in DistributedDataParallel instead.
    """
    g = g or group()
    params = [p for p in _params_of(model_or_params) if p.requires_grad]
    if g.size == 1 or not params:
        return
    buckets = plan_buckets(params, bucket_mb)
    flats, reqs = [], []
    for b in buckets:
        flat = np.empty(sum(p.data.size for p in b), b[0].data.dtype)
        off = 0
        for p in b:
            n = p.data.size
            if p.grad is None:
                flat[off:off + n] = 0
            else:
                flat[off:off + n] = _host_array(p.grad, "allreduce_gradients").reshape(-1)
            off += n
        flats.append(flat)
        reqs.append(g.iallreduce_(flat))
    g.wait(reqs, f"allreduce_gradients ({len(buckets)} buckets)")
    for b, flat in zip(buckets, flats):
        if average:
            flat *= flat.dtype.type(1.0 / g.size)
        off = 0
        for p in b:
            n = p.data.size
            p.grad = flat[off:off + n].reshape(p.data.shape)
            off += n


def all_reduce_sum(values, g=None, what="metric reduction"):
    """The sums over the ranks of a few numbers (a float64 array or a sequence)."""
    g = g or group()
    buf = np.array(values, np.float64).reshape(-1).copy()
    g.allreduce_(buf, what)
    return buf


def reduce_metrics(loss_sum, correct, count, g=None):
    """(mean loss, accuracy, count) over every rank's samples, from each rank's
    (sum of per-sample losses, number correct, number of samples)."""
    s = all_reduce_sum([loss_sum, correct, count], g)
    n = s[2]
    return float(s[0] / n), float(s[1] / n), int(n)
