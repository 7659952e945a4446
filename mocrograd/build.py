"""What this installed copy of mocrograd was built with, for bug reports and benchmarks.

The core's speed depends on its build as much as on its code: built for the machine
(``-march=native``, the default) its kernels use the CPU's widest vectors; built
portable (``-Dnative=false``) they use SSE2's, up to 4x slower. ``build_info()`` says
which build you have, the way ``numpy.show_config()`` does for NumPy."""
from ._core import build_config, openmp_enabled
from ._core.optimized import register_tile


def build_info():
    """A dict describing this build of the core.

    ``compiler`` (id and version), ``c_args`` (the C flags: the project's and any given
    with ``-Csetup-args=-Dc_args=...``), ``native`` (built for the building CPU),
    ``openmp`` (parallel kernels), ``vector_bytes`` (the SIMD width the kernels use:
    64 with AVX-512, 32 with AVX, 16 otherwise) and ``register_tile`` (rows x float
    columns of the matmul's register tile)."""
    tile = register_tile()
    return {"compiler": build_config.COMPILER, "c_args": list(build_config.C_ARGS),
            "native": build_config.NATIVE, "openmp": openmp_enabled(),
            "vector_bytes": tile["vector_bytes"],
            "register_tile": f"{tile['rows']} x {tile['float_columns']}"}
