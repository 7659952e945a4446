"""Data-parallel training over MPI: ``mpiexec -n N python -m mocrograd.train --distributed``.

Every rank holds the whole model. Rank 0's parameters are broadcast at the start;
each global batch (``--batch-size`` examples: the same batches one process would
train on) is cut into N contiguous shares, rank r taking examples ``[lo_r, hi_r)``
of it (``share``: ``B // N + 1`` examples for the first ``B % N`` ranks, ``B // N``
for the others, as ``numpy.array_split``). Each rank runs forward and backward on
its share; then ONE in-place ``Allreduce`` of a flat gradient buffer gives every
rank the same gradient and every rank takes the same optimizer step, so the
parameters stay identical without ever being sent again.

Weighting. Rank r's objective is the mean loss over its n_r examples plus the L2
penalty, so its gradient is ``g_r + p``, where ``p``, the penalty's gradient, is the
same on every rank (the parameters are). Before the Allreduce each rank scales its
buffer by ``n_r / B``, so the sum over the ranks is

    sum_r (n_r / B) (g_r + p) = (1 / B) sum_i grad loss_i + p,

exactly the one-process gradient of the global batch, with the penalty counted
once because the weights sum to 1.

Batches smaller than N. A rank with no example in a global batch (every batch of
fewer than N examples, or the last, partial one) still runs the loop body, so that
every rank makes the same sequence of collective calls: its loader yields a
placeholder, one example of the batch with labels that count as zero examples
(``len(y) == 0``) and weight 0, so it adds nothing to the gradient or to the sums
of the training loss and accuracy.

The gradient buffer is one C-contiguous array allocated once; each parameter's
``.grad`` is a Matrix view into it (``Matrix(flat[off:off + n].reshape(shape))``
wraps without copying), so backward accumulates straight into the buffer the
Allreduce sends through the buffer protocol: no pickling, no per-step copy. The
buffer has one extra element, the Ctrl-C vote: each rank writes 1 there when it
was asked to stop, so the same Allreduce tells every rank whether any rank must
stop, and all of them stop after the same step.

Failures. ``Distributed.guard()`` turns an exception on any one rank into
``rank K: <error>`` on stderr and ``MPI_Abort``, which ends every rank at once
instead of leaving the others waiting in a collective call forever (with MPICH,
a rank that simply exits leaves its peers hanging).
"""
import contextlib
import os
import sys
import time

import numpy as np

from ._core import Matrix
from .backend import cpu_count
from .tensor import Tensor

# Test-only fault injection: the rank named here raises in its first optimizer step.
FAIL_RANK_ENV = "MOCROGRAD_FAIL_RANK"

INSTALL_HINT = "--distributed needs mpi4py and an MPI library: pip install 'mocrograd[mpi]' (mpi4py and mpich)"
# Seconds between a failing rank's message and MPI_Abort. mpiexec forwards each rank's
# stderr through a pipe, and the abort can end that forwarding before it has read the
# line, flushed or not: once in a CI run on a fully loaded machine the message was lost.
ABORT_GRACE = 0.5

__all__ = ["Distributed", "DistributedOptimizer", "ShardedLoader", "share", "start", "INSTALL_HINT"]


def share(batch, ranks, rank):
    """(lo, hi): rank's contiguous slice of a global batch of ``batch`` examples.

    The first ``batch % ranks`` ranks take one example more; when ``batch < ranks``
    the ranks from ``batch`` on get an empty slice (lo == hi)."""
    base, extra = divmod(batch, ranks)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def start(parser=None):
    """Initialize MPI and return ``Distributed.world()``; without mpi4py, exit 2 with a one-line
    message (through ``parser.error`` when given)."""
    try:
        from mpi4py import MPI  # noqa: F401 -- importing mpi4py.MPI initializes MPI
    except (ImportError, RuntimeError) as error:
        message = INSTALL_HINT if isinstance(error, ModuleNotFoundError) else f"{INSTALL_HINT} ({error})"
        if parser is not None:
            parser.error(message)
        raise SystemExit(f"error: {message}") from None
    return Distributed.world()


class _Placeholder(np.ndarray):
    """Labels of a placeholder example: ``len()`` is 0, so ``loss * len(y)`` adds nothing."""

    def __len__(self):
        return 0


class Distributed:
    """This process's place in the job (``rank`` of ``size``) and the collective operations of training."""

    _world = None

    @classmethod
    def world(cls):
        """The instance for ``MPI.COMM_WORLD`` (made once per process)."""
        if cls._world is None:
            cls._world = cls()
        return cls._world

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()     # the ranks sharing this machine's cores
        node.Free()
        self.is_root = self.rank == 0
        self.weight = 1.0                     # n_r / B of the batch being trained on
        self.optimizer = None                 # the DistributedOptimizer, once wrap() made it
        self.local_stop = None                # this rank's Ctrl-C flag (a callable), see agree()
        self._vote = None                     # the stop vote of the last Allreduce, not yet read
        self.steps = 0
        self.allreduce_seconds = 0.0

    def __repr__(self):
        return f"Distributed(rank={self.rank}, size={self.size}, local_size={self.local_size})"

    def default_workers(self):
        """OpenMP workers per rank: this machine's cores shared among its ranks (at least 1)."""
        return max(1, cpu_count() // self.local_size)

    def describe(self, workers):
        return {"ranks": self.size, "ranks_on_this_machine": self.local_size, "workers_per_rank": workers,
                "split": "contiguous slice of each global batch", "allreduce": "one per step, in place"}

    # -------------------------------------------------------------- data

    def loader(self, split, batch_size, train=True, dtype=np.float32):
        """This rank's shares of the global batches of ``split`` (see ``ShardedLoader``)."""
        return ShardedLoader(split, batch_size, self, train=train, dtype=dtype)

    # -------------------------------------------------------------- parameters and gradients

    def broadcast_parameters(self, model):
        """Overwrite every rank's tensors (parameters, frozen ones too) with rank 0's (in place,
        through the buffer protocol)."""
        for _, p in model.named_tensors():
            self.comm.Bcast(np.asarray(p.data), root=0)

    def wrap(self, model, optimizer):
        """Broadcast rank 0's parameters; return ``optimizer`` wrapped so that its ``step()`` first
        sums the weighted gradients over the ranks (one Allreduce)."""
        self.broadcast_parameters(model)
        self.optimizer = DistributedOptimizer(self, optimizer)
        return self.optimizer

    # -------------------------------------------------------------- agreement

    def sum(self, *values):
        """Each number summed over all ranks (one Allreduce of a float64 vector)."""
        buffer = np.array(values, dtype=np.float64)
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return tuple(float(v) for v in buffer)

    def agree(self, local_stop):
        """A ``should_stop()`` that is true on every rank as soon as ``local_stop()`` is true on any.

        After a step it reads the vote that step's gradient Allreduce carried (no extra
        message); otherwise (before the first step) it votes with an Allreduce of its own.
        Every rank calls it at the same points, so every rank gets the same answer."""
        self.local_stop = local_stop

        def should_stop():
            if self._vote is not None:
                vote, self._vote = self._vote, None
                return vote
            return self.sum(1.0 if local_stop() else 0.0)[0] > 0
        return should_stop

    # -------------------------------------------------------------- failures

    @contextlib.contextmanager
    def guard(self, passthrough=(), codes=None, others_exit=None):
        """Abort the whole job when this rank fails, rather than leave the other ranks waiting.

        An exception (KeyboardInterrupt and a non-zero SystemExit included) prints
        ``rank K: <error>`` on stderr and calls ``MPI_Abort`` with ``codes[type]`` (default 1);
        mpiexec then ends every rank and exits with that status. Exceptions of the
        ``passthrough`` types, raised on every rank at the same point, propagate on
        rank 0; on the others they become a silent ``SystemExit(others_exit)`` when
        ``others_exit`` is given (rank 0 alone reports them)."""
        try:
            yield self
        except passthrough:
            if others_exit is not None and not self.is_root:
                raise SystemExit(others_exit) from None
            raise
        except SystemExit as stop:
            if stop.code in (None, 0):
                raise
            code = stop.code if isinstance(stop.code, int) else 1
            self.abort(f"exit status {code}" if isinstance(stop.code, int) else str(stop.code), code)
        except BaseException as error:  # KeyboardInterrupt too: never leave the peers hanging
            code = next((c for kind, c in (codes or {}).items() if isinstance(error, kind)), 1)
            self.abort(f"{type(error).__name__}: {error}", code)

    def abort(self, message, code=1):
        """Print ``rank K: message`` on stderr, give mpiexec ABORT_GRACE seconds to pass it on,
        and end every rank of the job with status ``code``."""
        sys.stdout.flush()
        print(f"rank {self.rank}: {message}", file=sys.stderr, flush=True)
        if os.environ.get("MOCROGRAD_TRACEBACK") and sys.exc_info()[0] is not None:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        time.sleep(ABORT_GRACE)
        self.comm.Abort(code)


class ShardedLoader:
    """This rank's share of each global batch of a Split, as ((features, n_r) Matrix, labels) pairs.

    The global batches are those of ``DataLoader(split, batch_size)`` (in order, the
    last one partial); rank r gets the contiguous slice ``share(len(batch), size, r)``
    of each and sets ``dist.weight = n_r / len(batch)`` while it is trained on. ``len()``
    is the number of global batches. Where this rank's slice is empty, a training
    loader (``train=True``) yields a placeholder of weight 0 (the batch's first example,
    labels of ``len() == 0``) so that the rank still takes part in the step; an
    evaluation loader skips the batch.
    """

    def __init__(self, split, batch_size, dist, train=True, dtype=np.float32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.dist, self.train = split, batch_size, dist, train
        self.rng = np.random.default_rng()   # as DataLoader's (checkpoints record it); the order is fixed
        self.batches = []
        for start in range(0, len(split), batch_size):
            size = min(batch_size, len(split) - start)
            lo, hi = share(size, dist.size, dist.rank)
            if hi > lo:
                rows, labels, weight = slice(start + lo, start + hi), split.y[start + lo:start + hi], (hi - lo) / size
            elif train:
                rows, labels, weight = slice(start, start + 1), split.y[start:start + 1].view(_Placeholder), 0.0
            else:
                continue
            columns = np.ascontiguousarray(split.x[rows].T, dtype=dtype)
            self.batches.append((Matrix(columns), labels, weight))
        self.global_batches = -(-len(split) // batch_size)

    def __len__(self):
        return self.global_batches

    def __iter__(self):
        for x, y, weight in self.batches:
            self.dist.weight = weight
            yield x, y


class DistributedOptimizer:
    """An optimizer whose ``step()`` first sums the weighted gradients of all ranks.

    The gradients live in one flat buffer (``flat``, allocated here, one element more
    for the stop vote); every parameter's ``.grad`` becomes a view into it. ``step()``
    scales the buffer by this rank's share of the global batch (``dist.weight``), sums
    it over the ranks with one in-place Allreduce and calls the wrapped optimizer's
    ``step()``. Everything else (``lr``, ``params``, ``state_dict`` ...) is the
    wrapped optimizer's, so checkpoints store exactly what one process would."""

    def __init__(self, dist, optimizer):
        self.dist, self.optimizer = dist, optimizer
        params = list(optimizer.params)
        dtypes = {np.dtype(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"distributed training needs parameters of one dtype, got {sorted(map(str, dtypes))}")
        total = sum(p.shape[0] * p.shape[1] for p in params)
        self.flat = np.zeros(total + 1, dtype=dtypes.pop())     # the last element: the stop vote
        self._all = Matrix(self.flat.reshape(1, total + 1))     # for the compiled, parallel scale_/zero_
        self.params, self.grads, offset = params, [], 0
        for p in params:
            n = p.shape[0] * p.shape[1]
            view = Matrix(self.flat[offset:offset + n].reshape(p.shape))   # a view: no copy
            if p.grad is not None:
                view.copy_(p.grad.data)
            p.grad = Tensor(view)
            self.grads.append(p.grad)
            offset += n

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def _attach(self):
        """Make every ``.grad`` the view into ``flat`` again (copying in any gradient that replaced it)."""
        for p, grad in zip(self.params, self.grads):
            if p.grad is grad:
                continue
            if p.grad is None:
                grad.data.zero_()
            else:
                grad.data.copy_(p.grad.data)
            p.grad = grad

    def zero_grad(self, set_to_none=False):
        """Zero the flat buffer; the ``.grad`` views stay (``set_to_none`` is ignored)."""
        self._all.zero_()
        self._attach()

    def step(self):
        dist = self.dist
        self._attach()
        if dist.steps == 0 and os.environ.get(FAIL_RANK_ENV, "").strip() == str(dist.rank):
            raise RuntimeError(f"injected failure ({FAIL_RANK_ENV}={dist.rank})")
        if dist.weight != 1.0:
            self._all.scale_(dist.weight)
        self.flat[-1] = 1.0 if dist.local_stop is not None and dist.local_stop() else 0.0
        if dist.size > 1:
            began = time.perf_counter()
            dist.comm.Allreduce(dist.MPI.IN_PLACE, self.flat, op=dist.MPI.SUM)
            dist.allreduce_seconds += time.perf_counter() - began
        dist._vote = bool(self.flat[-1] > 0)
        dist.steps += 1
        return self.optimizer.step()

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        return self.optimizer.load_state_dict(state)
