# The naive variant: plain loops, one thread. Signatures in kernels.pxi.
include "kernels.pxi"
