"""
Score hardness runs against known hardness: AUROC / AUPRC (perturbed samples
are the positives, on the oriented score), precision / recall / F1 of the
flags, precision@k, the noise-rate estimate's error, and stability across
seeds (see ``docs/methods.md`` section 5).

::

    import fiftyone_hardness.benchmarking.injection as fhp
    import fiftyone_hardness.benchmarking.evaluation as fhe

    noisy = fhp.inject_hardness(dataset, "uniform", rate=0.1, seed=0)
    noisy.apply_hardness("cleanlab", embeddings_field="embeddings")
    figures = fhe.evaluate_run(noisy, "cleanlab")
    print(figures["cleanlab"]["auroc"])

The array-level computations live in
:mod:`fiftyone_hardness.benchmarking.metrics`.
"""

import logging

import numpy as np

from fiftyone_hardness.benchmarking import metrics as evaluation
from fiftyone_hardness.dataset_io import runs
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.benchmarking.injection import (
    SOURCE_ID_FIELD,
    TRUTH_FIELD,
)

logger = logging.getLogger(__name__)

DEFAULT_KS = evaluation.DEFAULT_KS


def load_truth(samples, truth_field=TRUTH_FIELD):
    """Returns the known-hardness mask of ``samples`` as a bool array
    (missing values are False).

    Raises:
        HardnessError: if ``truth_field`` does not exist
    """
    if not samples.has_field(truth_field):
        raise HardnessError(
            "Dataset '%s' has no truth field '%s'; create a perturbed clone "
            "with fiftyone_hardness.benchmarking.injection.inject_hardness, or pass the "
            "bool field that marks the known hard samples"
            % (samples._dataset.name, truth_field)
        )
    return np.array([bool(v) for v in samples.values(truth_field)], dtype=bool)


def evaluate_field(
    samples,
    score_field,
    truth_field=TRUTH_FIELD,
    flag_field=None,
    noise_rate=None,
    ks=DEFAULT_KS,
):
    """Evaluates any per-sample score field (higher = harder) against the
    known mask, e.g. a field written by another tool.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        score_field: the numeric field to evaluate
        truth_field ("hardness_truth"): the bool field of known hard samples
        flag_field (None): a bool field of the method's flags
        noise_rate (None): the method's estimated noise rate
        ks: the precision@k cut-offs

    Returns:
        a dict of figures, see
        :func:`fiftyone_hardness.benchmarking.metrics.evaluate_scores`
    """
    truth = load_truth(samples, truth_field)
    if not samples.has_field(score_field):
        raise HardnessError(
            "Dataset '%s' has no field '%s'"
            % (samples._dataset.name, score_field)
        )
    scores = _as_float(samples.values(score_field))
    flags = None
    if flag_field and samples.has_field(flag_field):
        flags = samples.values(flag_field)
    figures = evaluation.evaluate_scores(
        truth, scores, flags=flags, noise_rate=noise_rate, ks=ks
    )
    figures.update(score_field=score_field, flag_field=flag_field)
    return figures


def evaluate_run(samples, run_key, truth_field=TRUTH_FIELD, ks=DEFAULT_KS):
    """Evaluates every score of a hardness run against the known mask.

    The scores come from the run schema
    (:meth:`fiftyone_hardness.dataset_io.runs.HardnessRunResults.scores`):
    a single-method run has one, a ``dynamics`` run one per method. Each is
    evaluated with its flags and, where the run estimated one, its noise
    rate.

    Args:
        samples: the collection the run was computed on (or a view of it)
        run_key: the run key
        truth_field ("hardness_truth"): the bool field of known hard samples
        ks: the precision@k cut-offs

    Returns:
        a dict mapping each score's name (the method name for single-method
        runs, ``m`` for the method ``m`` of a ``dynamics`` run) to its
        figures (see
        :func:`fiftyone_hardness.benchmarking.metrics.evaluate_scores`) plus
        ``run_key``, ``method``, ``score_field`` and ``flag_field``; the main
        score of a run that reports a ``noise_rate_interval`` also gets it
        and ``noise_rate_covered`` (whether it holds the true rate)

    Raises:
        HardnessError: unknown run key, not a hardness run, no score, no
            truth field
    """
    results = _load_hardness_results(samples, run_key)
    scores = results.scores()
    if not scores:
        raise HardnessError("Run '%s' wrote no score field" % run_key)

    truth = load_truth(samples, truth_field)
    out = {}
    for score in scores:
        flag_field = score.flag_field
        if flag_field is not None and not samples.has_field(flag_field):
            flag_field = None
        values = _as_float(samples.values(score.score_field))
        flags = samples.values(flag_field) if flag_field else None
        figures = evaluation.evaluate_scores(
            truth, values, flags=flags, noise_rate=score.noise_rate, ks=ks
        )
        if score.main:
            figures.update(_interval_figures(results, figures))
        figures.update(
            run_key=run_key,
            method=results.method,
            score_field=score.score_field,
            flag_field=flag_field,
        )
        out[score.name] = figures
    return out


def _interval_figures(results, figures):
    """Whether a run's noise-rate interval (``noise_rate_interval`` in its
    results, e.g. the consensus's) covers the true rate."""
    interval = getattr(results, "noise_rate_interval", None)
    if not interval or len(interval) != 2 or None in interval:
        return {}
    low, high = float(interval[0]), float(interval[1])
    truth = figures["noise_rate_true"]
    return {
        "noise_rate_interval": [low, high],
        "noise_rate_covered": bool(low <= truth <= high),
    }


def _load_hardness_results(samples, run_key):
    if run_key not in samples.list_runs():
        raise HardnessError(
            "Dataset '%s' has no run '%s'; runs: %s"
            % (
                samples._dataset.name,
                run_key,
                ", ".join(samples.list_runs()) or "none",
            )
        )
    config = samples.get_run_info(run_key).config
    if not isinstance(config, runs.HardnessRunConfig):
        raise HardnessError("Run '%s' is not a hardness run" % run_key)
    return samples.load_run_results(run_key)


def evaluate_runs(
    samples, run_keys=None, truth_field=TRUTH_FIELD, ks=DEFAULT_KS
):
    """Evaluates several hardness runs (by default all of them).

    Returns:
        a dict ``run_key -> evaluate_run(...)``
    """
    if run_keys is None:
        run_keys = runs.list_hardness_runs(samples)
    return {
        key: evaluate_run(samples, key, truth_field=truth_field, ks=ks)
        for key in run_keys
    }


def stability_across(collections, score_field, key_field=SOURCE_ID_FIELD):
    """Stability of a score over several collections of the same samples
    (e.g. perturbed clones made with different seeds): the mean pairwise
    Spearman correlation of ``score_field`` over the samples they share,
    matched by ``key_field`` (the source sample id of
    :func:`fiftyone_hardness.benchmarking.injection.inject_hardness` clones).

    With clones of different injection seeds, different samples are
    perturbed, so this measures the stability of the whole pipeline; for
    the method alone, score one clone several times and use
    :func:`stability_of_fields`.

    Returns:
        a float, or None for fewer than 2 collections

    Raises:
        HardnessError: missing fields, or fewer than 2 shared samples
    """
    tables = []
    for collection in collections:
        for field in (score_field, key_field):
            if not collection.has_field(field):
                raise HardnessError(
                    "Dataset '%s' has no field '%s'"
                    % (collection._dataset.name, field)
                )
        keys, values = collection.values([key_field, score_field])
        tables.append(dict(zip(keys, _as_float(values))))
    if len(tables) < 2:
        return None
    shared = set(tables[0])
    for table in tables[1:]:
        shared &= set(table)
    shared = sorted(k for k in shared if k is not None)
    if len(shared) < 2:
        raise HardnessError(
            "The collections share fewer than 2 samples by '%s'" % key_field
        )
    return evaluation.stability(
        [np.array([t[k] for k in shared]) for t in tables]
    )


def stability_of_fields(samples, score_fields):
    """Stability of a method over several runs on the same samples (e.g.
    the same perturbed clone scored with different training seeds): the
    mean pairwise Spearman correlation of the ``score_fields``.

    Returns:
        a float, or None for fewer than 2 fields
    """
    arrays = []
    for field in score_fields:
        if not samples.has_field(field):
            raise HardnessError(
                "Dataset '%s' has no field '%s'"
                % (samples._dataset.name, field)
            )
        arrays.append(_as_float(samples.values(field)))
    return evaluation.stability(arrays)


def _as_float(values):
    return np.array(
        [np.nan if v is None else float(v) for v in values], dtype=float
    )
