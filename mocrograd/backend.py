"""Choosing the kernel variant: naive, optimized or dynamic.

    mocrograd.set_backend("optimized", workers=4)   # for the rest of the program
    with mocrograd.backend("naive"):                 # for one block
        ...
    mocrograd.get_backend()                          # -> ("dynamic", None)

``naive`` runs plain single-threaded loops (the reference); ``optimized`` runs
the vectorized, blocked kernels cut into ``workers`` chunks (default: the core
count, see ``mocrograd.cpu_count()``); ``dynamic`` (the default) runs the same
optimized kernels with a worker count chosen for each call from the size of the
work and the machine's other load.

Both cut a kernel into chunks of at least ``grain`` operations (multiply-adds,
or element operations weighted by their cost; default ``DEFAULT_GRAIN`` = 2**19,
about 10 microseconds of one core): a smaller kernel runs as one chunk on the
calling thread whatever ``workers`` says, because waking a second thread would
cost more than it saves. ``grain=1`` cuts every kernel into exactly ``workers``
chunks (the tests do, to reach every chunk boundary on small shapes).

At import, ``MOCROGRAD_BACKEND`` and ``MOCROGRAD_WORKERS`` set the starting choice.
"""
import contextlib
import os

from ._core import DEFAULT_GRAIN, cpu_count, set_backend_state

BACKENDS = ("naive", "optimized", "dynamic")


def _check(name, workers, grain):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise ValueError(f"workers must be a whole number >= 1 or None, got {workers!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (or None for the core count), got {workers}")
    if grain is not None:
        if isinstance(grain, bool) or not isinstance(grain, int):
            raise ValueError(f"grain must be a whole number >= 1 or None, got {grain!r}")
        if grain < 1:
            raise ValueError(f"grain must be >= 1 (or None for DEFAULT_GRAIN), got {grain}")


def set_backend(name, workers=None, grain=None):
    """Select the kernel variant for all following operations.

    ``workers`` is the number of chunks ``optimized`` cuts each kernel into (None:
    ``cpu_count()``); chunks beyond the core count share the cores rather than
    oversubscribing them. ``naive`` always uses one; ``dynamic`` chooses per call
    and treats ``workers`` as an upper bound (None: the core count). ``grain`` is
    the least work a chunk gets (None: ``DEFAULT_GRAIN``; see the module docstring).
    """
    _check(name, workers, grain)
    set_backend_state(name, workers if workers is not None else cpu_count(),
                      grain if grain is not None else DEFAULT_GRAIN)
    global _given
    _given = (name, workers, grain)


def get_backend():
    """The current (name, workers) pair; workers is None when left to the default."""
    return _given[:2]


def get_grain():
    """The grain set with the backend: None when left to the default, ``DEFAULT_GRAIN``."""
    return _given[2]


@contextlib.contextmanager
def backend(name, workers=None, grain=None):
    """Context manager: use a backend inside the ``with`` block, then restore the previous one
    (its workers and grain too)."""
    previous = _given
    set_backend(name, workers, grain)
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


_given = ("dynamic", None, None)
_from_environment()
