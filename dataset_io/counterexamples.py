"""
Counter-examples of a suspicious label (CINCER), read from and shown in a
FiftyOne collection; the computation is
:mod:`fiftyone_hardness.methods.counterexamples`.
"""

import logging

import numpy as np

from fiftyone_hardness.dataset_io import data as fhd
from fiftyone_hardness.methods import counterexamples as fce
from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)


def find_counterexamples(samples, sample_id, label_field, config):
    """Finds the counter-examples of a suspicious sample (CINCER); see
    :func:`fiftyone_hardness.find_counterexamples`.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        sample_id: the suspicious sample's id
        label_field: the ``fo.Classification`` field
        config: a
            :class:`fiftyone_hardness.methods.counterexamples.CounterexamplesConfig`
    """
    data = fhd.load_labeled_data(samples, label_field)
    positions = np.flatnonzero(data.ids == str(sample_id))
    if not len(positions):
        raise HardnessError(
            "Sample %s is not a labelled sample of this collection" % sample_id
        )
    index = int(positions[0])
    target = None
    target_label = config.target_label
    if target_label is not None:
        if target_label not in data.classes:
            raise HardnessError(
                "Unknown class '%s'; the classes of '%s' are %s"
                % (target_label, label_field, ", ".join(data.classes))
            )
        target = data.classes.index(target_label)
    features = data.embeddings(config.embeddings_field)
    found = fce.rank_counterexamples(
        features,
        data.labels,
        data.num_classes,
        index,
        target=target,
        k=config.k,
        fisher_size=config.fisher_size,
        seed=config.seed,
        C=config.C,
        max_train=config.max_train,
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
