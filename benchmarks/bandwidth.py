"""Memory passes with 1 and 2 workers: how much a second core can give a memory-bound pass.

On Bigger with a batch of 2 or 8, every kernel of a training step is one pass over a
weight (the largest 4096 x 8192, 128 MB): forward W X, dX = W^T G, the SGD step
W = beta W + alpha G X^T (one product into W), and the evaluation's forward at batch 2.
Such a pass runs at the memory system's pace, not the cores', so the 2-worker speed-up
of Bigger's short runs is bounded by how much faster two cores stream memory than
one. This measures both, with mocrograd's own kernels on that weight:

* ``read``: ``sum_squares`` (reads W; 2 flops per element: a pure read);
* ``read+write``: ``scale_`` (reads and writes W, in place);
* ``forward b``: ``W.matmul(X)`` with a batch of b (2: the evaluation, 8: training);
* ``dX b8``: ``W.matmul(G, trans_a=True)``;
* ``step b8``: ``G.matmul(X, trans_b=True, out=W, accumulate=True, alpha, beta)``.

The kernel backend is ``optimized``; 1 and 2 workers alternate call by call, and each
number is the median of REPEATS calls. GB/s counts W's bytes once per read and once
per write.

    python benchmarks/bandwidth.py [--repeats 15] [--json benchmarks/results/bandwidth.json]
"""
import argparse
import datetime
import json
import statistics
import time

import numpy as np

import mocrograd
from mocrograd import Matrix
from mocrograd.train import HelpFormatter


def passes(w, rng):
    """(name, bytes moved, call) for every pass over w."""
    rows, cols = w.shape
    nbytes = rows * cols * w.dtype.itemsize
    x8 = Matrix(rng.standard_normal((cols, 8)).astype(w.dtype))
    x2 = Matrix(rng.standard_normal((cols, 2)).astype(w.dtype))
    g8 = Matrix(rng.standard_normal((rows, 8)).astype(w.dtype))
    halve = [True]

    def scale():   # alternately x2 and x0.5: W's values stay exactly where they were
        w.scale_(0.5 if halve[0] else 2.0)
        halve[0] = not halve[0]

    return [("read", nbytes, w.sum_squares),
            ("read+write", 2 * nbytes, scale),
            ("forward b2", nbytes, lambda: w.matmul(x2)),
            ("forward b8", nbytes, lambda: w.matmul(x8)),
            ("dX b8", nbytes, lambda: w.matmul(g8, trans_a=True)),
            ("step b8", 2 * nbytes, lambda: g8.matmul(x8, trans_b=True, out=w, accumulate=True,
                                                      alpha=-1e-6, beta=1.0))]


def measure(rows, cols, repeats, workers=(1, 2)):
    """{pass: {"bytes", "ms": {workers: median ms}, "gb_s": {...}, "speedup"}}."""
    rng = np.random.default_rng(0)
    w = Matrix(rng.standard_normal((rows, cols)).astype(np.float32))
    results = {}
    for name, nbytes, call in passes(w, rng):
        times = {n: [] for n in workers}
        for _ in range(repeats):
            for n in workers:
                with mocrograd.backend("optimized", n):
                    start = time.perf_counter()
                    call()
                    times[n].append(time.perf_counter() - start)
        ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
        results[name] = {"bytes": nbytes, "ms": ms, "gb_s": {n: nbytes / (m * 1e6) for n, m in ms.items()},
                         "speedup": ms[workers[0]] / ms[workers[-1]]}
    return results


def table(results):
    lines = ["| pass | 1 worker ms | 2 workers ms | 1 worker GB/s | 2 workers GB/s | speed-up |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        (one, two), (gb1, gb2) = r["ms"].values(), r["gb_s"].values()
        lines.append(f"| {name} | {one:.2f} | {two:.2f} | {gb1:.1f} | {gb2:.1f} | {r['speedup']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--rows", type=int, default=4096, help="rows of W (Bigger's largest weight: 4096)")
    parser.add_argument("--cols", type=int, default=8192, help="columns of W (Bigger's largest weight: 8192)")
    parser.add_argument("--repeats", type=int, default=15, help="calls of each pass per worker count")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if min(args.rows, args.cols, args.repeats) < 1:
        parser.error("--rows, --cols and --repeats must be >= 1")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    results = measure(args.rows, args.cols, args.repeats)
    print(f"W {args.rows} x {args.cols} float32 ({results['read']['bytes'] / 2**20:.0f} MB), optimized backend, "
          f"median of {args.repeats} alternated calls, load average {' / '.join(load)}\n")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "rows": args.rows, "cols": args.cols, "repeats": args.repeats, "load_average": load,
                       "passes": results}, f, indent=1)


if __name__ == "__main__":
    main()
