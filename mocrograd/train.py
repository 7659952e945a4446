"""Train the original benchmark's MLPs on the digits data: ``python -m mocrograd.train``.

    python -m mocrograd.train                 # all three models, 10 epochs, 1000 examples
    python -m mocrograd.train 20 1797 --model normal --optimizer adam --shuffle
    python -m mocrograd.train --help

As in the original library, ``EPOCHS LENGTH`` with ``--model all`` trains Normal on
LENGTH examples, Longer on LENGTH/10 and Bigger on LENGTH/100 (batch 32, SGD, lr 0.01),
printing the training and validation loss and accuracy of every epoch and each model's
total training time.
"""
import argparse
import json
import sys
import time

import numpy as np

from . import __version__, nn
from .backend import BACKENDS, backend, cpu_count
from .data import DIGITS, DataLoader, load_digits
from .random import manual_seed
from .tensor import Tensor, no_grad

# --model all: the fraction of LENGTH each model trains on (the original protocol)
PROTOCOL = {"normal": 1, "longer": 10, "bigger": 100}


def make_optimizer(name, parameters, lr):
    """'sgd' (plain, as the original) or 'adam'."""
    return nn.SGD(parameters, lr=lr) if name == "sgd" else nn.Adam(parameters, lr=lr)


def evaluate(model, loader):
    """(mean loss, accuracy) over a loader, without recording a graph; (None, None) if it is empty."""
    total_loss, correct, count = 0.0, 0.0, 0
    with no_grad():
        for x, y in loader:
            out = model(Tensor(x))
            total_loss += nn.nll_loss(out, y).item() * len(y)
            correct += nn.accuracy(out, y) * len(y)
            count += len(y)
    return (total_loss / count, correct / count) if count else (None, None)


def fit(model, train, val, epochs=10, batch_size=32, lr=0.01, optimizer="sgd", l2=1e-4,
        on_epoch=None, progress=False):
    """Train ``model`` for ``epochs`` epochs; return one dict of metrics per epoch.

    The objective is the mean negative log-likelihood plus ``l2_penalty`` (alpha = l2);
    the reported losses are the negative log-likelihood alone, so training and
    validation losses compare directly. ``on_epoch(metrics)`` is called after each epoch.
    """
    train_loader = DataLoader(train, batch_size)
    val_loader = DataLoader(val, batch_size)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    weights = [p for p in model.parameters()]
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum, correct = 0.0, 0.0
        batches = _progress(train_loader, epoch, epochs) if progress else train_loader
        for x, y in batches:
            out = model(Tensor(x))
            loss = nn.nll_loss(out, y)
            penalty = nn.l2_penalty(weights, l2)
            objective = loss if penalty is None else loss + penalty
            opt.zero_grad(set_to_none=False)   # keep the gradient buffers: no new large allocations
            objective.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += nn.accuracy(out, y) * len(y)
        model.eval()
        val_loss, val_acc = evaluate(model, val_loader)
        metrics = {"epoch": epoch, "train_loss": loss_sum / len(train), "train_acc": correct / len(train),
                   "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - start}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history


def _progress(loader, epoch, epochs):
    """A tqdm bar over the batches, shown only when an epoch takes more than a second."""
    from tqdm import tqdm
    return tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, delay=1.0, unit="batch")


def _format(name, metrics, epochs):
    val = ("val loss {val_loss:.4f} acc {val_acc:.4f}".format(**metrics)
           if metrics["val_loss"] is not None else "val skipped (no examples)")
    return (f"{name:>6} epoch {metrics['epoch']:>3}/{epochs}  train loss {metrics['train_loss']:.4f} "
            f"acc {metrics['train_acc']:.4f}  {val}  {metrics['seconds']:.2f}s")


# ------------------------------------------------------------ command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Invalid arguments: one line on stderr, exit status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _nonnegative_float(text):
    value = float(text)
    if not value >= 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser():
    parser = _Parser(
        prog="python -m mocrograd.train",
        description="Train the original benchmark's MLPs on scikit-learn's digits (8x8 images, no download).",
        epilog="With --model all, Normal trains on LENGTH examples, Longer on LENGTH/10 and Bigger on "
               "LENGTH/100 (at least 1), as in the original library; a single model trains on LENGTH. "
               "The last 20%% of the examples are the validation set (in order unless --shuffle).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("epochs_pos", nargs="?", type=_positive_int, metavar="EPOCHS",
                        help="epochs (same as --epochs; default 10)")
    parser.add_argument("length_pos", nargs="?", type=_positive_int, metavar="LENGTH",
                        help=f"examples, 1 to {DIGITS} (same as --length; default 1000)")
    parser.add_argument("--epochs", type=_positive_int, help="epochs (default 10)")
    parser.add_argument("--length", type=_positive_int, help="examples to use, 1 to 1797 (default 1000)")
    parser.add_argument("--model", choices=["normal", "longer", "bigger", "all"], default="all",
                        help="which network to train")
    parser.add_argument("--backend", choices=BACKENDS, default="dynamic", help="kernel variant")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help=f"workers for the optimized kernels (default: the core count, {cpu_count()})")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="examples per batch")
    parser.add_argument("--lr", type=_positive_float, default=0.01, help="learning rate")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="optimizer")
    parser.add_argument("--l2", type=_nonnegative_float, default=1e-4,
                        help="L2 penalty alpha on the weights (0 turns it off)")
    parser.add_argument("--shuffle", action="store_true",
                        help="shuffle the examples (with --seed) before the train/validation split")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for initialization and shuffling: same seed, backend and workers, same numbers")
    parser.add_argument("--json", metavar="PATH", help="write per-epoch metrics and timings as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of loss and accuracy curves (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print only each model's total time")
    parser.add_argument("--version", action="version", version=f"mocrograd {__version__}")
    return parser


def parse_args(argv=None):
    """Parse and validate everything before any work starts (errors exit with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "length"):
        positional, option = getattr(args, name + "_pos"), getattr(args, name)
        if positional is not None and option is not None and positional != option:
            parser.error(f"{name} given twice with different values ({positional} and {option})")
        setattr(args, name, option if option is not None else positional)
    args.epochs = args.epochs or 10
    args.length = args.length or 1000
    if args.length > DIGITS:
        parser.error(f"length must be from 1 to {DIGITS} (the digits data set), got {args.length}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'mocrograd[plot]'")
    return args


def run(args, out=sys.stdout):
    """Train the selected models; return the JSON-ready report."""
    names = list(PROTOCOL) if args.model == "all" else [args.model]
    report = {"version": __version__, "settings": {k: v for k, v in vars(args).items() if not k.endswith("_pos")},
              "cores": cpu_count(), "models": {}}
    with backend(args.backend, args.workers):
        for name in names:
            length = max(1, args.length // PROTOCOL[name]) if args.model == "all" else args.length
            train, val = load_digits(length, shuffle=args.shuffle, seed=args.seed)
            manual_seed(args.seed)
            model = nn.build_model(name)
            if not args.quiet:
                print(f"{name}: {model!r}, {len(train)} training and {len(val)} validation examples", file=out)
            echo = None if args.quiet else (lambda m, name=name: print(_format(name, m, args.epochs), file=out))
            start = time.perf_counter()
            history = fit(model, train, val, args.epochs, args.batch_size, args.lr, args.optimizer, args.l2,
                          on_epoch=echo, progress=not args.quiet)
            total = time.perf_counter() - start
            print(f"{name}: trained in {total:.3f}s", file=out)
            report["models"][name] = {"length": length, "train_examples": len(train),
                                      "val_examples": len(val), "total_seconds": total, "epochs": history}
    return report


def plot(report, path):
    """Loss and accuracy curves of every model, training and validation, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in report["models"].items():
        epochs = [m["epoch"] for m in result["epochs"]]
        for key, style in (("train", "-"), ("val", "--")):
            if result["epochs"][0][f"{key}_loss"] is None:
                continue
            loss_ax.plot(epochs, [m[f"{key}_loss"] for m in result["epochs"]], style, label=f"{name} {key}")
            acc_ax.plot(epochs, [m[f"{key}_acc"] for m in result["epochs"]], style, label=f"{name} {key}")
    loss_ax.set(xlabel="epoch", ylabel="loss (NLL)", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
