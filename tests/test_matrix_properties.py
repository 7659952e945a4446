"""Property tests: random shapes (1..40 a side), values and backends against NumPy.

Each example draws a (variant, workers) pair from the grid, a dtype, a shape and
the data; hypothesis shrinks a failure to the smallest such case. Values include
zeros, subnormals and (where a test says so) infinities and NaN.
"""
import operator

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import given, settings, strategies as st

import mocrograd
from mocrograd import Matrix

OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}
EPS64 = np.finfo(np.float64).eps

dtypes = st.sampled_from([np.float32, np.float64])
sides = st.integers(1, 40)


def finite(dtype, bound=1e6):
    return st.floats(-bound, bound, width=32 if dtype == np.float32 else 64)


def anything(dtype):
    """Any value of the dtype: infinities and NaN included."""
    return st.floats(width=32 if dtype == np.float32 else 64)


def array(data, dtype, shape, elements=None):
    return data.draw(hnp.arrays(dtype, shape, elements=elements if elements is not None else finite(dtype)))


def use_backend(data, backends):
    return mocrograd.backend(*data.draw(st.sampled_from(backends), label="backend"), grain=1)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), dtype=dtypes, rows=sides, cols=sides,
       left=st.sampled_from(["full", "col", "row", "one"]), right=st.sampled_from(["full", "col", "row", "one"]),
       op=st.sampled_from(sorted(OPS)))
def test_binary_broadcasting_equals_numpy(data, backends, dtype, rows, cols, left, right, op):
    # One correctly rounded operation per element, so equal bit for bit; division by
    # zero gives the same infinities and NaN as NumPy.
    shape = {"full": (rows, cols), "col": (rows, 1), "row": (1, cols), "one": (1, 1)}
    a, b = array(data, dtype, shape[left]), array(data, dtype, shape[right])
    with use_backend(data, backends), np.errstate(all="ignore"):
        got = OPS[op](Matrix(a), Matrix(b))
        expected = OPS[op](a, b)
    np.testing.assert_array_equal(got.numpy(), expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=dtypes, rows=sides, cols=sides, number=st.floats(-1e3, 1e3))
def test_number_operands_equal_numpy(data, backends, dtype, rows, cols, number):
    a = array(data, dtype, (rows, cols))
    s = dtype(number)
    with use_backend(data, backends), np.errstate(all="ignore"):
        for name, op in OPS.items():
            np.testing.assert_array_equal(op(Matrix(a), number).numpy(), op(a, s), err_msg=name)
            np.testing.assert_array_equal(op(number, Matrix(a)).numpy(), op(s, a), err_msg=name)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), dtype=dtypes, rows=sides, cols=sides)
def test_neg_relu_and_relu_grad_equal_numpy(data, backends, dtype, rows, cols):
    x = array(data, dtype, (rows, cols), anything(dtype))
    g = array(data, dtype, (rows, cols))
    with use_backend(data, backends):
        m = Matrix(x)
        np.testing.assert_array_equal((-m).numpy(), -x)
        np.testing.assert_array_equal(m.relu().numpy(), np.maximum(x, 0))
        np.testing.assert_array_equal(m.relu_mask().numpy(), (x > 0).astype(dtype))
        np.testing.assert_array_equal(m.relu_grad(Matrix(g)).numpy(), np.where(x > 0, g, 0))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), dtype=dtypes, rows=sides, cols=sides, axis=st.sampled_from([None, 0, 1]))
def test_max_equals_numpy_including_nan_and_infinities(data, backends, dtype, rows, cols, axis):
    x = array(data, dtype, (rows, cols), anything(dtype))
    with use_backend(data, backends):
        got = Matrix(x).max(axis)
    np.testing.assert_array_equal(got.numpy(), x.max(axis=axis, keepdims=True))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), dtype=dtypes, rows=sides, cols=sides, axis=st.sampled_from([None, 0, 1]))
def test_sum_matches_numpy(data, backends, dtype, rows, cols, axis, assert_within):
    # Added in float64, rounded once to dtype: (eps + 2 n eps64) * sum|x| (see test_matrix_kernels).
    x = array(data, dtype, (rows, cols))
    with use_backend(data, backends):
        got = Matrix(x).sum(axis)
    x64 = x.astype(np.float64)
    n = x.size if axis is None else x.shape[axis]
    bound = (np.finfo(dtype).eps + 2 * n * EPS64) * np.abs(x64).sum(axis=axis, keepdims=True)
    assert_within(got, x64.sum(axis=axis, keepdims=True), bound)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), dtype=dtypes, rows=sides, cols=sides, axis=st.sampled_from([0, 1]))
def test_argmax_equals_numpy(data, backends, dtype, rows, cols, axis):
    # Few distinct values, so most examples have ties: the first index wins, as in NumPy.
    x = array(data, dtype, (rows, cols), st.sampled_from([-1.0, 0.0, 2.0, 3.5]))
    with use_backend(data, backends):
        got = Matrix(x).argmax(axis)
    np.testing.assert_array_equal(got, np.argmax(x, axis=axis, keepdims=True))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), dtype=dtypes, rows=sides, cols=sides, axis=st.sampled_from([0, 1]))
def test_log_softmax_matches_numpy(data, backends, dtype, rows, cols, axis, assert_within):
    x = array(data, dtype, (rows, cols), finite(dtype, 1e4))
    with use_backend(data, backends):
        got = Matrix(x).log_softmax(axis)
    x64 = x.astype(np.float64)
    top = x64.max(axis=axis, keepdims=True)
    expected = x64 - top - np.log(np.exp(x64 - top).sum(axis=axis, keepdims=True))
    # Rounded once to dtype; the float64 steps cancel around |x| and |top| (see test_matrix_kernels).
    n = x.shape[axis]
    bound = np.finfo(dtype).eps * np.abs(expected) + 8 * EPS64 * (np.abs(x64) + np.abs(top) + n + 1)
    assert_within(got, expected, bound)
