"""Data-parallel training over MPI (mocrograd.distributed, ``train --distributed``).

The multi-rank tests launch ``mpiexec -n 2`` in a subprocess (with a timeout, so a
hang fails the test instead of stalling the suite) around a small driver that runs
the training command and saves each rank's final parameters. They are skipped only
when mpi4py cannot be imported; the ``test`` extra installs it (and MPICH).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from mocrograd.data import DataLoader, load_digits
from mocrograd.distributed import INSTALL_HINT, ShardedLoader, share

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed (pip install 'mocrograd[mpi]')")
TIMEOUT = 120
# Open MPI's mpiexec refuses to start as root (as tests in a container often run)
# unless both of these are set; MPICH ignores them.
OPEN_MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

# Runs the training command with the given arguments and saves the last model's
# parameters to PREFIX-RANK.npz. STOP_RANK/STOP_AFTER: that rank's Ctrl-C flag turns
# on at its STOP_AFTER-th check, as if only it had received SIGINT.
DRIVER = """
import os, sys
import numpy as np
import mocrograd.nn as nn
from mocrograd import train

prefix, argv = sys.argv[1], sys.argv[2:]

def rank():
    if "--distributed" not in argv:
        return 0
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()

if os.environ.get("STOP_RANK"):
    checks = [0]
    def requested(self):
        checks[0] += 1
        return self.requested or (rank() == int(os.environ["STOP_RANK"])
                                  and checks[0] >= int(os.environ["STOP_AFTER"]))
    train._CtrlC.__call__ = requested

built, build = [], nn.build_model
nn.build_model = lambda name, **kwargs: built.append(build(name, **kwargs)) or built[-1]
code = train.main(argv)
np.savez(f"{prefix}-{rank()}.npz", **built[-1].state_dict())
sys.exit(code)
"""


def _mpiexec():
    for path in (os.path.dirname(sys.executable), None):   # the venv's (the mpich wheel's) first
        found = shutil.which("mpiexec", path=path)
        if found:
            return found
    pytest.fail("mpi4py is installed but no mpiexec was found (pip install mpich, or put MPI's mpiexec on PATH)")


def _run(tmp_path, prefix, args, ranks=None, env=None, timeout=TIMEOUT):
    """Run the driver (under ``mpiexec -n ranks`` when ranks is given); return the CompletedProcess."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    command = [sys.executable, str(driver), prefix, *args]
    if ranks is not None:
        command = [_mpiexec(), "-n", str(ranks), *command]
    full_env = {k: v for k, v in os.environ.items() if k not in ("MOCROGRAD_FAIL_RANK", "STOP_RANK")}
    full_env.update(OPEN_MPI_AS_ROOT)
    full_env.update(env or {})
    return subprocess.run(command, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)


def _params(tmp_path, prefix, rank=0):
    with np.load(tmp_path / f"{prefix}-{rank}.npz") as f:
        return {name: f[name] for name in f.files}


def _max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


# ---------------------------------------------------------------- without MPI

@pytest.mark.parametrize("batch", [1, 2, 3, 7, 32])
@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
def test_shares_partition_each_batch(batch, ranks):
    slices = [share(batch, ranks, r) for r in range(ranks)]
    assert slices[0][0] == 0 and slices[-1][1] == batch
    assert all(hi == lo for (_, hi), (lo, _) in zip(slices, slices[1:]))       # contiguous, in rank order
    sizes = [hi - lo for lo, hi in slices]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


class _Rank:
    """What ShardedLoader needs of a Distributed: size, rank and a weight to set."""

    def __init__(self, size, rank):
        self.size, self.rank, self.weight = size, rank, None


@pytest.mark.parametrize("ranks", [2, 3])
def test_sharded_loaders_cover_the_global_batches(ranks):
    train, _ = load_digits(62)                      # 50 examples: batches of 7 ... 7, 1
    reference = list(DataLoader(train, 7))
    shards = []
    for r in range(ranks):
        dist = _Rank(ranks, r)
        loader = ShardedLoader(train, 7, dist)
        assert len(loader) == len(reference)
        batches = []
        for x, y in loader:
            batches.append((np.asarray(x).copy(), np.asarray(y).copy(), len(y), dist.weight))
        shards.append(batches)
    for i, (x, y) in enumerate(reference):
        parts = [shard[i] for shard in shards]
        assert sum(weight for *_, weight in parts) == pytest.approx(1.0)
        real = [part for part in parts if part[2] > 0]      # placeholders: len(y) == 0 and weight 0
        assert all(part[3] == 0.0 for part in parts if part[2] == 0)
        np.testing.assert_array_equal(np.concatenate([p[0] for p in real], axis=1), np.asarray(x))
        np.testing.assert_array_equal(np.concatenate([p[1] for p in real]), y)
    # the last batch holds one example: rank 0 trains on it, the others on a placeholder
    assert [shard[-1][2] for shard in shards] == [1] + [0] * (ranks - 1)


def test_evaluation_loader_skips_empty_shares():
    _, val = load_digits(62)                        # 12 examples: batches of 7, 5
    loader = ShardedLoader(val, 7, _Rank(8, 6), train=False)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [1]


def test_missing_mpi4py_exits_2_with_a_hint(tmp_path):
    fake = tmp_path / "hidden" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mpi4py'\", name='mpi4py')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "hidden"))
    result = subprocess.run([sys.executable, "-m", "mocrograd.train", "1", "20", "--model", "normal",
                             "--distributed"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"python -m mocrograd.train: error: {INSTALL_HINT}"]
    assert "pip install 'mocrograd[mpi]'" in result.stderr


# ---------------------------------------------------------------- with MPI

COMMON = ["--model", "normal", "--length", "62", "--batch-size", "7", "--lr", "0.1", "--quiet"]


@needs_mpi
def test_two_ranks_reach_the_parameters_of_one_process(tmp_path):
    """Uneven shares (7 = 4 + 3), a last batch of 1 (< 2 ranks) and a strong L2 penalty."""
    args = COMMON + ["--epochs", "4", "--l2", "0.05"]
    one = _run(tmp_path, "one", args + ["--json", "one.json"])
    assert one.returncode == 0, one.stderr
    two = _run(tmp_path, "two", args + ["--distributed", "--json", "two.json"], ranks=2)
    assert two.returncode == 0, two.stderr
    # the L2 penalty counted twice would be far outside the tolerance used below
    twice = _run(tmp_path, "twice", COMMON + ["--epochs", "4", "--l2", "0.1"])
    assert twice.returncode == 0, twice.stderr

    single, rank0, rank1 = _params(tmp_path, "one"), _params(tmp_path, "two", 0), _params(tmp_path, "two", 1)
    assert _max_difference(rank0, rank1) == 0.0                 # every rank holds the same parameters
    assert _max_difference(rank0, single) < 1e-5                # float32 rounding of the sums only
    assert _max_difference(_params(tmp_path, "twice"), single) > 1e-2

    # only rank 0 prints and writes; metrics are reduced over the ranks
    assert two.stdout.count("normal: trained in") == 1
    report, reference = json.loads((tmp_path / "two.json").read_text()), json.loads((tmp_path / "one.json").read_text())
    for got, want in zip(report["models"]["normal"]["epochs"], reference["models"]["normal"]["epochs"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    dist = report["distributed"]
    assert dist["ranks"] == 2 and dist["steps"] == 4 * 8           # one step per global batch, every rank
    assert dist["workers_per_rank"] == max(1, report["cores"] // dist["ranks_on_this_machine"])


@needs_mpi
def test_batches_smaller_than_the_rank_count_with_adam(tmp_path):
    """Batch 1 on 2 ranks: rank 1 never has an example and still takes every step; --workers wins."""
    args = ["--model", "normal", "--length", "25", "--epochs", "2", "--batch-size", "1", "--optimizer", "adam",
            "--quiet"]
    one = _run(tmp_path, "one", args)
    assert one.returncode == 0, one.stderr
    two = _run(tmp_path, "two", args + ["--distributed", "--workers", "3", "--json", "two.json"], ranks=2)
    assert two.returncode == 0, two.stderr
    single, rank0, rank1 = _params(tmp_path, "one"), _params(tmp_path, "two", 0), _params(tmp_path, "two", 1)
    assert _max_difference(rank0, rank1) == 0.0
    assert _max_difference(rank0, single) < 1e-5
    assert json.loads((tmp_path / "two.json").read_text())["distributed"]["workers_per_rank"] == 3


@needs_mpi
def test_a_failure_on_one_rank_aborts_the_job(tmp_path):
    start = time.monotonic()
    result = _run(tmp_path, "fail", COMMON + ["--epochs", "2", "--distributed"], ranks=2,
                  env={"MOCROGRAD_FAIL_RANK": "1"}, timeout=60)
    assert result.returncode != 0
    assert "rank 1: RuntimeError: injected failure (MOCROGRAD_FAIL_RANK=1)" in result.stderr
    assert time.monotonic() - start < 60


@needs_mpi
def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step_and_resumes(tmp_path):
    """Rank 1 alone asks to stop in epoch 1: both ranks stop after the same step, rank 0 writes the
    checkpoint, and resuming it gives the uninterrupted run's parameters and metrics."""
    args = COMMON + ["--epochs", "2"]
    whole = _run(tmp_path, "whole", args + ["--json", "whole.json"])
    assert whole.returncode == 0, whole.stderr
    stopped = _run(tmp_path, "stopped", args + ["--distributed", "--checkpoint", "run.npz"], ranks=2,
                   env={"STOP_RANK": "1", "STOP_AFTER": "4"})
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.count("interrupted in epoch 1 after batch") == 1      # rank 0 reports it
    assert "resume with:" in stopped.stderr
    resumed = _run(tmp_path, "resumed", ["--resume", "run.npz", "--distributed", "--json", "resumed.json"], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert _max_difference(_params(tmp_path, "resumed"), _params(tmp_path, "whole")) < 1e-5
    got = json.loads((tmp_path / "resumed.json").read_text())["models"]["normal"]["epochs"]
    want = json.loads((tmp_path / "whole.json").read_text())["models"]["normal"]["epochs"]
    for g, w in zip(got, want):   # the interrupted epoch's training sums are counted once
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)
        assert g["train_acc"] == pytest.approx(w["train_acc"], rel=1e-5)
