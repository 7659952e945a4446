"""A/B: two or more training settings of the same run, alternated, in fresh processes.

The full benchmark runs a dozen configurations in a fixed order within each repeat, so
a one-second run can land on a slow moment of a shared machine; comparing two settings
closely needs them side by side, many times. This runs ``python -m mocrograd.train``
for each setting in turn, REPEATS rounds, and prints each setting's median training
time (the command's own ``total_seconds``: imports and data loading excluded) and its
ratio to the first setting.

    python benchmarks/ab.py --model bigger --length 10 --repeats 7 optimized:2 dynamic
    python benchmarks/ab.py --model longer --length 100 optimized:1 optimized:2 dynamic

A setting is BACKEND or BACKEND:WORKERS.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from mocrograd.data import DIGITS
from mocrograd.train import HelpFormatter, positive_int


def setting(text):
    backend, _, workers = text.partition(":")
    if backend not in ("naive", "optimized", "dynamic") or (workers and not workers.isdigit()):
        raise argparse.ArgumentTypeError(f"expected BACKEND or BACKEND:WORKERS, got {text!r}")
    return backend, workers or None


def train_seconds(model, length, epochs, backend, workers):
    """total_seconds of one ``python -m mocrograd.train`` run in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "run.json")
        command = [sys.executable, "-m", "mocrograd.train", "--model", model, "--length", str(length),
                   "--epochs", str(epochs), "--backend", backend, "--quiet", "--json", out]
        if workers:
            command += ["--workers", workers]
        subprocess.run(command, check=True, cwd=scratch, capture_output=True)
        with open(out) as f:
            return json.load(f)["models"][model]["total_seconds"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("settings", nargs="+", type=setting, metavar="SETTING")
    parser.add_argument("--model", default="bigger", choices=["normal", "longer", "bigger"])
    parser.add_argument("--length", type=positive_int, default=10, help="examples (the original gives Bigger 1000/100)")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=7, help="rounds; each runs every setting once")
    args = parser.parse_args(argv)
    if args.length > DIGITS:
        parser.error(f"--length must be at most {DIGITS} (the digits there are), got {args.length}")
    times = {s: [] for s in args.settings}
    for _ in range(args.repeats):
        for backend, workers in args.settings:
            times[(backend, workers)].append(train_seconds(args.model, args.length, args.epochs, backend, workers))
    first = statistics.median(times[args.settings[0]])
    for (backend, workers), seconds in times.items():
        median = statistics.median(seconds)
        name = backend + (f":{workers}" if workers else "")
        print(f"{name:14s} median {median:.3f} s  ratio {median / first:.3f}  runs "
              + " ".join(f"{s:.3f}" for s in seconds))


if __name__ == "__main__":
    main()
