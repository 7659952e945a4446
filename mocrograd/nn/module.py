"""Module (the base of every layer and model) and Linear."""
import numpy as np

from .. import random
from .._core import Matrix
from ..tensor import Tensor, linear


class Module:
    """Base class: finds its parameters by walking its attributes, like tinygrad's nn.state.

    A subclass sets Tensor parameters, sub-Modules or lists of Modules as attributes
    and defines ``forward``; calling the module calls ``forward``.
    """

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def named_tensors(self, prefix=""):
        """(name, Tensor) pairs of every Tensor attribute in definition order, e.g.
        ('layers.0.weight', W): the module's state, frozen tensors (``requires_grad``
        False) included, as PyTorch's ``state_dict`` keeps frozen parameters. A tensor
        reached twice (a shared layer) is named once, by its first name, as in PyTorch."""
        seen = set()
        for name, value in self._every_tensor(prefix):
            if id(value) not in seen:
                seen.add(id(value))
                yield name, value

    def _every_tensor(self, prefix):
        """named_tensors' walk, with a shared tensor as often as it is reached."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._every_tensor(f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item._every_tensor(f"{prefix}{name}.{i}.")

    def named_parameters(self, prefix=""):
        """The trainable (``requires_grad``) pairs of ``named_tensors``."""
        return ((name, p) for name, p in self.named_tensors(prefix) if p.requires_grad)

    def parameters(self):
        """The trainable tensors, in definition order."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self, set_to_none=True):
        """Clear the gradients of all parameters (to None, or to zeros keeping the buffers)."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    def train(self, mode=True):
        """Set training mode (and return self); ``eval()`` turns it off."""
        self.training = mode
        for value in vars(self).values():
            children = value if isinstance(value, (list, tuple)) else [value]
            for child in children:
                if isinstance(child, Module):
                    child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """name -> copy of the tensor's values as a 2-D NumPy array, for every tensor of
        ``named_tensors`` (frozen ones too)."""
        return {name: p.numpy().copy() for name, p in self.named_tensors()}

    def load_state_dict(self, state, strict=True):
        """Copy values in by name. Every name, shape and dtype is checked before anything is
        assigned, so a bad state leaves the module untouched. ``strict``: names must match exactly."""
        params = dict(self.named_tensors())
        missing = [name for name in params if name not in state]
        unexpected = [name for name in state if name not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"state does not match the model: missing {missing}, unexpected {unexpected}")
        checked = {}
        for name, param in params.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != param.shape:
                raise ValueError(f"{name}: the state has shape {value.shape}, the model needs {param.shape}")
            if value.dtype.kind != "f":
                raise TypeError(f"{name}: the state has dtype {value.dtype}, a float array is needed")
            checked[name] = value
        for name, value in checked.items():
            params[name].data.copy_(Matrix(value, dtype=params[name].dtype))

    def save(self, path):
        """Write the parameters to ``path`` (a NumPy .npz, see ``mocrograd.checkpoint``).

        The write is atomic: a temporary file in the same directory is fsync'ed and
        then renamed over ``path``, so a crash leaves the old file or the new one."""
        from ..checkpoint import save_model
        save_model(self, path)

    def load(self, path):
        """Read parameters written by ``save`` (or a training checkpoint) and return self.

        Names, shapes and dtypes are checked before anything is assigned: a missing,
        truncated, corrupted or other model's file raises ``CheckpointError`` (a
        ValueError) and leaves the module untouched."""
        from ..checkpoint import load_model
        return load_model(self, path)

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, value in vars(self).items():
            if isinstance(value, Module):
                lines.append(f"  ({name}): {value!r}".replace("\n", "\n  "))
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Module):
                lines.append(f"  ({name}): {len(value)} x [{value[0]!r}, ...]" if len(value) > 4 else
                             "\n".join(f"  ({name}.{i}): {m!r}" for i, m in enumerate(value)))
        return "\n".join(lines) + "\n)" if len(lines) > 1 else f"{type(self).__name__}()"


class Linear(Module):
    """y = W x + b, with W shaped (out_features, in_features) and one example per column of x.

    ``init``: "kaiming" (default) draws W from N(0, 2 / in_features), He et al.'s choice
    for ReLU networks; "normal" draws from N(0, 0.01**2) as classic tutorials do. The
    bias starts at zero. ``dtype``: float32 (default) or float64.
    """

    def __init__(self, in_features, out_features, init="kaiming", dtype=np.float32):
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear needs positive sizes, got ({in_features}, {out_features})")
        if init not in ("kaiming", "normal"):
            raise ValueError(f"init must be 'kaiming' or 'normal', got {init!r}")
        std = np.sqrt(2.0 / in_features) if init == "kaiming" else 0.01
        weight = random.generator().standard_normal((out_features, in_features)) * std
        self.in_features, self.out_features = in_features, out_features
        self.weight = Tensor(weight.astype(dtype), requires_grad=True)
        self.bias = Tensor(np.zeros((out_features, 1), dtype=dtype), requires_grad=True)

    def forward(self, x, relu=False):
        """W x + b (then ReLU when ``relu``), as one fused node of the graph."""
        return linear(x, self.weight, self.bias, relu)

    def __repr__(self):
        return f"Linear(in_features={self.in_features}, out_features={self.out_features})"
