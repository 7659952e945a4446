"""The naive kernels: the readable reference.

Straightforward loops, one thread, no blocking: what a first implementation of
each operation looks like. Every other variant is tested against NumPy, and
this one is what they should agree with. ``workers`` is accepted (the shared
signature) and ignored.
"""
from cython cimport floating
from libc.math cimport exp, log, pow, sqrt, INFINITY

from .ops cimport *


cdef inline double _unary_op(int op, double x, double s) noexcept nogil:
    if op == ADD_SCALAR:
        return x + s
    if op == MUL_SCALAR:
        return x * s
    if op == POW_SCALAR:
        return pow(x, s)
    if op == RDIV_SCALAR:
        return s / x
    if op == NEG:
        return -x
    if op == EXP:
        return exp(x)
    if op == LOG:
        return log(x)
    if op == RELU:
        return 0.0 if x < 0 else x   # NaN stays NaN, as in NumPy
    return 1.0 if x > 0 else 0.0  # RELU_MASK


cdef int matmul(const floating[:, ::1] a, bint trans_a, const floating[:, ::1] b, bint trans_b,
                 floating[:, ::1] out, double alpha, double beta, int workers) noexcept nogil:
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t i, j, p
    cdef floating total, a_ip, b_pj
    for i in range(m):
        for j in range(n):
            total = 0
            for p in range(k):
                a_ip = a[p, i] if trans_a else a[i, p]
                b_pj = b[j, p] if trans_b else b[p, j]
                total = total + a_ip * b_pj
            if beta == 0:   # out is not read
                out[i, j] = <floating>alpha * total
            else:
                out[i, j] = <floating>beta * out[i, j] + <floating>alpha * total
    return 0


cdef void binary(int op, const floating[:, ::1] a, const floating[:, ::1] b,
                 floating[:, ::1] out, int workers) noexcept nogil:
    # A broadcast operand repeats its only row or column: index it with 0.
    cdef Py_ssize_t ar = a.shape[0] > 1, ac = a.shape[1] > 1
    cdef Py_ssize_t br = b.shape[0] > 1, bc = b.shape[1] > 1
    cdef Py_ssize_t i, j
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = _apply_binary(op, a[i * ar, j * ac], b[i * br, j * bc])


cdef void unary(int op, const floating[:, ::1] x, double scalar,
                floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = <floating>_unary_op(op, x[i, j], <floating>scalar)   # the number in x's dtype, as NumPy


cdef void relu_grad(const floating[:, ::1] x, const floating[:, ::1] g,
                    floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = g[i, j] if x[i, j] > 0 else 0


cdef void reduce(int op, int axis, const floating[:, ::1] x,
                 floating[:, ::1] out, int workers) noexcept nogil:
    # Sums accumulate in double; the result is written to out[i * orow, j * ocol].
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], i, j
    cdef Py_ssize_t keep_rows = axis == 1, keep_cols = axis == 0
    cdef double value
    if axis == ALL:
        value = 0.0 if op == SUM else -INFINITY
        for i in range(rows):
            for j in range(cols):
                value = value + x[i, j] if op == SUM else _max_nan(value, x[i, j])
        out[0, 0] = <floating>value
    elif axis == 0:
        for j in range(cols):
            value = 0.0 if op == SUM else -INFINITY
            for i in range(rows):
                value = value + x[i, j] if op == SUM else _max_nan(value, x[i, j])
            out[0, j] = <floating>value
    else:
        for i in range(rows):
            value = 0.0 if op == SUM else -INFINITY
            for j in range(cols):
                value = value + x[i, j] if op == SUM else _max_nan(value, x[i, j])
            out[i, 0] = <floating>value


cdef void argmax(int axis, const floating[:, ::1] x, Py_ssize_t[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t i, j, best
    if axis == 0:
        for j in range(x.shape[1]):
            best = 0
            for i in range(1, x.shape[0]):
                if _argmax_beats(x[i, j], x[best, j]):
                    best = i
            out[0, j] = best
    else:
        for i in range(x.shape[0]):
            best = 0
            for j in range(1, x.shape[1]):
                if _argmax_beats(x[i, j], x[i, best]):
                    best = j
            out[i, 0] = best


cdef void log_softmax(int axis, const floating[:, ::1] x, floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double top, total, shift
    if axis == 0:
        for j in range(x.shape[1]):
            top = -INFINITY
            for i in range(x.shape[0]):
                top = _max_nan(top, x[i, j])
            total = 0.0
            for i in range(x.shape[0]):
                total = total + exp(x[i, j] - top)
            shift = log(total)   # subtracted after top: top + log(total) would round log(total) away
            for i in range(x.shape[0]):
                out[i, j] = <floating>((x[i, j] - top) - shift)
    else:
        for i in range(x.shape[0]):
            top = -INFINITY
            for j in range(x.shape[1]):
                top = _max_nan(top, x[i, j])
            total = 0.0
            for j in range(x.shape[1]):
                total = total + exp(x[i, j] - top)
            shift = log(total)
            for j in range(x.shape[1]):
                out[i, j] = <floating>((x[i, j] - top) - shift)


cdef void log_softmax_grad(int axis, const floating[:, ::1] y, const floating[:, ::1] g,
                           floating[:, ::1] out, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double total
    if axis == 0:
        for j in range(y.shape[1]):
            total = 0.0
            for i in range(y.shape[0]):
                total = total + g[i, j]
            for i in range(y.shape[0]):
                out[i, j] = <floating>(g[i, j] - exp(y[i, j]) * total)
    else:
        for i in range(y.shape[0]):
            total = 0.0
            for j in range(y.shape[1]):
                total = total + g[i, j]
            for j in range(y.shape[1]):
                out[i, j] = <floating>(g[i, j] - exp(y[i, j]) * total)


cdef void axpy(double alpha, const floating[:, ::1] x, floating[:, ::1] y, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] = <floating>(y[i, j] + alpha * x[i, j])


cdef void scale(double alpha, floating[:, ::1] y, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] = <floating>(alpha * y[i, j])


cdef void fill(double value, floating[:, ::1] y, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] = <floating>value


cdef void copy(double alpha, const floating[:, ::1] x, floating[:, ::1] y, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating a = <floating>alpha
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] = a * x[i, j]


cdef void sgd(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] v, bint use_velocity,
              double lr, double momentum, double weight_decay, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating d, rate = <floating>lr, mu = <floating>momentum, wd = <floating>weight_decay
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            d = g[i, j] + wd * p[i, j] if weight_decay != 0 else g[i, j]
            if use_velocity:
                v[i, j] = mu * v[i, j] + d
                d = v[i, j]
            p[i, j] = p[i, j] - rate * d


cdef void adam(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] m, floating[:, ::1] v,
               double lr, double beta1, double beta2, double eps, double correction1, double correction2,
               double weight_decay, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double grad
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            grad = g[i, j] + weight_decay * p[i, j]
            m[i, j] = <floating>(beta1 * m[i, j] + (1 - beta1) * grad)
            v[i, j] = <floating>(beta2 * v[i, j] + (1 - beta2) * grad * grad)
            p[i, j] = <floating>(p[i, j] - lr / correction1 * m[i, j] / (sqrt(v[i, j] / correction2) + eps))


cdef double sum_squares(const floating[:, ::1] x, int workers) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            total = total + <double>x[i, j] * x[i, j]
    return total


cdef int linear(const floating[:, ::1] w, const floating[:, ::1] x, const floating[:, ::1] bias,
                floating[:, ::1] out, bint relu, int workers) noexcept nogil:
    # The product (the matmul above), then the bias and the activation.
    cdef Py_ssize_t i, j
    cdef floating total
    matmul(w, False, x, False, out, 1.0, 0.0, 1)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            total = out[i, j] + bias[i, 0]
            out[i, j] = 0 if (relu and total < 0) else total
    return 0
