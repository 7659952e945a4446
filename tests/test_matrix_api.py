"""The Matrix API: construction, dtypes, views and copies, repr, the buffer
protocol, seeded constructors, result shapes, and every error path with the
message it gives."""
import copy
import ctypes
import gc
import math
import pickle

import numpy as np
import pytest

import mocrograd
from mocrograd import Matrix, machine_memory

# ------------------------------------------------------------ construction


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_contiguous_float_array_is_wrapped_without_copy(dtype):
    a = np.arange(6, dtype=dtype).reshape(2, 3)
    m = Matrix(a)
    assert m.dtype == dtype and m.shape == (2, 3)
    assert np.shares_memory(m.numpy(), a)
    a[0, 0] = 42                       # the matrix sees writes to the array...
    assert m.numpy()[0, 0] == 42
    m.fill_(7)                         # ...and the array sees in-place kernels
    assert (a == 7).all()


def test_another_matrix_of_the_same_dtype_is_shared_not_copied():
    m = Matrix.randn(3, 4, seed=0)
    assert np.shares_memory(Matrix(m).numpy(), m.numpy())


@pytest.mark.parametrize("make", [
    lambda a: np.asfortranarray(a),
    lambda a: a[::-1],                 # negative row stride
    lambda a: a[:, ::-2],              # negative, non-unit column stride
    lambda a: a[:, 1:],                # rows not contiguous
    lambda a: a.T,
], ids=["fortran", "reversed_rows", "strided_columns", "sliced_columns", "transposed"])
def test_non_contiguous_input_is_copied_to_c_order(make):
    a = make(np.arange(20, dtype=np.float32).reshape(4, 5))
    m = Matrix(a)
    assert m.numpy().flags.c_contiguous
    assert not np.shares_memory(m.numpy(), a)
    np.testing.assert_array_equal(m.numpy(), a)


@pytest.mark.parametrize("source,target", [(np.float32, np.float64), (np.float64, np.float32)])
def test_asking_for_another_dtype_copies(source, target):
    a = np.linspace(-1, 1, 12, dtype=source).reshape(3, 4)
    m = Matrix(a, dtype=target)
    assert m.dtype == target
    assert not np.shares_memory(m.numpy(), a)
    np.testing.assert_array_equal(m.numpy(), a.astype(target))


def test_another_matrix_converted_to_another_dtype_is_a_copy():
    m = Matrix.randn(3, 4, seed=0)
    d = Matrix(m, dtype=np.float64)
    assert d.dtype == np.float64 and not np.shares_memory(d.numpy(), m.numpy())
    np.testing.assert_array_equal(d.numpy(), m.numpy().astype(np.float64))


@pytest.mark.parametrize("source", [np.int32, np.int64, np.uint8, np.bool_, np.float16, ">f4", ">f8"])
def test_other_numeric_arrays_become_float32(source):
    a = np.array([[0, 1, 1], [1, 0, 1]]).astype(source)
    m = Matrix(a)
    assert m.dtype == np.float32          # native float32, even from big-endian float64
    np.testing.assert_array_equal(m.numpy(), a.astype(np.float32))


def test_read_only_array_is_copied():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    a.setflags(write=False)
    m = Matrix(a)
    assert not np.shares_memory(m.numpy(), a)
    m.fill_(1)                            # the copy is writable; the original is untouched
    np.testing.assert_array_equal(a, np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("data,dtype,expected", [
    ([[1, 2, 3], [4, 5, 6]], None, np.float32),
    ([[1.5, 2], [3, 4]], np.float64, np.float64),
    (((1, 2), (3, 4)), "float64", np.float64),
    ([np.arange(3), np.arange(3)], np.dtype("float32"), np.float32),
    ([[True, False]], None, np.float32),
], ids=["ints", "floats_as_float64", "tuples", "list_of_arrays", "bools"])
def test_nested_sequences(data, dtype, expected):
    m = Matrix(data, dtype=dtype)
    assert m.dtype == expected
    np.testing.assert_array_equal(m.numpy(), np.array(data, dtype=expected))


# ---------------------------------------------------- construction errors

@pytest.mark.parametrize("data,match", [
    (np.array([[object()]]), "numeric data, got an array of dtype object"),
    (np.zeros((2, 2), dtype=complex), "numeric data, got an array of dtype complex128"),
    (np.array([["a", "b"]]), "numeric data, got an array of dtype <U1"),
    ("ab", "2-D array or nested lists, got str"),
    (b"ab", "2-D array or nested lists, got bytes"),
    (3.0, "2-D array or nested lists, got float"),
    (None, "2-D array or nested lists, got NoneType"),
    ([[1, 2], [3]], "rectangular nested list of numbers"),
    ([["a", "b"]], "rectangular nested list of numbers"),
    ([[1j, 2]], "rectangular nested list of numbers"),
], ids=["object", "complex", "strings", "str", "bytes", "number", "none", "ragged", "str_items", "complex_items"])
def test_non_numeric_data_is_a_type_error(data, match):
    with pytest.raises(TypeError, match=match):
        Matrix(data)


@pytest.mark.parametrize("data,match", [
    (np.zeros(3), r"2-D data, got 1-D with shape \(3,\)"),
    (np.zeros((1, 2, 3)), r"2-D data, got 3-D with shape \(1, 2, 3\)"),
    ([1.0, 2.0], r"2-D data, got 1-D with shape \(2,\)"),
    ([], r"2-D data, got 1-D with shape \(0,\)"),
    (np.zeros((0, 3)), r"at least one row and one column, got shape \(0, 3\)"),
    (np.zeros((3, 0), dtype=np.float32), r"at least one row and one column, got shape \(3, 0\)"),
    ([[]], r"at least one row and one column, got shape \(1, 0\)"),
], ids=["1d", "3d", "flat_list", "empty_list", "no_rows", "no_columns", "empty_row"])
def test_wrong_dimensions_or_empty_is_a_value_error(data, match):
    with pytest.raises(ValueError, match=match):
        Matrix(data)


@pytest.mark.parametrize("dtype", [np.int32, np.float16, complex, "int64"])
def test_only_float32_and_float64_dtypes(dtype):
    with pytest.raises(TypeError, match="^Matrix dtype must be float32 or float64"):   # not "not rectangular"
        Matrix([[1.0]], dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Matrix(np.ones((1, 1)), dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Matrix.zeros(1, 1).astype(dtype)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Matrix.zeros(1, 1, dtype=dtype)


@pytest.mark.parametrize("make", [Matrix.zeros, lambda r, c: Matrix.full(r, c, 1.0), Matrix.rand, Matrix.randn],
                         ids=["zeros", "full", "rand", "randn"])
@pytest.mark.parametrize("rows,cols", [(0, 3), (3, 0), (-1, 2)])
def test_constructors_reject_empty_shapes(make, rows, cols):
    with pytest.raises(ValueError, match=rf"at least one row and one column, got shape \({rows}, {cols}\)"):
        make(rows, cols)


@pytest.mark.parametrize("make", [Matrix.zeros, Matrix.randn], ids=["zeros", "randn"])
def test_constructors_reject_shapes_too_large_to_allocate(make):
    with pytest.raises(MemoryError, match=r"shape \(1099511627776, 1099511627776\) is too large to allocate"):
        make(2 ** 40, 2 ** 40)


@pytest.mark.parametrize("make", [Matrix.zeros, lambda rows, cols: Matrix.full(rows, cols, 1.0), Matrix.rand,
                                  Matrix.randn], ids=["zeros", "full", "rand", "randn"])
def test_constructors_refuse_matrices_larger_than_ram_and_swap(make):
    """Where the OS overcommits memory, such a request would be granted and the process
    killed as the matrix is filled: it gets a MemoryError instead, on every machine."""
    rows = machine_memory() // (4 * 1024) + 1          # one row more than RAM and swap hold
    with pytest.raises(MemoryError, match=rf"shape \({rows}, 1024\) is too large for this machine: float32 needs"):
        make(rows, 1024)


def test_a_product_larger_than_the_machine_is_refused_before_any_kernel_runs(each_backend):
    n = math.isqrt(machine_memory() // 4) + 1         # an outer product of two small vectors
    column, row = Matrix.full(n, 1, 1.0), Matrix.full(1, n, 1.0)
    with pytest.raises(MemoryError, match=rf"shape \({n}, {n}\) is too large"):
        column @ row


# ------------------------------------------------------------ constructors

@pytest.mark.parametrize("dtype", [None, np.float32, np.float64])
def test_zeros_and_full(dtype):
    z, f = Matrix.zeros(3, 5, dtype=dtype), Matrix.full(3, 5, -2.5, dtype=dtype)
    expected = np.float32 if dtype is None else dtype
    assert z.shape == f.shape == (3, 5) and z.dtype == f.dtype == expected
    np.testing.assert_array_equal(z.numpy(), np.zeros((3, 5)))
    np.testing.assert_array_equal(f.numpy(), np.full((3, 5), -2.5))


@pytest.mark.parametrize("name,draw", [("rand", "random"), ("randn", "standard_normal")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seeded_random_constructors_are_reproducible(name, draw, dtype):
    make = getattr(Matrix, name)
    a, b, c = make(4, 6, seed=3, dtype=dtype), make(4, 6, seed=3, dtype=dtype), make(4, 6, seed=4, dtype=dtype)
    assert a.dtype == dtype and a.shape == (4, 6)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    # the documented source: np.random.default_rng(seed)
    expected = getattr(np.random.default_rng(3), draw)((4, 6), dtype=dtype)
    np.testing.assert_array_equal(a.numpy(), expected)


def test_rand_is_uniform_in_unit_interval_and_unseeded_calls_differ():
    a = Matrix.rand(50, 50).numpy()
    assert a.min() >= 0 and a.max() < 1
    assert not np.array_equal(a, Matrix.rand(50, 50).numpy())


# ------------------------------------------------- properties, views, copies

def test_shape_dtype_and_the_owning_array():
    m = Matrix.zeros(2, 7, dtype=np.float64)
    assert m.shape == (2, 7) and isinstance(m.shape, tuple)
    assert m.dtype == np.dtype(np.float64)
    assert m.numpy() is m.numpy()
    m.numpy()[1, 6] = 3                  # numpy() is the data, not a copy
    assert m.sum().numpy()[0, 0] == 3


def test_copy_is_independent():
    m = Matrix.randn(3, 3, seed=1)
    c = m.copy()
    assert c is not m and c.dtype == m.dtype
    assert not np.shares_memory(c.numpy(), m.numpy())
    np.testing.assert_array_equal(c.numpy(), m.numpy())
    c.fill_(0)
    assert m.numpy().any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))],
                         ids=["copy", "deepcopy", "pickle"])
def test_copy_deepcopy_and_pickle_give_an_independent_matrix(how, dtype):
    m = Matrix.randn(3, 4, seed=1, dtype=dtype)
    c = how(m)
    assert type(c) is Matrix and c.dtype == m.dtype and not np.shares_memory(c.numpy(), m.numpy())
    np.testing.assert_array_equal(c.numpy(), m.numpy())


def test_a_model_deep_copies():
    model = mocrograd.nn.Normal()
    twin = copy.deepcopy(model)
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert a is not b and not np.shares_memory(a.numpy(), b.numpy()), name
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_matrix_is_initialised_once():
    """A second __init__ would swap the data under buffers already handed out."""
    m = Matrix([[1.0, 2.0]])
    view = memoryview(m)
    with pytest.raises(TypeError, match="initialised once"):
        m.__init__([[3.0]])
    assert m.shape == (1, 2) and view.tolist() == [[1.0, 2.0]]


def test_astype_converts_or_returns_self():
    m = Matrix.randn(3, 3, seed=1)
    assert m.astype(np.float32) is m
    d = m.astype(np.float64)
    assert d.dtype == np.float64 and not np.shares_memory(d.numpy(), m.numpy())
    np.testing.assert_array_equal(d.numpy(), m.numpy().astype(np.float64))


def test_repr_shows_values_and_dtype():
    assert repr(Matrix([[1, 2], [3, 4]])) == "Matrix([[1. 2.]\n        [3. 4.]], dtype=float32)"
    assert repr(Matrix([[0.5]], dtype=np.float64)) == "Matrix([[0.5]], dtype=float64)"
    big = repr(Matrix.zeros(100, 100))
    assert "..." in big and big.endswith("dtype=float32)") and len(big) < 1000


# ------------------------------------------------------- buffer protocol

@pytest.mark.parametrize("dtype,fmt", [(np.float32, "f"), (np.float64, "d")])
def test_memoryview_describes_the_matrix(dtype, fmt):
    m = Matrix.randn(3, 5, seed=0, dtype=dtype)
    view = memoryview(m)
    size = np.dtype(dtype).itemsize
    assert view.format == fmt and view.itemsize == size
    assert view.ndim == 2 and view.shape == (3, 5) and view.strides == (5 * size, size)
    assert view.c_contiguous and not view.readonly
    assert view.tobytes() == m.numpy().tobytes()


def test_writes_through_the_buffer_are_visible():
    m = Matrix.zeros(2, 3)
    memoryview(m)[1, 2] = 5.0
    assert m.numpy()[1, 2] == 5.0
    np.frombuffer(memoryview(m), dtype=np.float32)[0] = -1.0
    assert m.numpy()[0, 0] == -1.0


def test_memoryview_keeps_the_matrix_alive():
    view = memoryview(Matrix.full(2, 2, 3.0))
    gc.collect()
    assert view.tolist() == [[3.0, 3.0], [3.0, 3.0]]


def test_a_fortran_contiguous_buffer_is_refused_unless_it_is_one():
    """A request for a Fortran-order buffer (PyBUF_F_CONTIGUOUS) gets BufferError, as from
    NumPy, except for a single row or column, which is both orders."""
    def get_buffer(obj):
        view = (ctypes.c_char * 80)()   # room for a Py_buffer
        result = ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(obj), view, 0x5C)   # F_CONTIGUOUS | FORMAT
        if result == 0:
            ctypes.pythonapi.PyBuffer_Release(view)
    with pytest.raises(BufferError, match="not Fortran-contiguous"):
        get_buffer(Matrix.zeros(2, 3))
    get_buffer(Matrix.zeros(1, 3))
    get_buffer(Matrix.zeros(3, 1))


def test_np_asarray_is_a_zero_copy_view():
    m = Matrix.randn(4, 4, seed=2)
    a = np.asarray(m)
    assert np.shares_memory(a, m.numpy())
    a[2, 3] = 9
    assert m.numpy()[2, 3] == 9
    converted = np.asarray(m, dtype=np.float64)       # another dtype: a converted copy
    assert converted.dtype == np.float64 and not np.shares_memory(converted, m.numpy())
    assert not np.shares_memory(np.array(m, copy=True), m.numpy())


# --------------------------------------------------------- result shapes

def test_reductions_keep_two_dimensions():
    m = Matrix.randn(3, 5, seed=0)
    assert m.sum().shape == m.max().shape == (1, 1)
    assert m.sum(0).shape == m.max(axis=0).shape == (1, 5)
    assert m.sum(1).shape == m.max(axis=1).shape == (3, 1)
    assert m.argmax(0).shape == (1, 5) and m.argmax(1).shape == (3, 1)
    assert m.argmax().shape == (1, 5)             # default axis 0
    assert m.log_softmax().shape == (3, 5)


def test_negative_axes_count_from_the_end():
    m = Matrix.randn(3, 5, seed=0)
    for method in (Matrix.sum, Matrix.max, Matrix.argmax, Matrix.log_softmax):
        np.testing.assert_array_equal(np.asarray(method(m, -1)), np.asarray(method(m, 1)))
        np.testing.assert_array_equal(np.asarray(method(m, -2)), np.asarray(method(m, 0)))


def test_add_method_is_the_operator():
    m, x = Matrix.randn(3, 4, seed=0), Matrix.randn(1, 4, seed=1)
    np.testing.assert_array_equal(m.add(x).numpy(), (m + x).numpy())
    np.testing.assert_array_equal(m.add(2.0).numpy(), (m + 2.0).numpy())


def test_in_place_methods_return_self():
    m, x = Matrix.zeros(2, 2), Matrix.full(2, 2, 1.0)
    assert m.axpy_(2.0, x) is m and m.scale_(0.5) is m and m.copy_(x) is m
    assert m.fill_(3.0) is m and m.zero_() is m


def test_large_allocations_counts_only_big_new_results():
    before = mocrograd.large_allocations()
    Matrix.zeros(64, 64)                              # small: not counted
    Matrix(np.zeros((2048, 2048), dtype=np.float32))  # wraps the array: nothing allocated
    assert mocrograd.large_allocations() == before
    big = Matrix.zeros(2048, 2048)                    # exactly 16 MiB
    assert mocrograd.large_allocations() == before + 1
    -big
    assert mocrograd.large_allocations() == before + 2


def _address(m):
    return m.numpy().ctypes.data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_large_result_takes_the_block_of_one_that_is_gone(dtype):
    a, b = Matrix.full(1024, 1024, 1.0, dtype=dtype), Matrix.full(1024, 1024, 2.0, dtype=dtype)
    first = a + b                                     # 4 or 8 MB: at least REUSE_BYTES
    address = _address(first)
    del first
    assert mocrograd.idle_bytes() >= 1024 * 1024 * np.dtype(dtype).itemsize
    second = a * b
    assert _address(second) == address
    np.testing.assert_array_equal(second.numpy(), 2.0)


def test_a_block_still_viewed_is_never_reused():
    a, b = Matrix.full(1024, 1024, 1.0), Matrix.full(1024, 1024, 2.0)
    first = a + b
    address, view = _address(first), first.numpy()[::2]   # the view outlives the Matrix
    del first
    second = a - b
    assert _address(second) != address
    np.testing.assert_array_equal(view, 3.0)
    np.testing.assert_array_equal(second.numpy(), -1.0)
    del view
    assert _address(a * b) == address                   # gone now: reused


def test_small_results_and_zeros_are_not_kept():
    mocrograd.release_memory()
    small = Matrix.full(64, 64, 1.0) + 1.0          # below REUSE_BYTES: NumPy's allocator
    zeros = Matrix.zeros(1024, 1024)                 # zeroed (long-lived gradients): NumPy's
    del small, zeros
    assert mocrograd.idle_bytes() == 0


def test_idle_blocks_are_bounded_and_released():
    from mocrograd._core.matrix import REUSE_BYTES, REUSE_LIMIT
    x = Matrix.full(1, 1, 1.0)
    for rows in range(512, 512 + 40 * 64, 64):          # 40 results of 40 sizes, each dropped at once
        Matrix.full(rows, 1024, 1.0) + x
        assert mocrograd.idle_bytes() <= REUSE_LIMIT
    assert mocrograd.idle_bytes() >= REUSE_BYTES
    held = mocrograd.idle_bytes()
    assert mocrograd.release_memory() == held and mocrograd.idle_bytes() == 0


# ------------------------------------------------------- operation errors

A, B = (2, 3), (4, 5)


def test_matmul_shapes_must_align():
    a, b = Matrix.zeros(*A), Matrix.zeros(*B)
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) do not align \(3 != 4\)"):
        a @ b
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\)\.T and \(4, 5\) do not align \(2 != 4\)"):
        a.matmul(b, trans_a=True)
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\)\.T do not align \(3 != 5\)"):
        a.matmul(b, trans_b=True)


def test_matmul_out_must_fit():
    a, b = Matrix.zeros(2, 3), Matrix.zeros(3, 4)
    with pytest.raises(ValueError, match=r"out has shape \(4, 2\) and dtype float32, the result needs \(2, 4\)"):
        a.matmul(b, out=Matrix.zeros(4, 2))
    with pytest.raises(ValueError, match=r"out has shape \(2, 4\) and dtype float64, the result needs \(2, 4\) and float32"):
        a.matmul(b, out=Matrix.zeros(2, 4, dtype=np.float64))
    with pytest.raises(TypeError, match="out must be a Matrix, got ndarray"):
        a.matmul(b, out=np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="accumulate=True needs an out matrix"):
        a.matmul(b, accumulate=True)


def test_matmul_scales_must_be_finite_and_beta_needs_accumulate():
    a, b, out = Matrix.full(2, 3, 1.0), Matrix.full(3, 4, 1.0), Matrix.full(2, 4, 1.0)
    with pytest.raises(ValueError, match="beta=0.5 scales out's old values, which only accumulate=True adds to"):
        a.matmul(b, out=out, beta=0.5)
    for alpha, beta in [(float("nan"), 1.0), (1.0, float("inf")), (1e39, 1.0)]:   # 1e39 is inf in float32
        with pytest.raises(ValueError, match="alpha and beta must be finite in float32"):
            a.matmul(b, out=out, accumulate=True, alpha=alpha, beta=beta)
    assert np.array_equal(out.numpy(), np.ones((2, 4)))    # nothing was written
    big = Matrix.full(2, 3, 1.0, dtype=np.float64).matmul(Matrix.full(3, 4, 1.0, dtype=np.float64), alpha=1e39)
    assert np.array_equal(big.numpy(), np.full((2, 4), 3e39))


def test_matmul_out_must_not_overlap_its_operands():
    a, b = Matrix.randn(3, 3, seed=0), Matrix.randn(3, 3, seed=1)
    for out in (a, b, Matrix(b.numpy())):     # the last one is another Matrix on b's memory
        with pytest.raises(ValueError, match="out must not overlap self or other"):
            a.matmul(b, out=out)


def test_matmul_needs_matrices():
    a = Matrix.zeros(2, 2)
    with pytest.raises(TypeError, match="matmul needs a Matrix, got float"):
        a.matmul(2.0)
    with pytest.raises(TypeError, match="matmul needs a Matrix, got ndarray"):
        a.matmul(np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError, match="unsupported operand"):
        a @ 2.0


def test_linear_checks_its_operands():
    w, x, bias = Matrix.zeros(2, 3), Matrix.zeros(3, 4), Matrix.zeros(2, 1)
    with pytest.raises(ValueError, match=r"linear: shapes \(2, 3\) and \(4, 5\) do not align \(3 != 4\)"):
        w.linear(Matrix.zeros(4, 5), bias)
    with pytest.raises(ValueError, match=r"linear: bias has shape \(1, 2\), expected \(2, 1\)"):
        w.linear(x, Matrix.zeros(1, 2))
    with pytest.raises(TypeError, match="linear needs a Matrix input, got float"):
        w.linear(1.0, bias)
    with pytest.raises(TypeError, match=r"linear: dtypes differ \(float32 and float64\)"):
        w.linear(x, bias.astype(np.float64))


@pytest.mark.parametrize("op,name", [
    (lambda a, b: a + b, "add"), (lambda a, b: a - b, "subtract"),
    (lambda a, b: a * b, "multiply"), (lambda a, b: a / b, "divide"),
])
def test_binary_shapes_must_broadcast(op, name):
    with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4, 5\) cannot be broadcast"):
        op(Matrix.zeros(*A), Matrix.zeros(*B))
    with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(3, 3\) cannot be broadcast"):
        op(Matrix.zeros(2, 3), Matrix.zeros(3, 3))
    with pytest.raises(ValueError, match=rf"{name}: shapes \(1, 2\) and \(2, 3\) cannot be broadcast"):
        op(Matrix.zeros(1, 2), Matrix.zeros(2, 3))     # the left operand is named first
    with pytest.raises(TypeError, match=rf"{name}: dtypes differ \(float32 and float64\)"):
        op(Matrix.zeros(2, 3), Matrix.zeros(2, 3, dtype=np.float64))


@pytest.mark.parametrize("other", ["x", [[1.0, 2.0, 3.0]], np.zeros((2, 3), np.float32), None],
                         ids=["str", "list", "ndarray", "none"])
def test_binary_operands_must_be_matrices_or_numbers(other):
    m = Matrix.zeros(2, 3)
    kind = type(other).__name__
    with pytest.raises(TypeError, match=f"add: expected a Matrix or a number, got {kind}"):
        m + other
    with pytest.raises(TypeError, match=f"multiply: expected a Matrix or a number, got {kind}"):
        m * other
    with pytest.raises(TypeError, match=f"subtract: expected a Matrix or a number, got {kind}"):
        other - m                                      # an ndarray too: __array_ufunc__ = None


@pytest.mark.parametrize("number", [np.float32(0.5), np.float64(0.5), np.int64(2)], ids=["f32", "f64", "i64"])
def test_numpy_numbers_on_either_side_give_a_matrix(number):
    m = Matrix.full(2, 3, 4.0)
    for result in (number * m, m * number, number - m, m / number, number + m):
        assert type(result) is Matrix and result.dtype == np.float32
    np.testing.assert_array_equal((number * m).numpy(), np.full((2, 3), 4.0 * float(number), np.float32))


def test_power_needs_a_number():
    m = Matrix.full(2, 2, 2.0)
    with pytest.raises(TypeError, match="needs a number exponent, got Matrix"):
        m ** m
    with pytest.raises(TypeError, match="modulo is not supported"):
        pow(m, 2, 3)
    with pytest.raises(TypeError):
        2 ** m


@pytest.mark.parametrize("axis", [2, -3, True, "0", 0.5, 0.0, 1.0])
def test_bad_axis_is_a_value_error(axis):
    m = Matrix.zeros(2, 3)
    for method in (m.sum, m.max, m.argmax, m.log_softmax, lambda axis: m.log_softmax_grad(m, axis)):
        with pytest.raises(ValueError, match=r"axis must be None, 0 or 1 for a 2-D Matrix, got "):
            method(axis)


@pytest.mark.parametrize("name", ["argmax", "log_softmax", "log_softmax_grad"])
def test_axis_none_is_rejected_where_an_axis_is_needed(name):
    m = Matrix.zeros(2, 3)
    args = (m, None) if name == "log_softmax_grad" else (None,)
    with pytest.raises(ValueError, match=f"{name} needs axis 0 or 1"):
        getattr(m, name)(*args)


SAME_SHAPE_CALLS = {
    "relu_grad": lambda a, b: a.relu_grad(b),
    "log_softmax_grad": lambda a, b: a.log_softmax_grad(b),
    "axpy_": lambda a, b: a.axpy_(1.0, b),
    "copy_": lambda a, b: a.copy_(b),
    "adam_": lambda a, b: a.adam_(b, a.copy(), a.copy(), 0.1, 0.9, 0.99, 1e-8, 0.1, 0.01),
    "sgd_": lambda a, b: a.sgd_(b, 0.1, weight_decay=0.01),
}


@pytest.mark.parametrize("name", SAME_SHAPE_CALLS)
def test_operands_must_have_the_same_shape_and_dtype(name):
    call, a = SAME_SHAPE_CALLS[name], Matrix.zeros(*A)
    with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4, 5\) must be equal"):
        call(a, Matrix.zeros(*B))
    with pytest.raises(TypeError, match=rf"{name}: dtypes differ \(float32 and float64\)"):
        call(a, Matrix.zeros(*A, dtype=np.float64))


@pytest.mark.parametrize("name", ["axpy_", "copy_", "adam_", "sgd_"])
def test_in_place_updates_take_a_matrix_not_a_number(name):
    one = Matrix.zeros(1, 1)   # even where a number would fit the shape
    with pytest.raises(TypeError, match=rf"{name}: expected a Matrix of shape \(1, 1\), got float"):
        SAME_SHAPE_CALLS[name](one, 2.0)
    assert one.numpy()[0, 0] == 0.0


def test_sgd_checks_its_velocity_before_changing_anything():
    p = Matrix.full(2, 3, 1.0)
    with pytest.raises(ValueError, match=r"sgd_: shapes \(2, 3\) and \(3, 2\) must be equal"):
        p.sgd_(p.copy(), 0.1, velocity=Matrix.zeros(3, 2), momentum=0.9)
    with pytest.raises(TypeError, match=r"sgd_: dtypes differ"):
        p.sgd_(p.copy(), 0.1, velocity=Matrix.zeros(2, 3, dtype=np.float64), momentum=0.9)
    np.testing.assert_array_equal(p.numpy(), np.ones((2, 3), dtype=np.float32))


def test_adam_checks_every_moment():
    p = Matrix.zeros(2, 3)
    with pytest.raises(ValueError, match=r"adam_: shapes \(2, 3\) and \(3, 2\) must be equal"):
        p.adam_(p.copy(), Matrix.zeros(3, 2), p.copy(), 0.1, 0.9, 0.99, 1e-8, 0.1, 0.01)
    with pytest.raises(TypeError, match=r"adam_: dtypes differ"):
        p.adam_(p.copy(), p.copy(), Matrix.zeros(2, 3, dtype=np.float64), 0.1, 0.9, 0.99, 1e-8, 0.1, 0.01)


NUMBER_CALLS = {
    "axpy_": lambda m, x: m.axpy_(x, m.copy()),
    "scale_": lambda m, x: m.scale_(x),
    "copy_": lambda m, x: m.copy_(m.copy(), scale=x),
    "sgd_": lambda m, x: m.sgd_(m.copy(), 0.1, weight_decay=x),
    "adam_": lambda m, x: m.adam_(m.copy(), m.copy(), m.copy(), 0.1, 0.9, 0.99, x, 0.1, 0.01),
}


@pytest.mark.parametrize("name", NUMBER_CALLS)
@pytest.mark.parametrize("dtype, number", [(np.float32, 1e39), (np.float32, float("nan")),
                                           (np.float64, float("inf"))], ids=["f32-1e39", "f32-nan", "f64-inf"])
def test_in_place_numbers_must_be_finite_in_the_dtype(name, dtype, number):
    """Checked before any kernel: a float32 kernel rounds 1e39 to infinity, which naive
    (working in double) and optimized would have treated differently."""
    m = Matrix.full(2, 3, 1.0, dtype=dtype)
    with pytest.raises(ValueError, match=rf"{name}: \w+ must be finite in {np.dtype(dtype)}"):
        NUMBER_CALLS[name](m, number)
    np.testing.assert_array_equal(m.numpy(), np.ones((2, 3)))


def test_in_place_scalars_must_be_numbers():
    m = Matrix.zeros(2, 2)
    with pytest.raises(TypeError):
        m.scale_("2")
    with pytest.raises(TypeError):
        m.fill_(None)
    with pytest.raises(TypeError):
        m.axpy_("x", m)
