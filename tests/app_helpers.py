"""
Shared helpers of the App tests (operators, panel, browser, delegated):
registering the plugin from this checkout, and giving a dataset a hardness
run -- RER when the "rer" method is registered, else a small real stand-in.
"""

import contextlib
import os

import numpy as np

import fiftyone as fo

from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import MethodOutput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "@fiftyone-hardness/hardness"

#: fast RER settings for plumbing tests on the 64-d digit pixels
RER_FAST = {
    "embeddings_field": "pixels",
    "objective": "reconstruction",
    "epochs": 10,
}


def _centroid_distance(data, embeddings_field="pixels"):
    """Distance of each sample to its class centroid, flagged above the
    90th percentile; the prediction is the nearest centroid."""
    X = data.embeddings(embeddings_field)
    centroids = np.stack(
        [X[data.labels == k].mean(0) for k in range(data.num_classes)]
    )
    score = np.linalg.norm(X - centroids[data.labels], axis=1)
    threshold = float(np.quantile(score, 0.9))
    pred = np.asarray(data.classes)[
        np.argmin(((X[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    ]
    return MethodOutput(
        fields={"score": score, "flag": score > threshold, "pred": pred},
        results={"threshold": threshold, "noise_rate": None},
    )


def register_test_method():
    """Registers the stand-in method ``centroid`` (idempotent)."""
    if "centroid" not in registry.list_methods():
        registry.register_method(
            "centroid", _centroid_distance, "distance to the class centroid"
        )


def has_rer():
    return "rer" in registry.list_methods()


def add_demo_run(dataset, run_key=None):
    """Adds a hardness run to ``dataset``: RER on the pixels when available,
    else the ``centroid`` stand-in. Returns the results."""
    if has_rer():
        return dataset.apply_hardness(
            "rer", run_key=run_key or "rer", **_rer_kwargs()
        )
    register_test_method()
    return dataset.apply_hardness(
        "centroid", run_key=run_key or "centroid", embeddings_field="pixels"
    )


def _rer_kwargs():
    """The :data:`RER_FAST` settings that RER's config declares."""
    config_class = registry.get_spec("rer").get_config_class()
    accepted = {p.name for p in config_class.parameters()}
    return {k: v for k, v in RER_FAST.items() if k in accepted}


@contextlib.contextmanager
def plugin_dir(tmp_path):
    """Makes this checkout the only plugin FiftyOne sees (in this process),
    yielding the plugins directory."""
    plugins = os.path.join(str(tmp_path), "plugins")
    os.makedirs(plugins, exist_ok=True)
    link = os.path.join(plugins, "fiftyone-hardness")
    if not os.path.exists(link):
        os.symlink(REPO, link)
    old = fo.config.plugins_dir
    fo.config.plugins_dir = plugins
    try:
        yield plugins
    finally:
        fo.config.plugins_dir = old


class _Ref(dict):
    """Attribute access over a dict, like the panel's state/data refs."""

    def __getattr__(self, key):
        return self.get(key)

    def __setattr__(self, key, value):
        self[key] = value


class _Ops(object):
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))

        return record


class _Panel(object):
    def __init__(self):
        self.state = _Ref()
        self.data = _Ref()


class FakePanelContext(object):
    """The parts of an ExecutionContext the Hardness panel uses."""

    def __init__(self, dataset, params=None):
        self.dataset = dataset
        self.params = params or {}
        self.panel = _Panel()
        self.ops = _Ops()
