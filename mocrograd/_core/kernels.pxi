# The one set of kernel signatures. naive.pxd and optimized.pxd include this
# file, so both variants implement exactly these functions; `dynamic` is the
# optimized code with a worker count chosen from the shape (see matrix.pyx).
#
# Conventions: every matrix is 2-D and C-contiguous; `out` is written (never
# read, unless a kernel says it accumulates); shapes were checked by the caller
# before the GIL was released. `workers` is the number of independent chunks
# the output is cut into (the naive variant ignores it and uses one thread).
from cython cimport floating

# out = alpha * op(a) @ op(b) + beta * out, op(x) = x.T when the flag is set (BLAS's
# gemm); out is not read when beta is 0. Returns 0, or -1 when its workspace could not
# be allocated (out is then untouched).
cdef int matmul(const floating[:, ::1] a, bint trans_a, const floating[:, ::1] b, bint trans_b,
                 floating[:, ::1] out, double alpha, double beta, int workers) noexcept nogil

# out = a (op) b, where a and b are out's shape or broadcast to it from (r, 1), (1, c) or (1, 1).
cdef void binary(int op, const floating[:, ::1] a, const floating[:, ::1] b,
                 floating[:, ::1] out, int workers) noexcept nogil

# out = f(x) element-wise, with a scalar for the *_SCALAR ops.
cdef void unary(int op, const floating[:, ::1] x, double scalar,
                floating[:, ::1] out, int workers) noexcept nogil

# out = g where x > 0, else 0: the gradient of relu.
cdef void relu_grad(const floating[:, ::1] x, const floating[:, ::1] g,
                    floating[:, ::1] out, int workers) noexcept nogil

# out = sum or max of x over ALL (1x1), axis 0 (1, c) or axis 1 (r, 1).
cdef void reduce(int op, int axis, const floating[:, ::1] x,
                 floating[:, ::1] out, int workers) noexcept nogil

# out = index of the first maximum along an axis (0: shape (1, c); 1: shape (r, 1)).
cdef void argmax(int axis, const floating[:, ::1] x, Py_ssize_t[:, ::1] out, int workers) noexcept nogil

# out = x - log(sum(exp(x))) along an axis, with the max subtracted first.
cdef void log_softmax(int axis, const floating[:, ::1] x, floating[:, ::1] out, int workers) noexcept nogil

# out = g - exp(y) * sum(g) along the axis, where y = log_softmax(x): its backward.
cdef void log_softmax_grad(int axis, const floating[:, ::1] y, const floating[:, ::1] g,
                           floating[:, ::1] out, int workers) noexcept nogil

# In-place updates: y += alpha * x; y *= alpha; y = value; y = alpha * x.
cdef void axpy(double alpha, const floating[:, ::1] x, floating[:, ::1] y, int workers) noexcept nogil
cdef void scale(double alpha, floating[:, ::1] y, int workers) noexcept nogil
cdef void fill(double value, floating[:, ::1] y, int workers) noexcept nogil
cdef void copy(double alpha, const floating[:, ::1] x, floating[:, ::1] y, int workers) noexcept nogil

# One SGD step on every element: d = g + weight_decay * p (just g when weight_decay
# is 0); with velocity (use_velocity), v = momentum * v + d and d = v; then
# p -= lr * d. v is neither read nor written without use_velocity. One pass over
# p, g (and v): weight decay costs no extra pass over the parameters.
cdef void sgd(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] v, bint use_velocity,
              double lr, double momentum, double weight_decay, int workers) noexcept nogil

# One Adam step on every element: g' = g + weight_decay * p; m = b1 m + (1 - b1) g';
# v = b2 v + (1 - b2) g'^2; p -= lr / c1 * m / (sqrt(v / c2) + eps), c1 and c2 being
# the bias corrections 1 - b1^t and 1 - b2^t.
cdef void adam(floating[:, ::1] p, const floating[:, ::1] g, floating[:, ::1] m, floating[:, ::1] v,
               double lr, double beta1, double beta2, double eps, double correction1, double correction2,
               double weight_decay, int workers) noexcept nogil

# The sum of x * x over every element, accumulated in double: the L2 penalty
# without a temporary x * x matrix.
cdef double sum_squares(const floating[:, ::1] x, int workers) noexcept nogil

# out = w @ x + bias, bias being a (rows, 1) column repeated along the columns,
# then max(out, 0) when relu: a Linear layer (and its activation) in one call.
# Returns 0, or -1 when the matmul workspace could not be allocated.
cdef int linear(const floating[:, ::1] w, const floating[:, ::1] x, const floating[:, ::1] bias,
                floating[:, ::1] out, bint relu, int workers) noexcept nogil
