"""
How RER's training budget was chosen: quality and time of candidate caps
at several class sizes (issue 14, "A million samples on one machine").

Without a cap, ``RERConfig.epochs`` passes over the mean class make the step
count grow with the class size, and long training lets each class's
autoencoder learn its mislabeled samples: the AUROC falls as classes grow.
This script measures, for each candidate cap, at each class size:

- AUROC of the RER against the flipped labels, F1 of the flags, the
  noise-rate estimate (against the true rate), the optimizer steps and the
  seconds of :func:`~fiftyone_hardness.methods.rer.compute_rer`.

Candidates (``--candidates``; each a comma-joined list of options):

- ``none``: no cap (the defaults before issue 14);
- ``fit=<n>``: ``fit_samples_per_class=n`` (fit each autoencoder to at most
  n samples of its class; the steps and the kNN graph follow);
- ``epoch=<n>``: ``samples_per_epoch=n`` (fit to every sample, but an epoch
  is at most n samples per class, so the steps stop growing).

Both caps are 1000 (a first run with 2000 as well, at 10k per class x 4
classes, gave both 2000s a lower AUROC than the 1000s), so classes of up to
about 1000 samples, such as the digits-sized classes the thresholds were
fitted on by ``speed/rer_calibration.py``, train as before.

Settings (none of them is checked by the tests): Gaussian classes in a 64-d
subspace of ``--dims`` (128) dimensions plus isotropic noise (the family of
``speed/scale.py``, class means 0.6 apart per latent dimension; 128 dims
instead of 512 to fit the run on one core), balanced classes, 20% of the
labels flipped uniformly to another class (``inject_label_noise``,
``"uniform"``). The class means and subspace are drawn from seed
``[100, K, dims]`` (the sizes of one K differ in size alone), the samples,
flips and the RER seed from ``100 + K + per_class // 100``:

- 1,000 and 10,000 per class, K = 10;
- 1,000 and 50,000 per class, K = 4 (fewer classes to fit the CPU time;
  RER's AUROC on these Gaussian classes is much lower with few classes,
  ~0.75 at K = 4 against ~0.9 at K = 10, whatever the size).

Rule that picks the default (stated before the run): a candidate is
eligible when at each larger size its AUROC is at least its AUROC at 1k
per class (same K) - 0.005; among the eligible, those within 0.002 of the
best mean AUROC over the larger settings tie, and the fastest of them
(total seconds over those settings) wins.

One thread per process (``OMP_NUM_THREADS=1``, ``num_threads=1``). Run::

    OMP_NUM_THREADS=1 .venv/bin/python speed/rer_budget.py
        [--candidates none fit=1000 epoch=1000] [--dims 128]
        [--sizes 1000x10 10000x10 1000x4 50000x4] [--save rows.json]

or split over two processes and merged::

    OMP_NUM_THREADS=1 .venv/bin/python speed/rer_budget.py \\
        --sizes 1000x10 10000x10 --save k10.json &
    OMP_NUM_THREADS=1 .venv/bin/python speed/rer_budget.py \\
        --sizes 1000x4 50000x4 --save k4.json
    .venv/bin/python speed/rer_budget.py --load k10.json k4.json
"""

import argparse
import json
import os
import time

import numpy as np

DEFAULT_CANDIDATES = ["none", "fit=1000", "epoch=1000"]
DEFAULT_SIZES = ["1000x10", "10000x10", "1000x4", "50000x4"]


def make_setting(per_class, num_classes, dims, seed, separation=0.6):
    """``(X, noisy labels, flipped mask)``: Gaussian classes in a 64-d
    subspace plus isotropic noise, 20% uniform flips. The classes' means
    and subspace depend on K and the dims only (so that the sizes of one K
    differ in size alone: with few classes, how far apart the means fall
    changes the AUROC more than anything measured here); the samples and
    flips on ``seed``."""
    from fiftyone_hardness.methods.label_noise import inject_label_noise

    geometry = np.random.default_rng([100, num_classes, dims])
    latent = min(64, dims)
    means = geometry.normal(size=(num_classes, latent)) * separation
    proj = geometry.normal(size=(latent, dims)) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    clean = np.repeat(np.arange(num_classes), per_class)
    X = np.empty((len(clean), dims), np.float32)
    for s in range(0, len(clean), 20000):
        c = clean[s : s + 20000]
        z = means[c] + rng.normal(size=(len(c), latent))
        X[s : s + 20000] = z @ proj + 0.5 * rng.normal(size=(len(c), dims))
    labels, flipped = inject_label_noise(
        clean, num_classes, 0.2, kind="uniform", seed=seed
    )
    return X, labels, flipped


def candidate_options(text):
    """The RERConfig options of a candidate such as ``fit=1000,epoch=2000``
    (``none``: no cap)."""
    options = {"fit_samples_per_class": None, "samples_per_epoch": None}
    if text == "none":
        return options
    names = {"fit": "fit_samples_per_class", "epoch": "samples_per_epoch"}
    for part in text.split(","):
        name, value = part.split("=")
        if name not in names:
            raise SystemExit("unknown candidate %r: fit=<n>, epoch=<n>" % text)
        options[names[name]] = int(value)
    return options


def measure(X, labels, flipped, options, seed):
    from sklearn.metrics import f1_score, roc_auc_score

    from fiftyone_hardness.methods.rer import RERConfig, compute_rer

    config = RERConfig.from_kwargs(
        method="rer", seed=seed, num_threads=1, **options
    )
    start = time.perf_counter()
    result = compute_rer(X, labels, config=config)
    seconds = time.perf_counter() - start
    return dict(
        auroc=roc_auc_score(flipped, result.scores),
        f1=f1_score(flipped, result.flags),
        noise=result.results["noise_rate"],
        truth=float(flipped.mean()),
        steps=result.results["model_config"]["steps"],
        seconds=seconds,
    )


def choose(rows, candidates, sizes):
    """Applies the rule of the module docstring; returns the chosen
    candidate and prints why."""
    # each size is compared with the smallest size of the same K
    reference = {}
    for s, k in sizes:
        reference[k] = min(s, reference.get(k, s))
    large = [(s, k) for s, k in sizes if s > reference[k]]
    eligible, mean_auroc, seconds = [], {}, {}
    for cand in candidates:
        drops = [
            rows[cand, s, k]["auroc"] - rows[cand, reference[k], k]["auroc"]
            for s, k in large
        ]
        mean_auroc[cand] = np.mean(
            [rows[cand, s, k]["auroc"] for s, k in large]
        )
        seconds[cand] = sum(rows[cand, s, k]["seconds"] for s, k in large)
        ok = min(drops) >= -0.005
        print(
            "%-18s mean AUROC (large) %.4f  worst change vs 1k %+.4f  "
            "%s  %.0f s"
            % (
                cand,
                mean_auroc[cand],
                min(drops),
                "eligible" if ok else "not eligible",
                seconds[cand],
            )
        )
        if ok:
            eligible.append(cand)
    if not eligible:
        print("no candidate is eligible")
        return None
    best = max(mean_auroc[c] for c in eligible)
    tied = [c for c in eligible if mean_auroc[c] >= best - 0.002]
    chosen = min(tied, key=lambda c: seconds[c])
    print(
        "tied within 0.002 of %.4f: %s; fastest: %s"
        % (best, ", ".join(tied), chosen)
    )
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES)
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=DEFAULT_SIZES,
        help="settings as <samples per class>x<classes>",
    )
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument(
        "--separation",
        type=float,
        default=0.6,
        help="the class means' scale per latent dimension",
    )
    parser.add_argument(
        "--save", help="also write the measurements to this JSON file"
    )
    parser.add_argument(
        "--load",
        nargs="+",
        help="measure nothing: apply the rule to these --save files "
        "(of runs split over several processes)",
    )
    args = parser.parse_args(argv)
    if args.load:
        rows = {}
        for path in args.load:
            with open(path) as f:
                for row in json.load(f):
                    rows[row["candidate"], row["per_class"], row["k"]] = row
        sizes = sorted({(s, k) for _, s, k in rows})
        candidates = list(dict.fromkeys(c for c, _, _ in rows))
        choose(rows, candidates, sizes)
        return

    import torch

    torch.set_num_threads(1)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    rows = {}
    start = time.perf_counter()
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    for per_class, k in sizes:
        # a seed of the setting alone, whichever process runs it
        seed = 100 + k + per_class // 100
        X, labels, flipped = make_setting(
            per_class, k, args.dims, seed, args.separation
        )
        for cand in args.candidates:
            row = measure(X, labels, flipped, candidate_options(cand), seed)
            rows[cand, per_class, k] = row
            row.update(candidate=cand, per_class=per_class, k=k)
            if args.save:
                with open(args.save, "w") as f:
                    json.dump(list(rows.values()), f, indent=1)
            print(
                "%6d per class x %d  %-18s AUROC %.4f  F1 %.3f  noise %.3f "
                "(truth %.2f)  steps %5d  %7.1f s  load %.1f"
                % (
                    per_class,
                    k,
                    cand,
                    row["auroc"],
                    row["f1"],
                    row["noise"],
                    row["truth"],
                    row["steps"],
                    row["seconds"],
                    os.getloadavg()[0],
                ),
                flush=True,
            )
    print(
        "total %.0f s; load average at end: %.2f %.2f %.2f"
        % ((time.perf_counter() - start,) + os.getloadavg())
    )
    choose(rows, args.candidates, sizes)


if __name__ == "__main__":
    main()
