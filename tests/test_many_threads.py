"""The kernels on more OpenMP threads than this machine may have.

How a kernel's work is cut depends on the thread count (split-k for few output
tiles, pieces per thread, the transposed thin kernel's chunk length), so a 16-core
machine takes paths that 2 cores never take. This test runs the matmul shape grid
and the kernel grid again in a process with OMP_NUM_THREADS=16, its threads
sleeping rather than spinning while they wait (16 of them share the cores): every
worker count must still give bit-identical results that match NumPy.
"""
import os
import subprocess
import sys
from pathlib import Path

import mocrograd

TESTS = Path(__file__).parent
SIXTEEN = {"OMP_NUM_THREADS": "16", "OMP_WAIT_POLICY": "passive"}


def _run(command, tmp_path):
    env = {**os.environ, **SIXTEEN}
    for name in ("MOCROGRAD_BACKEND", "MOCROGRAD_WORKERS"):
        env.pop(name, None)
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_the_matmul_and_kernel_grids_pass_on_sixteen_threads(tmp_path):
    threads = _run([sys.executable, "-c", "import mocrograd; print(mocrograd.cpu_count())"], tmp_path)
    assert threads.stdout.split() == (["16"] if mocrograd.openmp_enabled() else ["1"]), threads.stderr
    grids = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "-c", str(TESTS.parent / "pyproject.toml"), "--rootdir", str(TESTS.parent),
                  str(TESTS / "test_matmul_shapes.py"), str(TESTS / "test_matrix_kernels.py")], tmp_path)
    assert grids.returncode == 0, grids.stdout[-4000:] + grids.stderr[-2000:]
