"""The Matrix type: a 2-D, C-contiguous float32 or float64 array with compiled kernels.

Every public operation checks its arguments here, with the GIL held, and only
then calls a kernel of the selected variant without the GIL. So bad input gets
a Python exception (naming the shapes involved) and never reaches compiled
loops. A Matrix owns a NumPy array; ``np.asarray(m)`` is a zero-copy view of it.

Matrices have at least one row and one column: an empty shape is rejected,
because no layer, loss or optimizer has a use for one.
"""
from cpython.buffer cimport PyBUF_F_CONTIGUOUS, PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES
from cpython.pyport cimport PY_SSIZE_T_MAX
from cython cimport floating
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc
import numbers
import os

import numpy as np

from . cimport naive, optimized
from .ops cimport *
from .parallel cimport available_threads, chunks_for, dynamic_workers
from .parallel import DEFAULT_GRAIN

# ---------------------------------------------------------------- variants

cdef enum Variant:
    NAIVE = 0
    OPTIMIZED = 1
    DYNAMIC = 2

VARIANTS = ("naive", "optimized", "dynamic")

cdef int _variant = DYNAMIC
cdef int _fixed_workers = 1
cdef double _grain = DEFAULT_GRAIN


def set_backend_state(str name, int workers, double grain):
    """Select the kernel variant, the worker count and the grain (least work per chunk).

    Validation and the user-facing API live in ``mocrograd.backend``."""
    global _variant, _fixed_workers, _grain
    _variant = VARIANTS.index(name)
    _fixed_workers = workers
    _grain = grain


def get_backend_state():
    """(variant name, workers, grain) as last set."""
    return VARIANTS[_variant], _fixed_workers, _grain


def chunks_for_work(double work):
    """The chunks the current backend cuts a kernel of ``work`` operations into (a
    matmul's work is m * n * k). For learning and tests: dynamic's answer depends on
    the machine's load at the time of the call."""
    if not work >= 0:
        raise ValueError(f"work must be a number >= 0, got {work}")
    return _workers_for(work)


cdef inline int _workers_for(double work) noexcept nogil:
    """Chunks to cut a kernel of ``work`` multiply-adds into, under the current variant:
    ``optimized`` makes ``workers`` chunks and ``dynamic`` one per free thread (at most
    ``workers``), both only as many as give each chunk ``grain`` work."""
    if _variant == OPTIMIZED:
        return chunks_for(work, _grain, _fixed_workers)
    if _variant == DYNAMIC:
        return min(dynamic_workers(work, _grain), _fixed_workers)
    return 1


# Work is counted in multiply-adds of the register-tiled matmul (about 50 per
# nanosecond per core). An element of an element-wise or reduction kernel moves
# 8-12 bytes from memory and takes as long as about this many multiply-adds, so a
# 64K-element update (an SGD step on a 256x256 weight) is worth a second thread.
cdef double ELEMENT_WORK = 32.0


cdef inline int _workers_for_elements(double elements) noexcept nogil:
    """Chunks for a memory-bound kernel over ``elements`` (weighted by their cost)."""
    return _workers_for(elements * ELEMENT_WORK)


# ------------------------------------------------------------- dispatching
# One fused helper per kernel chooses naive or optimized; the Matrix methods
# choose float or double. Both choices are made once per call, outside loops.

cdef int _matmul(const floating[:, ::1] a, bint ta, const floating[:, ::1] b, bint tb,
                 floating[:, ::1] out, double alpha, double beta, double work) noexcept nogil:
    if _variant == NAIVE:
        return naive.matmul(a, ta, b, tb, out, alpha, beta, 1)
    return optimized.matmul(a, ta, b, tb, out, alpha, beta, _workers_for(work))


cdef void _binary(int op, const floating[:, ::1] a, const floating[:, ::1] b,
                  floating[:, ::1] out) noexcept nogil:
    if _variant == NAIVE:
        naive.binary(op, a, b, out, 1)
    else:
        optimized.binary(op, a, b, out, _workers_for_elements(out.shape[0] * out.shape[1]))


cdef void _unary(int op, const floating[:, ::1] x, double s, floating[:, ::1] out) noexcept nogil:
    # exp, log and pow cost about ten simple operations each
    cdef double work = x.shape[0] * x.shape[1] * (10.0 if op in (EXP, LOG, POW_SCALAR) else 1.0)
    if _variant == NAIVE:
        naive.unary(op, x, s, out, 1)
    else:
        optimized.unary(op, x, s, out, _workers_for_elements(work))


cdef void _relu_grad(const floating[:, ::1] x, const floating[:, ::1] g, floating[:, ::1] out) noexcept nogil:
    if _variant == NAIVE:
        naive.relu_grad(x, g, out, 1)
    else:
        optimized.relu_grad(x, g, out, _workers_for_elements(x.shape[0] * x.shape[1]))


cdef void _reduce(int op, int axis, const floating[:, ::1] x, floating[:, ::1] out) noexcept nogil:
    if _variant == NAIVE:
        naive.reduce(op, axis, x, out, 1)
    else:
        optimized.reduce(op, axis, x, out, _workers_for_elements(x.shape[0] * x.shape[1]))


cdef void _argmax(int axis, const floating[:, ::1] x, Py_ssize_t[:, ::1] out) noexcept nogil:
    if _variant == NAIVE:
        naive.argmax(axis, x, out, 1)
    else:
        optimized.argmax(axis, x, out, _workers_for_elements(x.shape[0] * x.shape[1]))


cdef void _log_softmax(int axis, const floating[:, ::1] x, floating[:, ::1] out) noexcept nogil:
    if _variant == NAIVE:
        naive.log_softmax(axis, x, out, 1)
    else:
        optimized.log_softmax(axis, x, out, _workers_for_elements(x.shape[0] * x.shape[1] * 20.0))


cdef void _log_softmax_grad(int axis, const floating[:, ::1] y, const floating[:, ::1] g,
                            floating[:, ::1] out) noexcept nogil:
    if _variant == NAIVE:
        naive.log_softmax_grad(axis, y, g, out, 1)
    else:
        optimized.log_softmax_grad(axis, y, g, out, _workers_for_elements(y.shape[0] * y.shape[1] * 10.0))


cdef void _update(int kind, double alpha, const floating[:, ::1] x, floating[:, ::1] y) noexcept nogil:
    """kind 0: y += alpha x; 1: y *= alpha; 2: y = alpha; 3: y = alpha x."""
    cdef int w = _workers_for_elements(y.shape[0] * y.shape[1])
    if _variant == NAIVE:
        if kind == 0:
            naive.axpy(alpha, x, y, 1)
        elif kind == 1:
            naive.scale(alpha, y, 1)
        elif kind == 2:
            naive.fill(alpha, y, 1)
        else:
            naive.copy(alpha, x, y, 1)
    elif kind == 0:
        optimized.axpy(alpha, x, y, w)
    elif kind == 1:
        optimized.scale(alpha, y, w)
    elif kind == 2:
        optimized.fill(alpha, y, w)
    else:
        optimized.copy(alpha, x, y, w)


cdef void _sgd(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] v, bint use_velocity,
               double lr, double momentum, double wd) noexcept nogil:
    if _variant == NAIVE:
        naive.sgd(p, g, v, use_velocity, lr, momentum, wd, 1)
    else:   # 2-4 streams: about an axpy's cost per element
        optimized.sgd(p, g, v, use_velocity, lr, momentum, wd, _workers_for_elements(p.shape[0] * p.shape[1]))


cdef void _adam(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] m, floating[:, ::1] v,
                double lr, double b1, double b2, double eps, double c1, double c2, double wd) noexcept nogil:
    if _variant == NAIVE:
        naive.adam(p, g, m, v, lr, b1, b2, eps, c1, c2, wd, 1)
    else:
        optimized.adam(p, g, m, v, lr, b1, b2, eps, c1, c2, wd, _workers_for_elements(p.shape[0] * p.shape[1] * 8.0))


cdef double _sum_squares(const floating[:, ::1] x) noexcept nogil:
    if _variant == NAIVE:
        return naive.sum_squares(x, 1)
    return optimized.sum_squares(x, _workers_for_elements(x.shape[0] * x.shape[1]))


cdef int _linear(const floating[:, ::1] w, const floating[:, ::1] x, const floating[:, ::1] bias,
                 floating[:, ::1] out, bint relu, double work) noexcept nogil:
    if _variant == NAIVE:
        return naive.linear(w, x, bias, out, relu, 1)
    return optimized.linear(w, x, bias, out, relu, _workers_for(work))


# ------------------------------------------------------------ conversions

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def _as_dtype(dtype):
    """np.float32 or np.float64 for a dtype-like, else TypeError."""
    if dtype is None:
        return _FLOAT32
    d = np.dtype(dtype)
    if d != _FLOAT32 and d != _FLOAT64:
        raise TypeError(f"Matrix dtype must be float32 or float64, got {d}")
    return d


def _to_array(data, dtype):
    """A 2-D, C-contiguous float32/float64 ndarray for data, copying only when needed."""
    if isinstance(data, Matrix):
        data = (<Matrix>data).array
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "biuf":
            raise TypeError(f"Matrix needs numeric data, got an array of dtype {data.dtype}")
        if dtype is None:
            dtype = data.dtype if data.dtype in (_FLOAT32, _FLOAT64) else _FLOAT32
    else:
        if isinstance(data, (str, bytes)) or not hasattr(data, "__len__"):
            raise TypeError(f"Matrix needs a 2-D array or nested lists, got {type(data).__name__}")
        dtype = _as_dtype(dtype)
        try:
            data = np.array(data, dtype=dtype)
        except (ValueError, TypeError) as error:
            raise TypeError(f"Matrix needs a rectangular nested list of numbers: {error}") from None
    dtype = _as_dtype(dtype)
    if data.ndim != 2:
        raise ValueError(f"Matrix needs 2-D data, got {data.ndim}-D with shape {data.shape}; "
                         "reshape a vector to (1, n) or (n, 1)")
    _check_shape(data.shape[0], data.shape[1])
    array = np.ascontiguousarray(data, dtype=dtype)
    # A Matrix is writable (in-place ops, the buffer protocol): copy a read-only array
    # rather than fail to take a writable view of it.
    return array if array.flags.writeable else array.copy()


cdef _check_shape(Py_ssize_t rows, Py_ssize_t cols):
    if rows < 1 or cols < 1:
        raise ValueError(f"Matrix needs at least one row and one column, got shape ({rows}, {cols})")
    # Its size in bytes (8 per element at most) must fit a Py_ssize_t, or no allocator could serve it.
    if rows > PY_SSIZE_T_MAX // 8 // cols:
        raise MemoryError(f"a Matrix of shape ({rows}, {cols}) is too large to allocate")


def _machine_memory():
    """Bytes of RAM plus swap on this machine (PY_SSIZE_T_MAX where it cannot be read)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return PY_SSIZE_T_MAX
    swap = 0
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("SwapTotal:"):
                    swap = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return min(ram + swap, PY_SSIZE_T_MAX)


# Where the kernel overcommits memory (vm.overcommit_memory=1, common on big servers),
# malloc of 4 TiB succeeds and the process is killed by the OS once the matrix is
# filled. Every element of a dense matrix gets written, so a request larger than RAM
# plus swap is refused up front with a MemoryError instead.
cdef Py_ssize_t _memory_limit = _machine_memory()


def machine_memory():
    """Bytes of RAM plus swap, read at import: the largest matrix the core will allocate."""
    return _memory_limit


cdef Py_ssize_t _bytes_that_fit(Py_ssize_t rows, Py_ssize_t cols, bint is64) except -1:
    """The bytes of a rows x cols matrix (shape already checked); MemoryError when that is
    more than the machine's RAM and swap."""
    cdef Py_ssize_t nbytes = rows * cols * (8 if is64 else 4)
    if nbytes > _memory_limit:
        raise MemoryError(f"a Matrix of shape ({rows}, {cols}) is too large for this machine: "
                          f"{'float64' if is64 else 'float32'} needs {nbytes / 2 ** 30:.1f} GiB, "
                          f"RAM and swap hold {_memory_limit / 2 ** 30:.1f} GiB")
    return nbytes


cdef Matrix _wrap(object array):
    """A Matrix around an ndarray already known to be 2-D, C-contiguous, float32/64, non-empty."""
    cdef Matrix m = Matrix.__new__(Matrix)
    m.array = array
    m.rows = array.shape[0]
    m.cols = array.shape[1]
    m.is64 = array.dtype == _FLOAT64
    if m.is64:
        m.f64 = array
    else:
        m.f32 = array
    return m


# Results of at least this many bytes count as large allocations. Smaller blocks are
# recycled by the C allocator's free lists; blocks this big are mapped from the OS
# afresh each time (page faults on every touch), so training should allocate them once.
LARGE_ALLOCATION = 16 * 1024 * 1024
cdef Py_ssize_t _large_allocations = 0


def large_allocations():
    """How many matrices of LARGE_ALLOCATION bytes or more the core has created so far.

    Training reuses its big buffers (gradients, optimizer state) after the first step,
    so this count stops growing: a test checks it."""
    return _large_allocations


cdef extern from *:
    """
    #if defined(__linux__)
    #include <stdint.h>
    #include <sys/mman.h>
    #include <unistd.h>
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23   /* Linux 5.14; older kernels answer EINVAL */
    #endif
    #endif
    /* madvise(advice) on the whole pages inside [p, p + n): 0 when done, -1 when not
       (an advice the kernel does not know, no whole page, not Linux). */
    static int mocro_advise(void* p, size_t n, int advice) {
    #if defined(__linux__)
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t start = ((uintptr_t)p + page - 1) & ~(page - 1), end = ((uintptr_t)p + n) & ~(page - 1);
        if (end > start) return madvise((void*)start, end - start, advice);
    #endif
        return -1;
    }
    /* Map every page of the zero-filled block [p, p + n) now: in one system call where
       madvise(MADV_POPULATE_WRITE) succeeds, else (kernels before 5.14, other systems)
       by writing a zero into each 4 KB of it. */
    static void mocro_populate(void* p, size_t n) {
        volatile char* bytes = (volatile char*)p;
        size_t i;
    #if defined(__linux__)
        if (mocro_advise(p, n, MADV_POPULATE_WRITE) == 0) return;
    #endif
        for (i = 0; i < n; i += 4096) bytes[i] = 0;
        if (n > 0) bytes[n - 1] = 0;
    }
    /* Ask for transparent huge pages on [p, p + n), as NumPy does for its large arrays:
       fewer page faults and TLB misses. */
    static void mocro_advise_huge(void* p, size_t n) {
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        (void)mocro_advise(p, n, MADV_HUGEPAGE);
    #endif
    }
    """
    void mocro_populate(void* p, size_t n) noexcept nogil
    void mocro_advise_huge(void* p, size_t n) noexcept nogil


# Matrix.zeros of this many bytes or more is mapped in (populated) as soon as it is
# allocated, by this thread alone. Otherwise its pages are mapped on first touch, by
# the first kernel that writes it: with two threads faulting side by side, the first
# write of the Bigger network's 170 MB of gradients took 67-190 ms instead of 28 ms
# on one thread (the OS zeroes a 2 MB page per fault and may have to compact memory
# for it, and the two threads wait on each other doing it); populating takes ~15 ms
# per 128 MB. Zeroed matrices are the long-lived ones (gradients, optimizer state);
# a kernel's large result reuses the block of one that is gone (below).
POPULATE_BYTES = 2 * 1024 * 1024


# ------------------------------------------------------------ reused blocks
# A fresh result of REUSE_BYTES or more is memory the OS maps in page by page while
# the kernel first writes it, zeroing every page: for a 4096 x 4096 x + y that costs
# more than the sum itself (13.0 ms for a fresh result against 5.4 ms in place on one
# worker, 6.9 against 2.8 on two), and now and then a fresh 64 MB result takes 70-150
# ms. So such a result's block is not freed when its last array goes: it waits, still
# mapped, for the next result of the same size. At most IDLE_BLOCKS blocks and
# REUSE_LIMIT bytes wait (the oldest is freed first); release_memory() frees them all.
REUSE_BYTES = 2 * 1024 * 1024
REUSE_LIMIT = 256 * 1024 * 1024
cdef enum:
    IDLE_BLOCKS = 8
cdef void* _idle_data[IDLE_BLOCKS]      # oldest first
cdef Py_ssize_t _idle_size[IDLE_BLOCKS]
cdef int _idle_count = 0
cdef Py_ssize_t _idle_bytes = 0


cdef void _forget_idle(int i) noexcept:
    """Take block i off the idle list (the caller keeps or frees it)."""
    global _idle_count, _idle_bytes
    cdef int j
    _idle_bytes -= _idle_size[i]
    for j in range(i, _idle_count - 1):
        _idle_data[j] = _idle_data[j + 1]
        _idle_size[j] = _idle_size[j + 1]
    _idle_count -= 1


cdef void _give_back(void* data, Py_ssize_t nbytes) noexcept:
    """Keep a block nobody uses any more on the idle list, making room by freeing the
    oldest ones; free it at once when it alone exceeds REUSE_LIMIT."""
    global _idle_count, _idle_bytes
    if nbytes > REUSE_LIMIT:
        free(data)
        return
    while _idle_count == IDLE_BLOCKS or _idle_bytes + nbytes > REUSE_LIMIT:
        free(_idle_data[0])
        _forget_idle(0)
    _idle_data[_idle_count] = data
    _idle_size[_idle_count] = nbytes
    _idle_count += 1
    _idle_bytes += nbytes


def release_memory():
    """Free the idle blocks of large results kept for reuse; returns the bytes freed."""
    cdef Py_ssize_t freed = _idle_bytes
    while _idle_count:
        free(_idle_data[0])
        _forget_idle(0)
    return freed


def idle_bytes():
    """Bytes of large results' blocks waiting for reuse (at most REUSE_LIMIT)."""
    return _idle_bytes


cdef class _Block:
    """The memory of one large result, lent as bytes to the ndarray that holds it.
    When that array and every view of it are gone (each holds this object), the
    memory goes back on the idle list instead of to the OS."""
    cdef void* data
    cdef Py_ssize_t nbytes

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        buffer.buf = self.data
        buffer.format = NULL
        if flags & PyBUF_FORMAT:
            buffer.format = b"B"
        buffer.internal = NULL
        buffer.itemsize = 1
        buffer.len = self.nbytes
        buffer.ndim = 1
        buffer.obj = self
        buffer.readonly = 0
        buffer.shape = NULL
        if flags & PyBUF_ND:
            buffer.shape = &self.nbytes
        buffer.strides = NULL
        buffer.suboffsets = NULL

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def __dealloc__(self):
        if self.data != NULL:
            _give_back(self.data, self.nbytes)


cdef object _reused_array(Py_ssize_t rows, Py_ssize_t cols, bint is64, Py_ssize_t nbytes):
    """An uninitialized rows x cols array (nbytes) in an idle block of its size, or a new one."""
    cdef _Block block = _Block.__new__(_Block)
    cdef int i
    for i in range(_idle_count - 1, -1, -1):   # the newest block of this size
        if _idle_size[i] == nbytes:
            block.data = _idle_data[i]
            _forget_idle(i)
            break
    if block.data == NULL:
        block.data = malloc(nbytes)
        if block.data == NULL:
            raise MemoryError(f"could not allocate a ({rows}, {cols}) matrix ({nbytes} bytes)")
        mocro_advise_huge(block.data, nbytes)
    block.nbytes = nbytes
    return np.frombuffer(block, dtype=_FLOAT64 if is64 else _FLOAT32).reshape(rows, cols)


cdef Matrix _empty(Py_ssize_t rows, Py_ssize_t cols, bint is64, bint zeroed=False):
    global _large_allocations
    cdef Py_ssize_t nbytes = _bytes_that_fit(rows, cols, is64)
    cdef Matrix m
    cdef void* data
    if nbytes >= LARGE_ALLOCATION:
        _large_allocations += 1
    if not zeroed and nbytes >= REUSE_BYTES:
        return _wrap(_reused_array(rows, cols, is64, nbytes))
    m = _wrap((np.zeros if zeroed else np.empty)((rows, cols), dtype=_FLOAT64 if is64 else _FLOAT32))
    if zeroed and nbytes >= POPULATE_BYTES:
        data = <void*>&m.f64[0, 0] if is64 else <void*>&m.f32[0, 0]
        with nogil:
            mocro_populate(data, nbytes)
    return m


cdef str _shape_str(Matrix m):
    return f"({m.rows}, {m.cols})"


cdef Matrix _same_kind(Matrix a, object b, str what):
    """b as a Matrix of a's dtype: a number becomes 1x1; another dtype is a TypeError."""
    cdef Matrix m
    if isinstance(b, Matrix):
        m = <Matrix>b
        if m.is64 != a.is64:
            raise TypeError(f"{what}: dtypes differ ({a.array.dtype} and {m.array.dtype}); "
                            "convert one with .astype()")
        return m
    if isinstance(b, numbers.Real):
        return _wrap(np.full((1, 1), b, dtype=a.array.dtype))
    raise TypeError(f"{what}: expected a Matrix or a number, got {type(b).__name__}")


cdef bint _operands(self, other):
    """Should a Matrix operator handle this pair? Not when the other operand declares,
    by NumPy's convention (``__array_ufunc__ = None``, as Tensor does), that it
    implements the operators itself: then Python calls its reflected method.
    Anything else that is not a Matrix or a number gets _binary_op's TypeError."""
    return isinstance(self, Matrix) and (isinstance(other, Matrix) or
                                         getattr(type(other), "__array_ufunc__", True) is not None)


cdef Matrix _operand_of_update(Matrix a, object b, str what):
    """b for an in-place update of a: a Matrix of a's shape and dtype, never a number."""
    if not isinstance(b, Matrix):
        raise TypeError(f"{what}: expected a Matrix of shape {_shape_str(a)}, got {type(b).__name__}")
    cdef Matrix m = _same_kind(a, b, what)
    _check_same_shape(a, m, what)
    return m


cdef Py_ssize_t _broadcast_dim(Py_ssize_t x, Py_ssize_t y) except -1:
    if x == y or y == 1:
        return x
    if x == 1:
        return y
    return -2


cdef int _check_axis(axis) except -2:
    if axis is None:
        return ALL
    if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) and -2 <= axis <= 1:
        return int(axis) % 2
    raise ValueError(f"axis must be None, 0 or 1 for a 2-D Matrix, got {axis!r}")


# ------------------------------------------------------------------ Matrix

cdef class Matrix:
    """A 2-D float32 (default) or float64 matrix whose operations run compiled kernels.

    ``Matrix(data, dtype=None)`` accepts a 2-D NumPy array, nested lists or another
    Matrix. A float32/float64 C-contiguous array is used without copying (unless a
    different dtype is asked for); anything else numeric is converted, to float32 by
    default. Operators: ``@``, ``+ - * /`` with broadcasting of (r, 1), (1, c) or (1, 1)
    operands and numbers, unary ``-`` and ``** number``. NumPy scalars and arrays on
    the left of an operator leave it to the Matrix (``__array_ufunc__ = None``), so
    ``np.float32(2) * m`` is a Matrix as ``2 * m`` is. ``copy.copy``, ``copy.deepcopy``
    and ``pickle`` give a new matrix with the same values.
    """

    __array_ufunc__ = None

    def __init__(self, data, dtype=None):
        if self.array is not None:   # buffers exported by the buffer protocol point into it
            raise TypeError("a Matrix is initialised once; make a new one instead")
        array = _to_array(data, dtype)
        self.array = array
        self.rows = array.shape[0]
        self.cols = array.shape[1]
        self.is64 = array.dtype == _FLOAT64
        if self.is64:
            self.f64 = array
        else:
            self.f32 = array

    # -- constructors
    @staticmethod
    def zeros(Py_ssize_t rows, Py_ssize_t cols, dtype=None):
        """A rows x cols matrix of zeros. Its memory comes zeroed from the allocator
        (``calloc``: no pass over it), and a block of 2 MB or more is mapped in at once
        by the calling thread (see POPULATE_BYTES), so the kernel that first writes a
        big gradient or optimizer buffer takes no page faults."""
        _check_shape(rows, cols)
        return _empty(rows, cols, _as_dtype(dtype) == _FLOAT64, zeroed=True)

    @staticmethod
    def full(Py_ssize_t rows, Py_ssize_t cols, double value, dtype=None):
        """A rows x cols matrix filled with value."""
        _check_shape(rows, cols)
        cdef Matrix m = _empty(rows, cols, _as_dtype(dtype) == _FLOAT64)
        m.fill_(value)
        return m

    @staticmethod
    def rand(Py_ssize_t rows, Py_ssize_t cols, seed=None, dtype=None):
        """Uniform [0, 1) values from ``np.random.default_rng(seed)``."""
        _check_shape(rows, cols)
        dtype = _as_dtype(dtype)
        _bytes_that_fit(rows, cols, dtype == _FLOAT64)
        return _wrap(np.random.default_rng(seed).random((rows, cols), dtype=dtype))

    @staticmethod
    def randn(Py_ssize_t rows, Py_ssize_t cols, seed=None, dtype=None):
        """Standard normal values from ``np.random.default_rng(seed)``."""
        _check_shape(rows, cols)
        dtype = _as_dtype(dtype)
        _bytes_that_fit(rows, cols, dtype == _FLOAT64)
        return _wrap(np.random.default_rng(seed).standard_normal((rows, cols), dtype=dtype))

    # -- properties
    @property
    def shape(self):
        """(rows, cols)."""
        return (self.rows, self.cols)

    @property
    def dtype(self):
        """numpy.float32 or numpy.float64 (as a NumPy dtype)."""
        return self.array.dtype

    def numpy(self):
        """The NumPy array holding the data (a view: writing to it changes the matrix)."""
        return self.array

    def copy(self):
        """A new matrix with the same values."""
        cdef Matrix out = _empty(self.rows, self.cols, self.is64)
        out.copy_(self)
        return out

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return Matrix, (self.array,)

    def astype(self, dtype):
        """This matrix converted to float32 or float64 (self if already that dtype)."""
        d = _as_dtype(dtype)
        return self if d == self.array.dtype else _wrap(self.array.astype(d))

    def __repr__(self):
        body = np.array2string(self.array, precision=4, threshold=64, edgeitems=3, prefix="Matrix(")
        return f"Matrix({body}, dtype={self.array.dtype.name})"

    def __array__(self, dtype=None, copy=None):
        if copy:
            return self.array.astype(dtype or self.array.dtype, copy=True)
        return self.array if dtype is None else self.array.astype(dtype, copy=False)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        cdef Py_ssize_t itemsize = 8 if self.is64 else 4
        if flags & PyBUF_F_CONTIGUOUS == PyBUF_F_CONTIGUOUS and self.rows > 1 and self.cols > 1:
            raise BufferError(f"a Matrix is C-contiguous (row-major), not Fortran-contiguous: "
                              f"shape {_shape_str(self)}")
        self._buffer_shape[0] = self.rows
        self._buffer_shape[1] = self.cols
        self._buffer_strides[0] = self.cols * itemsize
        self._buffer_strides[1] = itemsize
        buffer.buf = <void*>&self.f64[0, 0] if self.is64 else <void*>&self.f32[0, 0]
        buffer.format = NULL
        if flags & PyBUF_FORMAT:
            buffer.format = b"d" if self.is64 else b"f"
        buffer.internal = NULL
        buffer.itemsize = itemsize
        buffer.len = self.rows * self.cols * itemsize
        buffer.ndim = 2
        buffer.obj = self
        buffer.readonly = 0
        buffer.shape = self._buffer_shape if flags & PyBUF_ND else NULL
        buffer.strides = self._buffer_strides if flags & PyBUF_STRIDES == PyBUF_STRIDES else NULL
        buffer.suboffsets = NULL

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    # -- matrix products
    def matmul(self, other, bint trans_a=False, bint trans_b=False, out=None, bint accumulate=False,
               double alpha=1.0, double beta=1.0):
        """alpha * op(self) @ op(other), op = transpose when its flag is set, without copying a transpose.

        With ``out`` the result is written there; with ``accumulate`` too, added to
        beta * out (BLAS's gemm: out = alpha * product + beta * out, one pass over out;
        beta 0 does not read it). So ``g.matmul(x, trans_b=True, out=w, accumulate=True,
        alpha=-lr, beta=1 - lr * wd)`` is an SGD step with the gradient g x^T, never formed."""
        if not isinstance(other, Matrix):
            raise TypeError(f"matmul needs a Matrix, got {type(other).__name__}")
        cdef Matrix b = _same_kind(self, other, "matmul")
        cdef Py_ssize_t m = self.cols if trans_a else self.rows
        cdef Py_ssize_t k = self.rows if trans_a else self.cols
        cdef Py_ssize_t kb = b.cols if trans_b else b.rows
        cdef Py_ssize_t n = b.rows if trans_b else b.cols
        cdef Matrix result
        cdef int status
        if k != kb:
            raise ValueError(f"matmul: shapes {_shape_str(self)}{'.T' if trans_a else ''} and "
                             f"{_shape_str(b)}{'.T' if trans_b else ''} do not align ({k} != {kb})")
        result = _output(out, m, n, self.is64, "matmul")
        if out is not None and (np.may_share_memory(result.array, self.array) or
                                np.may_share_memory(result.array, b.array)):
            raise ValueError("matmul: out must not overlap self or other (the product reads them while writing out)")
        if accumulate and out is None:
            raise ValueError("matmul: accumulate=True needs an out matrix to add to")
        if not (_finite_in(self, alpha) and _finite_in(self, beta)):
            raise ValueError(f"matmul: alpha and beta must be finite in {self.dtype}, got {alpha} and {beta}")
        if beta != 1 and not accumulate:
            raise ValueError(f"matmul: beta={beta} scales out's old values, which only accumulate=True adds to")
        if not accumulate:
            beta = 0
        cdef double work = <double>m * n * k
        with nogil:
            if self.is64:
                status = _matmul(self.f64, trans_a, b.f64, trans_b, result.f64, alpha, beta, work)
            else:
                status = _matmul(self.f32, trans_a, b.f32, trans_b, result.f32, alpha, beta, work)
        if status != 0:
            raise MemoryError("matmul: could not allocate its packing workspace")
        return result

    def linear(self, x, bias, bint relu=False):
        """self @ x + bias (a (rows, 1) column), then relu if asked: a Linear layer in one call."""
        cdef Matrix xm = _same_kind(self, x, "linear")
        cdef Matrix b = _same_kind(self, bias, "linear")
        cdef int status
        if not isinstance(x, Matrix):
            raise TypeError(f"linear needs a Matrix input, got {type(x).__name__}")
        if self.cols != xm.rows:
            raise ValueError(f"linear: shapes {_shape_str(self)} and {_shape_str(xm)} do not align "
                             f"({self.cols} != {xm.rows})")
        if b.rows != self.rows or b.cols != 1:
            raise ValueError(f"linear: bias has shape {_shape_str(b)}, expected ({self.rows}, 1)")
        cdef Matrix out = _empty(self.rows, xm.cols, self.is64)
        cdef double work = <double>self.rows * self.cols * xm.cols
        with nogil:
            if self.is64:
                status = _linear(self.f64, xm.f64, b.f64, out.f64, relu, work)
            else:
                status = _linear(self.f32, xm.f32, b.f32, out.f32, relu, work)
        if status != 0:
            raise MemoryError("linear: could not allocate the matmul workspace")
        return out

    def sum_squares(self):
        """sum(x ** 2) over every element as a Python float (accumulated in float64, no temporary)."""
        cdef double total
        with nogil:
            total = _sum_squares(self.f64) if self.is64 else _sum_squares(self.f32)
        return total

    def __matmul__(self, other):
        if not isinstance(self, Matrix) or not isinstance(other, Matrix):
            return NotImplemented
        return self.matmul(other)

    # -- element-wise with broadcasting
    cdef Matrix _binary_op(self, int op, other, bint reflected, str name):
        cdef Matrix b = _same_kind(self, other, name)
        cdef Matrix x = b if reflected else self
        cdef Matrix y = self if reflected else b
        cdef Py_ssize_t rows = _broadcast_dim(x.rows, y.rows)
        cdef Py_ssize_t cols = _broadcast_dim(x.cols, y.cols)
        if rows < 0 or cols < 0:
            raise ValueError(f"{name}: shapes {_shape_str(x)} and {_shape_str(y)} cannot be broadcast "
                             "(each dimension must match or be 1)")
        cdef Matrix out = _empty(rows, cols, self.is64)
        with nogil:
            if self.is64:
                _binary(op, x.f64, y.f64, out.f64)
            else:
                _binary(op, x.f32, y.f32, out.f32)
        return out

    def add(self, other):
        """self + other (Matrix or number), broadcasting (r, 1), (1, c) and (1, 1)."""
        return self._binary_op(ADD, other, False, "add")

    def __add__(self, other):
        return self._binary_op(ADD, other, False, "add") if _operands(self, other) else NotImplemented

    def __radd__(self, other):
        return self._binary_op(ADD, other, True, "add") if _operands(self, other) else NotImplemented

    def __sub__(self, other):
        return self._binary_op(SUB, other, False, "subtract") if _operands(self, other) else NotImplemented

    def __rsub__(self, other):
        return self._binary_op(SUB, other, True, "subtract") if _operands(self, other) else NotImplemented

    def __mul__(self, other):
        return self._binary_op(MUL, other, False, "multiply") if _operands(self, other) else NotImplemented

    def __rmul__(self, other):
        return self._binary_op(MUL, other, True, "multiply") if _operands(self, other) else NotImplemented

    def __truediv__(self, other):
        return self._binary_op(DIV, other, False, "divide") if _operands(self, other) else NotImplemented

    def __rtruediv__(self, other):
        return self._binary_op(DIV, other, True, "divide") if _operands(self, other) else NotImplemented

    # -- element-wise, one operand
    cdef Matrix _unary_op(self, int op, double scalar):
        cdef Matrix out = _empty(self.rows, self.cols, self.is64)
        with nogil:
            if self.is64:
                _unary(op, self.f64, scalar, out.f64)
            else:
                _unary(op, self.f32, scalar, out.f32)
        return out

    def __neg__(self):
        return self._unary_op(NEG, 0.0)

    def __pow__(self, exponent, modulo):
        if not isinstance(self, Matrix):
            return NotImplemented
        if modulo is not None:
            raise TypeError("pow() with a modulo is not supported for a Matrix")
        if not isinstance(exponent, numbers.Real):
            raise TypeError(f"Matrix ** needs a number exponent, got {type(exponent).__name__}")
        return self._unary_op(POW_SCALAR, exponent)

    def exp(self):
        """e ** x element-wise."""
        return self._unary_op(EXP, 0.0)

    def log(self):
        """Natural log element-wise (NaN below 0 and -inf at 0, as in NumPy)."""
        return self._unary_op(LOG, 0.0)

    def relu(self):
        """max(x, 0) element-wise."""
        return self._unary_op(RELU, 0.0)

    def relu_mask(self):
        """1 where x > 0, else 0: the derivative of relu."""
        return self._unary_op(RELU_MASK, 0.0)

    def relu_grad(self, grad):
        """grad where self > 0, else 0: relu's backward in one pass (self is relu's input)."""
        cdef Matrix g = _same_kind(self, grad, "relu_grad")
        _check_same_shape(self, g, "relu_grad")
        cdef Matrix out = _empty(self.rows, self.cols, self.is64)
        with nogil:
            if self.is64:
                _relu_grad(self.f64, g.f64, out.f64)
            else:
                _relu_grad(self.f32, g.f32, out.f32)
        return out

    # -- reductions (results keep two dimensions)
    cdef Matrix _reduce_op(self, int op, axis):
        cdef int ax = _check_axis(axis)
        cdef Matrix out = _empty(1 if ax != 1 else self.rows, 1 if ax != 0 else self.cols, self.is64)
        with nogil:
            if self.is64:
                _reduce(op, ax, self.f64, out.f64)
            else:
                _reduce(op, ax, self.f32, out.f32)
        return out

    def sum(self, axis=None):
        """Sum over everything (1x1), axis 0 (1, cols) or axis 1 (rows, 1); accumulated in float64."""
        return self._reduce_op(SUM, axis)

    def max(self, axis=None):
        """Maximum over everything (1x1), axis 0 (1, cols) or axis 1 (rows, 1); NaN propagates."""
        return self._reduce_op(MAX, axis)

    def argmax(self, axis=0):
        """Index of the first maximum (or first NaN, as NumPy) along axis 0 (shape (1, cols)) or 1 (shape (rows, 1)), as int64."""
        cdef int ax = _check_axis(axis)
        if ax == ALL:
            raise ValueError("argmax needs axis 0 or 1")
        if ax == 0:
            result = np.empty((1, self.cols), dtype=np.intp)
        else:
            result = np.empty((self.rows, 1), dtype=np.intp)
        cdef Py_ssize_t[:, ::1] out = result
        with nogil:
            if self.is64:
                _argmax(ax, self.f64, out)
            else:
                _argmax(ax, self.f32, out)
        return result

    def log_softmax(self, axis=0):
        """x - log(sum(exp(x))) along axis (0: each column is a distribution), max-shifted."""
        cdef int ax = _check_axis(axis)
        if ax == ALL:
            raise ValueError("log_softmax needs axis 0 or 1")
        cdef Matrix out = _empty(self.rows, self.cols, self.is64)
        with nogil:
            if self.is64:
                _log_softmax(ax, self.f64, out.f64)
            else:
                _log_softmax(ax, self.f32, out.f32)
        return out

    def log_softmax_grad(self, grad, axis=0):
        """The backward of log_softmax: grad - exp(self) * sum(grad, axis), self being its output."""
        cdef int ax = _check_axis(axis)
        if ax == ALL:
            raise ValueError("log_softmax_grad needs axis 0 or 1")
        cdef Matrix g = _same_kind(self, grad, "log_softmax_grad")
        _check_same_shape(self, g, "log_softmax_grad")
        cdef Matrix out = _empty(self.rows, self.cols, self.is64)
        with nogil:
            if self.is64:
                _log_softmax_grad(ax, self.f64, g.f64, out.f64)
            else:
                _log_softmax_grad(ax, self.f32, g.f32, out.f32)
        return out

    # -- in place (PyTorch's trailing underscore); each returns self
    cdef Matrix _update_op(self, int kind, double alpha, Matrix x):
        with nogil:
            if self.is64:
                _update(kind, alpha, x.f64 if x is not None else self.f64, self.f64)
            else:
                _update(kind, alpha, x.f32 if x is not None else self.f32, self.f32)
        return self

    def axpy_(self, double alpha, x):
        """self += alpha * x (same shape and dtype): gradient accumulation and SGD steps."""
        cdef Matrix m = _operand_of_update(self, x, "axpy_")
        if not _finite_in(self, alpha):
            _not_finite(self, "axpy_", {"alpha": alpha})
        return self._update_op(0, alpha, m)

    def scale_(self, double alpha):
        """self *= alpha."""
        if not _finite_in(self, alpha):
            _not_finite(self, "scale_", {"alpha": alpha})
        return self._update_op(1, alpha, None)

    def fill_(self, double value):
        """Set every element to value."""
        return self._update_op(2, value, None)

    def zero_(self):
        """Set every element to 0."""
        return self._update_op(2, 0.0, None)

    def sgd_(self, grad, double lr, double weight_decay=0.0, velocity=None, double momentum=0.0):
        """One SGD step on self (the parameter) in place, in one pass: self -= lr * d with
        d = grad + weight_decay * self; with ``velocity`` (a buffer of self's shape, updated
        in place, zeros before the first step) d is first folded into it as
        velocity = momentum * velocity + d, and the step takes velocity (PyTorch's SGD)."""
        cdef Matrix g = _operand_of_update(self, grad, "sgd_")
        cdef Matrix v = self if velocity is None else _operand_of_update(self, velocity, "sgd_")
        cdef bint use_velocity = velocity is not None
        if not (_finite_in(self, lr) and _finite_in(self, weight_decay) and _finite_in(self, momentum)):
            _not_finite(self, "sgd_", {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        with nogil:
            if self.is64:
                _sgd(self.f64, g.f64, v.f64, use_velocity, lr, momentum, weight_decay)
            else:
                _sgd(self.f32, g.f32, v.f32, use_velocity, lr, momentum, weight_decay)
        return self

    def adam_(self, grad, m, v, double lr, double beta1, double beta2, double eps,
              double correction1, double correction2, double weight_decay=0.0):
        """One Adam step on self (the parameter) in place, updating the moments m and v too.

        correction1/2 are the bias corrections 1 - beta1**t and 1 - beta2**t."""
        cdef Matrix g = _operand_of_update(self, grad, "adam_")
        cdef Matrix mm = _operand_of_update(self, m, "adam_")
        cdef Matrix vv = _operand_of_update(self, v, "adam_")
        if not (_finite_in(self, lr) and _finite_in(self, beta1) and _finite_in(self, beta2) and
                _finite_in(self, eps) and _finite_in(self, correction1) and _finite_in(self, correction2) and
                _finite_in(self, weight_decay)):
            _not_finite(self, "adam_", {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                                        "correction1": correction1, "correction2": correction2,
                                        "weight_decay": weight_decay})
        with nogil:
            if self.is64:
                _adam(self.f64, g.f64, mm.f64, vv.f64, lr, beta1, beta2, eps, correction1, correction2, weight_decay)
            else:
                _adam(self.f32, g.f32, mm.f32, vv.f32, lr, beta1, beta2, eps, correction1, correction2, weight_decay)
        return self

    def copy_(self, x, double scale=1.0):
        """Copy x's values into self (same shape and dtype); self = scale * x when scale is given,
        in the same single pass."""
        cdef Matrix m = _operand_of_update(self, x, "copy_")
        if not _finite_in(self, scale):
            _not_finite(self, "copy_", {"scale": scale})
        return self._update_op(3, scale, m)


cdef inline bint _finite_in(Matrix m, double value) noexcept:
    """value is finite in m's dtype (a float32 kernel rounds it to float32, where 1e39 is
    infinite): checked before any kernel runs, without building anything on the way."""
    return isfinite(value) and (m.is64 or isfinite(<float>value))


cdef _not_finite(Matrix m, str what, dict values):
    """The ValueError naming the first of values not finite in m's dtype."""
    for name, value in values.items():
        if not _finite_in(m, value):
            raise ValueError(f"{what}: {name} must be finite in {m.array.dtype}, got {value}")


cdef _check_same_shape(Matrix a, Matrix b, str what):
    if a.rows != b.rows or a.cols != b.cols:
        raise ValueError(f"{what}: shapes {_shape_str(a)} and {_shape_str(b)} must be equal")


cdef Matrix _output(out, Py_ssize_t rows, Py_ssize_t cols, bint is64, str what):
    """The matrix to write a result into: out (checked) or a new one."""
    cdef Matrix m
    if out is None:
        return _empty(rows, cols, is64)
    if not isinstance(out, Matrix):
        raise TypeError(f"{what}: out must be a Matrix, got {type(out).__name__}")
    m = <Matrix>out
    if m.rows != rows or m.cols != cols or m.is64 != is64:
        raise ValueError(f"{what}: out has shape {_shape_str(m)} and dtype {m.array.dtype}, "
                         f"the result needs ({rows}, {cols}) and {'float64' if is64 else 'float32'}")
    return m


def argmax(Matrix x, axis=0):
    """Index of the first maximum of x along axis 0 or 1 (see Matrix.argmax)."""
    return x.argmax(axis)
