"""
Reading hardness runs for display: the figures, class difficulties, score
histograms, flagged-sample tables, agreement matrices and the views that the
Hardness panel and the run-management operators show.

Nothing here computes a hardness score: it reads the fields and results that
a run stored through the run schema
(:meth:`fiftyone_hardness.dataset_io.runs.HardnessRunResults.scores`) and
aggregates them; no field name is parsed. A function that shows one score
of a run takes ``score``: a
:class:`~fiftyone_hardness.dataset_io.runs.RunScore` or a score name (None
for the run's default score).
"""

import logging
import threading

import numpy as np

from fiftyone import ViewField as F

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.dataset_io.runs import (
    RunScore,
    list_hardness_runs,
    run_scores,
)

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


def as_score(results, score=None):
    """Returns the :class:`~fiftyone_hardness.dataset_io.runs.RunScore` of
    the run's schema that ``score`` names: a ``RunScore``, a score name
    (see :meth:`HardnessRunResults.scores`), or None for the default one.

    Raises:
        HardnessError: the run has no such score, or no score at all
    """
    if isinstance(score, RunScore):
        return score
    return results.score(score)


def default_score_field(results):
    """Returns the run's main score field, or None when it wrote none."""
    scores = results.scores()
    return scores[0].score_field if scores else None


def threshold_for(results, score=None, samples=None):
    """Returns the decision threshold of a score of the run in score units,
    or None.

    The threshold the run stored for the score (see
    :class:`~fiftyone_hardness.dataset_io.runs.RunScore`) is used when it
    agrees with the flags. Otherwise, when ``samples`` is given and the
    flags are exactly the scores above some value, the midpoint between the
    lowest flagged and the highest unflagged score. Flags that are not a
    score threshold (e.g. Data-IQ's groups) give None. A run's main score
    keeps its stored threshold as is.

    Args:
        results: the run's results
        score (None): a ``RunScore`` or a score name; the default score
        samples (None): the collection, to check the flags against
    """
    score = as_score(results, score)
    stored = score.threshold
    if score.main:
        return stored
    if samples is None or score.flag_field is None:
        return stored
    field, flag = score.score_field, score.flag_field
    lowest_flagged = samples.match(F(flag) == True).min(field)  # noqa: E712
    highest_unflagged = samples.match(F(flag) == False).max(  # noqa: E712
        field
    )
    if lowest_flagged is None or highest_unflagged is None:
        return stored
    if lowest_flagged < highest_unflagged:
        return None  # the flags are not a threshold on this score
    if stored is not None and highest_unflagged <= stored <= lowest_flagged:
        return stored
    return (lowest_flagged + highest_unflagged) / 2.0


def run_figures(results, score=None, samples=None):
    """Returns the dataset-level figures of a run as ``[(label, value)]``,
    only those the run has, numbers rounded for display.

    For a sub-method's score of a multi-score run (e.g. one method of
    ``dynamics``), the figures of that score follow: its field, how many
    samples its flag marks (counted in ``samples`` when given) and its own
    noise-rate estimate, if any.
    """
    figures = []
    for name, label in FIGURES:
        value = getattr(results, name, None)
        if value is None:
            continue
        figures.append((label, _display(value)))
    if score is None:
        return figures
    score = as_score(results, score)
    if score.main:
        return figures
    figures.append(("Score", score.score_field))
    if score.flag_field is not None and samples is not None:
        flagged = samples.count_values(score.flag_field).get(True, 0)
        figures.append(("Flagged by this score", flagged))
    if score.noise_rate is not None:
        figures.append(
            ("Noise rate by this score", _display(score.noise_rate))
        )
    return figures


def _display(value):
    return round(value, 4) if isinstance(value, float) else value


def class_difficulty(samples, results, score=None, max_classes=100):
    """Returns the per-class mean score, hardest first.

    These are the class scores the run stored for the score (for RER's main
    score, ``class_chis``), else they are aggregated from its field.

    Args:
        samples: the collection the run is on
        results: the run's results
        score (None): a ``RunScore`` or a score name; the default score
        max_classes (100): return at most this many (the hardest) classes

    Returns:
        a list of ``(class, mean score)``, hardest first
    """
    score = as_score(results, score)
    scores = score.class_scores
    if not scores:
        labels, values = samples.exists(score.score_field).values(
            [results.label_field + ".label", score.score_field]
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


def flagged_view(samples, results, score=None):
    """Returns the samples the run flagged for a score, hardest first.
    Without a flag field, the samples above the threshold; without either,
    every scored sample.

    Args:
        samples: the collection the run is on
        results: the run's results
        score (None): a ``RunScore`` or a score name; the default score
    """
    score = as_score(results, score)
    if score.flag_field is not None:
        view = samples.match(F(score.flag_field) == True)  # noqa: E712
    else:
        threshold = threshold_for(results, score, samples)
        view = samples.exists(score.score_field)
        if threshold is not None:
            view = view.match(F(score.score_field) > threshold)
    return view.sort_by(score.score_field, reverse=True)


def scored_view(samples, results, score=None):
    """Returns every sample that has a score, hardest first."""
    field = as_score(results, score).score_field
    return samples.exists(field).sort_by(field, reverse=True)


def class_view(samples, results, label, score=None):
    """Returns the scored samples labelled ``label``, hardest first."""
    field = as_score(results, score).score_field
    # a literal: a class name starting with "$" would otherwise be read as
    # a field path by MongoDB's expression language
    view = samples.match(
        F(results.label_field + ".label") == F.literal(str(label))
    )
    return view.exists(field).sort_by(field, reverse=True)


def score_range_view(samples, score_field, lo, hi):
    """Returns the samples with ``lo <= score <= hi``, hardest first."""
    lo, hi = min(lo, hi), max(lo, hi)
    view = samples.match((F(score_field) >= lo) & (F(score_field) <= hi))
    return view.sort_by(score_field, reverse=True)


def flagged_rows(samples, results, score=None, limit=None):
    """Returns the ``limit`` (default :data:`TABLE_ROWS`) hardest flagged
    samples as table rows: dicts with ``id``, ``label``, ``predicted`` (or
    None) and ``score``."""
    score = as_score(results, score)
    limit = TABLE_ROWS if limit is None else limit
    view = flagged_view(samples, results, score).limit(limit)
    pred_field = score.companion("pred")
    paths = ["id", results.label_field + ".label", score.score_field]
    if pred_field is not None:
        paths.append(pred_field)
    values = view.values(paths)
    preds = values[3] if pred_field is not None else [None] * len(values[0])
    return [
        {
            "id": i,
            "label": label,
            "predicted": None if pred is None else str(pred),
            "score": None if value is None else round(float(value), 4),
        }
        for i, label, value, pred in zip(
            values[0], values[1], values[2], preds
        )
    ]


def flagged_view_name(results, score=None):
    """Returns the saved-view name for a run's flagged samples:
    ``{run_key}-flagged`` (``{run_key}_{name}-flagged`` for a sub-method's
    score)."""
    if not results.scores():
        return "%s-flagged" % results.key
    score = as_score(results, score)
    if score.main:
        return "%s-flagged" % results.key
    return "%s_%s-flagged" % (results.key, score.name)


def save_flagged_view(samples, results, score=None, name=None):
    """Saves the run's flagged samples, hardest first, as a saved view of
    the dataset (overwriting one of the same name).

    Returns:
        the saved view's name
    """
    name = name or flagged_view_name(results, score)
    view = flagged_view(samples, results, score)
    samples._dataset.save_view(
        name,
        view,
        description="Samples flagged by hardness run '%s', hardest first"
        % results.key,
        overwrite=True,
    )
    return name


def agreement_series(samples, run_keys=None):
    """Returns ``[(name, score field)]`` for every score of the given
    hardness runs (all of them by default), named by their consensus
    member name: ``run_key``, or ``run_key.method`` for the scores of a
    multi-score run."""
    if run_keys is None:
        run_keys = list_hardness_runs(samples)
    series = []
    for key in run_keys:
        results = load_results(samples, key, check=False)
        for score in results.scores():
            series.append((score.member, score.score_field))
    return series


def score_members(samples):
    """Returns the consensus members of ``samples``' hardness runs, read
    from the run schema: a dict ``member -> (label, [RunScore, ...])``.

    A run's main score is the member ``run_key``; each sub-method's score
    is ``run_key.method``; a run without a main score (``dynamics``) is
    also the member ``run_key``, standing for all its scores.
    """
    members = {}
    for key in list_hardness_runs(samples):
        config = samples.get_run_info(key).config
        scores = run_scores(key, config)
        subs = [s for s in scores if not s.main]
        for score in scores:
            if score.main:
                label = "%s (%s)" % (key, config.method)
                members[key] = (label, [score])
        if subs and key not in members:
            label = "%s: all %d methods" % (key, len(subs))
            members[key] = (label, subs)
        for score in subs:
            members[score.member] = (score.member, [score])
    return members


def resolve_member(samples, member, members=None):
    """Returns the ``RunScore`` list of consensus member ``member``.

    Raises:
        HardnessError: ``member`` names no score of any hardness run; the
            message lists the valid members
    """
    members = score_members(samples) if members is None else members
    if member not in members:
        raise HardnessError(
            "No hardness run score '%s' on dataset '%s' for the consensus; "
            "valid members: %s"
            % (
                member,
                samples._dataset.name,
                ", ".join(members) or "none (run a hardness method first)",
            )
        )
    return members[member][1]


def member_scores_loader(samples, load_values):
    """Returns the ``load_scores`` loader of a
    :class:`~fiftyone_hardness.methods.base.LabeledData`: ``member ->
    [(name, scores, flags or None)]``, the arrays read with
    ``load_values`` (so for exactly the data's samples), missing scores as
    NaN, flags None unless every sample has one."""

    def load_scores(member):
        out = []
        for score in resolve_member(samples, member):
            values = load_values(score.score_field)
            scores = np.array(
                [np.nan if v is None else float(v) for v in values],
                dtype=np.float64,
            )
            flags = None
            if score.flag_field is not None:
                raw = load_values(score.flag_field)
                if all(v is not None for v in raw):
                    flags = np.asarray(raw, dtype=bool)
            out.append((score.member, scores, flags))
        return out

    return load_scores


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
