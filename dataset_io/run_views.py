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

import hashlib
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

#: what each figure means, in plain words: (attribute, sentence); the
#: sentence may use ``{value}`` and, for counts, ``{percent}`` (of the
#: samples scored)
FIGURE_HELP = {
    "method": "The method that computed the scores",
    "label_field": "The labels that were scored",
    "num_samples": "Labelled samples that got a score",
    "num_flagged": "Samples flagged as likely mislabeled: {percent} of "
    "those scored",
    "noise_rate": "The share of labels the method estimates are wrong: "
    "about {percent_value} of the labels",
    "threshold": "A sample is flagged when its score is above this value",
    "chi_avg": "Raw dataset difficulty: the mean, over samples, of the "
    "error under their own class divided by the error under the best other "
    "class. Below 1: samples fit their own class better; near or above 1: "
    "classes overlap (about 0.77 for MNIST, 0.84 for CIFAR-10 with CLIP "
    "features)",
    "classification_difficulty": "Dataset difficulty {value}, on a 0 easy "
    "to 1 hard scale (chi_avg rescaled for the feature model)",
    "chi_rand": "The same ratio if every sample carried the class that fits "
    "it best: the reference for clean labels. The noise rate places the "
    "actual labels between this value (no noise) and 1 (random labels)",
    "health_score": "Overall label quality from 0 to 1, higher = cleaner "
    "(cleanlab's health summary)",
}

#: what the figures of a sub-method's score mean
SCORE_FIGURE_HELP = {
    "Score": "The field of the score shown",
    "Flagged by this score": "Samples this score flags: {percent} of those "
    "scored",
    "Noise rate by this score": "This score's own estimate of the share of "
    "wrong labels",
}

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


def explained_figures(results, score=None, samples=None):
    """Returns :func:`run_figures` with what each figure means, in plain
    words: ``[(label, value, meaning)]``."""
    labels = {label: name for name, label in FIGURES}
    scored = getattr(results, "num_samples", None) or 0
    rows = []
    for label, value in run_figures(results, score, samples):
        name = labels.get(label)
        text = FIGURE_HELP.get(name) or SCORE_FIGURE_HELP.get(label, "")
        rows.append((label, value, _fill_help(text, value, scored)))
    return rows


def _fill_help(text, value, scored):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    percent = "%.1f%%" % (100.0 * value / scored) if number and scored else "?"
    percent_value = "%.0f%%" % (100.0 * value) if number else "?"
    shown = "%.2f" % value if isinstance(value, float) else str(value)
    return text.format(
        value=shown, percent=percent, percent_value=percent_value
    )


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


def class_table(samples, results, score=None, max_classes=100):
    """Returns the classes of a run, hardest first, with how many of their
    scored samples are flagged: a list of dicts with ``class``, ``score``
    (the class's mean score, higher = harder for every method), ``flagged``,
    ``total`` (samples of the class that have a score) and ``noise``
    (``flagged / total``: the share of the class's labels the run calls
    wrong; None without flags).

    Args:
        samples: the collection the run is on
        results: the run's results
        score (None): a ``RunScore`` or a score name; the default score
        max_classes (100): at most this many (the hardest) classes
    """
    score = as_score(results, score)
    label_path = results.label_field + ".label"
    scored = samples.exists(score.score_field)
    totals = scored.count_values(label_path)
    flagged_counts = {}
    has_flags = score.flag_field is not None or (
        threshold_for(results, score, samples) is not None
    )
    if has_flags:
        flagged_counts = flagged_view(samples, results, score).count_values(
            label_path
        )
    rows = []
    for label, mean in class_difficulty(samples, results, score, max_classes):
        total = int(totals.get(label, 0))
        flagged = int(flagged_counts.get(label, 0)) if has_flags else None
        rows.append(
            {
                "class": label,
                "score": mean,
                "flagged": flagged,
                "total": total,
                "noise": (
                    round(flagged / total, 4) if has_flags and total else None
                ),
            }
        )
    return rows


def fitted_range(values, pad=0.08):
    """Returns ``(lo, hi)``: an axis range around ``values`` with ``pad``
    of their spread on each side, so that small differences show (bars of
    0.93 to 0.98 do not all look alike) and negative values fit."""
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    spread = hi - lo
    if spread <= 0:
        spread = max(abs(hi), 1.0) * 0.1
    return lo - pad * spread, hi + pad * spread


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
    statuses = review_statuses(samples, results.label_field, values[0])
    return [
        {
            "id": i,
            "label": label,
            "predicted": None if pred is None else str(pred),
            "score": None if value is None else round(float(value), 4),
            "review": statuses.get(i, ""),
        }
        for i, label, value, pred in zip(
            values[0], values[1], values[2], preds
        )
    ]


def predicted_class(samples, sample_id, label_field=None):
    """Returns ``(run key, class)``: the class that the newest hardness run
    with a prediction (a ``pred`` field beside its main score, e.g. RER's
    and cleanlab's ``{run_key}_pred``) predicts for a sample, or
    ``(None, None)``. With ``label_field``, only runs that scored it.

    What a review form prefills as the correct class.
    """
    for run in runs_newest_first(samples):
        results = load_results(samples, run["key"], check=False)
        if label_field is not None and results.label_field != label_field:
            continue
        scores = results.scores()
        field = scores[0].companion("pred") if scores else None
        if field is None:
            continue
        values = samples._dataset.select([sample_id]).values(field)
        if values and values[0] is not None:
            return run["key"], str(values[0])
    return None, None


def review_statuses(samples, label_field, ids):
    """Returns ``{sample id: "right" | "wrong -> X"}`` for the samples of
    ``ids`` that have a review verdict (see
    :mod:`fiftyone_hardness.dataset_io.review`)."""
    field = "%s_reviewed" % label_field
    dataset = samples._dataset
    if not ids or not dataset.has_sample_field(field):
        return {}
    view = dataset.select(list(ids)).exists(field)
    found, verdicts, labels = view.values(
        ["id", field + ".verdict", field + ".label"]
    )
    statuses = {}
    for i, verdict, label in zip(found, verdicts, labels):
        if verdict == "wrong":
            statuses[i] = "wrong -> %s" % label
        elif verdict == "right":
            statuses[i] = "right"
    return statuses


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
    samples,
    run_keys=None,
    max_samples=MAX_AGREEMENT_SAMPLES,
    seed=0,
    series=None,
):
    """Returns the Spearman rank correlations between the scores of hardness
    runs, over the samples that have every score (a random subset of at most
    ``max_samples`` of them).

    ``series`` (names from :func:`agreement_series`) keeps only those
    scores, in the order of :func:`agreement_series`.

    Returns:
        ``(names, matrix, num_samples)``: the series names, a list of lists
        of correlations (None where undefined), and the samples used; names
        is empty when there are fewer than two score series
    """
    from scipy.stats import rankdata

    keep = None if series is None else set(series)
    series = [
        s
        for s in agreement_series(samples, run_keys)
        if keep is None or s[0] in keep
    ]
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


def runs_newest_first(samples):
    """Returns the hardness runs of ``samples`` as dicts with ``key``,
    ``method``, ``id`` (the run document's id: it survives a rename) and
    ``timestamp`` (ISO, when the run was made), newest first."""
    runs = []
    for key in list_hardness_runs(samples):
        info = samples.get_run_info(key)
        runs.append(
            {
                "key": key,
                "method": getattr(info.config, "method", None),
                "id": _run_doc_id(samples, key),
                "timestamp": (
                    info.timestamp.isoformat() if info.timestamp else ""
                ),
            }
        )
    runs.sort(key=lambda r: (r["timestamp"], r["key"]), reverse=True)
    return runs


def _run_doc_id(samples, key):
    import fiftyone.core.runs as fors

    doc = fors.Run._get_run_doc(samples, key)
    return str(getattr(doc, "id", None) or key)


def change_signatures(dataset_id=None, dataset_name=None):
    """Returns ``(runs signature, samples signature)`` of a dataset, read
    straight from the database in three small queries, without loading the
    dataset (what the panel's timer asks every few seconds):

    - the runs: each run's key, document id, timestamp and whether its
      results are saved. Changes when a run is added, deleted, renamed,
      written again, or finishes being written;
    - the samples: their number and the latest ``last_modified_at`` (one
      lookup on FiftyOne's index). Changes when any sample is edited: a
      label, a review, a run's fields.

    Both are None when there is no such dataset.
    """
    import fiftyone.core.odm as foo
    from bson import ObjectId

    db = foo.get_db_conn()
    query = (
        {"_id": ObjectId(str(dataset_id))}
        if dataset_id
        else {"name": dataset_name}
    )
    doc = db.datasets.find_one(
        query, {"runs": True, "sample_collection_name": True}
    )
    if doc is None:
        return None, None
    refs = [getattr(r, "id", r) for r in (doc.get("runs") or {}).values()]
    runs = db.runs.find(
        {"_id": {"$in": refs}},
        {"key": True, "timestamp": True, "results": True},
    )
    runs_sig = "|".join(
        sorted(
            "%s@%s@%s@%d"
            % (
                r.get("key"),
                r["_id"],
                r.get("timestamp"),
                r.get("results") is not None,
            )
            for r in runs
        )
    )
    coll = db[doc["sample_collection_name"]]
    latest = coll.find_one(
        {}, {"last_modified_at": True}, sort=[("last_modified_at", -1)]
    )
    samples_sig = "%d@%s" % (
        coll.estimated_document_count(),
        (latest or {}).get("last_modified_at"),
    )
    return runs_sig, samples_sig


def runs_signature(samples):
    """The runs part of :func:`change_signatures`."""
    return change_signatures(dataset_id=samples._dataset._doc.id)[0]


def samples_signature(samples):
    """The samples part of :func:`change_signatures`."""
    return change_signatures(dataset_id=samples._dataset._doc.id)[1]


def labels_digest(ids, labels):
    """Returns a short fingerprint of ``(sample id, label)`` pairs,
    independent of their order: the SHA-1 of the sorted pairs, 16 hex
    digits. A run stores it as ``labels_digest`` so that the App can tell
    when the labels it scored change (see
    :func:`fiftyone_hardness.dataset_io.review_queue.run_staleness`)."""
    pairs = sorted(zip((str(i) for i in ids), (str(v) for v in labels)))
    digest = hashlib.sha1()
    for sample_id, label in pairs:
        digest.update(("%s\t%s\n" % (sample_id, label)).encode("utf-8"))
    return digest.hexdigest()[:16]


def data_labels_digest(data):
    """:func:`labels_digest` of a
    :class:`~fiftyone_hardness.methods.base.LabeledData`'s samples."""
    names = np.asarray(data.classes, dtype=object)[np.asarray(data.labels)]
    return labels_digest(data.ids, names)
