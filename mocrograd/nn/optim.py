"""Optimizers: every update is an in-place core kernel on the parameter's Matrix."""
import math
import numbers

import numpy as np

from .._core import Matrix
from ..tensor import no_grad


class Optimizer:
    """Holds the parameters; ``zero_grad()`` clears their gradients, ``step()`` updates them."""

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got an empty parameter list")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = lr

    def zero_grad(self, set_to_none=True):
        """Clear gradients: to None (default, as in PyTorch) or to zeros keeping the buffers."""
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data.zero_()

    def step(self):
        raise NotImplementedError

    def state_dict(self):
        """The state as plain numbers and NumPy arrays (copies): hyperparameters and one
        buffer (or None, before the first step) per parameter, in ``params`` order."""
        raise NotImplementedError(f"{type(self).__name__} does not define state_dict()")

    def load_state_dict(self, state):
        """Restore a ``state_dict()``. Everything is checked before anything is assigned,
        so a bad state (wrong type, count, shape or dtype) leaves the optimizer untouched."""
        raise NotImplementedError(f"{type(self).__name__} does not define load_state_dict()")

    def _check_state(self, state, hyper):
        """state (a dict) checked for this optimizer's type and the ``hyper`` keys, each a finite number."""
        if not isinstance(state, dict):
            raise TypeError(f"an optimizer state must be a dict, got {type(state).__name__}")
        kind = state.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"the state is for a {kind} optimizer, this one is {type(self).__name__}")
        for key in hyper:
            if key not in state:
                raise KeyError(f"the {kind} state has no {key!r}")
            values = state[key] if key == "betas" else [state[key]]
            if not isinstance(values, (list, tuple)) or not all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise ValueError(f"{key} must be finite numbers, got {state[key]!r}")
        if not state["lr"] > 0:
            raise ValueError(f"lr must be > 0, got {state['lr']}")

    def _check_buffers(self, state, key):
        """state[key]: one array (or None) per parameter, each of its parameter's shape and dtype."""
        buffers = state.get(key)
        if not isinstance(buffers, (list, tuple)) or len(buffers) != len(self.params):
            count = len(buffers) if isinstance(buffers, (list, tuple)) else type(buffers).__name__
            raise ValueError(f"{key}: expected a list of {len(self.params)} buffers (one per parameter), "
                             f"got {count}")
        checked = []
        for i, (p, buffer) in enumerate(zip(self.params, buffers)):
            if buffer is None:
                checked.append(None)
                continue
            if not isinstance(buffer, (np.ndarray, Matrix)):
                raise TypeError(f"{key}[{i}]: expected an array or None, got {type(buffer).__name__}")
            value = np.asarray(buffer)
            if value.shape != tuple(p.shape):
                raise ValueError(f"{key}[{i}]: shape {value.shape}, the parameter has shape {tuple(p.shape)}")
            if value.dtype != p.dtype:
                raise TypeError(f"{key}[{i}]: dtype {value.dtype}, the parameter has dtype {p.dtype}")
            checked.append(value)
        return checked

    @staticmethod
    def _export(buffers):
        return [None if b is None else b.numpy().copy() for b in buffers]

    @staticmethod
    def _import(buffers):
        return [None if b is None else Matrix(np.array(b, copy=True)) for b in buffers]


class SGD(Optimizer):
    """p -= lr * (g + weight_decay * p), with optional momentum: v = momentum * v + g'."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum} and {weight_decay}")
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = [None] * len(self.params)

    @no_grad()
    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.data
            if self.weight_decay:
                g = g.copy().axpy_(self.weight_decay, p.data)
            if self.momentum:
                if self.velocity[i] is None:
                    self.velocity[i] = g.copy()
                else:
                    self.velocity[i].scale_(self.momentum).axpy_(1.0, g)
                g = self.velocity[i]
            p.data.axpy_(-self.lr, g)

    def state_dict(self):
        return {"type": type(self).__name__, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "velocity": self._export(self.velocity)}

    def load_state_dict(self, state):
        self._check_state(state, ("lr", "momentum", "weight_decay"))
        if state["momentum"] < 0 or state["weight_decay"] < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {state['momentum']} "
                             f"and {state['weight_decay']}")
        velocity = self._check_buffers(state, "velocity")
        self.lr, self.momentum, self.weight_decay = state["lr"], state["momentum"], state["weight_decay"]
        self.velocity = self._import(velocity)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.steps = 0
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)

    @no_grad()
    def step(self):
        self.steps += 1
        b1, b2 = self.betas
        correction1 = 1 - b1 ** self.steps
        correction2 = 1 - b2 ** self.steps
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.m[i] is None:
                self.m[i] = Matrix.zeros(*p.shape, dtype=p.dtype)
                self.v[i] = Matrix.zeros(*p.shape, dtype=p.dtype)
            p.data.adam_(p.grad.data, self.m[i], self.v[i], self.lr, b1, b2, self.eps,
                         correction1, correction2, self.weight_decay)

    def state_dict(self):
        return {"type": type(self).__name__, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "steps": self.steps,
                "m": self._export(self.m), "v": self._export(self.v)}

    def load_state_dict(self, state):
        self._check_state(state, ("lr", "betas", "eps", "weight_decay", "steps"))
        betas = tuple(state["betas"])
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {state['betas']}")
        steps = state["steps"]
        if not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
        m, v = self._check_buffers(state, "m"), self._check_buffers(state, "v")
        if any((a is None) != (b is None) for a, b in zip(m, v)):
            raise ValueError("m and v must hold buffers for the same parameters")
        self.lr, self.betas, self.eps = state["lr"], betas, state["eps"]
        self.weight_decay, self.steps = state["weight_decay"], int(steps)
        self.m, self.v = self._import(m), self._import(v)
