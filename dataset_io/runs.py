"""
Hardness runs in FiftyOne: the run classes and the one write path.

Reading labelled data is :mod:`fiftyone_hardness.dataset_io.data`.

- :func:`save_run` writes a method's per-sample arrays back in bulk and
  registers the run (:class:`HardnessRunConfig`, :class:`HardnessRun`,
  :class:`HardnessRunResults`), so that ``dataset.load_run_results(key)``,
  ``dataset.rename_run(...)`` and ``dataset.delete_run(key)`` work from any
  Python process.

The run classes live here, at a stable import path, because FiftyOne stores
the full class path of every run config in MongoDB.
"""
import datetime
import json
import logging
import re

import numpy as np

import fiftyone as fo
import fiftyone.core.runs as fors

from fiftyone_hardness.methods.base import HardnessError, class_means

logger = logging.getLogger(__name__)

_RUN_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


class HardnessRun(fors.Run):
    """A hardness run: knows which fields it wrote, so it can rename and
    clean them up.

    Args:
        config: a :class:`HardnessRunConfig`
    """

    def get_fields(self, samples, key):
        return run_field_names(key, self.config.field_suffixes)

    def cleanup(self, samples, key):
        dataset = samples._dataset
        existing = dataset.get_field_schema()
        fields = [f for f in self.get_fields(samples, key) if f in existing]
        if fields:
            dataset.delete_sample_fields(fields)

    def rename(self, samples, key, new_key):
        dataset = samples._dataset
        existing = dataset.get_field_schema()
        old = [f for f in self.get_fields(samples, key) if f in existing]
        new = [new_key + f[len(key) :] for f in old]
        if old:
            dataset.rename_sample_fields(dict(zip(old, new)))


class HardnessRunResults(fors.RunResults):
    """Results of a hardness run.

    Always has ``method``, ``label_field``, ``num_samples`` (labelled samples
    scored), ``num_skipped`` (samples without a label), ``num_flagged``,
    ``threshold``, ``noise_rate`` (None when the method has no estimate),
    ``class_scores`` (class -> mean score) and ``fields``, plus the method's
    own extras.
    """

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
            lines.append("  %d samples without a label skipped" % self.num_skipped)
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
        lines = ["hardness benchmark over %d settings, report: %s"
                 % (self.num_settings, self.report)]
        for m, r in list(self.ranks.items())[:5]:
            lines.append("  %-22s mean rank %.2f" % (m, r["mean"]))
        return "\n".join(lines)


def run_field_names(run_key, suffixes):
    """Returns the sample field names ``{run_key}_{suffix}``."""
    return ["%s_%s" % (run_key, s) for s in suffixes]


def list_hardness_runs(samples):
    """Returns the keys of the hardness runs on ``samples``."""
    keys = []
    for key in samples.list_runs():
        info = samples.get_run_info(key)
        if isinstance(info.config, HardnessRunConfig):
            keys.append(key)
    return keys


def validate_run_key(samples, run_key, overwrite=False):
    """Checks that ``run_key`` is a usable new key on ``samples``.

    Raises:
        HardnessError: if the key is malformed, or exists and ``overwrite``
            is False
    """
    if not run_key or not _RUN_KEY_PATTERN.match(run_key):
        raise HardnessError(
            "Invalid run key %r: use letters, digits and underscores, "
            "starting with a letter" % (run_key,)
        )
    if run_key in samples.list_runs() and not overwrite:
        raise HardnessError(
            "A run with key '%s' already exists on dataset '%s'; pass "
            "overwrite=True to replace it, or choose another run_key"
            % (run_key, samples._dataset.name)
        )


def save_run(samples, run_key, method, params, data, output, overwrite=False):
    """Writes a method's output to ``samples`` and registers the run.

    Nothing is written when the output is invalid. When ``overwrite`` is
    True an existing run with this key is deleted (with its fields) first.
    If writing fails midway, the partial run is deleted again.

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
    n = data.num_samples
    for suffix, values in output.fields.items():
        if len(values) != n:
            raise HardnessError(
                "Method '%s' returned %d values for '%s' but %d samples were "
                "scored" % (method, len(values), suffix, n)
            )
    suffixes = list(output.fields)
    dataset = samples._dataset
    validate_run_key(samples, run_key, overwrite=overwrite)
    owned = set()
    if run_key in samples.list_runs():
        config = samples.get_run_info(run_key).config
        owned = set(config.build().get_fields(samples, run_key))
    schema = dataset.get_field_schema()
    clashes = [
        f for f in run_field_names(run_key, suffixes)
        if f in schema and f not in owned
    ]
    if clashes:
        raise HardnessError(
            "Fields %s already exist and do not belong to run '%s'; choose "
            "another run_key" % (", ".join(clashes), run_key)
        )

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
        num_samples=n,
        num_skipped=data.num_skipped,
        fields=run_field_names(run_key, suffixes),
    )
    results = to_jsonable(results)

    if run_key in samples.list_runs():
        samples.delete_run(run_key)

    config = HardnessRunConfig(
        method=method,
        label_field=data.label_field,
        field_suffixes=suffixes,
        **to_jsonable(params),
    )
    samples.register_run(run_key, config)
    try:
        write_fields(
            samples,
            data.ids,
            {
                "%s_%s" % (run_key, suffix): values
                for suffix, values in output.fields.items()
            },
        )
        run_results = HardnessRunResults(samples, config, run_key, **results)
        samples.save_run_results(run_key, run_results)
    except BaseException:
        samples.delete_run(run_key)
        raise
    return run_results


#: numpy dtype kind -> the FiftyOne field of a scalar column
_SCALAR_FIELDS = {
    "b": fo.BooleanField,
    "i": fo.IntField,
    "u": fo.IntField,
    "f": fo.FloatField,
    "U": fo.StringField,
}


def write_fields(samples, ids, columns):
    """Writes several per-sample columns in one pass over the database.

    Scalar columns (bool, int, float, str; NaN and None allowed) are
    declared with their field type and written together, one update per
    sample, instead of one pass per field (a ``dynamics`` run writes about
    40 fields: one pass each costs about 0.2 s per 2k samples). Other
    columns (vectors, lists, dicts) go through ``set_values``.

    Args:
        samples: the collection
        ids: the sample ids, one per row of every column
        columns: a dict ``field name -> values`` (one value per id)
    """
    from bson import ObjectId
    from pymongo import UpdateOne

    ids = [str(i) for i in ids]
    scalars = {}
    for name, values in columns.items():
        array = np.asarray(values)
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
            continue
        scalars[name] = (field_type, [_scalar(v) for v in values])
    if not scalars:
        return
    # one schema update for all new fields (add_sample_field reloads the
    # dataset each time: about 0.1 s per field)
    dataset = samples._dataset
    dataset._merge_sample_field_schema(
        {
            name: field_type()
            for name, (field_type, _) in scalars.items()
            if not dataset.has_sample_field(name)
        }
    )
    scalars = {name: values for name, (_, values) in scalars.items()}
    names = list(scalars)
    now = datetime.datetime.utcnow()
    ops = [
        UpdateOne(
            {"_id": ObjectId(_id)},
            {
                "$set": dict(
                    {n: scalars[n][row] for n in names},
                    last_modified_at=now,
                )
            },
        )
        for row, _id in enumerate(ids)
    ]
    samples._dataset._bulk_write(ops, ids=ids)


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
