"""
Speed, memory and quality of the leave-one-out k-NN vote
(:func:`fiftyone_hardness.methods.probes.knn_vote_probs`) with the exact
(chunked brute force) and the approximate (inverted file, re-ranked)
neighbour search of :mod:`fiftyone_hardness.methods.neighbors`.

Data: Gaussian classes in a 64-d subspace of 512 dims plus isotropic noise
(the data of ``speed/scale.py``), ``--classes`` classes, 20% of the labels
flipped uniformly; ``--data hard`` draws the class means 0.35 apart instead
of 0.6 (the vote's AUROC drops from 0.999 to 0.75: neighbours are mostly
noise there, the hardest case for an index).

Each (method, size) runs in a fresh process, so that its peak memory (the
rise of the resident set over the data) is its own. For each size it
prints the wall and CPU seconds of both methods, their ratio, the recall
of the approximate neighbours (the share of the exact 10 nearest found)
and the vote's AUROC against the flipped labels with both; then the growth
exponent of each method (the slope of log time against log N between
consecutive sizes). Above ``--exact-max`` rows the exact search runs on
``--queries`` rows only: its time is extrapolated (x N / queries) and the
recall measured on those rows.

Timings on a shared machine are noisy: the CPU seconds (both threads
summed) are the steadier figure, and the load average is printed.

Run::

    .venv/bin/python speed/knn.py [--sizes 10000 100000 1000000]
        [--classes 100] [--data gaussian|hard] [--exact-max 100000]
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

import numpy as np


def make_data(n, num_classes, hard=False, dim=512, seed=0):
    """``(X, noisy labels, flipped mask)``."""
    rng = np.random.default_rng(seed)
    latent = 64
    means = rng.normal(size=(num_classes, latent)) * (0.35 if hard else 0.6)
    proj = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    clean = rng.integers(num_classes, size=n)
    X = np.empty((n, dim), np.float32)
    for s in range(0, n, 50000):
        c = clean[s : s + 50000]
        z = means[c] + rng.normal(size=(len(c), latent))
        X[s : s + 50000] = z @ proj + 0.5 * rng.normal(size=(len(c), dim))
    flip = rng.random(n) < 0.2
    shift = rng.integers(1, num_classes, size=n)
    labels = np.where(flip, (clean + shift) % num_classes, clean)
    return X, labels, flip


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _case(spec, queue):
    """Runs one (method, size) in this child process."""
    try:
        import torch
        from sklearn.metrics import roc_auc_score

        from fiftyone_hardness.methods import probes

        torch.zeros(1)
        X, labels, flip = make_data(
            spec["n"], spec["classes"], spec["data"] == "hard"
        )
        base = _rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        out = dict(spec)
        if spec["queries"]:  # exact search of a subset of rows only
            rows = np.arange(spec["queries"])
            found = _exact_subset(X, rows, 10)
            indices = found
            out["auroc"] = None
        else:
            result = probes.knn_vote_probs(
                X,
                labels,
                spec["classes"],
                k=10,
                device="cpu",
                method=spec["method"],
            )
            score = 1 - result.pred_probs[np.arange(len(labels)), labels]
            out["auroc"] = float(roc_auc_score(flip, score))
            out["info"] = result.info["neighbors"]
            indices = result.neighbors.indices
        out["seconds"] = time.perf_counter() - wall
        out["cpu_seconds"] = time.process_time() - cpu
        out["peak_mb"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        )
        out["data_mb"] = X.nbytes / 2**20
        np.save(spec["save"], indices)
        queue.put(out)
    except BaseException as e:  # report, don't hang the parent
        queue.put(dict(spec, error=repr(e)))


def _exact_subset(X, rows, k):
    import torch

    Xt = torch.as_tensor(X)
    Xt = Xt / Xt.norm(dim=1, keepdim=True)
    out = []
    for s in range(0, len(rows), 256):
        block = torch.as_tensor(rows[s : s + 256])
        sims = Xt[block] @ Xt.T
        sims[torch.arange(len(block)), block] = -float("inf")
        out.append(torch.topk(sims, k, dim=1).indices.numpy())
    return np.concatenate(out)


def run_case(**spec):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(spec, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if "error" in out:
        raise RuntimeError("%s failed: %s" % (spec, out["error"]))
    print(json.dumps(out, default=str), file=sys.stderr, flush=True)
    return out


def _recall(approx, exact):
    rows = len(exact)
    return float(
        np.mean(
            [
                len(np.intersect1d(a, b)) / len(b)
                for a, b in zip(approx[:rows], exact)
            ]
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=[10000, 100000]
    )
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument(
        "--data", default="gaussian", choices=["gaussian", "hard"]
    )
    parser.add_argument("--exact-max", type=int, default=100000)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    print(
        "k-NN vote, k=10, %s data, %d classes, 512 dims; load average %s; "
        "%d CPUs" % (args.data, args.classes, os.getloadavg(), os.cpu_count())
    )
    tmp = tempfile.mkdtemp()
    rows = []
    for n in args.sizes:
        spec = dict(n=n, classes=args.classes, data=args.data)
        approx = run_case(
            method="ivf", queries=0, save=os.path.join(tmp, "a.npy"), **spec
        )
        subset = n > args.exact_max
        exact = run_case(
            method="exact",
            queries=args.queries if subset else 0,
            save=os.path.join(tmp, "e.npy"),
            **spec,
        )
        if subset:  # extrapolated to all rows
            for key in ("seconds", "cpu_seconds"):
                exact[key] *= n / args.queries
        recall = _recall(
            np.load(os.path.join(tmp, "a.npy")),
            np.load(os.path.join(tmp, "e.npy")),
        )
        rows.append((n, exact, approx))
        print(
            "N=%8d exact %8.1f s (CPU %8.1f s)%s  approximate %6.1f s (CPU "
            "%6.1f s, +%5.0f MB over the %4.0f MB of data)  ratio %5.1fx  "
            "recall %.3f  AUROC exact %s approximate %.4f"
            % (
                n,
                exact["seconds"],
                exact["cpu_seconds"],
                " extrapolated" if subset else "",
                approx["seconds"],
                approx["cpu_seconds"],
                approx["peak_mb"],
                approx["data_mb"],
                exact["seconds"] / approx["seconds"],
                recall,
                "%.4f" % exact["auroc"] if exact["auroc"] is not None else "-",
                approx["auroc"],
            ),
            flush=True,
        )
    for (n0, e0, a0), (n1, e1, a1) in zip(rows, rows[1:]):
        growth = np.log(n1 / n0)
        print(
            "growth %d -> %d: exact N^%.2f, approximate N^%.2f (CPU "
            "seconds)"
            % (
                n0,
                n1,
                np.log(e1["cpu_seconds"] / e0["cpu_seconds"]) / growth,
                np.log(a1["cpu_seconds"] / a0["cpu_seconds"]) / growth,
            )
        )


if __name__ == "__main__":
    main()
