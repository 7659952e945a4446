"""Shared fixtures for the core tests.

With ``--import-mode=importlib`` test files cannot import one another, so what
they share lives here as fixtures: the (variant, workers) grid, the dtypes, a
seeded random generator and an element-wise error-bound check.
"""
import os

# Before the core (and so libgomp) is loaded: OpenMP threads sleep as soon as a
# kernel ends instead of spinning for the next one. The suite runs thousands of
# tiny kernels; on a busy machine spinning threads starve each other and make it
# many times slower. No result depends on this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mocrograd  # noqa: E402

# Every variant with 1, 2, 3 and 7 workers: 2 and 3 split outputs unevenly
# (tiles, rows and elements rarely divide by 3), 7 is more chunks than cores.
# naive ignores workers, so it needs one entry. The grid runs with grain 1, so
# even a 3x3 kernel is cut into that many chunks and every chunk boundary is
# reached (the default grain keeps small kernels in one chunk).
WORKER_COUNTS = (1, 2, 3, 7)
BACKENDS = [("naive", 1)] + [(name, w) for name in ("optimized", "dynamic") for w in WORKER_COUNTS]


@pytest.fixture(autouse=True)
def _restore_backend():
    """Whatever a test selects, the next one starts from the same backend."""
    previous = mocrograd.get_backend(), mocrograd.get_grain()
    yield
    mocrograd.set_backend(*previous[0], grain=previous[1])


@pytest.fixture(params=BACKENDS, ids=[f"{name}-w{w}" if name != "naive" else name for name, w in BACKENDS])
def backend(request):
    """Run the test under one (variant, workers) pair of the grid."""
    with mocrograd.backend(*request.param, grain=1):
        yield request.param


@pytest.fixture(scope="session")
def backends():
    """The whole grid, for tests that draw a backend themselves (hypothesis)."""
    return BACKENDS


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _assert_within(got, exact, bound, what="result"):
    """|got - exact| <= bound element-wise (NaN where exact is NaN; same infinities).

    ``exact`` is a float64 oracle; ``bound`` a float64 array (or number) of allowed
    absolute errors, derived in each test from the summation length and eps."""
    got = np.asarray(got, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    assert got.shape == exact.shape, f"{what}: shape {got.shape}, expected {exact.shape}"
    nan = np.isnan(exact)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN positions differ")
    inf = np.isinf(exact)
    np.testing.assert_array_equal(got[inf], exact[inf], err_msg=f"{what}: infinities differ")
    finite = ~(nan | inf)
    error = np.abs(got - exact)[finite]
    allowed = np.broadcast_to(bound, exact.shape)[finite]
    bad = ~(error <= allowed)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements off by more than the bound; "
                           f"worst error {error[bad].max():.3g} where {allowed[bad][error[bad].argmax()]:.3g} "
                           "was allowed")


@pytest.fixture(scope="session")
def assert_within():
    """The error-bound check: ``assert_within(got, exact, bound, what)``."""
    return _assert_within


# The Python-layer tests (tensor, nn) run under one representative of each variant.
LAYER_BACKENDS = [("naive", None), ("optimized", 2), ("dynamic", None)]


@pytest.fixture(params=LAYER_BACKENDS, ids=[name for name, _ in LAYER_BACKENDS])
def each_backend(request):
    """Run the test under naive, optimized with 2 workers, and dynamic (default workers)."""
    with mocrograd.backend(*request.param):
        yield request.param[0]
