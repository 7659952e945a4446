"""Thread-count policy of the core, in one place.

A *worker* is one independent share of a kernel's output (a block of rows, a
block of columns, a tile). ``workers`` chunks are run by at most
``available_threads()`` OpenMP threads, as the original library's
``parallelize(num_work_items)`` ran its work items on a pool of one thread per
core: asking for 256 workers on 2 cores makes up to 256 chunks, not 256 threads
fighting for 2 cores. No chunk gets less than the grain (below), so small
kernels run as one chunk on the calling thread. The matmul paths that carry
training cut their row tiles finer still, into pieces handed out on demand
(``pieces_for``), so that a slowed thread takes less of the work.
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
    /* Whether OMP_PROC_BIND (or OMP_PLACES) binds threads to places: then the runtime
       has already bound the calling thread to the first place when it loaded. */
    static int mocro_threads_bound(void) {
    #ifdef _OPENMP
        return omp_get_proc_bind() != omp_proc_bind_false;
    #else
        return 0;
    #endif
    }
    #include <stdio.h>
    #include <time.h>
    #include <unistd.h>

    /* Seconds of CPU time the whole machine has spent busy since boot (all cores,
       counting time the hypervisor stole), from the first line of /proc/stat;
       -1 where there is no /proc/stat (not Linux). */
    static double mocro_machine_busy_seconds(void) {
        unsigned long long v[8] = {0};
        double busy;
        FILE *f = fopen("/proc/stat", "r");
        if (f == NULL) return -1.0;
        int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu",
                       &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
        fclose(f);
        if (n < 4) return -1.0;
        /* user nice system idle iowait irq softirq steal: all but idle and iowait */
        busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
        return busy / (double)sysconf(_SC_CLK_TCK);
    }

    /* Seconds of CPU time this process has used (all its threads). */
    static double mocro_process_cpu_seconds(void) {
        struct timespec t;
        if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t) != 0) return 0.0;
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    """
    int MOCRO_OPENMP
    int omp_get_max_threads() noexcept nogil
    bint mocro_threads_bound() noexcept nogil
    double omp_get_wtime() noexcept nogil
    double mocro_machine_busy_seconds() noexcept nogil
    double mocro_process_cpu_seconds() noexcept nogil

# The grain: the least work (in multiply-adds or weighted element operations,
# see matrix.pyx) a chunk is given unless the user sets another. Starting and
# joining an OpenMP team costs a few microseconds on an idle machine, and much
# more when another process holds a core (a thread that waits at the barrier for
# a descheduled partner can wait a whole time slice); 2**19 operations keep one
# core busy for over 10 us. So a kernel smaller than this runs as one chunk on
# the calling thread, whatever the worker count (TBB's grain size, OpenMP's
# ``if`` clause): 256 workers on a 64x32 product cost nothing over 1.
DEFAULT_GRAIN = 524288.0

# Load probe (see dynamic_workers): every PROBE_INTERVAL seconds, how many cores
# did *other* processes keep busy since the last probe? The kernel's account of
# busy time (/proc/stat, 100 ticks per second per core) minus this process's own
# CPU time, over the wall time between probes, smoothed over two probes.
# (Timing an empty parallel region does not work: on a VM, waking a sleeping
# thread after an idle pause costs milliseconds, which looks just like a core
# taken by someone else.)
cdef double PROBE_INTERVAL = 0.1    # seconds: ten ticks per core per probe
cdef double BUSY_CORE = 0.5         # other load, in cores, that costs our team one thread

cdef int _threads = 0
cdef int _uncontended = 1           # threads a team may have right now (set by the probe)
cdef double _next_probe = 0.0
cdef double _last_wall = 0.0, _last_machine = -1.0, _last_process = 0.0
cdef double _other_cores = 0.0      # smoothed load of other processes, in cores


cdef int available_threads() noexcept nogil:
    """Threads the core may use: OMP_NUM_THREADS if set, otherwise the usable cores."""
    return _threads


cdef int threads_for(int workers) noexcept nogil:
    """OpenMP threads that run ``workers`` chunks: never more than available."""
    if workers < 1:
        return 1
    return workers if workers < _threads else _threads


cdef int chunks_for(double work, double grain, int workers) noexcept nogil:
    """``workers`` chunks, or fewer so that each gets at least ``grain`` work (at least 1)."""
    cdef double most = work / grain
    if most >= workers:
        return workers
    return <int>most if most >= 1.0 else 1


# Pieces handed out on demand (see pieces_for): per thread, and the least work one gets.
cdef int PIECES_PER_THREAD = 16
cdef double PIECE_WORK = 262144.0   # multiply-adds: ~5 us on one core, against ~0.1-1 us to hand a piece out


cdef int pieces_for(int workers, Py_ssize_t units, double work) noexcept nogil:
    """Pieces to cut an output of ``units`` independent parts (row tiles, row groups)
    into, for a ``prange(..., schedule='dynamic')`` that hands them to the threads as
    they finish: the ``workers`` chunks, or PIECES_PER_THREAD per thread where each still
    gets PIECE_WORK. A thread slowed by another process (or by a core that runs slower
    for a while, as this VM's do) then takes fewer pieces, instead of the whole team
    waiting at the barrier for its fixed half. Only for kernels whose results do not
    depend on the cut (each output element one sum in a fixed order)."""
    cdef int threads = threads_for(workers)
    cdef double most = workers, balanced
    if threads > 1:
        balanced = min(<double>threads * PIECES_PER_THREAD, work / PIECE_WORK)
        if balanced > most:
            most = balanced
    if most > units:
        most = units
    return <int>most if most >= 1.0 else 1


cdef int dynamic_workers(double work, double grain) noexcept nogil:
    """Workers for a kernel of ``work`` operations: 1 for tiny work, up to one per thread
    with at least ``grain`` work each, and fewer while other processes keep cores busy."""
    if work < 2.0 * grain:   # one chunk whatever the load: no need to probe
        return 1
    if omp_get_wtime() >= _next_probe:
        _probe()
    return chunks_for(work, grain, _uncontended)


cdef void _probe() noexcept nogil:
    """Update the other processes' load and the threads a team may use.

    A thread of ours that shares a core with another busy process is descheduled
    for whole time slices, and every barrier waits for it: fixed worker counts can
    run many times slower then. dynamic instead leaves one thread per busy core
    (at least one), which degrades gracefully to single-threaded speed."""
    global _uncontended, _next_probe, _last_wall, _last_machine, _last_process, _other_cores
    cdef double wall = omp_get_wtime(), machine = mocro_machine_busy_seconds()
    cdef double process = mocro_process_cpu_seconds(), other
    cdef int free_threads
    _next_probe = wall + PROBE_INTERVAL
    if machine >= 0 and _last_machine >= 0 and wall > _last_wall:
        other = ((machine - _last_machine) - (process - _last_process)) / (wall - _last_wall)
        _other_cores = 0.5 * (_other_cores + (other if other > 0 else 0.0))
        free_threads = _threads - <int>(_other_cores + 1.0 - BUSY_CORE)   # whole cores, 0.5 rounds up
        _uncontended = free_threads if free_threads > 1 else 1
    _last_wall, _last_machine, _last_process = wall, machine, process


def machine_contended():
    """True when the last probe found other processes keeping cores busy (dynamic then uses fewer threads)."""
    return _uncontended < _threads


def other_load():
    """Cores other processes kept busy, as the last probe measured (smoothed; 0 before any probe)."""
    return _other_cores


def openmp_enabled():
    """True when the core was compiled with OpenMP (otherwise every kernel is single-threaded)."""
    return bool(MOCRO_OPENMP)


def cpu_count():
    """Threads the core uses at most: ``OMP_NUM_THREADS`` when set, else the cores this process may use."""
    return _threads


def _detect_threads():
    if not MOCRO_OPENMP:
        return 1
    # With OMP_PROC_BIND or OMP_PLACES set, the OpenMP runtime binds this (main) thread
    # to its first place as it loads, so the affinity below would say one core; its
    # default team size was counted from the process's cores before that.
    if os.environ.get("OMP_NUM_THREADS", "").strip() or mocro_threads_bound():
        return max(1, omp_get_max_threads())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, omp_get_max_threads()))


_threads = _detect_threads()
_uncontended = _threads
# The probe's first reading, at import: the first large dynamic kernel (data loading
# and model building come between) then measures the load instead of only taking
# this reading, and a fit started beside a busy process no longer runs its first
# 0.1-0.2 s on threads that wait for a descheduled partner.
_probe()
