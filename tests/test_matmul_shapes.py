"""The optimized matmul (and the ladder steps) against NumPy on awkward shapes.

Every transpose combination, float32 and float64, worker counts 1, 2, 3, 7 and
64, accumulate=True (with the scales alpha and beta), and bit-identical results whatever the worker count.
"""
import numpy as np
import pytest

import mocrograd
from mocrograd._core import Matrix

WORKERS = (1, 2, 3, 7, 64)

# (m, k, n): tiny, vectors, primes, one off the tile sizes (MR is 12 or 6, NR 32/16
# or 16/8), deeper than one k-block (256 floats / 128 doubles, 1024 when n <= NR),
# small versions of the network's shapes (n = 32 batch columns), the thin
# kernels' cases (n <= 4, and n <= 16 for op(A) = A^T, n <= 32 if deep and tall),
# batch-wide products deeper than a k-block (B in one strip, packed whole), and
# shallow products into long rows (the rank-k update).
SHAPES = [
    (1, 1, 1), (1, 7, 1), (1, 1, 9), (9, 1, 1), (1, 300, 1),
    (5, 3, 2), (13, 17, 31), (31, 37, 41), (12, 256, 32), (11, 255, 33),
    (25, 300, 70), (3, 1031, 2), (97, 513, 67), (64, 1100, 32), (130, 40, 8),
    (200, 32, 300), (2, 5000, 3),
    # the thin kernels: 1, 2-4, 5-8, 9-16 and 17-32 columns, rows past their row groups and blocks;
    # dot products of 2-8 columns need depth (128 for 2-4, 384 for 5-8): shallower ones take the tile
    (4500, 20, 1), (37, 9, 4), (600, 50, 13), (301, 70, 6), (11, 17, 16), (1600, 30, 8), (9000, 10, 1),
    (2100, 7, 3), (4500, 20, 10), (2050, 1030, 29), (37, 130, 4), (2100, 129, 3), (301, 400, 6),
    (1600, 385, 8), (53, 127, 2),
    # 17-28 columns of op(A) = A^T padded to 20, 24 and 28 running sums (26: Bigger's batch of 26)
    (2049, 1024, 17), (2050, 1030, 22), (2100, 1031, 26),
    # one strip of B packed whole, several k-blocks per row tile: narrow and wide tiles, an edge tile
    (301, 2100, 9), (25, 1500, 20), (130, 1300, 32),
    # the rank-k update (depth 2-8, rows of 256 or more): padded depths, leftover rows, a vector tail
    (37, 5, 300), (6, 8, 1001), (3, 2, 257),
    # more strips than row tiles but several row tiles per thread: the rows are cut
    (100, 40, 600),
    # more strips than one group of packed B holds (2 MB: 64 float or 128 double strips
    # at full k-block depth): two groups, with the strips cut and with the rows cut
    (13, 260, 2100), (100, 260, 2100),
]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _operands(m, k, n, ta, tb, dtype, seed=0):
    rng = _rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def _reference(a, b, ta, tb):
    return (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)


def _tol(dtype, k):
    # error of a k-term dot product of standard normals grows about like sqrt(k)
    eps = np.finfo(dtype).eps
    return 8 * eps * max(k, 1) ** 0.5 * 4


def _matmul(a, b, ta, tb, workers, out=None, accumulate=False, alpha=1.0, beta=1.0):
    mocrograd.set_backend("optimized", workers=workers, grain=1)
    try:
        return np.asarray(Matrix(a).matmul(Matrix(b), trans_a=ta, trans_b=tb, out=out,
                                           accumulate=accumulate, alpha=alpha, beta=beta)).copy()
    finally:
        mocrograd.set_backend("dynamic")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matches_numpy_and_is_bit_identical(m, k, n, ta, tb, dtype):
    a, b = _operands(m, k, n, ta, tb, dtype)
    ref = _reference(a, b, ta, tb)
    results = [_matmul(a, b, ta, tb, w) for w in WORKERS]
    tol = _tol(dtype, k)
    np.testing.assert_allclose(results[0], ref, rtol=tol, atol=tol * np.abs(ref).max())
    for w, r in zip(WORKERS[1:], results[1:]):
        assert r.dtype == dtype
        assert np.array_equal(r, results[0]), f"workers={w} differs from workers=1"


# Every path of the kernel adds into out its own way: the general loop, split-k
# (64 x 1100 x 32 on 2+ workers), one strip packed whole, the thin kernels, rows cut,
# the rank-k update (37 x 5 x 300).
ACCUMULATE_SHAPES = [(1, 1, 1), (13, 300, 45), (40, 1030, 32), (64, 1100, 32), (301, 2100, 9),
                     (600, 50, 13), (37, 9, 4), (4500, 20, 1), (100, 40, 600), (37, 5, 300)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (-0.3, 0.7)], ids=["plain", "scaled"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,k,n", ACCUMULATE_SHAPES)
def test_accumulate(m, k, n, ta, tb, alpha, beta, dtype):
    """out = alpha * product + beta * out (an SGD step with a factored gradient)."""
    a, b = _operands(m, k, n, ta, tb, dtype, seed=1)
    start = _rng(2).standard_normal((m, n)).astype(dtype)
    ref = beta * start.astype(np.float64) + alpha * _reference(a, b, ta, tb)
    results = []
    for w in WORKERS:
        out = Matrix(start.copy())
        _matmul(a, b, ta, tb, w, out=out, accumulate=True, alpha=alpha, beta=beta)
        results.append(np.asarray(out).copy())
    tol = _tol(dtype, k)
    np.testing.assert_allclose(results[0], ref, rtol=tol, atol=tol * np.abs(ref).max())
    for r in results[1:]:
        assert np.array_equal(r, results[0])


# Scaled-down network shapes (batch 32): forward W @ X, backward W^T G and G X^T.
NETWORK = [
    ((512, 64), (64, 32), False, False),
    ((256, 1024), (1024, 32), False, False),
    ((256, 1024), (256, 32), True, False),
    ((256, 32), (1024, 32), False, True),
    ((2048, 64), (2048, 32), True, False),   # a first layer's W^T G: 64 x 32 from k = 2048 (split-k)
    ((300, 300), (300, 300), False, False),
    ((96, 8), (700, 8), False, True),        # a block of rows of a factored G X^T (rows cut)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb,ta,tb", NETWORK)
def test_network_shapes(sa, sb, ta, tb, dtype):
    rng = _rng(3)
    a = rng.standard_normal(sa).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)
    ref = _reference(a, b, ta, tb)
    k = sa[0] if ta else sa[1]
    results = [_matmul(a, b, ta, tb, w) for w in WORKERS + (256,)]
    tol = _tol(dtype, k)
    np.testing.assert_allclose(results[0], ref, rtol=tol, atol=tol * np.abs(ref).max())
    for r in results[1:]:
        assert np.array_equal(r, results[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_k_too_deep_for_its_workspace_takes_the_plain_loop(dtype):
    """A 12 x 32 output from k = 140,000: split-k would need more than its 16 MB
    workspace in float64 (not in float32); either way the result is the plain loop's."""
    a, b = _operands(12, 140_000, 32, True, False, dtype, seed=5)
    ref = _reference(a, b, True, False)
    results = [_matmul(a, b, True, False, w) for w in (1, 2, 7)]
    tol = _tol(dtype, 140_000)
    np.testing.assert_allclose(results[0], ref, rtol=tol, atol=tol * np.abs(ref).max())
    for r in results[1:]:
        assert np.array_equal(r, results[0])


def test_non_finite_values_propagate():
    a = np.ones((20, 40), np.float32)
    a[3, 7] = np.nan
    a[15, 2] = np.inf
    b = np.ones((40, 50), np.float32)
    for w in (1, 2, 7):
        r = _matmul(a, b, False, False, w)
        assert np.isnan(r[3]).all() and np.isinf(r[15]).all()
        assert np.isfinite(np.delete(r, [3, 15], axis=0)).all()


try:
    from mocrograd._core import ladder as _ladder
except ImportError:  # the ladder module is optional (benchmarking only)
    _ladder = None


@pytest.mark.skipif(_ladder is None, reason="no ladder module")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("step", range(1, 9))
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (13, 17, 31), (97, 300, 67), (40, 1100, 32)])
def test_ladder_steps(step, m, k, n, dtype):
    a, b = _operands(m, k, n, False, False, dtype, seed=4)
    ref = _reference(a, b, False, False)
    tol = _tol(dtype, k)
    for w in (1, 2, 3):
        out = np.full((m, n), np.nan, dtype)
        _ladder.ladder_matmul(step, a, b, out, w)
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())
