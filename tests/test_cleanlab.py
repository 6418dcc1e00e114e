"""
Confident learning (cleanlab): out-of-sample probes, exact agreement with
``cleanlab.filter.find_label_issues``, the health summary, real label noise
(Roman numerals with person-verified errors, CIFAR-10N human labels), bad
input, and the run / operator path through ``dataset.apply_hardness``.
"""

import datetime
import os
import re
import time

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

import cleanlab.count
import cleanlab.dataset
import cleanlab.filter
import cleanlab.rank

from fiftyone_hardness.methods import confident_learning as fcl
from fiftyone_hardness.methods import probes
from fiftyone_hardness.methods.base import HardnessError, LabeledData
from fiftyone_hardness.methods.label_noise import inject_label_noise

SHARED_DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "data",
)
ROMAN_CLASSES = ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x"]
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA),
    reason="../shared/data (real label-noise data) is not present",
)


def _shared(*parts):
    return np.load(os.path.join(SHARED_DATA, *parts))


def _roman(model):
    return (
        _shared("roman-numeral", model, "labels.npy"),
        _shared("roman-numeral", model, "pred_probs.npy"),
        _shared("roman-numeral", model, "label_errors_mask.npy"),
    )


def _cifar():
    noisy = _shared("cifar10n-aggregate", "resnet18", "noisy_labels.npy")
    true = _shared("cifar10n-aggregate", "resnet18", "true_labels.npy")
    probs = _shared("cifar10n-aggregate", "resnet18", "pred_probs.npy")
    return noisy, probs, noisy != true


@pytest.fixture(scope="module")
def noisy_digits():
    """sklearn digits, raw pixels in [0, 1], 20% symmetric noise (seed 0)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.data.astype(np.float32) / 16.0
    noisy, mask = inject_label_noise(digits.target, 10, 0.2, seed=0)
    return X, noisy, mask, digits.target


def _auroc(truth, scores):
    return roc_auc_score(np.asarray(truth, bool), np.asarray(scores, float))


def _self_confidence_score(labels, pred_probs):
    return 1 - cleanlab.rank.get_label_quality_scores(labels, pred_probs)


# --------------------------------------------------------------------------
# probes (arrays)
# --------------------------------------------------------------------------


def test_stratified_folds():
    labels = np.repeat(np.arange(4), [10, 7, 5, 13])
    folds = probes.stratified_folds(labels, n_folds=5, seed=3)
    assert np.array_equal(folds, probes.stratified_folds(labels, 5, seed=3))
    assert not np.array_equal(folds, probes.stratified_folds(labels, 5, 4))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in range(4):
        per_fold = np.bincount(folds[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    with pytest.raises(HardnessError, match="at least 5 samples per class"):
        probes.stratified_folds(np.repeat([0, 1], [10, 4]), n_folds=5)


def test_standardize_in_blocks_equals_the_whole_array_formula():
    """Issue 14: standardize works in blocks (its whole-array float64
    temporaries took +9.9 GB at 1M x 512); the values are the formula's,
    bit for bit, over several blocks and with a constant feature."""
    rng = np.random.default_rng(3)
    rows = 2 * probes._BLOCK_ROWS + 123
    X = rng.normal(size=(rows, 16)) * rng.uniform(0, 5, 16) + 7.0
    X = X.astype(np.float32)
    X[:, 5] = 2.0
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    std[std < 1e-6 * max(float(std.max()), 1.0)] = 1.0
    expected = ((X - mean) / std).astype(np.float32)
    out = probes.standardize(X)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert not out[:, 5].any()


def test_logistic_probe_objective_in_blocks_equals_the_full_batch(
    noisy_digits,
):
    """Issue 14: the logistic probe sums its objective and gradient over
    blocks of rows (bounded memory at any N); the fit is the full batch's
    (same convex objective, the sums in another order)."""
    import torch

    X, y, _, _ = noisy_digits
    X = probes.standardize(X[:600])
    y = y[:600]
    folds = probes.stratified_folds(y, n_folds=5, seed=0)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    ft = torch.as_tensor(folds)
    mask = (ft[None, :] != torch.arange(5)[:, None]).float()

    def fit(block_floats):
        (W, b), (iterations, _) = probes._fit_logreg(
            Xt, yt, mask, 10, 3e-2, 300, 1e-9, lambda *a: None, block_floats
        )
        logits = torch.einsum("nd,dfk->nfk", Xt, W) + b
        return torch.softmax(logits, -1).numpy(), iterations

    full, _ = fit(1 << 30)  # one block: the full batch
    blocked, iterations = fit(5 * 10 * 37)  # 37 rows per block, 17 blocks
    assert iterations > 5
    # measured: at most 1.4e-3 apart (float32 sums in another order)
    np.testing.assert_allclose(blocked, full, atol=5e-3)
    assert np.mean(blocked.argmax(-1) == full.argmax(-1)) >= 0.995


def test_probe_is_out_of_sample_and_deterministic(noisy_digits):
    X, y, _, _ = noisy_digits
    X, y = X[:600], y[:600]
    a = probes.cross_val_probs(X, y, 10, seed=1, standardize_features=False)
    b = probes.cross_val_probs(X, y, 10, seed=1, standardize_features=False)
    assert np.array_equal(a.pred_probs, b.pred_probs)
    np.testing.assert_allclose(a.pred_probs.sum(1), 1, atol=1e-9)
    assert a.info["model"] == "logreg" and a.info["iterations"] > 0
    # each held-out fold is predicted by a model that never saw it: the
    # same as one model trained on the other folds alone (same convex
    # objective, so the same optimum up to the solver's tolerance)
    for fold in (0, 3):
        held = a.folds == fold
        alone = probes.fit_predict_probs(
            X[~held],
            y[~held],
            X[held],
            10,
            standardize_features=False,
            tol=1e-7,
            max_iter=300,
        )
        assert np.abs(alone - a.pred_probs[held]).max() < 0.05
        assert np.mean(alone.argmax(1) == a.pred_probs[held].argmax(1)) > 0.98

    # the k-NN vote never counts a sample's own label
    knn = probes.knn_vote_probs(X, y, 10, k=10)
    flipped = y.copy()
    flipped[7] = (y[7] + 1) % 10
    again = probes.knn_vote_probs(X, flipped, 10, k=10)
    assert np.array_equal(knn.pred_probs[7], again.pred_probs[7])
    np.testing.assert_allclose(knn.pred_probs.sum(1), 1)
    assert set(np.unique(knn.pred_probs * 10)) <= set(range(11))


def test_digits_pixels_auroc(noisy_digits):
    X, y, mask, clean = noisy_digits
    figures = {}
    start = time.perf_counter()
    logreg = probes.cross_val_probs(X, y, 10)
    figures["logreg"] = (
        _auroc(mask, _self_confidence_score(y, logreg.pred_probs)),
        logreg.cv_accuracy,
        time.perf_counter() - start,
    )
    start = time.perf_counter()
    knn = probes.knn_vote_probs(X, y, 10, k=10)
    figures["knn"] = (
        _auroc(mask, _self_confidence_score(y, knn.pred_probs)),
        knn.cv_accuracy,
        time.perf_counter() - start,
    )
    start = time.perf_counter()
    mlp = probes.cross_val_probs(X, y, 10, model="mlp", epochs=8)
    figures["mlp"] = (
        _auroc(mask, _self_confidence_score(y, mlp.pred_probs)),
        mlp.cv_accuracy,
        time.perf_counter() - start,
    )
    print(
        "\ndigits raw pixels, 20% symmetric noise: AUROC of 1 - "
        "self-confidence vs the known mistakes"
    )
    for name, (auc, acc, seconds) in figures.items():
        print(
            "  %-7s AUROC %.4f  cv accuracy %.3f  %.1fs"
            % (name, auc, acc, seconds)
        )
    assert figures["logreg"][0] >= 0.97
    assert figures["knn"][0] >= 0.99
    assert figures["mlp"][0] >= 0.97
    # out-of-sample accuracy against the clean labels
    assert np.mean(logreg.pred_probs.argmax(1) == clean) > 0.9


def test_remove_and_retrain(noisy_digits):
    X, y, mask, clean = noisy_digits
    probs = probes.cross_val_probs(X, y, 10).pred_probs
    flags = cleanlab.filter.find_label_issues(y, probs, n_jobs=1)
    out = fcl.remove_and_retrain(X, y, flags, eval_labels=clean)
    print(
        "\nremove and retrain (digits, 20%% noise): all %.3f -> "
        "cleaned %.3f on %d held-out samples (true labels)"
        % (out["accuracy_all"], out["accuracy_cleaned"], out["num_test"])
    )
    assert out["num_test"] == 360 and out["num_train"] == 1437
    assert 0 < out["num_removed"] < out["num_train"]
    assert out["accuracy_cleaned"] >= out["accuracy_all"]
    assert out["gain"] == pytest.approx(
        out["accuracy_cleaned"] - out["accuracy_all"]
    )
    given = fcl.remove_and_retrain(X, y, flags)
    assert given["evaluated_on"].startswith("given labels")
    assert given["num_test"] < 360  # flagged held-out samples left out


# --------------------------------------------------------------------------
# confident learning (arrays)
# --------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("model", ["resnet18", "efficientnet_b1"])
def test_flags_and_scores_equal_cleanlab(model):
    labels, probs, _ = _roman(model)
    for filter_by in fcl.FILTER_BY:
        out = fcl.confident_learning(labels, probs, filter_by=filter_by)
        expected = cleanlab.filter.find_label_issues(
            labels, probs, filter_by=filter_by
        )
        assert np.array_equal(out["flag"], expected), filter_by
        assert out["results"]["num_flagged"] == expected.sum()
    for method in fcl.SCORE_METHODS:
        out = fcl.confident_learning(labels, probs, score_method=method)
        quality = cleanlab.rank.get_label_quality_scores(
            labels, probs, method=method
        )
        np.testing.assert_allclose(out["score"], 1 - quality)


@needs_shared
def test_health_summary_matches_cleanlab():
    labels, probs, _ = _roman("resnet18")
    out = fcl.confident_learning(labels, probs, classes=ROMAN_CLASSES)
    res = out["results"]
    reference = cleanlab.dataset.health_summary(
        labels, probs, class_names=ROMAN_CLASSES, verbose=False
    )
    assert res["health_score"] == pytest.approx(
        reference["overall_label_health_score"]
    )
    np.testing.assert_allclose(res["joint"]["matrix"], reference["joint"])
    assert res["joint"]["classes"] == ROMAN_CLASSES
    assert np.sum(res["joint"]["matrix"]) == pytest.approx(1)
    num_issues = cleanlab.count.num_label_issues(labels, probs)
    assert res["noise_rate"] == pytest.approx(num_issues / len(labels))
    assert res["health_score"] == pytest.approx(1 - res["noise_rate"])
    table = reference["classes_by_label_quality"]
    for name, quality in zip(
        table["Class Name"], table["Label Quality Score"]
    ):
        assert res["class_quality"][name] == pytest.approx(quality)
    pairs = reference["overlapping_classes"]
    top = res["overlapping_classes"][0]
    assert (top["class_a"], top["class_b"]) == (
        pairs["Class Name A"][0],
        pairs["Class Name B"][0],
    )
    assert top["num_overlapping"] == pairs["Num Overlapping Examples"][0]
    counts = [p["num_overlapping"] for p in res["overlapping_classes"]]
    assert counts == sorted(counts, reverse=True) and min(counts) > 0
    assert res["threshold"] == pytest.approx(out["score"][out["flag"]].min())


@needs_shared
def test_ensemble_of_two_models():
    labels, resnet, _ = _roman("resnet18")
    _, effnet, mask = _roman("efficientnet_b1")
    out = fcl.confident_learning(labels, [resnet, effnet])
    expected = cleanlab.rank.get_label_quality_ensemble_scores(
        labels, [resnet, effnet], verbose=False
    )
    np.testing.assert_allclose(out["score"], 1 - expected)
    mean = (resnet + effnet) / 2
    assert np.array_equal(
        out["flag"], cleanlab.filter.find_label_issues(labels, mean)
    )
    assert out["results"]["num_ensemble_members"] == 2
    print("\nroman numerals ensemble AUROC %.3f" % _auroc(mask, out["score"]))


@needs_shared
def test_batched_path_for_large_n(monkeypatch):
    labels, probs, mask = _cifar()
    exact = fcl.confident_learning(
        labels, probs, filter_by="low_self_confidence"
    )
    batched = fcl.confident_learning(labels, probs, batched=True)
    assert batched["results"]["flag_rule"].startswith("batched")
    a, b = exact["flag"], batched["flag"]
    jaccard = (a & b).sum() / float((a | b).sum())
    print(
        "\ncifar10n batched vs exact low_self_confidence: %d vs %d "
        "flags, Jaccard %.3f" % (b.sum(), a.sum(), jaccard)
    )
    assert jaccard > 0.9
    # "auto" switches to the batched path above the size limit
    monkeypatch.setattr(fcl, "BATCHED_MIN_SIZE", probs.size - 1)
    auto = fcl.confident_learning(labels, probs)
    assert auto["results"]["flag_rule"].startswith("batched")
    assert np.array_equal(auto["flag"], b)


def test_bad_arrays():
    probs = np.full((6, 3), 1 / 3.0)
    labels = np.array([0, 1, 2, 0, 1, 2])
    fcl.confident_learning(labels, probs)  # fine
    with pytest.raises(HardnessError, match="sum to one"):
        fcl.confident_learning(labels, probs + [[0.2, 0, 0]])
    with pytest.raises(HardnessError, match="sum to one"):
        fcl.validate_pred_probs(np.full((6, 3), 0.25))
    with pytest.raises(HardnessError, match=r"in \[0, 1\]"):
        fcl.validate_pred_probs([[2.0, -1.0, 0.0]])
    with pytest.raises(HardnessError, match="NaN"):
        fcl.validate_pred_probs([[np.nan, 0.5, 0.5]])
    with pytest.raises(HardnessError, match="shape"):
        fcl.validate_pred_probs(np.ones(3) / 3)
    with pytest.raises(HardnessError, match="Label index 3 is out of range"):
        fcl.confident_learning(labels + 1, probs)
    with pytest.raises(HardnessError, match="at least 2 classes"):
        fcl.confident_learning(np.zeros(6, int), probs)
    with pytest.raises(HardnessError, match="rows"):
        fcl.confident_learning(labels[:5], probs)
    # the array functions refuse options with the config's messages
    with pytest.raises(HardnessError, match="Invalid filter_by='nope'"):
        fcl.confident_learning(labels, probs, filter_by="nope")
    with pytest.raises(HardnessError, match="Invalid score_method='nope'"):
        fcl.confident_learning(labels, probs, score_method="nope")
    with pytest.raises(HardnessError, match="Invalid batched='yes'"):
        fcl.confident_learning(labels, probs, batched="yes")
    # logits: -inf is probability zero; NaN is an error
    np.testing.assert_allclose(
        fcl.logits_to_probs([[0.0, 0.0, -np.inf]]), [[0.5, 0.5, 0.0]]
    )
    with pytest.raises(HardnessError, match="NaN"):
        fcl.logits_to_probs([[0.0, np.nan, 1.0]])
    # a class with fewer samples than folds
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.repeat([0, 1, 2], [14, 13, 3])
    with pytest.raises(HardnessError, match="class index 2 has only 3"):
        probes.cross_val_probs(X, y, 3, n_folds=5)
    with pytest.raises(HardnessError, match="Unknown probe"):
        probes.cross_val_probs(X, y, 3, model="svm")
    # features and labels are checked by methods.validation
    with pytest.raises(HardnessError, match="Got 29 rows"):
        probes.cross_val_probs(X[:-1], y, 3, n_folds=3)
    with_nan = X.copy()
    with_nan[5, 1] = np.nan
    with pytest.raises(HardnessError, match="NaN or inf.*row 5"):
        probes.knn_vote_probs(with_nan, y, 3)
    with pytest.raises(HardnessError, match="out of range for 2 classes"):
        probes.knn_vote_probs(X, y, 2)
    with pytest.raises(HardnessError, match="Unknown probe option"):
        probes.fit_predict_probs(X, y, X, 3, l3=1.0)
    with pytest.raises(HardnessError, match="Got 4 flags for 30 labels"):
        fcl.remove_and_retrain(X, y, np.zeros(4, bool))


def test_adapter_without_database(noisy_digits):
    """``run_cleanlab`` only needs a LabeledData: here one backed by
    arrays, including a class list that the labels do not fully use."""
    X, y, mask, _ = noisy_digits
    classes = [str(c) for c in range(10)]
    logits = np.log(
        np.clip(probes.cross_val_probs(X, y, 10).pred_probs, 1e-12, 1)
    )
    values = {
        "pixels": list(X),
        "predictions.logits": list(logits),
        "predictions": [object()] * len(y),
    }
    data = LabeledData(
        ids=np.array(["id%d" % i for i in range(len(y))]),
        labels=y,
        classes=classes,
        load_values=values.__getitem__,
        load_classes=lambda field: None,
    )

    def run(**kwargs):
        return fcl.run_cleanlab(data, fcl.CleanlabConfig(**kwargs))

    with pytest.raises(HardnessError, match="classes=\\[...\\]"):
        run(pred_field="predictions")
    out = run(pred_field="predictions", classes=classes)
    assert _auroc(mask, out.fields["score"]) > 0.97
    assert out.results["probs_source"] == "pred_field:predictions"
    # the prediction classes may be a superset, in any order
    shuffled = classes[::-1] + ["extra"]
    values["predictions.logits"] = list(
        np.concatenate([logits[:, ::-1], np.full((len(y), 1), -30.0)], 1)
    )
    again = run(pred_field="predictions", classes=shuffled)
    # (cleanlab's flags see the extra, empty class; the scores do not)
    assert np.mean(again.fields["flag"] == out.fields["flag"]) > 0.99
    assert np.array_equal(again.fields["pred"], out.fields["pred"])
    np.testing.assert_allclose(
        again.fields["score"], out.fields["score"], atol=1e-9
    )
    with pytest.raises(HardnessError, match="do not have: 0"):
        run(
            pred_field="predictions",
            classes=[c for c in shuffled if c != "0"] + ["y"],
        )
    with pytest.raises(HardnessError, match="holds 11 logits"):
        run(pred_field="predictions", classes=classes)
    # the probe path, with remove_and_retrain reusing the probe's features
    knn = run(embeddings_field="pixels", probs="knn", remove_and_retrain=True)
    assert knn.results["probs_source"] == "knn"
    assert knn.results["probe"]["k"] == 10
    assert knn.results["remove_and_retrain"]["model"] == "logreg"
    assert _auroc(mask, knn.fields["score"]) > 0.97
    # the config refuses bad values before any data is read
    with pytest.raises(HardnessError, match="pred_field=.*embeddings_field"):
        fcl.CleanlabConfig()
    with pytest.raises(HardnessError, match="Invalid probs='forest'"):
        fcl.CleanlabConfig(embeddings_field="pixels", probs="forest")
    with pytest.raises(HardnessError, match="unknown probe option l3"):
        fcl.CleanlabConfig(embeddings_field="pixels", probe_kwargs={"l3": 1})
    with pytest.raises(HardnessError, match="pass remove_and_retrain=True"):
        fcl.CleanlabConfig(embeddings_field="pixels", eval_label_field="gt")


# --------------------------------------------------------------------------
# FiftyOne datasets
# --------------------------------------------------------------------------


def _bulk_dataset(
    name, labels, pred_probs, classes, declare="default", logits=True
):
    """A label/prediction-only dataset (no media) with ``ground_truth``,
    ``predictions`` (logits = log of ``pred_probs``, or, with
    ``logits=False``, a ``pred_probs`` vector field) and ``index``.

    The schema comes from one ordinary sample; the documents are then
    inserted with one bulk ``insert_many`` (tens of thousands of
    ``fo.Sample`` objects would take minutes on a small machine)."""
    import fiftyone as fo
    import fiftyone.core.utils as fou
    from bson import ObjectId

    names = np.asarray(classes, dtype=object)
    dataset = fo.Dataset(name)
    template = fo.Sample(
        filepath="/nonexistent/template.png",
        index=0,
        ground_truth=fo.Classification(label=str(names[0])),
    )
    if logits:
        template["predictions"] = fo.Classification(
            label=str(names[0]), logits=np.zeros(len(classes))
        )
    else:
        template["pred_probs"] = np.zeros(len(classes))
    dataset.add_sample(template)
    dataset_id = dataset._sample_collection.find_one()["_dataset_id"]
    dataset.clear()

    now = datetime.datetime.utcnow()
    rng = np.random.default_rng(0)
    rand = rng.random(len(labels))
    predicted = names[np.asarray(pred_probs).argmax(1)]
    with np.errstate(divide="ignore"):
        log_probs = np.log(pred_probs)
    docs = []
    for i, label in enumerate(names[labels]):
        doc = {
            "_id": ObjectId(),
            "filepath": "/nonexistent/%s_%d.png" % (name, i),
            "tags": [],
            "_media_type": "image",
            "_rand": float(rand[i]),
            "_dataset_id": dataset_id,
            "created_at": now,
            "last_modified_at": now,
            "index": i,
            "ground_truth": {
                "_id": ObjectId(),
                "_cls": "Classification",
                "tags": [],
                "label": label,
            },
        }
        if logits:
            doc["predictions"] = {
                "_id": ObjectId(),
                "_cls": "Classification",
                "tags": [],
                "label": predicted[i],
                "logits": fou.serialize_numpy_array(log_probs[i]),
            }
        else:
            doc["pred_probs"] = fou.serialize_numpy_array(pred_probs[i])
        docs.append(doc)
    dataset._sample_collection.insert_many(docs, ordered=False)
    if declare == "default":
        dataset.default_classes = list(classes)
    elif declare == "field":
        dataset.classes = {"predictions": list(classes)}
    dataset.save()
    assert len(dataset) == len(labels)
    return dataset


def _by_index(dataset, field):
    index = np.asarray(dataset.values("index"))
    values = np.asarray(dataset.values(field))
    out = np.empty_like(values)
    out[index] = values
    return out


@needs_shared
@pytest.mark.parametrize("model", ["resnet18", "efficientnet_b1"])
def test_roman_numeral_dataset(model):
    import fiftyone_hardness  # noqa: F401  (adds apply_hardness)

    labels, probs, mask = _roman(model)
    dataset = _bulk_dataset(
        "roman-%s" % model, labels, probs, ROMAN_CLASSES, declare="field"
    )
    try:
        results = dataset.apply_hardness(
            "cleanlab", pred_field="predictions", store_probs=True
        )
        flags = _by_index(dataset, "cleanlab_flag").astype(bool)
        scores = _by_index(dataset, "cleanlab_score").astype(float)
        expected = cleanlab.filter.find_label_issues(labels, probs)
        assert np.array_equal(flags, expected)
        stored = np.stack(_by_index(dataset, "cleanlab_probs"))
        np.testing.assert_allclose(stored, probs, rtol=1e-5)
        np.testing.assert_allclose(
            scores, _self_confidence_score(labels, probs), atol=1e-6
        )
        # the same on the exact arrays we read back from the database
        assert np.array_equal(
            flags, cleanlab.filter.find_label_issues(labels, stored)
        )
        preds = _by_index(dataset, "cleanlab_pred")
        assert np.array_equal(
            preds, np.asarray(ROMAN_CLASSES)[probs.argmax(1)]
        )
        auc, f1 = _auroc(mask, scores), f1_score(mask, flags)
        print(
            "\nroman numerals %s (%d samples, %d verified errors): "
            "%d flagged, AUROC %.3f, F1 %.3f, health %.3f"
            % (
                model,
                len(labels),
                mask.sum(),
                flags.sum(),
                auc,
                f1,
                results.health_score,
            )
        )
        assert auc > 0.75 and f1 > 0.25
        loaded = dataset.load_run_results("cleanlab")
        assert loaded.num_flagged == expected.sum()
        assert loaded.probs_source == "pred_field:predictions"
        assert loaded.health_score == pytest.approx(
            cleanlab.dataset.overall_label_health_score(
                labels, probs, verbose=False
            )
        )
        assert set(loaded.class_quality) == set(ROMAN_CLASSES)
        assert loaded.overlapping_classes[0]["num_overlapping"] > 0
        assert loaded.noise_rate == pytest.approx(1 - loaded.health_score)
        assert loaded.cv_accuracy == pytest.approx(
            np.mean(probs.argmax(1) == labels)
        )
    finally:
        dataset.delete()


@needs_shared
def test_cifar10n_dataset():
    import fiftyone_hardness  # noqa: F401

    labels, probs, mask = _cifar()
    start = time.perf_counter()
    dataset = _bulk_dataset("cifar10n", labels, probs, CIFAR_CLASSES)
    built = time.perf_counter() - start
    try:
        start = time.perf_counter()
        results = dataset.apply_hardness("cleanlab", pred_field="predictions")
        ran = time.perf_counter() - start
        flags = _by_index(dataset, "cleanlab_flag").astype(bool)
        scores = _by_index(dataset, "cleanlab_score").astype(float)
        expected = cleanlab.filter.find_label_issues(labels, probs)
        assert np.array_equal(flags, expected)
        auc, f1 = _auroc(mask, scores), f1_score(mask, flags)
        print(
            "\ncifar10n aggregate (50000 samples, %d human-label errors): "
            "%d flagged, AUROC %.3f, F1 %.3f, noise rate %.3f "
            "(truth %.3f); build %.1fs, apply_hardness %.1fs"
            % (
                mask.sum(),
                flags.sum(),
                auc,
                f1,
                results.noise_rate,
                mask.mean(),
                built,
                ran,
            )
        )
        assert auc > 0.85 and f1 > 0.4
        assert results.num_flagged == expected.sum()
    finally:
        dataset.delete()


def _nothing_written(dataset, key="cleanlab"):
    return key not in dataset.list_runs() and not [
        f for f in dataset.get_field_schema() if f.startswith(key + "_")
    ]


def test_bad_input_on_a_dataset():
    import fiftyone as fo
    import fiftyone_hardness  # noqa: F401

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [12, 12, 3])
    probs = rng.dirichlet(np.ones(3), size=len(labels))
    dataset = _bulk_dataset(
        "bad-cleanlab", labels, probs, ["a", "b", "c"], declare=None
    )
    try:
        with pytest.raises(HardnessError, match="Cannot read predictions"):
            dataset.apply_hardness("cleanlab", pred_field="nope")
        # no class list for the logits
        with pytest.raises(HardnessError, match="default_classes"):
            dataset.apply_hardness("cleanlab", pred_field="predictions")
        # class sets that differ: the labels use 'c', the predictions not
        with pytest.raises(HardnessError, match="do not have: c"):
            dataset.apply_hardness(
                "cleanlab", pred_field="predictions", classes=["a", "b", "z"]
            )
        # a class list of another length than the logits
        with pytest.raises(HardnessError, match="holds 3 logits"):
            dataset.apply_hardness(
                "cleanlab",
                pred_field="predictions",
                classes=["a", "b", "c", "d"],
            )
        # predictions without logits
        dataset.set_values(
            "no_logits", [fo.Classification(label="a")] * len(dataset)
        )
        with pytest.raises(HardnessError, match="without logits"):
            dataset.apply_hardness(
                "cleanlab", pred_field="no_logits", classes=["a", "b", "c"]
            )
        # probabilities that do not sum to one
        dataset.set_values("vec", [np.array([0.5, 0.4, 0.4])] * len(dataset))
        with pytest.raises(HardnessError, match="sum to one"):
            dataset.apply_hardness(
                "cleanlab", pred_field="vec", classes=["a", "b", "c"]
            )
        # a class with fewer samples than folds
        dataset.set_values("emb", list(rng.normal(size=(len(dataset), 4))))
        with pytest.raises(HardnessError, match="has only 3"):
            dataset.apply_hardness("cleanlab", embeddings_field="emb")
        assert _nothing_written(dataset)
        # fine with fewer folds; and probabilities in a vector field work
        dataset.apply_hardness("cleanlab", embeddings_field="emb", n_folds=3)
        dataset.set_values(
            "vec", list(probs[np.argsort(dataset.values("index"))])
        )
        res = dataset.apply_hardness(
            "cleanlab",
            pred_field="vec",
            classes=["a", "b", "c"],
            run_key="from_vec",
        )
        assert res.probs_source == "pred_field:vec"
    finally:
        dataset.delete()


def test_digits_end_to_end(digits):
    import fiftyone_hardness  # noqa: F401

    truth = digits.values("mislabeled")
    logreg = digits.apply_hardness(
        "cleanlab",
        embeddings_field="pixels",
        remove_and_retrain=True,
        eval_label_field="ground_truth_clean",
    )
    knn = digits.apply_hardness(
        "cleanlab",
        embeddings_field="pixels",
        probs="knn",
        run_key="cl_knn",
        filter_by="prune_by_class",
        score_method="normalized_margin",
    )
    auc_logreg = _auroc(truth, digits.values("cleanlab_score"))
    auc_knn = _auroc(truth, digits.values("cl_knn_score"))
    rr = logreg.remove_and_retrain
    print(
        "\ndigits pixels through apply_hardness: AUROC logreg %.4f, "
        "knn %.4f; noise rate %.3f (truth 0.2); remove and retrain "
        "%.3f -> %.3f"
        % (
            auc_logreg,
            auc_knn,
            logreg.noise_rate,
            rr["accuracy_all"],
            rr["accuracy_cleaned"],
        )
    )
    assert auc_logreg >= 0.97 and auc_knn >= 0.99
    assert 0.1 < logreg.noise_rate < 0.3
    assert rr["evaluated_on"].startswith("eval_labels")
    assert rr["accuracy_cleaned"] >= rr["accuracy_all"]
    assert logreg.probs_source == "logreg" and knn.probs_source == "knn"
    assert logreg.probe["model"] == "logreg" and logreg.cv_accuracy > 0.7
    assert knn.filter_by == "prune_by_class"
    assert set(logreg.class_quality) == set(digits.default_classes)
    assert logreg.num_flagged == sum(digits.values("cleanlab_flag"))
    assert set(digits.distinct("cleanlab_pred")) <= set(digits.default_classes)
    # reloads from the database with every extra
    loaded = digits.load_run_results("cleanlab")
    assert loaded.health_score == pytest.approx(logreg.health_score)
    assert len(loaded.joint["matrix"]) == 10
    digits.delete_run("cleanlab")
    assert _nothing_written(digits)
    assert digits.has_field("cl_knn_score")


def test_operator(plugins_dir, digits):
    import fiftyone as fo
    import fiftyone.operators as foo

    uri = "@fiftyone-hardness/hardness/compute_cleanlab"
    assert uri in [op.uri for op in foo.list_operators()]
    view = digits.take(500, seed=1)
    result = foo.get_operator(uri)(
        view, embeddings_field="pixels", probs="knn", run_key="op_cl"
    )
    assert result.error is None, result.error
    assert len(digits.exists("op_cl_score")) == 500
    assert digits.load_run_results("op_cl").probs_source == "knn"

    # predictions as the source: logits of a k-NN vote stored on the view
    pixels = np.stack(view.values("pixels"))
    names = digits.default_classes
    labels = np.array(
        [names.index(x) for x in view.values("ground_truth.label")]
    )
    vote = probes.knn_vote_probs(pixels, labels, 10).pred_probs
    logits = np.log(0.01 + vote)
    view.set_values(
        "preds",
        [
            fo.Classification(label=names[int(row.argmax())], logits=row)
            for row in logits
        ],
    )
    result = foo.get_operator(uri)(
        view, source="predictions", pred_field="preds", run_key="op_cl2"
    )
    assert result.error is None, result.error
    assert digits.load_run_results("op_cl2").probs_source == (
        "pred_field:preds"
    )


#: invalid cleanlab parameters: ``(kwargs, what Python says, what the App
#: says)``. Each is sent through ``dataset.apply_hardness``,
#: ``foh.compute_cleanlab`` and the ``compute_cleanlab`` operator
INVALID_CLEANLAB = [
    (dict(embeddings_field="pixels", n_folds=1), "Invalid n_folds=1", None),
    (dict(embeddings_field="pixels", probs="knn", k=0), "Invalid k=0", None),
    # k does not apply to the probe, but a bad value is still refused
    (dict(embeddings_field="pixels", k=0), "Invalid k=0", None),
    (
        dict(embeddings_field="pixels", probs="svm"),
        "Invalid probs='svm'",
        None,
    ),
    (
        dict(embeddings_field="pixels", score_method="x"),
        "Invalid score_method='x'",
        None,
    ),
    (
        dict(embeddings_field="pixels", filter_by="x"),
        "Invalid filter_by='x'",
        None,
    ),
    (dict(embeddings_field="pixels", seed=-1), "Invalid seed=-1", None),
    (
        dict(embeddings_field="pixels", store_probs="yes"),
        "Invalid store_probs='yes'",
        None,
    ),
    # a field that does not exist: read by Python, offered by the App
    (dict(embeddings_field="nope"), "no field 'nope'", "Invalid enum"),
    # no source: Python names both; the App's dropdown is required
    ({}, "pred_field=.*embeddings_field", "Required property"),
    (
        dict(pred_field="ground_truth_clean", remove_and_retrain=True),
        "remove_and_retrain trains probes on embeddings",
        None,
    ),
    (
        dict(embeddings_field="pixels", n_fold=3),
        "Unknown parameter n_fold.*valid parameters: pred_field",
        "Unknown parameter n_fold",
    ),
]


@pytest.mark.parametrize(
    "kwargs,python_says,app_says",
    INVALID_CLEANLAB,
    ids=[repr(c[0]) for c in INVALID_CLEANLAB],
)
def test_invalid_values_are_refused_by_python_and_the_app(
    plugins_dir, digits_dataset, kwargs, python_says, app_says
):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    import fiftyone_hardness as foh

    dataset = digits_dataset  # nothing may be written: no clone needed
    before = set(dataset.get_field_schema())
    with pytest.raises(HardnessError, match=python_says):
        dataset.apply_hardness("cleanlab", **kwargs)
    with pytest.raises(HardnessError, match=python_says):
        foh.compute_cleanlab(dataset, **kwargs)
    params = dict(kwargs)
    if "pred_field" in params:
        params["source"] = "predictions"
    operator = foo.get_operator("@fiftyone-hardness/hardness/compute_cleanlab")
    # FiftyOne refuses to execute a form with an invalid property
    with pytest.raises(ExecutionError, match="Validation error") as refused:
        operator(dataset, **params)
    assert re.search(app_says or python_says, str(refused.value))
    assert "cleanlab" not in dataset.list_runs()
    assert set(dataset.get_field_schema()) == before


def test_operator_form(plugins_dir, digits):
    """What the form shows for each source, read from CleanlabConfig."""
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    operator = foo.get_operator("@fiftyone-hardness/hardness/compute_cleanlab")

    def form(**params):
        params.setdefault("label_field", "ground_truth")
        ctx = ExecutionContext(
            request_params=dict(dataset_name=digits.name, params=params)
        )
        return operator.resolve_input(ctx).type.properties

    probe = form(embeddings_field="pixels")
    assert {"probs", "n_folds", "remove_and_retrain"} <= set(probe)
    assert "k" not in probe and "pred_field" not in probe
    assert probe["probs"].type.values == list(fcl.PROBS_SOURCES)
    assert probe["score_method"].type.values == list(fcl.SCORE_METHODS)
    assert probe["filter_by"].type.values == list(fcl.FILTER_BY)
    knn = form(embeddings_field="pixels", probs="knn")
    assert "k" in knn and "n_folds" not in knn
    assert knn["k"].type.min == 1
    # parameters that are not in the form are not in it
    assert not {"classes", "device", "batched", "probe_kwargs"} & set(knn)

    digits.set_values(
        "preds",
        [fo.Classification(label="0", logits=np.zeros(10)) for _ in digits],
    )
    preds = form(source="predictions", pred_field="preds")
    assert "preds" in preds["pred_field"].type.values
    assert "ground_truth" not in preds["pred_field"].type.values
    assert not {"probs", "n_folds", "k", "remove_and_retrain"} & set(preds)
    assert "embeddings_field" not in preds
    # a predictions field without a class list cannot be run from the App
    digits.default_classes = []
    digits.save()
    blocked = form(source="predictions", pred_field="preds")
    assert blocked["no_classes"].invalid


def test_operator_computes_embeddings_first(plugins_dir, digits):
    """On a dataset without vector fields the form offers to compute
    embeddings first (EmbeddingsConfig's model and weights) and runs the
    probe on them."""
    import fiftyone.operators as foo

    small = digits.take(60, seed=0).clone()
    try:
        small.delete_sample_field("pixels")
        result = foo.get_operator(
            "@fiftyone-hardness/hardness/compute_cleanlab"
        )(small, probs="knn", k=5)
        assert result.error is None, result.error
        assert len(small.exists("embeddings")) == 60
        info = small.get_field("embeddings").info["hardness_embeddings"]
        assert info["model"] == "efficientnet_lite0"
        run = small.load_run_results("cleanlab")
        assert run.probs_source == "knn" and run.probe["k"] == 5
        assert len(small.exists("cleanlab_score")) == 60
    finally:
        small.delete()


def test_knn_vote_with_classes_smaller_than_k():
    """500 separable classes of 4 samples, k=10: each sample has only 3
    neighbours of its own class, which a plain k-vote calls mislabeled
    (31% of clean data flagged). The vote uses n_c - 1 neighbours there."""
    rng = np.random.default_rng(0)
    num_classes = 500
    centers = rng.normal(size=(num_classes, 64)) * 5
    labels = np.repeat(np.arange(num_classes), 4)
    X = centers[labels] + rng.normal(size=(len(labels), 64)) * 0.3
    result = probes.knn_vote_probs(X, labels, num_classes, k=10, device="cpu")
    out = fcl.confident_learning(labels, result.pred_probs)
    assert out["flag"].mean() < 0.01
    assert result.cv_accuracy > 0.99
    # a flipped sample of a small class still ranks as suspicious (cleanlab
    # itself does not flag in classes this small: it keeps
    # min_examples_per_class)
    noisy = labels.copy()
    noisy[:20] = (noisy[:20] + 7) % num_classes
    result = probes.knn_vote_probs(X, noisy, num_classes, k=10, device="cpu")
    truth = np.arange(len(noisy)) < 20
    score = 1 - result.pred_probs[np.arange(len(noisy)), noisy]
    assert _auroc(truth, score) > 0.99


def test_knn_vote_is_unchanged_when_classes_exceed_k(noisy_digits):
    X, labels = noisy_digits[0], noisy_digits[1]
    result = probes.knn_vote_probs(X, labels, 10, k=10, device="cpu")
    # the plain vote: fraction of the 10 nearest others per class
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sims = Xn @ Xn.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    plain = np.zeros((len(labels), 10))
    np.add.at(plain, (np.arange(len(labels))[:, None], labels[nearest]), 0.1)
    # equal up to ties in similarity (broken by index in both)
    assert np.mean(np.abs(result.pred_probs - plain).max(1) < 1e-9) > 0.995


def test_logits_in_another_class_order_are_refused(tmp_path):
    import fiftyone_hardness as foh

    rng = np.random.default_rng(1)
    n, num_classes = 300, 10
    classes = [str(c) for c in range(num_classes)]
    labels = rng.integers(0, num_classes, n)
    probs = np.full((n, num_classes), 0.02)
    probs[np.arange(n), labels] = 0.82
    # the columns are stored in reverse class order
    dataset = _bulk_dataset("logit-order", labels, probs[:, ::-1], classes)
    try:
        # each prediction's own label is the true class, the argmax of the
        # columns as read is another: refused with the fix
        for sample in dataset.iter_samples(autosave=True):
            sample.predictions.label = sample.ground_truth.label
        with pytest.raises(HardnessError, match="class order"):
            foh.compute_cleanlab(dataset, pred_field="predictions")
        assert not dataset.list_runs()
        results = foh.compute_cleanlab(
            dataset, pred_field="predictions", classes=classes[::-1]
        )
        assert results.num_flagged < 0.05 * n
    finally:
        dataset.delete()
