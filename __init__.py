"""
fiftyone-hardness: find mislabeled and hard samples in FiftyOne datasets.

This file is both the FiftyOne plugin entry point (``register(p)``) and the
package ``fiftyone_hardness``. It defines nothing itself: the public API is
re-exported from :mod:`fiftyone_hardness.api` (absolute imports, so that run
classes always live under their stable import path), and the App's operators
and panel are imported only inside :func:`register`.
"""
from fiftyone_hardness.api import (  # noqa: F401
    apply_hardness,
    compute_embeddings,
    list_methods,
)
from fiftyone_hardness.review import find_counterexamples  # noqa: F401


def register(p):
    """Registers the plugin's operators and panel with FiftyOne."""
    from fiftyone_hardness.operators import register_operators
    from fiftyone_hardness.panels import register_panels

    register_operators(p)
    register_panels(p)
