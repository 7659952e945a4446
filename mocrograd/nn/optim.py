"""Optimizers: every update is an in-place core kernel on the parameter's Matrix."""
import math
import numbers

import numpy as np

from .._core import Matrix
from ..tensor import Tensor, gradient_factors, has_gradient, no_grad

# A factored gradient G X^T (Tensor.backward(factored=True)) that the step needs whole
# (Adam, SGD with momentum) is formed this many bytes of rows at a time, into one buffer
# that stays in the last-level cache while the step reads it: 8 MB (256 rows of Bigger's
# 4096 x 8192 weight) measured fastest of 1-32 MB, against the whole gradient written to
# memory and read back.
ROW_BLOCK_BYTES = 8 << 20


class Optimizer:
    """Holds the parameters; ``zero_grad()`` clears their gradients, ``step()`` updates them.

    ``params`` is an iterable of Tensors, or of parameter groups as in PyTorch: dicts
    with ``"params"`` (Tensors) and any of the optimizer's hyperparameters, which then
    apply to that group only (the others come from the constructor's arguments). For
    example weight decay on the weights but not on the biases::

        SGD([{"params": weights, "weight_decay": 2e-4}, {"params": biases}], lr=0.01)

    ``param_groups`` holds each group's settings; ``params`` all the parameters, in order.
    A step takes each gradient from ``_gradient_blocks``, which also forms the ones that
    ``backward(factored=True)`` left as factors.
    """

    def __init__(self, params, defaults):
        groups = list(params)
        if not groups:
            raise ValueError("the optimizer got an empty parameter list")
        if not all(isinstance(g, dict) for g in groups):
            if any(isinstance(g, dict) for g in groups):
                raise TypeError("pass either parameters or parameter groups (dicts), not both")
            groups = [{"params": groups}]
        self.defaults = dict(defaults)
        self._check_hyper(self.defaults)
        self.param_groups, seen = [], set()
        for i, group in enumerate(groups):
            unknown = set(group) - {"params"} - set(defaults)
            if "params" not in group or unknown:
                raise ValueError(f"parameter group {i}: " + (f"unknown settings {sorted(unknown)} (this optimizer "
                                 f"has {sorted(defaults)})" if unknown else "no 'params'"))
            members = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
            if not members:
                raise ValueError(f"parameter group {i} has no parameters")
            for p in members:
                if not isinstance(p, Tensor):
                    raise TypeError(f"parameter group {i}: expected Tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"parameter group {i}: a parameter (shape {p.shape}) is in more than one group")
                seen.add(id(p))
            settings = _settings({**self.defaults, **group}, self.defaults)
            self._check_hyper(settings)
            self.param_groups.append({"params": members, **settings})
        self.params = [p for group in self.param_groups for p in group["params"]]
        self._scratch = {}   # dtype -> the buffer factored gradients are formed in (_gradient_blocks)

    def __getattr__(self, name):
        """The constructor's hyperparameters read as attributes (``opt.momentum``, ``opt.betas``)."""
        defaults = self.__dict__.get("defaults", {})
        if name in defaults:
            return defaults[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def lr(self):
        """The learning rate (that of every group; ValueError when the groups differ)."""
        rates = {group["lr"] for group in self.param_groups}
        if len(rates) > 1:
            raise ValueError(f"the parameter groups have different learning rates {sorted(rates)}: "
                             "read them from param_groups")
        return rates.pop()

    @lr.setter
    def lr(self, value):
        """Set the learning rate of every group (a schedule's step)."""
        self._check_hyper(dict(self.defaults, lr=value))
        self.defaults["lr"] = value
        for group in self.param_groups:
            group["lr"] = value

    def _check_hyper(self, settings):
        """ValueError unless ``settings`` are valid hyperparameters (each optimizer adds its own rules)."""
        lr = settings["lr"]
        if not isinstance(lr, numbers.Real) or not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")

    def _each(self):
        """(index in params, parameter, its group) for every parameter, in order."""
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, p, group
                i += 1

    def zero_grad(self, set_to_none=True):
        """Clear gradients: to None (default, as in PyTorch) or to zeros keeping the buffers."""
        for p in self.params:
            p.zero_grad(set_to_none)

    def step(self):
        raise NotImplementedError

    def _gradient_blocks(self, p):
        """(rows, gradient) pairs covering p's gradient in order: ``rows`` a slice of p's
        rows and ``gradient`` those rows of it, a Matrix. A factored gradient (G, X) is
        formed here, ROW_BLOCK_BYTES at a time into a buffer the optimizer keeps; any
        other is one block, p.grad itself. None when p has no gradient."""
        factors = gradient_factors(p)
        if factors is None:
            if p.grad is not None:
                yield slice(None), p.grad.data
            return
        g, x = factors
        rows, cols = p.shape
        step = min(rows, max(1, ROW_BLOCK_BYTES // (cols * p.dtype.itemsize)))
        buffer = self._scratch.get(p.dtype)
        if buffer is None or buffer.size < step * cols:
            buffer = self._scratch[p.dtype] = np.empty(step * cols, dtype=p.dtype)
        g_rows = g.numpy()
        for start in range(0, rows, step):
            end = min(start + step, rows)
            block = Matrix(buffer[:(end - start) * cols].reshape(end - start, cols))
            yield slice(start, end), Matrix(g_rows[start:end]).matmul(x, trans_b=True, out=block)

    # ------------------------------------------------------------- state
    # Each optimizer names its hyperparameters (HYPER), its per-parameter buffers
    # (BUFFERS, lists aligned with params) and any other state (EXTRA, e.g. Adam's steps).
    HYPER = ("lr",)
    BUFFERS = ()
    EXTRA = ()

    def state_dict(self):
        """The state as plain numbers, lists and NumPy arrays (copies): the constructor's
        hyperparameters, ``param_groups`` (each group's size and hyperparameters) and one
        buffer (or None, before the first step) per parameter, in ``params`` order."""
        state = {"type": type(self).__name__, **_settings(self.defaults, self.HYPER, list),
                 **{key: _copied(getattr(self, key)) for key in self.EXTRA},
                 "param_groups": [{"params": len(g["params"]), **_settings(g, self.HYPER, list)}
                                  for g in self.param_groups]}
        for key in self.BUFFERS:
            state[key] = [None if b is None else b.numpy().copy() for b in getattr(self, key)]
        return state

    def load_state_dict(self, state):
        """Restore a ``state_dict()``. Everything is checked before anything is assigned,
        so a bad state (wrong type, count, shape or dtype) leaves the optimizer untouched.
        A state without ``param_groups`` (one group: mocrograd before groups) fits an
        optimizer of one group only."""
        self._check_state(state)
        groups = state.get("param_groups")
        if groups is None:
            if len(self.param_groups) != 1:
                raise ValueError(f"the state has no param_groups (one group), this optimizer has "
                                 f"{len(self.param_groups)}")
            groups = [{"params": len(self.params), **{key: state[key] for key in self.HYPER}}]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            count = len(groups) if isinstance(groups, (list, tuple)) else type(groups).__name__
            raise ValueError(f"param_groups: expected {len(self.param_groups)} groups, got {count}")
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, dict) or saved.get("params") != len(group["params"]):
                size = saved.get("params") if isinstance(saved, dict) else type(saved).__name__
                raise ValueError(f"param_groups[{i}]: expected a group of {len(group['params'])} parameters, "
                                 f"got {size!r}")
            self._check_numbers(saved, f"param_groups[{i}]")
        buffers = {key: self._check_buffers(state, key) for key in self.BUFFERS}
        extra = self._check_consistent(state, buffers)
        # all checked: assign
        self.defaults.update(_settings(state, self.HYPER))
        for saved, group in zip(groups, self.param_groups):
            group.update(_settings(saved, self.HYPER))
        for key, value in extra.items():
            setattr(self, key, value)
        for key, values in buffers.items():
            setattr(self, key, [None if b is None else Matrix(np.array(b, copy=True)) for b in values])

    def _check_state(self, state):
        """state (a dict) checked for this optimizer's type and its hyperparameters."""
        if not isinstance(state, dict):
            raise TypeError(f"an optimizer state must be a dict, got {type(state).__name__}")
        kind = state.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"the state is for a {kind} optimizer, this one is {type(self).__name__}")
        self._check_numbers(state, f"the {kind} state")
        for key in self.EXTRA:
            if key not in state:
                raise KeyError(f"the {kind} state has no {key!r}")

    def _check_numbers(self, settings, where):
        """settings holds every HYPER key, each finite numbers that _check_hyper accepts."""
        for key in self.HYPER:
            if key not in settings:
                raise KeyError(f"{where} has no {key!r}")
            values = settings[key] if key == "betas" else [settings[key]]
            if not isinstance(values, (list, tuple)) or not all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise ValueError(f"{key} must be finite numbers, got {settings[key]!r}")
        self._check_hyper(_settings(settings, self.HYPER))

    def _check_consistent(self, state, buffers):
        """Further checks of a state (its EXTRA values, buffers that go together); returns
        the EXTRA values to assign."""
        return {}

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


def _copied(value):
    """A list copied (state_dict hands out copies), any other value as it is."""
    return list(value) if isinstance(value, list) else value


def _whole(value):
    """True for a whole number >= 0 (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _rows(matrix, rows):
    """Those rows of matrix as a Matrix sharing its memory (matrix itself for all rows)."""
    return matrix if rows == slice(None) else Matrix(matrix.numpy()[rows])


def _settings(source, keys, betas=tuple):
    """The hyperparameters ``keys`` of source (a group, a saved state) with betas made a
    tuple, as the optimizer keeps them, or a list (``betas=list``: JSON-ready, for states)."""
    return {key: betas(source[key]) if key == "betas" else source[key] for key in keys}


class SGD(Optimizer):
    """p -= lr * (g + weight_decay * p), with optional momentum: v = momentum * v + g', p -= lr * v.

    Each step is one compiled pass over p and its gradient (and velocity): weight
    decay costs no extra pass, which is how ``fit`` applies its L2 term. A gradient
    that ``backward(factored=True)`` left as factors G, X, without momentum, is never
    formed: the step is one product into p, p = (1 - lr * weight_decay) p - lr G X^T
    (``Matrix.matmul``'s alpha and beta), one pass over p and none over a gradient."""

    HYPER = ("lr", "momentum", "weight_decay")
    BUFFERS = ("velocity",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.velocity = [None] * len(self.params)

    def _check_hyper(self, settings):
        super()._check_hyper(settings)
        if not settings["momentum"] >= 0 or not settings["weight_decay"] >= 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {settings['momentum']} "
                             f"and {settings['weight_decay']}")

    @no_grad()
    def step(self):
        for i, p, group in self._each():
            factors = gradient_factors(p)
            if factors is not None and not group["momentum"]:
                g, x = factors
                lr = group["lr"]
                g.matmul(x, trans_b=True, out=p.data, accumulate=True, alpha=-lr,
                         beta=1 - lr * group["weight_decay"])
                continue
            for rows, grad in self._gradient_blocks(p):
                velocity = None
                if group["momentum"]:
                    if self.velocity[i] is None:   # zeros: the first step makes it the gradient, as PyTorch's
                        self.velocity[i] = Matrix.zeros(*p.shape, dtype=p.dtype)
                    velocity = _rows(self.velocity[i], rows)
                _rows(p.data, rows).sgd_(grad, group["lr"], group["weight_decay"], velocity, group["momentum"])


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``.

    ``steps[i]`` counts the steps that updated parameter i: a parameter without a
    gradient is skipped and its count stays, so its bias correction starts at its own
    first step (as PyTorch's per-parameter ``step``), however late that comes."""

    HYPER = ("lr", "betas", "eps", "weight_decay")
    BUFFERS = ("m", "v")
    EXTRA = ("steps",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.steps = [0] * len(self.params)
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)

    def _check_hyper(self, settings):
        super()._check_hyper(settings)
        betas = tuple(settings["betas"])
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {settings['betas']}")

    @no_grad()
    def step(self):
        for i, p, group in self._each():
            if not has_gradient(p):
                continue
            self.steps[i] += 1
            b1, b2 = group["betas"]
            corrections = 1 - b1 ** self.steps[i], 1 - b2 ** self.steps[i]
            for rows, grad in self._gradient_blocks(p):
                if self.m[i] is None:
                    self.m[i] = Matrix.zeros(*p.shape, dtype=p.dtype)
                    self.v[i] = Matrix.zeros(*p.shape, dtype=p.dtype)
                _rows(p.data, rows).adam_(grad, _rows(self.m[i], rows), _rows(self.v[i], rows), group["lr"],
                                          b1, b2, group["eps"], *corrections, group["weight_decay"])

    def _check_consistent(self, state, buffers):
        if any((a is None) != (b is None) for a, b in zip(buffers["m"], buffers["v"])):
            raise ValueError("m and v must hold buffers for the same parameters")
        steps, started = state["steps"], [m is not None for m in buffers["m"]]
        if _whole(steps):   # mocrograd before per-parameter counts: one count for the optimizer
            return {"steps": [int(steps) if has else 0 for has in started]}
        if not (isinstance(steps, (list, tuple)) and len(steps) == len(self.params) and all(map(_whole, steps))):
            raise ValueError(f"steps must be {len(self.params)} whole numbers >= 0 (one per parameter), "
                             f"got {steps!r}")
        for i, (count, has) in enumerate(zip(steps, started)):
            if (count > 0) != has:
                raise ValueError(f"steps[{i}] is {count} but m[{i}] is {'a buffer' if has else 'None'}: a "
                                 "parameter has buffers exactly when it has taken steps")
        return {"steps": [int(count) for count in steps]}
