"""Fuzzing the public Matrix and Tensor API with hypothesis.

Random shapes (0 and 1 included), dtypes (bool, integers, float16/32/64, complex,
object, strings), memory layouts (transposed, strided, negative strides, Fortran
order, read-only, broadcast views), NaN and infinities, mismatched operands and
wrong Python types. Every call must either return the right answer (checked
against NumPy) or raise one of the documented exceptions:

    TypeError      wrong kind of argument (type, dtype)
    ValueError     wrong value (shape, axis, empty, not broadcastable, out overlaps an input)
    MemoryError    a matrix too large to allocate
    OverflowError  a Python int too large for a C size or a float (Python's own rule)

Anything else (SystemError, IndexError, a crash, a hang, a silently wrong value)
fails. A watchdog turns a hang into a failure with a traceback.

Examples per test: MOCROGRAD_FUZZ_EXAMPLES (default 400, a few thousand in all,
well under a minute); ``python benchmarks/fuzz_long.py`` runs far more.
"""
import faulthandler
import math
import numbers
import operator
import os

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import mocrograd as mg
from mocrograd import Matrix, Tensor

EXAMPLES = int(os.environ.get("MOCROGRAD_FUZZ_EXAMPLES", "400"))
# Derandomized (the same examples every run, no example database) unless MOCROGRAD_FUZZ_SEED is set,
# as benchmarks/fuzz_long.py does together with pytest's --hypothesis-seed.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="MOCROGRAD_FUZZ_SEED" not in os.environ,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
DOCUMENTED = (TypeError, ValueError, MemoryError, OverflowError)
BACKENDS = [("naive", None), ("optimized", 1), ("optimized", 3), ("dynamic", None), ("dynamic", 2)]
FLOATS = (np.float32, np.float64)
ALL_DTYPES = [np.bool_, np.int8, np.uint8, np.int32, np.int64, np.uint64, np.float16, np.float32, np.float64,
              np.complex64, object, "U3"]


@pytest.fixture(autouse=True)
def _watchdog():
    """A test that runs for 10 minutes is hung: dump every thread's stack and exit."""
    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ------------------------------------------------------------------ strategies

def values(dtype, special=True):
    """Elements for an array of dtype; floats include NaN, infinities and extremes when special."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        width = {2: 16, 4: 32, 8: 64}[dtype.itemsize]
        return st.floats(width=width, allow_nan=special, allow_infinity=special) if special else \
            st.floats(-1e3, 1e3, width=width)
    if dtype.kind == "c":
        return st.complex_numbers(max_magnitude=1e3, allow_nan=False, allow_infinity=False, width=64)
    if dtype.kind == "O":
        return st.one_of(st.floats(-10, 10), st.integers(-10, 10), st.none(), st.text(max_size=2), st.just("1.5"))
    if dtype.kind == "U":
        return st.text(st.characters(min_codepoint=1), max_size=3)
    return hnp.from_dtype(dtype)


@st.composite
def layouts(draw, array):
    """The same values in another memory layout: a view that is not plain C order."""
    kind = draw(st.sampled_from(["c", "fortran", "transposed", "strided", "reversed", "readonly", "broadcast"]))
    if kind == "fortran":
        return np.asfortranarray(array)
    if kind == "transposed" and array.ndim == 2:
        return np.ascontiguousarray(array.T).T.copy(order="F").T.T
    if kind == "strided" and array.ndim == 2:
        bigger = np.empty((array.shape[0] * 2, array.shape[1] * 3), dtype=array.dtype)
        view = bigger[::2, ::3]
        view[...] = array
        return view
    if kind == "reversed" and array.ndim == 2:
        flipped = array[::-1, ::-1].copy()
        return flipped[::-1, ::-1]
    if kind == "readonly":
        copy = array.copy()
        copy.setflags(write=False)
        return copy
    if kind == "broadcast" and array.ndim == 2 and array.shape[0] >= 1:
        return np.broadcast_to(array[:1], array.shape) if (array == array[:1]).all() else array
    return array


@st.composite
def any_arrays(draw, max_side=6, dims=(2,)):
    dtype = draw(st.sampled_from(ALL_DTYPES))
    ndim = draw(st.sampled_from(dims))
    shape = tuple(draw(st.integers(0, max_side)) for _ in range(ndim))
    array = draw(hnp.arrays(np.dtype(dtype), shape, elements=values(dtype)))
    return draw(layouts(array)), np.dtype(dtype)


@st.composite
def float_matrices(draw, shape, dtype, special=True, bounded=False):
    """Float arrays in any layout. special: NaN and infinities too; bounded: finite values stay
    within 1e6, so that sums of products cannot overflow (only the specials are special)."""
    if bounded:
        width = 32 if dtype == np.float32 else 64
        elements = st.floats(-1e6, 1e6, width=width)
        if special:
            elements = st.one_of(elements, st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        elements = values(dtype, special)
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(layouts(array))


def backends():
    return st.sampled_from(BACKENDS)


WEIRD = [None, "x", b"1", 1j, [], [[]], {}, set(), object(), np.ones(3), np.ones((2, 2, 2)), 2 ** 80, -1,
         float("nan"), float("inf"), True, np.float16(2), np.int64(3), Tensor(1.0), (1, 2), slice(None)]


def same(got, expected, what="result"):
    """Equal bit for bit, NaN where NumPy has NaN."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype}, expected {expected.dtype}"
    assert np.array_equal(got, expected, equal_nan=True), f"{what}: {got} != {expected}"


def close(got, expected, rtol, atol=0.0, what="result"):
    """Close where finite; identical NaN positions and infinities."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{what}: NaN positions")
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[~finite], expected[~finite], err_msg=f"{what}: infinities")
    np.testing.assert_allclose(got[finite], expected[finite], rtol=rtol, atol=atol, err_msg=what)


def eps(dtype):
    return float(np.finfo(dtype).eps)


# ------------------------------------------------------------------ construction

@FUZZ
@given(drawn=any_arrays(dims=(0, 1, 2, 3)), requested=st.sampled_from([None, np.float32, np.float64, "float64",
                                                                       np.float16, np.int32, "bogus", 3]),
       as_list=st.booleans())
def test_construction_from_any_array(drawn, requested, as_list):
    array, dtype = drawn
    source = array.tolist() if as_list else array
    with np.errstate(all="ignore"):
        try:
            m = Matrix(source, dtype=requested)
        except DOCUMENTED as error:
            outcome = error
        else:
            outcome = m
    if isinstance(outcome, BaseException):
        return   # a documented error; which inputs must succeed is checked below
    # It succeeded: so it must have been a valid request, and the values must be NumPy's.
    assert requested in (None, np.float32, np.float64, "float64")
    assert array.ndim == 2 and array.size > 0, f"accepted shape {array.shape}"
    target = np.dtype(requested) if requested is not None else (
        dtype if dtype in (np.float32, np.float64) and not as_list else np.dtype(np.float32))
    assert m.dtype == target and m.shape == array.shape
    with np.errstate(all="ignore"):
        expected = np.array(array.tolist() if as_list else array, dtype=target)
    same(np.asarray(m), expected, "constructed values")
    assert np.asarray(m).flags.c_contiguous and np.asarray(m).flags.writeable


@FUZZ
@given(drawn=any_arrays(), requested=st.sampled_from([None, np.float32, np.float64]))
def test_valid_numeric_arrays_are_always_accepted(drawn, requested):
    array, dtype = drawn
    numeric = dtype.kind in "biuf"
    with np.errstate(all="ignore"):
        if numeric and array.size:
            m = Matrix(array, dtype=requested)
            target = np.dtype(requested) if requested else (dtype if dtype in (np.float32, np.float64) else
                                                            np.dtype(np.float32))
            same(np.asarray(m), array.astype(target), "values")
        else:
            with pytest.raises(TypeError if not numeric else ValueError):
                Matrix(array, dtype=requested)


@FUZZ
@given(size=st.one_of(st.tuples(st.integers(-3, 5), st.integers(-3, 5)),
                      st.tuples(st.integers(-3, 5), st.sampled_from([2 ** 62, 2 ** 63 - 1, 10 ** 30, -2 ** 62])),
                      st.tuples(st.sampled_from([2 ** 62, 2 ** 63 - 1, 10 ** 30, -2 ** 62]), st.integers(-3, 5)),
                      st.sampled_from([(2 ** 31, 2 ** 31), (2 ** 40, 2 ** 40), (10 ** 12, 10 ** 12)])),
       make=st.sampled_from(["zeros", "full", "rand", "randn"]), dtype=st.sampled_from([None, np.float64]))
def test_constructors_with_any_size(size, make, dtype):
    """Sizes from -3 to 5, and requests no computer can hold (never one that would just be slow:
    8 GB would be allocated and filled)."""
    rows, cols = size
    args = (rows, cols, 1.5) if make == "full" else (rows, cols)
    fits = 1 <= rows <= 5 and 1 <= cols <= 5
    if fits:
        m = getattr(Matrix, make)(*args, dtype=dtype)
        assert m.shape == (rows, cols) and m.dtype == (dtype or np.float32)
        if make in ("zeros", "full"):
            same(np.asarray(m), np.full((rows, cols), 0.0 if make == "zeros" else 1.5, dtype=m.dtype))
    else:
        with pytest.raises((ValueError, MemoryError, OverflowError)):
            getattr(Matrix, make)(*args, dtype=dtype)


def test_absurd_sizes_raise_cleanly():
    for call in (lambda: Matrix.zeros(10 ** 12, 10 ** 12), lambda: Matrix.full(2 ** 40, 2 ** 40, 1),
                 lambda: Matrix.rand(2 ** 40, 2 ** 40), lambda: Matrix.randn(2 ** 62, 2),
                 lambda: Matrix.zeros(2 ** 31, 2 ** 31, dtype=np.float64)):
        with pytest.raises(MemoryError, match="too large"):
            call()
    with pytest.raises((MemoryError, ValueError)):
        Matrix.zeros(2 ** 20, 2 ** 20)          # 4 TiB: representable, but no machine has it
    with pytest.raises(OverflowError):
        Matrix.zeros(10 ** 30, 1)               # not even a C size


# ------------------------------------------------------------------ element-wise

OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


@FUZZ
@given(data=st.data(), backend=backends(), op=st.sampled_from(sorted(OPS)),
       shapes=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
       dtypes=st.sampled_from([(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)]))
def test_binary_operators(data, backend, op, shapes, dtypes):
    r1, c1, r2, c2 = shapes
    a = data.draw(float_matrices((r1, c1), dtypes[0]))
    b = data.draw(float_matrices((r2, c2), dtypes[1]))
    broadcastable = all(x == y or 1 in (x, y) for x, y in ((r1, r2), (c1, c2)))
    with mg.backend(*backend, grain=1), np.errstate(all="ignore"):
        if dtypes[0] != dtypes[1]:
            with pytest.raises(TypeError, match="dtypes differ"):
                OPS[op](Matrix(a), Matrix(b))
        elif not broadcastable:
            with pytest.raises(ValueError, match="cannot be broadcast"):
                OPS[op](Matrix(a), Matrix(b))
        else:
            # one correctly rounded operation per element: bit-identical to NumPy
            same(OPS[op](Matrix(a), Matrix(b)), OPS[op](a, b), op)


@FUZZ
@given(data=st.data(), backend=backends(), op=st.sampled_from(sorted(OPS)), reflected=st.booleans(),
       dtype=st.sampled_from(FLOATS), shape=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       other=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 6, 10 ** 6),
                       st.booleans(), st.sampled_from(WEIRD)))
def test_operators_with_any_python_value(data, backend, op, reflected, dtype, shape, other):
    a = data.draw(float_matrices(shape, dtype))
    m = Matrix(a)
    number = isinstance(other, numbers.Real)
    with mg.backend(*backend, grain=1), np.errstate(all="ignore"):
        call = (lambda: OPS[op](other, m)) if reflected else (lambda: OPS[op](m, other))
        try:
            result = call()
        except DOCUMENTED:
            assert not number or isinstance(other, np.generic), f"{op} refused the number {other!r}"
            return
        if isinstance(result, Matrix):
            assert number, f"{op} accepted {type(other).__name__}"
            scalar = np.array(other, dtype=dtype)          # numbers take the matrix's dtype
            expected = OPS[op](scalar, a) if reflected else OPS[op](a, scalar)
            same(result, expected.astype(dtype), f"{op} with {other!r}")
        elif isinstance(result, np.ndarray):
            # NumPy scalars and arrays on the left convert the Matrix themselves (np.asarray): NumPy's answer
            assert reflected and isinstance(other, (np.ndarray, np.generic)), f"{op} gave an ndarray"
            same(result, OPS[op](other, a))
        else:
            # Tensor's reflected operator: the Matrix becomes a constant of the Tensor's dtype
            assert isinstance(result, Tensor) and isinstance(other, Tensor), f"{op} gave {result!r}"
            t, converted = other.numpy(), a.astype(other.dtype)
            same(result.numpy(), OPS[op](t, converted) if reflected else OPS[op](converted, t))


@FUZZ
@given(data=st.data(), backend=backends(), dtype=st.sampled_from(FLOATS),
       shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       op=st.sampled_from(["neg", "exp", "log", "relu", "relu_mask", "pow"]),
       exponent=st.sampled_from([0, 1, 2, 3, -1, -2, 0.5, 1.5, -0.5, 0.0, 10, float("nan"), float("inf"), 2 ** 70]))
def test_unary_maps(data, backend, dtype, shape, op, exponent):
    a = data.draw(float_matrices(shape, dtype))
    m = Matrix(a)
    with mg.backend(*backend, grain=1), np.errstate(all="ignore"):
        if op == "neg":
            same(-m, -a)
        elif op == "relu":
            same(m.relu(), np.where(a < 0, 0, a).astype(dtype))       # NaN stays NaN, as np.maximum(a, 0)
        elif op == "relu_mask":
            same(m.relu_mask(), (a > 0).astype(dtype))
        elif op == "exp":
            close(m.exp(), np.exp(a.astype(np.float64)).astype(dtype), rtol=8 * eps(dtype))
        elif op == "log":
            close(m.log(), np.log(a.astype(np.float64)).astype(dtype), rtol=8 * eps(dtype), atol=8 * eps(dtype))
        else:
            e = float(exponent)
            expected = np.power(a.astype(np.float64), e)
            if math.isfinite(e) and e > 0 and e != int(e):   # C99 pow(-inf, y) = +inf (NumPy says NaN)
                expected[np.isneginf(a)] = np.inf
            close(m ** exponent, expected.astype(dtype), rtol=16 * eps(dtype), atol=0, what=f"** {exponent}")


@FUZZ
@given(data=st.data(), backend=backends(), dtype=st.sampled_from(FLOATS),
       shape=st.tuples(st.integers(1, 7), st.integers(1, 7)),
       axis=st.sampled_from([None, 0, 1, -1, -2, 2, "0", 1.5, True]),
       op=st.sampled_from(["sum", "max", "argmax", "log_softmax", "log_softmax_grad", "sum_squares"]),
       special=st.booleans())
def test_reductions(data, backend, dtype, shape, axis, op, special):
    a = data.draw(float_matrices(shape, dtype, special=special))
    g = data.draw(float_matrices(shape, dtype, special=False))
    m = Matrix(a)
    valid_axis = axis in (None, 0, 1, -1, -2) and not isinstance(axis, bool)
    needs_axis = op in ("argmax", "log_softmax", "log_softmax_grad")
    with mg.backend(*backend, grain=1), np.errstate(all="ignore"):
        if op == "sum_squares":
            wide = a.astype(np.float64)
            close(m.sum_squares(), np.sum(wide * wide), rtol=a.size * eps(np.float64) * 4)
            return
        if not valid_axis or (needs_axis and axis is None):
            with pytest.raises(ValueError):
                getattr(m, op)(*((Matrix(g),) if op == "log_softmax_grad" else ()), axis)
            return
        ax = None if axis is None else axis % 2
        wide = a.astype(np.float64)
        if op == "sum":
            expected = wide.sum(axis=ax, keepdims=True) if ax is not None else wide.sum().reshape(1, 1)
            magnitude = np.abs(wide).sum(axis=ax, keepdims=True) if ax is not None else np.abs(wide).sum()
            with np.errstate(invalid="ignore"):
                close(m.sum(axis), expected.astype(dtype), rtol=eps(dtype),
                      atol=float(np.nan_to_num(np.max(magnitude), posinf=0)) * 4 * eps(np.float64))
        elif op == "max":
            expected = a.max(axis=ax, keepdims=True) if ax is not None else a.max().reshape(1, 1)
            same(m.max(axis), expected)                           # NaN propagates, as in NumPy
        elif op == "argmax":
            got = m.argmax(axis)
            assert got.shape == ((1, a.shape[1]) if ax == 0 else (a.shape[0], 1))
            assert ((got >= 0) & (got < a.shape[ax])).all()
            lines = a if ax == 1 else a.T
            for line, index in zip(lines, got.ravel()):
                if not np.isnan(line).any():                       # with NaN: any index in range
                    assert index == np.argmax(line)                # the first maximum
        else:
            shifted = wide - wide.max(axis=ax, keepdims=True)
            expected = shifted - np.log(np.exp(shifted).sum(axis=ax, keepdims=True))
            if op == "log_softmax":
                # the kernel subtracts max + log(sum) in float64: an absolute error of a few ulps of the max
                finite = np.abs(np.where(np.isfinite(wide), wide, 0))
                atol = 64 * eps(dtype) + 4 * eps(np.float64) * float(finite.max())
                close(m.log_softmax(axis), expected.astype(dtype), rtol=64 * eps(dtype), atol=atol)
            elif not special:
                y = m.log_softmax(axis)
                yw = np.asarray(y).astype(np.float64)
                gw = g.astype(np.float64)
                grad = gw - np.exp(yw) * gw.sum(axis=ax, keepdims=True)
                scale = np.abs(gw).sum(axis=ax, keepdims=True) + np.abs(gw)
                close(y.log_softmax_grad(Matrix(g), axis), grad.astype(dtype), rtol=0,
                      atol=float(scale.max()) * 16 * eps(dtype) + 1e-30)


# ------------------------------------------------------------------ products

@FUZZ
@given(data=st.data(), backend=backends(), dtype=st.sampled_from(FLOATS), sizes=st.tuples(
    st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
       trans=st.tuples(st.booleans(), st.booleans()), use_out=st.sampled_from(["none", "out", "accumulate",
                                                                                "scaled", "alias"]),
       special=st.booleans())
def test_matmul(data, backend, dtype, sizes, trans, use_out, special):
    m, k, kb, n = sizes
    if data.draw(st.booleans()):
        kb = k                                  # mostly aligned
    ta, tb = trans
    a = data.draw(float_matrices((k, m) if ta else (m, k), dtype, special=special, bounded=True))
    b = data.draw(float_matrices((n, kb) if tb else (kb, n), dtype, special=special, bounded=True))
    out_start = data.draw(float_matrices((m, n), dtype, special=False))
    A, B = Matrix(a), Matrix(b)
    kwargs = {"trans_a": ta, "trans_b": tb}
    out = None
    alpha, beta = 1.0, 1.0
    if use_out == "scaled":   # out = alpha * product + beta * out (beta 0: out not read)
        alpha = data.draw(st.sampled_from([-0.5, 0.3, 2.0]))
        beta = data.draw(st.sampled_from([0.0, 0.7, 1.0]))
        kwargs.update(alpha=alpha, beta=beta)
    if use_out in ("out", "accumulate", "scaled"):
        out = Matrix(out_start.copy())
        kwargs.update(out=out, accumulate=use_out != "out")
    elif use_out == "alias" and A.shape == (m, n):
        kwargs.update(out=A)
    with mg.backend(*backend, grain=1), np.errstate(all="ignore"):
        if k != kb:
            with pytest.raises(ValueError, match="do not align"):
                A.matmul(B, **kwargs)
            return
        if kwargs.get("out") is A:
            before = np.asarray(A).copy()
            with pytest.raises(ValueError, match="overlap"):
                A.matmul(B, **kwargs)
            same(np.asarray(A), before)
            return
        got = A.matmul(B, **kwargs)
        if out is not None:
            assert got is out
    wa = (a.T if ta else a).astype(np.float64)
    wb = (b.T if tb else b).astype(np.float64)
    with np.errstate(all="ignore"):
        expected = alpha * (wa @ wb)
        bound = (np.abs(alpha * wa) @ np.abs(wb)) * (k + 3) * eps(dtype)
        if use_out in ("accumulate", "scaled"):
            expected = expected + beta * out_start.astype(np.float64)
            bound = bound + np.abs(beta * out_start) * 2 * eps(dtype)
        expected = expected.astype(dtype)
    # where no operand is special the product is finite and within the error bound;
    # where a NaN or an infinity enters, the same NaN/infinity as NumPy's (any order).
    finite_inputs = np.isfinite(bound)
    got = np.asarray(got, dtype=np.float64)
    assert np.isnan(got).tolist() == np.isnan(expected).tolist(), "NaN positions differ from NumPy"
    inf = np.isinf(expected) & ~finite_inputs
    assert (got[inf] == expected[inf]).all()
    ok = finite_inputs & np.isfinite(expected)
    assert (np.abs(got[ok] - expected[ok]) <= bound[ok] + np.finfo(dtype).tiny).all()


@FUZZ
@given(data=st.data(), backend=backends(), dtype=st.sampled_from(FLOATS),
       sizes=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)), relu=st.booleans(),
       bias_shape=st.sampled_from(["column", "row", "wrong"]))
def test_linear(data, backend, dtype, sizes, relu, bias_shape):
    o, i, n = sizes
    w = data.draw(float_matrices((o, i), dtype, special=False))
    x = data.draw(float_matrices((i, n), dtype, special=False))
    shape = {"column": (o, 1), "row": (1, o), "wrong": (o + 1, 1)}[bias_shape]
    b = data.draw(float_matrices(shape, dtype, special=False))
    with mg.backend(*backend, grain=1):
        if bias_shape != "column" and shape != (o, 1):
            with pytest.raises(ValueError, match="bias"):
                Matrix(w).linear(Matrix(x), Matrix(b), relu)
            return
        got = Matrix(w).linear(Matrix(x), Matrix(b), relu)
    wide = w.astype(np.float64) @ x.astype(np.float64) + b.astype(np.float64)
    bound = (np.abs(w.astype(np.float64)) @ np.abs(x.astype(np.float64)) + np.abs(b)) * (i + 2) * eps(dtype)
    if relu:
        wide = np.maximum(wide, 0)
    assert (np.abs(np.asarray(got, dtype=np.float64) - wide) <= bound + np.finfo(dtype).tiny).all()


# ------------------------------------------------------------------ in place

@FUZZ
@given(data=st.data(), backend=backends(), dtype=st.sampled_from(FLOATS),
       shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       op=st.sampled_from(["axpy_", "scale_", "fill_", "zero_", "copy_", "adam_", "sgd_", "relu_grad"]),
       mismatch=st.sampled_from([None, "shape", "dtype", "type"]),
       alpha=st.one_of(st.floats(-1e3, 1e3), st.sampled_from([float("nan"), float("inf"), 0.0, "x", None, 1j])))
def test_in_place_and_two_operand_methods(data, backend, dtype, shape, op, mismatch, alpha):
    a = data.draw(float_matrices(shape, dtype, special=False))
    x = data.draw(float_matrices(shape, dtype, special=False))
    target = Matrix(a.copy())
    other = Matrix(x)
    if mismatch == "shape":
        other = Matrix(np.ones((shape[0] + 1, shape[1]), dtype=dtype))
    elif mismatch == "dtype":
        other = Matrix(x.astype(np.float64 if dtype == np.float32 else np.float32))
    elif mismatch == "type":
        other = data.draw(st.sampled_from(WEIRD))
    numeric_alpha = isinstance(alpha, float)
    with mg.backend(*backend, grain=1), np.errstate(all="ignore"):
        calls = {
            "axpy_": lambda: target.axpy_(alpha, other),
            "scale_": lambda: target.scale_(alpha),
            "fill_": lambda: target.fill_(alpha),
            "zero_": lambda: target.zero_(),
            "copy_": lambda: target.copy_(other),
            "relu_grad": lambda: target.relu_grad(other),
            "adam_": lambda: target.adam_(other, Matrix(np.zeros(shape, dtype)), Matrix(np.zeros(shape, dtype)),
                                          alpha, 0.9, 0.999, 1e-8, 0.1, 0.001),
            "sgd_": lambda: target.sgd_(other, alpha, weight_decay=0.5),
        }
        uses_other = op in ("axpy_", "copy_", "adam_", "sgd_", "relu_grad")
        uses_alpha = op in ("axpy_", "scale_", "fill_", "adam_", "sgd_")
        # relu_grad takes a number as a 1x1 Matrix, so it fits only a 1x1 target; the
        # in-place updates take a Matrix only (test_matrix_api: ..._take_a_matrix_not_a_number)
        number_fits = op == "relu_grad" and shape == (1, 1) and isinstance(other, numbers.Real)
        # a step size must be finite (fill_ may write inf or NaN)
        bad_step = op in ("axpy_", "scale_", "adam_", "sgd_") and numeric_alpha and not math.isfinite(alpha)
        must_fail = (uses_alpha and not numeric_alpha) or bad_step or (uses_other and (
            mismatch in ("shape", "dtype") or (mismatch == "type" and not number_fits)))
        try:
            result = calls[op]()
        except DOCUMENTED:
            assert must_fail, f"{op} refused a valid call"
            same(np.asarray(target), a, "target changed by a refused call")
            return
        assert not must_fail, f"{op} accepted alpha={alpha!r}, other={other!r}"
        if uses_other and mismatch == "type":
            return
        a64, x64 = a.astype(np.float64), x.astype(np.float64)
        # optimized rounds alpha to the matrix's dtype first (as NumPy does with a Python float
        # and a float32 array), naive does not: where alpha is subnormal in that dtype, that
        # rounding is one subnormal step, not a relative eps, so each bound allows it too
        tiny = float(np.finfo(dtype).smallest_subnormal)
        a_max, x_max = float(np.abs(a64).max()), float(np.abs(x64).max())
        if op == "axpy_":
            slack = 4 * eps(dtype) * (a_max + abs(alpha) * x_max) + tiny * x_max
            close(target, (a64 + alpha * x64).astype(dtype), rtol=4 * eps(dtype), atol=slack)
        elif op == "sgd_":   # a - alpha * (x + 0.5 a): four roundings
            slack = 8 * eps(dtype) * (a_max + abs(alpha) * (x_max + a_max)) + tiny * (x_max + a_max)
            close(target, (a64 - alpha * (x64 + 0.5 * a64)).astype(dtype), rtol=8 * eps(dtype), atol=slack)
        elif op == "scale_":
            close(target, (a64 * alpha).astype(dtype), rtol=2 * eps(dtype), atol=tiny * a_max)
        elif op == "fill_":
            same(np.asarray(target), np.full(shape, alpha, dtype=dtype))
        elif op == "zero_":
            same(np.asarray(target), np.zeros(shape, dtype))
        elif op == "copy_":
            same(np.asarray(target), x)
        elif op == "relu_grad":
            same(result, np.where(a > 0, x, 0).astype(dtype))
            same(np.asarray(target), a)
        assert result is target or op == "relu_grad"


@FUZZ
@given(data=st.data(), method=st.sampled_from(["matmul", "linear", "add", "relu_grad", "log_softmax_grad", "sum",
                                               "max", "argmax", "log_softmax", "astype", "axpy_", "scale_",
                                               "fill_", "copy_", "adam_", "sgd_", "__pow__", "__matmul__", "__truediv__"]),
       args=st.lists(st.sampled_from(WEIRD), min_size=0, max_size=4))
def test_wrong_python_types_anywhere(data, method, args):
    """Any method with any junk arguments: a result or a documented exception, nothing else."""
    m = Matrix(np.ones((2, 2), np.float32))
    try:
        getattr(m, method)(*args)
    except DOCUMENTED:
        pass
    except AttributeError as error:   # only from NumPy reading the junk, never from the core itself
        pytest.fail(f"{method}{tuple(args)!r}: {error!r}")


# ------------------------------------------------------------------ Tensor

def _unbroadcast(grad, shape):
    for axis in (0, 1):
        if shape[axis] == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


@FUZZ
@given(data=st.data(), backend=backends(), dtype=st.sampled_from(FLOATS), op=st.sampled_from(sorted(OPS) + ["matmul"]),
       shapes=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       grads=st.tuples(st.booleans(), st.booleans()))
def test_tensor_ops_and_gradients(data, backend, dtype, op, shapes, grads):
    r1, c1, r2, c2 = shapes
    if op == "matmul" and data.draw(st.booleans()):
        r2 = c1
    a = data.draw(float_matrices((r1, c1), dtype, special=False))
    b = data.draw(float_matrices((r2, c2), dtype, special=False))
    if op == "div":
        b = np.where(np.abs(b) < 0.5, 1.0, b).astype(dtype)
    x, y = Tensor(a, requires_grad=grads[0]), Tensor(b, requires_grad=grads[1])
    compatible = (c1 == r2) if op == "matmul" else all(p == q or 1 in (p, q) for p, q in ((r1, r2), (c1, c2)))
    with mg.backend(*backend, grain=1), np.errstate(all="ignore"):
        if not compatible:
            with pytest.raises(ValueError):
                (x @ y) if op == "matmul" else OPS[op](x, y)
            return
        z = (x @ y) if op == "matmul" else OPS[op](x, y)
        wa, wb = a.astype(np.float64), b.astype(np.float64)
        expected = wa @ wb if op == "matmul" else OPS[op](wa, wb)
        scale = (np.abs(wa) @ np.abs(wb) * (c1 + 2)) if op == "matmul" else np.abs(expected) * 2
        assert (np.abs(np.asarray(z.numpy(), np.float64) - expected) <= scale * eps(dtype) + 1e-30).all()
        if not z.requires_grad:
            assert not any(grads)
            with pytest.raises(RuntimeError):
                z.sum().backward()
            return
        z.sum().backward()
    ones = np.ones(expected.shape)
    if op == "matmul":
        ga, gb = ones @ wb.T, wa.T @ ones
    else:
        ga, gb = {"add": lambda: (ones, ones), "sub": lambda: (ones, -ones), "mul": lambda: (wb * ones, wa * ones),
                  "div": lambda: (ones / wb, -wa / (wb * wb))}[op]()
        ga, gb = _unbroadcast(ga, a.shape), _unbroadcast(gb, b.shape)
    for tensor, expected_grad, wanted in ((x, ga, grads[0]), (y, gb, grads[1])):
        if not wanted:
            assert tensor.grad is None
            continue
        close(tensor.grad.numpy(), expected_grad, rtol=64 * eps(dtype), atol=64 * eps(dtype) *
              float(np.abs(expected_grad).max() + 1), what="gradient")


@FUZZ
@given(value=st.sampled_from(WEIRD + [3, 2.5, [[1, 2]], np.ones((2, 2)), np.ones((2, 2), int)]),
       op=st.sampled_from(["construct", "add", "mul", "matmul", "pow", "backward", "sum", "log_softmax"]))
def test_tensor_with_any_python_value(value, op):
    t = Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    calls = {"construct": lambda: Tensor(value), "add": lambda: t + value, "mul": lambda: value * t,
             "matmul": lambda: t @ value, "pow": lambda: t ** value, "backward": lambda: t.sum().backward(value),
             "sum": lambda: t.sum(axis=value), "log_softmax": lambda: t.log_softmax(axis=value)}
    try:
        result = calls[op]()
    except DOCUMENTED:
        return
    except RuntimeError as error:
        pytest.fail(f"{op} with {value!r}: {error!r}")
    if isinstance(result, Tensor) and op in ("add", "mul"):
        assert result.shape == (2, 2)
        operand = np.asarray(value.numpy() if isinstance(value, Tensor) else value, np.float32)
        same(result.numpy(), (1 + operand if op == "add" else operand * 1).astype(np.float32) * np.ones((2, 2),
                                                                                                     np.float32))
    elif op == "construct":
        assert math.prod(result.shape) >= 1 and result.dtype in (np.float32, np.float64)
