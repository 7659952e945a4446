"""One training run in a fresh interpreter: ``python child.py SPEC.json RESULT.json``.

``run.py`` starts one of these per configuration and repeat, so every run starts
from the same state (no warm caches, thread pools or allocator arenas carried over
from the previous contender) and its peak memory is its own. SPEC names the
contender (``kind`` mocrograd / numpy / torch, with its backend, workers or
threads), the network and the data file; RESULT receives the fit's wall time, the
per-epoch metrics and the memory figures.

Only ``fit`` is timed: imports, data loading and model construction come before.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def _status_kib(field):
    """A VmRSS/VmHWM line of /proc/self/status in KiB (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def spec_and_result(doc, argv=None):
    """(SPEC, RESULT) paths from the command line of a script that run.py starts
    (this one, alternate.py); ``--help`` shows the script's docstring ``doc``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", metavar="SPEC", help="the run, a JSON file that run.py writes")
    parser.add_argument("result", metavar="RESULT", help="the JSON file the result is written to")
    args = parser.parse_args(argv)
    return args.spec, args.result


def load_run(spec_path):
    """A run's spec, its data and its fit settings, and mocrograd's model of the spec's
    network built from the spec's seed (alternate.py's runs start the same way)."""
    import mocrograd
    from mocrograd.data import Split
    from mocrograd.nn import build_model

    with open(spec_path) as f:
        spec = json.load(f)
    data = np.load(spec["data"])
    train, val = Split(data["train_x"], data["train_y"]), Split(data["val_x"], data["val_y"])
    settings = dict(epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"], l2=spec["l2"])
    mocrograd.manual_seed(spec["seed"])
    return spec, build_model(spec["network"]), train, val, settings


def main(spec_path, result_path):
    import mocrograd

    spec, model, train, val, settings = load_run(spec_path)
    kind = spec["kind"]
    info = {"kind": kind, "pid": os.getpid()}
    if kind == "mocrograd":
        from mocrograd.train import fit

        mocrograd.set_backend(spec["backend"], spec["workers"])
        name = mocrograd.get_backend()[0]
        # naive is single-threaded; dynamic chooses per call, up to this many
        info.update(backend=name, workers=1 if name == "naive" else spec["workers"] or mocrograd.cpu_count(),
                    cpu_count=mocrograd.cpu_count())

        def run():
            return fit(model, train, val, optimizer="sgd", **settings)
    else:
        import peers

        state = model.state_dict()
        del model  # the peers start from the same weights; mocrograd's copy is freed before timing
        if kind == "numpy":
            from kernels import threadpool_info
            info["blas"] = [{k: lib.get(k) for k in ("internal_api", "num_threads", "version")}
                            for lib in threadpool_info() if lib.get("user_api") == "blas"]
            params = peers.layer_arrays(state)

            def run():
                return peers.fit_numpy(params, train, val, **settings)
        elif kind == "torch":
            import torch

            torch.set_num_threads(spec["threads"])
            info.update(torch=torch.__version__, threads=torch.get_num_threads())
            net = peers.build_torch(state)

            def run():
                return peers.fit_torch(net, train, val, **settings)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        del state

    rss_before = _status_kib("VmRSS")
    peak_reset = _reset_peak()
    start = time.perf_counter()
    cpu_start = time.process_time()
    history = run()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    fit_peak = _status_kib("VmHWM") if peak_reset else None
    final = history[-1] if history else {}
    result = dict(info, seconds=seconds, cpu_seconds=cpu_seconds, history=history,
                  train_acc=final.get("train_acc"), val_acc=final.get("val_acc"),
                  train_loss=final.get("train_loss"), val_loss=final.get("val_loss"),
                  rss_before_fit_mb=rss_before / 1024 if rss_before else None,
                  fit_peak_rss_mb=fit_peak / 1024 if fit_peak else None,
                  process_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*spec_and_result(__doc__)))
