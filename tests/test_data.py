"""data: the digits split (sizes, scaling, order, shuffling, bad lengths) and DataLoader batches."""
import numpy as np
import pytest
import sklearn.datasets

from mocrograd import Matrix
from mocrograd.data import DIGITS, DataLoader, Split, load_digits


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as (x scaled to [0, 1], y), the reference for the order."""
    raw = sklearn.datasets.load_digits()
    return raw.data / 16.0, raw.target


def test_full_split_shapes_and_types():
    train, val = load_digits()
    assert (len(train), len(val)) == (1438, 359)  # 1797 - round(0.2 * 1797)
    assert train.x.shape == (1438, 64) and val.x.shape == (359, 64)
    assert train.x.dtype == np.float32 and train.y.dtype.kind == "i"
    assert set(np.unique(train.y)) == set(range(10))


def test_pixels_are_scaled_to_the_unit_interval():
    train, val = load_digits()
    pixels = np.concatenate([train.x, val.x])
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_in_order_split_takes_the_first_examples(digits):
    x, y = digits
    train, val = load_digits(100)
    assert (len(train), len(val)) == (80, 20)
    np.testing.assert_allclose(train.x, x[:80], rtol=1e-7)
    np.testing.assert_array_equal(train.y, y[:80])
    np.testing.assert_array_equal(val.y, y[80:100])


def test_validation_fraction():
    assert [len(s) for s in load_digits(100, validation=0.5)] == [50, 50]
    assert [len(s) for s in load_digits(100, validation=0)] == [100, 0]


def test_shuffle_is_reproducible_and_keeps_pairs(digits):
    x, y = digits
    train, val = load_digits(shuffle=True, seed=3)
    again, _ = load_digits(shuffle=True, seed=3)
    other, _ = load_digits(shuffle=True, seed=4)
    in_order, _ = load_digits()
    np.testing.assert_array_equal(train.x, again.x)
    assert not np.array_equal(train.y, in_order.y)
    assert not np.array_equal(train.y, other.y)
    # every example is still there once, with its own label
    rows = {row.tobytes(): label for row, label in zip(x.astype(np.float32), y)}
    shuffled = np.concatenate([train.x, val.x])
    assert len({row.tobytes() for row in shuffled}) == len(rows)
    assert all(rows[row.tobytes()] == label for row, label in zip(shuffled, np.concatenate([train.y, val.y])))


@pytest.mark.parametrize("length", [0, DIGITS + 1, -1, 1.5, True, "10", None])
def test_bad_length_raises_a_clear_error(length):
    with pytest.raises(ValueError, match=f"length must be a whole number from 1 to {DIGITS}, got"):
        load_digits(length)


def test_numpy_integer_length_is_accepted():
    assert len(load_digits(np.int64(10))[0]) == 8


@pytest.mark.parametrize("validation", [1, 1.5, -0.1])
def test_bad_validation_fraction_raises(validation):
    with pytest.raises(ValueError, match="validation must be a fraction"):
        load_digits(10, validation=validation)


@pytest.mark.parametrize("length", [1, 2])
def test_tiny_length_leaves_an_empty_validation_set(length):
    train, val = load_digits(length)
    assert len(train) == length and len(val) == 0
    assert val.x.shape == (0, 64)
    loader = DataLoader(val)
    assert len(loader) == 0 and list(loader) == []


def test_no_training_examples_raises():
    with pytest.raises(ValueError, match="no training examples"):
        load_digits(1, validation=0.9)


# -------------------------------------------------------------------------- DataLoader
@pytest.fixture
def split():
    """70 examples whose pixel values name them: example i has every pixel = i / 100."""
    x = (np.arange(70, dtype=np.float32)[:, None] / 100) * np.ones((1, 64), dtype=np.float32)
    return Split(x, np.arange(70) % 10)


def example_ids(batch):
    return np.rint(batch.numpy()[0] * 100).astype(int)


def test_batches_are_columns_in_order_with_the_last_partial_one_kept(split):
    loader = DataLoader(split, batch_size=32)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [x.shape for x, _ in batches] == [(64, 32), (64, 32), (64, 6)]
    assert all(isinstance(x, Matrix) and x.dtype == np.float32 for x, _ in batches)
    np.testing.assert_array_equal(batches[1][0].numpy(), split.x[32:64].T)  # one column per example
    np.testing.assert_array_equal(np.concatenate([example_ids(x) for x, _ in batches]), np.arange(70))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), split.y)


def test_unshuffled_epochs_repeat_the_same_order(split):
    loader = DataLoader(split, batch_size=16)
    first = [example_ids(x) for x, _ in loader]
    second = [example_ids(x) for x, _ in loader]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))


def epoch_orders(loader, epochs=2):
    return [np.concatenate([example_ids(x) for x, _ in loader]) for _ in range(epochs)]


def test_shuffle_draws_a_new_order_each_epoch_reproducibly(split):
    first, second = epoch_orders(DataLoader(split, batch_size=32, shuffle=True, seed=5))
    assert sorted(first) == sorted(second) == list(range(70))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(70))
    again = epoch_orders(DataLoader(split, batch_size=32, shuffle=True, seed=5))
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[1], second)


def test_shuffled_labels_follow_their_examples(split):
    for x, y in DataLoader(split, batch_size=32, shuffle=True, seed=1):
        np.testing.assert_array_equal(y, example_ids(x) % 10)


def test_float64_batches(split):
    x, _ = next(iter(DataLoader(split, batch_size=8, dtype=np.float64)))
    assert x.dtype == np.float64 and x.shape == (64, 8)


def test_batch_size_must_be_positive(split):
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(split, batch_size=0)
