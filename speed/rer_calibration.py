"""
How RER's defaults were chosen: the calibration settings, measured.

Runs :func:`fiftyone_hardness.methods.rer.compute_rer` on 38 settings with
known injected label noise, none of which the tests check (those are digits
pixels with 20% symmetric noise at seeds 0 and 1, clean digits pixels, and
the backbone embeddings with 20% symmetric noise at seed 0):

- scikit-learn digits pixels (1797 x 64), noise seeds 10 and 11: symmetric
  5/10/30/40%, pair 10/20/30%, asymmetric 20%, adjacent 20% (18 settings)
- the offline efficientnet_lite0 embeddings of the digit images (64 px,
  1797 x 1280), seed 10: symmetric 0/10/30%, pair 20% (4)
- wine, breast cancer, iris and scikit-image's LFW face / non-face subset
  (raw features), seed 10: symmetric 0/10/20/30% (16)

For each value of ``--pca`` it prints the mean AUROC and flag F1 over the
noisy settings and the mean absolute error of the noise-rate estimate over
all of them, per feature set too. With ``--refit`` it also fits the
noise-rate line (least squares of the true rate on the reference estimate)
and grid-searches the threshold constants for the best mean F1, to compare
with :data:`fiftyone_hardness.methods.rer.CALIBRATIONS` ``["fitted"]``.

With ``--graph-neighbors exact ivf`` it runs the settings once per way of
finding the neighbours of the fuzzy kNN graph and prints the differences
(the classes here are small, so the approximate search is forced).

With ``--sizes`` it runs the class-size settings instead: synthetic data at
several class sizes (rows per class, 10 classes, 512 dims, 20% of the
labels flipped uniformly, noise seed 10), two families, neither checked
by the tests:

- ``gaussian``: Gaussian classes in a 64-d subspace plus isotropic noise
  (the data of ``speed/scale.py``);
- ``manifold``: noisy samples around random nonlinear low-rank manifolds
  (the data of ``speed/rer.py``);

for each ``--budget`` (``fit=<n>`` / ``fit=none``: ``fit_samples_per_class``;
``epochs=<n>``), printing AUROC, F1, the noise-rate error and the seconds
per setting. (The default ``fit_samples_per_class`` was chosen by
``speed/rer_budget.py``.)

Run::

    .venv/bin/python speed/rer_calibration.py [--pca auto none 0.9]
        [--refit] [--graph-neighbors exact ivf]
    .venv/bin/python speed/rer_calibration.py --sizes 1000 10000 50000
        [--families gaussian manifold] [--budget fit=none fit=1000]
"""

import argparse
import itertools
import os
import time

import numpy as np


def feature_sets():
    """``name -> (X, clean labels)`` of the calibration data."""
    import skimage
    from sklearn import datasets

    from fiftyone_hardness.demo import cache_dir, write_digit_images

    filepaths, pixels, digits = write_digit_images()
    cached = os.path.join(cache_dir(), "digits-64-efficientnet_lite0.npy")
    if not os.path.exists(cached):
        from fiftyone_hardness.methods.embeddings import (
            embed_files,
            load_embedder,
        )

        embedder = load_embedder("efficientnet_lite0", image_size=64)
        np.save(
            cached,
            np.concatenate(
                [batch for _, batch, _ in embed_files(filepaths, embedder)]
            ),
        )
    sets = {
        "pixels": (pixels, digits),
        "embeddings": (np.load(cached), digits),
    }
    for name in ("wine", "breast_cancer", "iris"):
        data = getattr(datasets, "load_" + name)()
        sets[name] = (data.data.astype(np.float32), data.target)
    faces = np.load(
        os.path.join(
            os.path.dirname(skimage.__file__), "data", "lfw_subset.npy"
        )
    )
    sets["lfw"] = (
        faces.reshape(len(faces), -1).astype(np.float32),
        np.repeat([0, 1], len(faces) // 2),
    )
    return sets


def settings():
    """``(feature set, noise kind, rate, seed)`` of every setting."""
    out = []
    for seed in (10, 11):
        for kind, rate in [
            ("symmetric", 0.05),
            ("symmetric", 0.1),
            ("symmetric", 0.3),
            ("symmetric", 0.4),
            ("pair", 0.1),
            ("pair", 0.2),
            ("pair", 0.3),
            ("asymmetric", 0.2),
            ("adjacent", 0.2),
        ]:
            out.append(("pixels", kind, rate, seed))
    for kind, rate in [
        ("symmetric", 0.0),
        ("symmetric", 0.1),
        ("symmetric", 0.3),
        ("pair", 0.2),
    ]:
        out.append(("embeddings", kind, rate, 10))
    for name in ("wine", "breast_cancer", "iris", "lfw"):
        for rate in (0.0, 0.1, 0.2, 0.3):
            out.append((name, "symmetric", rate, 10))
    return out


def run_settings(sets, **options):
    """Runs RER on every setting; returns one dict per setting."""
    from fiftyone_hardness.methods.label_noise import inject_label_noise
    from fiftyone_hardness.methods.rer import RERConfig, compute_rer

    rows = []
    for name, kind, rate, seed in settings():
        X, clean = sets[name]
        labels, truth = inject_label_noise(
            clean, int(clean.max()) + 1, rate, kind=kind, seed=seed
        )
        config = RERConfig.from_kwargs(method="rer", seed=seed, **options)
        result = compute_rer(X, labels, config=config)
        rows.append(dict(name=name, labels=labels, truth=truth, result=result))
    return rows


def quality(rows, calibration="fitted"):
    """``(mean AUROC, mean F1, noise-rate MAE, per-set mean AUROC)``."""
    from sklearn.metrics import f1_score, roc_auc_score

    from fiftyone_hardness.methods.rer import rer_from_statistics

    aurocs, f1s, errors, per_set = [], [], [], {}
    for row in rows:
        out = rer_from_statistics(
            row["result"].stats, row["labels"], calibration=calibration
        )
        errors.append(abs(out.results["noise_rate"] - row["truth"].mean()))
        if row["truth"].any():
            auroc = roc_auc_score(row["truth"], out.scores)
            aurocs.append(auroc)
            f1s.append(f1_score(row["truth"], out.flags))
            per_set.setdefault(row["name"], []).append(auroc)
    return (
        float(np.mean(aurocs)),
        float(np.mean(f1s)),
        float(np.mean(errors)),
        {k: float(np.mean(v)) for k, v in per_set.items()},
    )


def refit(rows):
    """Fits the noise-rate line and grid-searches the threshold constants;
    prints both next to the current ``"fitted"`` constants."""
    from fiftyone_hardness.methods.rer import (
        CALIBRATIONS,
        noise_rate_estimate,
    )

    raw = np.array(
        [
            (r["result"].results["chi0"] - r["result"].results["chi_rand"])
            / (1.0 - r["result"].results["chi_rand"])
            for r in rows
        ]
    )
    true = np.array([r["truth"].mean() for r in rows])
    (scale, offset), *_ = np.linalg.lstsq(
        np.c_[raw, np.ones_like(raw)], true, rcond=None
    )
    current = CALIBRATIONS["fitted"]
    for label, s, o in (
        ("refit", scale, offset),
        ("fitted", current["eta_scale"], current["eta_offset"]),
        ("reference", 1.0, 0.0),
    ):
        mae = np.mean(
            np.abs(
                [
                    noise_rate_estimate(
                        r["result"].results["chi0"],
                        r["result"].results["chi_rand"],
                        dict(eta_scale=s, eta_offset=o),
                    )
                    for r in rows
                ]
                - true
            )
        )
        print(
            "  noise line %-9s eta = %.4f * raw %+.4f: MAE %.4f"
            % (label, s, o, mae)
        )
    best = (-1.0, None)
    for t_scale, gamma_exp, gamma_high in itertools.product(
        (0.95, 1.0, 1.01, 1.03, 1.05, 1.1),
        (0.4, 0.6, 0.8, 1.0, 1.2, 1.5),
        (5.0, 8.0, 10.0, 12.5, 15.0, 20.0),
    ):
        constants = dict(
            current,
            eta_scale=scale,
            eta_offset=offset,
            t_scale=t_scale,
            gamma_exp=gamma_exp,
            gamma_high=gamma_high,
        )
        f1 = quality(rows, constants)[1]
        if f1 > best[0]:
            best = (f1, constants)
    print(
        "  threshold grid: best mean F1 %.4f with t_scale %.2f, gamma_exp "
        "%.2f, gamma_high %.1f; the fitted constants: %.4f"
        % (
            best[0],
            best[1]["t_scale"],
            best[1]["gamma_exp"],
            best[1]["gamma_high"],
            quality(rows)[1],
        )
    )


def size_setting(family, per_class, num_classes=10, dim=512, seed=10):
    """``(X, noisy labels, flipped mask)`` of a class-size setting."""
    from fiftyone_hardness.methods.label_noise import inject_label_noise

    n = per_class * num_classes
    rng = np.random.default_rng(seed)
    clean = np.repeat(np.arange(num_classes), per_class)
    X = np.empty((n, dim), np.float32)
    if family == "gaussian":
        latent = 64
        means = rng.normal(size=(num_classes, latent)) * 0.6
        proj = rng.normal(size=(latent, dim)) / np.sqrt(latent)
        for s in range(0, n, 20000):
            c = clean[s : s + 20000]
            z = means[c] + rng.normal(size=(len(c), latent))
            X[s : s + 20000] = z @ proj + 0.5 * rng.normal(size=(len(c), dim))
    else:
        rank = 8
        centers = rng.normal(0, 0.05, size=(num_classes, dim))
        bases = rng.normal(0, 1 / np.sqrt(rank), (num_classes, rank, dim))
        for s in range(0, n, 20000):
            c = clean[s : s + 20000]
            z = rng.normal(size=(len(c), rank))
            X[s : s + 20000] = (
                centers[c]
                + np.tanh(np.einsum("nr,nrd->nd", z, bases[c]) * 2)
                + rng.normal(0, 1.0, size=(len(c), dim))
            )
    labels, truth = inject_label_noise(
        clean, num_classes, 0.2, kind="symmetric", seed=seed
    )
    return X, labels, truth


def _budget_options(text):
    """``fit=<n>|none``, ``epochs=<n>``, ``graph=exact|ivf|auto``, joined
    by commas, as RERConfig options."""
    options = {}
    for part in text.split(","):
        name, value = part.split("=")
        if name == "graph":
            options["graph_neighbors"] = value
            continue
        value = None if value == "none" else int(value)
        if name == "fit":
            options["fit_samples_per_class"] = value
        elif name == "epochs":
            options["epochs"] = value
        else:
            raise SystemExit(
                "unknown budget %r: fit=<n>|none, epochs=<n>, "
                "graph=exact|ivf, joined by commas" % text
            )
    if "epochs" in options:
        options.setdefault("fit_samples_per_class", None)
    return options


def run_sizes(sizes, families, budgets):
    """Prints the quality of each budget at each class size."""
    from sklearn.metrics import f1_score, roc_auc_score

    from fiftyone_hardness.methods.rer import RERConfig, compute_rer

    for family in families:
        for per_class in sizes:
            X, labels, truth = size_setting(family, per_class)
            for text in budgets:
                config = RERConfig.from_kwargs(
                    method="rer", seed=10, **_budget_options(text)
                )
                start = time.perf_counter()
                result = compute_rer(X, labels, config=config)
                seconds = time.perf_counter() - start
                print(
                    "%-8s %6d per class  %-10s AUROC %.4f  F1 %.3f  noise "
                    "%.3f (truth %.2f)  steps %5d  %6.1f s"
                    % (
                        family,
                        per_class,
                        text,
                        roc_auc_score(truth, result.scores),
                        f1_score(truth, result.flags),
                        result.results["noise_rate"],
                        truth.mean(),
                        result.results["model_config"]["steps"],
                        seconds,
                    ),
                    flush=True,
                )


def compare_graphs(sets, methods):
    """Runs the settings once per graph neighbour search; prints each
    one's quality and its differences from the first."""
    rows = {}
    for method in methods:
        start = time.perf_counter()
        rows[method] = run_settings(sets, graph_neighbors=method)
        auroc, f1, mae, _ = quality(rows[method])
        print(
            "graph_neighbors=%-5s mean AUROC %.4f  F1 %.4f  noise MAE %.4f"
            "  (%.0f s)"
            % (method, auroc, f1, mae, time.perf_counter() - start)
        )
    first = rows[methods[0]]
    for method in methods[1:]:
        diffs = [
            (
                abs(
                    a["result"].results["noise_rate"]
                    - b["result"].results["noise_rate"]
                ),
                np.mean(a["result"].flags != b["result"].flags),
            )
            for a, b in zip(first, rows[method])
        ]
        print(
            "  %s vs %s: largest noise-rate difference %.4f, largest share "
            "of flags that differ %.4f"
            % (
                method,
                methods[0],
                max(d[0] for d in diffs),
                max(d[1] for d in diffs),
            )
        )


def _pca_value(text):
    if text == "none":
        return None
    if text == "auto":
        return "auto"
    return int(text) if text.isdigit() else float(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pca",
        nargs="+",
        default=["auto", "none"],
        help="pca_components values to compare: auto, none, "
        "an int or a variance fraction",
    )
    parser.add_argument(
        "--refit",
        action="store_true",
        help="refit the calibration constants on the first " "--pca value",
    )
    parser.add_argument(
        "--graph-neighbors",
        nargs="+",
        default=None,
        help="compare ways of finding the graph's neighbours (exact, ivf)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=None,
        help="run the class-size settings at these rows per class",
    )
    parser.add_argument(
        "--families", nargs="+", default=["gaussian", "manifold"]
    )
    parser.add_argument(
        "--budget",
        nargs="+",
        default=["fit=none", "fit=1000"],
        help="training budgets to compare: fit=<n>, fit=none, epochs=<n>",
    )
    args = parser.parse_args(argv)
    if args.sizes:
        run_sizes(args.sizes, args.families, args.budget)
        return
    sets = feature_sets()
    if args.graph_neighbors:
        compare_graphs(sets, args.graph_neighbors)
        return
    print(
        "%d settings; feature sets: %s"
        % (
            len(settings()),
            ", ".join("%s %dx%d" % (k, *v[0].shape) for k, v in sets.items()),
        )
    )
    for i, text in enumerate(args.pca):
        start = time.perf_counter()
        rows = run_settings(sets, pca_components=_pca_value(text))
        auroc, f1, mae, per_set = quality(rows)
        dims = {
            r["name"]: r["result"].results["model_config"]["feature_dims"]
            for r in rows
        }
        print(
            "pca_components=%-5s mean AUROC %.4f  F1 %.4f  noise MAE %.4f"
            "  (%.0f s)" % (text, auroc, f1, mae, time.perf_counter() - start)
        )
        print(
            "  AUROC per set: "
            + ", ".join(
                "%s %.3f (%d dims)" % (k, v, dims[k])
                for k, v in per_set.items()
            )
        )
        if args.refit and i == 0:
            refit(rows)


if __name__ == "__main__":
    main()
