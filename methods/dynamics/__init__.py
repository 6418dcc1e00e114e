"""
Training dynamics: one seeded training run with a recorder, from which the
13 H-CAT hardness methods compute their scores; see ``docs/methods.md``
section 3.

The package, along its seams:

- :mod:`.config`: :class:`DynamicsConfig` / :class:`SingleDynamicsConfig`,
  the one source of the parameters, and :data:`METHOD_DESCRIPTIONS`, of the
  13 method names (imports no torch),
- :mod:`.models`: the MLP and the small CNN that are trained,
- :mod:`.recorder`: the training loop and the recorder
  (:class:`TrainingRecord`),
- :mod:`.members`: the cross-validation models and the Detector's
  calibration run, trained alongside the main model as one batched model,
- :mod:`.gradients`: per-sample gradient norms (GraNd) and input gradients
  (VoG) in closed form,
- :mod:`.storage`: the recorder's arrays, in memory up to a budget and
  disk-backed beyond it,
- :mod:`.cache`: the in-process cache of records, shared by the methods,
- :mod:`.scores`: the 13 methods, each a class computing a score from a
  record,
- :mod:`.adapters`: the registry's ``run(data, config)`` functions,
  :func:`run_dynamics` and ``run_<name>`` for each single method.

Importing this package imports no torch: everything but the config is
loaded on first use (PEP 562 ``__getattr__``), so listing methods and
building App forms stay cheap.
"""

import importlib

from fiftyone_hardness.methods.dynamics.config import (  # noqa: F401
    METHOD_DESCRIPTIONS,
    SINGLE_METHODS,
    DynamicsConfig,
    SingleDynamicsConfig,
)

_RUNNERS = ["run_dynamics"] + ["run_%s" % name for name in SINGLE_METHODS]

#: the names this package exposes lazily -> the submodule defining them
_LAZY = dict(
    {name: "adapters" for name in _RUNNERS},
    compute_methods="adapters",
    load_inputs="adapters",
    load_images="adapters",
    NEEDS="recorder",
    TrainingRecord="recorder",
    TrainingInterrupted="recorder",
    softmax="recorder",
    prepare_inputs="recorder",
    train="recorder",
    record_training="recorder",
    predict_probs="recorder",
    per_sample_grad_norms="gradients",
    input_gradients="gradients",
    vog_variance="gradients",
    margins_of="recorder",
    MLP="models",
    SmallCNN="models",
    GeneratorDropout="models",
    build_model="models",
    training_key="cache",
    get_record="cache",
    clear_cache="cache",
)

__all__ = [
    "METHOD_DESCRIPTIONS",
    "SINGLE_METHODS",
    "DynamicsConfig",
    "SingleDynamicsConfig",
] + list(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(
            "module %r has no attribute %r" % (__name__, name)
        )
    value = getattr(
        importlib.import_module("%s.%s" % (__name__, module)), name
    )
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
