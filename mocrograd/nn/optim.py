"""Optimizers: every update is an in-place core kernel on the parameter's Matrix."""
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
