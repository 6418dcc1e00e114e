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

from fiftyone_hardness.operators.common import HardnessOperator


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
