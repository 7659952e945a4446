"""Tensor: a Matrix that remembers how it was computed, for reverse-mode autograd.

Each operation below is one block: compute the result with one core call, then
(when a gradient is needed) attach a ``_backward`` rule that maps the result's
gradient to the gradients of its inputs, also with core calls. ``backward()``
orders the graph (iteratively: deep networks never hit the recursion limit) and
applies the rules from the output back to the leaves.

Gradients accumulate: each backward pass *adds* to the ``.grad`` of the leaf
tensors (tensors created by the user with ``requires_grad=True``) until
``zero_grad`` clears them, as in PyTorch; ``backward(accumulate=False)`` instead
writes each leaf's gradient over its old one, in the same buffer (a training loop
needs no zeroing pass), and ``factored=True`` leaves a Linear weight's gradient as
the factors of its product for the optimizer to form (``gradient_factors``).
Intermediate results do not keep a ``.grad``; the graph is freed when backward finishes.
"""
import collections
import contextlib
import math
import numbers

import numpy as np

from ._core import Matrix

_grad_enabled = True
_overwrite = set()   # during backward(accumulate=False): ids of the leaves whose .grad the next write replaces
_passes = 0          # backward passes begun: a gradient bound holds for the pass that wrote it
_factor = set()      # during backward(factored=True): ids of the leaves whose product gradient may stay factored


class no_grad(contextlib.ContextDecorator):
    """Context manager and decorator: no graph is recorded inside (inference, optimizer steps)."""

    def __init__(self):
        self._previous = []     # a stack: one instance may be entered again (recursion, reuse)

    def __enter__(self):
        global _grad_enabled
        self._previous.append(_grad_enabled)
        _grad_enabled = False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._previous.pop()
        return False


def is_grad_enabled():
    """False inside ``no_grad()``."""
    return _grad_enabled


def _freed(grad):
    raise RuntimeError("backward() through a graph that was already freed by an earlier backward(); "
                       "compute the result again before calling backward() a second time")


# A backward rule returns this for an input whose gradient it has already added,
# in place, to that leaf's .grad buffer (saving a temporary as big as the input).
ACCUMULATED = object()


def _leaf_grad_buffer(leaf):
    """(buffer, overwrite) for a rule that writes a leaf's gradient straight into its
    ``.grad`` Matrix (zeros the first time): overwrite is True when the rule must replace
    the values (the pass's first write to this leaf under ``backward(accumulate=False)``),
    False when it must add to them. (None, False) when the tensor is not a leaf that
    wants a gradient."""
    if not leaf.requires_grad or leaf._backward is not None:
        return None, False
    overwrite = _claim_write(leaf)
    if leaf.grad is None:
        leaf.grad = Tensor(Matrix.zeros(*leaf.shape, dtype=leaf.dtype))
    return leaf.grad.data, overwrite


def _note_bound(leaf, bound, overwrite, factors=None):
    """Record what a rule just wrote into ``leaf.grad``: ``bound`` (a number no element of
    the write can exceed in magnitude, or None when unknown), replacing the old values
    (``overwrite``) or added to them; ``gradient_bound`` reads the result. ``factors``:
    (G, X) of a gradient left as the product G X^T instead (see gradient_factors)."""
    if not overwrite:
        previous = gradient_bound(leaf)
        bound = None if bound is None or previous is None else previous + bound
    leaf._grad_note = (_passes, bound, factors)


def _claim_write(leaf):
    """Before a rule writes leaf's gradient: True when the write replaces it (the pass's
    first write under ``backward(accumulate=False)``), False when it adds to it. A
    factored gradient (gradient_factors) is formed into ``.grad`` when the write adds to
    it, and forgotten either way."""
    overwrite = id(leaf) in _overwrite
    _overwrite.discard(id(leaf))
    factors = gradient_factors(leaf)
    if factors is not None and not overwrite:
        g, x = factors
        leaf.grad = Tensor(g.matmul(x, trans_b=True))
    if leaf._grad_note is not None:
        leaf._grad_note = leaf._grad_note[:2] + (None,)
    return overwrite


def gradient_bound(leaf):
    """A number no element of leaf's gradient exceeds in magnitude, proved by the latest
    backward pass (e.g. for a Linear weight from the norms of G and X, see
    _product_bound), or None: no proof, the pass did not write the whole gradient, or
    another pass ran since. It describes the gradient as that pass left it: a training
    loop that skips its finiteness scan on a small bound must ask right after backward."""
    note = leaf._grad_note
    return note[1] if note is not None and note[0] == _passes else None


def gradient_factors(leaf):
    """(G, X) when a backward pass with ``factored=True`` left leaf's gradient as the
    product G @ X.T, not formed (``.grad`` is None): until the next pass that writes
    the gradient (one that adds to it forms it first), or ``zero_grad``; else None."""
    note = leaf._grad_note
    return note[2] if note is not None and leaf.grad is None else None


def has_gradient(leaf):
    """True when leaf holds a gradient: in ``.grad`` or as factors (gradient_factors)."""
    return leaf.grad is not None or gradient_factors(leaf) is not None


def proves_finite(bound, dtype):
    """True when ``bound`` (from gradient_bound) shows every element finite: below half
    the dtype's largest value, the half covering the rounding of adding bounds."""
    return bound is not None and bound < float(np.finfo(dtype).max) / 2


def _product_bound(a, b, terms):
    """A bound on the magnitude of every element of a product of a and b whose elements
    are ``terms``-term dot products of a row of one with a row (or column) of the other,
    and of every partial sum a kernel forms on the way, in any order: Cauchy-Schwarz,
    |sum x_i y_i| <= ||x|| ||y|| <= ||a||_F ||b||_F, grown by the worst rounding error
    of a ``terms``-term sum, (1 + eps)^(terms + 1) <= 1 + 2 (terms + 1) eps. NaN or inf
    when an input is not finite (its sum of squares is not). None when the product is
    no bigger than its inputs: scanning it is then no dearer than bounding it."""
    eps = float(np.finfo(a.dtype).eps)
    (a_rows, a_cols), (b_rows, b_cols) = a.shape, b.shape
    if a_rows * b_rows <= a_rows * a_cols + b_rows * b_cols or (terms + 1) * eps >= 0.5:
        return None
    return math.sqrt(a.sum_squares() * b.sum_squares()) * (1.0 + 2.0 * (terms + 1) * eps)


def _shares_memory(matrix, *others):
    """True when any of the Matrices ``others`` may overlap ``matrix`` in memory."""
    array = matrix.numpy()
    return any(np.may_share_memory(array, other.numpy()) for other in others)


def _unbroadcast(grad, shape):
    """Sum grad over the dimensions an operand of ``shape`` was broadcast along."""
    if grad.shape == shape:
        return grad
    if shape == (1, 1):
        return grad.sum()
    return grad.sum(axis=0) if shape[0] == 1 else grad.sum(axis=1)


class Tensor:
    """A 2-D float32/float64 array with reverse-mode automatic differentiation.

    ``Tensor(data, requires_grad=False, dtype=None)`` takes a Matrix (shared, not
    copied), a 2-D NumPy array, nested lists or a Python number (a 1x1 tensor).
    A C-contiguous float32/float64 array of the tensor's dtype is shared too, as
    ``Matrix`` shares it: in-place updates (optimizer steps) write through to it.
    Lists, numbers and arrays of other dtypes are copied; nested lists and numbers
    become float32 unless ``dtype`` says otherwise, arrays keep float32/float64.
    """

    __slots__ = ("data", "grad", "requires_grad", "_prev", "_backward", "_op", "_grad_note", "__weakref__")
    __array_ufunc__ = None  # ndarray + Tensor: NumPy defers to Tensor.__radd__ instead of looping over elements

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, numbers.Real) and not isinstance(data, np.ndarray):
            data = [[data]]
        self.data = data if isinstance(data, Matrix) and dtype is None else Matrix(data, dtype)
        self.grad = None                    # a Tensor once a backward pass reaches this leaf
        self.requires_grad = bool(requires_grad)
        self._prev = ()                     # the tensors this one was computed from
        self._backward = None               # grad of self -> tuple of grads of _prev (None for leaves)
        self._op = ""                       # the operation's name, for repr and debugging
        self._grad_note = None              # (pass, bound, factors) of a leaf's gradient: see _note_bound

    @classmethod
    def _result(cls, data, op, parents, backward):
        """The output of an operation; the graph is recorded only when a parent needs a gradient."""
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out._op = op
        out._grad_note = None
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._prev = parents
            out._backward = backward
        else:
            out.requires_grad = False
            out._prev = ()
            out._backward = None
        return out

    # ------------------------------------------------------------ basics
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def numpy(self):
        """The values as a NumPy array (a view of the data: do not write to it during training)."""
        return self.data.numpy()

    def item(self):
        """The value of a 1x1 tensor as a Python float."""
        if self.data.shape != (1, 1):
            raise ValueError(f"item() needs a 1x1 tensor, this one has shape {self.data.shape}")
        return float(self.data.numpy()[0, 0])

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self, set_to_none=True):
        """Forget the accumulated gradient (a factored one too: see backward); with
        ``set_to_none=False`` a gradient there is zeroed instead (in its buffer, or a new
        one for a factored gradient), so that a following step sees zeros, as in PyTorch."""
        if set_to_none or not has_gradient(self):
            self.grad = None
            self._grad_note = None
        elif self.grad is None:
            self.grad = Tensor(Matrix.zeros(*self.shape, dtype=self.dtype))
            self._grad_note = None
        else:
            self.grad.data.zero_()

    def __repr__(self):
        values = np.array2string(self.data.numpy(), precision=4, threshold=24, edgeitems=2, prefix="Tensor(")
        extra = f", op={self._op!r}" if self._op else (", requires_grad=True" if self.requires_grad else "")
        return f"Tensor({values}{extra})"

    # ------------------------------------------------------- arithmetic
    def __matmul__(self, other):
        other = _as_tensor(other, self)
        a, b = self.data, other.data
        return Tensor._result(a @ b, "matmul", (self, other), lambda g: (
            g.matmul(b, trans_b=True) if self.requires_grad else None,   # dA = G B^T
            a.matmul(g, trans_a=True) if other.requires_grad else None)) # dB = A^T G

    def __add__(self, other):
        other = _as_tensor(other, self)
        sa, sb = self.shape, other.shape
        return Tensor._result(self.data + other.data, "add", (self, other),
                              lambda g: (_unbroadcast(g, sa), _unbroadcast(g, sb)))

    def __sub__(self, other):
        other = _as_tensor(other, self)
        sa, sb = self.shape, other.shape
        return Tensor._result(self.data - other.data, "sub", (self, other),
                              lambda g: (_unbroadcast(g, sa), _unbroadcast(-g, sb)))

    def __mul__(self, other):
        other = _as_tensor(other, self)
        a, b = self.data, other.data
        return Tensor._result(a * b, "mul", (self, other), lambda g: (
            _unbroadcast(g * b, a.shape) if self.requires_grad else None,
            _unbroadcast(g * a, b.shape) if other.requires_grad else None))

    def __truediv__(self, other):
        other = _as_tensor(other, self)
        a, b = self.data, other.data
        return Tensor._result(a / b, "div", (self, other), lambda g: (
            _unbroadcast(g / b, a.shape) if self.requires_grad else None,
            _unbroadcast(-(g * a) / (b * b), b.shape) if other.requires_grad else None))

    def __pow__(self, exponent):
        if not isinstance(exponent, numbers.Real):
            raise TypeError(f"Tensor ** needs a number exponent, got {type(exponent).__name__}")
        x = self.data
        if exponent == 0:  # constant 1: zero gradient (x ** -1 * 0 would be NaN at x = 0)
            return Tensor._result(x ** 0, "pow 0", (self,), lambda g: (Matrix.zeros(*x.shape, dtype=x.dtype),))
        return Tensor._result(x ** exponent, f"pow {exponent}", (self,),
                              lambda g: (g * (x ** (exponent - 1)) * exponent,))

    def __neg__(self):
        return Tensor._result(-self.data, "neg", (self,), lambda g: (-g,))

    def __rmatmul__(self, other):  # other @ self
        return _as_tensor(other, self) @ self

    def __radd__(self, other):  # other + self
        return _as_tensor(other, self) + self

    def __rsub__(self, other):  # other - self
        return _as_tensor(other, self) - self

    def __rmul__(self, other):  # other * self
        return _as_tensor(other, self) * self

    def __rtruediv__(self, other):  # other / self
        return _as_tensor(other, self) / self

    # ------------------------------------------------------- reductions
    def sum(self, axis=None):
        """Sum over everything (1x1), axis 0 (1, cols) or axis 1 (rows, 1)."""
        shape, dtype = self.shape, self.dtype
        return Tensor._result(self.data.sum(axis), "sum", (self,),
                              lambda g: (Matrix.zeros(*shape, dtype=dtype) + g,))

    def sum_squares(self):
        """sum(self ** 2) as a 1x1 tensor, without a temporary the size of self (for L2 penalties)."""
        x = self.data

        def backward(g):   # d/dx = 2 x g, added straight into a leaf's gradient when possible
            buffer, overwrite = _leaf_grad_buffer(self)
            if buffer is not None:
                scale = 2.0 * g.numpy()[0, 0]
                if overwrite:
                    buffer.copy_(x, scale)
                else:
                    buffer.axpy_(scale, x)
                _note_bound(self, None, overwrite)
                return (ACCUMULATED,)
            return (x * (2.0 * g.numpy()[0, 0]),)
        return Tensor._result(Matrix.full(1, 1, x.sum_squares(), dtype=x.dtype), "sum_squares", (self,), backward)

    def mean(self, axis=None):
        """Mean over everything (1x1), axis 0 (1, cols) or axis 1 (rows, 1)."""
        rows, cols = self.shape
        count = rows * cols if axis is None else (rows if axis in (0, -2) else cols)
        return self.sum(axis) * (1.0 / count)

    # ------------------------------------------------ element-wise maps
    def relu(self):
        x = self.data
        return Tensor._result(x.relu(), "relu", (self,), lambda g: (x.relu_grad(g),))

    def exp(self):
        y = self.data.exp()
        return Tensor._result(y, "exp", (self,), lambda g: (g * y,))

    def log(self):
        x = self.data
        return Tensor._result(x.log(), "log", (self,), lambda g: (g / x,))

    def log_softmax(self, axis=0):
        """log(softmax) along axis; axis 0 (default): each column is one example's distribution."""
        y = self.data.log_softmax(axis)
        return Tensor._result(y, "log_softmax", (self,), lambda g: (y.log_softmax_grad(g, axis),))

    # --------------------------------------------------------- backward
    def backward(self, gradient=None, accumulate=True, factored=False):
        """Accumulate d(self)/d(leaf) into the ``.grad`` of every leaf that requires a gradient.

        ``self`` must be 1x1 unless ``gradient`` (a Tensor, Matrix or array of self's
        shape) is given. The graph is freed afterwards.

        ``accumulate=False``: each leaf's ``.grad`` becomes this pass's gradient, written
        over the old values in the same buffer: what ``zero_grad(set_to_none=False)``
        then ``backward()`` give, without the zeroing pass and the read of the zeros
        (on the Bigger network, two passes over 170 MB per step). Leaves the pass does
        not reach keep their ``.grad``. Someone holding an old ``.grad`` sees it change.

        ``factored=True`` (with ``accumulate=False``): a Linear weight that the graph
        uses once and whose gradient dW = G X^T is proved finite (gradient_bound) keeps
        it as its factors: ``.grad`` becomes None and ``gradient_factors(w)`` gives
        (G, X). Adam and SGD with momentum form such a gradient a block of rows at a
        time inside their step, and SGD without momentum adds it into the weight as one
        product, so the weight gradients never travel to memory (``fit`` does this).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require a gradient "
                               "(no input had requires_grad=True, or it was computed under no_grad())")
        if gradient is None:
            if self.shape != (1, 1):
                raise ValueError(f"backward() without a gradient needs a 1x1 tensor, this one has shape "
                                 f"{self.shape}; pass gradient= of that shape or reduce with .sum()")
            seed = Matrix.full(1, 1, 1.0, dtype=self.dtype)
        else:
            seed = _as_tensor(gradient, self).data
            if seed.shape != self.shape:
                raise ValueError(f"backward(): gradient has shape {seed.shape}, the tensor has shape {self.shape}")
        if factored and accumulate:
            raise ValueError("backward(factored=True) needs accumulate=False: a factored gradient replaces the old one")
        order = _topological_order(self)
        global _passes
        _passes += 1
        if not accumulate:
            _overwrite.update(id(node) for node in order if node._backward is None)
        if factored:   # leaves used by exactly one operation: no other rule adds to their gradient
            uses = collections.Counter(id(parent) for node in order for parent in node._prev)
            _factor.update(id(node) for node in order if node._backward is None and uses[id(node)] == 1)
        try:
            _apply_rules(order, {id(self): seed})
        finally:
            _overwrite.clear()
            _factor.clear()


def _apply_rules(order, grads):
    """Run the backward rules in ``order`` (root first), from ``grads`` ({id: gradient},
    the root's seed), accumulating into (or, for ids in _overwrite, replacing) the
    leaves' .grad, and free the graph as it goes."""
    for node in order:
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._backward is None:       # a leaf: accumulate into (or replace) .grad
            overwrite = _claim_write(node) or node.grad is None
            if node.grad is None:
                node.grad = Tensor(g.copy())
            elif overwrite:
                node.grad.data.copy_(g)
            else:
                node.grad.data.axpy_(1.0, g)
            _note_bound(node, None, overwrite)
            continue
        for parent, parent_grad in zip(node._prev, node._backward(g)):
            if parent_grad is None or parent_grad is ACCUMULATED or not parent.requires_grad:
                continue
            key = id(parent)
            grads[key] = grads[key] + parent_grad if key in grads else parent_grad
        node._prev = ()                 # free the graph as we go
        node._backward = _freed


def linear(x, weight, bias, relu=False):
    """weight @ x + bias, then relu when asked: a Linear layer as one graph node.

    Forward is one fused core call. Backward runs the three products of a layer:
    dX = W^T G, dW = G X^T (added straight into W's gradient buffer when W is a leaf,
    with a bound on its elements from G and X: see gradient_bound; or left as (G, X):
    see backward's ``factored``) and db = row sums of G, after masking G by the relu."""
    x = _as_tensor(x, weight)   # a Matrix or array batch too, as weight @ x accepts
    w, xm, b = weight.data, x.data, bias.data
    y = w.linear(xm, b, relu)

    def backward(g):
        if relu:
            g = y.relu_grad(g)          # y > 0 exactly where the pre-activation was > 0
        dx = w.matmul(g, trans_a=True) if x.requires_grad else None
        db = g.sum(axis=1) if bias.requires_grad else None
        if not (weight.requires_grad and weight._backward is None):   # not a leaf: through the graph
            return dx, (g.matmul(xm, trans_b=True) if weight.requires_grad else None), db
        bound = _product_bound(g, xm, xm.shape[1])
        # Factors that share the weight's memory (x a view of W) would change while the
        # step writes W: such a gradient is formed here, before any step.
        if id(weight) in _factor and proves_finite(bound, weight.dtype) and not _shares_memory(w, g, xm):
            weight.grad = None
            _note_bound(weight, bound, True, (g, xm))
        else:
            w_buffer, overwrite = _leaf_grad_buffer(weight)
            g.matmul(xm, trans_b=True, out=w_buffer, accumulate=not overwrite)
            _note_bound(weight, bound, overwrite)
        return dx, ACCUMULATED, db
    return Tensor._result(y, "linear_relu" if relu else "linear", (x, weight, bias), backward)


def _topological_order(root):
    """Nodes reachable from root, each after all nodes computed from it (root first)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._prev:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    order.reverse()
    return order


def _as_tensor(value, like):
    """value as a Tensor of like's dtype: numbers become 1x1 constants."""
    if isinstance(value, Tensor):
        if value.dtype != like.dtype:
            raise TypeError(f"operands have different dtypes ({like.dtype} and {value.dtype}); "
                            "convert one with Tensor(x.data.astype(...))")
        return value
    if isinstance(value, numbers.Real):
        return Tensor(Matrix.full(1, 1, value, dtype=like.dtype))
    if isinstance(value, (Matrix, np.ndarray, list)):
        return Tensor(value, dtype=like.dtype)
    raise TypeError(f"expected a Tensor, Matrix, array or number, got {type(value).__name__}")
