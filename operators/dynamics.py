"""
The ``compute_dynamics`` operator (train once with the recorder, compute the
chosen training-dynamics methods, progress per epoch) and the
``compute_consensus`` operator (rank average of existing runs).

Both are thin: they parse the form and call
:func:`fiftyone_hardness.api.apply_hardness`.
"""

import logging

import fiftyone.operators.types as types

from fiftyone_hardness.operators.common import (
    HardnessOperator,
    embeddings_input,
    label_field_input,
    multi_select_input,
    run_key_input,
)

logger = logging.getLogger(__name__)

#: the 13 methods, in H-CAT's order (kept here so that the form does not
#: import torch)
DYNAMICS_METHODS = [
    ("aum", "AUM: area under the margin"),
    ("data_iq", "Data-IQ: easy / ambiguous / hard groups"),
    ("data_maps", "Data Maps: confidence and variability"),
    ("el2n", "EL2N: error norm early in training"),
    ("grand", "GraNd: per-sample gradient norm"),
    ("forgetting", "Forgetting events"),
    ("loss", "Small loss"),
    ("prototypicality", "Prototypicality: distance to class centroid"),
    ("vog", "VoG: variance of input gradients"),
    ("allsh", "ALLSH: divergence under augmentation"),
    ("conf_agree", "Conf-Agree: MC-dropout confidence"),
    ("detector", "Detector: P(noisy) from flipped-label trajectories"),
    ("cleanlab", "cleanlab on cross-validated probabilities"),
]


class ComputeDynamics(HardnessOperator):
    """Trains a model once (an MLP on an embeddings field, or a small CNN on
    the images) with the recorder and writes the chosen methods."""

    method = "dynamics"
    label = "Hardness: training dynamics"
    description = (
        "Train once and score every sample with the 13 H-CAT "
        "training-dynamics methods (AUM, Data-IQ, Data Maps, EL2N, ...)"
    )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ready = label_field_input(ctx, inputs)
        if ready:
            on = types.RadioGroup()
            on.add_choice("embeddings", label="MLP on an embeddings field")
            on.add_choice("images", label="Small CNN on the images")
            inputs.enum(
                "on",
                on.values(),
                default="embeddings",
                label="Train on",
                view=on,
            )
            if ctx.params.get("on", "embeddings") == "embeddings":
                ready = embeddings_input(ctx, inputs)
        if ready:
            ready = self.method_inputs(ctx, inputs) is not False
        if ready:
            run_key_input(ctx, inputs, default=self.method)
        return types.Property(inputs, view=types.View(label=self.label))

    def method_inputs(self, ctx, inputs):
        multi_select_input(
            inputs,
            "methods",
            DYNAMICS_METHODS,
            [m for m, _ in DYNAMICS_METHODS],
            "Methods",
            "Each writes {run_key}_{method}_score (higher = harder) and "
            "{run_key}_{method}_flag",
        )
        inputs.int("epochs", default=20, label="Epochs", required=True)
        inputs.int("batch_size", default=64, label="Batch size")
        inputs.float("lr", default=1e-3, label="Learning rate")
        inputs.int("hidden", default=256, label="Hidden units")
        inputs.int("seed", default=0, label="Seed")
        if ctx.params.get("on") == "images":
            inputs.int("image_size", default=32, label="Image size (px)")
        inputs.float(
            "noise_rate",
            default=None,
            label="Known noise rate (optional)",
            description=(
                "Fraction flagged by the top-fraction rules; empty for the "
                "estimate from the margins"
            ),
        )
        epochs = ctx.params.get("epochs", 20)
        if epochs is not None and int(epochs) < 2:
            inputs.view(
                "few_epochs",
                types.Error(
                    label="At least 2 epochs",
                    description="The methods compare the model across epochs",
                ),
            )
            return False
        return bool(ctx.params.get("methods", True))

    def method_params(self, ctx):
        params = {}
        methods = ctx.params.get("methods")
        if methods:
            params["methods"] = list(methods)
        for name, cast in (
            ("epochs", int),
            ("batch_size", int),
            ("lr", float),
            ("hidden", int),
            ("seed", int),
            ("noise_rate", float),
        ):
            value = ctx.params.get(name)
            if value is not None:
                params[name] = cast(value)
        return params

    def execute(self, ctx):
        if ctx.params.get("on", "embeddings") != "images":
            result = yield from super().execute(ctx)
            return result

        params = self.method_params(ctx)
        params["on"] = "images"
        if ctx.params.get("image_size"):
            params["image_size"] = int(ctx.params["image_size"])
        yield from self.run_method(ctx, params)


def consensus_members(dataset):
    """Returns ``(value, label)`` choices of consensus members: every
    hardness run with a score, and each method of a dynamics run as
    ``run_key.method``."""
    from fiftyone_hardness.dataset_io import runs

    choices = []
    for key in runs.list_hardness_runs(dataset):
        config = dataset.get_run_info(key).config
        suffixes = list(getattr(config, "field_suffixes", []) or [])
        if "score" in suffixes:
            choices.append((key, "%s (%s)" % (key, config.method)))
        methods = [
            s[: -len("_score")]
            for s in suffixes
            if s.endswith("_score") and s != "score"
        ]
        if methods:
            choices.append((key, "%s: all %d methods" % (key, len(methods))))
            choices.extend(
                ("%s.%s" % (key, m), "%s.%s" % (key, m)) for m in methods
            )
    return choices


class ComputeConsensus(HardnessOperator):
    """Rank-averages the oriented scores of existing hardness runs."""

    method = "consensus"
    label = "Hardness: consensus of runs"
    description = (
        "Rank average of the scores of chosen hardness runs / methods, with "
        "a majority flag and their pairwise Spearman agreement"
    )
    needs_embeddings = False

    def method_inputs(self, ctx, inputs):
        choices = consensus_members(ctx.dataset)
        if not choices:
            inputs.view(
                "no_runs",
                types.Warning(
                    label="No hardness runs yet",
                    description="Run training dynamics (or another method) "
                    "first",
                ),
            )
            return False
        multi_select_input(
            inputs,
            "runs",
            choices,
            None,
            "Members",
            "Run keys (a dynamics run contributes all its methods) or "
            "run_key.method",
        )
        rule = types.RadioGroup()
        rule.add_choice("majority", label="Flagged by most members")
        rule.add_choice("top", label="Top noise-rate fraction")
        inputs.enum(
            "rule",
            rule.values(),
            default="majority",
            label="Flag rule",
            view=rule,
        )
        if ctx.params.get("rule") == "top":
            inputs.float("noise_rate", label="Noise rate (optional)")
        return bool(ctx.params.get("runs"))

    def method_params(self, ctx):
        params = {
            "runs": list(ctx.params.get("runs") or []),
            "rule": ctx.params.get("rule") or "majority",
        }
        if ctx.params.get("noise_rate") is not None:
            params["noise_rate"] = float(ctx.params["noise_rate"])
        return params
