"""
The ``compute_consensus`` operator: the rank average of the scores of
existing hardness runs, with a flag rule.

Thin: its form comes from
:class:`fiftyone_hardness.methods.consensus.ConsensusConfig` through
:class:`fiftyone_hardness.operators.common.HardnessOperator`; the members
are offered from the run schema
(:func:`fiftyone_hardness.dataset_io.run_views.score_members`).
"""

import logging

import fiftyone.operators.types as types

from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.operators.common import (
    HardnessOperator,
    multi_select_input,
)

logger = logging.getLogger(__name__)


def consensus_members(dataset):
    """Returns ``(value, label)`` choices of consensus members, read from
    the run schema: the score of each single-score run (``run_key``), and,
    for a multi-score run such as ``dynamics``, the whole run (``run_key``)
    and each of its methods (``run_key.method``)."""
    return [
        (member, label)
        for member, (label, _) in run_views.score_members(dataset).items()
    ]


class ComputeConsensus(HardnessOperator):
    """Rank-averages the oriented scores of existing hardness runs."""

    method = "consensus"
    label = "Hardness: consensus of runs"
    description = (
        "Rank average of the scores of chosen hardness runs / methods, with "
        "a majority flag and their pairwise Spearman agreement"
    )
    needs_embeddings = False

    #: the members are a multi-select of the dataset's runs, rendered here
    source_fields = ("runs",)

    def source_inputs(self, ctx, inputs):
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
        runs = self.config_class.parameter("runs")
        multi_select_input(
            inputs, "runs", choices, None, runs.label, runs.help
        )
        return True

    def hidden(self, ctx):
        # a fraction to flag only means something for the "top" rule
        return () if ctx.params.get("rule") == "top" else ("noise_rate",)

    def source_params(self, ctx):
        runs = ctx.params.get("runs")
        return {"runs": list(runs)} if runs else {}
