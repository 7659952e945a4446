"""The digits data (scikit-learn's bundled 8x8 images: no download) and batching."""
from dataclasses import dataclass

import numpy as np

from ._core import Matrix

DIGITS = 1797  # examples in scikit-learn's bundled digits


@dataclass
class Split:
    """Examples as rows of ``x`` (n, 64), float32 pixels in [0, 1], and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        self.x, self.y = np.asarray(self.x), np.asarray(self.y)
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(f"a Split needs x of shape (examples, features) and y of shape (examples,), "
                             f"got {self.x.shape} and {self.y.shape}")

    def __len__(self):
        return len(self.y)


def load_digits(length=DIGITS, validation=0.2, shuffle=False, seed=None):
    """The first ``length`` digits, split into (train, validation) Splits.

    The last ``validation`` fraction (in order, as in the original benchmark) is held
    out; ``shuffle=True`` first permutes the examples with ``seed``. Pixels are divided
    by 16 so they lie in [0, 1].
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 1 <= length <= DIGITS:
        raise ValueError(f"length must be a whole number from 1 to {DIGITS}, got {length!r}")
    if not 0 <= validation < 1:
        raise ValueError(f"validation must be a fraction in [0, 1), got {validation}")
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(y))
        x, y = x[order], y[order]
    x, y = x[:length], y[:length]
    n_train = length - int(round(length * validation))
    if n_train < 1:
        raise ValueError(f"length {length} with a {validation:.0%} validation split leaves no training examples")
    return Split(x[:n_train], y[:n_train]), Split(x[n_train:], y[n_train:])


class DataLoader:
    """Batches of a Split as ((features, batch) Matrix, labels) pairs, one column per example.

    A whole batch goes through each layer in one kernel call. The last partial batch is
    kept. Without shuffling the batches are built once and reused every epoch; with
    ``shuffle=True`` each epoch draws a new order from ``seed``'s generator.
    """

    def __init__(self, split, batch_size=32, shuffle=False, seed=None, dtype=np.float32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.shuffle, self.dtype = split, batch_size, shuffle, dtype
        self.rng = np.random.default_rng(seed)
        self._fixed = None if shuffle else list(self._batches(np.arange(len(split))))

    def __len__(self):
        return -(-len(self.split) // self.batch_size)

    def _batches(self, order):
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            columns = np.ascontiguousarray(self.split.x[index].T, dtype=self.dtype)
            yield Matrix(columns), self.split.y[index]

    def __iter__(self):
        if self._fixed is not None:
            return iter(self._fixed)
        return self._batches(self.rng.permutation(len(self.split)))
