#!/usr/bin/env bash
# mocrograd's benchmark suite: bash benchmarks/run.sh [--quick] [options]   (see --help)
#
# A thin wrapper around benchmarks/run.py. It builds nothing: it benchmarks the
# installed mocrograd with the Python in $PYTHON (default: python3 on PATH).
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the environment of the
# benchmark's processes only (they pin OpenBLAS, NumPy's and PyTorch's BLAS, to a
# core type and cache size that may not be this machine's); their previous values
# are passed on so that latest.json records what was unset.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
record=(MOCROGRAD_BENCH_RUN_SH=1)
for name in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do
    if [ -n "${!name+x}" ]; then
        record+=("MOCROGRAD_BENCH_WAS_SET_${name}=1" "MOCROGRAD_BENCH_PREV_${name}=${!name}")
    fi
done
exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "${record[@]}" "$python" "$here/run.py" "$@"
