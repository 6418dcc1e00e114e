"""
Confident learning (cleanlab) on out-of-sample class probabilities: per-sample
label quality, label-issue flags and the dataset's health summary; see
``docs/methods.md`` section 2.

Array level (no database): :func:`validate_pred_probs`,
:func:`logits_to_probs`, :func:`confident_learning` (scores, flags, health
summary; one set of probabilities or an ensemble), :func:`find_issues`
(exactly :func:`cleanlab.filter.find_label_issues`, or cleanlab's batched,
memory-bounded variant for very large N), :func:`health_summary` and
:func:`remove_and_retrain`.

Method level: :func:`run_cleanlab`, the ``"cleanlab"`` hardness method,
configured by :class:`CleanlabConfig`, reads out-of-sample probabilities
from a predictions field (``logits`` of a ``fo.Classification``, or a vector
field of per-class probabilities) or computes them from an embeddings field
with a cross-validated probe or a leave-one-out k-NN vote
(:mod:`fiftyone_hardness.methods.probes`).

Stored score: ``1 - label quality`` (higher = more likely mislabeled).

Memory: cleanlab takes the (N, K) probabilities dense, so an N x K array
is unavoidable; the unit is ``8 N K`` bytes (800 MB at N = 1M, K = 100).
Beyond the caller's array: the validated float64 copy (1x), and in
:func:`cleanlab.filter.find_label_issues` with a pruning rule a copy
grouped by class (1x, which cleanlab keeps in a module global until its
next call) and another in its ``_reduce_issues`` (1x), plus N x K bools
per confident joint: peak about ``3.1 x 8 N K`` + O(N), 2.5 GB at 1M x 100.
An ensemble of E members adds about ``2 E x 8 N K`` (validated copies,
stacked for their mean). The batched path bounds only the flagging step
(the scores and the health summary still read the full array). Reading a
predictions field is the largest step: ``values()`` returns Python floats
(about 37 bytes each) held with the stacked array and the softmax, about
``61 N K`` bytes (6 GB at 1M x 100); a chunked read would bound it (not
done yet).
"""

import logging
from dataclasses import dataclass

import numpy as np

from fiftyone_hardness.methods.base import (
    HardnessError,
    MethodOutput,
    no_progress,
)
from fiftyone_hardness.methods.config import MethodConfig, param
from fiftyone_hardness.methods import probes
from fiftyone_hardness.methods.probes import PROBE_MODELS, PROBE_OPTIONS
from fiftyone_hardness.methods.validation import (
    check_features,
    check_labels,
)

logger = logging.getLogger(__name__)

#: label quality scores of :func:`cleanlab.rank.get_label_quality_scores`
SCORE_METHOD_CHOICES = [
    ("self_confidence", "Self-confidence: p(given label)"),
    ("normalized_margin", "Normalized margin"),
    ("confidence_weighted_entropy", "Confidence-weighted entropy"),
]
SCORE_METHODS = tuple(value for value, _ in SCORE_METHOD_CHOICES)

#: ``filter_by`` rules of :func:`cleanlab.filter.find_label_issues`
FILTER_BY_CHOICES = [
    ("prune_by_noise_rate", "prune_by_noise_rate (cleanlab default)"),
    ("prune_by_class", "prune_by_class"),
    ("both", "both"),
    ("confident_learning", "confident_learning (off-diagonals)"),
    ("predicted_neq_given", "predicted_neq_given"),
    ("low_normalized_margin", "low_normalized_margin"),
    ("low_self_confidence", "low_self_confidence"),
]
FILTER_BY = tuple(value for value, _ in FILTER_BY_CHOICES)

#: sources of probabilities computed from an embeddings field
PROBS_CHOICES = [
    ("logreg", "Cross-validated logistic regression"),
    ("mlp", "Cross-validated MLP"),
    ("knn", "Leave-one-out k-NN vote (cosine)"),
]
PROBS_SOURCES = tuple(value for value, _ in PROBS_CHOICES)

BATCHED_CHOICES = [
    ("auto", "cleanlab's batched path for very large N x K"),
    (True, "Always the batched path"),
    (False, "Never the batched path"),
]


def _check_pred_field(value):
    if isinstance(value, str) and value:
        return None
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, str) and v for v in value)
    ):
        return None
    return "expected a field name or a list of field names"


def _check_classes(value):
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, str) for v in value
    ):
        return None
    if isinstance(value, dict) and all(
        isinstance(v, (list, tuple)) for v in value.values()
    ):
        return None
    return "expected a list of class names, or a dict field -> list"


def _check_probe_kwargs(value):
    if not isinstance(value, dict):
        return "expected a dict of probe options"
    unknown = sorted(set(value) - set(PROBE_OPTIONS))
    if unknown:
        return "unknown probe option%s %s; valid options: %s" % (
            "s" if len(unknown) > 1 else "",
            ", ".join(map(str, unknown)),
            ", ".join(PROBE_OPTIONS),
        )
    return None


@dataclass
class CleanlabConfig(MethodConfig):
    """Confident learning (cleanlab) on out-of-sample probabilities: from
    predictions fields, or from a cross-validated probe or a k-NN vote on
    an embeddings field; see ``docs/methods.md`` section 2."""

    pred_field: object = param(
        None,
        "A predictions field (fo.Classification with logits, or per-class "
        "probabilities), or a list of them for an ensemble",
        kind="any",
        check=_check_pred_field,
        label="Predictions field",
    )
    embeddings_field: str = param(
        None,
        "An embeddings field for the probe (with pred_field it is only used "
        "by remove_and_retrain)",
        kind="str",
        label="Embeddings field",
    )
    probs: str = param(
        "logreg",
        "Where the probabilities come from when there is no pred_field",
        choices=PROBS_CHOICES,
        label="Probe",
    )
    classes: object = param(
        None,
        "The class names of the logit columns: a list, or a dict mapping "
        "each predictions field to its list; default "
        "dataset.classes[field] or dataset.default_classes",
        kind="any",
        check=_check_classes,
        form=False,
    )
    score_method: str = param(
        "self_confidence",
        "Stored as {run_key}_score = 1 - label quality",
        choices=SCORE_METHOD_CHOICES,
        label="Label quality score",
    )
    filter_by: str = param(
        "prune_by_noise_rate",
        "The rule of cleanlab.filter.find_label_issues that sets the flags",
        choices=FILTER_BY_CHOICES,
        label="Flag rule",
    )
    n_folds: int = param(
        5, "Probe cross-validation folds", minimum=2, label="Folds"
    )
    k: int = param(
        10, "Neighbours of the k-NN vote", minimum=1, label="Neighbours (k)"
    )
    seed: int = param(0, "Random seed", minimum=0)
    device: str = param(
        None, "torch device; 'cuda' when available", kind="str", form=False
    )
    store_probs: bool = param(
        False,
        "Also store the probabilities per sample ({run_key}_probs)",
        label="Store the probabilities",
    )
    batched: object = param(
        "auto",
        "cleanlab's batched path for very large N",
        choices=BATCHED_CHOICES,
        form=False,
    )
    remove_and_retrain: bool = param(
        False,
        "Compare a probe trained without the flagged samples to one trained "
        "on all, on a held-out split",
        label="Remove and retrain",
    )
    eval_label_field: str = param(
        None,
        "A fo.Classification field of trusted labels to evaluate the "
        "retrained probes against (with remove_and_retrain)",
        kind="str",
        form=False,
    )
    probe_kwargs: dict = param(
        None,
        "Options of the probes (%s), passed to "
        "fiftyone_hardness.methods.probes.cross_val_probs and, with "
        "remove_and_retrain, fit_predict_probs" % ", ".join(PROBE_OPTIONS),
        kind="any",
        check=_check_probe_kwargs,
        form=False,
    )

    def check(self):
        if not self.pred_field and not self.embeddings_field:
            return (
                "embeddings_field",
                "cleanlab needs out-of-sample probabilities: pass "
                "pred_field=<a predictions field with logits> or "
                "embeddings_field=<an embeddings field> (compute one with "
                "fiftyone_hardness.compute_embeddings)",
            )
        if self.remove_and_retrain and not self.embeddings_field:
            return (
                "remove_and_retrain",
                "remove_and_retrain trains probes on embeddings: pass "
                "embeddings_field=...",
            )
        if self.eval_label_field and not self.remove_and_retrain:
            return (
                "eval_label_field",
                "eval_label_field only evaluates the probes of "
                "remove_and_retrain: pass remove_and_retrain=True",
            )
        return None


#: ``batched="auto"`` switches to the batched path when ``N * K`` exceeds
#: this (cleanlab's own "big dataset" size)
BATCHED_MIN_SIZE = 1e8

#: how far a row of probabilities may sum from one
SUM_TOLERANCE = 1e-3


def validate_pred_probs(
    pred_probs, num_samples=None, num_classes=None, name="pred_probs"
):
    """Checks an (N, K) array of class probabilities and returns it as
    float64.

    Args:
        pred_probs: array-like of shape (N, K)
        num_samples (None): the expected N
        num_classes (None): the expected K
        name ("pred_probs"): what to call the array in error messages

    Returns:
        an (N, K) float64 array

    Raises:
        HardnessError: wrong shape, NaN/inf, values outside [0, 1], or rows
            that do not sum to one (within :data:`SUM_TOLERANCE`)
    """
    try:
        probs = np.asarray(pred_probs, dtype=np.float64)
    except (TypeError, ValueError):
        raise HardnessError(
            "%s must be a numeric (N, K) array of class probabilities" % name
        )
    if probs.ndim != 2:
        raise HardnessError(
            "%s must have shape (N, K); got %s" % (name, probs.shape)
        )
    if num_samples is not None and len(probs) != num_samples:
        raise HardnessError(
            "%s has %d rows but there are %d labels"
            % (name, len(probs), num_samples)
        )
    if num_classes is not None and probs.shape[1] != num_classes:
        raise HardnessError(
            "%s has %d columns but there are %d classes"
            % (name, probs.shape[1], num_classes)
        )
    if not np.isfinite(probs).all():
        rows = np.flatnonzero(~np.isfinite(probs).all(axis=1))
        raise HardnessError(
            "%s has NaN or inf values in %d rows (e.g. row %d)"
            % (name, len(rows), rows[0])
        )
    if probs.min() < -SUM_TOLERANCE or probs.max() > 1 + SUM_TOLERANCE:
        raise HardnessError(
            "%s must hold probabilities in [0, 1]; got values in [%g, %g]. "
            "Raw model outputs are logits: store them as the logits of a "
            "fo.Classification field instead"
            % (name, probs.min(), probs.max())
        )
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > SUM_TOLERANCE)
    if len(bad):
        raise HardnessError(
            "%s rows must sum to one, but %d of %d do not (e.g. row %d sums "
            "to %.6g); pass normalized probabilities (softmax), or logits in "
            "a fo.Classification field"
            % (name, len(bad), len(probs), bad[0], sums[bad[0]])
        )
    return np.clip(probs, 0.0, 1.0)


def logits_to_probs(logits, name="logits"):
    """Softmax of an (N, K) array of logits, in float64. ``-inf`` logits are
    allowed (probability zero).

    Raises:
        HardnessError: NaN or +inf logits, or a row with only ``-inf``
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise HardnessError(
            "%s must have shape (N, K); got %s" % (name, logits.shape)
        )
    bad = np.isnan(logits) | (logits == np.inf)
    row_max = logits.max(axis=1, keepdims=True)
    bad_rows = bad.any(axis=1) | ~np.isfinite(row_max[:, 0])
    if bad_rows.any():
        rows = np.flatnonzero(bad_rows)
        raise HardnessError(
            "%s has NaN, +inf or all -inf values in %d rows (e.g. row %d)"
            % (name, len(rows), rows[0])
        )
    exp = np.exp(logits - row_max)
    return exp / exp.sum(axis=1, keepdims=True)


def _check_option(name, value):
    """Refuses a value of :class:`CleanlabConfig` parameter ``name`` that
    it does not accept, with the config's message (the array functions are
    also called directly, without a config)."""
    message = CleanlabConfig.parameter(name).error(value)
    if message is not None:
        raise HardnessError(message)


def label_quality_scores(labels, pred_probs, method="self_confidence"):
    """Returns cleanlab's per-sample label quality (higher = better label),
    :func:`cleanlab.rank.get_label_quality_scores`, or for a list of
    probability arrays :func:`cleanlab.rank.get_label_quality_ensemble_scores`
    (members weighted by their accuracy)."""
    import cleanlab.rank

    _check_option("score_method", method)
    if isinstance(pred_probs, (list, tuple)):
        if len(pred_probs) == 1:
            pred_probs = pred_probs[0]
        else:
            return cleanlab.rank.get_label_quality_ensemble_scores(
                labels, list(pred_probs), method=method, verbose=False
            )
    return cleanlab.rank.get_label_quality_scores(
        labels, pred_probs, method=method
    )


def find_issues(
    labels,
    pred_probs,
    filter_by="prune_by_noise_rate",
    batched="auto",
    batch_size=100000,
    n_jobs=1,
):
    """Flags likely label issues.

    The exact path calls :func:`cleanlab.filter.find_label_issues` unchanged
    (so the flags equal cleanlab's on the same arrays). The batched path,
    :func:`cleanlab.experimental.label_issues_batched.find_label_issues_batched`,
    reads the arrays in chunks with bounded memory and approximates
    ``filter_by="low_self_confidence"``; it is used for very large inputs.

    Args:
        labels: (N,) int array of class indices
        pred_probs: (N, K) out-of-sample probabilities
        filter_by ("prune_by_noise_rate"): one of :data:`FILTER_BY`
        batched ("auto"): True, False, or "auto" (batched when ``N * K``
            exceeds :data:`BATCHED_MIN_SIZE`)
        batch_size (100000): rows per chunk of the batched path
        n_jobs (1): processes for cleanlab (results do not depend on it)

    Returns:
        a tuple ``(mask, how)``: the (N,) bool flags and a string naming the
        rule that produced them
    """
    _check_option("filter_by", filter_by)
    if batched == "auto":
        batched = pred_probs.size > BATCHED_MIN_SIZE
    if batched:
        from cleanlab.experimental.label_issues_batched import (
            find_label_issues_batched,
        )

        mask = find_label_issues_batched(
            labels=labels,
            pred_probs=pred_probs,
            batch_size=int(batch_size),
            n_jobs=n_jobs,
            verbose=False,
            return_mask=True,
        )
        return np.asarray(mask, dtype=bool), "batched low_self_confidence"

    from cleanlab.filter import find_label_issues

    mask = find_label_issues(
        labels, pred_probs, filter_by=filter_by, n_jobs=n_jobs
    )
    return np.asarray(mask, dtype=bool), filter_by


def health_summary(labels, pred_probs, classes=None, max_pairs=20):
    """The pieces of :func:`cleanlab.dataset.health_summary`, as plain
    JSON-serializable values, computed from one confident joint.

    Args:
        labels: (N,) int array of class indices
        pred_probs: (N, K) out-of-sample probabilities
        classes (None): the K class names (default: the indices as strings)
        max_pairs (20): how many overlapping class pairs to keep

    Returns:
        a dict with

        - ``health_score``: cleanlab's overall label health score,
          ``1 - num_label_issues / N``
        - ``num_label_issues`` and ``noise_rate``
          (``num_label_issues / N``), cleanlab's estimate of the number of
          wrong labels (:func:`cleanlab.count.num_label_issues`)
        - ``class_quality``: class -> label quality score
          ``p(true = k | given = k)``, for the classes that have labels
        - ``class_label_issues``: class -> dict with ``label_issues``,
          ``inverse_label_issues``, ``label_noise``, ``inverse_label_noise``
        - ``overlapping_classes``: list of dicts ``class_a``, ``class_b``,
          ``num_overlapping``, ``joint_probability``, most overlapping first,
          pairs with no overlap left out
        - ``joint``: dict with ``classes``, ``matrix`` (K x K,
          ``matrix[i][j]`` = estimated joint probability of given label i and
          true label j), ``rows`` ("given label") and ``columns``
          ("true label")
    """
    import cleanlab.count
    import cleanlab.dataset

    num_samples, num_classes = pred_probs.shape
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    classes = [str(c) for c in classes]
    confident_joint = cleanlab.count.compute_confident_joint(
        labels, pred_probs
    )
    joint = cleanlab.count.estimate_joint(
        labels, pred_probs, confident_joint=confident_joint
    )
    num_issues = int(cleanlab.count.num_label_issues(labels, pred_probs))
    ranked = cleanlab.dataset.rank_classes_by_label_quality(
        joint=joint, num_examples=num_samples
    )
    counts = np.bincount(labels, minlength=num_classes)
    class_quality = {}
    class_issues = {}
    for row in ranked.to_dict("records"):
        k = int(row["Class Index"])
        if not counts[k]:
            continue
        class_quality[classes[k]] = float(row["Label Quality Score"])
        class_issues[classes[k]] = {
            "label_issues": int(row["Label Issues"]),
            "inverse_label_issues": int(row["Inverse Label Issues"]),
            "label_noise": float(row["Label Noise"]),
            "inverse_label_noise": float(row["Inverse Label Noise"]),
        }
    overlapping = cleanlab.dataset.find_overlapping_classes(
        joint=joint, num_examples=num_samples
    )
    pairs = []
    for row in overlapping.to_dict("records"):
        if row["Num Overlapping Examples"] <= 0 or len(pairs) >= max_pairs:
            break
        pairs.append(
            {
                "class_a": classes[int(row["Class Index A"])],
                "class_b": classes[int(row["Class Index B"])],
                "num_overlapping": int(row["Num Overlapping Examples"]),
                "joint_probability": float(row["Joint Probability"]),
            }
        )
    return {
        "health_score": float(1.0 - num_issues / float(num_samples)),
        "num_label_issues": num_issues,
        "noise_rate": float(num_issues / float(num_samples)),
        "class_quality": class_quality,
        "class_label_issues": class_issues,
        "overlapping_classes": pairs,
        "joint": {
            "classes": classes,
            "rows": "given label",
            "columns": "true label",
            "matrix": np.asarray(joint, dtype=float).tolist(),
        },
    }


def confident_learning(
    labels,
    pred_probs,
    classes=None,
    score_method="self_confidence",
    filter_by="prune_by_noise_rate",
    batched="auto",
    batch_size=100000,
    n_jobs=1,
):
    """Confident learning on out-of-sample probabilities.

    Args:
        labels: (N,) int array of given class indices
        pred_probs: an (N, K) array of out-of-sample probabilities, or a
            list of them (an ensemble: scores by
            :func:`cleanlab.rank.get_label_quality_ensemble_scores`, flags
            and health summary on the members' mean)
        classes (None): the K class names
        score_method ("self_confidence"): one of :data:`SCORE_METHODS`
        filter_by ("prune_by_noise_rate"): one of :data:`FILTER_BY`
        batched ("auto"): see :func:`find_issues`
        batch_size (100000): see :func:`find_issues`
        n_jobs (1): see :func:`find_issues`

    Returns:
        a dict with the per-sample arrays ``score`` (``1 - label quality``),
        ``flag`` (bool), ``pred`` (argmax class index) and ``pred_probs``
        (the probabilities used for the flags), and ``results`` (the
        :func:`health_summary` pieces plus ``num_flagged``, ``threshold``,
        ``score_method``, ``filter_by``, ``flag_rule``, ``pred_accuracy``).
        ``threshold`` is the lowest score of a flagged sample (None when
        nothing is flagged): cleanlab's rules are not a cut on the score,
        so a few unflagged samples may score higher

    Raises:
        HardnessError: bad shapes, labels out of range, probabilities that
            are not probabilities, unknown options
    """
    for name, value in (
        ("score_method", score_method),
        ("filter_by", filter_by),
        ("batched", batched),
    ):
        _check_option(name, value)
    members, probs = _ensemble_mean(pred_probs)
    num_samples, num_classes = probs.shape
    labels, _, _ = check_labels(labels, num_classes, what="Confident learning")
    if len(labels) != num_samples:
        raise HardnessError(
            "pred_probs has %d rows but there are %d labels"
            % (num_samples, len(labels))
        )
    if classes is not None and len(classes) != num_classes:
        raise HardnessError(
            "%d class names for %d probability columns"
            % (len(classes), num_classes)
        )

    quality = label_quality_scores(
        labels, members if members is not None else probs, score_method
    )
    score = 1.0 - np.asarray(quality, dtype=float)
    flags, rule = find_issues(
        labels,
        probs,
        filter_by=filter_by,
        batched=batched,
        batch_size=batch_size,
        n_jobs=n_jobs,
    )
    results = health_summary(labels, probs, classes=classes)
    pred = probs.argmax(axis=1)
    results.update(
        num_flagged=int(flags.sum()),
        threshold=float(score[flags].min()) if flags.any() else None,
        score_method=score_method,
        filter_by=filter_by,
        flag_rule=rule,
        pred_accuracy=float(np.mean(pred == labels)),
        num_ensemble_members=len(members) if members is not None else 1,
    )
    return {
        "score": score,
        "flag": flags,
        "pred": pred,
        "pred_probs": probs,
        "results": results,
    }


def _ensemble_mean(pred_probs):
    """Validates one (N, K) array of probabilities, or a list of them (an
    ensemble), and returns ``(members or None, probabilities)``, the
    probabilities of an ensemble being the members' mean."""
    if not isinstance(pred_probs, (list, tuple)):
        return None, validate_pred_probs(pred_probs)
    if not pred_probs:
        raise HardnessError("An ensemble needs at least one member")
    members = [
        validate_pred_probs(p, name="pred_probs[%d]" % i)
        for i, p in enumerate(pred_probs)
    ]
    shapes = {p.shape for p in members}
    if len(shapes) > 1:
        raise HardnessError(
            "Ensemble members have different shapes %s" % sorted(shapes)
        )
    return members, np.mean(members, axis=0)


def remove_and_retrain(
    X,
    labels,
    flags,
    num_classes=None,
    test_fraction=0.2,
    eval_labels=None,
    model="logreg",
    seed=0,
    device=None,
    **probe_kwargs,
):
    """Does removing the flagged samples help? Trains the same probe twice on
    one training split, once on all its samples and once without the flagged
    ones, and compares their accuracy on the held-out split.

    Args:
        X: (N, D) features
        labels: (N,) given class indices
        flags: (N,) bool, the samples to remove from training
        num_classes (None): K; defaults to ``labels.max() + 1``
        test_fraction (0.2): the held-out fraction (stratified, seeded)
        eval_labels (None): (N,) class indices to evaluate against, e.g.
            verified labels. By default the held-out samples are evaluated
            against their given labels, leaving out the flagged ones (whose
            given labels are suspect)
        model ("logreg"): the probe, ``"logreg"`` or ``"mlp"``
        seed (0): seed of the split and the probe
        device (None): torch device
        **probe_kwargs: passed to
            :func:`fiftyone_hardness.methods.probes.fit_predict_probs`

    Returns:
        a dict with ``accuracy_all`` (trained on every training sample),
        ``accuracy_cleaned`` (flagged ones removed), ``gain``,
        ``num_train``, ``num_removed``, ``num_test``, ``evaluated_on``,
        ``model``
    """
    labels, num_classes, _ = check_labels(
        labels, num_classes, what="Remove and retrain"
    )
    X = check_features(X, num_rows=len(labels))
    flags = np.asarray(flags, dtype=bool)
    if flags.shape != labels.shape:
        raise HardnessError(
            "Got %d flags for %d labels" % (len(flags), len(labels))
        )
    if not 0 < test_fraction < 1:
        raise HardnessError("test_fraction must be in (0, 1)")
    n_folds = max(2, int(round(1.0 / test_fraction)))
    folds = probes.stratified_folds(labels, n_folds=n_folds, seed=seed)
    test = folds == 0
    train_all = ~test
    train_clean = train_all & ~flags
    if eval_labels is None:
        evaluate = test & ~flags
        targets = labels
        evaluated_on = "given labels of the unflagged held-out samples"
    else:
        evaluate = test
        targets = np.asarray(eval_labels, dtype=np.int64)
        evaluated_on = "eval_labels of all held-out samples"
    if not evaluate.any():
        raise HardnessError("No held-out sample to evaluate on")
    if len(np.unique(labels[train_clean])) < 2:
        raise HardnessError(
            "Removing the flagged samples leaves fewer than 2 classes"
        )
    accuracies = []
    for train in (train_all, train_clean):
        probs = probes.fit_predict_probs(
            X[train],
            labels[train],
            X[evaluate],
            num_classes,
            model=model,
            seed=seed,
            device=device,
            **probe_kwargs,
        )
        accuracies.append(float(np.mean(probs.argmax(1) == targets[evaluate])))
    return {
        "accuracy_all": accuracies[0],
        "accuracy_cleaned": accuracies[1],
        "gain": accuracies[1] - accuracies[0],
        "num_train": int(train_all.sum()),
        "num_removed": int((train_all & flags).sum()),
        "num_test": int(evaluate.sum()),
        "evaluated_on": evaluated_on,
        "model": model,
    }


# --------------------------------------------------------------------------
# The "cleanlab" method
# --------------------------------------------------------------------------


@dataclass
class _Probabilities:
    """Out-of-sample probabilities and what they are of.

    Attributes:
        pred_probs: an (N, K) array, or a list of them (an ensemble)
        labels: (N,) given labels as indices into ``classes``
        classes: the K class names of the columns
        source: how they were made (``"pred_field:..."`` or the probe)
        cv_accuracy: the probe's cross-validated accuracy (None for
            predictions)
        probe: the probe's description (None for predictions)
        features: the embeddings the probe used (None for predictions)
    """

    pred_probs: object
    labels: np.ndarray
    classes: list
    source: str
    cv_accuracy: float = None
    probe: dict = None
    features: np.ndarray = None


def run_cleanlab(data, config):
    """Confident learning on a collection (the ``"cleanlab"`` method).

    Out-of-sample probabilities come from exactly one source:

    - ``pred_field``: an existing ``fo.Classification`` predictions field
      with ``logits`` (softmaxed), or a vector field of per-class
      probabilities (rows must sum to one); a list of fields makes an
      ensemble. The predictions must be out-of-sample (e.g. cross-validated)
      for confident learning to be meaningful. Logit columns are read in the
      class order given by ``classes``, else ``dataset.classes[pred_field]``,
      else ``dataset.default_classes``.
    - ``embeddings_field`` with ``probs="logreg"`` or ``"mlp"``: a
      ``n_folds``-fold cross-validated probe on the embeddings.
    - ``embeddings_field`` with ``probs="knn"``: the leave-one-out cosine
      ``k``-NN vote.

    Fields (suffixes): ``score`` (``1 - label quality``), ``flag``
    (:func:`cleanlab.filter.find_label_issues`), ``pred`` (the predicted
    class name) and, with ``store_probs``, ``probs``. See
    ``docs/methods.md`` section 2.

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData`
        config: a :class:`CleanlabConfig` (its parameters are documented
            there and in :func:`fiftyone_hardness.compute_cleanlab`)

    Returns:
        a :class:`fiftyone_hardness.methods.base.MethodOutput`
    """
    progress = getattr(data, "progress", None) or no_progress
    if config.pred_field:
        probs = _probabilities_from_predictions(data, config, progress)
    else:
        probs = _probabilities_from_probe(data, config, progress)

    progress(0.9, "confident learning")
    found = confident_learning(
        probs.labels,
        probs.pred_probs,
        classes=probs.classes,
        score_method=config.score_method,
        filter_by=config.filter_by,
        batched=config.batched,
    )
    results = _run_results(found, probs)
    if config.remove_and_retrain:
        progress(0.95, "remove and retrain")
        results["remove_and_retrain"] = _retrain_without_flagged(
            data, config, probs, found["flag"]
        )
    return MethodOutput(
        fields=_run_fields(found, probs.classes, config.store_probs),
        results=results,
    )


def _probabilities_from_predictions(data, config, progress):
    """Reads the probabilities of the ``pred_field`` field(s) (several make
    an ensemble, which needs one class list)."""
    fields = (
        [config.pred_field]
        if isinstance(config.pred_field, str)
        else list(config.pred_field)
    )
    progress(0.05, "reading predictions")
    members, class_lists = [], []
    for field in fields:
        member, member_classes = _read_predictions(data, field, config.classes)
        members.append(member)
        class_lists.append(member_classes)
    if any(c != class_lists[0] for c in class_lists[1:]):
        raise HardnessError(
            "The prediction fields %s use different class lists; "
            "an ensemble needs the same classes in the same order"
            % ", ".join(fields)
        )
    classes = class_lists[0]
    return _Probabilities(
        pred_probs=members if len(members) > 1 else members[0],
        labels=_labels_in(data, classes, what="'%s'" % fields[0]),
        classes=classes,
        source="pred_field:%s" % ",".join(fields),
    )


def _probabilities_from_probe(data, config, progress):
    """Computes out-of-sample probabilities from ``embeddings_field``: the
    cross-validated probe, or the leave-one-out k-NN vote."""
    X = data.embeddings(config.embeddings_field)
    labels = np.asarray(data.labels, dtype=np.int64)
    classes = list(data.classes)

    def probe_progress(fraction, message=""):
        progress(0.05 + 0.8 * fraction, message)

    progress(0.05, "computing out-of-sample probabilities (%s)" % config.probs)
    if config.probs == "knn":
        result = probes.knn_vote_probs(
            X,
            labels,
            len(classes),
            k=config.k,
            device=config.device,
            progress=probe_progress,
        )
    else:
        result = probes.cross_val_probs(
            X,
            labels,
            len(classes),
            model=config.probs,
            n_folds=config.n_folds,
            seed=config.seed,
            device=config.device,
            progress=probe_progress,
            **(config.probe_kwargs or {}),
        )
    return _Probabilities(
        pred_probs=result.pred_probs,
        labels=labels,
        classes=classes,
        source=config.probs,
        cv_accuracy=result.cv_accuracy,
        probe=result.info,
        features=X,
    )


def _run_results(found, probs):
    """The run's results: the health summary and flag statistics of
    :func:`confident_learning`, plus where the probabilities came from."""
    results = found["results"]
    results.update(
        probs_source=probs.source,
        cv_accuracy=(
            probs.cv_accuracy
            if probs.cv_accuracy is not None
            else results["pred_accuracy"]
        ),
        probe=probs.probe,
    )
    return results


def _retrain_without_flagged(data, config, probs, flags):
    """Runs :func:`remove_and_retrain` on ``embeddings_field`` with the
    probe of the run (logistic regression after a k-NN vote or
    predictions)."""
    X = probs.features
    if X is None:
        X = data.embeddings(config.embeddings_field)
    eval_labels = None
    if config.eval_label_field:
        eval_labels = _labels_of_field(
            data, config.eval_label_field, probs.classes
        )
    return remove_and_retrain(
        X,
        probs.labels,
        flags,
        num_classes=len(probs.classes),
        eval_labels=eval_labels,
        model=config.probs if config.probs in PROBE_MODELS else "logreg",
        seed=config.seed,
        device=config.device,
        **(config.probe_kwargs or {}),
    )


def _run_fields(found, classes, store_probs):
    """The per-sample fields: score, flag, predicted class name and, with
    ``store_probs``, the probabilities."""
    fields = {
        "score": found["score"],
        "flag": found["flag"],
        "pred": np.asarray(classes, dtype=object)[found["pred"]],
    }
    if store_probs:
        fields["probs"] = found["pred_probs"]
    return fields


def _read_predictions(data, field, classes):
    """Returns ``(pred_probs, class_names)`` of one predictions field.

    Logits (a ``Classification``'s ``logits``) or per-class probabilities
    (a vector field) are read in chunks into one array (``data.matrix``);
    when that fails, through ``values()``, whose lists say what is wrong.
    """
    kind = "logits"
    array = data.matrix(field + ".logits")
    if array is None:
        try:
            logits = data.values(field + ".logits")
        except (ValueError, KeyError, AttributeError) as e:
            raise HardnessError(
                "Cannot read predictions from '%s': %s" % (field, e)
            )
        array = _stack(logits)
        if array is None:
            kind = "probabilities"
            array = data.matrix(field)
            if array is None:
                values = data.values(field)
                array = _stack(values)
                if array is None:
                    _raise_unreadable(field, logits, values)
    field_classes = _classes_for(data, field, classes)
    if array.shape[1] != len(field_classes):
        raise HardnessError(
            "'%s' holds %d %s per sample but its class list has %d classes "
            "(%s...); pass classes=[...] in the order of the %s"
            % (
                field,
                array.shape[1],
                kind,
                len(field_classes),
                ", ".join(map(str, field_classes[:5])),
                kind,
            )
        )
    if kind == "logits":
        probs = logits_to_probs(array, name="'%s' logits" % field)
        _check_class_order(data, field, probs, field_classes)
    else:
        probs = validate_pred_probs(array, name="'%s'" % field)
    return probs, field_classes


#: the largest fraction of predictions whose own ``label`` may disagree with
#: the argmax of their logits read in the assumed class order; above it the
#: order is wrong (a right order disagrees only on exact ties)
MAX_ORDER_DISAGREEMENT = 0.05


def _check_class_order(data, field, probs, field_classes):
    """Refuses logits whose columns are evidently in another class order
    than the one assumed: each prediction's own ``label`` then disagrees
    with the argmax as read, and every score would be meaningless."""
    try:
        predicted = data.values(field + ".label")
    except (ValueError, KeyError, AttributeError):
        return
    index = {c: i for i, c in enumerate(field_classes)}
    rows = [i for i, label in enumerate(predicted) if label in index]
    if not rows:
        return
    rows = np.asarray(rows)
    stated = np.array([index[predicted[i]] for i in rows])
    disagree = float(np.mean(probs[rows].argmax(axis=1) != stated))
    if disagree > MAX_ORDER_DISAGREEMENT:
        raise HardnessError(
            "The logits of '%s' do not follow the class order %s...: their "
            "argmax disagrees with the prediction's own label on %.0f%% of "
            "samples. Pass classes=[...] in the order of the logit columns "
            "(or set dataset.classes['%s'])"
            % (
                field,
                ", ".join(map(str, field_classes[:5])),
                100 * disagree,
                field,
            )
        )


def _stack(values):
    """Stacks per-sample vectors into an (N, K) float64 array, or returns
    None when they are not all numeric vectors of one length."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.ndim != 2 or array.shape[1] == 0:
        return None
    return array


def _raise_unreadable(field, logits, values):
    present = sum(1 for v in logits if _is_vector(v))
    missing = len(logits) - present
    if 0 < present:
        raise HardnessError(
            "%d of %d samples have no logits in '%s' (or the logits have "
            "different lengths); every labelled sample needs predictions"
            % (missing, len(logits), field)
        )
    first = next((v for v in values if v is not None), None)
    if first is None:
        raise HardnessError(
            "No sample has a value in '%s'; store the model's predictions "
            "there first" % field
        )
    if hasattr(first, "label"):
        raise HardnessError(
            "'%s' holds predictions without logits; confident learning needs "
            "per-class scores: store the model's logits "
            "(fo.Classification(label=..., logits=...)) or pass "
            "embeddings_field=... to compute out-of-sample probabilities"
            % field
        )
    raise HardnessError(
        "'%s' holds neither fo.Classification predictions with logits nor "
        "per-class probability vectors of one length" % field
    )


def _is_vector(value):
    try:
        return np.asarray(value, dtype=np.float64).ndim == 1
    except (TypeError, ValueError):
        return False


def _classes_for(data, field, classes):
    if isinstance(classes, dict):
        classes = classes.get(field)
    if classes is None:
        get_classes = getattr(data, "get_classes", None)
        classes = get_classes(field) if get_classes is not None else None
    if not classes:
        raise HardnessError(
            "Cannot tell which class each column of '%s' belongs to: pass "
            "classes=[...] (the class names in logit order), or set "
            "dataset.classes['%s'] or dataset.default_classes" % (field, field)
        )
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise HardnessError("The class list of '%s' has duplicates" % field)
    return classes


def _labels_in(data, classes, what):
    """The labels as indices into ``classes`` (which must contain every
    labelled class)."""
    index = {c: i for i, c in enumerate(classes)}
    missing = [c for c in data.classes if c not in index]
    if missing:
        raise HardnessError(
            "The labels in '%s' use classes that the predictions %s do not "
            "have: %s; the class sets must match (pass classes=[...] to name "
            "the prediction columns)"
            % (data.label_field, what, ", ".join(map(str, missing[:10])))
        )
    mapping = np.array([index[c] for c in data.classes], dtype=np.int64)
    return mapping[np.asarray(data.labels, dtype=np.int64)]


def _labels_of_field(data, field, classes):
    values = np.asarray(data.values(field + ".label"), dtype=object)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in set(values.tolist()) if v not in index})
    if unknown:
        raise HardnessError(
            "'%s' has labels that are not among the classes (%s)"
            % (field, ", ".join(unknown[:10]))
        )
    lookup = np.vectorize(index.__getitem__, otypes=[np.int64])
    return lookup(values)
