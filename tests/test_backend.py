"""Choosing the kernel variant: set_backend, get_backend, the context manager,
the environment variables read at import, and the thread count."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mocrograd
from mocrograd import Matrix
from mocrograd._core import get_backend_state

VALID = "choose one of naive, optimized, dynamic"


def test_set_and_get_backend():
    mocrograd.set_backend("naive")
    assert mocrograd.get_backend() == ("naive", None)
    mocrograd.set_backend("optimized", workers=3)
    assert mocrograd.get_backend() == ("optimized", 3)
    mocrograd.set_backend("dynamic", 1)
    assert mocrograd.get_backend() == ("dynamic", 1)


def test_context_manager_restores_the_previous_backend():
    mocrograd.set_backend("optimized", 2)
    with mocrograd.backend("naive"):
        assert mocrograd.get_backend() == ("naive", None)
        with mocrograd.backend("dynamic", 7):
            assert mocrograd.get_backend() == ("dynamic", 7)
        assert mocrograd.get_backend() == ("naive", None)
    assert mocrograd.get_backend() == ("optimized", 2)


def test_context_manager_restores_after_an_exception():
    mocrograd.set_backend("dynamic")
    with pytest.raises(ZeroDivisionError):
        with mocrograd.backend("naive"):
            1 / 0
    assert mocrograd.get_backend() == ("dynamic", None)


@pytest.mark.parametrize("name", ["fast", "Naive", "", None, "numpy"])
def test_unknown_backend_names_list_the_choices(name):
    before = mocrograd.get_backend()
    with pytest.raises(ValueError, match=f"unknown backend {name!r}; {VALID}"):
        mocrograd.set_backend(name)
    with pytest.raises(ValueError, match=VALID):
        with mocrograd.backend(name):
            pass
    assert mocrograd.get_backend() == before


@pytest.mark.parametrize("workers,match", [
    (0, "workers must be >= 1"), (-2, "workers must be >= 1"),
    (1.5, "whole number"), ("2", "whole number"), (True, "whole number"), (2 ** 31, "<= 2147483647"),
])
def test_workers_must_be_a_whole_number_from_1(workers, match):
    before = mocrograd.get_backend()
    with pytest.raises(ValueError, match=match):
        mocrograd.set_backend("optimized", workers)
    assert mocrograd.get_backend() == before


def test_numpy_integers_are_whole_numbers():
    with mocrograd.backend("optimized", np.int64(3), grain=np.int32(7)):
        assert mocrograd.get_backend() == ("optimized", 3) and type(mocrograd.get_backend()[1]) is int
        assert mocrograd.get_grain() == 7


@pytest.mark.parametrize("grain,match", [
    (0, "grain must be >= 1"), (-5, "grain must be >= 1"), (2.5, "whole number"), ("1", "whole number"),
])
def test_grain_must_be_a_whole_number_from_1(grain, match):
    before = mocrograd.get_backend()
    with pytest.raises(ValueError, match=match):
        mocrograd.set_backend("optimized", 4, grain=grain)
    assert mocrograd.get_backend() == before and mocrograd.get_grain() is None


def test_the_context_manager_restores_the_grain_too():
    mocrograd.set_backend("optimized", 3, grain=1000)
    with mocrograd.backend("dynamic"):
        assert mocrograd.get_grain() is None
        assert get_backend_state() == ("dynamic", mocrograd.cpu_count(), mocrograd.DEFAULT_GRAIN)
    assert mocrograd.get_grain() == 1000
    assert get_backend_state() == ("optimized", 3, 1000.0)


def test_optimized_gives_every_chunk_at_least_the_grain():
    grain = mocrograd.DEFAULT_GRAIN
    mocrograd.set_backend("optimized", workers=256)
    assert mocrograd.chunks_for_work(64 * 64 * 32) == 1            # a layer of the Normal network
    assert mocrograd.chunks_for_work(0) == 1
    assert mocrograd.chunks_for_work(3.5 * grain) == 3
    assert mocrograd.chunks_for_work(4096 * 8192 * 32) == 256      # a layer of the Bigger network
    mocrograd.set_backend("optimized", workers=256, grain=1)
    assert mocrograd.chunks_for_work(64 * 64 * 32) == 256           # grain 1: exactly `workers`
    mocrograd.set_backend("optimized", workers=1, grain=1)
    assert mocrograd.chunks_for_work(4096 * 8192 * 32) == 1
    with pytest.raises(ValueError, match="work must be a number >= 0"):
        mocrograd.chunks_for_work(float("nan"))


def test_dynamic_uses_one_chunk_per_thread_at_most_and_one_for_small_work():
    mocrograd.set_backend("dynamic", workers=64)
    assert mocrograd.chunks_for_work(64 * 64 * 32) == 1
    assert 1 <= mocrograd.chunks_for_work(4096 * 8192 * 32) <= mocrograd.cpu_count()
    mocrograd.set_backend("dynamic", workers=1)
    assert mocrograd.chunks_for_work(4096 * 8192 * 32) == 1
    mocrograd.set_backend("naive")
    assert mocrograd.chunks_for_work(4096 * 8192 * 32) == 1


def test_the_selected_variant_is_the_one_that_runs():
    # A long float32 dot product rounds differently when summed straight through
    # (naive) and in 256-deep blocks (optimized): a fixed input shows which ran.
    rng = np.random.default_rng(0)
    a = Matrix(rng.standard_normal((1, 4096)).astype(np.float32))
    b = Matrix(rng.standard_normal((4096, 1)).astype(np.float32))
    results = {}
    for name in ("naive", "optimized"):
        with mocrograd.backend(name, 1):
            results[name] = (a @ b).numpy()[0, 0]
    assert results["naive"] != results["optimized"]
    with mocrograd.backend("naive"):
        assert (a @ b).numpy()[0, 0] == results["naive"]


def test_openmp_is_enabled_on_this_build():
    assert mocrograd.openmp_enabled() is True


def test_cpu_count_and_contention_flag():
    assert isinstance(mocrograd.cpu_count(), int) and mocrograd.cpu_count() >= 1
    assert isinstance(mocrograd.machine_contended(), bool)


# ------------------------------------------------ in a fresh interpreter

def run_python(tmp_path, code, **env):
    """Run ``python -c code`` in tmp_path (so the source tree is not importable) with env added."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MOCROGRAD_") and k not in ("OMP_NUM_THREADS", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


SHOW = "import mocrograd; print(mocrograd.get_backend(), mocrograd.cpu_count())"


@pytest.mark.parametrize("env,expected", [
    ({}, "('dynamic', None)"),
    ({"MOCROGRAD_BACKEND": "naive"}, "('naive', None)"),
    ({"MOCROGRAD_BACKEND": " Optimized ", "MOCROGRAD_WORKERS": "3"}, "('optimized', 3)"),
    ({"MOCROGRAD_WORKERS": "5"}, "('dynamic', 5)"),
    ({"MOCROGRAD_BACKEND": "", "MOCROGRAD_WORKERS": ""}, "('dynamic', None)"),
], ids=["default", "naive", "optimized_3", "workers_only", "empty"])
def test_environment_sets_the_starting_backend(tmp_path, env, expected):
    result = run_python(tmp_path, SHOW, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(") ")[0] + ")" == expected


@pytest.mark.parametrize("env,message", [
    ({"MOCROGRAD_BACKEND": "fastest"}, f"unknown backend 'fastest'; {VALID}"),
    ({"MOCROGRAD_WORKERS": "many"}, "MOCROGRAD_WORKERS must be a whole number >= 1, got 'many'"),
    ({"MOCROGRAD_WORKERS": "0"}, "workers must be >= 1"),
], ids=["bad_name", "bad_workers", "zero_workers"])
def test_bad_environment_fails_the_import_with_a_clear_message(tmp_path, env, message):
    result = run_python(tmp_path, SHOW, **env)
    assert result.returncode != 0
    assert "ValueError" in result.stderr and message in result.stderr


@pytest.mark.parametrize("threads", ["1", "3"])
def test_omp_num_threads_sets_the_core_count(tmp_path, threads):
    result = run_python(tmp_path, "import mocrograd; print(mocrograd.cpu_count(), mocrograd.machine_contended())",
                        OMP_NUM_THREADS=threads)
    assert result.returncode == 0, result.stderr
    count, contended = result.stdout.split()
    assert count == threads
    if threads == "1":
        assert contended == "False"   # one thread cannot wait for another


def test_without_omp_num_threads_all_usable_cores_count(tmp_path):
    result = run_python(tmp_path, SHOW)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("binding", ["OMP_PROC_BIND", "OMP_PLACES"])
def test_thread_binding_does_not_hide_cores(tmp_path, binding):
    """OMP_PROC_BIND=true or OMP_PLACES=cores make the OpenMP runtime bind the main thread
    to one place as it loads; the core count is still every core of the process (it was
    read from the bound thread's affinity: one core, and 2 workers ran on one thread)."""
    result = run_python(tmp_path, SHOW, **{binding: "true" if binding == "OMP_PROC_BIND" else "cores"})
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == len(os.sched_getaffinity(0))


def test_subprocess_uses_the_compiled_core_not_bare_sources(tmp_path):
    """Installed (or editable-installed) package: the kernels are the built extension.

    With meson-python's editable install the ``.py`` files are read from the source
    tree but the extension modules come from the build directory; with ``pip install .``
    both come from site-packages. Either way no ``.pyx`` is imported uncompiled.
    """
    result = run_python(tmp_path, "import mocrograd._core.matrix as m; print(m.__file__)")
    assert result.returncode == 0, result.stderr
    core = Path(result.stdout.strip())
    assert core.suffix in {".so", ".pyd"}
    assert core.exists()


BESIDE_HOGS = """
import subprocess, sys, time
import mocrograd
from mocrograd import Matrix
from mocrograd._core import other_load
hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(mocrograd.cpu_count())]
try:
    a, b = Matrix.rand(512, 512, seed=1), Matrix.rand(512, 512, seed=2)
{body}
    print(mocrograd.machine_contended(), other_load())
finally:
    for hog in hogs:
        hog.kill()
"""


def contention_seen(tmp_path, body):
    """(machine_contended(), other_load()) after ``body`` ran beside a busy process per core
    (``a @ b`` is a dynamic kernel large enough to consult the load probe)."""
    result = run_python(tmp_path, BESIDE_HOGS.format(body=body), OMP_NUM_THREADS="2")
    assert result.returncode == 0, result.stderr
    contended, load = result.stdout.split()
    return contended, float(load)


def test_dynamic_sees_busy_cores_from_its_first_kernel(tmp_path):
    """The load probe takes its first reading at import, so the first large kernel
    after other processes got busy already measures them: no kernel runs on threads
    that wait for a descheduled partner while the probe learns the load."""
    contended, load = contention_seen(tmp_path, "    time.sleep(0.5)\n    a @ b")
    assert contended == "True"
    assert load >= 0.5


def test_dynamic_sees_busy_cores_and_gives_way(tmp_path):
    """With a busy process per core, the load probe counts them and dynamic stops
    using threads that would wait for a descheduled partner at every barrier."""
    contended, load = contention_seen(tmp_path, """\
    deadline = time.time() + 20
    while time.time() < deadline and not mocrograd.machine_contended():
        a @ b
        time.sleep(0.01)""")
    assert contended == "True"
    assert load >= 0.5
