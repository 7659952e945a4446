"""The worker settings alternated fit by fit in one process: ``python alternate.py SPEC.json RESULT.json``.

run.py gives every training run a fresh process, which keeps each run's memory and
first-call costs its own; but on a shared machine whose speed drifts in streaks of
seconds to minutes, even back-to-back runs of one repeat can land on different
stretches, and the worker settings' ratios scatter (one run's 64 workers 17% slower
than the best, the next run's 3% faster). Here one process trains the same network
with each setting in turn: an untimed round first (caches, thread pool, freed blocks
waiting for reuse), then ROUNDS timed rounds, in the settings' order and reversed in
turn, so each setting runs early and late in a round alike. Every fit starts from the
same weights. The fits of one round are seconds apart, so their ratios see through
the drift; run.py takes them round by round, as it takes the fresh runs repeat by
repeat.

SPEC: ``network``, ``data`` (an .npz of train_x/train_y/val_x/val_y), ``epochs``,
``batch_size``, ``lr``, ``l2``, ``seed``, ``rounds`` and ``settings``: a list of
[name, backend, workers]. RESULT: ``times``, each setting's fit seconds per round.
"""
import json
import sys
import time


def main(spec_path, result_path):
    import mocrograd
    from mocrograd.train import fit

    from child import load_run

    spec, model, train, val, settings = load_run(spec_path)
    start_state = model.state_dict()
    order = [tuple(s) for s in spec["settings"]]
    times = {name: [] for name, _, _ in order}
    for round_ in range(spec["rounds"] + 1):   # round 0 warms up, untimed
        for name, backend, workers in (order if round_ % 2 else order[::-1]):
            mocrograd.set_backend(backend, workers)
            model.load_state_dict(start_state)
            start = time.perf_counter()
            fit(model, train, val, optimizer="sgd", **settings)
            seconds = time.perf_counter() - start
            if round_:
                times[name].append(seconds)
    with open(result_path, "w") as f:
        json.dump({"times": times, "rounds": spec["rounds"]}, f)
    return 0


if __name__ == "__main__":
    from child import spec_and_result
    sys.exit(main(*spec_and_result(__doc__)))
