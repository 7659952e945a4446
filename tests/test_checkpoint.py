"""Checkpoints: Module.save/load, optimizer state, training checkpoints and exact resume.

Every bad file (missing, empty, truncated, bit-flipped, another model's, another
dtype's, not a checkpoint at all) must raise CheckpointError and leave the model
and optimizer untouched; a writer SIGKILLed mid-save must leave the previous file
loadable; a run stopped mid-epoch and resumed must end bit-identical to one that
never stopped.
"""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import mocrograd as mg
from mocrograd import Matrix, Tensor, nn
from mocrograd.checkpoint import (CheckpointError, atomic_write, load_model, load_training, read_checkpoint,
                                  read_metadata, save_training)
from mocrograd.data import load_digits
from mocrograd.train import NonFiniteError, TrainingInterrupted, fit


def normal(seed=0, dtype=np.float32):
    mg.manual_seed(seed)
    return nn.Normal(dtype=dtype)


def snapshot(model):
    return {name: value.copy() for name, value in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name], equal_nan=True), name


def assert_same_metrics(a, b):
    """Per-epoch metrics equal exactly, timings aside."""
    strip = lambda history: [{k: v for k, v in m.items() if k != "seconds"} for m in history]  # noqa: E731
    assert strip(a) == strip(b)


@pytest.fixture(scope="module")
def digits():
    return load_digits(200)


# ------------------------------------------------------------------ Module.save / load

def test_module_save_load_round_trip(tmp_path):
    path = tmp_path / "normal.npz"
    model = normal(0)
    model.save(path)
    other = normal(1)
    assert other.load(path) is other
    assert_same_state(other.state_dict(), model.state_dict())
    # A plain NumPy archive: readable without pickle, one named 2-D array per parameter.
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"meta"} | {f"model/{name}" for name in model.state_dict()}
        assert archive["model/layers.0.weight"].shape == (64, 64)
        meta = json.loads(archive["meta"].tobytes().decode())
    assert meta["format"] == "mocrograd-checkpoint" and meta["kind"] == "model" and meta["model_class"] == "Normal"


def test_frozen_parameters_are_saved_and_loaded(tmp_path):
    path = tmp_path / "frozen.npz"
    model, other = normal(0), normal(1)
    for m in (model, other):
        m.layers[0].weight.requires_grad = False
    model.save(path)
    other.load(path)
    assert_same_state(other.state_dict(), model.state_dict())
    assert np.array_equal(other.layers[0].weight.numpy(), model.layers[0].weight.numpy())


def test_save_float64_and_str_path(tmp_path):
    model = normal(0, dtype=np.float64)
    model.save(str(tmp_path / "m.npz"))
    other = normal(3, dtype=np.float64)
    other.load(str(tmp_path / "m.npz"))
    assert_same_state(other.state_dict(), model.state_dict())


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "m.npz"
    normal(0).save(path)
    normal(1).save(path)   # overwrite
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"partial new data")
        raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------ bad files

def _expect_error(model, path, match):
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=match) as info:
        model.load(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert_same_state(model.state_dict(), before)


def test_missing_file(tmp_path):
    _expect_error(normal(), tmp_path / "nope.npz", "no such checkpoint file")


def test_directory_and_empty_file(tmp_path):
    _expect_error(normal(), tmp_path, "directory")
    (tmp_path / "empty.npz").write_bytes(b"")
    _expect_error(normal(), tmp_path / "empty.npz", "empty")


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "m.npz"
    normal(0).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    _expect_error(normal(1), path, "truncated or corrupted")


def test_flipped_bytes_are_detected_or_harmless(tmp_path):
    """Flip one byte at many positions: either CheckpointError, or (a byte no reader
    uses, such as a timestamp) the values load exactly. Never wrong values."""
    path = tmp_path / "m.npz"
    saved = normal(0)
    saved.save(path)
    data = path.read_bytes()
    rng = np.random.default_rng(7)
    positions = np.concatenate([rng.integers(0, len(data), 250), np.arange(0, 64), np.arange(len(data) - 64, len(data))])
    detected = 0
    model = normal(1)
    for position in positions:
        corrupt = bytearray(data)
        corrupt[position] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(corrupt))
        before = snapshot(model)
        try:
            model.load(path)
        except CheckpointError:
            detected += 1
            assert_same_state(model.state_dict(), before)
        else:
            assert_same_state(model.state_dict(), saved.state_dict())
            model = normal(1)
    assert detected > len(positions) * 0.8


def test_flipped_parameter_bytes(tmp_path):
    """A flip inside a parameter's data is caught by the zip's CRC-32."""
    path = tmp_path / "m.npz"
    normal(0).save(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    path.write_bytes(bytes(data))
    _expect_error(normal(1), path, "corrupted")


def test_other_model(tmp_path):
    path = tmp_path / "longer.npz"
    mg.manual_seed(0)
    nn.Longer(layers=4).save(path)
    _expect_error(normal(), path, "holds a Longer with 8 parameters, the model is a Normal with 6: "
                                  "unexpected layers.3.weight, layers.3.bias")


def test_same_names_other_shapes(tmp_path):
    path = tmp_path / "mlp.npz"
    mg.manual_seed(0)
    nn.MLP([64, 32, 32, 10]).save(path)
    _expect_error(normal(), path, r"layers.0.weight has shape \(32, 64\)")


def test_other_dtype(tmp_path):
    path = tmp_path / "f64.npz"
    normal(0, dtype=np.float64).save(path)
    _expect_error(normal(), path, "dtype float64 in the checkpoint, the model needs float32")


def test_not_a_checkpoint(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 2)))
    _expect_error(normal(), tmp_path / "a.npy", "not a mocrograd checkpoint")
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    _expect_error(normal(), tmp_path / "plain.npz", "no 'meta' entry")
    (tmp_path / "text.npz").write_text("hello, world\n" * 10)
    _expect_error(normal(), tmp_path / "text.npz", "not a readable mocrograd checkpoint")
    meta = np.frombuffer(json.dumps({"format": "something-else"}).encode(), dtype=np.uint8)
    np.savez(tmp_path / "other.npz", meta=meta)
    _expect_error(normal(), tmp_path / "other.npz", "not a mocrograd checkpoint")
    meta = np.frombuffer(json.dumps({"format": "mocrograd-checkpoint", "version": 99}).encode(), dtype=np.uint8)
    np.savez(tmp_path / "future.npz", meta=meta)
    _expect_error(normal(), tmp_path / "future.npz", "version 99 is not supported")


def test_pickled_entries_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    model = normal(0)
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive, archive.open("evil.npy", "w") as f:
        np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _expect_error(normal(1), path, "corrupted")


# ------------------------------------------------------------------ optimizer state

def _train_steps(model, opt, steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = Matrix(rng.random((64, 16), dtype=np.float32))
        loss = nn.nll_loss(model(Tensor(x)), rng.integers(0, 10, 16))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make", [lambda p: nn.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
                                  lambda p: nn.Adam(p, lr=1e-3, weight_decay=1e-4)], ids=["sgd", "adam"])
def test_optimizer_state_dict_continues_exactly(make):
    a = normal(0)
    opt_a = make(a.parameters())
    _train_steps(a, opt_a, 3)
    state = opt_a.state_dict()
    b = normal(5)
    b.load_state_dict(a.state_dict())
    opt_b = make(b.parameters())
    opt_b.load_state_dict(state)
    _train_steps(a, opt_a, 2, seed=1)
    _train_steps(b, opt_b, 2, seed=1)
    assert_same_state(a.state_dict(), b.state_dict())
    # state_dict returns copies: changing them does not reach the optimizer
    for value in state.values():
        if isinstance(value, list):
            for buffer in value:
                if isinstance(buffer, np.ndarray):
                    buffer[...] = np.nan
    _train_steps(a, opt_a, 1)
    assert all(np.isfinite(v).all() for v in a.state_dict().values())


@pytest.mark.parametrize("corrupt, error, match", [
    (lambda s: s.update(type="SGD"), ValueError, "for a SGD optimizer"),
    (lambda s: s.update(m=s["m"][:-1]), ValueError, "one per parameter"),
    (lambda s: s["v"].__setitem__(2, np.zeros((3, 3), np.float32)), ValueError, r"v\[2\]: shape"),
    (lambda s: s["m"].__setitem__(0, s["m"][0].astype(np.float64)), TypeError, r"m\[0\]: dtype float64"),
    (lambda s: s.update(steps=-1), ValueError, "steps"),
    (lambda s: s.update(steps=s["steps"][:-1]), ValueError, "one per parameter"),
    (lambda s: s.update(steps=[0] + s["steps"][1:]), ValueError, r"steps\[0\] is 0 but m\[0\] is a buffer"),
    (lambda s: s.update(lr=float("nan")), ValueError, "lr"),
    (lambda s: s.update(betas=[0.9, 1.5]), ValueError, "betas"),
    (lambda s: s.pop("eps"), KeyError, "eps"),
    (lambda s: s["m"].__setitem__(1, None), ValueError, "same parameters"),
])
def test_bad_optimizer_state_leaves_the_optimizer_untouched(corrupt, error, match):
    model = normal(0)
    opt = nn.Adam(model.parameters(), lr=1e-3)
    _train_steps(model, opt, 2)
    state = opt.state_dict()
    before = opt.state_dict()
    corrupt(state)
    with pytest.raises(error, match=match):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert after["steps"] == before["steps"] and after["lr"] == before["lr"]
    for key in ("m", "v"):
        for x, y in zip(after[key], before[key]):
            assert np.array_equal(x, y)


# ------------------------------------------------------------------ training checkpoints

def test_training_checkpoint_round_trip_and_validation(tmp_path):
    path = tmp_path / "run.npz"
    model = normal(0)
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, 2)
    save_training(path, model, opt, {"epoch": 2, "note": "x"})
    meta, arrays = read_checkpoint(path)
    assert meta["kind"] == "training" and meta["optimizer"]["momentum"] == 0.9
    assert "optim/velocity/layers.2.bias" in arrays and read_metadata(path)["progress"]["note"] == "x"

    other = normal(1)
    other_opt = nn.SGD(other.parameters(), lr=0.1, momentum=0.9)
    assert load_training(path, other, other_opt) == {"epoch": 2, "note": "x"}
    assert_same_state(other.state_dict(), model.state_dict())
    for a, b in zip(other_opt.state_dict()["velocity"], opt.state_dict()["velocity"]):
        assert np.array_equal(a, b)

    # another optimizer type: CheckpointError, and neither model nor optimizer changes
    fresh = normal(2)
    adam = nn.Adam(fresh.parameters())
    before = snapshot(fresh)
    with pytest.raises(CheckpointError, match="optimizer state does not fit: the state is for a SGD"):
        load_training(path, fresh, adam)
    assert_same_state(fresh.state_dict(), before)
    assert adam.m == [None] * 6 and adam.steps == [0] * 6

    # a parameters-only file is not a training checkpoint
    model.save(tmp_path / "params.npz")
    with pytest.raises(CheckpointError, match="parameters only"):
        load_training(tmp_path / "params.npz", fresh, adam)


def test_non_finite_state_is_never_saved(tmp_path):
    path = tmp_path / "run.npz"
    model = normal(0)
    opt = nn.SGD(model.parameters(), lr=0.1)
    save_training(path, model, opt, {"epoch": 1})
    good = path.read_bytes()
    model.layers[1].weight.numpy()[0, 0] = np.inf
    with pytest.raises(ValueError, match="layers.1.weight is not finite"):
        save_training(path, model, opt, {"epoch": 2})
    assert path.read_bytes() == good


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("stop_after", [3, 7, 14])   # 160 examples / 32 = 5 batches per epoch: 3 and 14 are
def test_fit_stopped_and_resumed_is_bit_identical(tmp_path, digits, optimizer, stop_after):  # mid-epoch
    train, val = digits
    lr = 0.05 if optimizer == "sgd" else 0.002
    full = normal(0)
    expected = fit(full, train, val, epochs=4, lr=lr, optimizer=optimizer, checkpoint=tmp_path / "full.npz")

    path = tmp_path / "run.npz"
    steps = iter(range(1, 10 ** 6))
    first = normal(0)
    with pytest.raises(TrainingInterrupted) as info:
        fit(first, train, val, epochs=4, lr=lr, optimizer=optimizer, checkpoint=path,
            should_stop=lambda: next(steps) >= stop_after)
    stop = info.value
    assert (stop.epoch - 1) * 5 + stop.batch == stop_after and stop.checkpoint == path
    progress = read_metadata(path)["progress"]
    assert (progress["epoch"], progress["batch"]) == ((stop.epoch, 0) if stop.batch == 5 else
                                                      (stop.epoch - 1, stop.batch))

    resumed = normal(9)          # another initialization: everything must come from the file
    history = fit(resumed, train, val, epochs=4, lr=lr, optimizer=optimizer, checkpoint=path, resume=path)
    assert_same_state(resumed.state_dict(), full.state_dict())
    assert_same_metrics(history, expected)
    _, a = read_checkpoint(path)
    _, b = read_checkpoint(tmp_path / "full.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_of_a_checkpoint_from_before_parameter_groups_is_refused(tmp_path, digits):
    """A checkpoint whose optimizer state has no param_groups (written when fit used one
    group and put the L2 term into the gradients) cannot continue under fit's two groups:
    a CheckpointError before anything changes; its model still loads."""
    train, val = digits
    path = tmp_path / "old.npz"
    model = normal(0)
    opt = nn.SGD(model.parameters(), lr=0.05)
    _train_steps(model, opt, 1)
    save_training(path, model, opt, {"epoch": 1, "batch": 0, "history": [], "rng": {}})
    meta, arrays = read_checkpoint(path)
    del meta["optimizer"]["param_groups"]            # as the old format wrote it
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    fresh = normal(3)
    before = snapshot(fresh)
    with pytest.raises(CheckpointError, match="no param_groups"):
        fit(fresh, train, val, epochs=2, lr=0.05, resume=path)
    assert_same_state(fresh.state_dict(), before)
    assert_same_state(load_model(normal(4), path).state_dict(), model.state_dict())


def test_resume_rejects_another_configuration(tmp_path, digits):
    train, val = digits
    path = tmp_path / "run.npz"
    fit(normal(0), train, val, epochs=1, lr=0.05, checkpoint=path)
    model = normal(3)
    before = snapshot(model)
    for kwargs, match in [({"lr": 0.1}, "lr 0.05"), ({"batch_size": 16}, "batch_size 32"),
                          ({"optimizer": "adam"}, "optimizer 'sgd'"), ({"l2": 0.0}, "l2 0.0001")]:
        settings = dict(lr=0.05) | kwargs
        with pytest.raises(CheckpointError, match=match):
            fit(model, train, val, epochs=2, resume=path, **settings)
        assert_same_state(model.state_dict(), before)
    with pytest.raises(CheckpointError, match="train_examples 160"):
        fit(model, *load_digits(300), epochs=2, lr=0.05, resume=path)
    mg.manual_seed(0)
    with pytest.raises(CheckpointError, match=r"in the checkpoint \(Normal\), the model \(Longer\) needs"):
        fit(nn.Longer(layers=3), train, val, epochs=2, lr=0.05, resume=path)


def test_fit_stops_on_non_finite_parameters_without_overwriting(tmp_path, digits):
    """A parameter turns NaN after epoch 2: the epoch-2 checkpoint is refused, epoch 1's stays."""
    train, val = digits
    path = tmp_path / "run.npz"
    model = normal(0)

    def poison(metrics):
        if metrics["epoch"] == 2:
            model.layers[0].bias.numpy()[3, 0] = np.nan
    with pytest.raises(NonFiniteError, match="layers.0.bias is not finite at epoch 2") as info:
        fit(model, train, val, epochs=4, lr=0.05, checkpoint=path, on_epoch=poison)
    assert isinstance(info.value, FloatingPointError) and "smaller learning rate" in str(info.value)
    progress = read_metadata(path)["progress"]
    assert progress["epoch"] == 1
    _, arrays = read_checkpoint(path)
    assert all(np.isfinite(v).all() for v in arrays.values())


def test_fit_stops_on_non_finite_loss(tmp_path, digits):
    train, val = digits
    with pytest.raises(NonFiniteError, match=r"the loss is (nan|inf) at epoch 1 batch \d+.*smaller learning rate"):
        fit(normal(0), train, val, epochs=2, lr=1e6, checkpoint=tmp_path / "run.npz")
    assert not (tmp_path / "run.npz").exists()


# ------------------------------------------------------------------ SIGKILL mid-save

WRITER = """
import sys
import mocrograd as mg
from mocrograd import nn
mg.manual_seed(0)
model = nn.Bigger()
marker = model.layers[-1].bias.numpy()          # a view: set before each save
i = 0
while True:
    i += 1
    marker[0, 0] = i
    model.save(sys.argv[1])
    print(i, flush=True)
"""


def test_sigkill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "bigger.npz"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "1", writer.stderr.read()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # wait until the second save is half-way through its file
            partial = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
            if partial and os.path.getsize(tmp_path / partial[0]) > 16 * 2 ** 20:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the writer never started a second save")
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    saved = [int(line) for line in writer.stdout.read().split()]
    last = saved[-1] if saved else 1
    assert writer.returncode == -signal.SIGKILL
    assert os.path.getsize(path) > 150 * 2 ** 20      # ~42M float32 parameters
    mg.manual_seed(1)
    model = nn.Bigger()
    model.load(path)                                    # the previous checkpoint, complete and valid
    assert model.layers[-1].bias.numpy()[0, 0] in (last, last + 1)
    mg.manual_seed(0)
    reference = nn.Linear(64, 8192)                     # the first layer as the writer initialized it
    assert np.array_equal(model.layers[0].weight.numpy(), reference.weight.numpy())
