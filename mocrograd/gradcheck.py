"""Check backward() against central finite differences, in float64."""
import numpy as np

from ._core import Matrix
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` when an analytic gradient disagrees with the numerical one."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0):
    """True when the gradients of ``fn(*inputs)`` from backward() match finite differences.

    Each input (a Tensor, array or nested list) is copied to a float64 leaf tensor.
    A non-scalar output is reduced to ``sum(out * W)`` with fixed random weights W, so
    every output element's gradient is checked. Each input element is then moved by
    ``+-eps`` and the central difference ``(f(x+eps) - f(x-eps)) / 2 eps`` compared to
    the analytic gradient with ``|analytic - numeric| <= atol + rtol * |numeric|``.
    Raises ``GradcheckError`` naming the input and element that disagree.

    float64 is what makes this meaningful: in float32 the rounding error of the
    difference quotient (about 1e-7 / eps) swamps any eps small enough to be accurate.
    """
    leaves = [Tensor(np.array(_values(x), dtype=np.float64), requires_grad=True) for x in inputs]
    out = fn(*leaves)
    weights = Tensor(Matrix.rand(*out.shape, seed=seed, dtype=np.float64) + 0.5)

    def objective():
        return (fn(*leaves) * weights).sum().item()

    (out * weights).sum().backward()
    for index, leaf in enumerate(leaves):
        analytic = np.zeros(leaf.shape) if leaf.grad is None else leaf.grad.numpy()
        values = leaf.data.numpy()          # a view: perturb in place
        with no_grad():
            for position in np.ndindex(*leaf.shape):
                original = values[position]
                values[position] = original + eps
                up = objective()
                values[position] = original - eps
                down = objective()
                values[position] = original
                numeric = (up - down) / (2 * eps)
                if not abs(analytic[position] - numeric) <= atol + rtol * abs(numeric):
                    raise GradcheckError(
                        f"gradient of input {index} at {position}: backward gives {analytic[position]:.8g}, "
                        f"finite differences give {numeric:.8g}")
    return True


def _values(x):
    if isinstance(x, Tensor):
        return x.numpy()
    if isinstance(x, Matrix):
        return x.numpy()
    return x
