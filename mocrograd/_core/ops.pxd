from cython cimport floating

# Operation codes shared by the kernels and their dispatch in matrix.pyx.

cdef enum BinaryOp:
    ADD = 0
    SUB = 1
    MUL = 2
    DIV = 3

cdef enum UnaryOp:
    ADD_SCALAR = 0   # x + s
    MUL_SCALAR = 1   # x * s
    POW_SCALAR = 2   # x ** s
    RDIV_SCALAR = 3  # s / x
    NEG = 4
    EXP = 5
    LOG = 6
    RELU = 7
    RELU_MASK = 8    # 1 where x > 0, else 0

cdef enum ReduceOp:
    SUM = 0
    MAX = 1

# Reduction axes: ALL gives a 1x1 result, 0 a (1, cols) row, 1 a (rows, 1) column.
cdef enum:
    ALL = -1


# Comparisons with NumPy's NaN rules, shared by every variant's reductions.

cdef inline double _max_nan(double best, double v) noexcept nogil:
    """max that propagates NaN, as NumPy's max does."""
    if v > best or v != v:
        return v
    return best


cdef inline bint _argmax_beats(double v, double best) noexcept nogil:
    """Does v replace the running argmax best? As np.argmax: the first NaN wins, ties keep the first."""
    return best == best and (v > best or v != v)


cdef inline floating _apply_binary(int op, floating a, floating b) noexcept nogil:
    """One element of a binary kernel: a single IEEE operation, so every variant agrees bit for bit."""
    if op == ADD:
        return a + b
    if op == SUB:
        return a - b
    if op == MUL:
        return a * b
    return a / b
