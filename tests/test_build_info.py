"""build_info(): what the installed core was built with, and that a native build uses
the full vector width of the CPU it runs on (the matmul is 2-4x slower when it does not)."""
import platform

import pytest

import mocrograd as mg


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (x86 Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_build_info_describes_the_build():
    info = mg.build_info()
    assert info["openmp"] == mg.openmp_enabled()
    assert len(info["compiler"].split()) == 2   # id and version, e.g. "gcc 12.2.0"
    assert info["vector_bytes"] in (16, 32, 64)
    rows, columns = (int(x) for x in info["register_tile"].split(" x "))
    assert columns * 4 == 2 * info["vector_bytes"]   # two vectors of floats per tile row
    if not info["native"]:
        assert "-march=native" not in info["c_args"]


def test_a_native_build_uses_the_full_vector_width_of_this_cpu():
    info, flags = mg.build_info(), cpu_flags()
    if not info["native"] or flags is None or "sse2" not in flags:
        pytest.skip("a portable build, or not an x86 CPU with /proc/cpuinfo")
    expected = 64 if "avx512f" in flags else 32 if "avx" in flags else 16
    assert info["vector_bytes"] == expected


def test_512_bit_vectors_are_asked_for_where_the_compiler_takes_it():
    # GCC tuned for Intel's AVX-512 CPUs prefers 256-bit vectors: the float register
    # tile then spilled, and the matmul ran at 15-58% of NumPy (docs/optimizations.md)
    info = mg.build_info()
    if platform.machine().lower() not in ("x86_64", "amd64") or info["compiler"].split()[0] not in ("gcc", "clang"):
        pytest.skip("the flag is GCC's and Clang's, on x86")
    assert "-mprefer-vector-width=512" in info["c_args"]


def test_gcc_fuses_every_multiply_add_the_kernels_ask_for():
    # GCC tuned for AMD Zen leaves a multiply-add unfused where it feeds a chain of sums:
    # a kernel's scalar tail then rounded unlike its vector body, and the transposed thin
    # kernel's results changed with the worker count (docs/optimizations.md, "AMD Zen")
    info = mg.build_info()
    if info["compiler"].split()[0] != "gcc":
        pytest.skip("the parameter is GCC's")
    assert "--param=avoid-fma-max-bits=0" in info["c_args"]
