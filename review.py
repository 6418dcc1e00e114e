"""
Reviewing suspicious labels from Python: counter-examples (CINCER), review
verdicts kept apart from the labels, and corrections that can be undone.

Example::

    import fiftyone_hardness as foh
    from fiftyone_hardness import review

    result = review.find_counterexamples(
        dataset, sample_id, embeddings_field="embeddings", k=5
    )
    session.view = result["view"]  # the sample, then its counter-examples

    review.mark_label_wrong(dataset, [sample_id], "7")
    review.apply_corrections(dataset)      # ground_truth corrected in place
    review.undo_corrections(dataset)       # ... and restored byte for byte
"""

import logging

import numpy as np

from fiftyone_hardness.methods import counterexamples as fce
from fiftyone_hardness.methods import runs
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.review import (  # noqa: F401
    apply_corrections,
    backup_field,
    clear_reviews,
    mark_label_right,
    mark_label_wrong,
    mark_labels,
    review_field,
    review_summary,
    reviewed_view,
    undo_corrections,
)

logger = logging.getLogger(__name__)

__all__ = [
    "find_counterexamples",
    "mark_labels",
    "mark_label_wrong",
    "mark_label_right",
    "clear_reviews",
    "reviewed_view",
    "review_summary",
    "apply_corrections",
    "undo_corrections",
    "review_field",
    "backup_field",
]


def find_counterexamples(
    samples,
    sample_id,
    label_field="ground_truth",
    embeddings_field="embeddings",
    k=5,
    target_label=None,
    fisher_size=100,
    seed=0,
    C=1.0,
    max_train=50000,
):
    """Finds the counter-examples of a suspicious sample (CINCER).

    A softmax last layer is fit on ``embeddings_field`` to the labels of
    ``samples``. The candidates are the samples labelled with the class the
    model predicts for ``sample_id``; each is scored by its incompatibility
    with ``sample_id``'s label under the last-layer Fisher kernel (empirical
    Fisher over ``fisher_size`` random samples, pseudo-inverted). Show the
    sample next to its top counter-examples and decide which label is wrong:
    if the sample's label is right, the counter-examples are likely
    mislabeled; otherwise the sample is.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        sample_id: the suspicious sample's id
        label_field ("ground_truth"): the ``fo.Classification`` field
        embeddings_field ("embeddings"): the features the model is fit on
        k (5): the number of counter-examples
        target_label (None): the class whose samples are candidates; by
            default the model's prediction for the sample (its most
            probable other class when the model agrees with the label)
        fisher_size (100): samples in the Fisher subset (CINCER: 30-100)
        seed (0): the Fisher subset seed
        C (1.0): the last layer's inverse L2 regularization strength
        max_train (50000): fit the last layer on a random subset of at most
            this many samples (None for all)

    Returns:
        a dict with ``sample_id``, ``label``, ``predicted`` (the model's
        class for the sample), ``probability`` (the model's probability of
        the sample's label), ``target_label``, ``counterexample_ids`` (most
        incompatible first), ``scores`` (their incompatibility, higher =
        more incompatible), ``num_candidates`` and ``view`` (the sample
        followed by its counter-examples, in that order)

    Raises:
        HardnessError: the sample is not a labelled sample of ``samples``,
            missing embeddings, unknown ``target_label``
    """
    data = runs.load_labeled_data(samples, label_field)
    positions = np.flatnonzero(data.ids == str(sample_id))
    if not len(positions):
        raise HardnessError(
            "Sample %s is not a labelled sample of this collection" % sample_id
        )
    index = int(positions[0])
    target = None
    if target_label is not None:
        if target_label not in data.classes:
            raise HardnessError(
                "Unknown class '%s'; the classes of '%s' are %s"
                % (target_label, label_field, ", ".join(data.classes))
            )
        target = data.classes.index(target_label)
    features = data.embeddings(embeddings_field)
    found = fce.rank_counterexamples(
        features,
        data.labels,
        data.num_classes,
        index,
        target=target,
        k=k,
        fisher_size=fisher_size,
        seed=seed,
        C=C,
        max_train=max_train,
    )
    ids = [str(data.ids[i]) for i in found["indices"]]
    return {
        "sample_id": str(sample_id),
        "label": data.classes[data.labels[index]],
        "predicted": data.classes[found["predicted"]],
        "probability": found["probability"],
        "target_label": data.classes[found["target"]],
        "counterexample_ids": ids,
        "scores": found["scores"],
        "num_candidates": found["num_candidates"],
        "view": samples.select([str(sample_id)] + ids, ordered=True),
    }
