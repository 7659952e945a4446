"""Kernels called from several Python threads at once.

The kernels keep no shared scratch state (workspaces are per call) and release
the GIL, so concurrent calls must give exactly the serial results.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mocrograd
from mocrograd import Matrix

THREADS, OPS_PER_THREAD = 8, 200


def make_task(index):
    """Operation number ``index``: a kernel on inputs of its own, sizes from 1 to 80 a side
    (every 25th one large enough, 2 million multiply-adds, for dynamic to use threads)."""
    rng = np.random.default_rng(index)
    dtype = (np.float32, np.float64)[index % 2]
    if index % 25 == 0:
        m = k = n = 128
    else:
        m, k, n = (int(v) for v in rng.integers(1, 81, 3))

    def mat(rows, cols, low=None):
        x = rng.standard_normal((rows, cols)) if low is None else rng.uniform(low, 2, (rows, cols))
        return Matrix(x.astype(dtype))

    a, b, x, y = mat(m, k), mat(k, n), mat(m, n), mat(m, n)
    kind = index % 12
    if kind == 0:
        return lambda: a @ b
    if kind == 1:
        bt = mat(n, k)
        return lambda: a.matmul(bt, trans_b=True)
    if kind == 2:
        at, c = mat(k, m), mat(m, n)
        return lambda: at.matmul(b, trans_a=True, out=c.copy(), accumulate=True)
    if kind == 3:
        bias = mat(m, 1)
        return lambda: a.linear(b, bias, relu=True)
    if kind == 4:
        col, row = mat(m, 1), mat(1, n)
        return lambda: (x + col) * row / 3.0 - y
    if kind == 5:
        positive = mat(m, n, low=0.1)
        return lambda: (x.exp() + positive.log()) ** 2
    if kind == 6:
        return lambda: np.concatenate([x.log_softmax(0).numpy(), x.log_softmax(1).numpy()], axis=None)
    if kind == 7:
        return lambda: x.log_softmax(1).log_softmax_grad(y, 1)
    if kind == 8:
        return lambda: np.concatenate([x.sum().numpy().ravel(), x.sum(0).numpy().ravel(), x.max(1).numpy().ravel(),
                                       x.argmax(0).ravel().astype(dtype), [x.sum_squares()]])
    if kind == 9:
        return lambda: x.relu_grad(y) + x.relu()
    if kind == 10:
        return lambda: x.copy().axpy_(0.5, y).scale_(-2.0)
    v = mat(m, n, low=0.5)

    def adam():
        p, mm, vv = x.copy(), y.copy(), v.copy()
        p.adam_(x, mm, vv, 0.01, 0.9, 0.999, 1e-8, 0.1, 0.01, 0.0)
        return np.concatenate([p.numpy(), mm.numpy(), vv.numpy()])
    return adam


def result(task):
    return np.array(task())


@pytest.mark.parametrize("name,workers", [("naive", 1), ("optimized", 2), ("optimized", 7), ("dynamic", None)],
                         ids=["naive", "optimized-w2", "optimized-w7", "dynamic"])
def test_concurrent_calls_give_the_serial_results(name, workers):
    mocrograd.set_backend(name, workers, grain=1)
    tasks = [make_task(i) for i in range(THREADS * OPS_PER_THREAD)]
    serial = [result(task) for task in tasks]

    def run_share(share):
        return [result(task) for task in tasks[share::THREADS]]

    with ThreadPoolExecutor(THREADS) as pool:
        shares = list(pool.map(run_share, range(THREADS)))

    for share, got in enumerate(shares):
        for index, value in zip(range(share, len(tasks), THREADS), got):
            expected = serial[index]
            assert value.tobytes() == expected.tobytes(), f"operation {index} differs from its serial result"


def test_a_long_kernel_lets_other_threads_run():
    # Ordering, not speed: while the worker thread is inside one long matmul, the
    # main thread must record timestamps well inside that call. A kernel holding
    # the GIL would block it from the call's start to its end (up to one switch
    # interval, 5 ms, at either edge), so none could fall in the middle third.
    a, b = Matrix.randn(600, 600, seed=0), Matrix.randn(600, 600, seed=1)
    mocrograd.set_backend("naive")            # one thread: the other core stays free
    span, done, stamps = {}, threading.Event(), []

    def worker():
        span["start"] = time.perf_counter()
        a @ b
        span["end"] = time.perf_counter()
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
        time.sleep(0.0005)
    thread.join()

    third = (span["end"] - span["start"]) / 3
    assert third > 0.01, "the kernel was too quick to tell"
    inside = [t for t in stamps if span["start"] + third < t < span["end"] - third]
    assert inside, "the main thread did not run while the kernel did: is the GIL held?"
