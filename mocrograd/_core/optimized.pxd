# The optimized variant: vectorizable, blocked, OpenMP-parallel. Signatures in kernels.pxi.
include "kernels.pxi"
