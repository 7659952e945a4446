"""The benchmark suite: ``bash benchmarks/run.sh`` (or ``python benchmarks/run.py``), ``--help`` for options.

The original protocol: Normal trains on LENGTH examples, Longer on LENGTH/10 and
Bigger on LENGTH/100 (batch 32, SGD lr 0.01, L2 1e-4 on the weights, EPOCHS epochs
of a training and a validation pass). Each network trains with every configuration
of mocrograd -- naive; optimized with 1, 10, 64, 256 workers and with the core count;
dynamic -- and with its peers on the same work: plain NumPy (hand-written backward,
NumPy's BLAS) and PyTorch CPU with one thread and with all cores (skipped, with a
note, when ``import torch`` fails). See ``peers.py`` for how the peers match ours.

Every run is a fresh interpreter (``child.py``, started with subprocess: a new
process image, never a fork of this one) so runs cannot contaminate each other and
each run's peak RSS is its own. Repeats are the outermost loop and every
configuration runs once per repeat, so slow drift of the shared machine's load hits
all contenders alike; /proc/loadavg is recorded before and after every run. Only the
``fit`` call is timed.

Then the worker settings run once more, alternated fit by fit inside one process per
network (``alternate.py``, ALTERNATE_ROUNDS rounds): ratios that a shared machine's
drift disturbs less than those of fresh processes minutes apart.

Then the kernel micro-benchmarks (``kernels.py``) run in one more fresh process.
Results: a Markdown table on stdout and in OUT/latest.md, raw numbers in
OUT/latest.json, a chart in OUT/latest.png (OUT defaults to benchmarks/results).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORKS = {"normal": ("Normal", "64-64-32-10"), "longer": ("Longer", "64-(256)x29-10, 30 Linear layers"),
            "bigger": ("Bigger", "64-8192-4096-2048-10")}
PROTOCOL = {"normal": 1, "longer": 10, "bigger": 100}  # the fraction of LENGTH each network trains on
WORKER_COUNTS = (1, 10, 64, 256)
ENV_UNSET_BY_RUN_SH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ENV_RECORDED_PREFIXES = ("OMP_", "GOMP_", "OPENBLAS_", "MKL_", "MOCROGRAD_", "KMP_")
BATCH_SIZE, LR, L2 = 32, 0.01, 1e-4


# ----------------------------------------------------------------------------- configurations

def configurations(cores):
    """(name, spec fields) of every contender, in table order."""
    configs = [("naive", {"kind": "mocrograd", "backend": "naive", "workers": None})]
    configs += [(f"optimized-{w}", {"kind": "mocrograd", "backend": "optimized", "workers": w}) for w in WORKER_COUNTS]
    configs += [("optimized-cores", {"kind": "mocrograd", "backend": "optimized", "workers": cores}),
                ("dynamic", {"kind": "mocrograd", "backend": "dynamic", "workers": None}),
                ("numpy", {"kind": "numpy"}),
                ("torch-1", {"kind": "torch", "threads": 1}),
                ("torch-cores", {"kind": "torch", "threads": cores})]
    return configs


OURS = ["naive"] + [f"optimized-{w}" for w in WORKER_COUNTS] + ["optimized-cores", "dynamic"]
PEERS = ["numpy", "torch-1", "torch-cores"]
TORCH = ["torch-1", "torch-cores"]
SETTINGS = [name for name in OURS if name != "naive"]   # the worker settings (paired compares them)


# ----------------------------------------------------------------------------- arguments

def _env(name, default, cast=int):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"run.py: error: environment variable {name} must be a {cast.__name__}, got {raw!r}")


def build_parser():
    from mocrograd.train import positive_int   # the training command's own argument check
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description="mocrograd's benchmark suite: training time, memory and "
        "accuracy of every kernel configuration beside NumPy and PyTorch, plus kernel micro-benchmarks.",
        epilog="Environment variables give defaults that flags override: BENCH_EPOCHS, BENCH_LENGTH, "
               "BENCH_REPEATS, BENCH_BIGGER_LENGTH, BENCH_ALTERNATE_ROUNDS, BENCH_BUDGET, BENCH_OUT, "
               "BENCH_QUICK=1.")
    parser.add_argument("--epochs", type=positive_int, help="epochs per training run (default 10; quick 1)")
    parser.add_argument("--length", type=positive_int,
                        help="examples for Normal; Longer gets LENGTH/10 (default 1000; quick 200)")
    parser.add_argument("--repeats", type=positive_int, help="runs of each configuration (default 3; quick 1)")
    parser.add_argument("--bigger-length", type=positive_int,
                        help="examples for Bigger (default LENGTH/100, at least 1; quick 3)")
    parser.add_argument("--extra-bigger-length", type=positive_int, action="append", default=[], metavar="N",
                        help="also train Bigger on N examples, as an extra network 'bigger@N' (repeatable); "
                             "e.g. 32 for the original LENGTH=3200, which the 1797 digits cannot give Normal")
    parser.add_argument("--networks", default="normal,longer,bigger",
                        help="comma-separated subset of normal, longer, bigger")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (under a minute): 1 epoch, length 200, Bigger on 3 examples, 1 repeat, "
                             "scaled-down kernel shapes; every configuration still runs")
    parser.add_argument("--alternate-rounds", type=int, metavar="N",
                        help="rounds of the worker settings alternated in one process per network, after the "
                             "fresh-process runs (default 15; quick 2; 0: none); about 3 minutes in all, and one "
                             "round's ratios scatter by 10-25%% on a shared machine")
    parser.add_argument("--budget", type=float,
                        help="seconds of fit time one configuration may take over all its repeats: a slower one "
                             "(naive on Bigger) runs fewer repeats, at least one, noted in the table (default 300)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch (noted in the output)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel micro-benchmarks")
    parser.add_argument("--no-training", action="store_true", help="skip the training runs")
    parser.add_argument("--seed", type=int, default=0, help="initialization seed (the same for every contender)")
    parser.add_argument("--render", metavar="JSON",
                        help="run nothing: write latest.md and latest.png (and latest.json) again from a results file")
    parser.add_argument("--out", metavar="DIR",
                        help="directory for latest.json, latest.md, latest.png (default benchmarks/results)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render and not os.path.isfile(args.render):
        parser.error(f"--render {args.render}: no such file")
    args.quick = args.quick or bool(_env("BENCH_QUICK", 0))
    q = args.quick
    args.epochs = args.epochs or _env("BENCH_EPOCHS", 1 if q else 10)
    args.length = args.length or _env("BENCH_LENGTH", 200 if q else 1000)
    args.repeats = args.repeats or _env("BENCH_REPEATS", 1 if q else 3)
    args.bigger_length = args.bigger_length or _env("BENCH_BIGGER_LENGTH", 3 if q else None)
    args.budget = args.budget if args.budget is not None else _env("BENCH_BUDGET", 300.0, float)
    if args.alternate_rounds is None:
        args.alternate_rounds = _env("BENCH_ALTERNATE_ROUNDS", 2 if q else 15)
    if args.alternate_rounds < 0:
        parser.error(f"--alternate-rounds must be >= 0, got {args.alternate_rounds}")
    args.out = args.out or os.environ.get("BENCH_OUT") or os.path.join(HERE, "results")
    for name in ("epochs", "length", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"{name} must be >= 1")
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown or not networks:
        parser.error(f"--networks: choose from {', '.join(NETWORKS)}, got {args.networks!r}")
    args.networks = networks
    from mocrograd.data import DIGITS
    lengths = {"normal": args.length, "longer": max(1, args.length // PROTOCOL["longer"]),
               "bigger": args.bigger_length or max(1, args.length // PROTOCOL["bigger"])}
    args.plan = [(n, n, lengths[n]) for n in networks]  # (key, model, examples)
    args.plan += [(f"bigger@{n}", "bigger", n) for n in args.extra_bigger_length]
    for key, _, length in args.plan:
        if not 1 <= length <= DIGITS:
            parser.error(f"{key}: needs 1 to {DIGITS} examples (the digits data), got {length}")
    return args


# ----------------------------------------------------------------------------- machine and load

def loadavg():
    """The 1, 5 and 15 minute load averages and running/total tasks from /proc/loadavg."""
    try:
        with open("/proc/loadavg") as f:
            fields = f.read().split()
        return {"1min": float(fields[0]), "5min": float(fields[1]), "15min": float(fields[2]),
                "running_tasks": fields[3]}
    except (OSError, IndexError, ValueError):
        try:
            one, five, fifteen = os.getloadavg()
            return {"1min": one, "5min": five, "15min": fifteen, "running_tasks": None}
        except OSError:
            return None


def busy_cpu_seconds():
    """CPU-seconds all processes of the machine have spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def env_handling():
    """What run.sh did to the environment (it unsets ENV_UNSET_BY_RUN_SH) and what children inherit."""
    via_run_sh = os.environ.get("MOCROGRAD_BENCH_RUN_SH") == "1"
    handled = {"via_run_sh": via_run_sh, "unset": {}}
    for name in ENV_UNSET_BY_RUN_SH:
        if via_run_sh:
            was_set = os.environ.get(f"MOCROGRAD_BENCH_WAS_SET_{name}") == "1"
            previous = os.environ.get(f"MOCROGRAD_BENCH_PREV_{name}") if was_set else None
            handled["unset"][name] = {"unset_by_run_sh": True, "was_set": was_set, "previous_value": previous}
        else:
            handled["unset"][name] = {"unset_by_run_sh": False, "was_set": name in os.environ,
                                      "previous_value": os.environ.get(name),
                                      "note": "run.py started directly: inherited as is"}
    handled["inherited"] = {k: v for k, v in sorted(os.environ.items())
                            if k.startswith(ENV_RECORDED_PREFIXES) and not k.startswith("MOCROGRAD_BENCH_")}
    return handled


def child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCROGRAD_BENCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def git_revision():
    try:
        repo = os.path.dirname(HERE)
        rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def probe_torch(python):
    """torch's version and default threads from a fresh process; (info, None) or (None, why it is skipped)."""
    code = ("import json, sys, torch; sys.path.insert(0, sys.argv[1]); from kernels import threadpool_info; "
            "print(json.dumps({'version': torch.__version__, 'default_threads': torch.get_num_threads(), "
            "'threadpools': threadpool_info()}))")
    try:
        done = subprocess.run([python, "-c", code, HERE], capture_output=True, text=True, timeout=300, env=child_env())
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"could not start Python to import torch: {error}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["import torch failed"])[-1]
        return None, f"import torch failed: {last}"
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def machine_info(torch_info):
    from importlib import metadata

    import mocrograd
    from kernels import threadpool_info

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {"cpu_model": cpu_model(), "os_cpu_count": os.cpu_count(), "affinity_cores": affinity,
            "mocrograd_cpu_count": mocrograd.cpu_count(), "openmp_enabled": mocrograd.openmp_enabled(),
            "memory_gib": memory_total_gib(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "sklearn": metadata.version("scikit-learn"),
            "torch": torch_info["version"] if torch_info else None,
            "torch_default_threads": torch_info["default_threads"] if torch_info else None,
            "mocrograd": mocrograd.__version__, "mocrograd_path": os.path.dirname(mocrograd.__file__),
            "git_revision": git_revision(), "build": mocrograd.build_info(),
            # NumPy's BLAS and mocrograd's OpenMP (read before scikit-learn/SciPy load their own)
            "threadpools": threadpool_info(),
            "torch_threadpools": torch_info["threadpools"] if torch_info else None}


# ----------------------------------------------------------------------------- running

def core_speeds(size=192, calls=15):
    """GFLOP/s of mocrograd's size^3 float32 product on one worker, pinned to each CPU this
    process may use in turn (median of ``calls``; ~10 ms in all), keyed by CPU number.

    On a virtual machine the host can slow a core for seconds to minutes (another guest
    on it, or on its SMT sibling) without any process of ours seeing it in /proc/stat:
    this is the record of that. None where affinity cannot be set (not Linux)."""
    import mocrograd
    from mocrograd import Matrix

    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    a = Matrix(np.ones((size, size), np.float32))
    speeds = {}
    try:
        with mocrograd.backend("optimized", 1):
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                a @ a
                times = []
                for _ in range(calls):
                    start = time.perf_counter()
                    a @ a
                    times.append(time.perf_counter() - start)
                speeds[str(cpu)] = round(2 * size ** 3 / statistics.median(times) / 1e9, 1)
    finally:
        os.sched_setaffinity(0, cpus)   # before the next child starts: it inherits this affinity
    return speeds


def run_child(spec, workdir, tag):
    """One fresh-interpreter training run; the child's result plus wall time, rusage and load."""
    spec_path = os.path.join(workdir, f"{tag}.spec.json")
    result_path = os.path.join(workdir, f"{tag}.result.json")
    log_path = os.path.join(workdir, f"{tag}.log")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    load_before, cores_before = loadavg(), core_speeds()
    busy_before = busy_cpu_seconds()
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, os.path.join(HERE, "child.py"), spec_path, result_path],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=child_env())
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage: its peak RSS, its CPU time
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    busy_after = busy_cpu_seconds()
    child_cpu = usage.ru_utime + usage.ru_stime
    # cores kept busy by every other process while this run's process lived (its own CPU time taken out)
    others = (max(0.0, (busy_after - busy_before - child_cpu) / wall)
              if busy_before is not None and busy_after is not None and wall > 0 else None)
    record = {"load_before": load_before, "load_after": loadavg(), "process_wall_seconds": wall,
              "exit_code": process.returncode, "child_maxrss_mb": usage.ru_maxrss / 1024,
              "child_cpu_seconds": child_cpu, "other_busy_cores": others, "core_gflops_before": cores_before}
    if process.returncode == 0 and os.path.exists(result_path):
        with open(result_path) as f:
            record.update(json.load(f))
        record["status"] = "ok"
    else:
        with open(log_path) as f:
            record.update(status="error", log_tail=f.read()[-3000:])
    return record


def repeat_order(configs, repeat, seed=0):
    """The configurations in the order repeat ``repeat`` (from 0) runs them: repeats come
    in pairs, the first of a pair in a shuffled order (seeded by ``seed`` and the pair's
    number), the second in its reverse. Over a pair every configuration's positions add
    up to the same, so a host that speeds up or slows down over a repeat favours none;
    and as the shuffle changes from pair to pair, no configuration always runs right
    after the same one: whatever a neighbour does to the next run (on a shared VM, not
    settled here) is spread over the settings instead of repeated in every repeat."""
    shuffled = [configs[i] for i in np.random.default_rng([seed, repeat // 2]).permutation(len(configs))]
    return shuffled if repeat % 2 == 0 else shuffled[::-1]


def train_all(args, cores, torch_skip, workdir, log=sys.stderr):
    """Every (network, configuration) for every repeat; the JSON-ready training results."""
    from mocrograd.data import load_digits

    configs = configurations(cores)
    results, data_files = {}, {}
    for key, model, length in args.plan:
        train, val = load_digits(length)
        path = _data_path(workdir, key)
        np.savez(path, train_x=train.x, train_y=train.y, val_x=val.x, val_y=val.y)
        data_files[key] = path
        results[key] = {"model": model, "examples": length, "train_examples": len(train), "val_examples": len(val),
                        "configs": {}}
        for name, fields in configs:
            entry = {"kind": fields["kind"], "spec": fields, "runs": [], "notes": []}
            if fields["kind"] == "torch" and torch_skip:
                entry.update(status="skipped", reason=torch_skip)
            results[key]["configs"][name] = entry

    for repeat in range(args.repeats):
        for key, model, length in args.plan:
            for name, fields in repeat_order(configs, repeat, args.seed):
                entry = results[key]["configs"][name]
                if entry.get("status") == "skipped":
                    continue
                times = [r["seconds"] for r in entry["runs"] if r["status"] == "ok"]
                if times and repeat >= max(1, int(args.budget // statistics.mean(times))):
                    if not entry.get("budget_limited"):
                        entry["budget_limited"] = True
                        entry["notes"].append(f"{len(times)} of {args.repeats} repeats: one run takes "
                                              f"{statistics.mean(times):.0f} s, over the {args.budget:g} s budget "
                                              "of a configuration")
                    continue
                if any(r["status"] == "error" for r in entry["runs"]):
                    continue  # it failed once: do not spend the other repeats on it
                spec = dict(fields, network=model, data=data_files[key], epochs=args.epochs, batch_size=BATCH_SIZE,
                            lr=LR, l2=L2, seed=args.seed)
                run = run_child(spec, workdir, f"{_file_key(key)}-{name}-{repeat}")
                run["repeat"] = repeat + 1
                entry["runs"].append(run)
                shown = (f"{run['seconds']:.3f} s, peak {run['child_maxrss_mb']:.0f} MB" if run["status"] == "ok"
                         else "FAILED:\n" + run["log_tail"][-1500:])
                load = run["load_before"]["1min"] if run["load_before"] else float("nan")
                others = run.get("other_busy_cores")
                others = f", other processes {others:.2f} cores" if others is not None else ""
                gflops = run["core_gflops_before"]
                cores_line = f", cores {'/'.join(f'{v:.0f}' for v in gflops.values())} GFLOP/s" if gflops else ""
                print(f"[{repeat + 1}/{args.repeats}] {key:>10} {name:<16} {shown}  (load {load:.2f}{others}{cores_line})",
                      file=log, flush=True)
    for key in results:
        for entry in results[key]["configs"].values():
            summarize(entry)
    return results


def _file_key(key):
    """A network's key as it appears in file names ("bigger@32" -> "bigger_32")."""
    return key.replace("@", "_")


def _data_path(workdir, key):
    """The .npz a network's runs read their examples from (train_all writes it)."""
    return os.path.join(workdir, f"data-{_file_key(key)}.npz")


def alternate_all(args, cores, workdir, results, log=sys.stderr):
    """alternate.py once per network: the worker settings alternated fit by fit in one
    process, args.alternate_rounds timed rounds; network["alternated"] in place."""
    settings = [[name, fields["backend"], fields["workers"]]
                for name, fields in configurations(cores) if name in SETTINGS]
    for key, model, _ in args.plan:
        tag = f"{_file_key(key)}-alternated"
        spec_path, result_path = os.path.join(workdir, f"{tag}.spec.json"), os.path.join(workdir, f"{tag}.result.json")
        with open(spec_path, "w") as f:
            json.dump({"network": model, "data": _data_path(workdir, key), "epochs": args.epochs,
                       "batch_size": BATCH_SIZE, "lr": LR, "l2": L2, "seed": args.seed,
                       "rounds": args.alternate_rounds, "settings": settings}, f)
        record = run_script([sys.executable, os.path.join(HERE, "alternate.py"), spec_path, result_path],
                            result_path, workdir)
        if record["status"] == "ok":
            shown = ", ".join(f"{name} {statistics.median(t):.3f} s" for name, t in record["times"].items())
        else:
            shown = "FAILED:\n" + record["log_tail"][-1500:]
        results[key]["alternated"] = record
        print(f"[alternated x{args.alternate_rounds}] {key:>10} {shown}", file=log, flush=True)


def summarize(entry):
    """median/min/max of the fit times and the other figures of one configuration's runs."""
    if entry.get("status") == "skipped":
        return
    ok = [r for r in entry["runs"] if r["status"] == "ok"]
    if not ok:
        entry["status"] = "error"
        entry["reason"] = "every run failed; see runs[].log_tail"
        return
    times = [r["seconds"] for r in ok]
    last = ok[-1]
    entry.update(status="ok", n=len(ok), median=statistics.median(times), min=min(times), max=max(times),
                 train_acc=last["train_acc"], val_acc=last["val_acc"], train_loss=last["train_loss"],
                 val_loss=last["val_loss"],
                 peak_rss_mb=statistics.median(r["child_maxrss_mb"] for r in ok),
                 fit_growth_mb=_median_or_none([r["fit_peak_rss_mb"] - r["rss_before_fit_mb"] for r in ok
                                                if r.get("fit_peak_rss_mb") and r.get("rss_before_fit_mb")]),
                 steady_epoch_seconds=_median_or_none([statistics.median(m["seconds"] for m in r["history"][1:])
                                                       for r in ok if len(r["history"]) > 1]),
                 cpu_per_wall=statistics.median(r["cpu_seconds"] / r["seconds"] for r in ok if r["seconds"] > 0),
                 load_1min=[r["load_before"]["1min"] for r in ok if r["load_before"]],
                 other_busy_cores=_median_or_none([r["other_busy_cores"] for r in ok
                                                   if r.get("other_busy_cores") is not None]))
    if len({(r["train_acc"], r["val_acc"]) for r in ok}) > 1:
        entry["notes"].append("the final accuracies differ between repeats (shown: the last repeat)")
    if len(ok) < len(entry["runs"]):
        entry["notes"].append(f"{len(entry['runs']) - len(ok)} run(s) failed")


def _median_or_none(values):
    return statistics.median(values) if values else None


def compare(results):
    """Ratios to PyTorch's best and to NumPy, and the accuracy differences to PyTorch, in place."""
    for network in results.values():
        configs = network["configs"]
        torch_ok = [(configs[n]["median"], n) for n in TORCH if configs[n].get("status") == "ok"]
        best = min(torch_ok) if torch_ok else None
        numpy = configs["numpy"] if configs["numpy"].get("status") == "ok" else None
        network["torch_best"] = best[1] if best else None
        for name, entry in configs.items():
            if entry.get("status") != "ok":
                continue
            if best:
                ref = configs[best[1]]
                entry["vs_torch_best"] = entry["median"] / best[0]
                entry["peak_rss_vs_torch"] = entry["peak_rss_mb"] / ref["peak_rss_mb"]
                entry["train_acc_diff_vs_torch_pts"] = 100 * (entry["train_acc"] - ref["train_acc"])
                entry["val_acc_diff_vs_torch_pts"] = (100 * (entry["val_acc"] - ref["val_acc"])
                                                      if entry["val_acc"] is not None and ref["val_acc"] is not None
                                                      else None)
            if numpy:
                entry["vs_numpy"] = entry["median"] / numpy["median"]
        paired(network)


def paired(network):
    """The worker settings' ratios, paired by repeat, in place (network["paired"]), and
    those of the alternated rounds, paired by round (network["alternated"]["ratios"]).

    Each repeat runs every configuration of a network back to back, so the ratio of
    two of them within one repeat cancels the slow drift of a shared machine's speed,
    which the medians of each configuration over the repeats do not (one slow stretch
    can land in one row's runs and not another's); a round of alternate.py does the
    same, its fits seconds apart instead of process starts. Each measure's best setting
    is chosen by the other's medians (see worker_ratios)."""
    configs = network["configs"]
    fresh = {name: {r["repeat"]: r["seconds"] for r in configs[name]["runs"] if r["status"] == "ok"}
             for name in SETTINGS if configs.get(name, {}).get("status") == "ok"}
    alternated = network.get("alternated")
    rounds = ({name: dict(enumerate(t, 1)) for name, t in alternated["times"].items()}
              if alternated and alternated.get("status") == "ok" else None)
    ratios = worker_ratios(fresh, chosen_by=rounds)
    if ratios:
        network["paired"] = ratios
    if rounds:
        alternated["ratios"] = worker_ratios(rounds, chosen_by=fresh)


def worker_ratios(times, chosen_by=None):
    """Ratios of worker settings from {setting: {repeat or round: seconds}}, each taken
    within a repeat and then summarized over the repeats both ran: median, min, max, n.
    The best setting (fixed worker counts and dynamic) and the best fixed worker count
    are those with the lowest median time in ``chosen_by`` (the other measure's runs of
    the same settings) where it has every setting, else in ``times``. A setting picked
    for its luck in the very runs it is then compared on makes the others look slower
    than they are: with four fixed settings as fast as dynamic and 5-10% noise per run,
    dynamic came out 2.3-4.7% slower than the best of them (benchmarks/selection_bias.py). None
    when no fixed worker count ran."""
    medians = {name: statistics.median(t.values()) for name, t in times.items() if t}
    fixed = [name for name in SETTINGS if name in medians and name != "dynamic"]
    if not fixed:
        return None
    other = bool(chosen_by) and all(chosen_by.get(name) for name in medians)
    choice = {name: statistics.median(chosen_by[name].values()) for name in medians} if other else medians

    def ratio(a, b):
        shared = sorted(set(times.get(a, ())) & set(times.get(b, ())))
        values = [times[a][r] / times[b][r] for r in shared]
        return {"of": [a, b], "median": statistics.median(values), "min": min(values), "max": max(values),
                "n": len(values)} if values else None

    best = min(choice, key=choice.get)
    best_fixed = min(fixed, key=choice.get)
    return {"best": best, "best_fixed": best_fixed, "best_chosen_by": "other" if other else "same",
            "speedup_cores_over_1": ratio("optimized-1", "optimized-cores"),
            "vs_best": {name: ratio(name, best) for name in medians if name != best},
            "dynamic_vs_best_fixed": ratio("dynamic", best_fixed),
            "dynamic_vs_1": ratio("dynamic", "optimized-1")}


# ----------------------------------------------------------------------------- kernels

def _own_cpu_seconds():
    """CPU-seconds of this process and all its finished children."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class OtherLoad:
    """Cores kept busy by processes other than this benchmark between start() and stop()."""

    def __init__(self):
        self.busy, self.own, self.wall = busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()

    def stop(self):
        busy, wall = busy_cpu_seconds(), time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        return max(0.0, (busy - self.busy - (_own_cpu_seconds() - self.own)) / wall)


def run_kernels(args, workdir):
    """kernels.py in one fresh process; its JSON report, or an error record."""
    path = os.path.join(workdir, "kernels.json")
    command = [sys.executable, os.path.join(HERE, "kernels.py"), "--json", path, "--quiet"]
    if args.quick:
        command.append("--quick")
    return run_script(command, path, workdir)


def run_script(command, result_path, workdir):
    """A benchmark script in one fresh process that writes its JSON to result_path: that
    JSON with status "ok", or status "error" and the tail of its output; either way the
    load average before and after and the cores other processes kept busy meanwhile."""
    load_before, others = loadavg(), OtherLoad()
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=child_env())
    load = {"load_before": load_before, "load_after": loadavg(), "other_busy_cores": others.stop()}
    if done.returncode != 0 or not os.path.exists(result_path):
        return {"status": "error", "log_tail": (done.stdout + done.stderr)[-3000:], **load}
    with open(result_path) as f:
        record = json.load(f)
    record.update(status="ok", **load)
    return record


# ----------------------------------------------------------------------------- output

def _fmt_cores(value):
    return "?" if value is None else f"{value:.2f}"


def core_speed_line(training):
    """The Markdown line on each CPU's speed before the training runs (``core_speeds``):
    median and min-max over the runs; None when no run recorded it (older results)."""
    per_cpu = {}
    for network in (training or {}).values():
        for entry in network["configs"].values():
            for run in entry.get("runs", []):
                for cpu, gflops in (run.get("core_gflops_before") or {}).items():
                    per_cpu.setdefault(cpu, []).append(gflops)
    if not per_cpu:
        return None
    cells = [f"CPU {cpu} {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for cpu, v in sorted(
        per_cpu.items(), key=lambda item: int(item[0]))]
    return ("- **Core speed** before each training run, GFLOP/s of a 192^3 product on one pinned core, "
            "median (min-max) over the runs: " + ", ".join(cells) + ". A virtual machine's host can slow a "
            "core for minutes without any process here showing it; runs in such a stretch are slower.")


def _build_line(build):
    """The Markdown line on how the core was compiled (``mocrograd.build_info``); None for
    results from before it was recorded."""
    if not build:
        return None
    return (f"- **Build** (`mocrograd.build_info()`): {build['compiler']}, "
            f"{'native' if build['native'] else 'portable'}, {build['vector_bytes']}-byte vectors, "
            f"register tile {build['register_tile']}; C flags `{' '.join(build['c_args'])}`")


def _fmt_load(load):
    return f"{load['1min']:.2f} / {load['5min']:.2f} / {load['15min']:.2f}" if load else "unknown"


def _threadpools_line(pools):
    parts = []
    for p in pools or []:
        name = p.get("internal_api") or p.get("user_api")
        extra = ", ".join(str(x) for x in (p.get("version"), p.get("architecture"), p.get("threading_layer")) if x)
        parts.append(f"{name} ({p.get('prefix')}{', ' + extra if extra else ''}): {p.get('num_threads')} threads")
    return "; ".join(parts) or "none found"


def markdown(report):
    m, s = report["machine"], report["settings"]
    lines = [f"# mocrograd benchmarks, {report['date']}", ""]
    lines += [f"- **Machine**: {m['cpu_model']}, {m['os_cpu_count']} logical CPUs ({m['affinity_cores']} usable); "
              f"mocrograd uses {m['mocrograd_cpu_count']} threads at most, OpenMP "
              f"{'enabled' if m['openmp_enabled'] else 'NOT enabled (single-threaded build)'}; "
              f"{m['memory_gib']} GiB memory",
              f"- **Versions**: Python {m['python']}, NumPy {m['numpy']}, "
              f"PyTorch {m['torch'] or '(' + s['torch'] + ')'}, "
              f"mocrograd {m['mocrograd']} (git {m['git_revision'] or 'unknown'})",
              *filter(None, [_build_line(m.get("build"))]),
              f"- **Thread pools** (threadpoolctl): {_threadpools_line(m['threadpools'])}",
              f"- **Load average** (1 / 5 / 15 min): {_fmt_load(report['load']['start'])} at the start, "
              f"{_fmt_load(report['load']['end'])} at the end; other processes kept "
              f"{_fmt_cores(report['load'].get('other_busy_cores'))} cores busy on average during the benchmark. "
              "The machine may be shared: another busy process slows the multi-threaded runs most (see each "
              "row's *other load*; every run's figures are in latest.json).",
              *filter(None, [core_speed_line(report.get("training"))]),
              "- **Environment**: " + _env_line(report["environment"]),
              f"- **Protocol**: {s['epochs']} epoch(s) of a training and a validation pass, batch {BATCH_SIZE}, "
              f"SGD lr {LR}, L2 {L2} on the weights; {s['repeats']} repeat(s) per configuration, each a fresh "
              "process, repeats outermost (" + (
                  "in pairs: a shuffled order, then its reverse, shuffled anew for each pair"
                  if s.get("order") == "shuffled pairs" else "each in the table's order, every other one reversed")
              + "); only `fit` is timed"
              + ("; **quick mode** (smoke run)" if s["quick"] else ""),
              ""]
    if report.get("training"):
        lines += ["## Training", "",
                  "Columns: *median*, *min-max* of the fit time over *n* runs (*: fewer runs, see the notes); "
                  "*s/epoch after 1st* = median time of the epochs after the first (without first-call warm-up, "
                  "which dominates PyTorch's short runs); *vs PyTorch* = median / PyTorch's best "
                  "median (below 1: faster than PyTorch); *vs NumPy* likewise; *peak RSS* = the process's peak "
                  "resident memory (imports included), *fit +MB* = its growth during the fit; *CPU/wall* = CPU "
                  "seconds per second of fit (threads really used); final *train/val acc* and their difference from "
                  "PyTorch's in percentage points (same initial weights, batches and loss: it should be near 0); "
                  "*other load* = "
                  "cores kept busy by other processes during the run (median over runs, from /proc/stat) and the "
                  "1-minute load average before the runs (min-max).", ""]
        chosen = [r for network in report["training"].values()
                  for r in (network.get("paired"), (network.get("alternated") or {}).get("ratios")) if r]
        if chosen and all(r.get("best_chosen_by") == "other" for r in chosen):
            lines += ["In the ratio tables under each network, the best settings are those with the lowest "
                      "medians in the other measure (fresh processes and one process), so that their luck in "
                      "the runs they are compared on does not count against the others.", ""]
        for key, network in report["training"].items():
            title, sizes = NETWORKS[network["model"]]
            lines += [f"### {title}{'' if key in NETWORKS else ', extra run ' + key} ({sizes}): "
                      f"{network['train_examples']} training + {network['val_examples']} validation examples", "",
                      "| configuration | median s | min-max s | n | s/epoch after 1st | vs PyTorch | vs NumPy "
                      "| peak RSS MB | fit +MB | CPU/wall | train acc | val acc "
                      "| Δ acc vs PyTorch (train / val, pts) | other load: cores (1-min avg) |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name, e in network["configs"].items():
                lines.append(_training_row(name, e, network.get("torch_best")))
            cores = network["configs"]["optimized-cores"]["spec"]["workers"]
            lines += _ratio_lines(network.get("paired"), cores,
                                  "Worker settings, paired by repeat: each ratio is taken within a repeat (its "
                                  "runs ran back to back), then the median (min-max) over the repeats.")
            alternated = network.get("alternated")
            if alternated and alternated.get("status") == "ok":
                lines += _ratio_lines(alternated.get("ratios"), cores,
                                      f"The same settings alternated fit by fit in one process "
                                      f"(`alternate.py`, {alternated['rounds']} rounds after an untimed one; "
                                      "each ratio taken within a round, then the median (min-max) over the "
                                      "rounds). Medians, s: " + ", ".join(
                                          f"{name} {statistics.median(t):.3f}"
                                          for name, t in alternated["times"].items()) + ".")
            elif alternated:
                lines += ["", "Alternated in one process: FAILED.", "", "```", alternated.get("log_tail", ""), "```"]
            notes = [f"{name}: {note}" for name, e in network["configs"].items() for note in e.get("notes", [])]
            notes += [f"{name}: skipped, {e['reason']}" for name, e in network["configs"].items()
                      if e.get("status") == "skipped"]
            notes += [f"{name}: FAILED, {e.get('reason', '')}" for name, e in network["configs"].items()
                      if e.get("status") == "error"]
            if notes:
                lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)]
            lines.append("")
        lines += _accuracy_summary(report["training"])
    kernels = report.get("kernels")
    if kernels and kernels.get("status") == "ok":
        import kernels as kernel_module
        lines += ["## Kernels", "",
                  f"Each number is the fastest of repeated calls; load {_fmt_load(kernels['load_before'])} before, "
                  f"{_fmt_load(kernels['load_after'])} after, other processes kept "
                  f"{_fmt_cores(kernels.get('other_busy_cores'))} cores busy meanwhile"
                  + (" (quick mode: scaled-down shapes)" if kernels["quick"] else "")
                  + ".", "", kernel_module.markdown(kernels), ""]
    elif kernels:
        lines += ["## Kernels", "", "FAILED:", "", "```", kernels.get("log_tail", ""), "```", ""]
    return "\n".join(lines)


def _env_line(env):
    parts = []
    for name, h in env["unset"].items():
        if h["unset_by_run_sh"]:
            parts.append(f"{name} unset by run.sh (was {repr(h['previous_value']) if h['was_set'] else 'not set'})")
        else:
            parts.append(f"{name} {'= ' + repr(h['previous_value']) if h['was_set'] else 'not set'} (run.py started "
                         "directly, not unset)")
    inherited = ", ".join(f"{k}={v}" for k, v in env["inherited"].items())
    return "; ".join(parts) + (f"; inherited: {inherited}" if inherited else "")


def _training_row(name, e, torch_best):
    label = name + (" (best PyTorch)" if name == torch_best else "")
    if e.get("status") == "skipped":
        return f"| {label} | skipped |" + " |" * 12
    if e.get("status") != "ok":
        return f"| {label} | FAILED |" + " |" * 12
    n = f"{e['n']}" + ("*" if e.get("budget_limited") else "")
    acc = lambda v: "-" if v is None else f"{v:.3f}"
    ratio = lambda v: "-" if v is None else f"{v:.3g}"
    diff_t, diff_v = e.get("train_acc_diff_vs_torch_pts"), e.get("val_acc_diff_vs_torch_pts")
    diff = "-" if diff_t is None else f"{diff_t:+.1f} / " + ("-" if diff_v is None else f"{diff_v:+.1f}")
    growth = "-" if e.get("fit_growth_mb") is None else f"{e['fit_growth_mb']:.0f}"
    loads = e.get("load_1min") or []
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
    others = e.get("other_busy_cores")
    load = ("-" if others is None else f"{others:.2f}") + f" ({load})"
    steady = "-" if e.get("steady_epoch_seconds") is None else f"{e['steady_epoch_seconds']:.4f}"
    return (f"| {label} | {e['median']:.3f} | {e['min']:.3f}-{e['max']:.3f} | {n} | {steady} "
            f"| {ratio(e.get('vs_torch_best'))} "
            f"| {ratio(e.get('vs_numpy'))} | {e['peak_rss_mb']:.0f} | {growth} | {e['cpu_per_wall']:.2f} "
            f"| {acc(e['train_acc'])} | {acc(e['val_acc'])} | {diff} | {load} |")


def _ratio_lines(p, cores, caption):
    """Worker settings' ratios (see worker_ratios) under a caption, as a small table."""
    if not p:
        return []
    fmt = lambda r: "-" if r is None else f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}, n={r['n']})"
    lines = ["", caption, "",
             "| ratio | median (min-max, n) |", "|---|---:|",
             f"| speed-up of {cores} workers (optimized-cores) over 1 (optimized-1 / optimized-cores) "
             f"| {fmt(p['speedup_cores_over_1'])} |"]
    lines += [f"| {name} / best setting ({p['best']}) | {fmt(r)} |" for name, r in p["vs_best"].items()]
    lines += [f"| dynamic / best fixed worker count ({p['best_fixed']}) | {fmt(p['dynamic_vs_best_fixed'])} |",
              f"| dynamic / optimized-1 | {fmt(p['dynamic_vs_1'])} |"]
    return lines


def _accuracy_summary(training):
    lines = ["### Learning: mocrograd against PyTorch", ""]
    for key, network in training.items():
        configs = network["configs"]
        best = network.get("torch_best")
        if not best:
            lines.append(f"- {key}: no PyTorch run to compare with")
            continue
        ours = [configs[name] for name in OURS if configs[name].get("status") == "ok"]
        diffs = [abs(d) for e in ours for d in (e.get("train_acc_diff_vs_torch_pts"),
                                                 e.get("val_acc_diff_vs_torch_pts")) if d is not None]
        if not diffs:
            continue
        reference = configs[best]["train_loss"]
        loss_gap = max(abs(e["train_loss"] - reference) / abs(reference) for e in ours) if reference else None
        verdict = "within 3 points of" if max(diffs) <= 3 else "MORE than 3 points away from"
        grain = (f"one of the {network['val_examples']} validation examples is {100 / network['val_examples']:.1f} "
                 f"points, one of the {network['train_examples']} training examples "
                 f"{100 / network['train_examples']:.1f}") if network["val_examples"] else "no validation examples"
        loss = f"; final training loss within {100 * loss_gap:.2g}% of PyTorch's" if loss_gap is not None else ""
        lines.append(f"- {key}: the final accuracies of every mocrograd configuration are {verdict} PyTorch's "
                     f"(largest difference {max(diffs):.1f} points; {grain}){loss}")
    return lines + ["", "Identical initial weights, batches and loss: the curves differ only by float rounding, which "
                    "a deep ReLU network (Longer's 30 layers) amplifies epoch by epoch. Per-epoch losses and "
                    "accuracies of every run are in latest.json (`runs[].history`).", ""]


def chart(report, path):
    """Median fit time (min-max bars) of every configuration, one panel per network, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    training = report["training"]
    fig, axes = plt.subplots(1, len(training), figsize=(4.2 * len(training), 4.6), squeeze=False)
    colors = {"naive": "#9e9e9e", "numpy": "#2ca02c", "torch-1": "#ff7f0e", "torch-cores": "#d62728"}
    for ax, (key, network) in zip(axes[0], training.items()):
        names, medians, low, high, shades = [], [], [], [], []
        for name, e in network["configs"].items():
            if e.get("status") != "ok":
                continue
            names.append(name)
            medians.append(e["median"])
            low.append(e["median"] - e["min"])
            high.append(e["max"] - e["median"])
            shades.append(colors.get(name, "#1f77b4"))
        positions = range(len(names))
        ax.bar(positions, medians, yerr=[low, high], color=shades, capsize=2)
        ax.set_yscale("log")
        ax.set_xticks(list(positions))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{NETWORKS[network['model']][0]}{'' if key in NETWORKS else ' ' + key} "
                     f"({network['train_examples']}+{network['val_examples']} ex.)", fontsize=10)
        ax.set_ylabel("fit time, s (log)")
        ax.grid(axis="y", alpha=0.3, which="both")
    load = report["load"]["start"]
    fig.suptitle(f"mocrograd vs NumPy and PyTorch, {report['settings']['epochs']} epoch(s); "
                 f"{report['machine']['cpu_model']}, {report['machine']['mocrograd_cpu_count']} threads; "
                 f"load {load['1min']:.1f} at start" if load else "", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"latest.{name}") for name in ("json", "md", "png")}
    if report.get("training"):
        try:
            chart(report, paths["png"])
        except ImportError:
            report["notes"].append("latest.png not written: matplotlib is not installed (pip install matplotlib)")
    text = markdown(report)
    with open(paths["md"], "w") as f:
        f.write(text)
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    return text, paths


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        if report.get("training"):
            compare(report["training"])
        text, paths = write_outputs(report, args.out)
        print(text)
        return 0
    import mocrograd

    started, others = time.perf_counter(), OtherLoad()
    cores = mocrograd.cpu_count()
    torch_info, torch_skip = (None, "--no-torch given") if args.no_torch else probe_torch(sys.executable)
    if torch_skip:
        print(f"PyTorch skipped: {torch_skip}", file=sys.stderr)
    report = {"schema": 1, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(torch_info), "environment": env_handling(),
              "settings": {"epochs": args.epochs, "length": args.length, "repeats": args.repeats,
                           "quick": args.quick, "budget_seconds": args.budget, "seed": args.seed,
                           "order": "shuffled pairs",
                           "alternate_rounds": args.alternate_rounds,
                           "batch_size": BATCH_SIZE, "lr": LR, "l2": L2, "networks": [p[0] for p in args.plan],
                           "examples": {key: length for key, _, length in args.plan},
                           "configurations": [name for name, _ in configurations(cores)],
                           "torch": "skipped: " + torch_skip if torch_skip else "included"},
              "load": {"start": loadavg()}, "notes": []}
    with tempfile.TemporaryDirectory(prefix="mocrograd-bench-") as workdir:
        if not args.no_training:
            report["training"] = train_all(args, cores, torch_skip, workdir)
            if args.alternate_rounds:
                alternate_all(args, cores, workdir, report["training"])
            compare(report["training"])
        if not args.no_kernels:
            print("kernel micro-benchmarks ...", file=sys.stderr, flush=True)
            report["kernels"] = run_kernels(args, workdir)
    report["load"]["end"] = loadavg()
    report["load"]["other_busy_cores"] = others.stop()
    report["seconds"] = time.perf_counter() - started
    text, paths = write_outputs(report, args.out)
    print(text)
    print(f"\nwritten: {', '.join(p for p in paths.values() if os.path.exists(p))} "
          f"({report['seconds']:.0f} s in all)", file=sys.stderr)
    failed = [f"{key}/{name}" for key, n in report.get("training", {}).items()
              for name, e in n["configs"].items() if e.get("status") == "error"]
    failed += [f"{key}/alternated" for key, n in report.get("training", {}).items()
               if n.get("alternated", {}).get("status") == "error"]
    if report.get("kernels", {}).get("status") == "error":
        failed.append("kernels")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
