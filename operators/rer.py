"""
The ``compute_rer`` operator: Reconstruction Error Ratios (class-wise
autoencoders) on an embeddings field, for label mistakes, class difficulty
and dataset difficulty.

Thin: its form comes from
:class:`fiftyone_hardness.methods.rer.config.RERConfig` and it calls
:func:`fiftyone_hardness.api.apply_hardness` with ``method="rer"`` through
:class:`fiftyone_hardness.operators.common.HardnessOperator`, so the App
refuses exactly the values Python refuses.
"""

from fiftyone_hardness.operators.common import (
    EMBEDDING_MODEL_PARAMS,
    HardnessOperator,
)
from fiftyone_hardness.operators.forms import refuse_unknown_params

#: form inputs that are not parameters of the method
OPERATOR_PARAMS = (
    "label_field",
    "run_key",
    "overwrite",
    "compute_embeddings_first",
) + EMBEDDING_MODEL_PARAMS


class ComputeRER(HardnessOperator):
    """Reconstruction Error Ratios on an embeddings field."""

    method = "rer"
    label = "Hardness: reconstruction error ratios (RER)"
    description = (
        "Train one small autoencoder per class on an embeddings field; "
        "score each sample by how much better another class reconstructs "
        "it, and estimate the noise rate and class / dataset difficulty"
    )

    def hidden(self, ctx):
        # the number of clusters only means something without labels
        return () if ctx.params.get("unsupervised") else ("n_clusters",)

    def resolve_input(self, ctx):
        form = super().resolve_input(ctx)
        # a misspelled parameter from a Python caller would otherwise be
        # dropped silently; Python's apply_hardness refuses it too
        refuse_unknown_params(
            form.type, ctx.params, self.config_class, OPERATOR_PARAMS
        )
        return form
