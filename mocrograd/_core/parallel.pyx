"""Thread-count policy of the core, in one place.

A *worker* is one independent share of a kernel's output (a block of rows, a
block of columns, a tile). ``workers`` chunks are run by at most
``available_threads()`` OpenMP threads, as the original library's
``parallelize(num_work_items)`` ran its work items on a pool of one thread per
core: asking for 256 workers on 2 cores makes 256 small chunks, not 256 threads
fighting for 2 cores.
"""
import os

from cython.parallel cimport prange

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define MOCRO_OPENMP 1
    #else
    #define MOCRO_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static double omp_get_wtime(void) { return 0.0; }
    #endif
    """
    int MOCRO_OPENMP
    int omp_get_max_threads() noexcept nogil
    double omp_get_wtime() noexcept nogil

# Work (in multiply-adds or element operations) each worker must get before a
# second thread pays: starting and joining an OpenMP team costs a few
# microseconds on an idle machine, and much more when another process holds a
# core (a thread that waits at the barrier for a descheduled partner can wait a
# whole time slice). 2**19 operations keep one core busy for over 10 us.
cdef double WORK_PER_WORKER = 524288.0

# Contention probe (see dynamic_workers): how often, and how slow a team start
# may be before the machine counts as busy. On an idle machine an empty parallel
# region takes a few microseconds; when another process holds a core, the
# second thread may not run for a whole scheduler time slice (milliseconds).
cdef double PROBE_INTERVAL = 0.05   # seconds
cdef double PROBE_LIMIT = 50e-6     # seconds

cdef int _threads = 0
cdef int _uncontended = 1           # threads a team may have right now (set by the probe)
cdef double _next_probe = 0.0


cdef int available_threads() noexcept nogil:
    """Threads the core may use: OMP_NUM_THREADS if set, otherwise the usable cores."""
    return _threads


cdef int threads_for(int workers) noexcept nogil:
    """OpenMP threads that run ``workers`` chunks: never more than available."""
    if workers < 1:
        return 1
    return workers if workers < _threads else _threads


cdef int dynamic_workers(double work) noexcept nogil:
    """Workers for a kernel of ``work`` operations: 1 for tiny work, up to one per thread,
    and 1 while the probe finds the cores busy with other processes."""
    cdef double n = work / WORK_PER_WORKER
    if n <= 1.0:
        return 1
    if omp_get_wtime() >= _next_probe:
        _probe()
    if n >= _uncontended:
        return _uncontended
    return <int>n


cdef void _probe() noexcept nogil:
    """Time an empty parallel region on all threads. A slow one means another process
    holds a core: a team would wait for its descheduled member at every barrier, so
    dynamic falls back to one thread until the next probe (this is what keeps it
    from collapsing on a shared machine, where fixed worker counts can run 100x slower)."""
    global _uncontended, _next_probe
    cdef double start = omp_get_wtime(), elapsed
    cdef int i
    cdef int[64] touched
    for i in prange(_threads, nogil=True, num_threads=_threads, schedule='static'):
        touched[i % 64] = i
    elapsed = omp_get_wtime() - start
    _uncontended = _threads if elapsed < PROBE_LIMIT else 1
    _next_probe = omp_get_wtime() + PROBE_INTERVAL


cdef void split(Py_ssize_t n, int chunks, int chunk, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Bounds [lo, hi) of chunk ``chunk`` when ``n`` items are cut into ``chunks`` even parts."""
    lo[0] = (n * chunk) // chunks
    hi[0] = (n * (chunk + 1)) // chunks


def machine_contended():
    """True when the last probe found another process holding a core (dynamic then uses 1 thread)."""
    return _uncontended < _threads


def openmp_enabled():
    """True when the core was compiled with OpenMP (otherwise every kernel is single-threaded)."""
    return bool(MOCRO_OPENMP)


def cpu_count():
    """Threads the core uses at most: ``OMP_NUM_THREADS`` when set, else the cores this process may use."""
    return _threads


def _detect_threads():
    if not MOCRO_OPENMP:
        return 1
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return max(1, omp_get_max_threads())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, omp_get_max_threads()))


_threads = _detect_threads()
_uncontended = _threads
