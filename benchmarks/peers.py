"""The same training as ``mocrograd.train.fit``, written for the peers: PyTorch and plain NumPy.

Both peers train exactly what mocrograd trains (see ``mocrograd.train.fit``):

* the same model, with the same initial weights: the caller passes mocrograd's
  ``state_dict()`` (Kaiming-normal weights (out, in), zero biases (out, 1));
* the same batches in the same order: the split in order, ``batch_size`` examples per
  batch, the last partial batch kept;
* the same objective: mean negative log-likelihood of log_softmax plus
  ``l2 * sum(W**2)`` over the weight matrices (not the biases);
* plain SGD, ``p -= lr * grad``. Nobody computes the penalty's value, which is never
  reported; each adds only its gradient ``2 * l2 * W``, in its cheapest form: mocrograd
  and PyTorch use ``SGD(weight_decay=2 * l2)`` on the weights alone (a parameter group;
  the biases get none), which adds it inside the update, and the hand-written NumPy
  backward adds it;
* a training pass and a validation pass (no gradients) every epoch, reporting the
  same metrics (NLL without the penalty, accuracy).

Each ``fit_*`` returns the per-epoch metrics in the same format as mocrograd's ``fit``.
Everything a fit needs (batching included) happens inside it, as in mocrograd, so a
caller times the whole call.
"""
import time

import numpy as np


def layer_arrays(state):
    """[(W (out, in), b (out, 1)), ...] float32 copies of a mocrograd state_dict, in layer order."""
    count = len({name.split(".")[1] for name in state if name.startswith("layers.")})
    return [(np.array(state[f"layers.{i}.weight"], dtype=np.float32),
             np.array(state[f"layers.{i}.bias"], dtype=np.float32)) for i in range(count)]


def _metrics(epoch, loss_sum, correct, n_train, val_loss, val_acc, start):
    return {"epoch": epoch, "train_loss": loss_sum / n_train, "train_acc": correct / n_train,
            "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- NumPy

def fit_numpy(params, train, val, epochs=10, batch_size=32, lr=0.01, l2=1e-4):
    """Hand-written forward and backward in float32 NumPy (its BLAS does the matmuls).

    ``params``: ``layer_arrays(state)``, updated in place. Examples are columns, as in
    mocrograd: z = W a + b, ReLU between layers, log_softmax over axis 0. The
    penalty's value is not computed (it is never reported), only its gradient 2 * l2 * W.
    """
    lr32, decay = np.float32(lr), np.float32(2.0 * l2)

    def batches(split):
        out = []
        for start in range(0, len(split), batch_size):
            x = np.ascontiguousarray(split.x[start:start + batch_size].T, dtype=np.float32)
            out.append((x, split.y[start:start + batch_size]))
        return out

    def forward(x):
        activations = [x]
        a = x
        for i, (w, b) in enumerate(params):
            z = w @ a
            z += b
            if i < len(params) - 1:
                a = np.maximum(z, 0, out=z)
                activations.append(a)
        z -= z.max(axis=0, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=0, keepdims=True))
        return activations, z  # z now holds the log-probabilities

    def nll_and_correct(log_probs, y):
        columns = np.arange(len(y))
        return float(-log_probs[y, columns].sum()), float((log_probs.argmax(axis=0) == y).sum())

    train_batches, val_batches = batches(train), batches(val)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss_sum, correct = 0.0, 0.0
        for x, y in train_batches:
            activations, log_probs = forward(x)
            loss, right = nll_and_correct(log_probs, y)
            loss_sum += loss
            correct += right
            # d(mean NLL)/d(logits) = (softmax - onehot) / batch
            grad = np.exp(log_probs)
            grad[y, np.arange(len(y))] -= 1.0
            grad *= np.float32(1.0 / len(y))
            for i in range(len(params) - 1, -1, -1):
                w, b = params[i]
                a = activations[i]
                grad_w = grad @ a.T
                grad_w += decay * w
                grad_b = grad.sum(axis=1, keepdims=True)
                if i > 0:
                    below = w.T @ grad            # with the weights before this step's update
                    below *= a > 0                # ReLU's derivative (a = relu(z) > 0 iff z > 0)
                w -= lr32 * grad_w
                b -= lr32 * grad_b
                if i > 0:
                    grad = below
        val_loss = val_correct = 0.0
        for x, y in val_batches:
            loss, right = nll_and_correct(forward(x)[1], y)
            val_loss += loss
            val_correct += right
        val_metrics = (val_loss / len(val), val_correct / len(val)) if len(val) else (None, None)
        history.append(_metrics(epoch, loss_sum, correct, len(train), *val_metrics, start))
    return history


# ----------------------------------------------------------------------------- PyTorch

def build_torch(state):
    """A torch.nn.Sequential of Linear/ReLU layers ending in LogSoftmax, with the state's weights.

    Examples are rows (PyTorch's layout): y = x W^T + b computes the same numbers.
    """
    import torch

    layers = []
    for w, b in layer_arrays(state):
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(b[:, 0]))
        layers.append(linear)
    model = torch.nn.Sequential(*[m for linear in layers[:-1] for m in (linear, torch.nn.ReLU())], layers[-1],
                                torch.nn.LogSoftmax(dim=1))
    return model


def fit_torch(model, train, val, epochs=10, batch_size=32, lr=0.01, l2=1e-4):
    """Train a ``build_torch`` model: F.nll_loss, torch.optim.SGD with weight decay 2 * l2 on the
    weights (the gradient of l2 * sum(W**2)).

    The thread count is whatever the caller set with ``torch.set_num_threads``.
    """
    import torch
    import torch.nn.functional as F

    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    optimizer = torch.optim.SGD([{"params": [m.weight for m in linears], "weight_decay": 2 * l2},
                                 {"params": [m.bias for m in linears], "weight_decay": 0.0}], lr=lr)

    def batches(split):
        return [(torch.from_numpy(np.ascontiguousarray(split.x[s:s + batch_size], dtype=np.float32)),
                 torch.from_numpy(np.asarray(split.y[s:s + batch_size], dtype=np.int64)))
                for s in range(0, len(split), batch_size)]

    train_batches, val_batches = batches(train), batches(val)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum, correct = 0.0, 0.0
        for x, y in train_batches:
            out = model(x)
            loss = F.nll_loss(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(dim=1) == y).sum().item()
        model.eval()
        val_loss = val_correct = 0.0
        with torch.no_grad():
            for x, y in val_batches:
                out = model(x)
                val_loss += F.nll_loss(out, y, reduction="sum").item()
                val_correct += (out.argmax(dim=1) == y).sum().item()
        val_metrics = (val_loss / len(val), val_correct / len(val)) if len(val) else (None, None)
        history.append(_metrics(epoch, loss_sum, correct, len(train), *val_metrics, start))
    return history
