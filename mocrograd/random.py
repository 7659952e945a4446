"""The library's random generator: one seed makes initialization reproducible (a shuffling
``DataLoader`` draws from its own ``seed``)."""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Reseed the generator that layer initialization uses (like ``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator():
    """The current ``numpy.random.Generator``."""
    return _generator
