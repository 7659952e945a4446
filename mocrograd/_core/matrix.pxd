cdef class Matrix:
    cdef readonly object array        # the NumPy array that owns the data
    cdef float[:, ::1] f32            # set when the dtype is float32
    cdef double[:, ::1] f64           # set when the dtype is float64
    cdef readonly Py_ssize_t rows, cols
    cdef bint is64
    cdef Py_ssize_t _buffer_shape[2]
    cdef Py_ssize_t _buffer_strides[2]
    cdef Matrix _binary_op(self, int op, other, bint reflected, str name)
    cdef Matrix _unary_op(self, int op, double scalar)
    cdef Matrix _reduce_op(self, int op, axis)
    cdef Matrix _update_op(self, int kind, double alpha, Matrix x)
