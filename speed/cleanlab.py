"""
Speed and quality of the confident-learning path, each against a baseline
measured in the same run:

1. Out-of-sample probabilities: our cross-validated torch probe
   (:func:`fiftyone_hardness.methods.probes.cross_val_probs`, 5 folds
   trained together by L-BFGS) against scikit-learn
   ``cross_val_predict(LogisticRegression(max_iter=1000),
   method="predict_proba")`` on the same features and the same 5 folds
   (``PredefinedSplit``): time, cross-validated
   accuracy (against the given, noisy labels and against the clean ones)
   and the AUROC of ``1 - self-confidence`` against the known mistakes.
   On sklearn's digits (raw pixels, 20% symmetric noise) and on a synthetic
   set of ``--n`` x ``--dim`` features with ``--classes`` classes (10%
   symmetric noise). A second sklearn row fits our exact objective
   (standardized features, ``C = 1 / (l2 * N_train)``), to show the
   speed-up between equal models too.
2. FiftyOne I/O on a ``--db-n``-sample dataset: reading logits through the
   method's read path vs iterating the samples, and writing the method's
   fields (the run layer's one-pass ``write_fields``) vs
   ``iter_samples(autosave=True)`` and one ``set_values`` per field; plus the
   whole ``apply_hardness("cleanlab", pred_field=...)``.

Run::

    .venv/bin/python speed/cleanlab.py                 # everything
    .venv/bin/python speed/cleanlab.py --n 10000       # smaller synthetic
    .venv/bin/python speed/cleanlab.py --skip-db       # probes only

Timings on a shared machine are noisy; the ratios compare runs made in the
same process, one after the other.
"""

import argparse
import datetime
import os
import sys
import time
import uuid

# This file is named like the cleanlab package: drop its folder from the
# import path, or "import cleanlab" would import this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

os.environ.setdefault(
    "FIFTYONE_DATABASE_NAME", "hardness_bench_%s" % uuid.uuid4().hex[:6]
)
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from fiftyone_hardness.methods import probes  # noqa: E402
from fiftyone_hardness.methods.label_noise import (  # noqa: E402
    inject_label_noise,
)


def synthetic(n, dim, num_classes, latent=64, sep=0.6, seed=0):
    """Gaussian classes in a ``latent``-dim subspace of ``dim`` dims plus
    isotropic noise: a linearly hard but learnable set."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, latent)) * sep
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    z = means[labels] + rng.normal(size=(n, latent))
    proj = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    X = z @ proj + 0.5 * rng.normal(size=(n, dim))
    return X.astype(np.float32), labels


def _figures(pred_probs, noisy, clean, mask):
    n = len(noisy)
    score = 1 - pred_probs[np.arange(n), noisy]  # 1 - self-confidence
    pred = pred_probs.argmax(1)
    return {
        "acc": float(np.mean(pred == noisy)),
        "clean_acc": float(np.mean(pred == clean)),
        "auroc": float(roc_auc_score(mask, score)),
    }


def _best_time(function, repeat):
    best, result = None, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best, result


def compare_probes(
    name, X, noisy, clean, mask, repeat, device, sklearn=True, matched=True
):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    num_classes = int(max(noisy.max(), clean.max())) + 1
    rows = []
    t, res = _best_time(
        lambda: probes.cross_val_probs(X, noisy, num_classes, device=device),
        repeat,
    )
    ours = dict(_figures(res.pred_probs, noisy, clean, mask), time=t)
    ours["iters"] = res.info["iterations"]
    ours["evals"] = res.info["function_evals"]
    res_folds = res.folds
    ours["l2"] = res.info["l2"]
    rows.append(("ours logreg (%s)" % res.info["device"], ours))
    t, res = _best_time(
        lambda: probes.knn_vote_probs(X, noisy, num_classes, device=device),
        repeat,
    )
    rows.append(
        (
            "ours k-NN vote k=10",
            dict(_figures(res.pred_probs, noisy, clean, mask), time=t),
        )
    )
    t, res = _best_time(
        lambda: probes.cross_val_probs(
            X, noisy, num_classes, model="mlp", device=device
        ),
        1,
    )
    rows.append(
        (
            "ours MLP (%d epochs)" % res.info["epochs"],
            dict(_figures(res.pred_probs, noisy, clean, mask), time=t),
        )
    )
    base = None
    # sklearn gets the very folds our probe used
    splits = PredefinedSplit(res_folds)
    if sklearn:
        t, P = _best_time(
            lambda: cross_val_predict(
                LogisticRegression(max_iter=1000),
                X,
                noisy,
                cv=splits,
                method="predict_proba",
            ),
            1 if len(X) > 5000 else repeat,
        )
        base = dict(_figures(P, noisy, clean, mask), time=t)
        rows.append(("sklearn LogisticRegression", base))
        if matched:
            # the same objective as ours: standardized features and
            # C = 1 / (l2 * N_train), i.e. mean loss + l2 / 2 * ||W||^2
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            c = 1.0 / (ours["l2"] * 0.8 * len(X))
            t, P = _best_time(
                lambda: cross_val_predict(
                    make_pipeline(
                        StandardScaler(),
                        LogisticRegression(C=c, max_iter=1000),
                    ),
                    X,
                    noisy,
                    cv=splits,
                    method="predict_proba",
                ),
                1 if len(X) > 5000 else repeat,
            )
            same = dict(_figures(P, noisy, clean, mask), time=t)
            rows.append(("sklearn, our objective (C=%.3g)" % c, same))

    print(
        "\n%s: N=%d, D=%d, K=%d, %.0f%% labels wrong"
        % (name, X.shape[0], X.shape[1], num_classes, 100 * mask.mean())
    )
    print(
        "  %-34s %9s %9s %9s %8s"
        % ("", "time (s)", "cv acc", "clean acc", "AUROC")
    )
    for label, r in rows:
        print(
            "  %-34s %9.2f %9.4f %9.4f %8.4f"
            % (label, r["time"], r["acc"], r["clean_acc"], r["auroc"])
        )
    if base is not None:
        print(
            "  speed-up of our logreg probe over sklearn: %.1fx "
            "(accuracy %+.4f, clean accuracy %+.4f, AUROC %+.4f; "
            "%d L-BFGS iterations, %d loss evaluations)"
            % (
                base["time"] / ours["time"],
                ours["acc"] - base["acc"],
                ours["clean_acc"] - base["clean_acc"],
                ours["auroc"] - base["auroc"],
                ours["iters"],
                ours["evals"],
            )
        )
    if base is not None and matched:
        print(
            "  speed-up over sklearn on our objective: %.1fx (accuracy %+.4f)"
            % (same["time"] / ours["time"], ours["acc"] - same["acc"])
        )
    return ours, base


def _bulk_dataset(name, labels, pred_probs, classes):
    """A 50k-sample label/prediction dataset, inserted in one bulk write
    (its construction is not what is measured)."""
    import fiftyone as fo
    import fiftyone.core.utils as fou
    from bson import ObjectId

    names = np.asarray(classes, dtype=object)
    dataset = fo.Dataset(name)
    dataset.add_sample(
        fo.Sample(
            filepath="/nonexistent/template.png",
            ground_truth=fo.Classification(label=classes[0]),
            predictions=fo.Classification(
                label=classes[0], logits=np.zeros(len(classes))
            ),
        )
    )
    dataset_id = dataset._sample_collection.find_one()["_dataset_id"]
    dataset.clear()
    now = datetime.datetime.utcnow()
    rand = np.random.default_rng(0).random(len(labels))
    log_probs = np.log(np.clip(pred_probs, 1e-30, 1))
    predicted = names[pred_probs.argmax(1)]
    docs = [
        {
            "_id": ObjectId(),
            "filepath": "/nonexistent/bench_%d.png" % i,
            "tags": [],
            "_media_type": "image",
            "_rand": float(rand[i]),
            "_dataset_id": dataset_id,
            "created_at": now,
            "last_modified_at": now,
            "ground_truth": {
                "_id": ObjectId(),
                "_cls": "Classification",
                "tags": [],
                "label": names[labels[i]],
            },
            "predictions": {
                "_id": ObjectId(),
                "_cls": "Classification",
                "tags": [],
                "label": predicted[i],
                "logits": fou.serialize_numpy_array(log_probs[i]),
            },
        }
        for i in range(len(labels))
    ]
    dataset._sample_collection.insert_many(docs, ordered=False)
    dataset.default_classes = list(classes)
    dataset.save()
    return dataset


def database_io(n):
    import fiftyone_hardness  # noqa: F401  (adds apply_hardness)
    from fiftyone_hardness.methods import confident_learning as fcl
    from fiftyone_hardness.dataset_io import data as fhdata
    from fiftyone_hardness.dataset_io.runs import write_fields

    classes = ["class_%d" % i for i in range(10)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n)
    pred_probs = rng.dirichlet(np.ones(10) * 0.3, size=n)
    start = time.perf_counter()
    dataset = _bulk_dataset("bench-cleanlab-io", labels, pred_probs, classes)
    print(
        "\nFiftyOne I/O on %d samples (built by one bulk insert in %.1fs)"
        % (n, time.perf_counter() - start)
    )
    try:
        # read: the method's path vs iterating the samples
        start = time.perf_counter()
        data = fhdata.load_labeled_data(dataset, "ground_truth")
        probs, _ = fcl._read_predictions(data, "predictions", None)
        ours_read = time.perf_counter() - start
        start = time.perf_counter()
        looped = np.array(
            [s.predictions.logits for s in dataset.iter_samples()]
        )
        base_read = time.perf_counter() - start
        assert np.allclose(fcl.logits_to_probs(looped), probs)

        out = fcl.confident_learning(data.labels, probs, classes=classes)
        fields = {
            "score": out["score"],
            "flag": out["flag"],
            "pred": np.asarray(classes, dtype=object)[out["pred"]],
        }
        # write: the run layer's one-pass writer
        start = time.perf_counter()
        write_fields(
            dataset, data.ids, {"io_%s" % k: v for k, v in fields.items()}
        )
        ours_write = time.perf_counter() - start
        # a user's bulk alternative: one set_values pass per field
        start = time.perf_counter()
        for suffix, values in fields.items():
            dataset.set_values(
                "sv_%s" % suffix,
                dict(zip(data.ids.tolist(), np.asarray(values).tolist())),
                key_field="id",
            )
        set_values_write = time.perf_counter() - start
        start = time.perf_counter()
        index = {i: k for k, i in enumerate(data.ids.tolist())}
        for sample in dataset.iter_samples(autosave=True):
            k = index[sample.id]
            sample["loop_score"] = float(fields["score"][k])
            sample["loop_flag"] = bool(fields["flag"][k])
            sample["loop_pred"] = str(fields["pred"][k])
        base_write = time.perf_counter() - start

        start = time.perf_counter()
        dataset.apply_hardness(
            "cleanlab", pred_field="predictions", progress=lambda *a: None
        )
        total = time.perf_counter() - start
    finally:
        dataset.delete()
    print(
        "  read logits: ours (values + stack) %6.2fs | iter_samples loop "
        "%6.2fs | speed-up %.1fx"
        % (ours_read, base_read, base_read / ours_read)
    )
    print(
        "  write 3 fields: ours (write_fields) %6.2fs | iter_samples("
        "autosave) %6.2fs | speed-up %.1fx"
        % (ours_write, base_write, base_write / ours_write)
    )
    print(
        "                  set_values per field %6.2fs | speed-up %.1fx"
        % (set_values_write, set_values_write / ours_write)
    )
    print(
        "  apply_hardness('cleanlab', pred_field=...) end to end: %.2fs"
        % total
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--n", type=int, default=50000, help="synthetic samples"
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timing repeats on digits (best of)",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--db-n", type=int, default=50000)
    parser.add_argument("--skip-db", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument(
        "--no-sklearn-synthetic",
        action="store_true",
        help="skip the sklearn baseline on the synthetic set",
    )
    parser.add_argument(
        "--no-matched",
        action="store_true",
        help="skip sklearn on our objective",
    )
    args = parser.parse_args()

    import torch
    from sklearn.datasets import load_digits

    print(
        "torch %s, %d threads, device %s"
        % (
            torch.__version__,
            torch.get_num_threads(),
            probes.select_device(args.device),
        )
    )
    probes.cross_val_probs(
        np.eye(10, dtype=np.float32).repeat(5, 0),
        np.arange(10).repeat(5),
        10,
        max_iter=2,
        device=args.device,
    )  # warm-up

    digits = load_digits()
    X = digits.data.astype(np.float32) / 16.0
    noisy, mask = inject_label_noise(digits.target, 10, 0.2, seed=0)
    compare_probes(
        "digits, raw pixels",
        X,
        noisy,
        digits.target,
        mask,
        args.repeat,
        args.device,
        matched=not args.no_matched,
    )

    if not args.skip_synthetic:
        X, clean = synthetic(args.n, args.dim, args.classes)
        noisy, mask = inject_label_noise(clean, args.classes, 0.1, seed=0)
        compare_probes(
            "synthetic",
            X,
            noisy,
            clean,
            mask,
            1,
            args.device,
            sklearn=not args.no_sklearn_synthetic,
            matched=not args.no_matched,
        )

    if not args.skip_db:
        database_io(args.db_n)


if __name__ == "__main__":
    main()
