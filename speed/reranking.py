"""
Speed and gain of re-ranking the review queue
(:mod:`fiftyone_hardness.methods.reranking`):

1. **Re-score time** on synthetic 512-d Gaussian classes (10k and 100k
   samples, 100 classes, 20% symmetric noise): the neighbour graph is built
   once (timed), then a reviewer's batch of 10 verdicts is recorded and the
   remaining queue (the top 23% by the k-NN disagreement) re-scored, with
   the incremental update (only the votes of the changed samples and of
   their reverse neighbours) and with the whole vote recomputed from
   scratch over the same graph, best of ``--repeat``; the ratio compares
   the two.
2. **Gain** on the digits demo (1797 images, 20% noise, seed 0: symmetric,
   the demo's default, and pair flips ``c -> c+1``; the dataset keeps the
   true labels in ``ground_truth_clean``): a simulated reviewer who knows
   the truth reviews a run's flagged samples in batches of 10, always the
   first of the queue, with re-ranking and with the run's fixed order;
   label errors found after 100, 200, 300 and 400 reviews, for a cleanlab
   run and a RER run on the pixels.

Run::

    .venv/bin/python speed/reranking.py                  # everything
    .venv/bin/python speed/reranking.py --sizes 10000    # smaller
    .venv/bin/python speed/reranking.py --skip-demo      # speed only

Timings on a shared machine are noisy; the ratios compare runs made in the
same process, one after the other.
"""

import argparse
import os
import sys
import time
import uuid

# speed/cleanlab.py is named like the cleanlab package: drop this folder
# from the import path, or "import cleanlab" would import that script
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

os.environ.setdefault(
    "FIFTYONE_DATABASE_NAME", "hardness_bench_%s" % uuid.uuid4().hex[:6]
)
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np  # noqa: E402

from fiftyone_hardness.methods import reranking  # noqa: E402
from fiftyone_hardness.methods.label_noise import (  # noqa: E402
    inject_label_noise,
)

BATCH = 10
BUDGETS = (100, 200, 300, 400)


def gaussian_classes(n, dim=512, num_classes=100, sep=3.0, seed=0):
    """``n`` samples of ``num_classes`` isotropic Gaussian classes in
    ``dim`` dimensions (class means at distance about ``sep`` standard
    deviations)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim)) * (sep / np.sqrt(2 * dim))
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    X = means[labels] + rng.normal(size=(n, dim)) / np.sqrt(dim)
    return X.astype(np.float32), labels


def _best(function, repeat):
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best


def measure_rescore(n, repeat=5, seed=0):
    """Times the graph build, and one batch of verdicts re-scored
    incrementally and from scratch, on ``n`` synthetic samples."""
    X, clean = gaussian_classes(n, seed=seed)
    noisy, _ = inject_label_noise(clean, 100, 0.2, seed=seed)
    start = time.perf_counter()
    neighbours = reranking.knn_graph(X)
    graph_seconds = time.perf_counter() - start
    base = reranking.knn_disagreement(neighbours, noisy)
    queue = np.argsort(-base, kind="stable")[: int(0.23 * n)]

    def one_batch(from_scratch, votes_only=False):
        reranker = reranking.Reranker(neighbours, noisy, base, queue)
        rows = reranker.order()[:BATCH]

        def run():
            reranker.record(rows, clean[rows])
            if from_scratch:
                reranker._own, reranker._total = reranking.neighbour_votes(
                    reranker.neighbours, reranker.labels, reranker.weights
                )
            if not votes_only:
                reranker.rescore()

        return run

    def best(from_scratch, votes_only=False):
        return min(
            _best(one_batch(from_scratch, votes_only), 1)
            for _ in range(repeat)
        )

    out = {"n": n, "graph": graph_seconds}
    out["votes_incremental"] = best(False, votes_only=True)
    out["votes_scratch"] = best(True, votes_only=True)
    out["incremental"] = best(False)
    out["scratch"] = best(True)
    out["ratio"] = out["scratch"] / out["incremental"]
    out["votes_ratio"] = out["votes_scratch"] / out["votes_incremental"]
    return out


def simulate_on_demo(
    run_method, noise_kind="symmetric", budgets=BUDGETS, **kwargs
):
    """Runs ``run_method`` on the digits demo (20% noise of ``noise_kind``,
    seed 0) and replays a reviewer with and without re-ranking. Returns
    ``{budget: (fixed, reranked)}`` and the number of flagged samples and
    of label errors among them."""
    import fiftyone as fo

    from fiftyone_hardness import demo
    from fiftyone_hardness.dataset_io import review_queue

    name = "hardness-rerank-demo-%s" % uuid.uuid4().hex[:6]
    dataset = demo.load_digits_dataset(
        name=name, noise_rate=0.2, noise_kind=noise_kind, seed=0
    )
    try:
        results = dataset.apply_hardness(
            run_method, run_key="run", progress=False, **kwargs
        )
        score = results.score()
        queue = review_queue.ReviewQueue.build(
            dataset, results, score, background=False
        )
        truth_of = dict(
            zip(*dataset.values(["id", "ground_truth_clean.label"]))
        )
        truth = np.array(
            [queue._class_index(truth_of[str(i)]) for i in queue.ids]
        )
        neighbours = queue.reranker.neighbours
        out = {}
        for budget in budgets:
            out[budget] = tuple(
                reranking.simulate_review(
                    neighbours,
                    queue.labels,
                    truth,
                    queue.scores,
                    queue.queue,
                    budget=budget,
                    batch=BATCH,
                    rerank=rerank,
                )["found"]
                for rerank in (False, True)
            )
        flagged = len(queue.queue)
        errors = int(np.sum(queue.labels[queue.queue] != truth[queue.queue]))
        return out, flagged, errors
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10000, 100000]
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument(
        "--noise-kinds", nargs="+", default=["symmetric", "pair"]
    )
    args = parser.parse_args()

    if not args.skip_speed:
        print(
            "| samples | graph build (once) | vote update: incremental / "
            "from scratch | re-score with queue order: incremental / from "
            "scratch |"
        )
        print("|---|---|---|---|")
        for n in args.sizes:
            r = measure_rescore(n, repeat=args.repeat)
            print(
                "| %d | %.1f s | %.2f ms / %.2f ms (%.0fx) | "
                "%.2f ms / %.2f ms (%.1fx) |"
                % (
                    r["n"],
                    r["graph"],
                    1000 * r["votes_incremental"],
                    1000 * r["votes_scratch"],
                    r["votes_ratio"],
                    1000 * r["incremental"],
                    1000 * r["scratch"],
                    r["ratio"],
                ),
                flush=True,
            )

    if not args.skip_demo:
        runs = [
            ("cleanlab", "cleanlab", {"embeddings_field": "pixels"}),
            ("rer", "rer", {"embeddings_field": "pixels"}),
        ]
        print()
        print(
            "| noise | run | flagged (label errors among them) | reviews "
            "| errors found, fixed order | errors found, re-ranked |"
        )
        print("|---|---|---|---|---|---|")
        for kind in args.noise_kinds:
            for label, method, kwargs in runs:
                found, flagged, errors = simulate_on_demo(
                    method, noise_kind=kind, **kwargs
                )
                for budget, (fixed, reranked) in found.items():
                    print(
                        "| 20%% %s | %s | %d (%d) | %d | %d | %d |"
                        % (
                            kind,
                            label,
                            flagged,
                            errors,
                            budget,
                            fixed,
                            reranked,
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
