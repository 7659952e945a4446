"""Kernel micro-benchmarks: matmul in GFLOP/s, element-wise and reduction kernels in GB/s.

    python benchmarks/kernels.py                 # full shapes, prints a Markdown table
    python benchmarks/kernels.py --quick --json out.json

Every kernel runs in every configuration of the training benchmark (naive;
optimized with 1, 10, 64, 256 workers and with the core count; dynamic) and, on the
same shape in the same process, NumPy's float32 equivalent (its BLAS for matmul),
so each number also appears as a fraction of NumPy's.

Matmul shapes are those of the Bigger network (64-8192-4096-2048-10) on a batch of
32 examples, one example per column: the forward W @ X of its three large layers, the
backward dX = W^T G (``w.matmul(g, trans_a=True)``) and dW = G X^T
(``g.matmul(x, trans_b=True)``), plus a square 2048^3 product. Naive is skipped where
a small run predicts it would take longer than ``--naive-limit`` seconds (noted in the
results).

Each measurement repeats the call until ``--min-time`` seconds have passed (at least
once) and keeps the fastest call: on a shared machine noise only ever adds time.
"""
import argparse
import json
import sys
import time

import numpy as np

BATCH = 32
# (label, op, m, k, n): op "nn" is A(m,k) @ B(k,n); "tn" is A(k,m)^T @ B(k,n); "nt" is A(m,k) @ B(n,k)^T
BIGGER_LAYERS = [(8192, 64), (4096, 8192), (2048, 4096)]  # (out, in) of the layers with large weights


def threadpool_info():
    """threadpoolctl's list of the loaded BLAS/OpenMP libraries and their threads ([] without threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    return threadpoolctl.threadpool_info()


def matmul_shapes(quick=False):
    """The matmul cases; quick divides the large dimensions by 8 (same structure, 512x less work)."""
    scale = 8 if quick else 1
    shapes = []
    for out, inp in BIGGER_LAYERS:
        o, i = max(out // scale, 8), (inp if inp == 64 else inp // scale)
        shapes.append((f"fwd W@X ({o}x{i})@({i}x{BATCH})", "nn", o, i, BATCH))
        shapes.append((f"dX W^T@G ({o}x{i})^T@({o}x{BATCH})", "tn", i, o, BATCH))
        shapes.append((f"dW G@X^T ({o}x{BATCH})@({i}x{BATCH})^T", "nt", o, BATCH, i))
    side = 2048 // scale
    shapes.append((f"square {side}^3", "nn", side, side, side))
    return shapes


def configurations(cores):
    """(name, backend, workers) in the training benchmark's order."""
    return ([("naive", "naive", None)]
            + [(f"optimized-{w}", "optimized", w) for w in (1, 10, 64, 256)]
            + [("optimized-cores", "optimized", cores), ("dynamic", "dynamic", None)])


def best_time(call, min_time, max_calls=50, min_calls=3):
    """Fastest of repeated calls: at least ``min_calls`` and ``min_time`` seconds, unless the
    calls are slow (stop once max(1 s, 3 * min_time) have passed); (best, calls)."""
    times = []
    spent = 0.0
    patience = max(1.0, 3.0 * min_time)
    while True:
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        if (len(times) >= max_calls or spent >= patience
                or (spent >= min_time and len(times) >= min_calls)):
            break
    return min(times), len(times)


def _matmul_operands(op, m, k, n, rng):
    """NumPy float32 operands stored as mocrograd stores them (transposed operands not copied)."""
    a = rng.standard_normal((k, m) if op == "tn" else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if op == "nt" else (k, n), dtype=np.float32)
    return a, b


def bench_matmul(min_time, naive_limit, quick, cores, out=None):
    import mocrograd
    from mocrograd import Matrix

    rng = np.random.default_rng(0)
    results = []
    for label, op, m, k, n in matmul_shapes(quick):
        flops = 2.0 * m * n * k
        a, b = _matmul_operands(op, m, k, n, rng)
        ta, tb = op == "tn", op == "nt"
        ma, mb = Matrix(a), Matrix(b)
        np_a = a.T if ta else a
        np_b = b.T if tb else b
        np_t, np_calls = best_time(lambda: np_a @ np_b, min_time)
        row = {"label": label, "op": op, "m": m, "k": k, "n": n, "gflop": flops / 1e9,
               "numpy": {"seconds": np_t, "gflops": flops / np_t / 1e9, "calls": np_calls}, "configs": {}}
        for name, variant, workers in configurations(cores):
            entry = {}
            with mocrograd.backend(variant, workers):
                if variant == "naive":
                    estimate = _naive_estimate(op, m, k, n, rng)
                    entry["estimated_seconds"] = estimate
                    if estimate > naive_limit:
                        entry.update(status="skipped",
                                     reason=f"estimated {estimate:.0f} s from a smaller run (limit {naive_limit:g} s)")
                        row["configs"][name] = entry
                        continue
                t, calls = best_time(lambda: ma.matmul(mb, trans_a=ta, trans_b=tb), min_time)
            entry.update(status="ok", seconds=t, calls=calls, gflops=flops / t / 1e9,
                         fraction_of_numpy=np_t / t)
            row["configs"][name] = entry
        results.append(row)
        if out:
            print(f"  matmul {label}: done", file=out, flush=True)
    return results


def _naive_estimate(op, m, k, n, rng):
    """Seconds the naive matmul would take: time it with m cut to ~20 MFLOP and scale up."""
    from mocrograd import Matrix

    small_m = max(1, min(m, int(m * 2e7 / (2.0 * m * n * k))))
    a, b = _matmul_operands(op, small_m, k, n, rng)
    ma, mb = Matrix(a), Matrix(b)
    t, _ = best_time(lambda: ma.matmul(mb, trans_a=op == "tn", trans_b=op == "nt"), 0.0, max_calls=1)
    return t * m / small_m


# name -> (mocrograd call, numpy call, bytes moved per element)
def _elementwise_cases():
    return {
        "add x+y": (lambda x, y: x + y, lambda x, y: x + y, 12),
        "mul x*y": (lambda x, y: x * y, lambda x, y: x * y, 12),
        "relu": (lambda x, y: x.relu(), lambda x, y: np.maximum(x, 0), 8),
        "exp": (lambda x, y: x.exp(), lambda x, y: np.exp(x), 8),
        "sum axis 0": (lambda x, y: x.sum(axis=0), lambda x, y: x.sum(axis=0), 4),
        "sum axis 1": (lambda x, y: x.sum(axis=1), lambda x, y: x.sum(axis=1), 4),
        "sum all": (lambda x, y: x.sum(), lambda x, y: x.sum(), 4),
    }


def bench_elementwise(min_time, quick, cores, out=None):
    import mocrograd
    from mocrograd import Matrix

    side = 1024 if quick else 4096
    rng = np.random.default_rng(1)
    x = rng.standard_normal((side, side), dtype=np.float32)
    y = rng.standard_normal((side, side), dtype=np.float32)
    mx, my = Matrix(x), Matrix(y)
    results = []
    for label, (ours, theirs, per_element) in _elementwise_cases().items():
        gbytes = per_element * side * side / 1e9
        np_t, np_calls = best_time(lambda: theirs(x, y), min_time)
        row = {"label": label, "shape": [side, side], "gbytes": gbytes,
               "numpy": {"seconds": np_t, "gbps": gbytes / np_t, "calls": np_calls}, "configs": {}}
        for name, variant, workers in configurations(cores):
            with mocrograd.backend(variant, workers):
                t, calls = best_time(lambda: ours(mx, my), min_time)
            row["configs"][name] = {"status": "ok", "seconds": t, "calls": calls, "gbps": gbytes / t,
                                    "fraction_of_numpy": np_t / t}
        results.append(row)
        if out:
            print(f"  {label}: done", file=out, flush=True)
    return results


def run(quick=False, min_time=None, naive_limit=None, out=None):
    """All kernel benchmarks as a JSON-ready dict."""
    import mocrograd

    min_time = min_time if min_time is not None else (0.05 if quick else 0.3)
    naive_limit = naive_limit if naive_limit is not None else (1.0 if quick else 10.0)
    cores = mocrograd.cpu_count()
    start = time.perf_counter()
    report = {"quick": quick, "min_time": min_time, "naive_limit_seconds": naive_limit, "cores": cores,
              "configs": [name for name, _, _ in configurations(cores)],
              "threadpools": threadpool_info(),
              "matmul": bench_matmul(min_time, naive_limit, quick, cores, out),
              "elementwise": bench_elementwise(min_time, quick, cores, out)}
    report["seconds"] = time.perf_counter() - start
    return report


def markdown(report):
    """Two Markdown tables: matmul GFLOP/s and element-wise GB/s, each with % of NumPy."""
    names = report["configs"]
    lines = ["### Matmul (GFLOP/s, and % of NumPy float32 on the same shape)", "",
             "| shape | GFLOP | NumPy | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for row in report["matmul"]:
        cells = []
        for name in names:
            e = row["configs"][name]
            cells.append(f"{e['gflops']:.1f} ({100 * e['fraction_of_numpy']:.0f}%)" if e["status"] == "ok"
                         else f"skipped (est. {e['estimated_seconds']:.0f} s)")
        lines.append(f"| {row['label']} | {row['gflop']:.3g} | {row['numpy']['gflops']:.1f} | "
                     + " | ".join(cells) + " |")
    side = report["elementwise"][0]["shape"][0] if report["elementwise"] else 0
    lines += ["", f"### Element-wise and reductions on {side}x{side} float32 (GB/s moved, and % of NumPy)", "",
              "| kernel | NumPy | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for row in report["elementwise"]:
        cells = [f"{row['configs'][n]['gbps']:.1f} ({100 * row['configs'][n]['fraction_of_numpy']:.0f}%)"
                 for n in names]
        lines.append(f"| {row['label']} | {row['numpy']['gbps']:.1f} | " + " | ".join(cells) + " |")
    skipped = [f"{row['label']} ({row['configs']['naive']['reason']})" for row in report["matmul"]
               if row["configs"]["naive"]["status"] == "skipped"]
    if skipped:
        lines += ["", "Naive skipped: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def main(argv=None):
    from mocrograd.train import output_file   # here: run.py's peer processes import this module

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="shapes scaled down (large dimensions / 8, 1024^2 element-wise)")
    parser.add_argument("--min-time", type=float, help="seconds to repeat each measurement (default 0.3, quick 0.05)")
    parser.add_argument("--naive-limit", type=float,
                        help="skip naive where it would take longer (default 10 s, quick 1 s)")
    parser.add_argument("--json", metavar="PATH", type=output_file, help="write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines and no table on stdout")
    args = parser.parse_args(argv)
    report = run(args.quick, args.min_time, args.naive_limit, out=None if args.quiet else sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if not args.quiet:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
