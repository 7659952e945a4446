"""The compiled core: the Matrix type and its kernels.

Modules:
    parallel   -- how many OpenMP threads a kernel may use (the one place for that policy)
    naive      -- plain single-threaded loops: the readable reference
    optimized  -- vectorizable, cache-blocked, OpenMP-parallel versions of the same kernels
    matrix     -- the Matrix type, argument checks and dispatch to the selected variant
    ladder     -- the matmul optimization ladder of docs/optimizations.md, one kernel per step
    build_config -- the compiler and flags of this build (written by meson; see mocrograd.build_info)
"""
from . import build_config
from .matrix import Matrix, argmax, chunks_for_work, get_backend_state, idle_bytes, large_allocations, \
    machine_memory, release_memory, set_backend_state
from .parallel import DEFAULT_GRAIN, cpu_count, machine_contended, openmp_enabled, other_load

__all__ = ["DEFAULT_GRAIN", "Matrix", "argmax", "build_config", "chunks_for_work", "cpu_count", "get_backend_state",
           "idle_bytes", "large_allocations", "machine_contended", "machine_memory", "openmp_enabled", "other_load",
           "release_memory", "set_backend_state"]
