"""
Reading labelled data out of a FiftyOne collection: the one read path.

:func:`load_labeled_data` validates the label field and returns a
:class:`fiftyone_hardness.methods.base.LabeledData` (ids, class indices,
class names, and loaders for other fields), so that methods never touch
FiftyOne themselves.
"""
import logging

import numpy as np

import fiftyone as fo

from fiftyone_hardness.dataset_io.run_views import member_scores_loader
from fiftyone_hardness.methods.base import HardnessError, LabeledData

logger = logging.getLogger(__name__)


def validate_label_field(samples, label_field):
    """Checks that ``label_field`` is a ``fo.Classification`` field.

    Raises:
        HardnessError: if the field is missing or of another type
    """
    schema = samples.get_field_schema()
    classification_fields = sorted(
        name
        for name, field in schema.items()
        if isinstance(field, fo.EmbeddedDocumentField)
        and issubclass(field.document_type, fo.Classification)
    )
    hint = (
        "Classification fields here: %s" % ", ".join(classification_fields)
        if classification_fields
        else "this dataset has no fo.Classification field"
    )
    if label_field.startswith(samples._FRAMES_PREFIX) or (
        "." in label_field
    ):
        raise HardnessError(
            "'%s' is a %s field; hardness methods score top-level "
            "fo.Classification fields of samples. Copy the labels into a "
            "top-level field first (e.g. dataset.clone_sample_field or "
            "set_values); %s"
            % (
                label_field,
                "frame"
                if label_field.startswith(samples._FRAMES_PREFIX)
                else "nested",
                hint,
            )
        )
    if label_field not in schema:
        raise HardnessError(
            "Dataset '%s' has no field '%s'; %s"
            % (samples._dataset.name, label_field, hint)
        )
    if label_field not in classification_fields:
        field = schema[label_field]
        kind = getattr(field, "document_type", None) or type(field)
        raise HardnessError(
            "Field '%s' holds %s, but hardness methods need fo.Classification "
            "labels; %s" % (label_field, kind.__name__, hint)
        )


def load_labeled_data(samples, label_field, progress=None):
    """Reads the labelled samples of ``samples`` as arrays.

    Samples whose label is missing are skipped and counted in
    ``num_skipped``. Classes are the observed labels, in the order of
    ``dataset.classes[label_field]`` or ``dataset.default_classes`` when
    declared, else sorted.

    Raises:
        HardnessError: empty collection, bad label field, no labels
    """
    if len(samples) == 0:
        raise HardnessError(
            "The collection is empty: nothing to compute hardness on"
        )
    validate_label_field(samples, label_field)
    ids, labels = samples.values(["id", label_field + ".label"])
    keep = np.array([label is not None for label in labels], dtype=bool)
    if not keep.any():
        raise HardnessError(
            "No sample of this collection has a label in '%s'" % label_field
        )
    ids = np.asarray(ids)[keep]
    labels = [label for label, k in zip(labels, keep) if k]
    observed = set(labels)
    declared = declared_classes(samples, label_field) or []
    classes = [c for c in declared if c in observed]
    classes += sorted(observed - set(classes))
    index = {c: i for i, c in enumerate(classes)}

    cache = {}

    def load_values(path):
        if path not in cache:
            values = samples.values(path)
            cache[path] = [v for v, k in zip(values, keep) if k]
        return cache[path]

    return LabeledData(
        ids=ids,
        labels=np.array([index[label] for label in labels], dtype=int),
        classes=classes,
        num_skipped=int((~keep).sum()),
        label_field=label_field,
        load_values=load_values,
        progress=progress or (lambda fraction, message="": None),
        load_classes=lambda field: declared_classes(samples, field),
        load_scores=member_scores_loader(samples, load_values),
    )


def declared_classes(samples, field):
    dataset = samples._dataset
    classes = dataset.classes.get(field) if dataset.classes else None
    return list(classes or dataset.default_classes or []) or None
