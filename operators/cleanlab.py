"""
The ``compute_cleanlab`` operator: confident learning (label issues, label
quality scores, health summary) on out-of-sample probabilities from an
existing predictions field or from a cross-validated probe / k-NN vote on an
embeddings field.

Thin: it parses the form and calls
:func:`fiftyone_hardness.api.apply_hardness` with ``method="cleanlab"``.
"""

import logging

import fiftyone.operators.types as types

from fiftyone_hardness.operators.common import (
    HardnessOperator,
    classification_fields,
    dropdown_input,
    embeddings_input,
    label_field_input,
    run_key_input,
    vector_fields,
)

logger = logging.getLogger(__name__)

#: kept here (not imported from methods/) so that the form does not import
#: cleanlab or torch
SCORE_METHODS = [
    ("self_confidence", "Self-confidence: p(given label)"),
    ("normalized_margin", "Normalized margin"),
    ("confidence_weighted_entropy", "Confidence-weighted entropy"),
]
FILTER_BY = [
    ("prune_by_noise_rate", "prune_by_noise_rate (cleanlab default)"),
    ("prune_by_class", "prune_by_class"),
    ("both", "both"),
    ("confident_learning", "confident_learning (off-diagonals)"),
    ("predicted_neq_given", "predicted_neq_given"),
    ("low_normalized_margin", "low_normalized_margin"),
    ("low_self_confidence", "low_self_confidence"),
]
PROBES = [
    ("logreg", "Cross-validated logistic regression"),
    ("mlp", "Cross-validated MLP"),
    ("knn", "Leave-one-out k-NN vote (cosine, k=10)"),
]


def prediction_fields(view, label_field=None):
    """Returns the fields that can hold per-class predictions: the
    ``fo.Classification`` fields other than ``label_field`` (they need
    ``logits``) and the vector fields (per-class probabilities)."""
    fields = [f for f in classification_fields(view) if f != label_field]
    return fields + vector_fields(view)


class ComputeCleanlab(HardnessOperator):
    """Confident learning with cleanlab on out-of-sample probabilities."""

    method = "cleanlab"
    label = "Hardness: confident learning (cleanlab)"
    description = (
        "Find label issues with cleanlab: label quality scores, flags, "
        "health score, class quality and overlapping classes, from "
        "predictions with logits or a cross-validated probe on embeddings"
    )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ready = label_field_input(ctx, inputs)
        if ready:
            source = types.RadioGroup()
            source.add_choice(
                "embeddings",
                label="Probe on an embeddings field (cross-validated)",
            )
            source.add_choice(
                "predictions",
                label="Existing predictions (logits or probabilities)",
            )
            inputs.enum(
                "source",
                source.values(),
                default="embeddings",
                label="Out-of-sample probabilities from",
                view=source,
            )
            if ctx.params.get("source", "embeddings") == "predictions":
                ready = self._predictions_input(ctx, inputs)
            else:
                ready = embeddings_input(ctx, inputs)
                if ready:
                    dropdown_input(inputs, "probs", PROBES, "logreg", "Probe")
        if ready:
            ready = self.method_inputs(ctx, inputs) is not False
        if ready:
            run_key_input(ctx, inputs, default=self.method)
        return types.Property(inputs, view=types.View(label=self.label))

    def _predictions_input(self, ctx, inputs):
        label_field = ctx.params.get("label_field")
        fields = prediction_fields(ctx.view, label_field=label_field)
        if not fields:
            inputs.view(
                "no_predictions",
                types.Error(
                    label="No predictions field",
                    description=(
                        "Store out-of-sample predictions as "
                        "fo.Classification(label=..., logits=...) or as a "
                        "vector of class probabilities, or use a probe on "
                        "embeddings"
                    ),
                ),
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
            inputs.view(
                "no_classes",
                types.Warning(
                    label="No class list for '%s'" % field,
                    description=(
                        "Set dataset.classes['%s'] or dataset.default_classes "
                        "to the class names in logit order" % field
                    ),
                ),
            )
            return False
        return True

    def method_inputs(self, ctx, inputs):
        dropdown_input(
            inputs,
            "score_method",
            SCORE_METHODS,
            "self_confidence",
            "Label quality score",
            "Stored as {run_key}_score = 1 - label quality",
        )
        dropdown_input(
            inputs,
            "filter_by",
            FILTER_BY,
            "prune_by_noise_rate",
            "Flag rule (cleanlab.filter.find_label_issues)",
        )
        if ctx.params.get("source", "embeddings") == "embeddings":
            if ctx.params.get("probs", "logreg") == "knn":
                inputs.int("k", default=10, label="Neighbours (k)")
            else:
                inputs.int("n_folds", default=5, label="Folds")
                n_folds = ctx.params.get("n_folds", 5)
                if n_folds is not None and int(n_folds) < 2:
                    inputs.view(
                        "few_folds",
                        types.Error(label="Cross-validation needs 2+ folds"),
                    )
                    return False
            inputs.bool(
                "remove_and_retrain",
                default=False,
                label="Remove and retrain",
                description=(
                    "Compare a probe trained without the flagged samples "
                    "to one trained on all, on a held-out split"
                ),
            )
        inputs.bool(
            "store_probs",
            default=False,
            label="Store the probabilities ({run_key}_probs)",
        )
        inputs.int("seed", default=0, label="Seed")
        return True

    def method_params(self, ctx):
        params = {}
        for name, cast in (
            ("score_method", str),
            ("filter_by", str),
            ("probs", str),
            ("n_folds", int),
            ("k", int),
            ("seed", int),
            ("store_probs", bool),
            ("remove_and_retrain", bool),
        ):
            value = ctx.params.get(name)
            if value is not None:
                params[name] = cast(value)
        if ctx.params.get("source", "embeddings") == "predictions":
            for name in ("probs", "n_folds", "k", "remove_and_retrain"):
                params.pop(name, None)
            params["pred_field"] = ctx.params["pred_field"]
        return params

    def execute(self, ctx):
        if ctx.params.get("source", "embeddings") != "predictions":
            result = yield from super().execute(ctx)
            return result

        yield from self.run_method(ctx, self.method_params(ctx))
