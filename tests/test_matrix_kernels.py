"""Every kernel, in every variant and worker count, against NumPy.

The ``backend`` fixture (conftest.py) runs each test under naive, and under
optimized and dynamic with 1, 2, 3 and 7 workers; ``dtype`` under float32 and
float64. NumPy is the oracle, evaluated in float64 on the very same
(dtype-rounded) inputs.

Kernels that perform one IEEE operation per element (+ - * /, negation, relu,
max, argmax, fill, copy) must match NumPy bit for bit. Everything else is
checked against an element-wise error bound that each test derives, in a
comment, from eps and the number of operations behind an element.

The last section checks that optimized and dynamic give bit-identical results
for every worker count, as the kernels promise.
"""
import itertools
import operator
from types import SimpleNamespace

import numpy as np
import pytest

import mocrograd
from mocrograd import Matrix

EPS64 = np.finfo(np.float64).eps

# Awkward shapes: one element, one row, one column, primes, one past a tile or
# a 16-lane vector, and a larger prime-sided one that every worker count cuts
# into uneven chunks, and a wide one whose column reductions get several chunks
# of at least 256 columns. (dynamic adds workers only for much more work: see the
# bit-identity section at the end.)
# (5, 4500): a reduction down the columns takes blocks of 2048 columns, the last one short
SHAPES = [(1, 1), (1, 13), (13, 1), (13, 31), (9, 33), (17, 65), (131, 509), (7, 1031), (5, 4500)]
SHAPE_IDS = [f"{r}x{c}" for r, c in SHAPES]

# (m, k, n) of op(A) @ op(B). With AVX-512 the float32 register tile is 12 x 32; a
# k-block is 256 deep, or 1024 when B is a single strip (n <= 32: batch-sized products).
MATMUL_SHAPES = [
    (1, 1, 1), (1, 13, 1), (1, 1, 13), (13, 1, 1),
    (7, 13, 31), (13, 31, 7), (33, 64, 9),
    (8, 256, 32),      # exactly one tile and one k-block
    (9, 257, 33),      # one past a tile in every dimension
    (17, 300, 65),
    (257, 513, 129),   # large: 33 x 5 tiles, three k-blocks, the last one 1 deep
    (50, 1100, 8),     # a batch of 8: four full row tiles and a 2-row edge, two deep k-blocks
    (53, 400, 6),      # thin dot products of 5-8 columns: 10 groups of 5 rows and 3 rows alone
    (29, 130, 3),      # ... and of 2-4 columns: 7 groups of 4 rows and 1 alone (AMD: 3 of 8 and 5)
    (53, 300, 6),      # the same, too shallow for them: the narrow register tile
    (29, 70, 3),
    (100, 70, 16),     # half a tile wide
    (61, 40, 17),      # one column more
]

OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


def eps(dtype):
    return np.finfo(dtype).eps


def signed(rng, shape, dtype, low=0.5, high=2.0):
    """Values of either sign with low <= |x| < high: safe divisors, no cancellation to zero."""
    return (rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def f64(x):
    return np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------ matmul

def matmul_bound(a64, b64, c64, dtype):
    """Allowed |error| of op(A) @ op(B) + C computed in ``dtype``, element-wise.

    Summing k products in floating point, in any order and blocking, is off by at
    most gamma_{k+1} * (|A| @ |B| + |C|) with gamma_j = j u / (1 - j u), u = eps / 2
    (Higham, Accuracy and Stability of Numerical Algorithms, section 3.1); the +1
    is the addition into C. For float64 the NumPy oracle carries an error of the
    same bound, for float32 (oracle in float64) a negligible one. So
    2 gamma_{k+1} ~ (k + 1) eps covers both; we allow twice that. A wrong or
    missing tile or k-block is off by O(|A| @ |B|), far outside the bound.
    """
    k = a64.shape[1]
    return 2 * (k + 1) * eps(dtype) * (np.abs(a64) @ np.abs(b64) + np.abs(c64))


TRANSPOSES = list(itertools.product([False, True], repeat=2))
TRANSPOSE_IDS = ["NN", "TN", "NT", "TT"]


def operands(rng, m, k, n, trans_a, trans_b, dtype):
    """a and b such that op(a) is m x k and op(b) k x n, and op(a), op(b) in float64."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b, f64(a.T if trans_a else a), f64(b.T if trans_b else b)


@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES, ids=TRANSPOSE_IDS)
@pytest.mark.parametrize("m,k,n", MATMUL_SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in MATMUL_SHAPES])
def test_matmul_matches_numpy(backend, dtype, m, k, n, trans_a, trans_b, rng, assert_within):
    a, b, a64, b64 = operands(rng, m, k, n, trans_a, trans_b, dtype)
    result = Matrix(a).matmul(Matrix(b), trans_a=trans_a, trans_b=trans_b)
    assert result.shape == (m, n) and result.dtype == dtype
    assert_within(result, a64 @ b64, matmul_bound(a64, b64, 0, dtype))


# (accumulate, alpha, beta): out = alpha * product (+ beta * out when accumulating)
INTO_OUT = {"overwrite": (False, 1.0, 1.0), "accumulate": (True, 1.0, 1.0),
            "scaled": (False, -1.7, 1.0), "scaled_accumulate": (True, -0.3, 0.7), "beta_0": (True, 0.6, 0.0)}


@pytest.mark.parametrize("mode", INTO_OUT)
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES, ids=TRANSPOSE_IDS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (9, 257, 33), (17, 300, 65)], ids=["1x1x1", "9x257x33", "17x300x65"])
def test_matmul_into_out(backend, dtype, m, k, n, trans_a, trans_b, mode, rng, assert_within):
    accumulate, alpha, beta = INTO_OUT[mode]
    a, b, a64, b64 = operands(rng, m, k, n, trans_a, trans_b, dtype)
    # Unless out's old values count, out starts as NaN: every element must be overwritten.
    reads_out = accumulate and beta != 0
    c = rng.standard_normal((m, n)).astype(dtype) if reads_out else np.full((m, n), np.nan, dtype)
    out = Matrix(c.copy())
    result = Matrix(a).matmul(Matrix(b), trans_a=trans_a, trans_b=trans_b, out=out, accumulate=accumulate,
                              alpha=alpha, beta=beta)
    assert result is out
    c64 = beta * f64(c) if reads_out else np.zeros((m, n))
    assert_within(out, c64 + alpha * a64 @ b64, matmul_bound(alpha * a64, b64, c64, dtype))


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
@pytest.mark.parametrize("m,k,n", MATMUL_SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in MATMUL_SHAPES])
def test_linear_is_matmul_plus_bias_then_relu(backend, dtype, m, k, n, relu, rng, assert_within):
    w, x = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal((m, 1)).astype(dtype)
    got = Matrix(w).linear(Matrix(x), Matrix(bias), relu=relu)
    w64, x64, b64 = f64(w), f64(x), np.broadcast_to(f64(bias), (m, n))
    exact = w64 @ x64 + b64
    # The bias is one more addition: matmul's bound with C = bias. relu (max(v, 0))
    # only shrinks the difference; exactly-zero outputs appear where exact <= 0.
    assert_within(got, np.maximum(exact, 0) if relu else exact, matmul_bound(w64, x64, b64, dtype))


def test_matmul_operator_is_the_plain_product(backend, dtype, rng):
    a, b = Matrix(rng.standard_normal((9, 257)), dtype), Matrix(rng.standard_normal((257, 33)), dtype)
    np.testing.assert_array_equal((a @ b).numpy(), a.matmul(b).numpy())


# ------------------------------------------------------- element-wise, binary

BROADCAST_KINDS = ["full", "col", "row", "one"]


def operand_shape(kind, rows, cols):
    return {"full": (rows, cols), "col": (rows, 1), "row": (1, cols), "one": (1, 1)}[kind]


# + - * / each make one correctly rounded operation per element: the results
# must equal NumPy's bit for bit.

@pytest.mark.parametrize("rows,cols", [(7, 13), (131, 509)], ids=["7x13", "131x509"])
@pytest.mark.parametrize("left,right", list(itertools.product(BROADCAST_KINDS, repeat=2)),
                         ids=[f"{l}-{r}" for l, r in itertools.product(BROADCAST_KINDS, repeat=2)])
def test_broadcasting_equals_numpy_exactly(backend, dtype, left, right, rows, cols, rng):
    a = signed(rng, operand_shape(left, rows, cols), dtype)
    b = signed(rng, operand_shape(right, rows, cols), dtype)
    x, y = Matrix(a), Matrix(b)
    for name, op in OPS.items():
        got, expected = op(x, y), op(a, b)
        assert got.shape == expected.shape and got.dtype == dtype, name
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_binary_on_awkward_shapes_equals_numpy_exactly(backend, dtype, shape, rng):
    a, b = signed(rng, shape, dtype), signed(rng, shape, dtype)
    for name, op in OPS.items():
        np.testing.assert_array_equal(op(Matrix(a), Matrix(b)).numpy(), op(a, b), err_msg=name)


@pytest.mark.parametrize("number", [2.5, -3, 0.1], ids=["2.5", "-3", "0.1"])
def test_number_on_either_side_equals_numpy_exactly(backend, dtype, number, rng):
    # A number becomes a value of the matrix's dtype (0.1 is rounded to float32 first).
    a = signed(rng, (13, 31), dtype)
    s = dtype(number)
    for name, op in OPS.items():
        right, left = op(Matrix(a), number), op(number, Matrix(a))
        assert isinstance(right, Matrix) and isinstance(left, Matrix), name
        assert right.dtype == left.dtype == dtype, name
        np.testing.assert_array_equal(right.numpy(), op(a, s), err_msg=f"matrix {name} number")
        np.testing.assert_array_equal(left.numpy(), op(s, a), err_msg=f"number {name} matrix")


def test_a_power_takes_the_exponent_in_the_matrix_dtype(backend):
    """2.0000001 is 2 in float32 (as NumPy rounds it): negative bases square, not NaN,
    on every backend."""
    x = np.array([[-2.0, -1.0, 3.0]], np.float32)
    np.testing.assert_array_equal((Matrix(x) ** 2.0000001).numpy(), x ** 2.0000001)
    np.testing.assert_array_equal((Matrix(x) ** 2.0000001).numpy(), x * x)


# -------------------------------------------------------- element-wise, unary

def with_zeros(rng, shape, dtype):
    """Normal values with about a quarter set to exactly 0 (relu's edge)."""
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.25] = 0
    return x


EXACT_UNARY = {  # name: (mocrograd, NumPy)
    "neg": (operator.neg, np.negative),
    "relu": (Matrix.relu, lambda x: np.maximum(x, 0).astype(x.dtype)),
    "relu_mask": (Matrix.relu_mask, lambda x: (x > 0).astype(x.dtype)),
}


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_exact_unary_equals_numpy(backend, dtype, shape, rng):
    x = with_zeros(rng, shape, dtype)
    for name, (ours, theirs) in EXACT_UNARY.items():
        got = ours(Matrix(x))
        assert got.dtype == dtype, name
        np.testing.assert_array_equal(got.numpy(), theirs(x), err_msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_relu_grad_passes_grad_where_input_is_positive(backend, dtype, shape, rng):
    x, g = with_zeros(rng, shape, dtype), rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(Matrix(x).relu_grad(Matrix(g)).numpy(), np.where(x > 0, g, 0))


TRANSCENDENTAL = {  # name: (mocrograd, NumPy in float64, input sampler)
    "exp": (Matrix.exp, np.exp, lambda rng, s: rng.uniform(-20, 20, s)),
    "log": (Matrix.log, np.log, lambda rng, s: np.exp(rng.uniform(-7, 7, s))),
    "square": (lambda m: m ** 2, np.square, lambda rng, s: rng.standard_normal(s)),
    "cube": (lambda m: m ** 3, lambda x: x ** 3, lambda rng, s: rng.standard_normal(s)),
    "sqrt": (lambda m: m ** 0.5, np.sqrt, lambda rng, s: rng.uniform(0, 100, s)),
    "pow-1.5": (lambda m: m ** -1.5, lambda x: x ** -1.5, lambda rng, s: rng.uniform(0.1, 10, s)),
}


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_exp_log_pow_within_a_few_ulp(backend, dtype, shape, rng, assert_within):
    # glibc's exp/log/pow (which the kernels call, in float or double; the optimized
    # exps are vector polynomials, within 1.01 ulp) are accurate to about 1 ulp,
    # NumPy's float64 versions too: 4 ulp, i.e. 4 eps |exact|, bounds their difference
    # with room to spare.
    for name, (ours, exact, sample) in TRANSCENDENTAL.items():
        x = sample(rng, shape).astype(dtype)
        got = ours(Matrix(x))
        assert got.dtype == dtype, name
        expected = exact(f64(x))
        assert_within(got, expected, 4 * eps(dtype) * np.abs(expected), name)


EXP_EDGES = [-np.inf, -1e30, -800.0, -746.0, -745.2, -745.1, -708.4, -200.0, -104.0, -103.9, -100.0, -90.0,
             -87.5, -87.0, -1e-30, -0.0, 0.0, 1e-30, 50.0, 88.5, 88.72, 88.8, 100.0, 709.0, 709.78, 709.79,
             710.0, 1e30, np.inf, np.nan]
# where results turn subnormal or 0, and where they overflow, for each type
EXP_RANGES = {np.float32: [(-104.5, -86.0), (88.0, 89.5)], np.float64: [(-746.5, -706.0), (708.0, 710.5)]}


def test_exp_at_the_edges_of_the_float_range(backend, dtype, rng):
    # inf, 0, NaN and subnormal results as exp gives them: the vector exps build 2^n in
    # two halves and clamp x (floats to [-104, 89], doubles to [-746, 710]); within 4
    # ulp, or 2 of the smallest subnormals where the result is subnormal
    (low, high), (over, past) = EXP_RANGES[dtype]
    x = np.concatenate([EXP_EDGES, rng.uniform(low, high, 257), rng.uniform(over, past, 37)])
    x = x.astype(dtype).reshape(1, -1)
    got = Matrix(x).exp().numpy()
    with np.errstate(over="ignore"):
        exact = np.exp(f64(x))
        rounded = exact.astype(dtype)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(rounded))
    finite = np.isfinite(rounded)
    tiny = np.finfo(dtype).smallest_subnormal
    assert np.all(np.abs(f64(got[finite]) - exact[finite])
                  <= 4 * eps(dtype) * exact[finite] + 2 * tiny)


def test_exp_of_a_value_does_not_depend_on_its_place_in_a_run(backend, dtype, rng):
    # the vector exp pads a run's tail to a whole vector: the same value, the same result
    x = rng.uniform(-30, 30, (3, 37)).astype(dtype)
    whole = Matrix(x).exp().numpy()
    alone = np.array([[Matrix(x[i:i + 1, j:j + 1]).exp().numpy()[0, 0] for j in range(37)] for i in range(3)])
    np.testing.assert_array_equal(whole, alone)


# ------------------------------------------------------------- reductions

AXES = [None, 0, 1]
AXIS_IDS = ["all", "axis0", "axis1"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sum_matches_numpy(backend, dtype, shape, rng, assert_within):
    # The kernels add in float64 (error <= n u64 sum|x| for n terms, in any order),
    # the oracle too, then round once to dtype (<= u |sum| <= u sum|x|), so
    # (eps + 2 n eps64) * sum|x| bounds the difference.
    x = rng.standard_normal(shape).astype(dtype)
    for axis in AXES:
        got = Matrix(x).sum(axis)
        n = x.size if axis is None else shape[axis]
        magnitude = np.abs(f64(x)).sum(axis=axis, keepdims=True)
        assert got.dtype == dtype
        assert_within(got, f64(x).sum(axis=axis, keepdims=True), (eps(dtype) + 2 * n * EPS64) * magnitude,
                      f"sum(axis={axis})")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sum_squares_matches_numpy(backend, dtype, shape, rng):
    # Squares of dtype values are exact in float64 (float32) or round once (float64);
    # summing n of them in float64 is off by <= n u64 sum(x^2), in the oracle too.
    x = rng.standard_normal(shape).astype(dtype)
    got = Matrix(x).sum_squares()
    assert isinstance(got, float)
    exact = np.sum(f64(x) ** 2)
    assert abs(got - exact) <= 2 * (x.size + 1) * EPS64 * exact


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_max_equals_numpy(backend, dtype, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    for axis in AXES:
        got = Matrix(x).max(axis)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.numpy(), x.max(axis=axis, keepdims=True), err_msg=f"axis={axis}")


@pytest.mark.parametrize("where", [(0, 0), (6, 200), (130, 508)], ids=["first", "middle", "last"])
def test_max_propagates_nan(backend, dtype, where, rng):
    x = rng.standard_normal((131, 509)).astype(dtype)
    x[where] = np.nan
    for axis in AXES:
        got = Matrix(x).max(axis).numpy()
        assert np.isnan(got).sum() == 1, f"axis={axis}"
        np.testing.assert_array_equal(got, x.max(axis=axis, keepdims=True), err_msg=f"axis={axis}")


def test_max_of_infinities(backend, dtype):
    x = np.full((7, 13), -np.inf, dtype=dtype)
    x[3, 4] = np.inf
    for axis in AXES:
        np.testing.assert_array_equal(Matrix(x).max(axis).numpy(), x.max(axis=axis, keepdims=True),
                                      err_msg=f"axis={axis}")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_argmax_takes_the_first_of_tied_maxima(backend, dtype, shape, rng):
    x = rng.integers(0, 3, shape).astype(dtype)   # three distinct values: ties everywhere
    for axis in (0, 1):
        got = Matrix(x).argmax(axis)
        assert got.dtype == np.intp
        np.testing.assert_array_equal(got, np.argmax(x, axis=axis, keepdims=True),   # NumPy: first index
                                      err_msg=f"axis={axis}")


@pytest.mark.parametrize("where", [(0, 0), (6, 200), (130, 508)], ids=["first", "middle", "last"])
def test_argmax_points_at_the_first_nan_as_numpy_does(backend, dtype, where, rng):
    x = rng.standard_normal((131, 509)).astype(dtype)
    x[where] = np.nan
    x[(where[0] + 1) % 131, (where[1] + 1) % 509] = np.nan   # a second NaN, later in both axes
    for axis in (0, 1):
        np.testing.assert_array_equal(Matrix(x).argmax(axis), np.argmax(x, axis=axis, keepdims=True),
                                      err_msg=f"axis={axis}")


def test_relu_keeps_nan_and_infinities(backend, dtype):
    x = np.array([[np.nan, -np.inf, np.inf, -1.0, 0.0, 2.0]], dtype=dtype)
    np.testing.assert_array_equal(Matrix(x).relu().numpy(), np.maximum(x, 0))
    b = np.zeros((1, 1), dtype=dtype)
    np.testing.assert_array_equal(Matrix(np.ones((1, 1), dtype)).linear(Matrix(x), Matrix(b), relu=True).numpy(),
                                  np.maximum(x, 0))


def test_argmax_tie_example(backend):
    m = Matrix([[1, 3, 3],
                [3, 1, 3]])
    assert m.argmax(1).tolist() == [[1], [0]]
    assert m.argmax(0).tolist() == [[1, 0, 0]]


# ------------------------------------------------------------ log_softmax

def log_softmax_oracle(x64, axis):
    """(x - max - log(sum(exp(x - max))), max): the stable formula in float64."""
    top = x64.max(axis=axis, keepdims=True)
    return x64 - top - np.log(np.exp(x64 - top).sum(axis=axis, keepdims=True)), top


@pytest.mark.parametrize("offset", [1e12, -1e17], ids=["plus1e12", "minus1e17"])
def test_log_softmax_keeps_its_precision_on_huge_inputs(backend, dtype, offset, rng, assert_within):
    """x - top is exact near a huge top (in float32 the values even round to one), and
    log(total) is subtracted after it, not added to top first, where it would be lost:
    equal inputs give -log(n), not 0."""
    x = (offset + 3 * rng.standard_normal((5, 7))).astype(dtype)
    for axis in (0, 1):
        got = Matrix(x).log_softmax(axis)
        expected, _ = log_softmax_oracle(f64(x), axis)
        n = x.shape[axis]
        assert_within(got, expected, eps(dtype) * np.abs(expected) + 8 * EPS64 * (n + 1), f"axis={axis}")


@pytest.mark.parametrize("offset", [0.0, 1000.0, -1000.0], ids=["centered", "plus1000", "minus1000"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_log_softmax_is_stable_and_matches_numpy(backend, dtype, shape, offset, rng, assert_within):
    # Around +-1000, exp(x) overflows or underflows: only the max-shifted formula works.
    x = (offset + 3 * rng.standard_normal(shape)).astype(dtype)
    for axis in (0, 1):
        got = Matrix(x).log_softmax(axis)
        expected, top = log_softmax_oracle(f64(x), axis)
        assert np.isfinite(got.numpy()).all(), f"axis={axis}"
        # Computed in float64, then rounded once to dtype (<= u |result|). In float64,
        # x - top - log(total) cancels: each step is off by <= u times its operands
        # (|x|, |top|), and log(total) by about n u for a sum of n exponentials.
        n = shape[axis]
        bound = eps(dtype) * np.abs(expected) + 8 * EPS64 * (np.abs(f64(x)) + np.abs(top) + n + 1)
        assert_within(got, expected, bound, f"axis={axis}")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_log_softmax_grad_matches_the_formula(backend, dtype, shape, rng, assert_within):
    g = rng.standard_normal(shape).astype(dtype)
    for axis in (0, 1):
        y = log_softmax_oracle(3 * rng.standard_normal(shape), axis)[0].astype(dtype)   # a forward output
        got = Matrix(y).log_softmax_grad(Matrix(g), axis)
        y64, g64 = f64(y), f64(g)
        expected = g64 - np.exp(y64) * g64.sum(axis=axis, keepdims=True)
        # Computed in float64 and rounded once (<= u |result|); before that, the sum of n
        # terms is off by <= n u64 sum|g|, exp(y) and the products by a few u64.
        n = shape[axis]
        scale = np.abs(g64) + np.exp(y64) * np.abs(g64).sum(axis=axis, keepdims=True)
        assert_within(got, expected, eps(dtype) * np.abs(expected) + 4 * (n + 2) * EPS64 * scale,
                      f"axis={axis}")


# --------------------------------------------------------------- in place

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_axpy_adds_a_multiple(backend, dtype, shape, rng, assert_within):
    x, y = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    m = Matrix(y.copy())
    assert m.axpy_(0.1, Matrix(x)) is m
    # alpha * x and the addition round once each (or once, fused), and 0.1 itself
    # may be rounded to dtype first: <= 3 u (|y| + |alpha x|) < 2 eps (...).
    expected = f64(y) + 0.1 * f64(x)
    assert_within(m, expected, 2 * eps(dtype) * (np.abs(f64(y)) + np.abs(0.1 * f64(x))))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_scale_fill_zero_copy_are_exact(backend, dtype, shape, rng):
    x, y = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    m = Matrix(y.copy())
    assert m.scale_(-0.75) is m          # -0.75 is exact in both dtypes: one rounding
    np.testing.assert_array_equal(m.numpy(), y * dtype(-0.75))
    assert m.fill_(0.1) is m
    np.testing.assert_array_equal(m.numpy(), np.full(shape, 0.1, dtype=dtype))
    assert m.zero_() is m
    np.testing.assert_array_equal(m.numpy(), np.zeros(shape, dtype=dtype))
    assert m.copy_(Matrix(x)) is m
    np.testing.assert_array_equal(m.numpy(), x)
    assert m.copy_(Matrix(y), scale=0.3) is m     # one multiplication, rounded once
    np.testing.assert_array_equal(m.numpy(), y * dtype(0.3))


@pytest.mark.parametrize("momentum, weight_decay", [(None, 0.0), (None, 0.01), (0.9, 0.0), (0.9, 0.01)],
                         ids=["plain", "decay", "momentum", "momentum+decay"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sgd_step_matches_the_formula(backend, dtype, shape, momentum, weight_decay, rng, assert_within):
    p, g, v = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    mp, mv = Matrix(p.copy()), Matrix(v.copy())
    velocity = None if momentum is None else mv
    assert mp.sgd_(Matrix(g), 0.1, weight_decay=weight_decay, velocity=velocity, momentum=momentum or 0.0) is mp
    d = f64(g) + weight_decay * f64(p)
    if momentum is not None:
        d = momentum * f64(v) + d
        # velocity: two or three roundings (and the constants' own) of O(1) values
        assert_within(mv, d, 4 * eps(dtype) * (np.abs(f64(v)) + np.abs(f64(g)) + np.abs(f64(p))), "velocity")
    else:
        np.testing.assert_array_equal(mv.numpy(), v)   # no velocity given: nothing else is touched
    # p - lr * d: at most five roundings on terms no larger than |p| + |d|
    assert_within(mp, f64(p) - 0.1 * d, 6 * eps(dtype) * (np.abs(f64(p)) + np.abs(d) + np.abs(f64(g))), "p")


def adam_oracle(p, g, m, v, lr, b1, b2, eps_, c1, c2, wd):
    g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return p - lr / c1 * m / (np.sqrt(v / c2) + eps_), m, v


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_adam_step_matches_the_formula(backend, dtype, shape, rng, assert_within):
    weight_decay = 0.01
    p, g, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    v = rng.uniform(0.5, 1.5, shape).astype(dtype)   # second moments stay away from 0
    hyper = dict(lr=0.01, b1=0.9, b2=0.999, eps_=1e-8, c1=1 - 0.9 ** 3, c2=1 - 0.999 ** 3, wd=weight_decay)
    mp, mm, mv = Matrix(p.copy()), Matrix(m.copy()), Matrix(v.copy())
    assert mp.adam_(Matrix(g), mm, mv, 0.01, 0.9, 0.999, 1e-8, hyper["c1"], hyper["c2"], weight_decay) is mp
    p2, m2, v2 = adam_oracle(*map(f64, (p, g, m, v)), **hyper)
    # About ten operations on O(1) values per element, each rounding by <= u (float32
    # kernels may round lr / c1 and the betas to float32 first): 16 eps covers them,
    # relative to the largest term of each update.
    tol = 16 * eps(dtype)
    assert_within(mm, m2, tol * (np.abs(f64(m)) + np.abs(f64(g)) + 1), "m")
    assert_within(mv, v2, tol * (f64(v) + f64(g) ** 2 + 1), "v")
    assert_within(mp, p2, tol * (np.abs(f64(p)) + 1), "p")


# ----------------------------------------- bit-identical for any worker count

# dynamic gives a kernel a second worker only from 2**20 operations on, and only
# while its contention probe finds the cores idle (on a busy machine it stays on
# one worker, and this test checks little for it); optimized always cuts the
# output into exactly `workers` chunks.
WORKER_COUNTS = (1, 2, 3, 7)
ROWS, COLS = 257, 4099   # over 2**20 elements


def make_inputs(dtype):
    """Large, awkward operands: every worker count splits them differently."""
    rng = np.random.default_rng(99)

    def mat(*shape, low=None):
        x = rng.standard_normal(shape) if low is None else rng.uniform(low, 3, shape)
        return Matrix(x.astype(dtype))

    x = mat(ROWS, COLS)
    return SimpleNamespace(
        x=x, y=mat(ROWS, COLS), col=mat(ROWS, 1), row=mat(1, COLS), positive=mat(ROWS, COLS, low=0.1),
        v=mat(ROWS, COLS, low=0.5), logp0=x.log_softmax(0), logp1=x.log_softmax(1),
        # matmul: 33 x 5 tiles of 8 x 32, three k-blocks of 256, the last one 1 deep
        a=mat(257, 513), b=mat(513, 129), at=mat(513, 257), bt=mat(129, 513), c=mat(257, 129),
        bias=mat(257, 1),
        b6=mat(513, 6), b3=mat(513, 3),   # thin dot products: 257 rows in groups of 5 and of 8
    )


def adam_step(t):
    p, m, v = t.x.copy(), t.y.copy(), t.v.copy()
    p.adam_(t.positive, m, v, 0.01, 0.9, 0.999, 1e-8, 0.271, 0.003, 0.01)
    return np.concatenate([p.numpy(), m.numpy(), v.numpy()])


def sgd_step(t):
    p, v = t.x.copy(), t.v.copy()
    p.sgd_(t.y, 0.01, weight_decay=0.01, velocity=v, momentum=0.9)
    return np.concatenate([p.numpy(), v.numpy()])


KERNELS = {
    "matmul": lambda t: t.a @ t.b,
    "matmul_TN": lambda t: t.at.matmul(t.b, trans_a=True),
    "matmul_NT": lambda t: t.a.matmul(t.bt, trans_b=True),
    "matmul_TT": lambda t: t.at.matmul(t.bt, trans_a=True, trans_b=True),
    "matmul_accumulate": lambda t: t.a.matmul(t.b, out=t.c.copy(), accumulate=True),
    "matmul_thin_6": lambda t: t.a @ t.b6,
    "matmul_thin_3": lambda t: t.a @ t.b3,
    "linear": lambda t: t.a.linear(t.b, t.bias),
    "linear_relu": lambda t: t.a.linear(t.b, t.bias, relu=True),
    "add": lambda t: t.x + t.y,
    "sub_column": lambda t: t.x - t.col,
    "mul_row": lambda t: t.row * t.x,
    "div_number": lambda t: t.x / 3.3,
    "outer_div": lambda t: t.col / t.row,
    "neg": lambda t: -t.x,
    "exp": lambda t: t.x.exp(),
    "log": lambda t: t.positive.log(),
    "pow": lambda t: t.positive ** 1.7,
    "relu": lambda t: t.x.relu(),
    "relu_mask": lambda t: t.x.relu_mask(),
    "relu_grad": lambda t: t.x.relu_grad(t.y),
    "sum": lambda t: t.x.sum(),
    "sum_axis0": lambda t: t.x.sum(0),
    "sum_axis1": lambda t: t.x.sum(1),
    "sum_squares": lambda t: t.x.sum_squares(),
    "max": lambda t: t.x.max(),
    "max_axis0": lambda t: t.x.max(0),
    "max_axis1": lambda t: t.x.max(1),
    "argmax_axis0": lambda t: t.x.argmax(0),
    "argmax_axis1": lambda t: t.x.argmax(1),
    "log_softmax_axis0": lambda t: t.x.log_softmax(0),
    "log_softmax_axis1": lambda t: t.x.log_softmax(1),
    "log_softmax_grad_axis0": lambda t: t.logp0.log_softmax_grad(t.y, 0),
    "log_softmax_grad_axis1": lambda t: t.logp1.log_softmax_grad(t.y, 1),
    "axpy_": lambda t: t.x.copy().axpy_(0.3, t.y),
    "scale_": lambda t: t.x.copy().scale_(0.3),
    "fill_": lambda t: t.x.copy().fill_(0.3),
    "copy_": lambda t: t.x.copy().copy_(t.y),
    "adam_": adam_step,
    "sgd_": sgd_step,
    "sgd_plain": lambda t: t.x.copy().sgd_(t.y, 0.01),
}


def scribble_over_free_memory(nbytes):
    """Allocate, fill with NaN and free a block of nbytes: the allocator tends to hand
    the same block to the next array of that size, so an output element a kernel
    forgot to write shows up as NaN instead of a stale copy of the previous result."""
    np.full(nbytes // 8 + 1, np.nan)


@pytest.fixture(scope="module")
def inputs():
    return {dtype: make_inputs(dtype) for dtype in (np.float32, np.float64)}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", ["optimized", "dynamic"])
def test_results_are_bit_identical_for_any_worker_count(variant, kernel, dtype, inputs):
    results = {}
    for workers in WORKER_COUNTS:
        if results:   # so a result's fresh buffer likely starts as NaN, not as the last result
            scribble_over_free_memory(results[1].nbytes)
        with mocrograd.backend(variant, workers, grain=1):
            results[workers] = np.array(KERNELS[kernel](inputs[dtype]))
    for workers in WORKER_COUNTS[1:]:
        np.testing.assert_array_equal(results[workers], results[1],
                                      err_msg=f"{variant}, {workers} workers vs 1")
        assert results[workers].tobytes() == results[1].tobytes()   # down to the sign of zeros
