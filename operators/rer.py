"""
The ``compute_rer`` operator: Reconstruction Error Ratios (class-wise
autoencoders) on an embeddings field, for label mistakes, class difficulty
and dataset difficulty.

Thin: it parses the form and calls
:func:`fiftyone_hardness.api.apply_hardness` with ``method="rer"`` through
:class:`fiftyone_hardness.operators.common.HardnessOperator`.
"""
import logging

import fiftyone.operators.types as types

from fiftyone_hardness.operators.common import (
    HardnessOperator,
    dropdown_input,
)

logger = logging.getLogger(__name__)

#: kept here (not imported from methods/) so that the form does not import
#: torch
OBJECTIVES = [
    ("umap", "Parametric UMAP + reconstruction (default)"),
    ("reconstruction", "Reconstruction only"),
]
#: the form's choices for ``pca_components`` (the value "none" is None)
PCA_CHOICES = [
    ("auto", "Automatic: 90% of the variance when dims > samples per class"),
    ("none", "Off: the features as they are"),
    ("0.9", "Principal components explaining 90% of the variance"),
    ("0.95", "Principal components explaining 95% of the variance"),
    ("0.99", "Principal components explaining 99% of the variance"),
]
CALIBRATIONS = [
    ("fitted", "Fitted to our autoencoders (default)"),
    ("reference", "Reference constants (RER paper)"),
]
DIFFICULTY_RANGES = [
    ("data", "From the data (labels as good as possible .. random)"),
    ("ViT-L-14", "CLIP ViT-L/14 reference range (0.76, 1.04)"),
    ("ViT-B-32", "CLIP ViT-B/32 reference range (0.84, 1.01)"),
]


class ComputeRER(HardnessOperator):
    """Reconstruction Error Ratios on an embeddings field."""

    method = "rer"
    label = "Hardness: reconstruction error ratios (RER)"
    description = (
        "Train one small autoencoder per class on an embeddings field; "
        "score each sample by how much better another class reconstructs "
        "it, and estimate the noise rate and class / dataset difficulty"
    )

    def method_inputs(self, ctx, inputs):
        dropdown_input(
            inputs, "objective", OBJECTIVES, "umap", "Training objective"
        )
        inputs.int(
            "epochs",
            default=10,
            label="Epochs",
            description=(
                "Passes over the average class; longer training memorizes "
                "mislabeled samples (the thresholds are fitted for 10)"
            ),
        )
        inputs.float(
            "fit_frac",
            default=1.0,
            label="Fraction of each class used to fit",
        )
        inputs.int(
            "fit_samples_per_class",
            label="At most this many samples per class to fit (optional)",
        )
        dropdown_input(
            inputs,
            "pca_components",
            PCA_CHOICES,
            "auto",
            "Reduce dimensions first",
            description=(
                "Project the features on their principal components before "
                "training (label-free); helps when the features have more "
                "dimensions than a class has samples"
            ),
        )
        inputs.bool(
            "estimate_probs",
            default=False,
            label="Estimate mistake probabilities ({run_key}_prob)",
        )
        inputs.bool(
            "unsupervised",
            default=False,
            label="Unsupervised (k-means clusters instead of labels)",
        )
        if ctx.params.get("unsupervised", False):
            inputs.int("n_clusters", label="Clusters (default: #classes)")
        dropdown_input(
            inputs,
            "difficulty_range",
            DIFFICULTY_RANGES,
            "data",
            "Difficulty normalization",
        )
        dropdown_input(
            inputs, "calibration", CALIBRATIONS, "fitted", "Threshold constants"
        )
        inputs.int("seed", default=0, label="Seed")
        fit_frac = ctx.params.get("fit_frac")
        if fit_frac is not None and not 0 < float(fit_frac) <= 1:
            inputs.view(
                "bad_fit_frac",
                types.Error(label="The fit fraction must be in (0, 1]"),
            )
            return False
        epochs = ctx.params.get("epochs")
        if epochs is not None and int(epochs) < 1:
            inputs.view("bad_epochs", types.Error(label="Epochs must be >= 1"))
            return False
        return True

    def method_params(self, ctx):
        params = {}
        for name, cast in (
            ("objective", str),
            ("epochs", int),
            ("fit_frac", float),
            ("fit_samples_per_class", int),
            ("estimate_probs", bool),
            ("unsupervised", bool),
            ("n_clusters", int),
            ("calibration", str),
            ("seed", int),
        ):
            value = ctx.params.get(name)
            if value is not None:
                params[name] = cast(value)
        pca = ctx.params.get("pca_components")
        if pca == "none":
            params["pca_components"] = None
        elif pca is not None:
            params["pca_components"] = pca if pca == "auto" else float(pca)
        difficulty = ctx.params.get("difficulty_range")
        if difficulty and difficulty != "data":
            params["difficulty_range"] = difficulty
        if not params.get("unsupervised"):
            params.pop("n_clusters", None)
        return params
