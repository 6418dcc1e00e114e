"""
A worker process for the fault-injection tests (tests/test_reliability.py):
repeats one writing action on a dataset until it is killed.

    python tests/fault_worker.py DATASET ACTION ITERATIONS

Prints "ready" once imports are done (so that kills land in the writes, not
in the imports), then one line per finished action. ``HardnessError`` (a
refused action, e.g. "undo them first") is expected and printed, not fatal.
"""
import sys


def main(name, action, iterations):
    import fiftyone as fo

    from fiftyone_hardness.dataset_io import review
    from fiftyone_hardness.methods.base import HardnessError

    dataset = fo.load_dataset(name)
    print("ready", flush=True)
    for i in range(iterations):
        try:
            if action == "apply_undo":
                if i % 2 == 0:
                    out = review.apply_corrections(dataset, append=True)
                else:
                    out = review.undo_corrections(dataset)
            elif action == "run":
                out = dataset.apply_hardness(
                    "test_fault_scores",
                    run_key="faulty",
                    overwrite=True,
                    progress=False,
                )
                out = out.num_samples
            else:
                raise ValueError(action)
            print("done", i, out, flush=True)
        except HardnessError as e:
            print("refused", i, e, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
