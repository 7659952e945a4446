"""mocrograd: a small, readable autograd and neural-network library on a compiled core.

The core (``mocrograd._core``) is Cython over typed memoryviews, parallel with
OpenMP, in three switchable kernel variants (see ``mocrograd.backend``).
"""
from ._core import DEFAULT_GRAIN, Matrix, chunks_for_work, cpu_count, idle_bytes, large_allocations, \
    machine_contended, machine_memory, openmp_enabled, release_memory
from .backend import backend, get_backend, get_grain, set_backend
from .build import build_info
from . import data, nn
from .gradcheck import GradcheckError, gradcheck
from .random import manual_seed
from .tensor import Tensor, is_grad_enabled, linear, no_grad

__version__ = "0.1.0"
__all__ = ["DEFAULT_GRAIN", "GradcheckError", "Matrix", "Tensor", "backend", "build_info", "chunks_for_work", "cpu_count", "data",
           "get_backend", "get_grain", "gradcheck", "idle_bytes", "is_grad_enabled", "large_allocations", "linear",
           "machine_contended", "machine_memory", "manual_seed", "nn", "no_grad", "openmp_enabled", "release_memory",
           "set_backend"]
