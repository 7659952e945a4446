"""Where one training step's time goes, for each worker count: forward, backward, step, evaluation.

A whole fit says how long training takes; this says which part of a step does not
scale. One process builds the network, takes the first training batch and the first
validation batch of ``--length`` digits (Bigger at 32: 26 training and 6 validation
examples), and times, as ``fit`` runs them:

* ``forward``: the model on the training batch, and the loss;
* ``backward``: ``loss.backward(accumulate=False, factored=True)``;
* ``step``: plain SGD (lr 0.01, weight decay 2e-4 on the weights);
* ``eval``: the model on the validation batch, without a graph.

The worker counts take turns step by step (``optimized`` backend), after one untimed
step each; every number is the median over ``--rounds`` steps, in milliseconds.

    python benchmarks/phases.py [--model bigger] [--length 32] [--rounds 15] [WORKERS ...]
"""
import argparse
import time

import numpy as np

import mocrograd
from mocrograd import Tensor, nn, no_grad
from mocrograd.data import DIGITS, DataLoader, load_digits
from mocrograd.nn import build_model
from mocrograd.train import HelpFormatter, l2_groups, make_optimizer

PHASES = ("forward", "backward", "step", "eval")


def step_phases(model, opt, batch, val_x):
    """Milliseconds of each phase of one training step and one evaluation batch."""
    (x, y), marks = batch, [time.perf_counter()]
    loss = nn.nll_loss(model(Tensor(x)), y)
    marks.append(time.perf_counter())
    loss.backward(accumulate=False, factored=True)
    marks.append(time.perf_counter())
    opt.step()
    marks.append(time.perf_counter())
    with no_grad():
        model(Tensor(val_x))
    marks.append(time.perf_counter())
    return np.diff(marks) * 1000


def measure(model_name, length, rounds, workers, seed=0):
    """{workers: median ms per phase (array in PHASES order)}."""
    train, val = load_digits(length)
    mocrograd.manual_seed(seed)
    model = build_model(model_name)
    opt = make_optimizer("sgd", l2_groups(model, 1e-4), 0.01)
    batch = next(iter(DataLoader(train, 32)))
    val_x = next(iter(DataLoader(val, 32)))[0]
    times = {w: [] for w in workers}
    for timed in [False] + [True] * rounds:
        for w in workers:
            with mocrograd.backend("optimized", w):
                ms = step_phases(model, opt, batch, val_x)
            if timed:
                times[w].append(ms)
    return {w: np.median(np.array(t), axis=0) for w, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("workers", nargs="*", type=int, metavar="WORKERS",
                        help="worker counts to compare (default: 1 and this machine's cores)")
    parser.add_argument("--model", choices=("normal", "longer", "bigger"), default="bigger")
    parser.add_argument("--length", type=int, default=32, help="digits loaded (80%% train, 20%% validation)")
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per worker count")
    args = parser.parse_args(argv)
    workers = args.workers or sorted({1, mocrograd.cpu_count()})
    if args.rounds < 1 or any(w < 1 for w in workers):
        parser.error("--rounds and every worker count must be at least 1")
    if not 3 <= args.length <= DIGITS:   # 3 digits: 2 to train on and 1 to evaluate
        parser.error(f"--length must be from 3 to {DIGITS}, got {args.length}")
    medians = measure(args.model, args.length, args.rounds, workers)
    base = medians[workers[0]].sum()
    print(f"{args.model}, {args.length} digits, median ms of {args.rounds} alternated steps")
    print(f"{'workers':>8} " + " ".join(f"{p:>9}" for p in PHASES) + f" {'sum':>9} {'speed-up':>9}")
    for w in workers:
        m = medians[w]
        print(f"{w:>8} " + " ".join(f"{v:9.2f}" for v in m) + f" {m.sum():9.2f} {base / m.sum():9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
