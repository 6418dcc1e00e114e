"""
fiftyone-hardness: find mislabeled and hard samples in FiftyOne datasets.

This file is both the FiftyOne plugin entry point (``register(p)``) and the
package ``fiftyone_hardness``. It defines nothing itself: the public API is
re-exported from :mod:`fiftyone_hardness.api`, and the App's operators and
panel are imported only inside :func:`register`.

Every module imports the package by its stable name, ``fiftyone_hardness``
(FiftyOne stores the import path of every run class in MongoDB). When the
plugin is installed the FiftyOne way (copied into a plugins directory, not
pip-installed), FiftyOne imports this file under another name; the lines
below then make this directory importable as ``fiftyone_hardness`` first.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys


def _ensure_stable_name():
    if __name__ == "fiftyone_hardness" or "fiftyone_hardness" in _sys.modules:
        return
    if _importlib_util.find_spec("fiftyone_hardness") is not None:
        return  # pip-installed: the installed package is the one to use
    root = _os.path.dirname(_os.path.abspath(__file__))
    spec = _importlib_util.spec_from_file_location(
        "fiftyone_hardness",
        _os.path.join(root, "__init__.py"),
        submodule_search_locations=[root],
    )
    module = _importlib_util.module_from_spec(spec)
    _sys.modules["fiftyone_hardness"] = module
    spec.loader.exec_module(module)


_ensure_stable_name()

from fiftyone_hardness.api import (  # noqa: E402,F401
    apply_hardness,
    compute_cleanlab,
    compute_consensus,
    compute_dynamics,
    compute_embeddings,
    compute_rer,
    find_counterexamples,
    list_methods,
    repair_hardness_runs,
)
from fiftyone_hardness.dataset_io import review  # noqa: E402,F401
from fiftyone_hardness.methods.base import HardnessError  # noqa: E402,F401


def register(p):
    """Registers the plugin's operators and panel with FiftyOne."""
    from fiftyone_hardness.operators import register_operators
    from fiftyone_hardness.panels import register_panels

    register_operators(p)
    register_panels(p)
