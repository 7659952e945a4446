"""GFLOP/s of the optimized matmul (1 and 2 workers, and more) vs NumPy's BLAS, float32.

Shapes: the Bigger network (64-8192-4096-2048-10) at batch 32 -- forward W@X,
backward dX = W^T G (trans_a) and dW = G X^T (trans_b) -- and 2048^3.

    python benchmarks/matmul_shapes.py [--workers 1 2 64 256] [--json out.json]

The OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE variables are removed (the script
re-executes itself without them) so NumPy's BLAS picks its own kernel.
"""
import argparse
import json
import os
import sys
import time

if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np
import mocrograd
from mocrograd._core import Matrix

# name, (rows, cols) of A, (rows, cols) of B, trans_a, trans_b
SHAPES = [
    ("fwd1 (8192x64)@(64x32)", (8192, 64), (64, 32), False, False),
    ("fwd2 (4096x8192)@(8192x32)", (4096, 8192), (8192, 32), False, False),
    ("fwd3 (2048x4096)@(4096x32)", (2048, 4096), (4096, 32), False, False),
    ("dX2 (4096x8192)^T@(4096x32)", (4096, 8192), (4096, 32), True, False),
    ("dX3 (2048x4096)^T@(2048x32)", (2048, 4096), (2048, 32), True, False),
    ("dW1 (8192x32)@(64x32)^T", (8192, 32), (64, 32), False, True),
    ("dW2 (4096x32)@(8192x32)^T", (4096, 32), (8192, 32), False, True),
    ("dW3 (2048x32)@(4096x32)^T", (2048, 32), (4096, 32), False, True),
    ("square 2048^3", (2048, 2048), (2048, 2048), False, False),
]


def best_time(fn, min_time=0.3, min_reps=3):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--json")
    parser.add_argument("--only", default="")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds of repetitions per cell")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'shape':32s} {'numpy':>8s} " + " ".join(f"{'w=' + str(w):>8s}" for w in args.workers) + "   best/numpy")
    for name, sa, sb, ta, tb in SHAPES:
        if args.only and args.only not in name:
            continue
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        opa, opb = (a.T if ta else a), (b.T if tb else b)
        m, k = opa.shape
        n = opb.shape[1]
        flop = 2.0 * m * n * k
        res = np.empty((m, n), np.float32)
        t_np = best_time(lambda: np.matmul(opa, opb, out=res), args.min_time)
        ma, mb, mo = Matrix(a), Matrix(b), Matrix(np.zeros((m, n), np.float32))
        row = {"shape": name, "m": m, "n": n, "k": k, "numpy": flop / t_np / 1e9}
        for w in args.workers:
            mocrograd.set_backend("optimized", workers=w)
            t = best_time(lambda: ma.matmul(mb, trans_a=ta, trans_b=tb, out=mo), args.min_time)
            row[f"w{w}"] = flop / t / 1e9
        mocrograd.set_backend("dynamic")
        best = max(row[f"w{w}"] for w in args.workers)
        print(f"{name:32s} {row['numpy']:8.1f} " + " ".join(f"{row[f'w{w}']:8.1f}" for w in args.workers)
              + f"   {best / row['numpy']:6.2f}", flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
