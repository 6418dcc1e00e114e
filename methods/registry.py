"""
The registry of hardness methods: one entry per method name.

Each entry names the module and function implementing
``run(data: LabeledData, **kwargs) -> MethodOutput`` (see
:mod:`fiftyone_hardness.methods.base`). Modules are imported only when their
method is used, so importing the package stays cheap (no torch at import).
To add a method, add one line to ``BUILTIN_METHODS`` or call
:func:`register_method`.
"""
import importlib
import logging

from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

#: method name -> (module, function, one-line description)
BUILTIN_METHODS = {
    **{  # training dynamics: "dynamics" (all 13) and each method alone
        name: ("fiftyone_hardness.methods.dynamics", "run_" + name, desc)
        for name, desc in (
            ("dynamics", "the 13 H-CAT training-dynamics methods, one run"),
            ("aum", "area under the margin (training dynamics)"),
            ("data_iq", "Data-IQ groups and confidence (training dynamics)"),
            ("data_maps", "Data Maps confidence (training dynamics)"),
            ("el2n", "EL2N error norm early in training"),
            ("grand", "GraNd per-sample gradient norm"),
            ("forgetting", "forgetting events (training dynamics)"),
            ("loss", "small loss (training dynamics)"),
            ("prototypicality", "distance to the class centroid"),
            ("vog", "variance of input gradients over checkpoints"),
            ("allsh", "divergence under augmentation (ALLSH)"),
            ("conf_agree", "MC-dropout confidence (Conf-Agree)"),
            ("detector", "P(noisy) from flipped-label trajectories"),
        )
    },
    "consensus": ("fiftyone_hardness.methods.consensus", "run_consensus",
                  "rank average of existing runs' scores"),
    "cleanlab": ("fiftyone_hardness.methods.confident_learning",
                 "run_cleanlab", "confident learning with cleanlab"),
    "rer": ("fiftyone_hardness.methods.rer", "run_rer",
            "reconstruction error ratios of class-wise autoencoders"),
}

_custom_methods = {}


def register_method(name, run, description=""):
    """Registers a hardness method implemented by ``run``.

    Args:
        name: the method name passed to ``apply_hardness``
        run: a callable ``run(data, **kwargs) -> MethodOutput``
        description: a one-line description
    """
    _custom_methods[name] = (run, description)


def list_methods():
    """Returns a dict mapping every method name to its description."""
    methods = {name: entry[2] for name, entry in BUILTIN_METHODS.items()}
    methods.update({name: entry[1] for name, entry in _custom_methods.items()})
    return methods


def get_method(name):
    """Returns the ``run`` callable of method ``name``.

    Raises:
        HardnessError: if no such method exists
    """
    if name in _custom_methods:
        return _custom_methods[name][0]
    if name not in BUILTIN_METHODS:
        raise HardnessError(
            "Unknown hardness method '%s'; available methods: %s"
            % (name, ", ".join(sorted(list_methods())))
        )
    module_name, function_name, _ = BUILTIN_METHODS[name]
    module = importlib.import_module(module_name)
    return getattr(module, function_name)
