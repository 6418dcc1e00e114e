"""
The plugin's App operators. Each capability adds its operator class to
:data:`OPERATORS` (one line) and its name to ``fiftyone.yml``.
"""
from fiftyone_hardness.operators.compute_embeddings import ComputeEmbeddings

OPERATORS = [
    ComputeEmbeddings,
]


def register_operators(p):
    """Registers every operator of :data:`OPERATORS` with plugin ``p``."""
    for operator in OPERATORS:
        p.register(operator)
