"""Determinism: results never depend on the worker count or on other Python threads.

* Every kernel, under optimized and dynamic with 1, 2, 3 and 7 workers, gives
  bit-identical results (each output element is computed in one chunk, in an order
  fixed by the shape alone).
* A whole training run of Normal (2 epochs) is bit-identical under all of them.
* 8 Python threads, each running 1,000 mixed operations at the same time (the
  kernels release the GIL), get exactly what a serial run gets.
* threadpoolctl's BLAS limit does not change anything; OMP_NUM_THREADS caps our pool.
"""
import hashlib
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import mocrograd as mg
from mocrograd import Matrix, Tensor, nn
from mocrograd.data import load_digits
from mocrograd.train import fit

# grain 1: every kernel, however small, is cut into that many chunks
CONFIGS = [(name, w, 1) for name in ("optimized", "dynamic") for w in (1, 2, 3, 7)]


def _kernels(dtype):
    """name -> array for every kernel, on shapes that split unevenly into 2, 3 and 7 chunks
    (the products are big enough for dynamic to cut them too)."""
    rng = np.random.default_rng(42)

    def mat(r, c, low=-2.0, high=2.0):
        return Matrix(rng.uniform(low, high, (r, c)).astype(dtype))

    a, b = mat(157, 211), mat(211, 149)
    at, bt = mat(211, 157), mat(149, 211)
    big, big2 = mat(523, 769), mat(523, 769)
    col, row, one = mat(523, 1), mat(1, 769), mat(1, 1)
    positive = mat(523, 769, 0.1, 3.0)
    bias = mat(157, 1)
    out = {}
    out["matmul"] = a @ b
    out["matmul_ta"] = at.matmul(b, trans_a=True)
    out["matmul_tb"] = a.matmul(bt, trans_b=True)
    out["matmul_tab"] = at.matmul(bt, trans_a=True, trans_b=True)
    acc = Matrix(np.ones((157, 149), dtype=dtype))
    out["matmul_accumulate"] = a.matmul(b, out=acc, accumulate=True)
    # batch-sized products, big enough to be handed out in pieces on demand: the thin
    # kernels (2 and 7 columns) and the one-strip register tile (12 and 20 columns)
    tall = mat(1031, 1543)
    for n in (2, 7, 12, 20):
        out[f"matmul_batch_{n}"] = tall @ mat(1543, n)
    for relu in (False, True):
        out[f"linear_{relu}"] = a.linear(b, bias, relu)
    for name, op in [("add", lambda x, y: x + y), ("sub", lambda x, y: x - y), ("mul", lambda x, y: x * y),
                     ("div", lambda x, y: x / y)]:
        for other_name, other in [("full", big2), ("col", col), ("row", row), ("one", one), ("scalar", 0.75)]:
            out[f"{name}_{other_name}"] = op(big, other)
            out[f"r{name}_{other_name}"] = op(other, big) if other_name != "scalar" else op(0.75, big)
    out["neg"] = -big
    for e in (2, 0.5, -1.5, 3):
        out[f"pow_{e}"] = positive ** e
    out["exp"], out["log"] = big.exp(), positive.log()
    out["relu"], out["relu_mask"], out["relu_grad"] = big.relu(), big.relu_mask(), big.relu_grad(big2)
    for axis in (None, 0, 1):
        out[f"sum_{axis}"], out[f"max_{axis}"] = big.sum(axis), big.max(axis)
    out["argmax_0"], out["argmax_1"] = big.argmax(0), big.argmax(1)
    out["sum_squares"] = np.array(big.sum_squares())
    for axis in (0, 1):
        y = big.log_softmax(axis)
        out[f"log_softmax_{axis}"] = y
        out[f"log_softmax_grad_{axis}"] = y.log_softmax_grad(big2, axis)
    out["axpy_"] = big.copy().axpy_(-0.3, big2)
    out["scale_"] = big.copy().scale_(1.7)
    out["fill_"] = big.copy().fill_(0.1)
    out["copy_"] = big.copy().copy_(big2)
    p, m, v = big.copy(), big2.copy(), positive.copy()
    for step in (1, 2):
        p.adam_(big2, m, v, 1e-3, 0.9, 0.999, 1e-8, 1 - 0.9 ** step, 1 - 0.999 ** step, 0.01)
    out["adam_p"], out["adam_m"], out["adam_v"] = p, m, v
    return {name: np.array(value) for name, value in out.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_kernel_is_bit_identical_for_any_worker_count(dtype):
    results = {}
    for config in CONFIGS:
        with mg.backend(*config):
            results[config] = _kernels(dtype)
    reference = results[CONFIGS[0]]
    for config, got in results.items():
        assert got.keys() == reference.keys()
        for name in reference:
            assert got[name].dtype == reference[name].dtype
            assert np.array_equal(got[name], reference[name], equal_nan=True), f"{name} differs under {config}"


def _train(model_factory, length, epochs, optimizer="sgd", lr=0.01, batch_size=32):
    train, val = load_digits(length)
    mg.manual_seed(0)
    model = model_factory()
    history = fit(model, train, val, epochs, batch_size=batch_size, lr=lr, optimizer=optimizer)
    return model.state_dict(), [{k: v for k, v in m.items() if k != "seconds"} for m in history]


def _assert_runs_identical(runs):
    (first_config, (state, history)), *rest = runs.items()
    for config, (other_state, other_history) in rest:
        assert other_history == history, f"metrics differ: {config} vs {first_config}"
        for name in state:
            assert np.array_equal(other_state[name], state[name]), f"{name}: {config} vs {first_config}"


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.01), ("adam", 0.002)])
def test_training_normal_is_bit_identical_for_any_worker_count(optimizer, lr):
    runs = {}
    for config in CONFIGS:
        with mg.backend(*config):
            runs[config] = _train(nn.Normal, 1000, 2, optimizer, lr)
    _assert_runs_identical(runs)


def test_training_a_wide_model_is_bit_identical_for_any_worker_count():
    """Layers wide enough that dynamic cuts the products into several chunks."""
    runs = {}
    for config in [("optimized", 1), ("optimized", 3), ("dynamic", 2), ("dynamic", 7)]:   # default grain
        with mg.backend(*config):
            runs[config] = _train(lambda: nn.MLP([64, 768, 768, 10]), 640, 1, batch_size=256)
    _assert_runs_identical(runs)


# ------------------------------------------------------------------ many Python threads

def _mixed_ops(seed, count=1000):
    """A reproducible stream of Matrix and Tensor operations; a digest of every result."""
    rng = np.random.default_rng(seed)
    digest = hashlib.sha256()
    for i in range(count):
        kind = i % 8
        r, c, k = (int(n) for n in rng.integers(1, 48, 3))
        dtype = np.float32 if rng.random() < 0.7 else np.float64
        a = Matrix(rng.standard_normal((r, k)).astype(dtype))
        b = Matrix(rng.standard_normal((k, c)).astype(dtype))
        if kind == 0:
            result = a @ b
        elif kind == 1:
            result = (a * a + a / 3.0 - 1.0).exp()
        elif kind == 2:
            result = a.log_softmax(int(rng.integers(0, 2)))
        elif kind == 3:
            result = a.sum(axis=[None, 0, 1][i % 3]) if i % 2 else a.max(axis=1)
        elif kind == 4:
            result = a.copy().axpy_(0.5, a).scale_(0.25)
        elif kind == 5:
            x = Tensor(a, requires_grad=True)
            w = Tensor(b, requires_grad=True)
            loss = (x @ w).relu().sum()
            loss.backward()
            result = np.concatenate([x.grad.numpy().ravel(), w.grad.numpy().ravel()])
        elif kind == 6:
            result = a.linear(b, Matrix(np.ones((r, 1), dtype=dtype)), True)
        else:
            big = Matrix(rng.standard_normal((128, 96)).astype(dtype))
            result = big.matmul(big, trans_b=True)     # large enough for a parallel team
        digest.update(np.ascontiguousarray(np.asarray(result)).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("config", [("dynamic", None), ("optimized", 2), ("naive", None)])
def test_eight_threads_match_a_serial_run(config):
    with mg.backend(*config):
        serial = [_mixed_ops(seed) for seed in range(8)]
        threaded = [None] * 8
        errors = []
        start = threading.Barrier(8)

        def work(seed):
            try:
                start.wait()
                threaded[seed] = _mixed_ops(seed)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    assert threaded == serial


# ------------------------------------------------------------------ thread limits

def test_threadpoolctl_blas_limit_changes_nothing():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with mg.backend("optimized", 2):
        free = _kernels(np.float32)
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            limited = _kernels(np.float32)
    for name in free:
        assert np.array_equal(free[name], limited[name], equal_nan=True), name


def test_omp_num_threads_caps_the_core(tmp_path):
    code = "import mocrograd as mg; print(mg.cpu_count())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
