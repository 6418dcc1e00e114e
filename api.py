"""
The public Python API.

- :func:`apply_hardness` (also ``dataset.apply_hardness(...)`` on every
  FiftyOne ``Dataset`` and ``DatasetView`` once ``fiftyone_hardness`` is
  imported) runs any method by name;
- :func:`compute_rer`, :func:`compute_cleanlab`, :func:`compute_dynamics`
  and :func:`compute_consensus` are the same, one per method, with the
  method's whole signature and docstring (built from its config dataclass,
  the one source of its parameters);
- :func:`compute_embeddings` and :func:`find_counterexamples`.

The App's operators call these same functions, so the App and Python share
one path: config validation (before any data is read), then the FiftyOne
layer (:mod:`fiftyone_hardness.dataset_io`) reads the labelled data, the
method (:mod:`fiftyone_hardness.methods`) computes on arrays, and the
FiftyOne layer writes the fields and registers the run.
"""

import inspect
import logging

import fiftyone.core.collections as focl

from fiftyone_hardness.dataset_io import counterexamples as fhce
from fiftyone_hardness.dataset_io import data as fhdata
from fiftyone_hardness.dataset_io import embeddings as fhemb
from fiftyone_hardness.dataset_io import runs as fhruns
from fiftyone_hardness.dataset_io.progress import progress_callback
from fiftyone_hardness.dataset_io.run_views import data_labels_digest
from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import HardnessError  # noqa: F401
from fiftyone_hardness.methods.counterexamples import CounterexamplesConfig
from fiftyone_hardness.methods.embeddings import EmbeddingsConfig

logger = logging.getLogger(__name__)

#: kept importable here; the FiftyOne layer owns it
EMBEDDINGS_INFO_KEY = fhemb.EMBEDDINGS_INFO_KEY
get_embeddings_info = fhemb.get_embeddings_info


def list_methods():
    """Returns a dict mapping each hardness method name to a description."""
    return registry.list_methods()


def apply_hardness(
    samples,
    method,
    label_field="ground_truth",
    run_key=None,
    overwrite=False,
    progress=None,
    **kwargs,
):
    """Computes a hardness method on a collection and stores it as a run.

    Every score field is oriented so that higher = harder / more likely
    mislabeled. Original labels are never modified.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        method: the method name, e.g. ``"rer"``, ``"cleanlab"``,
            ``"dynamics"``, ``"aum"``, ``"consensus"`` (see
            :func:`list_methods`)
        label_field ("ground_truth"): the ``fo.Classification`` field to
            score. Samples without a label are skipped and counted
        run_key (None): the run key; defaults to the method name. Fields
            are written as ``{run_key}_{suffix}``
        overwrite (False): whether to replace an existing run with this key
        progress (None): ``True``/``False`` to show/hide a progress bar,
            None for FiftyOne's default, or a callable
            ``(fraction, message)``
        **kwargs: the method's parameters (see :func:`compute_rer`,
            :func:`compute_cleanlab`, :func:`compute_dynamics`,
            :func:`compute_consensus`)

    Returns:
        a :class:`fiftyone_hardness.dataset_io.runs.HardnessRunResults`

    Raises:
        HardnessError: on bad input (unknown method or parameter, invalid
            value, missing or non-Classification label field, existing run
            key without ``overwrite``, missing or NaN embeddings, ...).
            Nothing is written in that case
    """
    config = registry.make_config(method, kwargs)
    run_key = method if run_key is None else run_key
    fhruns.validate_run_key(samples, run_key, overwrite=overwrite)
    with progress_callback(progress, method) as report:
        data = fhdata.load_labeled_data(samples, label_field, progress=report)
        output = registry.run_method(method, data, config)
        # what the labels were, so that the App can tell when they change
        output.results.setdefault("labels_digest", data_labels_digest(data))
        report(1.0, "writing fields")
        params = config.to_dict() if hasattr(config, "to_dict") else config
        return fhruns.save_run(
            samples,
            run_key,
            method,
            params,
            data,
            output,
            overwrite=overwrite,
        )


def repair_hardness_runs(samples):
    """Removes the hardness runs of ``samples`` whose write was interrupted
    (e.g. the process was killed), with every field they wrote. Runs being
    written by a live process are waited for, not touched.

    Returns:
        the keys of the runs removed
    """
    return fhruns.repair_hardness_runs(samples)


def compute_embeddings(samples, progress=None, **kwargs):
    """Computes image embeddings for the samples of a collection.

    Only the samples of ``samples`` are touched; with ``skip_existing`` the
    ones that already have a value are left alone, so several workers can
    fill one field over disjoint views. What produced the field (model,
    weights, dim) is recorded in the field's ``info["hardness_embeddings"]``.

    Returns:
        a dict with ``num_embedded``, ``num_skipped`` (already had one),
        ``failed`` (sample id -> error message for unreadable images) and
        ``info`` (the model description)

    Raises:
        HardnessError: an invalid parameter, a non-image collection, an
            unknown model, or a field that holds embeddings from another
            model
    """
    config = EmbeddingsConfig.from_kwargs(
        method="compute_embeddings", **kwargs
    )
    with progress_callback(progress, "embedding") as report:
        return fhemb.compute_embeddings(samples, config, report)


def find_counterexamples(
    samples, sample_id, label_field="ground_truth", **kwargs
):
    """Finds the counter-examples of a suspicious sample (CINCER).

    A softmax last layer is fit on the embeddings to the labels of
    ``samples``. The candidates are the samples labelled with the class the
    model predicts for ``sample_id``; each is scored by its incompatibility
    with ``sample_id``'s label under the last-layer Fisher kernel. Show the
    sample next to its top counter-examples and decide which label is
    wrong: if the sample's label is right, the counter-examples are likely
    mislabeled; otherwise the sample is.

    Returns:
        a dict with ``sample_id``, ``label``, ``predicted``,
        ``probability``, ``target_label``, ``counterexample_ids`` (most
        incompatible first), ``scores``, ``num_candidates`` and ``view``
        (the sample followed by its counter-examples)

    Raises:
        HardnessError: an invalid parameter, a sample that is not a
            labelled sample of ``samples``, missing embeddings, unknown
            ``target_label``
    """
    config = CounterexamplesConfig.from_kwargs(
        method="find_counterexamples", **kwargs
    )
    return fhce.find_counterexamples(samples, sample_id, label_field, config)


def _method_entry_point(method, summary):
    """Builds ``compute_<method>(samples, label_field, run_key, overwrite,
    progress, **params)``, thin over :func:`apply_hardness`, with the
    signature and docstring of the method's config class."""
    config_class = registry.get_spec(method).get_config_class()

    def entry_point(
        samples,
        label_field="ground_truth",
        run_key=method,
        overwrite=False,
        progress=None,
        **kwargs,
    ):
        return apply_hardness(
            samples,
            method,
            label_field=label_field,
            run_key=run_key,
            overwrite=overwrite,
            progress=progress,
            **kwargs,
        )

    entry_point.__name__ = entry_point.__qualname__ = "compute_" + method
    entry_point.__module__ = __name__
    common = list(inspect.signature(entry_point).parameters.values())[:-1]
    entry_point.__signature__ = inspect.Signature(
        common
        + [
            inspect.Parameter(
                p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default
            )
            for p in config_class.parameters()
        ]
    )
    entry_point.__doc__ = _entry_point_doc(method, summary, config_class)
    return entry_point


def _entry_point_doc(method, summary, config_class):
    lines = [
        summary,
        "",
        inspect.cleandoc(config_class.__doc__ or ""),
        "",
        "Same as ``apply_hardness(samples, %r, ...)``." % method,
        "",
        "Args:",
        "    samples: a :class:`fiftyone.core.collections.SampleCollection`",
        '    label_field ("ground_truth"): the ``fo.Classification`` field',
        "    run_key (%r): the run key; fields are ``{run_key}_...``" % method,
        "    overwrite (False): replace an existing run with this key",
        "    progress (None): True/False, None (FiftyOne's default) or a",
        "        callable ``(fraction, message)``",
    ]
    for p in config_class.parameters():
        lines.append("    %s (%r): %s" % (p.name, p.default, p.help))
        lines.append("        Allowed: %s." % p.allowed())
    lines += [
        "",
        "Returns:",
        "    a :class:`fiftyone_hardness.dataset_io.runs.HardnessRunResults`",
        "",
        "Raises:",
        "    HardnessError: an unknown parameter or an invalid value (before",
        "        any data is read), or bad data; nothing is written then",
    ]
    return "\n".join(lines)


compute_rer = _method_entry_point(
    "rer", "Scores label mistakes with Reconstruction Error Ratios (RER)."
)
compute_cleanlab = _method_entry_point(
    "cleanlab", "Finds label issues with confident learning (cleanlab)."
)
compute_dynamics = _method_entry_point(
    "dynamics", "Scores samples with the 13 training-dynamics methods."
)
compute_consensus = _method_entry_point(
    "consensus", "Combines existing hardness runs into one score."
)


def _apply_hardness_method(self, method, **kwargs):
    return apply_hardness(self, method, **kwargs)


_apply_hardness_method.__doc__ = apply_hardness.__doc__
focl.SampleCollection.apply_hardness = _apply_hardness_method
