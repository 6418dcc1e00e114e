"""
A worker process for the fault-injection tests (tests/test_reliability.py):
repeats one writing action on a dataset until it is killed.

    python tests/fault_worker.py DATASET ACTION ITERATIONS [RUN_KEY]

Actions: ``apply_undo`` (alternate apply_corrections and undo_corrections),
``run`` (write run RUN_KEY with overwrite=True), ``run_once`` (write run
RUN_KEY once with overwrite=False).

Prints "ready" once imports are done (so that kills land in the writes, not
in the imports), then one line per finished action. ``HardnessError`` (a
refused action, e.g. "undo them first") is expected and printed, not fatal.
"""

import os
import sys

import numpy as np

#: extra columns written by the test method, so that a run's write takes
#: long enough for kills to land inside it
NUM_COLUMNS = 30


def fault_scores(data, **kwargs):
    """A test method: random scores, and this process's pid in every
    sample (to detect a run mixed from two processes)."""
    from fiftyone_hardness.methods.base import MethodOutput

    rng = np.random.default_rng(os.getpid())
    n = data.num_samples
    score = rng.random(n)
    fields = {
        "score": score,
        "flag": score > 0.8,
        "pid": np.full(n, os.getpid(), dtype=np.int64),
    }
    for c in range(NUM_COLUMNS):
        fields["c%d" % c] = rng.random(n)
    return MethodOutput(fields=fields, results={"noise_rate": 0.2})


def register():
    from fiftyone_hardness.methods import registry

    registry.register_method("test_fault_scores", fault_scores, "test")


def main(name, action, iterations, run_key="faulty"):
    import fiftyone as fo

    from fiftyone_hardness.dataset_io import review
    from fiftyone_hardness.methods.base import HardnessError

    register()
    dataset = fo.load_dataset(name)
    print("ready", flush=True)
    for i in range(iterations):
        try:
            if action == "apply_undo":
                if i % 2 == 0:
                    out = review.apply_corrections(dataset, append=True)
                else:
                    out = review.undo_corrections(dataset)
            elif action in ("run", "run_once"):
                out = dataset.apply_hardness(
                    "test_fault_scores",
                    run_key=run_key,
                    overwrite=action == "run",
                    progress=False,
                ).num_flagged
            else:
                raise ValueError(action)
            print("done", i, out, flush=True)
        except HardnessError as e:
            print("refused", i, e, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
