"""The multilayer perceptrons of the original benchmark."""
import numpy as np

from .module import Linear, Module


class MLP(Module):
    """Linear layers of the given sizes with ReLU between them and log_softmax at the end.

    ``MLP([64, 64, 32, 10])`` maps a (64, batch) input to (10, batch) log-probabilities,
    one column per example.
    """

    def __init__(self, sizes, init="kaiming", dtype=np.float32):
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
        self.sizes = sizes
        self.layers = [Linear(a, b, init=init, dtype=dtype) for a, b in zip(sizes, sizes[1:])]

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x, relu=True)     # Linear and ReLU in one fused kernel
        return self.layers[-1](x).log_softmax(axis=0)

    def __repr__(self):
        return f"{type(self).__name__}({'-'.join(map(str, self.sizes))})"


class Normal(MLP):
    """64-64-32-10."""

    def __init__(self, init="kaiming", dtype=np.float32):
        super().__init__([64, 64, 32, 10], init=init, dtype=dtype)


class Longer(MLP):
    """64 -> 256, then layers - 2 hidden 256 -> 256 layers, then 256 -> 10 (30 Linear layers by default)."""

    def __init__(self, layers=30, init="kaiming", dtype=np.float32):
        if layers < 2:
            raise ValueError(f"Longer needs at least 2 layers, got {layers}")
        super().__init__([64] + [256] * (layers - 1) + [10], init=init, dtype=dtype)


class Bigger(MLP):
    """64-8192-4096-2048-10."""

    def __init__(self, init="kaiming", dtype=np.float32):
        super().__init__([64, 8192, 4096, 2048, 10], init=init, dtype=dtype)


MODELS = {"normal": Normal, "longer": Longer, "bigger": Bigger}


def build_model(name, **kwargs):
    """One of the named models: 'normal', 'longer' or 'bigger'."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
