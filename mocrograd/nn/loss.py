"""Losses and metrics. Predictions are (classes, batch): one column per example."""
import numpy as np

from .._core import Matrix
from ..tensor import Tensor
from .module import Module


def _targets(targets, batch):
    labels = np.asarray(targets)
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"targets must be {batch} class indices (one per column), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class indices, got dtype {labels.dtype}")
    return labels


def nll_loss(log_probs, targets):
    """Mean negative log-likelihood of each column's target class (PyTorch's NLLLoss).

    Computed as sum(log_probs * W) with W = -onehot / batch: one multiply and one sum,
    whose backward is W itself."""
    classes, batch = log_probs.shape
    labels = _targets(targets, batch)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"targets must lie in [0, {classes}), got values from {labels.min()} to {labels.max()}")
    weights = np.zeros((classes, batch), dtype=log_probs.dtype)
    weights[labels, np.arange(batch)] = -1.0 / batch
    return (log_probs * Tensor(Matrix(weights))).sum()


def cross_entropy(logits, targets):
    """nll_loss of log_softmax(logits) over each column (PyTorch's F.cross_entropy)."""
    return nll_loss(logits.log_softmax(axis=0), targets)


def penalized_weights(module):
    """The parameters ``l2_penalty(module)`` penalizes: those named ``weight``. A training
    loop can take them once and pass the list at every step, or give them weight decay
    2 * alpha in the optimizer instead (the same gradient, no extra pass: see
    ``mocrograd.train.l2_groups``)."""
    return [p for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] == "weight"]


def l2_penalty(weights, alpha=1e-4):
    """alpha * sum of squares of the weights: a real term of the loss.

    ``weights`` is a Module, whose parameters named ``weight`` are penalized (biases
    are not, whatever their shape), or an iterable of Tensors, all of which are.
    Its gradient 2 * alpha * W reaches every weight. (The original library computed
    it from plain numbers, as a constant, so it never changed the training; ours
    does.) alpha = 0, or nothing to penalize, returns None: no term at all."""
    if alpha == 0:
        return None
    if isinstance(weights, Module):
        weights = penalized_weights(weights)
    total = None
    for w in weights:
        term = w.sum_squares()
        total = term if total is None else total + term
    return None if total is None else total * alpha


def accuracy(log_probs, targets):
    """Fraction of columns whose largest entry is the target class."""
    data = log_probs.data if isinstance(log_probs, Tensor) else log_probs
    labels = _targets(targets, data.shape[1])
    return float(np.mean(data.argmax(axis=0)[0] == labels))
