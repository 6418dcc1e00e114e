"""
The ``compute_dynamics`` operator: train once with the recorder and compute
the chosen training-dynamics methods, with progress per epoch.

Thin: its form comes from
:class:`fiftyone_hardness.methods.dynamics.config.DynamicsConfig` (the
methods and their descriptions, the defaults, the validation) and it calls
:func:`fiftyone_hardness.api.apply_hardness` with ``method="dynamics"``
through :class:`fiftyone_hardness.operators.common.HardnessOperator`.
"""

from fiftyone_hardness.operators.common import (
    HardnessOperator,
    embeddings_input,
)


class ComputeDynamics(HardnessOperator):
    """Trains a model once (an MLP on an embeddings field, or a small CNN on
    the images) with the recorder and writes the chosen methods."""

    method = "dynamics"
    label = "Hardness: training dynamics"
    description = (
        "Train once and score every sample with the 13 H-CAT "
        "training-dynamics methods (AUM, Data-IQ, Data Maps, EL2N, ...)"
    )

    @staticmethod
    def _on_images(ctx):
        return ctx.params.get("on") == "images"

    def source_inputs(self, ctx, inputs):
        # a small CNN on the images needs no embeddings field
        if self._on_images(ctx):
            return True
        return embeddings_input(ctx, inputs)

    def source_params(self, ctx):
        if self._on_images(ctx):
            return {}
        return super().source_params(ctx)

    def embeddings_first(self, ctx):
        return not self._on_images(ctx) and super().embeddings_first(ctx)

    def hidden(self, ctx):
        return () if self._on_images(ctx) else ("image_size",)
