"""
The parameters of the training-dynamics methods (:class:`DynamicsConfig`)
and the names of the 13 methods: the one source of their defaults, their
validation, the App form and the stored run config.

Imports no torch, so that building a form or listing methods stays cheap.
"""

from dataclasses import dataclass

import numpy as np

from fiftyone_hardness.methods.config import MethodConfig, param

#: the 13 H-CAT methods, in H-CAT's order: name -> what the stored score is
#: (every score is oriented higher = harder)
METHOD_DESCRIPTIONS = {
    "aum": "AUM: area under the margin of the training passes (-AUM)",
    "data_iq": "Data-IQ: easy / ambiguous / hard group, then 1 - confidence",
    "data_maps": "Data Maps: 1 - confidence (variability as an extra)",
    "el2n": "EL2N: error L2 norm early in training",
    "grand": "GraNd: per-sample gradient norm early in training",
    "forgetting": "Forgetting events; never learned ranks highest",
    "loss": "Small loss: mean cross-entropy over epochs",
    "prototypicality": "Prototypicality: cosine distance to the class "
    "centroid",
    "vog": "VoG: variance of input gradients over checkpoints",
    "allsh": "ALLSH: KL divergence under label-preserving augmentation",
    "conf_agree": "Conf-Agree: 1 - MC-dropout confidence",
    "detector": "Detector: P(noisy) from flipped-label trajectories",
    "cleanlab": "cleanlab: confident learning on cross-validated "
    "probabilities",
}

#: the methods that also run alone under their own name (``"cleanlab"``
#: alone is confident learning, :mod:`fiftyone_hardness.methods.
#: confident_learning`; here it is only part of ``"dynamics"``)
SINGLE_METHODS = {
    name: description
    for name, description in METHOD_DESCRIPTIONS.items()
    if name != "cleanlab"
}

ON_CHOICES = [
    ("embeddings", "MLP on an embeddings field"),
    ("images", "Small CNN on the images"),
]

CHANNEL_CHOICES = [
    ("auto", "As the images are"),
    ("gray", "Grayscale"),
    ("rgb", "RGB"),
]

VOG_TARGETS = [
    ("log_prob", "log p(observed class) (default)"),
    ("logit", "raw logit of the observed class (VoG paper)"),
]


#: parameters that do not change the trained model (see
#: :meth:`SingleDynamicsConfig.training_dict`)
_NOT_TRAINING = (
    "embeddings_field",
    "image_size",
    "channels",
    "noise_rate",
    "device",
    "use_cache",
    "methods",
    "memory_budget_mb",
)


@dataclass
class SingleDynamicsConfig(MethodConfig):
    """Training dynamics: train a model once with a recorder (an MLP on an
    embeddings field, or a small CNN on the images) and score each sample
    from what it recorded; see ``docs/methods.md`` section 3. Two runs with
    equal configs on equal data train identical models (on CPU).

    This is also the training setup of the recorder
    (:mod:`fiftyone_hardness.methods.dynamics.recorder`): :attr:`model`,
    :attr:`early_index` and :attr:`vog_indices` are derived from it."""

    embeddings_field: str = param(
        None,
        "The vector field the MLP trains on (with on='embeddings')",
        kind="str",
        label="Embeddings field",
    )
    on: str = param(
        "embeddings",
        "'embeddings' (an MLP on an embeddings field) or 'images' (a small "
        "CNN on the images, resized to image_size)",
        choices=ON_CHOICES,
        label="Train on",
    )
    noise_rate: float = param(
        None,
        "Fraction flagged by the top-fraction rules; empty for the estimate "
        "from the margins",
        kind="float",
        minimum=0,
        maximum=1,
        exclusive_maximum=True,
        label="Known noise rate (optional)",
    )
    epochs: int = param(20, "Training epochs", minimum=2, label="Epochs")
    batch_size: int = param(64, "Minibatch size", minimum=1)
    lr: float = param(
        1e-3,
        "Adam learning rate",
        minimum=0,
        exclusive_minimum=True,
        label="Learning rate",
    )
    hidden: int = param(
        256,
        "Width of the penultimate layer",
        minimum=1,
        label="Hidden units",
    )
    seed: int = param(
        0, "Seed of initialization, shuffling and dropout", minimum=0
    )
    image_size: int = param(
        32,
        "Image side for on='images'",
        minimum=8,
        label="Image size (px)",
    )
    channels: str = param(
        "auto",
        "Image channels for on='images'",
        choices=CHANNEL_CHOICES,
        form=False,
    )
    weight_decay: float = param(
        0.0, "Adam weight decay", minimum=0, form=False
    )
    dropout: float = param(
        0.2,
        "Dropout before the last layer (MC dropout uses it)",
        minimum=0,
        maximum=1,
        exclusive_maximum=True,
        form=False,
    )
    standardize: bool = param(
        True,
        "z-score each input dimension (vectors) or channel (images) first",
        form=False,
    )
    early_epoch: int = param(
        None,
        "The (1-based) epoch at which EL2N and GraNd are read; empty for "
        "max(1, round(epochs / 5))",
        kind="int",
        minimum=1,
        form=False,
    )
    vog_checkpoints: int = param(
        5,
        "Evenly spaced epochs (the last included) at which VoG's input "
        "gradients are taken",
        minimum=2,
        form=False,
    )
    vog_target: str = param(
        "log_prob",
        "What VoG differentiates: the observed class's log probability, or "
        "its raw logit as in the VoG paper (logits are defined only up to a "
        "per-sample constant, whose gradient swamps the raw-logit version: "
        "AUROC ~0.3 on digits with 20% noise)",
        choices=VOG_TARGETS,
        form=False,
    )
    mc_passes: int = param(
        10, "MC-dropout passes for Conf-Agree", minimum=1, form=False
    )
    augment_passes: int = param(
        4, "Augmented passes for ALLSH", minimum=1, form=False
    )
    augment_noise: float = param(
        0.1,
        "Std of ALLSH's Gaussian noise, in units of the standardized input",
        minimum=0,
        form=False,
    )
    augment_flip: bool = param(
        True,
        "Whether ALLSH also flips images horizontally (every other pass); "
        "turn it off where a flip changes the class (digits, text)",
        form=False,
    )
    cv_folds: int = param(
        3,
        "Folds of the cross-validated probabilities for cleanlab",
        minimum=2,
        form=False,
    )
    detector_flip_rate: float = param(
        0.1,
        "Fraction of the samples flipped on purpose in the Detector's "
        "calibration run",
        minimum=0,
        exclusive_minimum=True,
        maximum=1,
        exclusive_maximum=True,
        form=False,
    )
    eval_batch_size: int = param(
        1024,
        "Batch size of the recorder's eval passes",
        minimum=1,
        form=False,
    )
    batched_members: bool = param(
        True,
        "Train the cross-validation models (cleanlab) and the Detector's "
        "calibration run alongside the main model as one batched model; "
        "False trains them one after another (same results up to float "
        "rounding, slower)",
        form=False,
    )
    memory_budget_mb: float = param(
        2048,
        "Memory (MiB) the recorder's per-sample arrays (per-epoch logits, "
        "features, MC-dropout and augmented probabilities, trajectories) "
        "may hold; the rest go to disk-backed arrays in the temporary "
        "directory ($TMPDIR). The scores do not depend on it",
        kind="float",
        minimum=0,
        form=False,
    )
    device: str = param(
        None, "torch device; 'cuda' when available", kind="str", form=False
    )
    use_cache: bool = param(
        True,
        "Reuse a recorded training of the same data and setup",
        form=False,
    )

    def check(self):
        if self.early_epoch is not None and self.early_epoch > self.epochs:
            return (
                "early_epoch",
                "Invalid early_epoch=%d: must be between 1 and epochs=%d"
                % (self.early_epoch, self.epochs),
            )
        return None

    def training_dict(self):
        """Returns the parameters that decide the trained model and what the
        recorder collects, plus :attr:`model`: a record's config and its
        cache key. The others choose the inputs (which are hashed
        themselves), the flags or the caching, so a record is reused across
        them."""
        values = self.to_dict()
        for name in _NOT_TRAINING:
            values.pop(name, None)
        values["model"] = self.model
        return values

    @property
    def model(self):
        """``"mlp"`` on embeddings, ``"cnn"`` on images."""
        return "cnn" if self.on == "images" else "mlp"

    @property
    def early_index(self):
        """The 0-based epoch index of EL2N / GraNd."""
        epoch = self.early_epoch or max(1, int(round(self.epochs / 5.0)))
        return int(epoch) - 1

    @property
    def vog_indices(self):
        """The 0-based epoch indices of VoG's checkpoints."""
        count = max(2, min(int(self.vog_checkpoints), int(self.epochs)))
        return sorted(
            set(np.linspace(0, self.epochs - 1, count).round().astype(int))
        )


def _check_methods(value):
    unknown = [m for m in value if m not in METHOD_DESCRIPTIONS]
    if unknown:
        return "unknown method(s) %s; choose from %s" % (
            ", ".join(map(repr, unknown)),
            ", ".join(METHOD_DESCRIPTIONS),
        )
    if not value:
        return "choose at least one method"
    return None


@dataclass
class DynamicsConfig(SingleDynamicsConfig):
    """The ``"dynamics"`` run: :class:`SingleDynamicsConfig` plus the
    choice of methods (all 13 by default; None also means all 13)."""

    methods: list = param(
        list(METHOD_DESCRIPTIONS),
        "Each writes {run_key}_{method}_score (higher = harder) and "
        "{run_key}_{method}_flag",
        kind="strings",
        optional=True,
        check=_check_methods,
        form_choices=list(METHOD_DESCRIPTIONS.items()),
        label="Methods",
    )

    @property
    def method_names(self):
        """The chosen method names, in H-CAT's order (all 13 when
        :attr:`methods` is None)."""
        chosen = set(self.methods or METHOD_DESCRIPTIONS)
        return [name for name in METHOD_DESCRIPTIONS if name in chosen]
