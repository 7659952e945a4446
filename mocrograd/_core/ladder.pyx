"""The matmul ladder: from the naive triple loop to the optimized kernel, one
technique per step. For benchmarking and teaching only (benchmarks/matmul_ladder.py,
docs/optimizations.md); the library itself uses optimized.matmul.

Every step computes out = a @ b (no transposes) for C-contiguous float32 or
float64 arrays. Steps 1-3 run on one thread; 4-8 cut the rows into `workers`
chunks run by OpenMP threads.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free

from . cimport optimized
from .parallel cimport threads_for

cdef extern from *:
    """
    #include <math.h>
    #if defined(__FMA__) || defined(__AVX512F__)
    #define LADDER_FMA(a, b, c) fma((a), (b), (c))
    #define LADDER_FMAF(a, b, c) fmaf((a), (b), (c))
    #else
    #define LADDER_FMA(a, b, c) ((a) * (b) + (c))
    #define LADDER_FMAF(a, b, c) ((a) * (b) + (c))
    #endif
    """
    double LADDER_FMA(double a, double b, double c) noexcept nogil
    float LADDER_FMAF(float a, float b, float c) noexcept nogil

cdef enum:
    KC = 256     # k-block (steps 5-7)
    NC = 1024    # column block (steps 5-6)
    MR = 8       # register tile rows (step 7)
    NR32 = 32    # register tile columns: two 16-float vectors (step 7)


# 1. naive i-j-k: a dot product per output element; b is walked down a column
#    (stride n), so every step of the inner loop touches a new cache line.
cdef void step1(floating[:, :] a, floating[:, :] b, floating[:, :] out) noexcept nogil:
    cdef Py_ssize_t i, j, p
    cdef floating s
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            s = 0
            for p in range(a.shape[1]):
                s = s + a[i, p] * b[p, j]
            out[i, j] = s


# 2. loop order i-k-j: the inner loop walks rows of b and out contiguously.
cdef void step2(floating[:, :] a, floating[:, :] b, floating[:, :] out) noexcept nogil:
    cdef Py_ssize_t i, j, p
    cdef floating a_ip
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = 0
        for p in range(a.shape[1]):
            a_ip = a[i, p]
            for j in range(out.shape[1]):
                out[i, j] += a_ip * b[p, j]


# 3. vectorizable inner loop: contiguous memoryviews ([:, ::1]) and plain
#    pointers tell the compiler the stride is 1, so it emits SIMD code.
cdef inline void _row_update(floating a_ip, const floating* b_row, floating* out_row,
                             Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        out_row[j] += a_ip * b_row[j]


cdef inline void _rows(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
                       Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Rows lo..hi-1 of out = a @ b, one vectorizable row update per (i, p)."""
    cdef Py_ssize_t i, j, p, n = out.shape[1]
    for i in range(lo, hi):
        for j in range(n):
            out[i, j] = 0
        for p in range(a.shape[1]):
            _row_update(a[i, p], &b[p, 0], &out[i, 0], n)


cdef void step3(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out) noexcept nogil:
    _rows(a, b, out, 0, out.shape[0])


# 4. parallel rows: the rows are cut into `workers` chunks run by prange, each
#    chunk doing step 3 on its rows.
cdef void step4(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
                int workers) noexcept nogil:
    cdef Py_ssize_t m = out.shape[0]
    cdef int chunk
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        _rows(a, b, out, (m * chunk) // workers, (m * (chunk + 1)) // workers)


# 5. cache blocks: a KC x NC block of b (1 MB of floats at most) is reused by
#    every row before the next block is touched, so it is read from cache.
cdef void step5(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
                int workers) noexcept nogil:
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1], k = a.shape[1]
    cdef Py_ssize_t i, j, p, lo, hi, pc, jc, kc, nc, pc_b, jc_b
    cdef int chunk
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (m * chunk) // workers
        hi = (m * (chunk + 1)) // workers
        for i in range(lo, hi):
            for j in range(n):
                out[i, j] = 0
        for jc_b in range((n + NC - 1) // NC):
            jc = jc_b * NC
            nc = min(<Py_ssize_t>NC, n - jc)
            for pc_b in range((k + KC - 1) // KC):
                pc = pc_b * KC
                kc = min(<Py_ssize_t>KC, k - pc)
                for i in range(lo, hi):
                    for p in range(pc, pc + kc):
                        _row_update(a[i, p], &b[p, jc], &out[i, jc], nc)


# 6. packing: each KC x NC block of b is first copied into a contiguous buffer
#    (shared by the threads), so the block is one dense run of memory: no cache
#    set conflicts from the large row stride, few TLB pages.
cdef int step6(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
               int workers) noexcept nogil:
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1], k = a.shape[1]
    cdef Py_ssize_t i, j, p, lo, hi, pc, jc, kc, nc, pc_b, jc_b
    cdef int chunk, n_threads = threads_for(workers)
    cdef floating* bp = <floating*>malloc(KC * NC * sizeof(floating))
    if bp == NULL:
        return -1
    out[:, :] = 0
    for jc_b in range((n + NC - 1) // NC):
        jc = jc_b * NC
        nc = min(<Py_ssize_t>NC, n - jc)
        for pc_b in range((k + KC - 1) // KC):
            pc = pc_b * KC
            kc = min(<Py_ssize_t>KC, k - pc)
            for p in prange(kc, nogil=True, num_threads=n_threads, schedule='static'):
                for j in range(nc):
                    bp[p * nc + j] = b[pc + p, jc + j]
            for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
                lo = (m * chunk) // workers
                hi = (m * (chunk + 1)) // workers
                for i in range(lo, hi):
                    for p in range(kc):
                        _row_update(a[i, pc + p], bp + p * nc, &out[i, jc], nc)
    free(bp)
    return 0


# 7. register tile: an MR x NR block of out is summed in MR * 2 vector registers
#    over a whole k-block (fused multiply-adds), from b packed in NR-wide strips;
#    each loaded value of b now serves MR rows, each of a serves NR columns.
cdef inline floating _fma(floating x, floating y, floating z) noexcept nogil:
    if floating is float:
        return LADDER_FMAF(x, y, z)
    else:
        return LADDER_FMA(x, y, z)


cdef inline void _tile(Py_ssize_t kc, const floating* a, Py_ssize_t lda, const floating* bp,
                       floating* c, Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr) noexcept nogil:
    cdef floating acc[MR * NR32]
    cdef Py_ssize_t i, j, p, NR = NR32 if floating is float else NR32 // 2
    for i in range(MR * NR):
        acc[i] = 0
    for p in range(kc):
        for i in range(MR):
            for j in range(NR):
                acc[i * NR + j] = _fma(a[i * lda + p], bp[p * NR + j], acc[i * NR + j])
    for i in range(mr):
        for j in range(nr):
            c[i * ldc + j] += acc[i * NR + j]


cdef int step7(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
               int workers) noexcept nogil:
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1], k = a.shape[1]
    cdef Py_ssize_t NR = NR32 if floating is float else NR32 // 2
    cdef Py_ssize_t n_strips = (n + NR - 1) // NR, m_tiles = (m + MR - 1) // MR
    cdef Py_ssize_t i, j, p, s, t, lo, hi, pc, kc, i0, pc_b
    cdef int chunk, n_threads = threads_for(workers)
    cdef floating a_edge[MR * KC]
    cdef floating* bp = <floating*>malloc(KC * n_strips * NR * sizeof(floating))
    if bp == NULL:
        return -1
    out[:, :] = 0
    for pc_b in range((k + KC - 1) // KC):
        pc = pc_b * KC
        kc = min(<Py_ssize_t>KC, k - pc)
        for s in prange(n_strips, nogil=True, num_threads=n_threads, schedule='static'):
            for p in range(kc):
                for j in range(NR):
                    bp[(s * kc + p) * NR + j] = b[pc + p, s * NR + j] if s * NR + j < n else 0
        for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
            lo = (m_tiles * chunk) // workers
            hi = (m_tiles * (chunk + 1)) // workers
            for t in range(lo, hi):
                i0 = t * MR
                if i0 + MR <= m:
                    for s in range(n_strips):
                        _tile(kc, &a[i0, pc], k, bp + s * kc * NR, &out[i0, s * NR], n,
                              MR, min(NR, n - s * NR))
                else:  # the last rows: copy them into a zero-padded tile of A
                    for i in range(MR):
                        for p in range(kc):
                            a_edge[i * KC + p] = a[i0 + i, pc + p] if i0 + i < m else 0
                    for s in range(n_strips):
                        _tile(kc, a_edge, KC, bp + s * kc * NR, &out[i0, s * NR], n,
                              m - i0, min(NR, n - s * NR))
    free(bp)
    return 0


cdef int _run(int step, floating[:, ::1] a, floating[:, ::1] b, floating[:, ::1] out,
              int workers) noexcept nogil:
    # steps 1-2 see general (strided) views: the compiler must assume any stride
    cdef floating[:, :] sa = a, sb = b, sout = out
    if step == 1:
        step1(sa, sb, sout)
    elif step == 2:
        step2(sa, sb, sout)
    elif step == 3:
        step3(a, b, out)
    elif step == 4:
        step4(a, b, out, workers)
    elif step == 5:
        step5(a, b, out, workers)
    elif step == 6:
        return step6(a, b, out, workers)
    elif step == 7:
        return step7(a, b, out, workers)
    else:
        # 8. the library's kernel: A panels packed too, B groups sized for L2, a
        #    12 x 32 tile, deeper k-blocks for thin B, the longer side split.
        return optimized.matmul(a, False, b, False, out, 1.0, 0.0, workers)
    return 0


STEPS = {
    1: "naive i-j-k",
    2: "loop order i-k-j",
    3: "vectorizable inner loop",
    4: "parallel rows",
    5: "cache blocks",
    6: "packing",
    7: "register tile + FMA",
    8: "final kernel",
}


def ladder_matmul(int step, a, b, out, int workers=1):
    """out = a @ b with ladder step 1..8 (2-D C-contiguous float32 or float64 arrays)."""
    if step not in STEPS:
        raise ValueError(f"step must be 1..8, got {step}")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2 or a.shape[1] != b.shape[0] \
            or out.shape != (a.shape[0], b.shape[1]) or not (a.dtype == b.dtype == out.dtype):
        raise ValueError("ladder_matmul: need a (m, k), b (k, n), out (m, n) of one dtype")
    if a.shape[0] * a.shape[1] * b.shape[1] == 0:
        out[...] = 0
        return
    cdef float[:, ::1] a32, b32, o32
    cdef double[:, ::1] a64, b64, o64
    cdef int status
    if a.dtype.itemsize == 4:
        a32, b32, o32 = a, b, out
        with nogil:
            status = _run(step, a32, b32, o32, workers)
    else:
        a64, b64, o64 = a, b, out
        with nogil:
            status = _run(step, a64, b64, o64, workers)
    if status != 0:
        raise MemoryError("ladder_matmul: out of memory")
