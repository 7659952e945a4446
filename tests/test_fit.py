"""mocrograd.train.fit called from Python: what it checks before the first step (so a bad
argument never leaves a model half-trained) and the models it trains (float64 too)."""
import numpy as np
import pytest

import mocrograd as mg
from mocrograd import nn
from mocrograd.checkpoint import CheckpointError
from mocrograd.data import Split, load_digits
from mocrograd.train import fit


@pytest.fixture(scope="module")
def digits():
    return load_digits(60)


def snapshot(model):
    return [p.numpy().copy() for p in model.parameters()]


def relabel(split, index, label):
    y = split.y.copy()
    y[index] = label
    return Split(split.x, y)


BAD_RUNS = {
    "epochs 0": (lambda tr, va: (tr, va), {"epochs": 0}, "epochs must be a whole number >= 1"),
    "epochs 2.5": (lambda tr, va: (tr, va), {"epochs": 2.5}, "epochs must be a whole number >= 1"),
    "unknown optimizer": (lambda tr, va: (tr, va), {"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
    "empty training split": (lambda tr, va: (Split(tr.x[:0], tr.y[:0]), va), {}, "training split has no examples"),
    "label past the classes, last batch": (lambda tr, va: (relabel(tr, -1, 10), va), {},
                                           r"training labels must lie in \[0, 10\)"),
    "negative validation label": (lambda tr, va: (tr, relabel(va, 0, -1)), {}, "validation labels must lie"),
    "float labels": (lambda tr, va: (Split(tr.x, tr.y.astype(float)), va), {}, "labels must be integers"),
    "validation features": (lambda tr, va: (tr, Split(va.x[:, :10], va.y)), {},
                            "validation examples have 10 features, the training examples 64"),
    "checkpoint directory missing": (lambda tr, va: (tr, va), {"checkpoint": "no/such/dir/c.npz"},
                                     "checkpoint no/such/dir/c.npz: the directory .* does not exist"),
}


@pytest.mark.parametrize("name", BAD_RUNS)
def test_bad_runs_are_refused_before_the_first_step(digits, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_data, settings, match = BAD_RUNS[name]
    train, val = make_data(*digits)
    model = nn.Normal()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        fit(model, train, val, **dict({"epochs": 1}, **settings))
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(new, old)


def test_a_split_checks_its_shapes():
    with pytest.raises(ValueError, match=r"got \(50, 64\) and \(60,\)"):
        Split(np.zeros((50, 64)), np.zeros(60, dtype=int))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_float64_model_trains(digits, optimizer):
    mg.manual_seed(0)
    model = nn.Normal(dtype=np.float64)
    history = fit(model, *digits, epochs=2, optimizer=optimizer)
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"] * 1.5
    assert all(p.dtype == np.float64 for p in model.parameters())
    mg.manual_seed(0)
    single = fit(nn.Normal(), *digits, epochs=2, optimizer=optimizer)   # same run in float32, loosely
    assert abs(single[-1]["train_loss"] - history[-1]["train_loss"]) < 1e-3


def test_resuming_a_finished_run_asks_for_more_epochs(digits, tmp_path):
    path = tmp_path / "run.npz"
    fit(nn.Normal(), *digits, epochs=2, checkpoint=path)
    model = nn.Normal()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="already completed 2 epochs"):
        fit(model, *digits, epochs=2, resume=path)
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(new, old)
    assert len(fit(model, *digits, epochs=3, resume=path)) == 3
