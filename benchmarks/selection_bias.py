"""How much choosing the "best" setting in the same runs it is compared on flatters it.

The benchmark compares dynamic with the best fixed worker count. On 2 cores, 10, 64,
256 and 2 workers all run on the same two threads: equally fast, but each run's time
is noisy. Take the one with the lowest median as "best" and compare dynamic with it in
those same runs, and dynamic looks slower than it is: the best was chosen partly for
its luck. Choosing it in other runs (run.py takes the other measure's medians: fresh
processes for the one-process rounds and the other way round) removes that.

This simulates it with run.py's own rule (``worker_ratios``): SETTINGS of the fixed
settings that run 2 threads, and dynamic, all equally fast, REPEATS runs each with
log-normal noise of SIGMA; the median over TRIALS of the paired ratio dynamic / best
fixed, best chosen in the same runs or in a second, independent set.

    python benchmarks/selection_bias.py --sigma 0.05 0.1
"""
import argparse
import math
import random
import statistics

from run import worker_ratios

TWO_THREADS = ("optimized-10", "optimized-64", "optimized-256", "optimized-cores")   # on 2 cores


def simulate(sigma, settings=4, repeats=5, trials=2000, seed=0):
    """(median ratio with the best chosen in the same runs, median with it chosen in others)."""
    rng = random.Random(seed)
    draw = lambda: {r: math.exp(rng.gauss(0.0, sigma)) for r in range(1, repeats + 1)}
    names = TWO_THREADS[:settings] + ("dynamic",)
    same, other = [], []
    for _ in range(trials):
        runs, elsewhere = {name: draw() for name in names}, {name: draw() for name in names}
        same.append(worker_ratios(runs)["dynamic_vs_best_fixed"]["median"])
        other.append(worker_ratios(runs, chosen_by=elsewhere)["dynamic_vs_best_fixed"]["median"])
    return statistics.median(same), statistics.median(other)


def main(argv=None):
    from mocrograd.train import positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.03, 0.05, 0.1],
                        help="noise per run, as the standard deviation of log(time) (default 0.03 0.05 0.1)")
    parser.add_argument("--settings", type=int, choices=range(1, len(TWO_THREADS) + 1), default=len(TWO_THREADS),
                        help="fixed settings as fast as dynamic (default 4)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each (default 5)")
    parser.add_argument("--trials", type=positive_int, default=2000, help="simulated benchmarks (default 2000)")
    args = parser.parse_args(argv)
    print(f"dynamic / best of {args.settings} equally fast settings, {args.repeats} runs each, "
          f"median of {args.trials} trials")
    for sigma in args.sigma:
        same, other = simulate(sigma, args.settings, args.repeats, args.trials)
        print(f"noise {sigma:.0%} per run: best chosen in the same runs {same:.3f}, in other runs {other:.3f}")


if __name__ == "__main__":
    main()
