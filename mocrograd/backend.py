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
import numbers
import os

from ._core import DEFAULT_GRAIN, cpu_count, set_backend_state

BACKENDS = ("naive", "optimized", "dynamic")
MAX_WORKERS = 2 ** 31 - 1   # the kernels take the worker count as a C int


def _whole(name, value, default, most=None):
    """value (None or a whole number, a NumPy integer too) as an int, checked to be >= 1
    (and <= most); ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number >= 1 or None, got {value!r}")
    if value < 1 or most is not None and value > most:
        bounds = ">= 1" if most is None else f">= 1 and <= {most}"
        raise ValueError(f"{name} must be {bounds} (or None for {default}), got {value}")
    return int(value)


def _check(name, workers, grain):
    """(workers, grain) as ints or None, after checking name, workers and grain."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return _whole("workers", workers, "the core count", MAX_WORKERS), _whole("grain", grain, "DEFAULT_GRAIN")


def set_backend(name, workers=None, grain=None):
    """Select the kernel variant for all following operations.

    ``workers`` is the number of chunks ``optimized`` cuts each kernel into (None:
    ``cpu_count()``); chunks beyond the core count share the cores rather than
    oversubscribing them. ``naive`` always uses one; ``dynamic`` chooses per call
    and treats ``workers`` as an upper bound (None: the core count). ``grain`` is
    the least work a chunk gets (None: ``DEFAULT_GRAIN``; see the module docstring).
    """
    workers, grain = _check(name, workers, grain)
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
