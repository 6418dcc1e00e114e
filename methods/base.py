"""
The contract between the computations in ``methods/`` and the one place
that reads from and writes to FiftyOne (:mod:`fiftyone_hardness.dataset_io.runs`).

A hardness method is a function ``run(data, **kwargs) -> MethodOutput``
registered with :func:`fiftyone_hardness.methods.registry.register_method`.
``data`` is a :class:`LabeledData`: the labelled samples of a collection as
arrays (class indices, class names, sample ids) plus loaders for vector
fields, so that methods never touch FiftyOne themselves.

The method returns per-sample arrays keyed by a field *suffix*; the run layer
writes each as ``{run_key}_{suffix}``. Every ``*score`` array is oriented so
that higher = harder / more likely mislabeled.
"""

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

logger = logging.getLogger(__name__)


class HardnessError(ValueError):
    """Bad input for a hardness computation: the message says what to fix."""


@dataclass
class MethodOutput:
    """What a method computed.

    Attributes:
        fields: dict mapping a field suffix (``"score"``, ``"flag"``,
            ``"pred"``, ``"aum_score"``, ...) to an array with one entry per
            labelled sample, in the order of :attr:`LabeledData.ids`. Float
            arrays become float fields, bool arrays bool fields, string
            arrays string fields. ``None`` entries are written as ``None``.
        results: dataset-level results, JSON-serializable (dicts, lists,
            floats, ints, strings, None). Should contain ``threshold``,
            ``noise_rate`` (None where the method has no estimate) and the
            method's own extras. ``num_flagged`` and ``class_scores`` are
            filled in by the run layer from the ``flag`` / ``score`` fields
            when the method does not provide them.
    """

    fields: dict
    results: dict = field(default_factory=dict)


ProgressFn = Callable[[float, str], None]


def no_progress(fraction, message=""):
    """A progress callback that does nothing."""


@dataclass
class LabeledData:
    """The labelled samples of a collection, as arrays.

    Attributes:
        ids: (N,) array of sample ids (str)
        labels: (N,) int array of class indices into ``classes``
        classes: list of K class names
        num_skipped: number of samples of the collection that had no label
            and are not part of ``ids``
        label_field: the name of the label field
        load_values: callable ``(path) -> list`` returning the values of a
            field for exactly these samples, in this order
        load_vectors: callable ``(path) -> (N, D) float32 array`` reading a
            vector field for exactly these samples, in this order, with the
            checks and messages of ``validation.vectors_to_array``. Used by
            :meth:`embeddings` when set (a collection's reader fills one
            array in chunks instead of building a list of vectors)
        load_matrix: callable ``(path) -> (N, K) float64 array or None``
            reading per-sample numeric vectors (e.g. a predictions field's
            logits) in chunks; None when they are not one vector of one
            length per sample (then :meth:`values` tells what is wrong).
            Used by :meth:`matrix` when set
        load_member_runs: callable ``(member) -> [dict]`` describing how
            each score of consensus member ``member`` was made (see
            :meth:`member_runs`), so that the consensus can re-run the
            cheap members on labels with known injected noise
        progress: callable ``(fraction, message)`` for progress reports
        load_classes: callable ``(field) -> list or None`` returning the
            class list the collection declares for ``field``
            (``dataset.classes[field]``, else ``dataset.default_classes``)
        load_scores: callable ``(member) -> [(name, scores, flags)]``
            returning the scores of other hardness runs for these samples,
            resolved through the run schema (for consensus): ``member`` is
            ``run_key`` or ``run_key.method``; ``scores`` an (N,) float
            array (NaN where missing), ``flags`` an (N,) bool array or None
    """

    ids: np.ndarray
    labels: np.ndarray
    classes: list
    num_skipped: int = 0
    label_field: str = "ground_truth"
    load_values: Optional[Callable] = None
    progress: ProgressFn = no_progress
    load_classes: Optional[Callable] = None
    load_scores: Optional[Callable] = None
    load_vectors: Optional[Callable] = None
    load_member_runs: Optional[Callable] = None
    load_matrix: Optional[Callable] = None

    @property
    def num_samples(self):
        return len(self.ids)

    @property
    def num_classes(self):
        return len(self.classes)

    def values(self, path):
        """Returns the values of ``path`` for these samples, in order."""
        if self.load_values is None:
            raise HardnessError("These data are not backed by a collection")
        return self.load_values(path)

    def matrix(self, path):
        """Returns the per-sample vectors at ``path`` as an (N, K) float64
        array read in chunks, or None when they are not one numeric vector
        of one length per sample or the data cannot read them so (then
        read :meth:`values`)."""
        if self.load_matrix is None:
            return None
        return self.load_matrix(path)

    def get_classes(self, field):
        """Returns the class list declared for ``field`` on the dataset
        (``dataset.classes[field]``, else ``dataset.default_classes``), or
        None when neither is set."""
        if self.load_classes is None:
            return None
        return self.load_classes(field)

    def member_scores(self, member):
        """Returns ``[(name, scores, flags or None)]``, the scores of
        consensus member ``member`` (a run key or ``run_key.method``) for
        these samples.

        Raises:
            HardnessError: the data are not backed by a collection, or no
                run has such a score (the message lists the valid members)
        """
        if self.load_scores is None:
            raise HardnessError(
                "These data are not backed by a collection with hardness "
                "runs"
            )
        return self.load_scores(member)

    def member_runs(self, member):
        """Returns how each score of consensus member ``member`` was made:
        one dict per score, in the order of :meth:`member_scores`, with
        ``name`` (as there), ``run_key``, ``method``, ``label_field``,
        ``config`` (the run's stored parameters), ``score`` (None for a
        run's main score, else the sub-method's name) and ``noise_rate``
        (the run's own estimate for it, or None). Empty when the data do
        not say (arrays not backed by a collection)."""
        if self.load_member_runs is None:
            return []
        return self.load_member_runs(member)

    def embeddings(self, embeddings_field):
        """Returns ``embeddings_field`` as an (N, D) float32 array.

        Raises:
            HardnessError: when the field is missing for some samples, holds
                vectors of different lengths, or holds NaN/inf values
        """
        if not embeddings_field:
            raise HardnessError(
                "This method needs an embeddings field: pass "
                "embeddings_field=... (compute one with "
                "fiftyone_hardness.compute_embeddings)"
            )
        if self.load_vectors is not None:
            return self.load_vectors(embeddings_field)
        from fiftyone_hardness.methods.validation import vectors_to_array

        values = self.values(embeddings_field)
        return vectors_to_array(values, self.ids, embeddings_field)

    @property
    def filepaths(self):
        return np.asarray(self.values("filepath"))


def select_device(device=None):
    """Returns ``device`` or ``"cuda"`` when available, else ``"cpu"``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def top_fraction_flags(scores, fraction):
    """Flags the ``round(fraction * N)`` highest scores (ties broken by
    order). Returns an all-False mask when ``fraction`` is None or 0."""
    scores = np.asarray(scores, dtype=float)
    flags = np.zeros(len(scores), dtype=bool)
    if not fraction:
        return flags
    k = int(round(float(fraction) * len(scores)))
    if k > 0:
        flags[np.argsort(-scores, kind="stable")[:k]] = True
    return flags


def class_means(scores, labels, classes):
    """Returns ``{class: mean score}`` over the samples of each class
    (classes without samples are left out)."""
    scores = np.asarray(scores, dtype=float)
    counts = np.bincount(labels, minlength=len(classes))
    sums = np.bincount(labels, weights=scores, minlength=len(classes))
    return {
        c: float(sums[i] / counts[i])
        for i, c in enumerate(classes)
        if counts[i]
    }
