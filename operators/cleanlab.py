"""
The ``compute_cleanlab`` operator: confident learning (label issues, label
quality scores, health summary) on out-of-sample probabilities from an
existing predictions field or from a cross-validated probe / k-NN vote on an
embeddings field; see ``docs/methods.md`` section 2.

Thin: its form comes from
:class:`fiftyone_hardness.methods.confident_learning.CleanlabConfig` and it
calls :func:`fiftyone_hardness.api.apply_hardness` with
``method="cleanlab"`` through
:class:`fiftyone_hardness.operators.common.HardnessOperator`. It renders
only where the probabilities come from (a radio, then a predictions field or
an embeddings field), which is not a method parameter.
"""

import logging

import fiftyone.operators.types as types

from fiftyone_hardness.operators.common import (
    HardnessOperator,
    classification_fields,
    dropdown_input,
    embeddings_input,
    vector_fields,
)
from fiftyone_hardness.operators.forms import blocking_error

logger = logging.getLogger(__name__)

#: the choices of the ``source`` radio
SOURCES = [
    ("embeddings", "Probe on an embeddings field (out-of-sample)"),
    ("predictions", "Existing predictions (logits or probabilities)"),
]


def prediction_fields(view, label_field=None):
    """Returns the fields that can hold per-class predictions: the
    ``fo.Classification`` fields other than ``label_field`` (they need
    ``logits``) and the vector fields (per-class probabilities)."""
    fields = [f for f in classification_fields(view) if f != label_field]
    return fields + vector_fields(view)


def uses_predictions(ctx):
    """Whether the probabilities come from a predictions field (the
    ``source`` radio; from Python, passing ``pred_field`` is enough)."""
    source = ctx.params.get("source")
    if source is None:
        return bool(ctx.params.get("pred_field"))
    return source == "predictions"


class ComputeCleanlab(HardnessOperator):
    """Confident learning with cleanlab on out-of-sample probabilities."""

    method = "cleanlab"
    label = "Hardness: confident learning (cleanlab)"
    description = (
        "Find label issues with cleanlab: label quality scores, flags, "
        "health score, class quality and overlapping classes, from "
        "predictions with logits or a cross-validated probe on embeddings"
    )
    source_fields = ("pred_field", "embeddings_field")
    operator_params = ("source",)

    def source_inputs(self, ctx, inputs):
        radio = types.RadioGroup()
        for value, text in SOURCES:
            radio.add_choice(value, label=text)
        inputs.enum(
            "source",
            radio.values(),
            default="predictions" if uses_predictions(ctx) else "embeddings",
            label="Out-of-sample probabilities from",
            view=radio,
        )
        if uses_predictions(ctx):
            return _predictions_input(ctx, inputs)
        return embeddings_input(ctx, inputs)

    def hidden(self, ctx):
        if uses_predictions(ctx):
            return ("probs", "n_folds", "k", "remove_and_retrain")
        if (ctx.params.get("probs") or "logreg") == "knn":
            return ("n_folds",)
        return ("k",)

    def source_params(self, ctx):
        if uses_predictions(ctx):
            return {"pred_field": ctx.params.get("pred_field")}
        return super().source_params(ctx)

    def embeddings_first(self, ctx):
        return not uses_predictions(ctx) and super().embeddings_first(ctx)


def _predictions_input(ctx, inputs):
    """Adds the predictions field dropdown; an error that blocks execution
    when the view has no such field or no class list for it."""
    label_field = ctx.params.get("label_field")
    fields = prediction_fields(ctx.view, label_field=label_field)
    if not fields:
        blocking_error(
            inputs,
            "no_predictions",
            "No predictions field: store out-of-sample predictions as "
            "fo.Classification(label=..., logits=...) or as a vector of "
            "class probabilities, or use a probe on embeddings",
        )
        return False
    dropdown_input(
        inputs,
        "pred_field",
        [(f, f) for f in fields],
        fields[0],
        "Predictions field",
        "fo.Classification with logits, or per-class probabilities; "
        "columns in the order of dataset.classes[field] or "
        "dataset.default_classes",
        required=True,
    )
    field = ctx.params.get("pred_field") or fields[0]
    declared = (ctx.dataset.classes or {}).get(field) or (
        ctx.dataset.default_classes
    )
    if not declared:
        # the App cannot pass classes=[...]: the dataset must declare them
        blocking_error(
            inputs,
            "no_classes",
            "No class list for '%s': set dataset.classes['%s'] or "
            "dataset.default_classes to the class names in logit order"
            % (field, field),
        )
        return False
    return True
