"""
Reading a predictions field's logits for confident learning: the chunked
reader (``LabeledData.matrix``, :func:`fiftyone_hardness.dataset_io.data.
read_matrix`) against ``values()`` + stacking (the path before issue 14,
still the fallback that names bad values), each in a fresh process, with
its time and the rise of its peak resident set.

Data: ``--n`` samples with a ``Classification`` label and a prediction
whose ``logits`` are ``--classes`` float32 values, in the database
``hardness_speed_predictions`` (deleted afterwards).

Run::

    .venv/bin/python speed/predictions_read.py [--n 100000] [--classes 100]

Measured (2026-11-28, 2 cores, 100k x 100): chunked 1.3 s, +83 MB for a
76 MB array; ``values()`` 4.6 s, +192 MB.
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("FIFTYONE_DATABASE_NAME", "hardness_speed_predictions")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np  # noqa: E402
from peak_memory import peak_mb, reset_peak  # noqa: E402 (speed/)

NAME = "speed_predictions"


def _make(n, classes):
    import fiftyone as fo

    if fo.dataset_exists(NAME):
        fo.delete_dataset(NAME)
    dataset = fo.Dataset(NAME, persistent=True)
    rng = np.random.default_rng(0)
    for start in range(0, n, 10000):
        size = min(10000, n - start)
        logits = rng.normal(size=(size, classes)).astype(np.float32)
        dataset.add_samples(
            [
                fo.Sample(
                    filepath="/predictions/%d.png" % (start + i),
                    gt=fo.Classification(label="c%d" % (i % classes)),
                    pred=fo.Classification(label="c0", logits=logits[i]),
                )
                for i in range(size)
            ],
            progress=False,
        )


def _measure(how):
    import fiftyone as fo

    from fiftyone_hardness.dataset_io.data import load_labeled_data

    data = load_labeled_data(fo.load_dataset(NAME), "gt")
    reset_peak()
    base = peak_mb()
    start = time.perf_counter()
    if how == "values":
        array = np.asarray(data.values("pred.logits"), dtype=np.float64)
    else:
        array = data.matrix("pred.logits")
    seconds = time.perf_counter() - start
    print(
        "%-8s %s  %.1f s  peak +%.0f MB (the array: %.0f MB)"
        % (how, array.shape, seconds, peak_mb() - base, array.nbytes / 2**20),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--measure", choices=["values", "chunked"])
    args = parser.parse_args()
    if args.measure:
        _measure(args.measure)
        return
    _make(args.n, args.classes)
    try:
        for how in ("values", "chunked"):
            subprocess.run(
                [sys.executable, __file__, "--measure", how], check=True
            )
    finally:
        import fiftyone as fo

        fo.delete_dataset(NAME)


if __name__ == "__main__":
    main()
