"""The training command end to end: output, --json, --plot, --help, argument errors,
checkpoint/resume, Ctrl-C (SIGINT) and divergence (non-finite loss).

Subprocesses run the installed package (sys.executable, cwd=tmp_path, so the source
tree never shadows it); argument errors, which exit before any work, are also
checked in-process because that is much faster.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mocrograd.checkpoint import read_checkpoint, read_metadata
from mocrograd.train import main

PROG = "python -m mocrograd.train"
EPOCH_LINE = re.compile(r"^normal epoch +(\d+)/(\d+)  train loss \d+\.\d{4} acc [01]\.\d{4}  "
                        r"val loss \d+\.\d{4} acc [01]\.\d{4}  \d+\.\d\ds$")


def cli(tmp_path, *args, timeout=180, env=None):
    return subprocess.run([sys.executable, "-m", "mocrograd.train", *map(str, args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, env=env)


def metrics(report, model="normal"):
    """Per-epoch metrics without the timings."""
    return [{k: v for k, v in m.items() if k != "seconds"} for m in report["models"][model]["epochs"]]


def same_arrays(a, b):
    _, x = read_checkpoint(a)
    _, y = read_checkpoint(b)
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------ a normal run

def test_end_to_end_output_and_json(tmp_path):
    result = cli(tmp_path, 2, 100, "--model", "normal", "--json", "out.json", "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "normal: Normal(64-64-32-10), 80 training and 20 validation examples"
    assert [EPOCH_LINE.match(line).groups() for line in lines[1:3]] == [("1", "2"), ("2", "2")]
    assert re.fullmatch(r"normal: trained in \d+\.\d{3}s", lines[3]) and len(lines) == 4
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["settings"]["seed"] == 3 and report["settings"]["epochs"] == 2
    model = report["models"]["normal"]
    assert (model["length"], model["train_examples"], model["val_examples"]) == (100, 80, 20)
    assert [m["epoch"] for m in model["epochs"]] == [1, 2]
    for m in model["epochs"]:
        assert set(m) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
        assert all(np.isfinite(m[k]) for k in m) and 0 <= m["train_acc"] <= 1 and m["seconds"] >= 0
    assert model["total_seconds"] >= sum(m["seconds"] for m in model["epochs"]) * 0.99


def test_all_models_quiet(tmp_path):
    """--model all: Normal on LENGTH, Longer on LENGTH/10, Bigger on LENGTH/100 (at least 1)."""
    result = cli(tmp_path, 1, 150, "--quiet", "--json", "all.json")
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["normal", "longer", "bigger"]
    report = json.loads((tmp_path / "all.json").read_text())
    assert [report["models"][m]["length"] for m in ("normal", "longer", "bigger")] == [150, 15, 1]


def test_same_seed_same_metrics(tmp_path):
    args = (2, 200, "--model", "normal", "--shuffle", "--seed", 11, "--quiet", "--json")
    first, second = cli(tmp_path, *args, "a.json"), cli(tmp_path, *args, "b.json")
    assert first.returncode == second.returncode == 0
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert metrics(a) == metrics(b)
    other = cli(tmp_path, 2, 200, "--model", "normal", "--shuffle", "--seed", 12, "--quiet", "--json", "c.json")
    assert other.returncode == 0
    assert metrics(json.loads((tmp_path / "c.json").read_text())) != metrics(a)


def test_plot_writes_a_png(tmp_path):
    result = cli(tmp_path, 2, 100, "--model", "normal", "--quiet", "--plot", "curves.png")
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_help_documents_every_option_with_defaults(tmp_path):
    result = cli(tmp_path, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "The last 20% of the examples are the validation set" in text
    for option, default in [("--epochs", "10"), ("--length", "1000"), ("--model", "all"),
                            ("--backend", "$MOCROGRAD_BACKEND, else dynamic"),
                            ("--workers", None), ("--batch-size", "32"), ("--lr", "0.01"), ("--optimizer", "sgd"),
                            ("--l2", "0.0001"), ("--shuffle", None), ("--seed", "0"), ("--json", None),
                            ("--plot", None), ("--quiet", None), ("--checkpoint", None), ("--resume", None)]:
        assert option in text
        if default is not None:
            assert re.search(re.escape(option) + r"\b.*?default:? " + re.escape(default), text), option
    # no "(default: None)" after options without a value, nor a second default after one the help names
    assert "default: None" not in text and "default: False" not in text
    assert "(default 10) (default" not in text


# ------------------------------------------------------------------ invalid arguments

INVALID = [
    (["0"], "EPOCHS"), (["-1"], None), (["--epochs", "0"], "--epochs"), (["--epochs", "-3"], None),
    (["ten"], "EPOCHS"), (["5", "abc"], "LENGTH"), (["2", "0"], "LENGTH"), (["2", "1798"], "1797"),
    (["--length", "0"], "--length"), (["--length", "5000"], "1797"), (["--model", "huge"], "--model"),
    (["--backend", "gpu"], "--backend"), (["--workers", "0"], "--workers"), (["--workers", "-2"], "--workers"),
    (["--workers", "two"], "--workers"), (["--lr", "0"], "--lr"), (["--lr", "-0.5"], "--lr"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "fast"], "--lr"),
    (["--batch-size", "0"], "--batch-size"), (["--l2", "-1"], "--l2"), (["--l2", "abc"], "expected a number"),
    (["--seed", "-1"], "--seed"), (["--seed", "1.5"], "--seed"), (["--optimizer", "rmsprop"], "--optimizer"),
    (["3", "--epochs", "4"], "twice"), (["--bogus"], "unrecognized"),
    (["--checkpoint", "c.npz"], "single --model"), (["--model", "normal", "--checkpoint", "no/such/dir/c.npz"],
                                                    "does not exist"),
    (["--resume", "missing.npz"], "no such checkpoint file"),
    (["--json", "no/such/dir/out.json"], "does not exist"), (["--plot", "."], "is a directory"),
]


@pytest.mark.parametrize("argv, mention", INVALID, ids=[" ".join(a) for a, _ in INVALID])
def test_invalid_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, mention):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"{PROG}: error: ")
    if mention:
        assert mention in err
    assert os.listdir(tmp_path) == []       # no work: nothing written


@pytest.mark.parametrize("option", ["--json", "--plot", "--checkpoint"])
def test_an_output_that_cannot_be_written_stops_before_training(tmp_path, monkeypatch, capsys, option):
    """A read-only directory is found before any work, not after the training it would lose.
    (Simulated through os.access: root may write anywhere, and CI may run as root.)"""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: "locked" not in str(path) and real_access(path, mode))
    with pytest.raises(SystemExit) as info:
        main(["--model", "normal", option, "locked/out"])
    assert info.value.code == 2
    assert "locked/out: cannot write there" in capsys.readouterr().err
    assert os.listdir(tmp_path / "locked") == []


def test_ctrl_c_while_reading_the_arguments_is_one_line(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr("mocrograd.train.parse_args", interrupted)
    assert main(["--model", "normal"]) == 130
    assert capsys.readouterr().err == "interrupted before training began; nothing was saved\n"


def test_the_environment_chooses_the_default_backend(tmp_path):
    env = dict(os.environ, MOCROGRAD_BACKEND="naive", MOCROGRAD_WORKERS="3")
    result = cli(tmp_path, 1, 50, "--model", "normal", "--json", "env.json", env=env)
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "env.json").read_text())["settings"]
    assert (settings["backend"], settings["workers"]) == ("naive", 3)
    result = cli(tmp_path, 1, 50, "--model", "normal", "--backend", "optimized", "--json", "flag.json", env=env)
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "flag.json").read_text())["settings"]
    assert (settings["backend"], settings["workers"]) == ("optimized", 3)   # the flag wins over the environment


@pytest.mark.parametrize("argv", [["0"], ["--lr", "-1"], ["--model", "huge"], ["2", "1798"]])
def test_invalid_arguments_in_a_real_process(tmp_path, argv):
    start = time.perf_counter()
    result = cli(tmp_path, *argv)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert time.perf_counter() - start < 30


# ------------------------------------------------------------------ checkpoint and resume

def test_checkpoint_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    """Stop after 2 epochs, resume to 4: the same parameters and metrics as 4 epochs in one go."""
    monkeypatch.chdir(tmp_path)
    common = ["--model", "normal", "--length", "200", "--optimizer", "adam", "--lr", "0.003", "--shuffle",
              "--seed", "5", "--quiet"]
    assert main(["--epochs", "4", *common, "--checkpoint", "full.npz", "--json", "full.json"]) == 0
    assert main(["--epochs", "2", *common, "--checkpoint", "run.npz"]) == 0
    assert read_metadata("run.npz")["progress"]["epoch"] == 2
    assert main(["--resume", "run.npz", "--epochs", "4", "--json", "resumed.json"]) == 0
    assert same_arrays("run.npz", "full.npz")
    full, resumed = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "resumed.json"))
    assert metrics(resumed) == metrics(full)
    assert resumed["models"]["normal"]["resumed_from"] == {"checkpoint": "run.npz", "epoch": 2, "batch": 0}
    assert resumed["settings"]["optimizer"] == "adam" and resumed["settings"]["seed"] == 5   # from the file
    capsys.readouterr()

    # Settings that contradict the checkpoint: one line, exit 2, before any work.
    for argv, mention in [(["--model", "longer"], "--model longer conflicts"), (["--lr", "0.1"], "--lr 0.1"),
                          (["--optimizer", "sgd"], "--optimizer sgd"), (["--seed", "6"], "--seed 6"),
                          (["--length", "300"], "--length 300"), (["--batch-size", "16"], "--batch-size 16"),
                          (["--epochs", "4"], "already completed 4 epochs"),
                          (["--model", "all"], "conflicts")]:
        with pytest.raises(SystemExit) as info:
            main(["--resume", "run.npz", *argv])
        out, err = capsys.readouterr()
        assert info.value.code == 2 and out == "" and err.count("\n") == 1 and mention in err, err
    # backend and workers may change; the result does not depend on them
    assert main(["--resume", "run.npz", "--epochs", "5", "--backend", "optimized", "--workers", "3"]) == 0


def test_resume_from_a_damaged_or_foreign_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["2", "100", "--model", "normal", "--quiet", "--checkpoint", "ck.npz"]) == 0
    data = (tmp_path / "ck.npz").read_bytes()
    (tmp_path / "short.npz").write_bytes(data[:len(data) // 2])
    from mocrograd import nn
    nn.Normal().save(tmp_path / "params.npz")
    capsys.readouterr()
    for path, mention in [("short.npz", "truncated or corrupted"), ("params.npz", "not a checkpoint written"),
                          ("missing.npz", "no such checkpoint file")]:
        with pytest.raises(SystemExit) as info:
            main(["--resume", path])
        out, err = capsys.readouterr()
        assert info.value.code == 2 and err.count("\n") == 1 and mention in err and path in err


# ------------------------------------------------------------------ divergence

def test_huge_learning_rate_stops_with_status_3_and_keeps_the_checkpoint(tmp_path):
    good = cli(tmp_path, 2, 300, "--model", "normal", "--quiet", "--checkpoint", "ck.npz")
    assert good.returncode == 0, good.stderr
    before = (tmp_path / "ck.npz").read_bytes()
    result = cli(tmp_path, 3, 300, "--model", "normal", "--quiet", "--lr", "1e6", "--checkpoint", "ck.npz")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert re.search(r"normal: the loss is (nan|inf) at epoch 1 batch \d+: training diverged; "
                     r"try a smaller learning rate than 1e\+06; ck.npz still holds the state after epoch 2",
                     result.stderr), result.stderr
    assert (tmp_path / "ck.npz").read_bytes() == before
    _, arrays = read_checkpoint(tmp_path / "ck.npz")
    assert all(np.isfinite(a).all() for a in arrays.values())


# ------------------------------------------------------------------ Ctrl-C

def _start(tmp_path, *args):
    # TQDM_DISABLE: on a loaded machine an epoch may take over a second and show a progress bar on stderr
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    return subprocess.Popen([sys.executable, "-m", "mocrograd.train", *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.01)


def test_sigint_checkpoints_prints_one_line_and_resumes_exactly(tmp_path):
    run = _start(tmp_path, 1000, 1797, "--model", "normal", "--quiet", "--checkpoint", "ck.npz",
                 "--json", "out.json")
    try:
        _wait_for(lambda: (tmp_path / "ck.npz").exists() or run.poll() is not None)
        time.sleep(0.25)             # somewhere inside a later epoch
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    match = re.fullmatch(r"interrupted (?:after epoch (\d+)|in epoch (\d+) after batch (\d+) of 45) \(normal\); "
                         r"resume with: python -m mocrograd.train --resume ck.npz --json out.json --quiet\n", err)
    assert match, err
    progress = read_metadata(tmp_path / "ck.npz")["progress"]
    if match.group(1):
        assert (progress["epoch"], progress["batch"]) == (int(match.group(1)), 0)
    else:
        assert (progress["epoch"], progress["batch"]) == (int(match.group(2)) - 1, int(match.group(3)))
    assert not (tmp_path / "out.json").exists()

    total = progress["epoch"] + 2
    resumed = cli(tmp_path, "--resume", "ck.npz", "--epochs", total, "--json", "resumed.json", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    full = cli(tmp_path, total, 1797, "--model", "normal", "--quiet", "--checkpoint", "full.npz",
               "--json", "full.json")
    assert full.returncode == 0, full.stderr
    assert same_arrays(tmp_path / "ck.npz", tmp_path / "full.npz")
    assert metrics(json.loads((tmp_path / "resumed.json").read_text())) == \
        metrics(json.loads((tmp_path / "full.json").read_text()))


def test_sigint_without_checkpoint(tmp_path):
    run = _start(tmp_path, 1000, 1797, "--model", "normal")
    try:
        assert run.stdout.readline().startswith("normal: Normal(64-64-32-10)")
        assert EPOCH_LINE.match(run.stdout.readline().rstrip("\n"))
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130
    assert re.fullmatch(r"interrupted (after epoch \d+|in epoch \d+ after batch \d+ of 45) \(normal\); "
                        r"nothing was saved \(pass --checkpoint PATH with a single --model to be able to resume\)\n",
                        err), err
    assert os.listdir(tmp_path) == []
