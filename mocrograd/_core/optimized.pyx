"""The optimized kernels: the same signatures as naive.pyx, made fast.

Three ideas, used everywhere:
  * the innermost loop runs over contiguous memory with no branch the compiler
    cannot hoist, so GCC/Clang vectorize it (-O3);
  * the output is cut into ``workers`` chunks of independent rows, columns or
    tiles, run by ``prange`` on at most ``threads_for(workers)`` OpenMP threads
    (each body assigns its chunk's bounds lo, hi itself: Cython makes a variable
    private to a thread only where the body assigns it, not through a pointer);
  * every output element is computed by exactly one chunk, in an order that does
    not depend on the chunking, so results are bit-identical for any worker count.
Matmul adds cache blocking over k, a packed panel of B and a register tile.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, log, logf, pow, powf, sqrt, INFINITY
from libc.stdlib cimport malloc, free

from .ops cimport *
from .parallel cimport pieces_for, threads_for

# ---------------------------------------------------------------- matmul
#
# The matmul follows the GotoBLAS/BLIS plan, simplified (docs/optimizations.md
# walks through it step by step):
#
#   for each k-block pc (KC deep, in a fixed order)        -- sums stay short, blocks stay in cache
#       pack op(B)[pc-block, :] into NR-wide strips (shared) -- contiguous, zero-padded, any transpose
#       for each group of strips (NC columns, ~L2 sized)    -- B group stays in L2
#           in parallel, for each chunk of row tiles:
#               pack the MR x KC panel of op(A) (if reused)  -- contiguous, zero-padded, any transpose
#               for each strip: MR x NR register tile        -- the micro-kernel, all in registers
#
# Determinism: every output element belongs to exactly one chunk, and its sum is
# always "k-block 0, then + k-block 1, ..." with each block summed from p = 0 up,
# so the result depends on the shape only, never on the worker count.

cdef extern from *:
    """
    /* The register tile: MR rows x NR columns, NR being two SIMD vectors. With
       AVX-512 (32 vector registers) 12 x 2 = 24 accumulators fit with room for
       the two B vectors and the broadcast A value; with AVX/AVX2 (16 registers)
       6 x 2 = 12 do (the classic Haswell tile). */
    #if defined(__AVX512F__)
    #define MOCRO_MR 12
    #define MOCRO_VEC_BYTES 64
    #elif defined(__AVX__)
    #define MOCRO_MR 6
    #define MOCRO_VEC_BYTES 32
    #else
    #define MOCRO_MR 6
    #define MOCRO_VEC_BYTES 16
    #endif
    #define MOCRO_NR_F32 (2 * MOCRO_VEC_BYTES / 4)
    #define MOCRO_NR_F64 (2 * MOCRO_VEC_BYTES / 8)

    /* The register tiles: MR rows x V SIMD vectors of W lanes, V = 2 (the wide
       tile, NR = 2W columns) or 1 (the narrow tile, for n <= NR/2: a batch of 8).
       out[i * V * W + j] = sum over p < kc of a[i * sai + p * sap] * bp[p * V * W + j].
       Written with GCC/Clang vector types because, given plain loops, GCC
       vectorizes these shapes across rows with shuffles and spills (the narrow
       float tile ran 5x slower and the wide double tile 20x: 4.5 GFLOP/s), or,
       tuned for an Intel AVX-512 CPU, with half-width vectors whose sums no longer
       fit the registers; the vector type fixes the width.
       acc[i][v] += a_i * b[v] is one fused multiply-add per row, vector and step:
       one instruction and one rounding where the CPU has FMA (the build is ISO C,
       where GCC contracts a * b + c only when asked: MOCRO_CONTRACT), a multiply
       and an add where it has not. */
    #include <string.h>
    /* Each kernel is made twice from one macro: NAME_f32 on floats, NAME_f64 on doubles. */
    #define MOCRO_BOTH_TYPES(KERNEL, NAME, ...)                                        \
        KERNEL(NAME##_f32, float, MOCRO_HALF_NR_F32, __VA_ARGS__)                      \
        KERNEL(NAME##_f64, double, MOCRO_HALF_NR_F64, __VA_ARGS__)
    #define MOCRO_HALF_NR_F32 (MOCRO_VEC_BYTES / 4)
    #define MOCRO_HALF_NR_F64 (MOCRO_VEC_BYTES / 8)
    /* Ask for the cache lines of bytes [0, n) from p, for reading. */
    static inline void mocro_prefetch_run(const void* p, Py_ssize_t n) {
        const char* q = (const char*)p;
        for (Py_ssize_t b = 0; b < n; b += 64) __builtin_prefetch(q + b, 0, 3);
    }

    /* Ask for `lines` cache lines from each of `rows` rows `stride_bytes` apart, for writing. */
    static inline void mocro_prefetch_rows(const void* p, Py_ssize_t stride_bytes, int rows, int lines) {
        const char* q = (const char*)p;
        for (int i = 0; i < rows; i++)
            for (int l = 0; l < lines; l++) __builtin_prefetch(q + i * stride_bytes + l * 64, 1, 3);
    }

    /* Step P of a tile's k loop: the sums take (OP "=", step 0) or add (OP "+=")
       a_i * b for each row i. With AHEAD > 0 the step first asks for the packed
       strip's lines AHEAD bytes further on (the strip, 32 KB, streams from L2 for
       every tile: with the tile's A panel it overflows L1). The wide tile asks
       MOCRO_TILE_AHEAD ahead (16 steps): on the Intel Xeon, toggled call by call in
       one process, 2048^3 ran 1.10-1.29x faster on 2 workers and 1.02-1.20x on one
       (1 KB and 4 KB alike), 1024^3 1.18-1.21x on one, dW = G X^T of Bigger's large
       layers at a batch of 32 1.09-1.18x, Bigger 26+6 fits 1.07x (2 workers) and
       1.03x (1). The narrow tile asks nothing: 0.93-1.08x on its shapes. */
    #define MOCRO_TILE_AHEAD 2048
    #define MOCRO_TILE_STEP(T, W, V, AHEAD, P, OP) {                                   \
            if (AHEAD) mocro_prefetch_run((const char*)(bp + (P) * V * W) + AHEAD, V * MOCRO_VEC_BYTES); \
            memcpy(&b0, bp + (P) * V * W, sizeof b0);                                  \
            if (V == 2) memcpy(&b1, bp + (P) * V * W + W, sizeof b1);                  \
            const T* a_p = a + (P) * sap;                                              \
            for (int i = 0; i < MOCRO_MR; i++) {                                       \
                T a_i = a_p[i * sai];                                                  \
                acc0[i] OP a_i * b0;                                                   \
                if (V == 2) acc1[i] OP a_i * b1;                                       \
            }                                                                          \
        }
    #define MOCRO_TILE(NAME, T, W, V, AHEAD)                                           \
    typedef T NAME##_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));                \
    MOCRO_CONTRACT static void NAME(Py_ssize_t kc, const T* a, Py_ssize_t sai,         \
                                    Py_ssize_t sap, const T* bp, T* out) {             \
        /* one array per vector column: GCC keeps each in registers, but a single    \
           [MR][2] array (1.5 KB) in memory, stored back every step */                 \
        NAME##_vec acc0[MOCRO_MR], acc1[MOCRO_MR], b0, b1;                             \
        /* step 0 starts the sums (kc >= 1): zeroing them first became two memset      \
           calls per tile, a tenth of a shallow product's time (k = 8: the SGD step) */ \
        MOCRO_TILE_STEP(T, W, V, AHEAD, 0, =)                                          \
        for (Py_ssize_t p = 1; p < kc; p++) MOCRO_TILE_STEP(T, W, V, AHEAD, p, +=)     \
        for (int i = 0; i < MOCRO_MR; i++) {                                           \
            memcpy(out + i * V * W, &acc0[i], sizeof b0);                              \
            if (V == 2) memcpy(out + i * V * W + W, &acc1[i], sizeof b1);              \
        }                                                                              \
    }
    /* MOCRO_UNROLL: unroll a loop of a fixed, small count completely. GCC keeps a
       kernel's array of vector sums in registers only when every loop over it is
       unrolled; left to itself it stopped unrolling the thin kernels' loops past a
       size, and kept their sums (a 5 x 8 block of them, or a 16-lane row loaded
       as two halves) in memory, each add a store and a load: the thin kernels
       ran at half the memory's pace (a batch of 8: 5 GB/s where a plain read of
       one core streams 10). */
    #if defined(__GNUC__) && !defined(__clang__)
    #define MOCRO_CONTRACT __attribute__((optimize("fp-contract=fast")))
    #define MOCRO_UNROLL _Pragma("GCC unroll 16")
    /* The thin axpy's loops over its up to 28 running sums: unrolled only 16 times they
       kept the sums in memory, and dX at a batch of 24 ran 1.7x slower than padded to 32. */
    #define MOCRO_UNROLL_SUMS _Pragma("GCC unroll 32")
    #else
    #define MOCRO_CONTRACT
    #define MOCRO_UNROLL
    #define MOCRO_UNROLL_SUMS
    #endif
    MOCRO_BOTH_TYPES(MOCRO_TILE, mocro_wide_tile, 2, MOCRO_TILE_AHEAD)
    MOCRO_BOTH_TYPES(MOCRO_TILE, mocro_narrow_tile, 1, 0)

    /* The thin kernels, for products at most 4 columns wide (one example, a batch
       of 2: matrix-vector work; up to 8 with AVX-512, a batch of 8) on deep enough
       rows of A (THIN_DOT_K4 and THIN_DOT_K8 in the enum below), and W^T G
       products up to 16, or 32 when deep (whose register tile reads W down its
       columns). A register tile would leave most of its lanes idle there; these run
       along the contiguous side of A instead, for J output columns at once (bt and b
       zero-padded to J), so each element of A is loaded once, and memory is the only
       limit.

       thin_dot: sums[r * J + j] = a[r * lda : r * lda + k] . bt[j * k : j * k + k]
       for R rows r of A (op(A) = A, rows contiguous) and J columns j: W lanes of
       partial sums each, added lane by lane, then the k % W tail. For 2 or more
       columns each row's next lines are asked for MOCRO_DOT_AHEAD bytes ahead: the
       hardware's prefetcher, following R rows 32 KB apart, fell behind (forward
       through Bigger's two large layers at a batch of 2 and 8: 1.05-1.12x faster
       on the Intel Xeon, 1-2 workers; a vector, one stream per row at 12 GB/s,
       gains nothing). */
    #define MOCRO_DOT_AHEAD 512
    #define MOCRO_THIN_DOT(NAME, T, W, R, J)                                           \
    typedef T NAME##_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));                \
    MOCRO_CONTRACT static void NAME(Py_ssize_t k, const T* a, Py_ssize_t lda,          \
                                    const T* bt, T* sums) {                            \
        NAME##_vec acc[R][J], x[R], y;                                                 \
        Py_ssize_t p = 0, q;                                                           \
        int r, j, l;                                                                   \
        MOCRO_UNROLL for (r = 0; r < R; r++)                                            \
            MOCRO_UNROLL for (j = 0; j < J; j++) acc[r][j] = (NAME##_vec){0};           \
        for (; p + W <= k; p += W) {                                                   \
            if (J > 1) MOCRO_UNROLL for (r = 0; r < R; r++)                            \
                __builtin_prefetch((const char*)(a + r * lda + p) + MOCRO_DOT_AHEAD, 0, 3); \
            MOCRO_UNROLL for (r = 0; r < R; r++) memcpy(&x[r], a + r * lda + p, sizeof y); \
            MOCRO_UNROLL for (j = 0; j < J; j++) {                                     \
                memcpy(&y, bt + j * k + p, sizeof y);                                  \
                MOCRO_UNROLL for (r = 0; r < R; r++) acc[r][j] += x[r] * y;            \
            }                                                                          \
        }                                                                              \
        for (r = 0; r < R; r++) for (j = 0; j < J; j++) {                              \
            T total = 0;                                                               \
            for (l = 0; l < W; l++) total += acc[r][j][l];                             \
            for (q = p; q < k; q++) total += a[r * lda + q] * bt[j * k + q];           \
            sums[r * J + j] = total;                                                   \
        }                                                                              \
    }

    /* thin_axpy: t[j * ldt + i] += sum over p < rows of a[p * lda + i] * b[p * J + j],
       p in order, for i < w and J columns j (op(A) = A^T: a row of A is a contiguous
       run of op(A)'s column). Up to THIN_ROWS (8; 32 for 16 or more columns) rows of A
       per call, so the running sums t are loaded and stored once per call. The sums
       of S columns at a time live in registers: 32 columns (a batch of 32) run as two
       passes of 16 over each vector of A's rows, which the first pass left in L1
       (32 sums and the vector of A would take 33 of the 32 registers). 17-28 columns
       are padded to 20, 24 or 28 (not 32), each one pass with AVX-512 (MOCRO_WIDE_S):
       dX of Bigger's middle layers at a batch of 26 (its 32 examples less the 6 held
       out) had spent 6 of every 32 multiply-adds on zero columns. From 8
       columns on, each row's line MOCRO_AXPY_AHEAD bytes ahead is asked for as
       the first pass reads a vector of it: dX of Bigger's two large layers ran
       1.1-1.6x faster at a batch of 16 and 32 on the Intel Xeon (1-2 workers),
       1.0-1.1x at 8; at 4 columns it made no difference. */
    #define MOCRO_AXPY_AHEAD 128
    #define MOCRO_THIN_AXPY(NAME, T, W, J, S)                                          \
    typedef T NAME##_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));                \
    MOCRO_CONTRACT static void NAME(Py_ssize_t w, Py_ssize_t ldt, Py_ssize_t rows,     \
                                    const T* a, Py_ssize_t lda, const T* b, T* t) {    \
        NAME##_vec acc[S], x;                                                          \
        Py_ssize_t i = 0, p;                                                           \
        int j, h;                                                                      \
        for (; i + W <= w; i += W) {                                                   \
            for (h = 0; h < J; h += S) {                                               \
                MOCRO_UNROLL_SUMS for (j = 0; j < S; j++)                              \
                    memcpy(&acc[j], t + (h + j) * ldt + i, sizeof x);                  \
                for (p = 0; p < rows; p++) {                                           \
                    if (J >= 8 && h == 0)                                              \
                        __builtin_prefetch((const char*)(a + p * lda + i) + MOCRO_AXPY_AHEAD, 0, 3); \
                    memcpy(&x, a + p * lda + i, sizeof x);                             \
                    MOCRO_UNROLL_SUMS for (j = 0; j < S; j++) acc[j] += x * b[p * J + h + j]; \
                }                                                                      \
                MOCRO_UNROLL_SUMS for (j = 0; j < S; j++)                              \
                    memcpy(t + (h + j) * ldt + i, &acc[j], sizeof x);                  \
            }                                                                          \
        }                                                                              \
        for (; i < w; i++)                                                             \
            for (p = 0; p < rows; p++)                                                 \
                for (j = 0; j < J; j++) t[j * ldt + i] += a[p * lda + i] * b[p * J + j]; \
    }
    /* (rows, columns) per call: (8, 1) for a vector, (8 or 4, 4) for 2-4 columns,
       (5, 8) for 5-8 (AVX-512 only: MOCRO_DOT8). More rows per call share each load
       of bt (read from L2) among more rows of A, but read more rows of A side by side;
       these counts measured fastest on Bigger's layers. 5-8 columns: 5 or 6 rows
       21-36% faster than the narrow register tile on an AMD Zen 5, 7 or more slower
       (on Intel Cascade Lake and Emerald Rapids 2-6 rows were within 0.7-1.26x of 5),
       though 40 sums spill out of registers. 2-4 columns: on AMD Zen 8 rows ran
       13-27% faster than 4 (AVX-512 and AVX2 builds); on Intel Xeons 4 rows ran
       1.02-1.44x faster than 8 (Cascade Lake, 1-2 workers) and 1.14-2.66x (Emerald
       Rapids, 1-4 workers). The CPU is asked at run time (a native build's compiler
       may not know the CPU's name): 8 rows on AMD and on non-x86 CPUs, 4 on others. */
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define MOCRO_DOT4_ROWS (__builtin_cpu_is("amd") ? 8 : 4)
    #else
    #define MOCRO_DOT4_ROWS 8
    #endif
    #define MOCRO_DOT_ROWS(J) ((J) == 8 ? 5 : (J) == 4 ? MOCRO_DOT4_ROWS : 8)
    MOCRO_BOTH_TYPES(MOCRO_THIN_DOT, mocro_thin_dot1, 8, 1)
    MOCRO_BOTH_TYPES(MOCRO_THIN_DOT, mocro_thin_dot4r4, 4, 4)
    MOCRO_BOTH_TYPES(MOCRO_THIN_DOT, mocro_thin_dot4r8, 8, 4)
    MOCRO_BOTH_TYPES(MOCRO_THIN_DOT, mocro_thin_dot8, 5, 8)
    /* 5-8 columns take thin_dot only with AVX-512: with AVX2 the narrow register tile
       (6 rows x 8 lanes, all of them used) ran 3x faster than it. */
    #if defined(__AVX512F__)
    #define MOCRO_DOT8 1
    #else
    #define MOCRO_DOT8 0
    #endif
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy4, 4, 4)
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy1, 1, 1)
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy8, 8, 8)
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy16, 16, 16)
    #if MOCRO_VEC_BYTES == 64
    #define MOCRO_WIDE_S(J) (J)
    #else
    #define MOCRO_WIDE_S(J) ((J) / 2)
    #endif
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy20, 20, MOCRO_WIDE_S(20))
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy24, 24, MOCRO_WIDE_S(24))
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy28, 28, MOCRO_WIDE_S(28))
    MOCRO_BOTH_TYPES(MOCRO_THIN_AXPY, mocro_thin_axpy32, 32, 16)
    /* One entry point per kernel and type: J = 1, 4 (4 or 8 rows) or 8 columns (dot),
       1, 4, 8, 16, 20, 24, 28 or 32 (axpy). */
    #define MOCRO_THIN_ENTRIES(SUF, T)                                                 \
    static void mocro_thin_dot_##SUF(Py_ssize_t J, Py_ssize_t k, const T* a,           \
                                     Py_ssize_t lda, const T* bt, T* sums) {           \
        if (J == 1) mocro_thin_dot1_##SUF(k, a, lda, bt, sums);                        \
        else if (J == 4 && MOCRO_DOT4_ROWS == 4) mocro_thin_dot4r4_##SUF(k, a, lda, bt, sums); \
        else if (J == 4) mocro_thin_dot4r8_##SUF(k, a, lda, bt, sums);                 \
        else mocro_thin_dot8_##SUF(k, a, lda, bt, sums);                               \
    }                                                                                  \
    static void mocro_thin_axpy_##SUF(Py_ssize_t J, Py_ssize_t w, Py_ssize_t ldt,      \
                                      Py_ssize_t rows, const T* a, Py_ssize_t lda,     \
                                      const T* b, T* t) {                              \
        if (J == 1) mocro_thin_axpy1_##SUF(w, ldt, rows, a, lda, b, t);                \
        else if (J == 4) mocro_thin_axpy4_##SUF(w, ldt, rows, a, lda, b, t);           \
        else if (J == 8) mocro_thin_axpy8_##SUF(w, ldt, rows, a, lda, b, t);           \
        else if (J == 16) mocro_thin_axpy16_##SUF(w, ldt, rows, a, lda, b, t);         \
        else if (J == 20) mocro_thin_axpy20_##SUF(w, ldt, rows, a, lda, b, t);         \
        else if (J == 24) mocro_thin_axpy24_##SUF(w, ldt, rows, a, lda, b, t);         \
        else if (J == 28) mocro_thin_axpy28_##SUF(w, ldt, rows, a, lda, b, t);         \
        else mocro_thin_axpy32_##SUF(w, ldt, rows, a, lda, b, t);                      \
    }
    MOCRO_THIN_ENTRIES(f32, float)
    MOCRO_THIN_ENTRIES(f64, double)

    /* exp of floats, a SIMD vector at a time: x = n ln 2 + r (n the nearest integer to
       x / ln 2, ln 2 in two parts so n ln 2 is exact), exp(r) by Cephes' degree-6
       polynomial for |r| <= ln 2 / 2, times 2^n built in the exponent bits in two halves
       (each a normal float even where 2^n is not), so the one rounding of the last
       product also gives the subnormal results, the infinite one (x past ln FLT_MAX,
       clamped to 89) and 0 (x below -104). NaN stays NaN (the clamps keep it). At most
       1.01 ulp from exp on normal results (12 million random floats), 1.7 of the
       smallest subnormal on subnormal ones; libm's expf, called per value, streamed 6x
       slower (1.3 against 8.2 GB/s on one worker, NumPy 7.8). The tail of a run is
       padded to a whole vector, so a value's result never depends on where it lies in
       a run, nor on the worker count. */
    /* Shared by the float and double versions. MOCRO_EXP_CLAMP: x clamped to [LO, HI]
       through its bits (NaN compares false to both, so it stays); K is an integer vector
       of x's width. MOCRO_EXP_SCALE: p * 2^n for n in K, 2^n as two factors 2^(n/2) and
       2^(n - n/2), each built in the exponent bits (BIAS, MANT_BITS), both normal. */
    #define MOCRO_EXP_CLAMP(V, K, LO, HI) {                                            \
            __typeof__(K) below_ = V < LO, above_ = V > HI, lo_, hi_;                  \
            __typeof__(V) los_ = (__typeof__(V)){0} + LO, his_ = (__typeof__(V)){0} + HI; \
            memcpy(&lo_, &los_, sizeof lo_);                                           \
            memcpy(&hi_, &his_, sizeof hi_);                                           \
            memcpy(&K, &V, sizeof K);                                                  \
            K = (below_ & lo_) | (above_ & hi_) | (~(below_ | above_) & K);            \
            memcpy(&V, &K, sizeof V);                                                  \
        }
    #define MOCRO_EXP_SCALE(P, K, BIAS, MANT_BITS) ({                                  \
            __typeof__(P) s1_, s2_;                                                    \
            __typeof__(K) h_ = ((K >> 1) + BIAS) << MANT_BITS;                         \
            memcpy(&s1_, &h_, sizeof s1_);                                             \
            h_ = ((K - (K >> 1)) + BIAS) << MANT_BITS;                                 \
            memcpy(&s2_, &h_, sizeof s2_);                                             \
            P * s1_ * s2_;                                                             \
        })
    /* exp over a run, a vector at a time, the tail padded to a whole vector */
    #define MOCRO_EXP_RUN(NAME, T, VEC, LANES)                                         \
    MOCRO_CONTRACT static void NAME(const T* x, T* out, Py_ssize_t n) {                \
        VEC v;                                                                         \
        Py_ssize_t j = 0;                                                              \
        for (; j + (Py_ssize_t)(sizeof v / sizeof(T)) <= n; j += sizeof v / sizeof(T)) { \
            memcpy(&v, x + j, sizeof v);                                               \
            v = LANES(v);                                                              \
            memcpy(out + j, &v, sizeof v);                                             \
        }                                                                              \
        if (j < n) {                                                                   \
            memset(&v, 0, sizeof v);                                                   \
            memcpy(&v, x + j, (n - j) * sizeof(T));                                    \
            v = LANES(v);                                                              \
            memcpy(out + j, &v, (n - j) * sizeof(T));                                  \
        }                                                                              \
    }
    typedef float mocro_expf_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));
    typedef int mocro_expi_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));
    MOCRO_CONTRACT static inline mocro_expf_vec mocro_exp_lanes_f32(mocro_expf_vec v) {
        const float round = 12582912.0f;   /* 1.5 * 2^23: adding it rounds to an integer */
        const int round_bits = 0x4B400000;
        mocro_expf_vec t, n, r, p;
        mocro_expi_vec k;
        MOCRO_EXP_CLAMP(v, k, -104.0f, 89.0f)
        t = v * 1.44269504088896341f + round;
        n = t - round;
        r = v - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        p = 1.9875691500e-4f * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * (r * r) + r + 1.0f;
        memcpy(&k, &t, sizeof k);
        k = k - round_bits;                 /* n, from t's low mantissa bits */
        return MOCRO_EXP_SCALE(p, k, 127, 23);
    }
    MOCRO_EXP_RUN(mocro_exp_f32, float, mocro_expf_vec, mocro_exp_lanes_f32)

    /* exp of doubles, the same way: ln 2 in Cephes' two parts, exp(r) by its Taylor
       polynomial of degree 13 (the first term left out, r^14 / 14!, is below 5e-18 for
       |r| <= ln 2 / 2), x clamped to [-746, 710]. At most 1.00 ulp from NumPy's exp on
       10 million random doubles; libm's exp per value streamed 3.3x slower. */
    typedef double mocro_expd_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));
    typedef long long mocro_expl_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));
    MOCRO_CONTRACT static inline mocro_expd_vec mocro_exp_lanes_f64(mocro_expd_vec v) {
        const double round = 6755399441055744.0;   /* 1.5 * 2^52 */
        const long long round_bits = 0x4338000000000000LL;
        mocro_expd_vec t, n, r, p;
        mocro_expl_vec k;
        MOCRO_EXP_CLAMP(v, k, -746.0, 710.0)
        t = v * 1.4426950408889634074 + round;
        n = t - round;
        r = v - n * 6.93145751953125e-1;
        r = r - n * 1.42860682030941723212e-6;
        p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;       /* 1/13!, 1/12! */
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * (r * r) + r + 1.0;
        memcpy(&k, &t, sizeof k);
        k = k - round_bits;
        return MOCRO_EXP_SCALE(p, k, 1023, 52);
    }
    MOCRO_EXP_RUN(mocro_exp_f64, double, mocro_expd_vec, mocro_exp_lanes_f64)

    /* The rank-k update, for products of depth k <= MOCRO_RANK_K into long rows (the
       SGD step's W = beta W + alpha G X^T at a batch of 2-8, dW = G X^T): R rows of C
       at a time, each swept start to end once, c[r * ldc + j] = beta * c + alpha *
       sum over p < K of a[r * K + p] * bt[p * n + j] (a and bt zero-padded to K;
       c is not read when beta is 0). The register tile would read and write each
       12 x 32 tile of C after only k steps, 12 rows 32 KB apart. Each row's line
       MOCRO_RANK_AHEAD bytes ahead is asked for, for writing: the SGD step into
       Bigger's two large layers ran 1.03-1.08x faster (batch 2 and 8, 1-2 workers). */
    #define MOCRO_RANK_K 8
    #define MOCRO_RANK_AHEAD 256
    #define MOCRO_RANK(NAME, T, W, R)                                                  \
    typedef T NAME##_vec __attribute__((vector_size(MOCRO_VEC_BYTES)));                \
    MOCRO_CONTRACT static void NAME(Py_ssize_t n, const T* a, const T* bt, T* c,       \
                                    Py_ssize_t ldc, T alpha, T beta) {                 \
        NAME##_vec acc[R], y, z;                                                       \
        Py_ssize_t j = 0;                                                              \
        int r, p;                                                                      \
        for (; j + W <= n; j += W) {                                                   \
            memcpy(&y, bt + j, sizeof y);                                              \
            MOCRO_UNROLL for (r = 0; r < R; r++) acc[r] = a[r * MOCRO_RANK_K] * y;     \
            MOCRO_UNROLL for (p = 1; p < MOCRO_RANK_K; p++) {                          \
                memcpy(&y, bt + p * n + j, sizeof y);                                  \
                MOCRO_UNROLL for (r = 0; r < R; r++) acc[r] += a[r * MOCRO_RANK_K + p] * y; \
            }                                                                          \
            mocro_prefetch_rows((const char*)(c + j) + MOCRO_RANK_AHEAD, ldc * sizeof(T), R, 1); \
            MOCRO_UNROLL for (r = 0; r < R; r++) {                                     \
                y = acc[r] * alpha;                                                    \
                if (beta != 0) {                                                       \
                    memcpy(&z, c + r * ldc + j, sizeof z);                             \
                    y += z * beta;                                                     \
                }                                                                      \
                memcpy(c + r * ldc + j, &y, sizeof y);                                 \
            }                                                                          \
        }                                                                              \
        for (; j < n; j++)                                                             \
            for (r = 0; r < R; r++) {                                                  \
                T s = a[r * MOCRO_RANK_K] * bt[j];                                     \
                for (p = 1; p < MOCRO_RANK_K; p++) s += a[r * MOCRO_RANK_K + p] * bt[p * n + j]; \
                c[r * ldc + j] = beta != 0 ? s * alpha + c[r * ldc + j] * beta : s * alpha; \
            }                                                                          \
    }
    MOCRO_BOTH_TYPES(MOCRO_RANK, mocro_rank4, 4)
    MOCRO_BOTH_TYPES(MOCRO_RANK, mocro_rank1, 1)
    """
    enum:
        VEC_BYTES "MOCRO_VEC_BYTES"
        MR "MOCRO_MR"
        NR_F32 "MOCRO_NR_F32"
        NR_F64 "MOCRO_NR_F64"
        HALF_NR_F32 "MOCRO_HALF_NR_F32"
    bint DOT8 "MOCRO_DOT8"
    Py_ssize_t RANK_K "MOCRO_RANK_K"
    Py_ssize_t DOT_ROWS "MOCRO_DOT_ROWS"(Py_ssize_t J) noexcept nogil
    void mocro_prefetch_rows(const void* p, Py_ssize_t stride_bytes, int rows, int lines) noexcept nogil
    void mocro_prefetch_run(const void* p, Py_ssize_t n) noexcept nogil
    void mocro_exp_f32(const float* x, float* out, Py_ssize_t n) noexcept nogil
    void mocro_exp_f64(const double* x, double* out, Py_ssize_t n) noexcept nogil
    void mocro_rank4_f32(Py_ssize_t n, const float* a, const float* bt, float* c, Py_ssize_t ldc,
                         float alpha, float beta) noexcept nogil
    void mocro_rank4_f64(Py_ssize_t n, const double* a, const double* bt, double* c, Py_ssize_t ldc,
                         double alpha, double beta) noexcept nogil
    void mocro_rank1_f32(Py_ssize_t n, const float* a, const float* bt, float* c, Py_ssize_t ldc,
                         float alpha, float beta) noexcept nogil
    void mocro_rank1_f64(Py_ssize_t n, const double* a, const double* bt, double* c, Py_ssize_t ldc,
                         double alpha, double beta) noexcept nogil
    void mocro_wide_tile_f32(Py_ssize_t kc, const float* a, Py_ssize_t sai, Py_ssize_t sap,
                             const float* bp, float* out) noexcept nogil
    void mocro_wide_tile_f64(Py_ssize_t kc, const double* a, Py_ssize_t sai, Py_ssize_t sap,
                             const double* bp, double* out) noexcept nogil
    void mocro_narrow_tile_f32(Py_ssize_t kc, const float* a, Py_ssize_t sai, Py_ssize_t sap,
                               const float* bp, float* out) noexcept nogil
    void mocro_narrow_tile_f64(Py_ssize_t kc, const double* a, Py_ssize_t sai, Py_ssize_t sap,
                               const double* bp, double* out) noexcept nogil
    void mocro_thin_dot_f32(Py_ssize_t J, Py_ssize_t k, const float* a, Py_ssize_t lda, const float* bt,
                            float* sums) noexcept nogil
    void mocro_thin_dot_f64(Py_ssize_t J, Py_ssize_t k, const double* a, Py_ssize_t lda, const double* bt,
                            double* sums) noexcept nogil
    void mocro_thin_axpy_f32(Py_ssize_t J, Py_ssize_t w, Py_ssize_t ldt, Py_ssize_t rows, const float* a,
                             Py_ssize_t lda, const float* b, float* t) noexcept nogil
    void mocro_thin_axpy_f64(Py_ssize_t J, Py_ssize_t w, Py_ssize_t ldt, Py_ssize_t rows, const double* a,
                             Py_ssize_t lda, const double* b, double* t) noexcept nogil


cdef enum:
    KC_BYTES = 1024      # k-block: 256 floats / 128 doubles, so a KC x NR strip of B is 32 KB (L1)
    KC_THIN_BYTES = 4096 # deeper k-blocks when B is one strip wide (n <= NR): fewer passes over C
    PACK_A_ABOVE = 2048  # rows of op(A) (contiguous) further apart than this are packed for the tile; nearer
                         # ones are read in place, their 12 rows spread over 2 or more L1 sets: Bigger's
                         # first-layer dW = G X^T (rows 128 B apart) ran 1.22-1.24x faster, 500^3 1.12x,
                         # Longer's dW 1.07-1.09x; rows 4 KB apart (1024^3), all in one set, 0.85-0.87x
    NC_BYTES = 2097152   # a group of strips: KC x NC of packed B, 2 MB (from L3: the tile asks for its
                         # strip ahead). Each group packs the A panels again; with the tile's prefetch,
                         # 2 MB groups instead of 512 KB (the L2 half, kept before it) ran 2048^3
                         # 1.08-1.09x faster on 1 worker and 1.10-1.14x on 2, 1024^3 1.05-1.07x,
                         # 4096^3 1.15x on 2 (4 MB: a further 1.04x there; 16 MB no better), 512^3
                         # and dW = G X^T at a batch of 32 unchanged
    KC_MAX = 1024        # the most k-block elements any of the above gives (A panel buffer)
    LANES = 16           # independent partial sums in a vectorized reduction
    SPLIT_K_BYTES = 16777216  # the most workspace (partial sums and packed B) split-k may take
    ONE_STRIP_BYTES = 4194304  # op(B) one strip wide and at most this big (4 MB) is packed whole (_matmul_one_strip)
    THIN = 4             # products this narrow take the thin kernels
    THIN_DOT_K4 = 128    # ... of 2-4 columns only this deep or deeper, and of 5-8 columns (AVX-512)
    THIN_DOT_K8 = 384    # this deep: each thin_dot call ends with J x R sums across W lanes, which cost
                         # more than its FMAs on short rows; the narrow register tile reads those in
                         # place. Bigger's first layer (8192 x 64) forward ran 2.3-2.9x faster with the
                         # tile at a batch of 6-8 and 1.5x at 2-4; depth 128: 1.8-2.2x at 8, 0.96-1.21x
                         # at 2-4; 256: 1.35-1.5x at 8 but 0.78-0.96x at 2-4; 384: 1.02-1.04x at 8
                         # (doubles 0.9-1.1x), 0.6-0.7x at 2-4 (Intel Xeon, 1 and 2 workers)
    THIN_T = 16          # ... and W^T G products this narrow (a batch of 16: their register tile is slow)
    THIN_T_DEEP = 32     # ... and W^T G this narrow when also deep and tall (k >= THIN_DEEP_K and
    THIN_DEEP_K = 1024   # m >= THIN_DEEP_M, a batch of 32 through Bigger's middle layers): there the
    THIN_DEEP_M = 2048   # register tile reads 48 bytes from each of 1024 rows of W 32 KB apart, and
                         # dX of the 4096 x 8192 layer ran 1.9-2.2x slower with it on the Intel Xeon.
                         # On smaller W (4 MB or less) or fewer output rows the register tile (or
                         # split-k) was up to 3x faster.
    THIN_SUMS = 32768    # running sums the transposed thin kernel keeps per chunk (128 KB of floats: L2),
                         # so a batch of 8 reads A in runs of 4096 floats (16 KB). Short runs leave the
                         # memory system idle between them: with 8192 sums (L1, 4 KB runs) dX of the
                         # 4096 x 8192 layer at batch 8 ran 1.2x slower on 1 worker and 1.3x on 2, and
                         # 2 KB runs 1.3x and 1.8x slower than that
    THIN_RUN = 1024      # the fewest output rows a chunk of the transposed thin kernel gets (4 KB runs of A)
    THIN_RUN_SHORT = 256 # ... or this few, when fewer than one chunk per thread would have THIN_RUN rows
    SUM_PAD = 64         # bytes from the sums' row stride to a multiple of 4 KB (see _matmul_thin)
    THIN_ROWS = 8        # rows of A per transposed thin call (running sums loaded and stored once per call;
                         # 32 rows at once read 32 short runs side by side and ran 2x slower)
    THIN_ROWS_WIDE = 32  # ... for 16 or more columns, whose sums cost more to load and store: at 32
                         # columns 8 rows ran 1.3x slower than 32 (24 and 40 no faster), at 16
                         # columns 1.0-1.1x
    RANK_N = 256         # products of depth 2..RANK_K this wide or wider take the rank-k update: the SGD
                         # step's G X^T into the 4096 x 8192 and 2048 x 4096 layers ran 1.32-1.38x faster
                         # at a batch of 8 (1-2 workers), 1.09-1.24x at 4, 1.06-1.14x at 2, and
                         # 0.95-1.07x at 1 (which keeps the register tile)


def register_tile():
    """The SIMD width this build's kernels use and the float register tile it gives:
    {"vector_bytes": 64 (AVX-512), 32 (AVX) or 16, "rows": MR, "float_columns": NR}."""
    return {"vector_bytes": VEC_BYTES, "rows": MR, "float_columns": NR_F32}


cdef inline Py_ssize_t _nr(const floating* x) noexcept nogil:
    """Columns of the register tile: two SIMD vectors of x's type (a compile-time constant)."""
    if floating is float:
        return NR_F32
    else:
        return NR_F64


cdef inline void _store_tile(const floating* acc, Py_ssize_t tile_cols, floating* c, Py_ssize_t ldc,
                             Py_ssize_t mr, Py_ssize_t nr, floating alpha, floating beta) noexcept nogil:
    """c[:mr, :nr] = beta * c + alpha * the register tile's sums (only the part that
    exists at an edge); c is not read when beta is 0. With alpha = beta = 1 this is
    exactly c + sums, so the scales cost nothing to the plain product."""
    cdef Py_ssize_t i, j
    for i in range(mr):
        if beta == 0:
            for j in range(nr):
                c[i * ldc + j] = alpha * acc[i * tile_cols + j]
        else:
            for j in range(nr):
                c[i * ldc + j] = beta * c[i * ldc + j] + alpha * acc[i * tile_cols + j]


cdef inline void _micro_tile(Py_ssize_t kc, const floating* a, Py_ssize_t sai, Py_ssize_t sap,
                             const floating* bp, floating* c, Py_ssize_t ldc,
                             Py_ssize_t mr, Py_ssize_t nr, floating alpha, floating beta) noexcept nogil:
    """c[:mr, :nr] = beta * c + alpha * a[:MR, :kc] @ bp[:kc, :NR]: the micro-kernel.

    The MR x NR sums live in registers for the whole k loop: per step p it loads
    two vectors of B, broadcasts MR values of A and issues 2 * MR FMAs. It is the
    vector-type C tile (MOCRO_TILE) for every type and CPU: given the same plain
    loops, GCC vectorized them across rows with shuffles and spills (2-5 GFLOP/s for
    double, and for float without AVX-512), or with half-width vectors where its
    tuning prefers them (Intel AVX-512 CPUs). The vector type fixes the width."""
    cdef floating acc[MR * NR_F32]
    if floating is float:
        mocro_wide_tile_f32(kc, a, sai, sap, bp, acc)
    else:
        mocro_wide_tile_f64(kc, a, sai, sap, bp, acc)
    _store_tile(acc, _nr(a), c, ldc, mr, nr, alpha, beta)


cdef inline void _micro_tile_narrow(Py_ssize_t kc, const floating* a, Py_ssize_t sai, Py_ssize_t sap,
                                    const floating* bp, floating* c, Py_ssize_t ldc,
                                    Py_ssize_t mr, Py_ssize_t nr, floating alpha, floating beta) noexcept nogil:
    """The same with the narrow MR x NR/2 tile (one SIMD vector), for n <= NR/2: on a
    batch of 8 the wide tile leaves three quarters of its lanes idle, this one half."""
    cdef floating acc[MR * HALF_NR_F32]
    if floating is float:
        mocro_narrow_tile_f32(kc, a, sai, sap, bp, acc)
    else:
        mocro_narrow_tile_f64(kc, a, sai, sap, bp, acc)
    _store_tile(acc, _nr(a) // 2, c, ldc, mr, nr, alpha, beta)


cdef inline void _pack_b(const floating* b, Py_ssize_t sbp, Py_ssize_t sbj, Py_ssize_t kc,
                         Py_ssize_t nr, Py_ssize_t NR, floating* bp) noexcept nogil:
    """Copy a kc x nr block of op(B) into a contiguous kc x NR strip (NR: the tile's
    width), zero-padded. The transpose is handled here, by reading along whichever
    index is contiguous."""
    cdef Py_ssize_t p, j
    if sbj == 1:   # rows of op(B) are contiguous
        for p in range(kc):
            for j in range(nr):
                bp[p * NR + j] = b[p * sbp + j]
            for j in range(nr, NR):
                bp[p * NR + j] = 0
    else:          # op(B) = B.T: its columns are contiguous rows of B
        for j in range(nr):
            for p in range(kc):
                bp[p * NR + j] = b[j * sbj + p]
        for j in range(nr, NR):
            for p in range(kc):
                bp[p * NR + j] = 0


cdef inline void _pack_a(const floating* a, Py_ssize_t sai, Py_ssize_t sap, Py_ssize_t kc,
                         Py_ssize_t mr, floating* ap) noexcept nogil:
    """Copy an mr x kc panel of op(A) into ap[p * MR + i], zero-padded to MR rows, so the
    micro-kernel reads A as one contiguous stream whatever the transpose."""
    cdef Py_ssize_t p, i
    if sap == 1:   # rows of op(A) are contiguous
        for i in range(mr):
            for p in range(kc):
                ap[p * MR + i] = a[i * sai + p]
    else:          # op(A) = A.T: each step p reads mr contiguous values
        for p in range(kc):
            for i in range(mr):
                ap[p * MR + i] = a[i + p * sap]
    for i in range(mr, MR):
        for p in range(kc):
            ap[p * MR + i] = 0


cdef inline void _block(bint narrow, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t s0, Py_ssize_t s1,
                        Py_ssize_t m, Py_ssize_t n, Py_ssize_t kc, const floating* a, Py_ssize_t sai,
                        Py_ssize_t sap, const floating* bp, floating* c, floating alpha,
                        floating beta) noexcept nogil:
    """Rows r0..r1-1 x strips s0..s1-1 of the output, for one k-block (bp = its packed B):
    c = beta * c + alpha * the block's sums (beta is 1 after a product's first k-block)."""
    cdef floating a_pack[MR * KC_MAX]
    cdef Py_ssize_t NR = _nr(a) // 2 if narrow else _nr(a), i0, mr, s, j0
    cdef const floating* panel
    cdef Py_ssize_t panel_i, panel_p
    # Packing the A panel costs one pass over it; it pays when the panel is reused
    # by several strips (and pads the last, partial row tile) and its rows lie far
    # apart. When B is a single strip (batch-sized products), A is streamed once and
    # read in place; so are rows at most PACK_A_ABOVE bytes apart (see the enum).
    cdef bint pack = s1 - s0 > 1 and (sap != 1 or sai * sizeof(floating) > PACK_A_ABOVE)
    i0 = r0
    while i0 < r1:
        mr = min(<Py_ssize_t>MR, m - i0)
        if pack or mr < MR:
            _pack_a(a + i0 * sai, sai, sap, kc, mr, a_pack)
            panel, panel_i, panel_p = a_pack, 1, MR
        else:
            panel, panel_i, panel_p = a + i0 * sai, sai, sap
        for s in range(s0, s1):
            j0 = s * NR
            if s + 1 < s1 and mr == MR:   # the next strip's C tile, while this one computes
                mocro_prefetch_rows(c + i0 * n + j0 + NR, n * sizeof(floating), <int>MR,
                                    <int>((NR * sizeof(floating) + 63) // 64))
            if narrow:
                _micro_tile_narrow(kc, panel, panel_i, panel_p, bp + s * kc * NR, c + i0 * n + j0, n,
                                   mr, min(NR, n - j0), alpha, beta)
            else:
                _micro_tile(kc, panel, panel_i, panel_p, bp + s * kc * NR, c + i0 * n + j0, n,
                            mr, min(NR, n - j0), alpha, beta)
        i0 += MR


cdef int _matmul_split_k(bint narrow, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t kc_max,
                         Py_ssize_t n_strips, const floating* a, Py_ssize_t sai, Py_ssize_t sap,
                         const floating* b, Py_ssize_t sbp, Py_ssize_t sbj, floating* c, floating alpha,
                         floating beta, int workers) noexcept nogil:
    """matmul for a small output and a deep k (W^T G of a first layer: 64 x 32 from k = 8192):
    the k-blocks, not the few output tiles, are shared among the threads. Block b's sums
    go to its own m x n buffer, exactly as the plain loop's register tiles would hold
    them; the buffers are then added to c in block order, the order the plain loop adds
    them in, so the result is bit-identical to it. Returns -1 (nothing done) when the
    workspace would pass SPLIT_K_BYTES or cannot be allocated."""
    cdef Py_ssize_t NR = _nr(a) // 2 if narrow else _nr(a)
    cdef Py_ssize_t n_blocks = (k + kc_max - 1) // kc_max, packed = n_strips * kc_max * NR
    cdef Py_ssize_t blk, pc, kc, s, i, j, lo, hi, size = m * n
    cdef int chunk, n_threads = threads_for(workers)
    cdef floating* partial
    cdef floating* bp
    cdef floating total
    if n_blocks * (size + packed) * sizeof(floating) > SPLIT_K_BYTES:
        return -1
    partial = <floating*>malloc(n_blocks * (size + packed) * sizeof(floating))
    if partial == NULL:
        return -1
    for blk in prange(n_blocks, nogil=True, num_threads=n_threads, schedule='static'):
        pc = blk * kc_max
        kc = min(kc_max, k - pc)
        bp = partial + n_blocks * size + blk * packed
        for s in range(n_strips):
            _pack_b(b + pc * sbp + s * NR * sbj, sbp, sbj, kc, min(NR, n - s * NR), NR, bp + s * kc * NR)
        _block(narrow, 0, m, 0, n_strips, m, n, kc, a + pc * sap, sai, sap, bp, partial + blk * size, 1, 0)
    for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
        lo = (size * chunk) // workers
        hi = (size * (chunk + 1)) // workers
        for i in range(lo, hi):
            total = beta * c[i] + alpha * partial[i] if beta != 0 else alpha * partial[i]
            for blk in range(1, n_blocks):
                total = total + alpha * partial[blk * size + i]
            c[i] = total
    free(partial)
    return 0


cdef inline void _thin_dot(Py_ssize_t J, Py_ssize_t k, const floating* a, Py_ssize_t lda,
                           const floating* bt, floating* sums) noexcept nogil:
    """One thin_dot call: DOT_ROWS(J) rows x J columns."""
    if floating is float:
        mocro_thin_dot_f32(J, k, a, lda, bt, sums)
    else:
        mocro_thin_dot_f64(J, k, a, lda, bt, sums)


cdef inline void _thin_axpy(Py_ssize_t J, Py_ssize_t w, Py_ssize_t ldt, Py_ssize_t rows, const floating* a,
                            Py_ssize_t lda, const floating* b, floating* t) noexcept nogil:
    """One thin_axpy call for J = 1, 4, 8, 16 or 32 columns."""
    if floating is float:
        mocro_thin_axpy_f32(J, w, ldt, rows, a, lda, b, t)
    else:
        mocro_thin_axpy_f64(J, w, ldt, rows, a, lda, b, t)


cdef int _matmul_thin(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, bint trans_a,
                      const floating* b, Py_ssize_t sbp, Py_ssize_t sbj, floating* c, floating alpha,
                      floating beta, int workers) noexcept nogil:
    """matmul for n <= THIN columns (matrix-vector work; n <= 8 with DOT8) when op(A) = A
    and k is deep enough (THIN_DOT_K4, THIN_DOT_K8; any k for a vector), or
    n <= THIN_T (THIN_T_DEEP if deep and tall) when op(A) = A^T, rows of the output
    cut into ``workers`` chunks or more (pieces_for), fewer for small outputs (see
    below). op(B) is copied into a zero-padded buffer of J columns (1 for a vector,
    else 4, 8, 16, 20, 24, 28 or 32; k x J, or transposed to J x k for the dot products); each
    output element is one sum in an order fixed by the shape. Returns -1 (out
    untouched) when the buffers cannot be allocated."""
    # columns of sums: n <= 32 padded to 1, 4, 8, 16, or (transposed) the next multiple of 4
    cdef Py_ssize_t J = 1 if n == 1 else 4 if n <= 4 else 8 if n <= 8 else 16 if n <= 16 else (n + 3) // 4 * 4
    cdef Py_ssize_t R = DOT_ROWS(J)
    # A chunk gets at least a row group (dot products) or THIN_RUN rows (transposed:
    # fewer would read A in short, scattered runs), so 256 workers on a small output
    # make fewer, longer chunks. Transposed, chunks beyond one per thread are cut only
    # down to the longest runs (THIN_SUMS / J rows): 64 workers on 2 threads cut dX of
    # the 4096 x 8192 layer at batch 8 into 8 chunks of 4 KB runs instead of 2 of 16 KB,
    # and ran it 11% slower than 2 workers. The chunks are handed out on demand
    # (pieces_for): at 32 columns the longest runs are 1024 rows, so dX of that layer
    # is 8 of them, and a thread on a slowed core takes fewer. Where THIN_RUN rows a
    # chunk would leave threads idle, chunks get as few as THIN_RUN_SHORT: on 16 cores
    # dX of the 2048 x 4096 layer at batch 32 ran as 4 chunks (295 GFLOP/s from 4
    # threads up to 16, half of NumPy's).
    # the longest run of A's rows a transposed chunk takes at once, in whole vectors
    cdef Py_ssize_t run = THIN_SUMS // J // 16 * 16
    cdef Py_ssize_t threads = threads_for(workers)
    cdef Py_ssize_t least = THIN_RUN if m >= threads * THIN_RUN else max(THIN_RUN_SHORT, m // threads)
    cdef Py_ssize_t most = min(m // least, max(threads, (m + run - 1) // run)) if trans_a else m // R
    cdef int chunks = pieces_for(workers, most, <double>m * n * k)
    # per chunk: R x J dot products, or J running sums for each of up to `run` rows
    cdef Py_ssize_t rows = min(run, (m + chunks - 1) // chunks) if trans_a else R
    cdef Py_ssize_t per_call = THIN_ROWS if J < 16 else THIN_ROWS_WIDE   # rows of A per transposed call
    # The J rows of running sums lie ldt apart, a cache line past their length: at a
    # stride of a multiple of 4 KB (as rows usually is) every row of sums would fall in
    # the same L1 set as every row of A being read, more lines than the set holds.
    cdef Py_ssize_t ldt = rows + SUM_PAD // sizeof(floating)
    cdef floating* bt = <floating*>malloc((J * k + chunks * J * ldt) * sizeof(floating))
    cdef floating* t
    cdef Py_ssize_t i, j, p, r, lo, hi, i0, w, group
    cdef int chunk, n_threads = threads_for(min(chunks, workers))
    if bt == NULL:
        return -1
    # op(B)[p, j] for j < J (0 past n): at bt[p * J + j] when row p scales A's row p
    # (transposed), at bt[j * k + p] when column j is dotted with A's rows
    cdef Py_ssize_t sp = J if trans_a else 1, sj = 1 if trans_a else k
    for p in range(k):
        for j in range(J):
            bt[p * sp + j * sj] = b[p * sbp + j * sbj] if j < n else 0
    # Dot products: chunks of whole groups of R rows, so only the last chunk has rows left
    # over (each costs a whole call: 256 chunks of 16 rows made fwd2 at batch 8 10% slower).
    cdef Py_ssize_t unit = 1 if trans_a else R, units = (m + unit - 1) // unit
    for chunk in prange(chunks, nogil=True, num_threads=n_threads, schedule='dynamic'):
        lo = min(m, (units * chunk) // chunks * unit)
        hi = min(m, (units * (chunk + 1)) // chunks * unit)
        t = bt + J * k + chunk * J * ldt
        if not trans_a:   # output rows i..i+R-1: A's rows (contiguous) dotted with each column
            i = lo
            while i < hi:
                # R rows at once; the last few rows one by one (row distance 0: R copies of it)
                group = R if hi - i >= R else 1
                _thin_dot(J, k, a + i * k, k if group == R else 0, bt, t)
                for r in range(group):
                    for j in range(n):
                        c[(i + r) * n + j] = beta * c[(i + r) * n + j] + alpha * t[r * J + j] if beta != 0 \
                            else alpha * t[r * J + j]
                i = i + group
        else:             # output rows i0..i0+w-1 (columns of A): A's rows, 8 at a time, in order
            i0 = lo
            while i0 < hi:
                w = min(rows, hi - i0)
                for i in range(J * ldt):
                    t[i] = 0
                p = 0
                while p < k:
                    r = min(per_call, k - p)
                    _thin_axpy(J, w, ldt, r, a + p * m + i0, m, bt + p * J, t)
                    p = p + r
                for i in range(w):
                    for j in range(n):
                        c[(i0 + i) * n + j] = beta * c[(i0 + i) * n + j] + alpha * t[j * ldt + i] \
                            if beta != 0 else alpha * t[j * ldt + i]
                i0 = i0 + w
    free(bt)
    return 0


cdef inline void _rank_rows(bint four, Py_ssize_t n, const floating* a, const floating* bt, floating* c,
                            floating alpha, floating beta) noexcept nogil:
    """One rank-k update call: 4 rows of c (four) or 1."""
    if floating is float:
        if four:
            mocro_rank4_f32(n, a, bt, c, n, alpha, beta)
        else:
            mocro_rank1_f32(n, a, bt, c, n, alpha, beta)
    else:
        if four:
            mocro_rank4_f64(n, a, bt, c, n, alpha, beta)
        else:
            mocro_rank1_f64(n, a, bt, c, n, alpha, beta)


cdef int _matmul_rank(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t sai,
                      Py_ssize_t sap, const floating* b, Py_ssize_t sbp, Py_ssize_t sbj, floating* c,
                      floating alpha, floating beta, int workers) noexcept nogil:
    """matmul for a shallow product (k <= RANK_K) into rows at least RANK_N long: op(A)
    and op(B) are copied, zero-padded to depth RANK_K, and the output is swept in groups
    of 4 whole rows (mocro_rank*), handed out on demand (pieces_for). Each output element
    is one sum in the order p = 0..k-1 whatever the cut. Returns -1 (out untouched) when
    the buffers cannot be allocated."""
    cdef floating* bt = <floating*>malloc(RANK_K * (n + m) * sizeof(floating))
    cdef floating* ap = bt + RANK_K * n
    cdef Py_ssize_t groups = (m + 3) // 4, p, j, i, g, lo, hi
    cdef int chunk, pieces = pieces_for(workers, groups, <double>m * n * k), n_threads = threads_for(workers)
    if bt == NULL:
        return -1
    for p in range(RANK_K):
        for j in range(n):
            bt[p * n + j] = b[p * sbp + j * sbj] if p < k else 0
    for i in range(m):
        for p in range(RANK_K):
            ap[i * RANK_K + p] = a[i * sai + p * sap] if p < k else 0
    for chunk in prange(pieces, nogil=True, num_threads=n_threads, schedule='dynamic'):
        lo = (groups * chunk) // pieces
        hi = (groups * (chunk + 1)) // pieces
        for g in range(lo, hi):
            if 4 * g + 4 <= m:
                _rank_rows(True, n, ap + 4 * g * RANK_K, bt, c + 4 * g * n, alpha, beta)
            else:   # the last rows, one at a time
                for i in range(4 * g, m):
                    _rank_rows(False, n, ap + i * RANK_K, bt, c + i * n, alpha, beta)
    free(bt)
    return 0


cdef int _matmul_one_strip(bint narrow, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t kc_max,
                           const floating* a, Py_ssize_t sai, Py_ssize_t sap, const floating* b,
                           Py_ssize_t sbp, Py_ssize_t sbj, floating* c, floating alpha, floating beta,
                           int workers) noexcept nogil:
    """matmul when op(B) is one strip wide (a batch: n <= NR) and small enough to pack
    whole (ONE_STRIP_BYTES): each row tile runs all its k-blocks before the next tile.

    The general loop runs each k-block over all rows, so it reads every row of A in
    runs of one k-block (4 KB), jumping 32 KB between them on the Bigger layers; here
    each tile reads its rows start to end, in order. The sums and their order are the
    general loop's (k-blocks in order, each added to the tile): bit-identical.

    Not for op(A) = A^T (dX = W^T G): there a tile's rows are 12 columns of W, 48 bytes
    from each of its rows, and the general loop is the one that reads W in order (the
    next tile takes the next 48 bytes of the same rows while they are in cache); with
    one tile through all of k, dX2 at batch 32 took 39 ms instead of 27 on one worker."""
    cdef Py_ssize_t NR = _nr(a) // 2 if narrow else _nr(a)
    cdef Py_ssize_t m_tiles = (m + MR - 1) // MR, pc, kc, tile, lo, hi
    cdef int chunk, n_threads = threads_for(workers), pieces = pieces_for(workers, m_tiles, <double>m * n * k)
    cdef floating* bp = <floating*>malloc(k * NR * sizeof(floating))
    if bp == NULL:
        return -1
    pc = 0
    while pc < k:   # k-block by k-block, as the general loop packs them: kc x NR at bp + pc * NR
        kc = min(kc_max, k - pc)
        _pack_b(b + pc * sbp, sbp, sbj, kc, n, NR, bp + pc * NR)
        pc += kc
    for chunk in prange(pieces, nogil=True, num_threads=n_threads, schedule='dynamic'):
        lo = (m_tiles * chunk) // pieces
        hi = (m_tiles * (chunk + 1)) // pieces
        for tile in range(lo, hi):
            pc = 0
            while pc < k:
                kc = min(kc_max, k - pc)
                _block(narrow, tile * MR, min(tile * MR + MR, m), 0, 1, m, n, kc, a + pc * sap, sai, sap,
                       bp + pc * NR, c, alpha, beta if pc == 0 else 1)
                pc = pc + kc
    free(bp)
    return 0


cdef int matmul(const floating[:, ::1] a, bint trans_a, const floating[:, ::1] b, bint trans_b,
                floating[:, ::1] out, double alpha, double beta, int workers) noexcept nogil:
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    # op(a)[i, p] = pa[i * sai + p * sap]; op(b)[p, j] = pb[p * sbp + j * sbj]
    cdef Py_ssize_t sai = 1 if trans_a else k, sap = m if trans_a else 1
    cdef Py_ssize_t sbp = 1 if trans_b else n, sbj = k if trans_b else 1
    # narrow: n fits half a wide tile (a batch of up to 16 floats): the MR x NR/2 tile
    cdef bint narrow = n <= _nr(&out[0, 0]) // 2
    cdef Py_ssize_t NR = _nr(&out[0, 0]) // 2 if narrow else _nr(&out[0, 0])
    cdef Py_ssize_t n_strips, m_tiles, kc_max, strips_per_group, g0, g1, pc, kc, s, lo, hi
    cdef int chunk, pieces, n_threads = threads_for(workers)
    cdef bint split_rows, thin
    cdef floating alpha_f = <floating>alpha, beta_f = <floating>beta, beta_block
    cdef floating* bp
    if m == 0 or n == 0:
        return 0
    if k == 0:   # an empty sum: out = beta * out
        if beta == 0:
            fill(0.0, out, workers)
        elif beta != 1:
            scale(beta, out, workers)
        return 0
    if trans_a:   # W^T G: running sums down the rows of A (see the enum for the limits)
        thin = n <= THIN_T or (n <= THIN_T_DEEP and k >= THIN_DEEP_K and m >= THIN_DEEP_M)
    else:         # dot products along the rows of A, deep enough to pay for their last sums
        thin = n == 1 or (n <= THIN and k >= THIN_DOT_K4) or (DOT8 and n <= 8 and k >= THIN_DOT_K8)
    if thin:
        return _matmul_thin(m, n, k, &a[0, 0], trans_a, &b[0, 0], sbp, sbj, &out[0, 0], alpha_f, beta_f, workers)
    if 2 <= k <= RANK_K and n >= RANK_N:
        if _matmul_rank(m, n, k, &a[0, 0], sai, sap, &b[0, 0], sbp, sbj, &out[0, 0], alpha_f, beta_f,
                        workers) == 0:
            return 0
    n_strips = (n + NR - 1) // NR
    m_tiles = (m + MR - 1) // MR
    # Blocking depends on the shape only (never on workers): see the enum above.
    kc_max = (KC_THIN_BYTES if n_strips == 1 else KC_BYTES) // sizeof(floating)
    # A group is as many strips as fill NC_BYTES at the k-block's real depth: a shallow
    # product (dW = G X^T of a batch of 8) writes C in rows of 8192 floats, not 512
    # (2 KB runs 32 KB apart left memory idle: its dW ran 1.25x slower on 1 and 2 workers).
    strips_per_group = max(1, NC_BYTES // (min(k, kc_max) * NR * sizeof(floating)))
    # Cut rows into the `workers` chunks, in whole tiles, when each thread gets several
    # row tiles: a chunk then writes whole rows (a block of dW = G X^T, 256 x 8192 at
    # batch 8, ran 1.3x faster on 2 workers than with its strips cut, 1.5x on 256).
    # Otherwise cut the dimension with more tiles, so every thread gets an equal share.
    split_rows = m_tiles >= n_strips or m_tiles >= 4 * n_threads
    # A few output tiles and several k-blocks: share the k-blocks instead (split-k).
    if n_threads > 1 and k > kc_max and m_tiles * n_strips < 4 * n_threads:
        if _matmul_split_k(narrow, m, n, k, kc_max, n_strips, &a[0, 0], sai, sap, &b[0, 0], sbp, sbj,
                           &out[0, 0], alpha_f, beta_f, workers) == 0:
            return 0
    if n_strips == 1 and not trans_a and k * NR * sizeof(floating) <= ONE_STRIP_BYTES:
        return _matmul_one_strip(narrow, m, n, k, kc_max, &a[0, 0], sai, sap, &b[0, 0], sbp, sbj,
                                 &out[0, 0], alpha_f, beta_f, workers)
    bp = <floating*>malloc(n_strips * min(k, kc_max) * NR * sizeof(floating))
    if bp == NULL:
        return -1
    pc = 0
    while pc < k:   # k-blocks in a fixed order: the summation order never depends on workers
        kc = min(kc_max, k - pc)
        beta_block = beta_f if pc == 0 else 1
        for s in prange(n_strips, nogil=True, num_threads=n_threads, schedule='static'):
            _pack_b(&b[0, 0] + pc * sbp + s * NR * sbj, sbp, sbj, kc,
                    min(NR, n - s * NR), NR, bp + s * kc * NR)
        if split_rows:
            # one group of strips at a time (it stays in L2), its row tiles handed out as pieces
            pieces = pieces_for(workers, m_tiles, <double>m * n * k)
            g0 = 0
            while g0 < n_strips:
                g1 = min(g0 + strips_per_group, n_strips)
                for chunk in prange(pieces, nogil=True, num_threads=n_threads, schedule='dynamic'):
                    lo = (m_tiles * chunk) // pieces
                    hi = (m_tiles * (chunk + 1)) // pieces
                    _block(narrow, lo * MR, min(hi * MR, m), g0, g1, m, n, kc, &a[0, 0] + pc * sap,
                           sai, sap, bp, &out[0, 0], alpha_f, beta_block)
                g0 = g1
        else:
            # the strips cut into chunks; each chunk runs all rows over its strips
            for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
                lo = (n_strips * chunk) // workers
                hi = (n_strips * (chunk + 1)) // workers
                while lo < hi:
                    g1 = min(lo + strips_per_group, hi)
                    _block(narrow, 0, m, lo, g1, m, n, kc, &a[0, 0] + pc * sap, sai, sap,
                           bp, &out[0, 0], alpha_f, beta_block)
                    lo = g1
        pc += kc
    free(bp)
    return 0


# ---------------------------------------------------------- element-wise

cdef inline void _binary_run(int op, const floating* a, bint a_full, const floating* b, bint b_full,
                             floating* out, Py_ssize_t n) noexcept nogil:
    """out[:n] = a op b over a run where each operand is either full or one repeated value."""
    cdef Py_ssize_t j
    cdef floating av = a[0], bv = b[0]
    if a_full and b_full:
        for j in range(n):
            out[j] = _apply_binary(op, a[j], b[j])
    elif a_full:
        for j in range(n):
            out[j] = _apply_binary(op, a[j], bv)
    elif b_full:
        for j in range(n):
            out[j] = _apply_binary(op, av, b[j])
    else:
        for j in range(n):
            out[j] = _apply_binary(op, av, bv)


cdef void binary(int op, const floating[:, ::1] a, const floating[:, ::1] b,
                 floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t rows = out.shape[0], cols = out.shape[1], size = rows * cols, i, lo, hi
    cdef bint a_rows = a.shape[0] > 1, a_cols = a.shape[1] > 1
    cdef bint b_rows = b.shape[0] > 1, b_cols = b.shape[1] > 1
    cdef int chunk, n_threads = threads_for(workers)
    if size == 0:
        return
    cdef bint a_whole = a.shape[0] == rows and a.shape[1] == cols
    cdef bint b_whole = b.shape[0] == rows and b.shape[1] == cols
    if (a_whole or a.shape[0] * a.shape[1] == 1) and (b_whole or b.shape[0] * b.shape[1] == 1):
        # each operand is whole or a single value: the matrix is one run of `size` elements
        for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
            lo = (size * chunk) // workers
            hi = (size * (chunk + 1)) // workers
            if hi > lo:
                _binary_run(op, &a[0, 0] + (lo if a_whole else 0), a_whole,
                            &b[0, 0] + (lo if b_whole else 0), b_whole,
                            &out[0, 0] + lo, hi - lo)
    else:
        for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
            lo = (rows * chunk) // workers
            hi = (rows * (chunk + 1)) // workers
            for i in range(lo, hi):
                _binary_run(op, &a[i * a_rows, 0], a_cols, &b[i * b_rows, 0], b_cols,
                            &out[i, 0], cols)


cdef inline void _unary_run(int op, const floating* x, floating s, floating* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    if op == ADD_SCALAR:
        for j in range(n):
            out[j] = x[j] + s
    elif op == MUL_SCALAR:
        for j in range(n):
            out[j] = x[j] * s
    elif op == POW_SCALAR:
        if s == 2:
            for j in range(n):
                out[j] = x[j] * x[j]
        else:
            for j in range(n):
                out[j] = powf(x[j], s) if floating is float else pow(x[j], s)
    elif op == RDIV_SCALAR:
        for j in range(n):
            out[j] = s / x[j]
    elif op == NEG:
        for j in range(n):
            out[j] = -x[j]
    elif op == EXP:
        if floating is float:
            mocro_exp_f32(x, out, n)
        else:
            mocro_exp_f64(x, out, n)
    elif op == LOG:
        for j in range(n):
            out[j] = logf(x[j]) if floating is float else log(x[j])
    elif op == RELU:
        for j in range(n):
            out[j] = 0 if x[j] < 0 else x[j]   # NaN stays NaN
    else:  # RELU_MASK
        for j in range(n):
            out[j] = 1 if x[j] > 0 else 0


cdef void unary(int op, const floating[:, ::1] x, double scalar,
                floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t size = x.shape[0] * x.shape[1], lo, hi
    cdef int chunk
    if size == 0:
        return
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (size * chunk) // workers
        hi = (size * (chunk + 1)) // workers
        if hi > lo:
            _unary_run(op, &x[0, 0] + lo, <floating>scalar, &out[0, 0] + lo, hi - lo)


cdef inline void _relu_grad_run(const floating* x, const floating* g, floating* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = g[j] if x[j] > 0 else 0


cdef void relu_grad(const floating[:, ::1] x, const floating[:, ::1] g,
                    floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t size = x.shape[0] * x.shape[1], lo, hi
    cdef int chunk
    if size == 0:
        return
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (size * chunk) // workers
        hi = (size * (chunk + 1)) // workers
        if hi > lo:
            _relu_grad_run(&x[0, 0] + lo, &g[0, 0] + lo, &out[0, 0] + lo, hi - lo)


# ------------------------------------------------------------ reductions

cdef inline double _reduce_run(int op, const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum (in double, LANES independent partial sums, vectorizable) or max of x[:n]."""
    cdef double part[LANES]
    cdef double total
    cdef Py_ssize_t j, l, body = n - n % LANES
    if op == MAX:
        total = -INFINITY
        for j in range(n):
            total = _max_nan(total, x[j])
        return total
    for l in range(LANES):
        part[l] = 0.0
    for j in range(body // LANES):
        for l in range(LANES):
            part[l] += x[j * LANES + l]
    total = 0.0
    for l in range(LANES):
        total += part[l]
    for j in range(body, n):
        total += x[j]
    return total


cdef enum:
    COLUMN_BLOCK = 2048  # columns reduced together: their double partials (16 KB) live on the stack.
                         # 256 (1 KB runs of each row, 16 KB apart) left the hardware's prefetcher
                         # behind: a 4096 x 4096 float sum down the columns streamed 4.4 GB/s on 1
                         # worker and 8.7 on 2 (NumPy 10); 2048: 8.4 and 15.9
    COLUMN_RUN = 256     # the fewest columns a chunk gets (so 64 workers on 4096 columns make 16 chunks)
    COLUMN_PREFETCH_BELOW = 4096  # runs shorter than this (bytes) ask for the run COLUMN_AHEAD
    COLUMN_AHEAD = 2048           # bytes of runs ahead (rows): 1.14-1.58x faster on 1-2 KB runs
                                  # (64 workers, or 2 on 1024 columns); 8 KB runs 0.85-0.88x, so not there


cdef inline void _column_reduce(int op, const floating* x, Py_ssize_t rows, Py_ssize_t cols,
                                Py_ssize_t lo, Py_ssize_t hi, floating* out) noexcept nogil:
    """out[lo:hi] = reduction down the columns lo..hi-1, one row at a time (contiguous),
    COLUMN_BLOCK columns at a time with double partials on this thread's stack; a short
    run asks for the run COLUMN_AHEAD bytes of runs further down first."""
    cdef double acc[COLUMN_BLOCK]
    cdef Py_ssize_t i, j, start = lo, stop, run, ahead
    while start < hi:
        stop = min(start + <Py_ssize_t>COLUMN_BLOCK, hi)
        run = (stop - start) * sizeof(floating)   # bytes read from each row
        ahead = max(1, COLUMN_AHEAD // run) if run < COLUMN_PREFETCH_BELOW else 0   # rows
        for j in range(start, stop):
            acc[j - start] = 0.0 if op == SUM else -INFINITY
        for i in range(rows):
            if ahead and i + ahead < rows:
                mocro_prefetch_run(x + (i + ahead) * cols + start, run)
            if op == SUM:
                for j in range(start, stop):
                    acc[j - start] += x[i * cols + j]
            else:
                for j in range(start, stop):
                    acc[j - start] = _max_nan(acc[j - start], x[i * cols + j])
        for j in range(start, stop):
            out[j] = <floating>acc[j - start]
        start = stop


cdef inline int _column_chunks(Py_ssize_t cols, int workers) noexcept nogil:
    """Chunks for a reduction down the columns: ``workers``, or fewer so that each gets
    COLUMN_RUN columns at least. Every chunk reads each row's run of its columns, so
    256 workers on 4096 columns would read 64-byte runs (16 columns) from every row:
    2.4x slower than 2 workers' 8 KB runs."""
    cdef Py_ssize_t most = cols // COLUMN_RUN
    return workers if workers <= most else <int>max(1, most)


cdef void reduce(int op, int axis, const floating[:, ::1] x,
                 floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], i, lo, hi
    cdef int chunk, chunks, n_threads = threads_for(workers)
    cdef double* acc
    cdef double total
    if axis == 0:
        chunks = _column_chunks(cols, workers)
        for chunk in prange(chunks, nogil=True, num_threads=threads_for(chunks), schedule='static'):
            lo = (cols * chunk) // chunks
            hi = (cols * (chunk + 1)) // chunks
            _column_reduce(op, &x[0, 0], rows, cols, lo, hi, &out[0, 0])
        return
    if axis == 1:
        for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
            lo = (rows * chunk) // workers
            hi = (rows * (chunk + 1)) // workers
            for i in range(lo, hi):
                out[i, 0] = <floating>_reduce_run(op, &x[i, 0], cols)
        return
    # ALL: one partial per row (in parallel), combined in row order, so the
    # result does not depend on the number of workers.
    acc = <double*>malloc(rows * sizeof(double)) if rows > 0 else NULL
    if acc == NULL:
        out[0, 0] = <floating>_reduce_run(op, &x[0, 0], rows * cols) if rows * cols > 0 else \
            (0 if op == SUM else -INFINITY)
        return
    for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
        lo = (rows * chunk) // workers
        hi = (rows * (chunk + 1)) // workers
        for i in range(lo, hi):
            acc[i] = _reduce_run(op, &x[i, 0], cols)
    total = 0.0 if op == SUM else -INFINITY
    for i in range(rows):
        total = total + acc[i] if op == SUM else _max_nan(total, acc[i])
    free(acc)
    out[0, 0] = <floating>total


cdef void argmax(int axis, const floating[:, ::1] x, Py_ssize_t[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], i, j, lo, hi, best
    cdef int chunk, chunks, n_threads = threads_for(workers)
    if axis == 0:
        chunks = _column_chunks(cols, workers)
        for chunk in prange(chunks, nogil=True, num_threads=threads_for(chunks), schedule='static'):
            lo = (cols * chunk) // chunks
            hi = (cols * (chunk + 1)) // chunks
            for j in range(lo, hi):
                out[0, j] = 0
            for i in range(1, rows):
                for j in range(lo, hi):
                    if _argmax_beats(x[i, j], x[out[0, j], j]):
                        out[0, j] = i
    else:
        for chunk in prange(workers, nogil=True, num_threads=n_threads, schedule='static'):
            lo = (rows * chunk) // workers
            hi = (rows * (chunk + 1)) // workers
            for i in range(lo, hi):
                best = 0
                for j in range(1, cols):
                    if _argmax_beats(x[i, j], x[i, best]):
                        best = j
                out[i, 0] = best


cdef inline void _log_softmax_vector(const floating* x, const floating* g, Py_ssize_t n, Py_ssize_t stride,
                                     floating* out) noexcept nogil:
    """log_softmax of one vector x[0], x[stride], ... (g == NULL), or, with g, its backward
    where x holds the forward output y: out = g - exp(y) * sum(g)."""
    cdef Py_ssize_t i
    cdef double top = -INFINITY, total = 0.0, shift
    if g != NULL:
        for i in range(n):
            total += g[i * stride]
        for i in range(n):
            out[i * stride] = <floating>(g[i * stride] - exp(x[i * stride]) * total)
        return
    for i in range(n):
        top = _max_nan(top, x[i * stride])
    for i in range(n):
        total += exp(x[i * stride] - top)
    shift = log(total)   # subtracted after top: top + log(total) would round log(total) away
    for i in range(n):
        out[i * stride] = <floating>((x[i * stride] - top) - shift)


cdef void _log_softmax_all(int axis, const floating[:, ::1] x, const floating* g,
                           floating[:, ::1] out, int workers) noexcept nogil:
    # The vectors are the columns (axis 0) or the rows (axis 1); each is one chunk's work.
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], v, lo, hi
    cdef Py_ssize_t n_vectors = cols if axis == 0 else rows
    cdef Py_ssize_t length = rows if axis == 0 else cols
    cdef Py_ssize_t step = 1 if axis == 0 else cols    # from one vector to the next
    cdef Py_ssize_t stride = cols if axis == 0 else 1  # within a vector
    cdef int chunk
    if rows * cols == 0:
        return
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (n_vectors * chunk) // workers
        hi = (n_vectors * (chunk + 1)) // workers
        for v in range(lo, hi):
            _log_softmax_vector(&x[0, 0] + v * step, (g + v * step) if g != NULL else NULL,
                                length, stride, &out[0, 0] + v * step)


cdef void log_softmax(int axis, const floating[:, ::1] x, floating[:, ::1] out, int workers) noexcept nogil:
    _log_softmax_all(axis, x, NULL, out, workers)


cdef void log_softmax_grad(int axis, const floating[:, ::1] y, const floating[:, ::1] g,
                           floating[:, ::1] out, int workers) noexcept nogil:
    if y.shape[0] * y.shape[1] > 0:
        _log_softmax_all(axis, y, &g[0, 0], out, workers)


# ---------------------------------------------------------------- in place

cdef inline void _update_run(int kind, double alpha, const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    """kind 0: y += alpha x; 1: y *= alpha; 2: y = alpha; 3: y = alpha x."""
    cdef Py_ssize_t j
    cdef floating a = <floating>alpha
    if kind == 0:
        for j in range(n):
            y[j] += a * x[j]
    elif kind == 1:
        for j in range(n):
            y[j] *= a
    elif kind == 2:
        for j in range(n):
            y[j] = a
    else:
        for j in range(n):
            y[j] = a * x[j]


cdef void _update(int kind, double alpha, const floating* x, floating[:, ::1] y, int workers) noexcept nogil:
    cdef Py_ssize_t size = y.shape[0] * y.shape[1], lo, hi
    cdef int chunk
    if size == 0:
        return
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (size * chunk) // workers
        hi = (size * (chunk + 1)) // workers
        if hi > lo:
            _update_run(kind, alpha, (x + lo) if x != NULL else NULL, &y[0, 0] + lo, hi - lo)


cdef void axpy(double alpha, const floating[:, ::1] x, floating[:, ::1] y, int workers) noexcept nogil:
    if y.shape[0] * y.shape[1] > 0:
        _update(0, alpha, &x[0, 0], y, workers)


cdef void scale(double alpha, floating[:, ::1] y, int workers) noexcept nogil:
    _update(1, alpha, NULL, y, workers)


cdef void fill(double value, floating[:, ::1] y, int workers) noexcept nogil:
    _update(2, value, NULL, y, workers)


cdef void copy(double alpha, const floating[:, ::1] x, floating[:, ::1] y, int workers) noexcept nogil:
    if y.shape[0] * y.shape[1] > 0:
        _update(3, alpha, &x[0, 0], y, workers)


cdef inline void _sgd_run(floating* p, const floating* g, floating* v, Py_ssize_t n, bint use_velocity,
                          floating lr, floating momentum, floating weight_decay) noexcept nogil:
    # four loops without branches inside, so each vectorizes
    cdef Py_ssize_t j
    cdef floating d
    if not use_velocity and weight_decay == 0:
        for j in range(n):
            p[j] = p[j] - lr * g[j]
    elif not use_velocity:
        for j in range(n):
            p[j] = p[j] - lr * (g[j] + weight_decay * p[j])
    elif weight_decay == 0:
        for j in range(n):
            v[j] = momentum * v[j] + g[j]
            p[j] = p[j] - lr * v[j]
    else:
        for j in range(n):
            d = g[j] + weight_decay * p[j]
            v[j] = momentum * v[j] + d
            p[j] = p[j] - lr * v[j]


cdef void sgd(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] v, bint use_velocity,
              double lr, double momentum, double weight_decay, int workers) noexcept nogil:
    cdef Py_ssize_t size = p.shape[0] * p.shape[1], lo, hi
    cdef int chunk
    if size == 0:
        return
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (size * chunk) // workers
        hi = (size * (chunk + 1)) // workers
        if hi > lo:
            _sgd_run(&p[0, 0] + lo, &g[0, 0] + lo, &v[0, 0] + lo, hi - lo, use_velocity,
                     <floating>lr, <floating>momentum, <floating>weight_decay)


cdef inline void _adam_run(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                           floating lr, floating beta1, floating beta2, floating eps,
                           floating correction2, floating weight_decay) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating grad
    for j in range(n):
        grad = g[j] + weight_decay * p[j]
        m[j] = beta1 * m[j] + (1 - beta1) * grad
        v[j] = beta2 * v[j] + (1 - beta2) * grad * grad
        p[j] = p[j] - lr * m[j] / (sqrt(v[j] / correction2) + eps)


cdef void adam(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] m, floating[:, ::1] v,
               double lr, double beta1, double beta2, double eps, double correction1, double correction2,
               double weight_decay, int workers) noexcept nogil:
    cdef Py_ssize_t size = p.shape[0] * p.shape[1], lo, hi
    cdef int chunk
    if size == 0:
        return
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (size * chunk) // workers
        hi = (size * (chunk + 1)) // workers
        if hi > lo:
            _adam_run(&p[0, 0] + lo, &g[0, 0] + lo, &m[0, 0] + lo, &v[0, 0] + lo, hi - lo,
                      <floating>(lr / correction1), <floating>beta1, <floating>beta2, <floating>eps,
                      <floating>correction2, <floating>weight_decay)


# ------------------------------------------------------- fused for layers

cdef double sum_squares(const floating[:, ::1] x, int workers) noexcept nogil:
    # One partial per row (in parallel), combined in row order: the same result for any workers.
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], i, j, lo, hi
    cdef double total = 0.0
    cdef double* partial = <double*>malloc(rows * sizeof(double)) if rows > 0 else NULL
    cdef int chunk
    if partial == NULL:  # no memory for the partials: one serial pass
        for i in range(rows):
            total += _sum_squares_run(&x[i, 0], cols)
        return total
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (rows * chunk) // workers
        hi = (rows * (chunk + 1)) // workers
        for i in range(lo, hi):
            partial[i] = _sum_squares_run(&x[i, 0], cols)
    for i in range(rows):
        total += partial[i]
    free(partial)
    return total


cdef inline double _sum_squares_run(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum(x[:n] ** 2) in double with LANES independent partial sums (vectorizable)."""
    cdef double part[LANES]
    cdef double total = 0.0, v
    cdef Py_ssize_t j, l, body = n - n % LANES
    for l in range(LANES):
        part[l] = 0.0
    for j in range(body // LANES):
        for l in range(LANES):
            v = x[j * LANES + l]
            part[l] += v * v
    for l in range(LANES):
        total += part[l]
    for j in range(body, n):
        v = x[j]
        total += v * v
    return total


cdef inline void _bias_relu_rows(floating* out, Py_ssize_t cols, const floating* bias,
                                 Py_ssize_t lo, Py_ssize_t hi, bint relu) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating b, v
    for i in range(lo, hi):
        b = bias[i]
        if relu:
            for j in range(cols):
                v = out[i * cols + j] + b
                out[i * cols + j] = 0 if v < 0 else v
        else:
            for j in range(cols):
                out[i * cols + j] += b


cdef int linear(const floating[:, ::1] w, const floating[:, ::1] x, const floating[:, ::1] bias,
                floating[:, ::1] out, bint relu, int workers) noexcept nogil:
    # The product, then the bias and activation over each block of rows while it is in cache.
    cdef Py_ssize_t rows = out.shape[0], lo, hi
    cdef int chunk
    if matmul(w, False, x, False, out, 1.0, 0.0, workers) != 0:
        return -1
    for chunk in prange(workers, nogil=True, num_threads=threads_for(workers), schedule='static'):
        lo = (rows * chunk) // workers
        hi = (rows * (chunk + 1)) // workers
        _bias_relu_rows(&out[0, 0], out.shape[1], &bias[0, 0], lo, hi, relu)
    return 0
