"""
The registry of hardness methods: one entry per method name.

Each built-in entry names, as import paths, the function implementing
``run(data: LabeledData, config) -> MethodOutput`` (see
:mod:`fiftyone_hardness.methods.base`) and the method's config dataclass
(:mod:`fiftyone_hardness.methods.config`). Modules are imported only when
their method is used, so importing the package stays cheap (no torch at
import), and the config modules import no torch, so building an App form
stays cheap too.

To add a method, call :func:`register_method`.
"""

import importlib
import logging
from dataclasses import dataclass

from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

_DYNAMICS = "fiftyone_hardness.methods.dynamics"
_DYNAMICS_CONFIG = "fiftyone_hardness.methods.dynamics.config"


@dataclass(frozen=True)
class MethodSpec:
    """How to run one method.

    Attributes:
        name: the method name passed to ``apply_hardness``
        description: a one-line description
        run: ``"module:function"`` or a callable ``run(data, config)``
            (``run(data, **kwargs)`` when ``config`` is None)
        config: ``"module:Class"`` of its config dataclass, a class, or None
            for a custom method that takes plain keyword arguments
    """

    name: str
    description: str
    run: object
    config: object = None

    def get_run(self):
        return _resolve(self.run)

    def get_config_class(self):
        return _resolve(self.config) if self.config is not None else None


def _resolve(target):
    if not isinstance(target, str):
        return target
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def _builtin_methods():
    dynamics_config = importlib.import_module(_DYNAMICS_CONFIG)
    specs = [
        MethodSpec(
            "rer",
            "reconstruction error ratios of class-wise autoencoders",
            "fiftyone_hardness.methods.rer:run_rer",
            "fiftyone_hardness.methods.rer.config:RERConfig",
        ),
        MethodSpec(
            "cleanlab",
            "confident learning with cleanlab",
            "fiftyone_hardness.methods.confident_learning:run_cleanlab",
            "fiftyone_hardness.methods.confident_learning:CleanlabConfig",
        ),
        MethodSpec(
            "consensus",
            "a weighted combination of existing runs' scores",
            "fiftyone_hardness.methods.consensus:run_consensus",
            "fiftyone_hardness.methods.consensus:ConsensusConfig",
        ),
        MethodSpec(
            "dynamics",
            "the 13 H-CAT training-dynamics methods, one run",
            _DYNAMICS + ":run_dynamics",
            _DYNAMICS_CONFIG + ":DynamicsConfig",
        ),
    ]
    for name, description in dynamics_config.SINGLE_METHODS.items():
        specs.append(
            MethodSpec(
                name,
                description,
                "%s:run_%s" % (_DYNAMICS, name),
                _DYNAMICS_CONFIG + ":SingleDynamicsConfig",
            )
        )
    return {spec.name: spec for spec in specs}


_custom_methods = {}


def register_method(name, run, description="", config=None):
    """Registers a hardness method implemented by ``run``.

    Args:
        name: the method name passed to ``apply_hardness``
        run: a callable ``run(data, config) -> MethodOutput``, or
            ``run(data, **kwargs)`` when ``config`` is None
        description: a one-line description
        config (None): the method's
            :class:`fiftyone_hardness.methods.config.MethodConfig` subclass
    """
    _custom_methods[name] = MethodSpec(name, description, run, config)


def list_methods():
    """Returns a dict mapping every method name to its description."""
    specs = dict(_builtin_methods())
    specs.update(_custom_methods)
    return {name: spec.description for name, spec in specs.items()}


def get_spec(name):
    """Returns the :class:`MethodSpec` of method ``name``.

    Raises:
        HardnessError: if no such method exists
    """
    if name in _custom_methods:
        return _custom_methods[name]
    builtin = _builtin_methods()
    if name not in builtin:
        raise HardnessError(
            "Unknown hardness method %r; available methods: %s"
            % (name, ", ".join(sorted(list_methods())))
        )
    return builtin[name]


def get_method(name):
    """Returns the ``run`` callable of method ``name``."""
    return get_spec(name).get_run()


def make_config(name, kwargs):
    """Validates ``kwargs`` for method ``name`` before any data is read.

    Returns:
        the method's config instance, or ``kwargs`` unchanged for a custom
        method registered without a config class

    Raises:
        HardnessError: unknown method, unknown parameter or invalid value
    """
    config_class = get_spec(name).get_config_class()
    if config_class is None:
        return dict(kwargs)
    return config_class.from_kwargs(method=name, **kwargs)


def run_method(name, data, config):
    """Runs method ``name`` on ``data`` with a config from
    :func:`make_config`."""
    run = get_method(name)
    if isinstance(config, dict):
        return run(data, **config)
    return run(data, config)
