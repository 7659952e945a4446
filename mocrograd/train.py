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
import contextlib
import itertools
import json
import math
import numbers
import os
import shlex
import signal
import sys
import threading
import time

import numpy as np

from . import __version__, nn
from . import random as _random
from .backend import BACKENDS, backend, cpu_count, get_backend
from .checkpoint import CheckpointError, load_training, read_metadata, save_training
from .data import DIGITS, DataLoader, load_digits
from .random import manual_seed
from .tensor import Tensor, gradient_bound, no_grad, proves_finite

# --model all: the fraction of LENGTH each model trains on (the original protocol)
PROTOCOL = {"normal": 1, "longer": 10, "bigger": 100}


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name, parameters, lr):
    """'sgd' (plain, as the original) or 'adam', over parameters or parameter groups."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return nn.SGD(parameters, lr=lr) if name == "sgd" else nn.Adam(parameters, lr=lr)


def _check_run(model, train, val, epochs, checkpoint):
    """ValueError for what would otherwise stop training part-way, after steps had already
    changed the model: epochs, an empty training split, examples whose feature count
    differs between the splits or from an MLP's input, labels that are not integers in
    [0, classes) (classes: an MLP's output size), a checkpoint path that cannot be written."""
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}")
    if len(train) == 0:
        raise ValueError("the training split has no examples")
    sizes = getattr(model, "sizes", None)   # an MLP's [inputs, ..., classes]
    features = train.x.shape[1]
    for name, split in (("training", train), ("validation", val)):
        if len(split) == 0:
            continue
        if split.x.shape[1] != features or sizes and features != sizes[0]:
            raise ValueError(f"the {name} examples have {split.x.shape[1]} features, the training examples "
                             f"{features}" + (f" and the model takes {sizes[0]}" if sizes else ""))
        if split.y.dtype.kind not in "iu":
            raise ValueError(f"the {name} labels must be integers, got dtype {split.y.dtype}")
        low, high = int(split.y.min()), int(split.y.max())
        if low < 0 or sizes and high >= sizes[-1]:
            raise ValueError(f"the {name} labels must lie in [0, {sizes[-1] if sizes else 'classes'}), "
                             f"got values from {low} to {high}")
    if checkpoint is not None:
        problem = unwritable(checkpoint)
        if problem:
            raise ValueError(f"checkpoint {problem}")


def l2_groups(model, l2):
    """The model's parameters as optimizer groups that apply ``l2_penalty(model, l2)``:
    weight decay 2 * l2 (its gradient) on the weights, none on the biases."""
    weights = nn.penalized_weights(model)
    decayed = {id(w) for w in weights}
    others = [p for p in model.parameters() if id(p) not in decayed]
    groups = [{"params": weights, "weight_decay": 2.0 * l2}] if weights else []
    return groups + ([{"params": others, "weight_decay": 0.0}] if others else [])


def evaluate(model, loader, dist=None):
    """(mean loss, accuracy) over a loader, without recording a graph; (None, None) if it is empty.
    ``dist``: the loader holds this rank's share; the sums are taken over all ranks."""
    total_loss, correct, count = 0.0, 0.0, 0
    with no_grad():
        for x, y in loader:
            out = model(Tensor(x))
            total_loss += nn.nll_loss(out, y).item() * len(y)
            correct += nn.accuracy(out, y) * len(y)
            count += len(y)
    if dist is not None:
        total_loss, correct, count = dist.sum(total_loss, correct, count)
    return (total_loss / count, correct / count) if count else (None, None)


class TrainingInterrupted(Exception):
    """``fit`` stopped because ``should_stop()`` became true (Ctrl-C in the command).

    ``epoch`` is the epoch in progress and ``batch`` the batches of it that were
    completed (``batch == batches``: the epoch ended, validation included);
    ``checkpoint`` is the file that holds this state, or None."""

    def __init__(self, epoch, batch, batches, checkpoint=None, model=None):
        self.epoch, self.batch, self.batches, self.checkpoint, self.model = epoch, batch, batches, checkpoint, model
        where = ("before training started" if epoch == 0 else f"after epoch {epoch}" if batch == batches else
                 f"in epoch {epoch} after batch {batch} of {batches}")
        super().__init__(f"interrupted {where}")


class NonFiniteError(FloatingPointError):
    """The loss, a gradient or a parameter became NaN or infinite: training diverged.

    Raised before the optimizer step that would have spread it, and before any
    checkpoint write, so the last checkpoint still holds finite parameters."""

    def __init__(self, what, epoch, batch, lr):
        self.what, self.epoch, self.batch, self.lr = what, epoch, batch, lr
        super().__init__(f"{what} at epoch {epoch} batch {batch}: training diverged; "
                         f"try a smaller learning rate than {lr:g}")


def _finite(matrix):
    """True when every element of a Matrix is finite (sum of squares in float64: NaN/inf propagate)."""
    return math.isfinite(matrix.sum_squares())


def _proved_finite(param):
    """True when the latest backward pass proved every element of param's gradient
    finite (``proves_finite(gradient_bound)``, e.g. from ||G|| ||X|| for a Linear
    weight). Such a gradient needs no scan (on the Bigger network, a pass over 170 MB
    per step)."""
    return proves_finite(gradient_bound(param), param.dtype)


def _first_non_finite(params, names, which):
    for name, p in zip(names, params):
        if which == "gradient" and (p.grad is None or _proved_finite(p)):
            continue
        if not _finite(p.grad.data if which == "gradient" else p.data):
            return f"the {which} of {name} is not finite"
    return None


def fit(model, train, val, epochs=10, batch_size=32, lr=0.01, optimizer="sgd", l2=1e-4,
        on_epoch=None, progress=False, checkpoint=None, resume=None, settings=None,
        should_stop=None, check_finite=True, dist=None):
    """Train ``model`` for ``epochs`` epochs; return one dict of metrics per epoch.

    The objective is the mean negative log-likelihood plus ``l2_penalty`` (alpha = l2),
    whose gradient 2 * alpha * W the optimizer adds as weight decay on the weights
    (``l2_groups``), inside its one pass over them; each backward pass writes the
    gradients over the previous step's (``backward(accumulate=False)``), so no pass
    zeroes them. The reported losses are the negative log-likelihood alone, so training
    and validation losses compare directly. ``on_epoch(metrics)`` is called after each epoch.

    Reliability (see docs/reliability.md):

    * ``checkpoint``: a path written atomically after every epoch (model, optimizer
      state, epoch, RNG states, metrics so far, ``settings``).
    * ``resume``: a checkpoint path to continue from; ``epochs`` is the total, so a
      checkpoint after epoch k runs epochs k+1..epochs, and the result is bit-identical
      to an uninterrupted run (same backend). Returns the whole history.
    * ``should_stop()``: checked after every step; when true, the state after that
      step is written to ``checkpoint`` (if any) and TrainingInterrupted is raised.
    * ``check_finite``: a non-finite loss or gradient raises NonFiniteError before
      the optimizer step; nothing non-finite is ever written to ``checkpoint``.

    ``dist`` (a ``mocrograd.distributed.Distributed``): data-parallel training over MPI;
    this rank trains on its share of every batch and the gradients are summed over the
    ranks in ``opt.step()`` (see mocrograd/distributed.py and docs/scaling.md).
    """
    began = time.perf_counter()
    _check_run(model, train, val, epochs, checkpoint)
    parameters = model.parameters()
    dtype = parameters[0].dtype if parameters else np.float32   # batches in the model's dtype
    train_loader = (DataLoader(train, batch_size, dtype=dtype) if dist is None else
                    dist.loader(train, batch_size, dtype=dtype))
    val_loader = (DataLoader(val, batch_size, dtype=dtype) if dist is None else
                  dist.loader(val, batch_size, train=False, dtype=dtype))
    opt = make_optimizer(optimizer, l2_groups(model, l2), lr)
    if dist is not None:   # rank 0's parameters on every rank; step() first sums the gradients over the ranks
        opt = dist.wrap(model, opt)
    names = [name for name, _ in model.named_parameters()]
    batches_per_epoch = len(train_loader)
    run_config = {"epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "l2": l2,
                  "train_examples": len(train), "val_examples": len(val)}
    history, done, skip, partial, elapsed = [], 0, 0, None, 0.0
    if resume is not None:
        state = _resume(resume, model, opt, run_config)
        history, done, skip = state["history"], state["epoch"], state["batch"]
        partial, elapsed = state.get("partial"), state.get("elapsed", 0.0)
        _random.generator().bit_generator.state = state["rng"]["mocrograd"]
        train_loader.rng.bit_generator.state = state["rng"]["train_loader"]
        if dist is not None and partial and not dist.is_root:   # the saved sums are over all ranks: count once
            partial = dict(partial, loss_sum=0.0, correct=0.0)

    def save(epoch_done, batch_done, loader_state, sums, at):
        """Write the state after ``epoch_done`` epochs and ``batch_done`` batches of the next; ``at``
        is the (epoch, batch) just finished, for messages."""
        if checkpoint is None:
            return
        if check_finite:
            bad = _first_non_finite(parameters, names, "parameter")
            if bad:
                raise NonFiniteError(bad, *at, lr)
        save_training(checkpoint, model, opt, {
            "epoch": epoch_done, "batch": batch_done, "batches": batches_per_epoch, "partial": sums,
            "history": history, "config": run_config, "settings": settings,
            "elapsed": elapsed + time.perf_counter() - began,
            "rng": {"mocrograd": _random.generator().bit_generator.state, "train_loader": loader_state}})

    for epoch in range(done + 1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loader_state = train_loader.rng.bit_generator.state   # the epoch's shuffle (if any) starts here
        first = skip + 1
        loss_sum, correct, seconds = (partial["loss_sum"], partial["correct"], partial["seconds"]) if skip else (
            0.0, 0.0, 0.0)
        batches = itertools.islice(iter(train_loader), skip, None)
        skip, partial = 0, None
        bar = _progress(batches, epoch, epochs, batches_per_epoch, first - 1) if progress else None
        try:
            for batch, (x, y) in enumerate(bar if bar is not None else batches, start=first):
                out = model(Tensor(x))
                loss = nn.nll_loss(out, y)
                # the L2 term's gradient: weight decay in opt.step(), which also forms the
                # factored weight gradients (not on MPI: the Allreduce sums whole gradients)
                loss.backward(accumulate=False, factored=dist is None)
                if check_finite:
                    value = loss.item()
                    bad = (f"the loss is {value}" if not math.isfinite(value) else
                           _first_non_finite(parameters, names, "gradient"))
                    if bad:
                        raise NonFiniteError(bad, epoch, batch, lr)
                opt.step()
                loss_sum += loss.item() * len(y)
                correct += nn.accuracy(out, y) * len(y)
                if should_stop is not None and batch < batches_per_epoch and should_stop():
                    sums = {"loss_sum": loss_sum, "correct": correct,
                            "seconds": seconds + time.perf_counter() - start}
                    if dist is not None:
                        sums["loss_sum"], sums["correct"] = dist.sum(loss_sum, correct)
                    save(epoch - 1, batch, loader_state, sums, (epoch, batch))
                    raise TrainingInterrupted(epoch, batch, batches_per_epoch, checkpoint)
        finally:
            if bar is not None:
                bar.close()
        model.eval()
        if dist is not None:
            loss_sum, correct = dist.sum(loss_sum, correct)
        val_loss, val_acc = evaluate(model, val_loader, dist)
        metrics = {"epoch": epoch, "train_loss": loss_sum / len(train), "train_acc": correct / len(train),
                   "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds + time.perf_counter() - start}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        save(epoch, 0, train_loader.rng.bit_generator.state, None, (epoch, batches_per_epoch))
        if should_stop is not None and epoch < epochs and should_stop():
            raise TrainingInterrupted(epoch, batches_per_epoch, batches_per_epoch, checkpoint)
    return history


def _nothing_left(path, done, epochs, name):
    """Why resuming the checkpoint at path, ``done`` epochs in, for ``epochs`` in all (the
    setting called ``name`` by the caller) would train nothing; None when it would train."""
    if isinstance(done, int) and epochs <= done:
        return (f"the checkpoint {path} already completed {done} epochs and {name} is {epochs}; "
                f"{name} is the total, so ask for more than {done}")
    return None


def _resume(path, model, opt, run_config):
    """Load a training checkpoint into model and optimizer and return its progress dict, after
    checking that it was made by a run with the same configuration (nothing is assigned otherwise)."""
    meta = read_metadata(path)
    progress, saved = meta.get("progress"), dict(meta.get("progress", {}).get("config", {}))
    saved["lr"] = meta.get("optimizer", {}).get("lr")
    for key in ("epoch", "batch", "history", "rng"):
        if not isinstance(progress, dict) or key not in progress:
            raise CheckpointError(f"{path}: not a checkpoint written by fit() (its progress has no {key!r})")
    nothing_left = _nothing_left(path, progress["epoch"], run_config["epochs"], "epochs")
    if nothing_left:
        raise CheckpointError(nothing_left)
    for key, value in dict(run_config, lr=opt.lr).items():
        if key in saved and key != "epochs" and saved[key] != value:
            raise CheckpointError(f"{path}: the checkpoint was trained with {key} {saved[key]!r}, "
                                  f"this run has {value!r}")
    return load_training(path, model, opt)   # validates names, shapes and dtypes, then assigns


def _progress(batches, epoch, epochs, total, initial=0):
    """A tqdm bar over the batches, shown only when an epoch takes more than a second."""
    from tqdm import tqdm
    return tqdm(batches, desc=f"epoch {epoch}/{epochs}", leave=False, delay=1.0, unit="batch",
                total=total, initial=initial)


def _format(name, metrics, epochs):
    val = ("val loss {val_loss:.4f} acc {val_acc:.4f}".format(**metrics)
           if metrics["val_loss"] is not None else "val skipped (no examples)")
    return (f"{name:>6} epoch {metrics['epoch']:>3}/{epochs}  train loss {metrics['train_loss']:.4f} "
            f"acc {metrics['train_acc']:.4f}  {val}  {metrics['seconds']:.2f}s")


# ------------------------------------------------------------ command line

class _Parser(argparse.ArgumentParser):
    abort = None   # --distributed: Distributed.abort, so that an error on any one rank stops every rank

    def error(self, message):
        """Invalid arguments: one line on stderr, exit status 2."""
        if self.abort is not None:
            self.abort(f"{self.prog}: error: {message}", 2)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bounded(convert, noun, op, least):
    """An argparse type: ``convert(text)``, which must be finite and ``op`` (">" or ">=") ``least``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        in_range = value > least if op == ">" else value >= least
        if convert is float and not (in_range and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number {op} {least}, got {text}")
        if not in_range:
            raise argparse.ArgumentTypeError(f"must be {op} {least}, got {value}")
        return value
    return parse


def unwritable(path):
    """Why a file cannot be written at path (its directory is missing or takes no writes,
    or path is a directory), or None when it can."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"{path}: the directory {directory} does not exist"
    if os.path.isdir(path):
        return f"{path}: is a directory; give a file name"
    if not os.access(directory, os.W_OK | os.X_OK) or os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path}: cannot write there (read-only or no permission)"
    return None


def output_file(path):
    """An argparse type: path, if a file can be written there (``unwritable``), so that a
    bad path fails before the work whose results it would lose."""
    problem = unwritable(path)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


positive_int = _bounded(int, "a whole number", ">=", 1)
nonnegative_int = _bounded(int, "a whole number", ">=", 0)
positive_float = _bounded(float, "a number", ">", 0)
nonnegative_float = _bounded(float, "a number", ">=", 0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each option's help, but only where there is an X
    to show: not after flags (default False), options without a value (None), or help
    that already names its default (argparse would print "(default 10) (default: None)")."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    parser = _Parser(
        prog="python -m mocrograd.train",
        description="Train the original benchmark's MLPs on scikit-learn's digits (8x8 images, no download).",
        epilog="With --model all, Normal trains on LENGTH examples, Longer on LENGTH/10 and Bigger on "
               "LENGTH/100 (at least 1), as in the original library; a single model trains on LENGTH. "
               "The last 20% of the examples are the validation set (in order unless --shuffle).",
        formatter_class=HelpFormatter)
    parser.add_argument("epochs_pos", nargs="?", type=positive_int, metavar="EPOCHS",
                        help="epochs (same as --epochs; default 10)")
    parser.add_argument("length_pos", nargs="?", type=positive_int, metavar="LENGTH",
                        help=f"examples, 1 to {DIGITS} (same as --length; default 1000)")
    parser.add_argument("--epochs", type=positive_int, help="epochs (default 10)")
    parser.add_argument("--length", type=positive_int, help="examples to use, 1 to 1797 (default 1000)")
    parser.add_argument("--model", choices=["normal", "longer", "bigger", "all"], default="all",
                        help="which network to train")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="kernel variant (default: $MOCROGRAD_BACKEND, else dynamic)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"workers for the optimized kernels (default: $MOCROGRAD_WORKERS, else the core "
                             f"count, {cpu_count()})")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per batch")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="learning rate")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="optimizer")
    parser.add_argument("--l2", type=nonnegative_float, default=1e-4,
                        help="L2 penalty alpha on the weights (0 turns it off)")
    parser.add_argument("--shuffle", action="store_true",
                        help="shuffle the examples (with --seed) before the train/validation split")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="seed for initialization and shuffling: same seed, backend and workers, same numbers")
    parser.add_argument("--json", metavar="PATH", help="write per-epoch metrics and timings as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of loss and accuracy curves (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print only each model's total time")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="after every epoch, write the model, optimizer state, epoch, RNG state and settings "
                             "to PATH (atomically; needs a single --model); Ctrl-C also writes it")
    parser.add_argument("--resume", metavar="PATH",
                        help="continue the run saved in PATH with its settings (--epochs is the total); "
                             "keeps checkpointing to PATH unless --checkpoint is given")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel training over MPI, run as: mpiexec -n N python -m mocrograd.train "
                             "--distributed ...; each rank trains on a share of every batch (needs mocrograd[mpi]; "
                             "--workers defaults to the cores per rank; see docs/scaling.md)")
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
    if args.distributed:   # start MPI: from here on, an error on one rank (a missing file) stops every rank
        from .distributed import start as start_mpi
        parser.abort = start_mpi(parser).abort
    if args.resume:
        _merge_resume(parser, args, _given_options(argv))
        if args.checkpoint is None:
            args.checkpoint = args.resume
    chosen_backend, chosen_workers = get_backend()   # by MOCROGRAD_BACKEND / MOCROGRAD_WORKERS at import
    args.backend = args.backend or chosen_backend
    args.workers = args.workers or chosen_workers
    if args.checkpoint and args.model == "all":
        parser.error("--checkpoint and --resume need a single --model (normal, longer or bigger), not all")
    for option in ("checkpoint", "json", "plot"):   # output files: fail now, not after hours of training
        path = getattr(args, option)
        if path:
            problem = unwritable(path)
            if problem:
                parser.error(f"--{option} {problem}")
    return args


# The settings a checkpoint records. Those in FIXED define the training (a resumed
# run must keep them); backend, workers and epochs may change on resume.
SETTINGS = ("model", "backend", "workers", "lr", "optimizer", "batch_size", "l2", "seed", "length", "shuffle",
            "epochs")
FIXED = ("model", "optimizer", "lr", "batch_size", "l2", "seed", "length", "shuffle")


def _given_options(argv):
    """The destinations the command line sets explicitly (defaults left out)."""
    unset = object()   # not a string: argparse would run a positional's type on a string default
    probe = build_parser()
    dests = vars(probe.parse_args(argv))
    probe.set_defaults(**{dest: unset for dest in dests})
    return {dest for dest, value in vars(probe.parse_args(argv)).items() if value is not unset}


def _merge_resume(parser, args, given):
    """Take the settings the command line leaves out from the --resume checkpoint; a given
    setting that contradicts the checkpoint (another model, lr, ...) is an error."""
    try:
        meta = read_metadata(args.resume)
    except CheckpointError as error:
        parser.error(f"--resume: {error}")
    progress = meta.get("progress") if isinstance(meta.get("progress"), dict) else {}
    saved = progress.get("settings")
    if meta.get("kind") != "training" or not isinstance(saved, dict) or not isinstance(progress.get("epoch"), int):
        parser.error(f"--resume {args.resume}: not a checkpoint written by this command's --checkpoint")
    aliases = {"epochs": {"epochs", "epochs_pos"}, "length": {"length", "length_pos"}}
    for key in SETTINGS:
        if key not in saved:
            parser.error(f"--resume {args.resume}: the checkpoint does not record the setting {key!r}")
        if not given & aliases.get(key, {key}):
            setattr(args, key, saved[key])
        elif key in FIXED and getattr(args, key) != saved[key]:
            option = "--" + key.replace("_", "-")
            parser.error(f"{option} {getattr(args, key)} conflicts with the checkpoint {args.resume}, which was "
                         f"trained with {option} {saved[key]}; leave {option} out to resume")
    nothing_left = _nothing_left(args.resume, progress["epoch"], args.epochs, "--epochs")
    if nothing_left:
        parser.error(nothing_left)
    args.resumed = {"checkpoint": args.resume, "epoch": progress["epoch"], "batch": progress.get("batch", 0),
                    "elapsed": progress.get("elapsed", 0.0)}


class _CtrlC:
    """While active (main thread only), the first SIGINT just sets a flag, so training stops
    cleanly after the current step; a second one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self):
        return self.requested


def run(args, out=sys.stdout):
    """Train the selected models; return the JSON-ready report.

    Raises TrainingInterrupted after Ctrl-C (the state is in ``args.checkpoint`` if
    given) and NonFiniteError when training diverges."""
    names = list(PROTOCOL) if args.model == "all" else [args.model]
    report = {"version": __version__, "settings": {k: v for k, v in vars(args).items() if not k.endswith("_pos")},
              "cores": cpu_count(), "models": {}}
    checkpoint, resume = getattr(args, "checkpoint", None), getattr(args, "resume", None)
    resumed = getattr(args, "resumed", None) if resume else None
    settings = {key: getattr(args, key) for key in SETTINGS}
    dist, workers, guard = None, args.workers, contextlib.nullcontext()
    if getattr(args, "distributed", False):   # mpiexec -n N ... --distributed
        from .distributed import start as start_mpi
        dist = start_mpi()
        workers = args.workers or dist.default_workers()   # this machine's cores shared among its ranks
        report["distributed"] = dist.describe(workers)
        # an error on any rank aborts them all; a Ctrl-C stop, agreed by all ranks, is reported by rank 0
        guard = dist.guard(passthrough=TrainingInterrupted, codes={NonFiniteError: 3}, others_exit=130)
        if not dist.is_root:   # only rank 0 prints and writes files
            out, checkpoint, args.json, args.plot = open(os.devnull, "w"), None, None, None
    with backend(args.backend, workers), _CtrlC() as stop, guard:
        if dist is not None:
            stop = dist.agree(stop)   # Ctrl-C on any rank: every rank stops after the same step
        for name in names:
            if stop():
                raise TrainingInterrupted(0, 0, 0, None, model=name)
            length = max(1, args.length // PROTOCOL[name]) if args.model == "all" else args.length
            train, val = load_digits(length, shuffle=args.shuffle, seed=args.seed)
            manual_seed(args.seed)
            model = nn.build_model(name)
            if not args.quiet:
                print(f"{name}: {model!r}, {len(train)} training and {len(val)} validation examples", file=out)
                if resumed:
                    where = (f"epoch {resumed['epoch'] + 1} after batch {resumed['batch']}" if resumed["batch"]
                             else f"epoch {resumed['epoch'] + 1}")
                    print(f"{name}: resuming from {resume} at {where}", file=out)
            echo = None if args.quiet else (lambda m, name=name: print(_format(name, m, args.epochs), file=out))
            start = time.perf_counter()
            try:
                history = fit(model, train, val, args.epochs, args.batch_size, args.lr, args.optimizer, args.l2,
                              on_epoch=echo, progress=not args.quiet and (dist is None or dist.is_root),
                              checkpoint=checkpoint, resume=resume, settings=settings, should_stop=stop, dist=dist)
            except (TrainingInterrupted, NonFiniteError) as error:
                error.model = name
                raise
            total = time.perf_counter() - start + (resumed["elapsed"] if resumed else 0.0)
            print(f"{name}: trained in {total:.3f}s", file=out)
            report["models"][name] = {"length": length, "train_examples": len(train),
                                      "val_examples": len(val), "total_seconds": total, "epochs": history}
            if resumed:
                report["models"][name]["resumed_from"] = {k: resumed[k] for k in ("checkpoint", "epoch", "batch")}
    if dist is not None:
        report["distributed"].update(steps=dist.steps, allreduce_seconds=dist.allreduce_seconds)
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


def _interrupted_line(stop, args):
    """The one line printed after Ctrl-C: where training stopped and how to go on."""
    text = str(stop) + (f" ({stop.model})" if getattr(stop, "model", None) else "")
    if not stop.checkpoint:
        return f"{text}; nothing was saved (pass --checkpoint PATH with a single --model to be able to resume)"
    command = ["python", "-m", "mocrograd.train", "--resume", stop.checkpoint]
    for option in ("json", "plot"):
        if getattr(args, option, None):
            command += [f"--{option}", getattr(args, option)]
    if args.quiet:
        command.append("--quiet")
    return f"{text}; resume with: {shlex.join(command)}"


def _kept_checkpoint(args):
    """Where the last good state is, for the divergence message."""
    path = getattr(args, "checkpoint", None)
    if not path:
        return "no checkpoint was written (no --checkpoint)"
    try:
        progress = read_metadata(path).get("progress", {})
    except CheckpointError:
        return f"no checkpoint was written to {path}"
    return f"{path} still holds the state after epoch {progress.get('epoch')}" + (
        f" batch {progress['batch']}" if progress.get("batch") else "")


def main(argv=None):
    """The command: 0 on success, 2 for invalid arguments or checkpoints, 3 when training
    diverged (non-finite loss or gradient), 130 after Ctrl-C, 1 when a file cannot be written."""
    try:
        args = parse_args(argv)   # may read a --resume checkpoint or import matplotlib: Ctrl-C can come here
    except KeyboardInterrupt:
        print("interrupted before training began; nothing was saved", file=sys.stderr)
        return 130
    prog = "python -m mocrograd.train"
    try:
        report = run(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        if args.plot:
            plot(report, args.plot)
    except TrainingInterrupted as stop:
        sys.stdout.flush()
        print(_interrupted_line(stop, args), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"interrupted (before training began, or by a second Ctrl-C); "
              f"{_kept_checkpoint(args) if getattr(args, 'checkpoint', None) else 'nothing was saved'}",
              file=sys.stderr)
        return 130
    except NonFiniteError as error:
        sys.stdout.flush()
        model = getattr(error, "model", None)
        print(f"{prog}: error: {f'{model}: ' if model else ''}{error}; {_kept_checkpoint(args)}", file=sys.stderr)
        return 3
    except CheckpointError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
