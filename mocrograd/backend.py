"""Choosing the kernel variant: naive, optimized or dynamic.

    mocrograd.set_backend("optimized", workers=4)   # for the rest of the program
    with mocrograd.backend("naive"):                 # for one block
        ...
    mocrograd.get_backend()                          # -> ("dynamic", None)

``naive`` runs plain single-threaded loops (the reference); ``optimized`` runs
the vectorized, blocked kernels cut into ``workers`` chunks (default: the core
count, see ``mocrograd.cpu_count()``); ``dynamic`` (the default) runs the same
optimized kernels with a worker count chosen for each call from the size of the
work, so tiny matrices stay on one thread.

At import, ``MOCROGRAD_BACKEND`` and ``MOCROGRAD_WORKERS`` set the starting choice.
"""
import contextlib
import os

from ._core import cpu_count, get_backend_state, set_backend_state

BACKENDS = ("naive", "optimized", "dynamic")


def _check(name, workers):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise ValueError(f"workers must be a whole number >= 1 or None, got {workers!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (or None for the core count), got {workers}")


def set_backend(name, workers=None):
    """Select the kernel variant for all following operations.

    ``workers`` is the number of chunks ``optimized`` cuts each kernel into (None:
    ``cpu_count()``); chunks beyond the core count share the cores rather than
    oversubscribing them. ``naive`` always uses one; ``dynamic`` chooses per call
    and treats ``workers`` as an upper bound (None: the core count).
    """
    _check(name, workers)
    set_backend_state(name, workers if workers is not None else cpu_count())
    global _workers_given
    _workers_given = workers


def get_backend():
    """The current (name, workers) pair; workers is None when left to the default."""
    return get_backend_state()[0], _workers_given


@contextlib.contextmanager
def backend(name, workers=None):
    """Context manager: use a backend inside the ``with`` block, then restore the previous one."""
    previous = get_backend()
    set_backend(name, workers)
    try:
        yield
    finally:
        set_backend(*previous)


def _from_environment():
    name = os.environ.get("MOCROGRAD_BACKEND", "dynamic").strip().lower() or "dynamic"
    raw = os.environ.get("MOCROGRAD_WORKERS", "").strip()
    try:
        workers = int(raw) if raw else None
    except ValueError:
        raise ValueError(f"MOCROGRAD_WORKERS must be a whole number >= 1, got {raw!r}") from None
    set_backend(name, workers)


_workers_given = None
_from_environment()
