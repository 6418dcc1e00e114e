"""
Hardness runs in FiftyOne: the run classes and the one write path.

Reading labelled data is :mod:`fiftyone_hardness.dataset_io.data`.

- :func:`save_run` writes a method's per-sample arrays back in bulk and
  registers the run (:class:`HardnessRunConfig`, :class:`HardnessRun`,
  :class:`HardnessRunResults`), so that ``dataset.load_run_results(key)``,
  ``dataset.rename_run(...)`` and ``dataset.delete_run(key)`` work from any
  Python process.
- Each run's fields form one sidebar group in the App,
  ``hardness: {run_key}`` (:func:`sidebar_group_name`), created when the
  run is written and renamed or removed with the run; groups the user made
  are never touched.
- :meth:`HardnessRunResults.scores` is the run schema: one
  :class:`RunScore` per score of a run (its name, score and flag fields,
  noise-rate estimate, threshold, orientation), derived from the run key and
  the config's ``field_suffixes`` whenever it is read, so that renaming a
  run cannot leave it stale. Every reader of runs (run views, the panel, the
  operators, evaluation, consensus) goes through it.

The run classes live here, at a stable import path, because FiftyOne stores
the full class path of every run config in MongoDB.

Memory of the write path (:func:`write_fields`), for N rows and F scalar
columns: every value becomes a Python object (about 33 bytes, ``33 N F``
in all), and the ``UpdateOne`` operations (about ``0.7 KB + 17 F`` each)
are built and written :data:`WRITE_CHUNK_ROWS` rows at a time: about
``33 N F + 20000 x (0.7 KB + 17 F)`` bytes, 1.3 GB at N = 1M, F = 40 (a
``dynamics`` run), 0.1 GB at F = 3. A numeric (N, K) column (e.g.
cleanlab's stored probabilities) becomes lists one chunk at a time: about
``20000 x 37 K`` bytes (74 MB at K = 100) beyond the array, instead of
``37 N K`` through ``set_values`` (3.7 GB at 1M, K = 100).
"""

import datetime
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

import fiftyone as fo
import fiftyone.core.runs as fors

from fiftyone_hardness.dataset_io.locks import dataset_lock, hold_interrupts
from fiftyone_hardness.methods.base import HardnessError, class_means

logger = logging.getLogger(__name__)

_RUN_KEY_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class HardnessRunConfig(fors.RunConfig):
    """Configuration of a hardness run.

    Args:
        method: the hardness method name
        label_field: the ``fo.Classification`` field that was scored
        field_suffixes: the suffixes of the sample fields the run wrote; the
            fields are ``{run_key}_{suffix}``
        **kwargs: the method's JSON-serializable parameters
    """

    def __init__(
        self, method=None, label_field=None, field_suffixes=None, **kwargs
    ):
        super().__init__(method=method, **kwargs)
        self.label_field = label_field
        self.field_suffixes = list(field_suffixes or [])


class RunRenameError(BaseException):
    """Raised by :meth:`HardnessRun.rename` when a run cannot be renamed
    (a target field is taken, or the new key is malformed); nothing has
    changed.

    A ``BaseException``, like ``KeyboardInterrupt``, and not a
    :class:`HardnessError`, on purpose: FiftyOne's ``rename_run`` logs the
    ``Exception`` subclasses raised by a run's ``rename()`` and then renames
    the key anyway, which would leave the key and the fields out of step
    (and a later ``delete_run`` would delete the fields of the *new* name,
    e.g. a user's). Raising past that handler aborts the whole rename.
    The ``rename_hardness_run`` operator checks first and reports a
    :class:`HardnessError` instead.
    """


class HardnessRun(fors.Run):
    """A hardness run: its fields are ``{run_key}_{suffix}`` for the
    config's ``field_suffixes``, derived from the key whenever they are
    needed, so it can rename and clean them up.

    Args:
        config: a :class:`HardnessRunConfig`
    """

    def get_fields(self, samples, key):
        return run_field_names(key, self.config.field_suffixes)

    def cleanup(self, samples, key):
        # first mark the run incomplete (results are what make a run
        # complete): if the process dies while the fields are being deleted,
        # the run is repaired later instead of looking valid without values
        fors.Run.save_run_results(samples, key, None)
        dataset = samples._dataset
        existing = dataset.get_field_schema()
        fields = [f for f in self.get_fields(samples, key) if f in existing]
        if fields:
            # the values first, while the fields are still declared:
            # FiftyOne's delete_sample_fields removes the declarations and
            # then the values, so a process killed in between would leave
            # undeclared values in the documents (seen in
            # test_kills_during_run_writes_leave_a_loadable_state). Its own
            # pass then finds nothing left to remove
            dataset._sample_collection.update_many(
                {}, {"$unset": {f: "" for f in fields}}
            )
            dataset.delete_sample_fields(fields)
        _remove_sidebar_group(dataset, key)

    def rename(self, samples, key, new_key):
        """Renames the run's fields to those of ``new_key``, all or none.

        Raises:
            RunRenameError: if ``new_key`` is malformed or any target field
                exists (declared, or present in the documents); nothing is
                changed
        """
        dataset = samples._dataset
        mapping = _rename_mapping(dataset, self.config, key, new_key)
        if not mapping:
            return
        try:
            dataset.rename_sample_fields(mapping)
            # FiftyOne renamed the paths in every sidebar group
            _rename_sidebar_group(
                dataset,
                key,
                new_key,
                run_field_names(new_key, self.config.field_suffixes),
            )
        except BaseException as e:
            undone = _undo_rename(dataset, mapping)
            raise RunRenameError(
                "Could not rename the fields of run '%s' to '%s' (%s); %s"
                % (
                    key,
                    new_key,
                    e,
                    (
                        "nothing was changed"
                        if undone
                        else "some fields may carry the new name: see the "
                        "log"
                    ),
                )
            ) from e


def check_rename(samples, run_key, new_run_key):
    """Checks that hardness run ``run_key`` can be renamed to
    ``new_run_key``: the run exists, the new key is well formed and unused,
    and none of the fields it would be renamed to exists.

    Raises:
        HardnessError: naming the problem
    """
    if run_key not in list_hardness_runs(samples):
        raise HardnessError(
            "Dataset '%s' has no hardness run '%s'"
            % (samples._dataset.name, run_key)
        )
    if new_run_key in samples.list_runs():
        raise HardnessError(
            "A run with key '%s' already exists; choose another key"
            % new_run_key
        )
    config = samples.get_run_info(run_key).config
    try:
        _rename_mapping(samples._dataset, config, run_key, new_run_key)
    except RunRenameError as e:
        raise HardnessError(str(e)) from None


def _rename_mapping(dataset, config, key, new_key):
    """Returns ``{old field: new field}`` for renaming a run, after checking
    that every target name is free.

    Raises:
        RunRenameError: a malformed key or a taken target field
    """
    if not _is_valid_key(new_key):
        raise RunRenameError(
            "Cannot rename run '%s' to %r: a run key has letters, digits "
            "and underscores, starting with a letter" % (key, new_key)
        )
    old = run_field_names(key, config.field_suffixes)
    new = run_field_names(new_key, config.field_suffixes)
    taken = _existing_fields(dataset, new)
    if taken:
        raise RunRenameError(
            "Cannot rename run '%s' to '%s': the fields %s already exist on "
            "dataset '%s' and would be overwritten; choose another key "
            "(nothing was changed)"
            % (key, new_key, ", ".join(taken), dataset.name)
        )
    schema = dataset.get_field_schema()
    return {o: n for o, n in zip(old, new) if o in schema}


def _existing_fields(dataset, names):
    """Returns the ``names`` that exist on ``dataset``: declared in its
    schema, or undeclared but present in some sample document."""
    schema = dataset.get_field_schema()
    taken = [n for n in names if n in schema]
    others = [n for n in names if n not in schema]
    if others:
        # one query for all of them: undeclared values are user data too
        doc = dataset._sample_collection.find_one(
            {"$or": [{n: {"$exists": True}} for n in others]}
        )
        if doc is not None:
            taken.extend(n for n in others if n in doc)
    return taken


def _undo_rename(dataset, mapping):
    """Renames back the fields of ``mapping`` that a failed rename moved.
    Returns whether every field has its old name again."""
    try:
        dataset.reload()
        schema = dataset.get_field_schema()
        back = {
            new: old
            for old, new in mapping.items()
            if new in schema and old not in schema
        }
        if back:
            dataset.rename_sample_fields(back)
        return True
    except Exception as e:  # the original error is the one to raise
        logger.warning(
            "Could not rename back the fields %s after a failed rename: %s",
            mapping,
            e,
        )
        return False


#: the orientation of every score a hardness run writes
HIGHER_IS_HARDER = "higher_is_harder"


@dataclass(frozen=True)
class RunScore:
    """One score of a hardness run, as the run schema describes it.

    Derived from the run key and its config's ``field_suffixes`` when read
    (see :func:`run_scores`), never stored, so it follows renames.

    Attributes:
        name: the score's name in its run: the method for a run's main score
            (``{run_key}_score``), else the sub-method ``m`` of
            ``{run_key}_{m}_score`` (e.g. one method of ``dynamics``)
        run_key: the key of the run
        score_field: the score's sample field
        flag_field: its flag field, or None when the run wrote none
        noise_rate: the run's noise-rate estimate for this score, or None:
            the run's ``noise_rate`` for its main score; for a sub-method,
            its own estimate (None when its flags reuse a rate shared by the
            run's methods)
        threshold: the threshold the run stored for this score, or None
            (not always in score units: see
            :func:`fiftyone_hardness.dataset_io.run_views.threshold_for`)
        num_flagged: how many samples its flags mark, as stored, or None
        class_scores: the stored per-class mean score, or None
        main: whether this is the run's main score (``{run_key}_score``)
        orientation: always ``"higher_is_harder"``
        extras: ``{suffix: field}`` of the other fields written beside this
            score (e.g. ``{"pred": "rer_pred"}``, ``{"value":
            "dyn_aum_value"}``)
    """

    name: str
    run_key: str
    score_field: str
    flag_field: Optional[str] = None
    noise_rate: Optional[float] = None
    threshold: Optional[float] = None
    num_flagged: Optional[int] = None
    class_scores: Optional[dict] = None
    main: bool = True
    orientation: str = HIGHER_IS_HARDER
    extras: dict = field(default_factory=dict)

    @property
    def member(self):
        """The consensus member name of this score: ``run_key`` for a
        run's main score, else ``run_key.name``."""
        if self.main:
            return self.run_key
        return "%s.%s" % (self.run_key, self.name)

    def companion(self, suffix):
        """Returns the field written beside this score for ``suffix`` (e.g.
        ``"pred"``), or None."""
        return self.extras.get(suffix)


def run_scores(run_key, config, results=None):
    """Returns the :class:`RunScore` of each score of a run, main one first.

    The schema is read from the run key and the config's ``field_suffixes``
    (``score`` is the main score; each ``{m}_score`` the score of sub-method
    ``m``, with ``{m}_flag`` and ``{m}_*`` beside it), never from stored
    field names. Figures (noise rate, threshold, ...) come from
    ``results`` when given: the run's own for the main score,
    ``results.methods[m]`` for sub-method ``m``.

    Args:
        run_key: the run key
        config: the run's :class:`HardnessRunConfig`
        results (None): the run's :class:`HardnessRunResults`

    Returns:
        a list of :class:`RunScore`
    """
    suffixes = list(getattr(config, "field_suffixes", None) or [])
    subs = [
        s[: -len("_score")]
        for s in suffixes
        if s.endswith("_score") and s != "score"
    ]
    owner = _suffix_owners(suffixes, subs)
    scores = []
    if "score" in suffixes:
        scores.append(_main_score(run_key, config, results, suffixes, owner))
    for sub in subs:
        scores.append(_sub_score(run_key, results, sub, suffixes, owner))
    return scores


def _suffix_owners(suffixes, subs):
    """Maps each suffix to the sub-method it belongs to (the longest ``m``
    with the prefix ``m_``), or None for the main score's."""
    owner = {}
    for suffix in suffixes:
        matches = [m for m in subs if suffix.startswith(m + "_")]
        owner[suffix] = max(matches, key=len) if matches else None
    return owner


def _field(run_key, suffix, suffixes):
    return "%s_%s" % (run_key, suffix) if suffix in suffixes else None


def _main_score(run_key, config, results, suffixes, owner):
    extras = {
        s: _field(run_key, s, suffixes)
        for s in suffixes
        if owner[s] is None and s not in ("score", "flag")
    }
    class_scores = _get(results, "class_scores") or _get(results, "class_chis")
    return RunScore(
        name=_get(results, "method") or getattr(config, "method", None),
        run_key=run_key,
        score_field=_field(run_key, "score", suffixes),
        flag_field=_field(run_key, "flag", suffixes),
        noise_rate=_number(_get(results, "noise_rate")),
        threshold=_number(_get(results, "threshold")),
        num_flagged=_get(results, "num_flagged"),
        class_scores=class_scores or None,
        main=True,
        extras=extras,
    )


def _sub_score(run_key, results, sub, suffixes, owner):
    methods = _get(results, "methods")
    entry = methods.get(sub) if isinstance(methods, dict) else None
    entry = entry if isinstance(entry, dict) else {}
    # top-fraction flags reuse the run's shared rate: not this method's own
    own = entry.get("own_noise_estimate", True)
    extras = {
        s[len(sub) + 1 :]: _field(run_key, s, suffixes)
        for s in suffixes
        if owner[s] == sub and s not in (sub + "_score", sub + "_flag")
    }
    return RunScore(
        name=sub,
        run_key=run_key,
        score_field=_field(run_key, sub + "_score", suffixes),
        flag_field=_field(run_key, sub + "_flag", suffixes),
        noise_rate=_number(entry.get("noise_rate")) if own else None,
        threshold=_number(entry.get("threshold")),
        num_flagged=entry.get("num_flagged"),
        class_scores=entry.get("class_scores") or None,
        main=False,
        extras=extras,
    )


def _get(results, name):
    return getattr(results, name, None) if results is not None else None


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


class HardnessRunResults(fors.RunResults):
    """Results of a hardness run.

    Always has ``method``, ``label_field``, ``num_samples`` (labelled samples
    scored), ``num_skipped`` (samples without a label), ``num_flagged``,
    ``threshold``, ``noise_rate`` (None when the method has no estimate) and
    ``class_scores`` (class -> mean score), plus the method's own extras.
    :meth:`scores` describes its scores and :attr:`fields` lists the fields
    it wrote, both derived from the run key when read.
    """

    @classmethod
    def _from_dict(cls, d, samples, config, key):
        # runs saved before the schema stored their field names: stale
        # after a rename, and derived from the key now
        d = {k: v for k, v in d.items() if k != "fields"}
        return cls(samples, config, key, **d)

    @property
    def fields(self):
        """The sample fields the run wrote: ``{run_key}_{suffix}``."""
        return run_field_names(
            self.key, getattr(self.config, "field_suffixes", None) or []
        )

    def scores(self):
        """Returns the run schema: one :class:`RunScore` per score of the
        run, its main score first (see :func:`run_scores`)."""
        return run_scores(self.key, self.config, self)

    def score(self, name=None):
        """Returns the :class:`RunScore` called ``name`` (the run's method
        for its main score, else the sub-method), or the default one (the
        main score, else the first) when ``name`` is None.

        Raises:
            HardnessError: the run has no score of that name, or none at all
        """
        scores = self.scores()
        if not scores:
            raise HardnessError("Run '%s' wrote no score field" % self.key)
        if name is None:
            return scores[0]
        for score in scores:
            if score.name == name:
                return score
        raise HardnessError(
            "Run '%s' has no score '%s'; its scores: %s"
            % (self.key, name, ", ".join(s.name for s in scores))
        )

    def summary(self):
        """Returns a short human-readable summary of the results."""
        lines = [
            "%s run '%s' on '%s': %d samples scored, %d flagged"
            % (
                self.method,
                self.key,
                self.label_field,
                self.num_samples,
                self.num_flagged or 0,
            )
        ]
        if getattr(self, "num_skipped", 0):
            lines.append(
                "  %d samples without a label skipped" % self.num_skipped
            )
        if self.noise_rate is not None:
            lines.append("  estimated noise rate: %.3f" % self.noise_rate)
        for name in ("chi_avg", "classification_difficulty", "health_score"):
            value = getattr(self, name, None)
            if value is not None:
                lines.append("  %s: %.3f" % (name, value))
        scores = getattr(self, "class_scores", None) or {}
        if scores:
            hardest = sorted(scores.items(), key=lambda kv: -kv[1])[:3]
            lines.append(
                "  hardest classes: "
                + ", ".join("%s (%.3f)" % kv for kv in hardest)
            )
        return "\n".join(lines)


class HardnessBenchmarkConfig(fors.RunConfig):
    """Configuration of a benchmark summary run
    (:mod:`fiftyone_hardness.benchmarking`): the grid that was run. Not a
    :class:`HardnessRunConfig`, so it is not listed among hardness runs."""

    def __init__(self, method="benchmark", **kwargs):
        super().__init__(method=method, **kwargs)


class HardnessBenchmark(fors.Run):
    """A benchmark summary run: writes no sample fields."""

    def get_fields(self, samples, key):
        return []

    def cleanup(self, samples, key):
        pass

    def rename(self, samples, key, new_key):
        pass


class HardnessBenchmarkResults(fors.RunResults):
    """The figures of a benchmark (see
    :func:`fiftyone_hardness.benchmarking.report.summarize_grid`),
    plus ``records`` (one per method and setting) and ``report``."""

    def summary(self):
        lines = [
            "hardness benchmark over %d settings, report: %s"
            % (self.num_settings, self.report)
        ]
        for m, r in list(self.ranks.items())[:5]:
            lines.append("  %-22s mean rank %.2f" % (m, r["mean"]))
        return "\n".join(lines)


def run_field_names(run_key, suffixes):
    """Returns the sample field names ``{run_key}_{suffix}``."""
    return ["%s_%s" % (run_key, s) for s in suffixes]


def list_hardness_runs(samples, include_incomplete=False):
    """Returns the keys of the hardness runs on ``samples``.

    A run whose write never finished (its process was killed) is left out,
    with a warning naming it and the one-call repair,
    :func:`repair_hardness_runs`; ``include_incomplete=True`` lists it too.
    """
    keys, incomplete = [], []
    for key in samples.list_runs():
        info = samples.get_run_info(key)
        if not isinstance(info.config, HardnessRunConfig):
            continue
        if include_incomplete or is_complete(samples, key):
            keys.append(key)
        else:
            incomplete.append(key)
    if incomplete:
        logger.warning(
            "Hardness run(s) %s on dataset '%s' are incomplete (being "
            "written, or interrupted); "
            "fiftyone_hardness.repair_hardness_runs(dataset) removes "
            "interrupted ones",
            ", ".join(incomplete),
            samples._dataset.name,
        )
    return keys


def is_complete(samples, run_key):
    """Whether run ``run_key`` finished writing: its results, saved last
    (and cleared first when it is deleted), exist."""
    results = fors.Run._get_run_doc(samples, run_key).results
    # a GridFS reference whose file is gone (a process killed inside
    # FiftyOne's results update) counts as incomplete too
    return bool(results) and results.get() is not None


def list_incomplete_runs(samples):
    """Returns the keys of hardness runs whose write has not finished
    (being written now, or interrupted)."""
    return [
        key
        for key in list_hardness_runs(samples, include_incomplete=True)
        if not is_complete(samples, key)
    ]


def repair_hardness_runs(samples):
    """Deletes the hardness runs of ``samples`` whose write was interrupted,
    with every field they wrote; a run being written by a live process is
    waited for, not touched.

    Returns:
        the keys of the runs removed
    """
    dataset = samples._dataset
    with dataset_lock(dataset, "repairing hardness runs"):
        dataset.reload()
        removed = list_incomplete_runs(dataset)
        for key in removed:
            dataset.delete_run(key)
    return removed


def _is_valid_key(run_key):
    return isinstance(run_key, str) and bool(
        _RUN_KEY_PATTERN.fullmatch(run_key)
    )


def validate_run_key(samples, run_key, overwrite=False):
    """Checks that ``run_key`` is a usable new key on ``samples``.

    An incomplete run with this key does not count: :func:`save_run`
    removes it if it was interrupted (and waits for it if it is being
    written).

    Raises:
        HardnessError: if the key is malformed, or a complete run has it and
            ``overwrite`` is False
    """
    if not _is_valid_key(run_key):
        raise HardnessError(
            "Invalid run key %r: use letters, digits and underscores, "
            "starting with a letter" % (run_key,)
        )
    if (
        run_key in samples.list_runs()
        and not overwrite
        and is_complete(samples, run_key)
    ):
        raise HardnessError(
            "A run with key '%s' already exists on dataset '%s'; pass "
            "overwrite=True to replace it, or choose another run_key"
            % (run_key, samples._dataset.name)
        )


def save_run(samples, run_key, method, params, data, output, overwrite=False):
    """Writes a method's output to ``samples`` and registers the run.

    Atomic as seen by readers: the run's results are saved last, and a run
    without results is incomplete (not listed by
    :func:`list_hardness_runs`). The whole write holds the dataset's write
    lock (:mod:`~fiftyone_hardness.dataset_io.locks`), so two processes
    cannot interleave runs, and the key and field checks are repeated under
    it. An exception (Ctrl-C included) deletes the partial run; a killed
    process leaves an incomplete run, which the next write of that key, or
    :func:`repair_hardness_runs`, removes. With ``overwrite`` the previous
    run is deleted first: an interrupted overwrite leaves nothing, never a
    previous run with missing values.

    Args:
        samples: the collection the method ran on
        run_key: the run key
        method: the method name
        params: the method's parameters (made JSON-serializable here)
        data: the :class:`LabeledData` the method ran on
        output: the :class:`MethodOutput`
        overwrite: whether to replace an existing run with this key

    Returns:
        a :class:`HardnessRunResults`
    """
    _check_output(method, data, output)
    results = _run_results(method, data, output)
    config = HardnessRunConfig(
        method=method,
        label_field=data.label_field,
        field_suffixes=list(output.fields),
        **to_jsonable(params),
    )
    dataset = samples._dataset
    with (
        dataset_lock(dataset, "writing hardness run '%s'" % run_key),
        hold_interrupts() as interrupts,
    ):
        dataset.reload()
        _remove_interrupted(samples, run_key)
        validate_run_key(samples, run_key, overwrite=overwrite)
        _check_field_clashes(samples, run_key, config.field_suffixes)
        if run_key in samples.list_runs():
            samples.delete_run(run_key)
        samples.register_run(run_key, config)
        try:
            write_fields(
                samples,
                data.ids,
                {
                    "%s_%s" % (run_key, suffix): values
                    for suffix, values in output.fields.items()
                },
                between_batches=interrupts.check,
            )
            run_results = HardnessRunResults(
                samples, config, run_key, **results
            )
            # last: the run counts as complete from here on
            samples.save_run_results(run_key, run_results)
        except BaseException:
            samples.delete_run(run_key)
            raise
        _add_sidebar_group(dataset, run_key, run_results.fields)
    return run_results


def _check_output(method, data, output):
    n = data.num_samples
    for suffix, values in output.fields.items():
        if len(values) != n:
            raise HardnessError(
                "Method '%s' returned %d values for '%s' but %d samples were "
                "scored" % (method, len(values), suffix, n)
            )


def _run_results(method, data, output):
    """The run's results: the method's, plus the figures every run has."""
    results = dict(output.results)
    results.setdefault("threshold", None)
    results.setdefault("noise_rate", None)
    if "score" in output.fields and "class_scores" not in results:
        results["class_scores"] = class_means(
            output.fields["score"], data.labels, data.classes
        )
    results.setdefault("class_scores", {})
    if "flag" in output.fields and "num_flagged" not in results:
        results["num_flagged"] = int(np.sum(output.fields["flag"]))
    results.setdefault("num_flagged", None)
    results.update(
        method=method,
        label_field=data.label_field,
        num_samples=data.num_samples,
        num_skipped=data.num_skipped,
    )
    return to_jsonable(results)


def _remove_interrupted(samples, run_key):
    # called under the write lock: no live process is writing this run,
    # so an incomplete run was interrupted and can go
    if run_key in samples.list_runs() and not is_complete(samples, run_key):
        logger.warning(
            "Removing the interrupted hardness run '%s' before writing it "
            "again",
            run_key,
        )
        samples.delete_run(run_key)


def _check_field_clashes(samples, run_key, suffixes):
    owned = set()
    if run_key in samples.list_runs():
        config = samples.get_run_info(run_key).config
        owned = set(config.build().get_fields(samples, run_key))
    schema = samples._dataset.get_field_schema()
    clashes = [
        f
        for f in run_field_names(run_key, suffixes)
        if f in schema and f not in owned
    ]
    if clashes:
        raise HardnessError(
            "Fields %s already exist and do not belong to run '%s'; choose "
            "another run_key" % (", ".join(clashes), run_key)
        )


#: the sidebar groups FiftyOne makes by default; a run's new fields are
#: taken out of them into the run's own group
_DEFAULT_SIDEBAR_GROUPS = (
    "tags",
    "metadata",
    "labels",
    "frame labels",
    "primitives",
    "other",
)

#: runs with more fields than this get a collapsed sidebar group
SIDEBAR_EXPANDED_MAX_FIELDS = 8


def sidebar_group_name(run_key):
    """Returns the name of the App sidebar group holding the fields of run
    ``run_key``: ``hardness: {run_key}``."""
    return "hardness: %s" % run_key


def _sidebar_group(dataset, name):
    for group in dataset.app_config.sidebar_groups or []:
        if group.name == name:
            return group
    return None


def _is_own_group(group, run_key, fields):
    """Whether ``group`` is the one this package made for ``run_key``: it
    has the run's group name and holds nothing but the run's fields (a
    group of that name holding anything else is the user's)."""
    return group.name == sidebar_group_name(run_key) and set(
        group.paths
    ) <= set(fields)


def _add_sidebar_group(dataset, run_key, fields):
    """Gathers the fields of run ``run_key`` into its own sidebar group, out
    of FiftyOne's default groups; collapsed when the run has many fields.
    When the dataset had FiftyOne's implicit default groups until now, the
    other hardness runs get their group too. A group of the run's name that
    the user made is left alone (the fields then stay where the App puts
    them). Never fails the run: the group only arranges the App's
    sidebar."""
    try:
        config = dataset.app_config
        runs = {}
        if config.sidebar_groups is None:
            config.sidebar_groups = fo.DatasetAppConfig.default_sidebar_groups(
                dataset
            )
            for key in list_hardness_runs(dataset):
                if key != run_key:
                    runs[key] = dataset.load_run_results(key).fields
        runs[run_key] = fields
        schema = dataset.get_field_schema()
        for key, run_fields in runs.items():
            _place_sidebar_group(
                dataset, key, [f for f in run_fields if f in schema]
            )
        dataset.save()
    except Exception as e:
        logger.warning(
            "Could not group the fields of run '%s' in the App's sidebar: %s",
            run_key,
            e,
        )


def _place_sidebar_group(dataset, run_key, fields):
    if not fields:
        return
    config = dataset.app_config
    name = sidebar_group_name(run_key)
    group = _sidebar_group(dataset, name)
    if group is not None and not _is_own_group(group, run_key, fields):
        logger.info(
            "Sidebar group '%s' holds other fields: left as it is", name
        )
        return
    owned = set(fields)
    for other in config.sidebar_groups:
        if other.name in _DEFAULT_SIDEBAR_GROUPS:
            other.paths = [p for p in other.paths if p not in owned]
    if group is None:
        group = fo.SidebarGroupDocument(name=name)
        config.sidebar_groups.append(group)
    group.paths = list(fields)
    if len(fields) > SIDEBAR_EXPANDED_MAX_FIELDS:
        group.expanded = False


def _rename_sidebar_group(dataset, run_key, new_run_key, new_fields):
    """Renames the sidebar group of ``run_key`` after its fields were
    renamed to ``new_fields`` (FiftyOne renamed the paths in every group),
    unless the user made it or the new name is taken."""
    try:
        group = _sidebar_group(dataset, sidebar_group_name(run_key))
        new_name = sidebar_group_name(new_run_key)
        if (
            group is None
            or not set(group.paths) <= set(new_fields)
            or _sidebar_group(dataset, new_name) is not None
        ):
            return
        group.name = new_name
        dataset.save()
    except Exception as e:
        logger.warning(
            "Could not rename the sidebar group of run '%s': %s", run_key, e
        )


def _remove_sidebar_group(dataset, run_key):
    """Removes the sidebar group of ``run_key`` once its fields are
    deleted (FiftyOne removed their paths), if it is empty: a group the
    user added fields to stays."""
    try:
        group = _sidebar_group(dataset, sidebar_group_name(run_key))
        if group is None or group.paths:
            return
        dataset.app_config.sidebar_groups.remove(group)
        dataset.save()
    except Exception as e:
        logger.warning(
            "Could not remove the sidebar group of run '%s': %s", run_key, e
        )


#: numpy dtype kind -> the FiftyOne field of a scalar column
_SCALAR_FIELDS = {
    "b": fo.BooleanField,
    "i": fo.IntField,
    "u": fo.IntField,
    "f": fo.FloatField,
    "U": fo.StringField,
}


#: rows written per bulk write by :func:`write_fields` (bounds the update
#: operations held in memory; a held Ctrl-C is honoured between chunks)
WRITE_CHUNK_ROWS = 20000


def write_fields(samples, ids, columns, between_batches=None):
    """Writes several per-sample columns in one pass over the database.

    Scalar columns (bool, int, float, str; NaN and None allowed) and
    numeric (N, K) arrays (a list of K numbers per sample, e.g. cleanlab's
    stored probabilities: ``ListField`` of the scalar field, as
    ``set_values`` declares them) are declared with their field type and
    written together, one update per sample, :data:`WRITE_CHUNK_ROWS`
    samples per bulk write, instead of one pass per field (a ``dynamics``
    run writes about 40 fields: one pass each costs about 0.2 s per 2k
    samples). An array's rows become lists one chunk at a time. Other
    columns (ragged lists, dicts) go through ``set_values``.

    Args:
        samples: the collection
        ids: the sample ids, one per row of every column
        columns: a dict ``field name -> values`` (one value per id)
        between_batches (None): a function called after each batch of
            writes has completed (e.g. to raise a held interrupt there)
    """
    from bson import ObjectId
    from pymongo import UpdateOne

    ids = [str(i) for i in ids]
    scalars = {}
    arrays = {}  # numeric (N, K) columns: (field, array)
    for name, values in columns.items():
        array = np.asarray(values)
        if array.ndim == 2 and array.dtype.kind in "biuf":
            arrays[name] = (
                fo.ListField(_SCALAR_FIELDS[array.dtype.kind]()),
                array,
            )
            continue
        field_type = _SCALAR_FIELDS.get(array.dtype.kind)
        if array.ndim == 1 and array.dtype == object:
            present = [v for v in values if v is not None]
            kinds = {np.asarray(v).dtype.kind for v in present}
            if len(kinds) == 1 and all(np.ndim(v) == 0 for v in present):
                field_type = _SCALAR_FIELDS.get(kinds.pop())
        if field_type is None or array.ndim != 1:
            samples.set_values(
                name,
                dict(zip(ids, _to_field_values(values))),
                key_field="id",
            )
            if between_batches is not None:
                between_batches()
            continue
        scalars[name] = (field_type, [_scalar(v) for v in values])
    if not scalars and not arrays:
        return
    # one schema update for all new fields (add_sample_field reloads the
    # dataset each time: about 0.1 s per field)
    dataset = samples._dataset
    fields = {name: field_type() for name, (field_type, _) in scalars.items()}
    fields.update({name: field for name, (field, _) in arrays.items()})
    dataset._merge_sample_field_schema(
        {
            name: field
            for name, field in fields.items()
            if not dataset.has_sample_field(name)
        }
    )
    scalars = {name: values for name, (_, values) in scalars.items()}
    now = datetime.datetime.utcnow()
    for start in range(0, len(ids), WRITE_CHUNK_ROWS):
        chunk = ids[start : start + WRITE_CHUNK_ROWS]
        end = start + len(chunk)
        values = {n: v[start:end] for n, v in scalars.items()}
        values.update(
            {n: a[start:end].tolist() for n, (_, a) in arrays.items()}
        )
        ops = [
            UpdateOne(
                {"_id": ObjectId(_id)},
                {
                    "$set": dict(
                        {n: v[row] for n, v in values.items()},
                        last_modified_at=now,
                    )
                },
            )
            for row, _id in enumerate(chunk)
        ]
        samples._dataset._bulk_write(ops, ids=chunk)
        if between_batches is not None:
            between_batches()


def _to_field_values(values):
    array = np.asarray(values)
    if array.dtype == object:
        return [_scalar(v) for v in values]
    return array.tolist()


def _scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def to_jsonable(value):
    """Converts numpy values, tuples and nested containers into plain JSON
    types; values that cannot be converted become their ``repr``."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
