"""
Where the run classes lived before 0.2: kept so that runs saved by 0.1 still
load.

FiftyOne stores the full class path of every run config in MongoDB
(``fiftyone_hardness.methods.runs.HardnessRunConfig``) and imports it when a
run is loaded. The classes now live in
:mod:`fiftyone_hardness.dataset_io.runs`; this module resolves the old names
to them lazily (PEP 562), so that importing it does not import FiftyOne and
``methods/`` stays free of it.
"""

_MOVED = (
    "HardnessRunConfig",
    "HardnessRun",
    "HardnessRunResults",
    "HardnessBenchmarkConfig",
    "HardnessBenchmark",
    "HardnessBenchmarkResults",
)


def __getattr__(name):
    if name in _MOVED:
        from fiftyone_hardness.dataset_io import runs

        return getattr(runs, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
