"""
The plugin's App operators. Each capability adds its operator class to
:data:`OPERATORS` (one line) and its name to ``fiftyone.yml``.
"""

from fiftyone_hardness.operators.compute_embeddings import ComputeEmbeddings
from fiftyone_hardness.operators import review as _review
from fiftyone_hardness.operators import runs as _runs
from fiftyone_hardness.operators import dynamics as _dynamics
from fiftyone_hardness.operators import consensus as _consensus
from fiftyone_hardness.operators import perturb as _perturb
from fiftyone_hardness.operators import cleanlab as _cleanlab
from fiftyone_hardness.operators import rer as _rer
from fiftyone_hardness.operators import benchmark as _benchmark

OPERATORS = [
    ComputeEmbeddings,
    _runs.ListHardnessRuns,
    _runs.LoadHardnessView,
    _runs.RenameHardnessRun,
    _runs.DeleteHardnessRun,
    _review.ReviewLabel,
    _review.ApplyLabelCorrections,
    _review.UndoLabelCorrections,
    _review.FindCounterexamples,
    _dynamics.ComputeDynamics,
    _consensus.ComputeConsensus,
    _perturb.InjectHardness,
    _cleanlab.ComputeCleanlab,
    _rer.ComputeRER,
    _benchmark.RunHardnessBenchmark,
]


def register_operators(p):
    """Registers every operator of :data:`OPERATORS` with plugin ``p``."""
    for operator in OPERATORS:
        p.register(operator)
