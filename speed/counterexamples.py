"""
Time and peak memory of finding one sample's counter-examples (CINCER,
:func:`fiftyone_hardness.methods.counterexamples.rank_counterexamples`)
on N x 512 float32 features, K classes, default settings (the probe fit
on at most 50k rows, a Fisher subset of 100), each size in a fresh process
(the peak is the rise of its resident set over the features).

The baseline a user would write is the same formulas over every row's
last-layer inputs (what this module did before issue 14); ``--dense``
measures that: the probe's inputs and probabilities of all N rows, then
the kernel embeddings of the candidates from them.

Data: Gaussian classes (the class means 2 apart in 512 dims), 10% of the
labels flipped.

Run::

    .venv/bin/python speed/counterexamples.py [--sizes 20000 200000]
        [--classes 10]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from peak_memory import peak_mb, reset_peak  # speed/, this script's folder


def _data(n, classes, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, 512)) * (2.0 / np.sqrt(512))
    y = rng.integers(classes, size=n)
    X = np.empty((n, 512), dtype=np.float32)
    for s in range(0, n, 50000):
        X[s : s + 50000] = means[y[s : s + 50000]] + 0.1 * rng.normal(
            size=(len(y[s : s + 50000]), 512)
        )
    flip = rng.random(n) < 0.1
    y = np.where(flip, (y + 1) % classes, y)
    return X, y


def _measure(n, classes, dense):
    from fiftyone_hardness.methods import counterexamples as ce

    X, y = _data(n, classes)
    reset_peak()
    base = peak_mb()
    start = time.perf_counter()
    if dense:
        probe = ce.SoftmaxProbe(X, y, classes, max_train=50000)
        inputs, probs = probe.inputs(X), probe.predict_proba(X)
        target = int(np.argsort(-probs[0])[1])
        candidates = ce.counterexample_candidates(y, 0, target)
        subset = ce.fisher_subset(n, 100, 0)
        kernel = ce.FisherKernel(inputs[subset], probs[subset], y[subset])
        phi_i = kernel.embed(inputs[[0]], probs[[0]], y[[0]])[0]
        phi = kernel.embed(
            inputs[candidates], probs[candidates], y[candidates]
        )
        np.argsort(-ce.KERNEL_SIGN * (phi @ phi_i))[:5]
    else:
        ce.rank_counterexamples(X, y, classes, 0, max_train=50000)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            dict(
                n=n,
                how="dense" if dense else "ours",
                seconds=seconds,
                peak_mb=peak_mb() - base,
                features_mb=X.nbytes / 2**20,
            )
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[20000, 200000]
    )
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--child", nargs=2, type=int)
    args = parser.parse_args()
    if args.child:
        _measure(args.child[0], args.classes, bool(args.child[1]))
        return
    for n in args.sizes:
        rows = {}
        for dense in (1, 0):
            out = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--classes",
                    str(args.classes),
                    "--child",
                    str(n),
                    str(dense),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            row = json.loads(out.splitlines()[-1])
            rows[row["how"]] = row
        ours, dense = rows["ours"], rows["dense"]
        print(
            "N=%8d  ours %.1f s, +%.0f MB   every row's inputs %.1f s, "
            "+%.0f MB   (features %.0f MB; ours/dense: time %.2f, memory "
            "%.2f)"
            % (
                n,
                ours["seconds"],
                ours["peak_mb"],
                dense["seconds"],
                dense["peak_mb"],
                ours["features_mb"],
                ours["seconds"] / dense["seconds"],
                ours["peak_mb"] / max(dense["peak_mb"], 1e-9),
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
