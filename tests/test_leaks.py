"""Memory leaks: long loops must not grow the resident set.

After a warm-up (allocator arenas, caches, lazily created buffers), 5,000 training
steps of Normal grow RSS by less than 5 MB; so do long loops of Matrix/Tensor
operations with errors in them and of checkpoint saves and loads. A leak of one
small matrix per step would show up as megabytes here.

For C-level errors (use after free, overflows) see docs/reliability.md: the
suite also runs under AddressSanitizer.
"""
import gc
import os
import resource

import numpy as np
import pytest

import mocrograd as mg
from mocrograd import Matrix, Tensor, nn
from mocrograd.checkpoint import CheckpointError
from mocrograd.data import load_digits
from mocrograd.train import fit

MB = 2 ** 20


def rss():
    """Resident set size in bytes (psutil when installed, else /proc/self/statm)."""
    gc.collect()
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True)
def _has_rss():
    if "asan" in os.environ.get("LD_PRELOAD", "") or "ASAN_OPTIONS" in os.environ:
        pytest.skip("under AddressSanitizer freed memory stays in its quarantine: RSS says nothing")
    try:
        rss()
    except (OSError, ValueError):
        pytest.skip("no way to read the resident set size here")


def test_a_big_new_matrix_is_mapped_in_when_allocated():
    """Matrix.zeros of 64 MB is zero and mapped in by the allocating thread (with
    MADV_POPULATE_WRITE, Linux 5.14, or by touching each page), so the kernel that
    first writes it takes no page faults on several threads: unmapped, its first
    write would take 32 faults (2 MB pages) to 16,384 (4 KB pages). (Counting faults,
    not RSS: an allocation served from memory the process already holds does not
    grow RSS at all.) A first fill of another matrix starts the kernel's threads
    beforehand: each new thread's stack faults too (32 faults on 16 threads)."""
    Matrix.zeros(4096, 4096).fill_(1.0)
    m = Matrix.zeros(4096, 4096)
    assert not np.any(m.numpy())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    m.fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 16, f"the first write of a new 64 MB Matrix.zeros took {faults} page faults"


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.01), ("adam", 0.001)])
def test_5000_training_steps_of_normal_do_not_grow_rss(optimizer, lr, tmp_path):
    """The real training loop (fit): forward, backward, optimizer step, finiteness checks,
    validation and, for SGD, a checkpoint write after every epoch."""
    train, val = load_digits(1797)                 # 1438 training examples: 45 batches per epoch
    steps_per_epoch = -(-len(train) // 32)
    warmup = 12                                    # epochs
    measured = -(-5000 // steps_per_epoch)         # 112 epochs: 5,040 steps
    marks = {}

    def on_epoch(metrics):
        if metrics["epoch"] in (warmup, warmup + measured):
            marks[metrics["epoch"]] = rss()
    mg.manual_seed(0)
    model = nn.Normal()
    checkpoint = tmp_path / "run.npz" if optimizer == "sgd" else None
    history = fit(model, train, val, epochs=warmup + measured, lr=lr, optimizer=optimizer, on_epoch=on_epoch,
                  checkpoint=checkpoint)
    assert np.isfinite(history[-1]["train_loss"])
    growth = marks[warmup + measured] - marks[warmup]
    assert growth < 5 * MB, f"RSS grew by {growth / MB:.1f} MB over {measured * steps_per_epoch} steps"


def test_operations_and_errors_do_not_leak():
    """Kernels, autograd graphs and the exceptions of bad calls, 20,000 times."""
    rng = np.random.default_rng(0)
    a = Matrix(rng.standard_normal((64, 48)).astype(np.float32))
    b = Matrix(rng.standard_normal((48, 32)).astype(np.float32))
    bad = Matrix(np.ones((5, 7), dtype=np.float32))
    f64 = Matrix(np.ones((48, 32)))

    def loop(n):
        for i in range(n):
            x = Tensor(a, requires_grad=True)
            w = Tensor(b, requires_grad=True)
            loss = (x @ w).relu().log_softmax(0).sum()
            loss.backward()
            c = a.linear(b, Matrix.zeros(64, 1), relu=True).sum(axis=1)
            c.axpy_(0.5, c)
            for call in (lambda: a @ bad, lambda: a @ f64, lambda: a + bad, lambda: a.axpy_(1.0, bad),
                         lambda: Matrix([[1, 2], [3]]), lambda: Matrix(np.zeros((0, 3))), lambda: a.sum(axis=2)):
                try:
                    call()
                except (TypeError, ValueError):
                    pass
            np.asarray(a).sum()
            memoryview(a).tobytes()
    loop(2000)
    before = rss()
    loop(20000)
    growth = rss() - before
    assert growth < 5 * MB, f"RSS grew by {growth / MB:.1f} MB"


def test_checkpoint_save_and_load_do_not_leak(tmp_path):
    mg.manual_seed(0)
    model = nn.Normal()
    path = tmp_path / "m.npz"
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")

    def loop(n):
        for _ in range(n):
            model.save(path)
            model.load(path)
            try:
                model.load(tmp_path / "bad.npz")
            except CheckpointError:
                pass
    loop(30)
    before = rss()
    loop(300)
    growth = rss() - before
    assert growth < 5 * MB, f"RSS grew by {growth / MB:.1f} MB"
