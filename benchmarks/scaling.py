"""Data-parallel scaling: time per training step with 1 and 2 MPI ranks, ``python benchmarks/scaling.py``.

For Normal and Bigger it launches ``mpiexec -n N python benchmarks/scaling.py --worker``
for N = 1 and 2 (the repeats are the outer loop, so drift of a shared machine's load
hits both alike) and writes every number to ``benchmarks/results/scaling.json``.

A worker trains exactly as ``python -m mocrograd.train --distributed`` does (global
batch 32, SGD lr 0.01, L2 1e-4, each rank a contiguous share of the batch, one
Allreduce of the flat gradient per step, workers per rank = cores / ranks) and times,
after ``--warmup`` untimed steps:

* ``step``: wall time per step (all ranks start together after a barrier; the time of
  the slowest rank, i.e. the job's);
* ``forward_backward``: forward and backward on this rank's share (the slowest rank's);
* ``update``: what every rank repeats in full whatever N is: starting the gradients
  (zeros, and the L2 term's gradient for the weights), scaling them by the rank's
  share and the SGD update of every parameter;
* ``allreduce``: the Allreduce inside the steps (this includes waiting for the slower rank);
* ``allreduce_alone``: the same Allreduce repeated after a barrier, with nothing else
  running: the cost of moving the gradient alone (bytes / this, the effective bandwidth).

Needs ``pip install 'mocrograd[mpi]'``. Use the installed package: run it from the
repository root or anywhere else; it imports ``mocrograd`` from the interpreter's site.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from mocrograd.train import HelpFormatter

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "scaling.json")
# model -> (examples, timed steps, warm-up steps). Bigger: one global batch of 32 examples.
PLAN = {"normal": (1000, 100, 10), "longer": (100, 20, 2), "bigger": (40, 4, 1)}
QUICK = {"normal": (200, 10, 2), "longer": (100, 3, 1), "bigger": (40, 1, 1)}


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


# ------------------------------------------------------------------ worker (one MPI rank)

def worker(args):
    import numpy as np

    from mocrograd import Tensor, nn
    from mocrograd.backend import backend
    from mocrograd.data import load_digits
    from mocrograd.distributed import start
    from mocrograd.random import manual_seed
    from mocrograd.train import l2_groups

    dist = start()
    comm, MPI = dist.comm, dist.MPI
    workers = dist.default_workers()
    train, _ = load_digits(args.length)
    manual_seed(0)
    model = nn.build_model(args.model)
    params = sum(p.shape[0] * p.shape[1] for p in model.parameters())
    with backend("dynamic", workers):
        opt = dist.wrap(model, nn.SGD(l2_groups(model, 1e-4), lr=0.01))   # as fit: L2 as weight decay
        loader = dist.loader(train, args.batch_size)
        batches = list(loader.batches)

        def step(i):
            """(forward + backward, update, allreduce) seconds of one step."""
            x, y, dist.weight = batches[i % len(batches)]
            t1 = time.perf_counter()
            loss = nn.nll_loss(model(Tensor(x)), y)
            loss.backward(accumulate=False)   # as fit: the gradients written over the last step's
            t2 = time.perf_counter()
            reduce_before = dist.allreduce_seconds
            opt.step()
            reduce = dist.allreduce_seconds - reduce_before
            return t2 - t1, time.perf_counter() - t2 - reduce, reduce

        for i in range(args.warmup):
            step(i)
        timed = {key: [] for key in ("step", "forward_backward", "update", "allreduce")}
        for i in range(args.warmup, args.warmup + args.steps):
            comm.Barrier()
            began = time.perf_counter()
            parts = step(i)
            slowest = np.array([time.perf_counter() - began, *parts])   # the job's step is its slowest rank's
            comm.Allreduce(MPI.IN_PLACE, slowest, op=MPI.MAX)
            for key, value in zip(timed, slowest):
                timed[key].append(float(value))

        alone = []
        if dist.size > 1:
            for _ in range(max(3, min(20, args.steps))):
                comm.Barrier()
                began = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, opt.flat, op=MPI.SUM)
                elapsed = np.array([time.perf_counter() - began])
                comm.Allreduce(MPI.IN_PLACE, elapsed, op=MPI.MAX)
                alone.append(float(elapsed[0]))
    if dist.is_root:
        result = {"model": args.model, "ranks": dist.size, "workers_per_rank": workers,
                  "global_batch": args.batch_size, "train_examples": len(train), "parameters": params,
                  "gradient_bytes": int(opt.flat.nbytes), "timed_steps": args.steps, "warmup_steps": args.warmup,
                  **{f"{key}_seconds": values for key, values in timed.items()}, "allreduce_alone_seconds": alone}
        with open(args.result, "w") as f:
            json.dump(result, f)


# ------------------------------------------------------------------ launcher

def _mpiexec():
    for path in (os.path.dirname(sys.executable), None):
        found = shutil.which("mpiexec", path=path)
        if found:
            return found
    sys.exit("scaling.py: no mpiexec found: pip install 'mocrograd[mpi]'")


def _median(values):
    return statistics.median(values) if values else None


def summarize(runs):
    """Medians (and minima: the steps a shared machine disturbed least) per (model, ranks) over every
    timed step of every repeat, and the derived numbers."""
    out = {}
    for model in sorted({r["model"] for r in runs}):
        rows = {}
        for ranks in sorted({r["ranks"] for r in runs if r["model"] == model}):
            mine = [r for r in runs if r["model"] == model and r["ranks"] == ranks]
            first = mine[0]
            row = {key: first[key] for key in ("workers_per_rank", "global_batch", "parameters", "gradient_bytes")}
            for key in ("step_seconds", "forward_backward_seconds", "update_seconds", "allreduce_seconds",
                        "allreduce_alone_seconds"):
                values = [v for r in mine for v in r[key]]
                row[key.replace("_seconds", "")] = _median(values)
                row[key.replace("_seconds", "_min")] = min(values) if values else None
            row["repeats"] = len(mine)
            if row["allreduce_alone"]:
                # ring allreduce moves 2 (N - 1) / N times the buffer per rank
                moved = 2 * (ranks - 1) / ranks * row["gradient_bytes"]
                row["allreduce_alone_gbytes_per_s"] = moved / row["allreduce_alone"] / 1e9
            # forward 2 x params, backward 4 x params FLOPs per example
            row["gflops_per_step"] = 6 * row["parameters"] * row["global_batch"] / 1e9
            row["gflops_per_s"] = row["gflops_per_step"] / row["step"]
            rows[ranks] = row
        if 1 in rows:
            for ranks, row in rows.items():
                row["speedup"] = rows[1]["step"] / row["step"]
                row["efficiency"] = row["speedup"] / ranks
                row["speedup_min"] = rows[1]["step_min"] / row["step_min"]   # from the least disturbed steps
        out[model] = {str(k): v for k, v in rows.items()}
    return out


# docs/scaling.md's model: N machines, each as fast as this one, ring allreduce over a network
LINKS = {"10 Gbit/s": (10e9, 20e-6), "100 Gbit/s": (100e9, 5e-6)}   # bandwidth (bit/s), latency per message (s)
MACHINES = (1, 2, 4, 8, 16, 32, 64)
BATCHES = (32, 1024)


def predict(forward_backward, update, nbytes, batch, machines, bits_per_s, latency, measured_batch=32):
    """Predicted seconds per step on ``machines`` machines (see docs/scaling.md).

    forward_backward: one machine's time for a global batch of ``measured_batch`` (scaled
    linearly to ``batch``), split among the machines (the largest share decides);
    update: starting the gradients, scaling and the optimizer update, which every machine repeats in full;
    ring allreduce: 2 (N - 1) / N x bytes at the link's bandwidth plus 2 (N - 1) latencies."""
    share = -(-batch // machines)
    compute = forward_backward * share / measured_batch + update
    if machines == 1:
        return compute
    return compute + 2 * (machines - 1) / machines * nbytes * 8 / bits_per_s + 2 * (machines - 1) * latency


def model_table(summary, model="bigger"):
    """Predicted efficiency t(1) / (N t(N)) on 1 to 64 machines, from the least disturbed 1-rank steps."""
    one = summary.get(model, {}).get("1")
    if not one:
        return None
    fb, update, nbytes = one["forward_backward_min"], one["update_min"], one["gradient_bytes"]
    table = {"model": model, "measured_batch": one["global_batch"], "forward_backward_seconds": fb,
             "update_seconds": update, "gradient_bytes": nbytes,
             "compute_rate_gflops": one["gflops_per_step"] / (fb + update),
             "links": {name: {"bits_per_s": bw, "latency_s": lat} for name, (bw, lat) in LINKS.items()}, "rows": []}
    for machines in MACHINES:
        row = {"machines": machines}
        for batch in BATCHES:
            base = predict(fb, update, nbytes, batch, 1, 1, 0, one["global_batch"])
            for name, (bw, lat) in LINKS.items():
                step = predict(fb, update, nbytes, batch, machines, bw, lat, one["global_batch"])
                row[f"batch {batch}, {name}"] = {"step_seconds": step, "efficiency": base / (machines * step)}
        table["rows"].append(row)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--models", default="normal,bigger", help="comma-separated: normal, longer, bigger")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--repeats", type=int, default=3, help="launches of each (model, ranks)")
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the JSON goes")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one launch may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    plan = QUICK if args.quick else PLAN
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ranks_list = [int(n) for n in args.ranks.split(",")]
    mpiexec, runs = _mpiexec(), []
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "python": platform.python_version(), "cores": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "loadavg_before": _loadavg()}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for model in models:
                length, steps, warmup = plan[model]
                for ranks in ranks_list:
                    result = os.path.join(scratch, f"{model}-{ranks}-{repeat}.json")
                    command = [mpiexec, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker",
                               "--model", model, "--length", str(length), "--steps", str(steps),
                               "--warmup", str(warmup), "--batch-size", str(args.batch_size), "--result", result]
                    began = time.perf_counter()
                    done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=args.timeout)
                    if done.returncode != 0:
                        sys.exit(f"scaling.py: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
                    with open(result) as f:
                        run = json.load(f)
                    run["repeat"], run["launch_seconds"], run["loadavg_after"] = repeat, time.perf_counter() - began, \
                        _loadavg()
                    runs.append(run)
                    print(f"repeat {repeat + 1}/{args.repeats} {model:>6} ranks {ranks}: "
                          f"step {statistics.median(run['step_seconds']) * 1e3:9.2f} ms", flush=True)
    try:
        import mpi4py
        from mpi4py import MPI
        meta["mpi4py"], meta["mpi"] = mpi4py.__version__, MPI.Get_library_version().splitlines()[0].strip()
    except Exception as error:  # noqa: BLE001 -- a description only
        meta["mpi"] = f"unknown ({error})"
    meta["loadavg_after"] = _loadavg()
    summary = summarize(runs)
    report = {"meta": meta, "summary": summary, "model": model_table(summary), "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\n{'model':>6} {'ranks':>5} {'workers':>7} {'step ms':>10} {'fwd+bwd ms':>10} {'update ms':>9} "
          f"{'allreduce ms':>12} {'alone ms':>9} {'GB/s':>6} {'speedup':>7}")
    for model, rows in report["summary"].items():
        for ranks, row in rows.items():
            alone = row["allreduce_alone"]
            print(f"{model:>6} {ranks:>5} {row['workers_per_rank']:>7} {row['step'] * 1e3:10.2f} "
                  f"{row['forward_backward'] * 1e3:10.2f} {row['update'] * 1e3:9.2f} {row['allreduce'] * 1e3:12.2f} "
                  f"{alone * 1e3 if alone else 0:9.2f} {row.get('allreduce_alone_gbytes_per_s', 0):6.2f} "
                  f"{row.get('speedup', float('nan')):7.2f}")
    if report["model"]:
        table = report["model"]
        print(f"\npredicted efficiency of Bigger on N machines ({table['compute_rate_gflops']:.1f} GFLOP/s each):")
        columns = [key for key in table["rows"][0] if key != "machines"]
        print("     N  " + "  ".join(f"{c:>24}" for c in columns))
        for row in table["rows"]:
            print(f"{row['machines']:>6}  " + "  ".join(f"{row[c]['efficiency'] * 100:23.1f}%" for c in columns))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
