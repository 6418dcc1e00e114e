"""
Reading hardness runs for display: the figures, class difficulties, score
histograms, flagged-sample tables, agreement matrices and the views that the
Hardness panel and the run-management operators show.

Nothing here computes a hardness score: it reads the fields and results that
a run stored (:mod:`fiftyone_hardness.dataset_io.runs`) and aggregates them.
"""

import logging
import threading

import numpy as np

from fiftyone import ViewField as F

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.dataset_io.runs import list_hardness_runs

logger = logging.getLogger(__name__)

#: the result attributes shown as dataset-level figures, in display order:
#: (attribute, label)
FIGURES = [
    ("method", "Method"),
    ("label_field", "Label field"),
    ("num_samples", "Samples scored"),
    ("num_flagged", "Flagged"),
    ("noise_rate", "Estimated noise rate"),
    ("threshold", "Threshold"),
    ("chi_avg", "Dataset difficulty (chi_avg)"),
    ("classification_difficulty", "Normalized difficulty"),
    ("chi_rand", "chi_rand"),
    ("health_score", "Health score"),
]

#: rows of the flagged-samples table
TABLE_ROWS = 25

#: the most samples read to compute an agreement matrix
MAX_AGREEMENT_SAMPLES = 20000


#: serializes reading run results: the App server runs panel and operator
#: events in a thread pool, and concurrent reads of one run's stored results
#: (a shared GridFS handle on the dataset document) corrupt each other
_RESULTS_LOCK = threading.Lock()


def load_results(samples, run_key, check=True):
    """Returns the results of hardness run ``run_key`` on ``samples``,
    freshly read from the database (runs may be overwritten by other
    processes) and safely from several threads.

    Raises:
        HardnessError: if ``check`` and there is no hardness run with this
            key
    """
    if check and run_key not in list_hardness_runs(samples):
        raise HardnessError(
            "Dataset '%s' has no hardness run '%s'; its hardness runs: %s"
            % (
                samples._dataset.name,
                run_key,
                ", ".join(list_hardness_runs(samples)) or "none",
            )
        )
    with _RESULTS_LOCK:
        return samples.load_run_results(run_key, cache=False)


def score_fields(results):
    """Returns the score fields (``*_score``) a run wrote, main one first."""
    fields = [f for f in (results.fields or []) if f.endswith("_score")]
    main = "%s_score" % results.key
    if main in fields:
        fields.remove(main)
        fields.insert(0, main)
    return fields


def default_score_field(results):
    """Returns the run's main score field, or None when it wrote none."""
    fields = score_fields(results)
    return fields[0] if fields else None


def _prefix(score_field):
    return score_field[: -len("_score")]


def companion_field(results, score_field, suffix):
    """Returns the field ``{prefix}_{suffix}`` written next to
    ``score_field`` (e.g. its ``flag`` or ``pred``), or None."""
    name = "%s_%s" % (_prefix(score_field), suffix)
    return name if name in (results.fields or []) else None


def threshold_for(results, score_field, samples=None):
    """Returns the decision threshold of ``score_field`` in score units, or
    None.

    The run's ``threshold`` belongs to its main score field. For the other
    score fields of a run (e.g. those of ``dynamics``), a threshold that the
    method stored per sub-method (``results.thresholds[m]`` or
    ``results.methods[m]["threshold"]``) is used when it agrees with the
    flags; otherwise, when ``samples`` is given and the flags are exactly
    the scores above some value, the midpoint between the lowest flagged and
    the highest unflagged score. Flags that are not a score threshold (e.g.
    Data-IQ's groups) give None.
    """
    if score_field == "%s_score" % results.key:
        value = getattr(results, "threshold", None)
        return float(value) if _is_number(value) else None
    method = _prefix(score_field)[len(results.key) + 1 :]
    stored = None
    thresholds = getattr(results, "thresholds", None)
    methods = getattr(results, "methods", None)
    if isinstance(thresholds, dict) and _is_number(thresholds.get(method)):
        stored = float(thresholds[method])
    elif isinstance(methods, dict) and isinstance(methods.get(method), dict):
        value = methods[method].get("threshold")
        stored = float(value) if _is_number(value) else None
    flag_field = companion_field(results, score_field, "flag")
    if samples is None or flag_field is None:
        return stored
    lowest_flagged = samples.match(F(flag_field) == True).min(  # noqa: E712
        score_field
    )
    highest_unflagged = samples.match(
        F(flag_field) == False  # noqa: E712
    ).max(score_field)
    if lowest_flagged is None or highest_unflagged is None:
        return stored
    if lowest_flagged < highest_unflagged:
        return None  # the flags are not a threshold on this score
    if stored is not None and highest_unflagged <= stored <= lowest_flagged:
        return stored
    return (lowest_flagged + highest_unflagged) / 2.0


def _is_number(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and np.isfinite(value)
    )


def run_figures(results, score_field=None, samples=None):
    """Returns the dataset-level figures of a run as ``[(label, value)]``,
    only those the run has, numbers rounded for display.

    For a secondary score field of a multi-score run (e.g. one method of
    ``dynamics``), the figures of that score follow: its name, how many
    samples its flag marks (counted in ``samples`` when given) and the
    noise rate the method stored for it, if any.
    """
    figures = []
    for name, label in FIGURES:
        value = getattr(results, name, None)
        if value is None:
            continue
        figures.append((label, _display(value)))
    if score_field and score_field != "%s_score" % results.key:
        method = _prefix(score_field)[len(results.key) + 1 :]
        figures.append(("Score", score_field))
        flag_field = companion_field(results, score_field, "flag")
        if flag_field is not None and samples is not None:
            flagged = samples.count_values(flag_field).get(True, 0)
            figures.append(("Flagged by this score", flagged))
        methods = getattr(results, "methods", None)
        if isinstance(methods, dict) and isinstance(methods.get(method), dict):
            rate = methods[method].get("noise_rate")
            if _is_number(rate):
                figures.append(("Noise rate by this score", _display(rate)))
    return figures


def _display(value):
    return round(value, 4) if isinstance(value, float) else value


def class_difficulty(samples, results, score_field=None, max_classes=100):
    """Returns the per-class mean score, hardest first.

    For the run's main score field this is the run's stored
    ``class_scores`` (for RER, ``class_chis``); for other score fields of the
    run it is aggregated from the field.

    Args:
        samples: the collection the run is on
        results: the run's results
        score_field (None): the score field; the run's main one by default
        max_classes (100): return at most this many (the hardest) classes

    Returns:
        a list of ``(class, mean score)``, hardest first
    """
    score_field = score_field or default_score_field(results)
    scores = None
    if score_field == "%s_score" % results.key:
        scores = getattr(results, "class_scores", None) or getattr(
            results, "class_chis", None
        )
    if not scores and score_field:
        labels, values = samples.exists(score_field).values(
            [results.label_field + ".label", score_field]
        )
        sums, counts = {}, {}
        for label, value in zip(labels, values):
            if label is None or value is None:
                continue
            sums[label] = sums.get(label, 0.0) + float(value)
            counts[label] = counts.get(label, 0) + 1
        scores = {c: sums[c] / counts[c] for c in sums}
    items = [(str(c), float(v)) for c, v in (scores or {}).items()]
    items.sort(key=lambda kv: (-kv[1], kv[0]))
    return items[:max_classes]


def score_histogram(samples, score_field, bins=40):
    """Returns ``(counts, edges)`` of the values of ``score_field``, computed
    by the database."""
    bounds = samples.bounds(score_field)
    if bounds is None or bounds[0] is None:
        return [], []
    lo, hi = float(bounds[0]), float(bounds[1])
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges, _ = samples.histogram_values(
        score_field, bins=bins, range=(lo, hi + 1e-9 * max(1.0, abs(hi)))
    )
    return [int(c) for c in counts], [float(e) for e in edges]


def flagged_view(samples, results, score_field=None):
    """Returns the samples the run flagged for ``score_field``, hardest
    first. Without a flag field, the samples above the threshold; without
    either, every scored sample."""
    score_field = score_field or default_score_field(results)
    if score_field is None:
        raise HardnessError("Run '%s' wrote no score field" % results.key)
    flag_field = companion_field(results, score_field, "flag")
    if flag_field is not None:
        view = samples.match(F(flag_field) == True)  # noqa: E712
    else:
        threshold = threshold_for(results, score_field, samples)
        view = samples.exists(score_field)
        if threshold is not None:
            view = view.match(F(score_field) > threshold)
    return view.sort_by(score_field, reverse=True)


def class_view(samples, results, label, score_field=None):
    """Returns the scored samples labelled ``label``, hardest first."""
    score_field = score_field or default_score_field(results)
    view = samples.match(F(results.label_field + ".label") == label)
    return view.exists(score_field).sort_by(score_field, reverse=True)


def score_range_view(samples, score_field, lo, hi):
    """Returns the samples with ``lo <= score <= hi``, hardest first."""
    lo, hi = min(lo, hi), max(lo, hi)
    view = samples.match((F(score_field) >= lo) & (F(score_field) <= hi))
    return view.sort_by(score_field, reverse=True)


def flagged_rows(samples, results, score_field=None, limit=None):
    """Returns the ``limit`` (default :data:`TABLE_ROWS`) hardest flagged
    samples as table rows: dicts with ``id``, ``label``, ``predicted`` (or
    None) and ``score``."""
    score_field = score_field or default_score_field(results)
    limit = TABLE_ROWS if limit is None else limit
    view = flagged_view(samples, results, score_field).limit(limit)
    pred_field = companion_field(results, score_field, "pred")
    paths = ["id", results.label_field + ".label", score_field]
    if pred_field is not None:
        paths.append(pred_field)
    values = view.values(paths)
    preds = values[3] if pred_field is not None else [None] * len(values[0])
    return [
        {
            "id": i,
            "label": label,
            "predicted": None if pred is None else str(pred),
            "score": None if score is None else round(float(score), 4),
        }
        for i, label, score, pred in zip(
            values[0], values[1], values[2], preds
        )
    ]


def flagged_view_name(results, score_field=None):
    """Returns the saved-view name for a run's flagged samples:
    ``{run_key}-flagged`` (``{field prefix}-flagged`` for a secondary score
    field of the run)."""
    score_field = score_field or default_score_field(results)
    if score_field is None or score_field == "%s_score" % results.key:
        return "%s-flagged" % results.key
    return "%s-flagged" % _prefix(score_field)


def save_flagged_view(samples, results, score_field=None, name=None):
    """Saves the run's flagged samples, hardest first, as a saved view of
    the dataset (overwriting one of the same name).

    Returns:
        the saved view's name
    """
    name = name or flagged_view_name(results, score_field)
    view = flagged_view(samples, results, score_field)
    samples._dataset.save_view(
        name,
        view,
        description="Samples flagged by hardness run '%s', hardest first"
        % results.key,
        overwrite=True,
    )
    return name


def agreement_series(samples, run_keys=None):
    """Returns ``[(name, score field)]`` for every score field of the given
    hardness runs (all of them by default). Single-score runs are named by
    their key, the scores of multi-score runs by their field prefix."""
    if run_keys is None:
        run_keys = list_hardness_runs(samples)
    series = []
    for key in run_keys:
        results = load_results(samples, key, check=False)
        fields = score_fields(results)
        for field in fields:
            name = key if len(fields) == 1 else _prefix(field)
            series.append((name, field))
    return series


def agreement_matrix(
    samples, run_keys=None, max_samples=MAX_AGREEMENT_SAMPLES, seed=0
):
    """Returns the Spearman rank correlations between the scores of hardness
    runs, over the samples that have every score (a random subset of at most
    ``max_samples`` of them).

    Returns:
        ``(names, matrix, num_samples)``: the series names, a list of lists
        of correlations (None where undefined), and the samples used; names
        is empty when there are fewer than two score series
    """
    from scipy.stats import rankdata

    series = agreement_series(samples, run_keys)
    if len(series) < 2:
        return [], [], 0
    names, fields = zip(*series)
    view = samples
    for field in fields:
        view = view.exists(field)
    if len(view) > max_samples:
        view = view.take(max_samples, seed=seed)
    values = view.values(list(fields))
    X = np.asarray(values, dtype=float).T
    X = X[np.isfinite(X).all(axis=1)]
    if len(X) < 3:
        return list(names), [[None] * len(names)] * len(names), len(X)
    ranks = np.column_stack([rankdata(X[:, j]) for j in range(X.shape[1])])
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(ranks, rowvar=False)
    matrix = [
        [None if not np.isfinite(v) else round(float(v), 4) for v in row]
        for row in np.atleast_2d(corr)
    ]
    return list(names), matrix, len(X)
