"""
RER's error phase with candidate classes against the exact computation
(issue 14): each sample evaluated under its own class, its random wrong
label, the ``m`` classes with the nearest centroids and 4 random others
(``RERConfig.nearest_classes=m``), against every class
(``nearest_classes=None``), on the same trained autoencoders.

Prints, for each fixed ``m`` (``candidate_coverage=None``) and for ``m``
chosen by the run's audit (``--coverage``, the default 0.999): the share of samples whose minimum error over the
other classes equals the exact one, the share of equal predicted classes
and flags, the AUROC of both against the flipped labels, and the seconds
(training included; the exact run's seconds first).

Data: Gaussian classes in a 64-d subspace plus isotropic noise (the data of
``speed/knn.py``), the first ``dims`` columns, 20% of the labels flipped.

Run::

    .venv/bin/python speed/rer_candidates.py --n 10000 --classes 50 \\
        --dims 128 --m 5 10 15 20 30
"""

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

sys.path.append(_HERE)
from knn import make_data  # noqa: E402

from fiftyone_hardness.methods.rer import RERConfig, compute_rer  # noqa: E402
from fiftyone_hardness.methods.rer.statistics import (  # noqa: E402
    _min_other,
)


def _timed_rer(X, y, nearest_classes, coverage=None):
    """``(compute_rer result, seconds)`` with ``nearest_classes`` and
    ``candidate_coverage``."""
    start = time.perf_counter()
    result = compute_rer(
        X,
        y,
        config=RERConfig(
            nearest_classes=nearest_classes, candidate_coverage=coverage
        ),
    )
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument(
        "--data", default="gaussian", choices=["gaussian", "hard"]
    )
    parser.add_argument("--m", type=int, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument(
        "--coverage",
        type=float,
        default=0.999,
        help="also run with candidate_coverage (m chosen by the audit)",
    )
    args = parser.parse_args()
    X, y, flipped = make_data(
        args.n, args.classes, hard=args.data == "hard", seed=5
    )
    X = X[:, : args.dims].copy()
    exact, seconds = _timed_rer(X, y, None)
    exact_other = _min_other(exact.stats, y)
    print(
        "N=%d K=%d dims=%d %s data; load average %.1f; exact: %.1f s, "
        "AUROC %.4f"
        % (
            args.n,
            args.classes,
            args.dims,
            args.data,
            os.getloadavg()[0],
            seconds,
            roc_auc_score(flipped, exact.scores),
        )
    )
    runs = [("m=%d" % m, m, None) for m in args.m]
    runs.append(("coverage %g" % args.coverage, 10, args.coverage))
    for name, m, coverage in runs:
        cand, seconds = _timed_rer(X, y, m, coverage)
        other = _min_other(cand.stats, y)
        audit = cand.results["candidate_audit"] or {}
        print(
            "%-15s min over other classes equal %.4f  preds equal %.4f  "
            "flags equal %.4f  AUROC %.4f  %.1f s  (m used: %s)"
            % (
                name,
                np.mean(np.isclose(exact_other, other, rtol=1e-5, atol=1e-6)),
                np.mean(exact.preds == cand.preds),
                np.mean(exact.flags == cand.flags),
                roc_auc_score(flipped, cand.scores),
                seconds,
                audit.get("nearest_classes", "every class"),
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
