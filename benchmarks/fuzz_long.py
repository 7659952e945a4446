"""Run the fuzz tests (tests/test_fuzz.py) much longer than CI does.

    python benchmarks/fuzz_long.py                       # 20,000 examples per test, one round
    python benchmarks/fuzz_long.py --minutes 60          # new random rounds until an hour has passed
    python benchmarks/fuzz_long.py --examples 5000 --seed 7

Each round runs pytest on tests/test_fuzz.py in a fresh interpreter with
MOCROGRAD_FUZZ_EXAMPLES examples per test and a new hypothesis seed (CI runs a
fixed, derandomized set), so rounds explore different inputs. The first failing
round stops the run; its output names the seed, and hypothesis prints the smallest
failing example. Rerun that round with ``--seed SEED --rounds 1``.

It tests the *installed* package, like the test suite: install it first
(``pip install --no-build-isolation .``). Under AddressSanitizer, start it with the
LD_PRELOAD and ASAN_OPTIONS of docs/reliability.md.
"""
import argparse
import os
import random
import subprocess
import sys
import time

from mocrograd.train import HelpFormatter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def run_round(examples, seed, extra):
    env = dict(os.environ, MOCROGRAD_FUZZ_EXAMPLES=str(examples), MOCROGRAD_FUZZ_SEED=str(seed))
    # cwd=tests: `python -c` puts the working directory first on sys.path, and the repository
    # root would shadow the installed, compiled package with the bare source tree.
    command = [sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
               os.path.join(TESTS, "test_fuzz.py"), f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-q",
               f"--hypothesis-seed={seed}", *extra]
    return subprocess.call(command, cwd=TESTS, env=env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--examples", type=int, default=20000, help="examples per test and round")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="keep starting new rounds until this much time has passed (0: --rounds rounds)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds to run when --minutes is 0")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round (default: random)")
    parser.add_argument("-k", dest="select", default=None, help="only the tests matching this pytest -k expression")
    args = parser.parse_args(argv)
    extra = ["-k", args.select] if args.select else []
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 32)
    start = time.monotonic()
    done = 0
    while True:
        print(f"fuzz round {done + 1}: {args.examples} examples per test, seed {seed}", flush=True)
        status = run_round(args.examples, seed, extra)
        if status != 0:
            print(f"FAILED in round {done + 1} (seed {seed}); rerun with: python benchmarks/fuzz_long.py "
                  f"--examples {args.examples} --seed {seed} --rounds 1", flush=True)
            return status
        done += 1
        elapsed = time.monotonic() - start
        if (args.minutes and elapsed >= args.minutes * 60) or (not args.minutes and done >= args.rounds):
            break
        seed = (seed + 1) % 2 ** 32
    print(f"{done} round(s) passed in {elapsed / 60:.1f} minutes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
