"""
Evaluation of hardness scores against known hardness (see
``docs/methods.md`` section 5), on arrays.

The perturbed (known hard / mislabeled) samples are the **positive** class,
and scores are oriented higher = harder, as every method in this package
stores them. So a perfect score gets AUROC = AUPRC = 1, a reversed one gets
AUROC = 0, and a random one gets AUROC ~ 0.5 and AUPRC ~ the fraction of
perturbed samples (reported as ``auprc_random`` beside it).
"""

import itertools
import logging

import numpy as np

from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

#: the precision@k cut-offs of :func:`evaluate_scores`; ``"num_perturbed"``
#: means k = the number of perturbed samples (= R-precision)
DEFAULT_KS = ("num_perturbed", 50, 100)


def auroc(truth, scores):
    """Area under the ROC curve with ``truth`` as the positive class.

    Returns:
        a float, or None when ``truth`` has only one class
    """
    truth, scores = _check(truth, scores)
    if truth.all() or not truth.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores))


def auprc(truth, scores):
    """Area under the precision-recall curve (average precision) with
    ``truth`` as the positive class.

    Returns:
        a float, or None when there is no positive sample
    """
    truth, scores = _check(truth, scores)
    if not truth.any():
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(truth, scores))


def flag_metrics(truth, flags):
    """Precision, recall and F1 of a method's flags.

    Precision is 0 when nothing is flagged and recall is 0 when nothing is
    perturbed (no division by zero); ``num_flagged`` tells the cases apart.

    Returns:
        a dict with ``precision``, ``recall``, ``f1``, ``num_flagged``,
        ``num_true_positives``
    """
    truth = np.asarray(truth, dtype=bool)
    flags = np.asarray(flags, dtype=bool)
    if truth.shape != flags.shape:
        raise HardnessError(
            "truth and flags have different lengths: %d vs %d"
            % (len(truth), len(flags))
        )
    tp = int(np.sum(truth & flags))
    num_flagged = int(flags.sum())
    num_true = int(truth.sum())
    precision = tp / num_flagged if num_flagged else 0.0
    recall = tp / num_true if num_true else 0.0
    denom = precision + recall
    f1 = 2 * precision * recall / denom if denom else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "num_flagged": num_flagged,
        "num_true_positives": tp,
    }


def precision_at_k(truth, scores, k):
    """The fraction of perturbed samples among the ``k`` highest scores.

    Ties at the cut-off are resolved in expectation (as if broken at
    random), so a constant score gets the base rate, not whatever the
    sample order happens to favour.

    Returns:
        a float, or None when ``k`` < 1
    """
    truth, scores = _check(truth, scores)
    k = int(min(k, len(scores)))
    if k < 1:
        return None
    order = np.argsort(-scores, kind="stable")
    cutoff = scores[order[k - 1]]
    above = scores > cutoff
    tied = scores == cutoff
    num_above = int(above.sum())
    hits = float(np.sum(truth & above))
    num_tied = int(tied.sum())
    hits += (k - num_above) * float(np.sum(truth & tied)) / num_tied
    return hits / k


def noise_rate_error(estimated, true_rate):
    """The error of a method's noise-rate estimate.

    Returns:
        a dict with ``noise_rate_estimate``, ``noise_rate_true``,
        ``noise_rate_error`` (estimate - truth) and ``noise_rate_abs_error``;
        the error entries are None when there is no estimate
    """
    out = {
        "noise_rate_estimate": None,
        "noise_rate_true": float(true_rate),
        "noise_rate_error": None,
        "noise_rate_abs_error": None,
    }
    if estimated is None:
        return out
    estimated = float(estimated)
    if not np.isfinite(estimated):
        return out
    out["noise_rate_estimate"] = estimated
    out["noise_rate_error"] = estimated - float(true_rate)
    out["noise_rate_abs_error"] = abs(estimated - float(true_rate))
    return out


def stability(score_sets):
    """Stability of a method across seeds: the mean pairwise Spearman rank
    correlation of its scores on the same samples.

    Args:
        score_sets: a list of (N,) score arrays, aligned sample by sample

    Returns:
        a float in [-1, 1], or None when fewer than 2 sets are given (or a
        set is constant, which has no rank correlation)
    """
    from scipy.stats import spearmanr

    arrays = [np.asarray(s, dtype=float) for s in score_sets]
    if len(arrays) < 2:
        return None
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise HardnessError(
            "stability needs score arrays over the same samples; got "
            "lengths %s" % [len(a) for a in arrays]
        )
    values = []
    for a, b in itertools.combinations(arrays, 2):
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
            return None
        values.append(spearmanr(a[ok], b[ok])[0])
    return float(np.mean(values))


def evaluate_scores(truth, scores, flags=None, noise_rate=None, ks=DEFAULT_KS):
    """Every figure of one method against the known perturbed mask.

    Missing scores (NaN, e.g. samples a method skipped) rank below every
    scored sample: a perturbed sample without a score counts as missed.

    Args:
        truth: (N,) bool array, True for perturbed samples
        scores: (N,) scores, higher = harder
        flags (None): (N,) bool array of the method's own flags
        noise_rate (None): the method's estimated noise rate
        ks: the precision@k cut-offs (ints, or ``"num_perturbed"``)

    Returns:
        a JSON-serializable dict: ``num_samples``, ``num_perturbed``,
        ``num_unscored``, ``auroc``, ``auprc``, ``auprc_random``,
        ``precision_at_<k>`` per cut-off, and, when given, the flag metrics
        of :func:`flag_metrics` and :func:`noise_rate_error`
    """
    truth = np.asarray(truth, dtype=bool)
    raw = np.asarray(scores, dtype=float)
    if raw.shape != truth.shape:
        raise HardnessError(
            "truth and scores have different lengths: %d vs %d"
            % (len(truth), len(raw))
        )
    unscored = ~np.isfinite(raw)
    scores = raw.copy()
    if unscored.any():
        floor = raw[~unscored].min() - 1.0 if (~unscored).any() else 0.0
        scores[unscored] = floor
    n = len(truth)
    num_perturbed = int(truth.sum())
    out = {
        "num_samples": n,
        "num_perturbed": num_perturbed,
        "num_unscored": int(unscored.sum()),
        "auroc": auroc(truth, scores),
        "auprc": auprc(truth, scores),
        "auprc_random": num_perturbed / n if n else None,
    }
    for k in ks:
        value = num_perturbed if k == "num_perturbed" else int(k)
        out["precision_at_%s" % k] = precision_at_k(truth, scores, value)
    if flags is not None:
        flags = np.asarray(
            [bool(f) if f is not None else False for f in flags]
        )
        out.update(flag_metrics(truth, flags))
    out.update(noise_rate_error(noise_rate, num_perturbed / n if n else 0))
    return out


def summarize(records, keys=None):
    """Mean and standard deviation of numeric entries over several
    evaluations (e.g. seeds of one setting).

    Args:
        records: a list of dicts from :func:`evaluate_scores`
        keys (None): the entries to summarize; by default every entry that
            is numeric in at least one record

    Returns:
        a dict ``key -> {"mean", "std", "n"}`` over the non-None values
    """
    if keys is None:
        keys = []
        for record in records:
            for key, value in record.items():
                if (
                    key not in keys
                    and isinstance(value, (int, float, np.number))
                    and not isinstance(value, bool)
                ):
                    keys.append(key)
    out = {}
    for key in keys:
        values = [float(r[key]) for r in records if r.get(key) is not None]
        out[key] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
            "n": len(values),
        }
    return out


def _check(truth, scores):
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if truth.shape != scores.shape:
        raise HardnessError(
            "truth and scores have different lengths: %d vs %d"
            % (len(truth), len(scores))
        )
    if not np.isfinite(scores).all():
        raise HardnessError(
            "scores hold NaN or inf values; use evaluate_scores, which "
            "ranks missing scores last"
        )
    return truth, scores
