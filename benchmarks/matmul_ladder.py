"""The matmul ladder: GFLOP/s of each optimization step, beside NumPy's BLAS.

    python benchmarks/matmul_ladder.py [--workers 2] [--min-time 1.0]

Runs the eight steps of mocrograd._core.ladder (1. naive i-j-k ... 8. the final
kernel) on float32 512^3 (every step) and 2048^3 (steps 4 and up: the slow
steps would take minutes), plus NumPy in the same run. Writes
benchmarks/results/ladder.json and docs/optimizations.png.

NumPy's OpenBLAS is measured with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
unset (the script re-executes itself without them), so it picks its own kernel.
"""
import argparse
import json
import os
import platform
import sys
import time

_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in _DROP):
    os.execve(sys.executable, [sys.executable] + sys.argv, {k: v for k, v in os.environ.items() if k not in _DROP})

import numpy as np

from mocrograd._core import cpu_count
from mocrograd._core.ladder import STEPS, ladder_matmul
from mocrograd.train import output_file, positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {512: range(1, 9), 2048: range(4, 9)}


def best_time(fn, min_time, max_reps=50):
    fn()  # warm up (and page in the buffers)
    times, start = [], time.perf_counter()
    while not times or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=positive_int, default=cpu_count(), help="workers of steps 4-8 (default: all cores)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of repetitions per measurement")
    parser.add_argument("--json", type=output_file, default=os.path.join(ROOT, "benchmarks", "results", "ladder.json"))
    parser.add_argument("--png", type=output_file, default=os.path.join(ROOT, "docs", "optimizations.png"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    results = {"machine": platform.processor() or platform.machine(), "cores": cpu_count(),
               "workers": args.workers, "dtype": "float32", "sizes": {}}
    for size, steps in SIZES.items():
        a = rng.standard_normal((size, size)).astype(np.float32)
        b = rng.standard_normal((size, size)).astype(np.float32)
        out = np.empty((size, size), np.float32)
        flop = 2.0 * size ** 3
        row = {"numpy": flop / best_time(lambda: np.matmul(a, b, out=out), args.min_time) / 1e9}
        print(f"{size}^3  numpy BLAS: {row['numpy']:7.1f} GFLOP/s", flush=True)
        for step in steps:
            w = 1 if step <= 3 else args.workers
            reps_time = args.min_time if step >= 4 else 0.0   # steps 1-3: one timed run is enough
            t = best_time(lambda: ladder_matmul(step, a, b, out, w), reps_time)
            gflops = flop / t / 1e9
            row[str(step)] = gflops
            print(f"{size}^3  step {step} {STEPS[step]:24s} {gflops:7.1f} GFLOP/s  "
                  f"({gflops / row['numpy']:5.1%} of BLAS)", flush=True)
        results["sizes"][str(size)] = row

    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    plot(results, args.png)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s}. {STEPS[s]}" for s in STEPS] + ["NumPy BLAS"]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.4
    for offset, (size, row) in zip((-width / 2, width / 2), results["sizes"].items()):
        values = [row.get(str(s), 0.0) for s in STEPS] + [row["numpy"]]
        xs = [i + offset for i in range(len(values))]
        bars = ax.bar(xs, values, width, label=f"{size}^3")
        for x, v in zip(xs, values):
            if v:
                ax.text(x, v, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("GFLOP/s (float32, log scale)")
    ax.set_title(f"mocrograd matmul ladder ({results['workers']} workers for steps 4-8, "
                 f"{results['cores']} cores)")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    print("wrote", path)


if __name__ == "__main__":
    main()
