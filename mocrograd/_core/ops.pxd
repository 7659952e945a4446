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
