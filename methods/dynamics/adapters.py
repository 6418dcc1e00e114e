"""
The registry adapters of the training-dynamics methods: :func:`run_dynamics`
(``"dynamics"``, the chosen methods of the 13 from one training run) and
``run_<name>`` for each single method (``"aum"``, ``"data_iq"``, ...,
``"detector"``), each ``run(data, config) -> MethodOutput``; see
``docs/methods.md`` section 3.

Each reads its inputs (an embeddings field, or the images with
``on="images"``), gets a recorded training run (shared through
:mod:`fiftyone_hardness.methods.dynamics.cache`), and turns the scores of
:mod:`fiftyone_hardness.methods.dynamics.scores` into fields and results.
"""

import logging

import numpy as np

from fiftyone_hardness.methods.base import (
    HardnessError,
    MethodOutput,
    class_means,
)
from fiftyone_hardness.methods.dynamics import scores as fhs
from fiftyone_hardness.methods.dynamics.cache import get_record
from fiftyone_hardness.methods.dynamics.config import (
    CHANNEL_CHOICES,
    METHOD_DESCRIPTIONS,
    DynamicsConfig,
    SingleDynamicsConfig,
)
from fiftyone_hardness.methods.dynamics.recorder import prepare_inputs
from fiftyone_hardness.methods.validation import check_labels

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------- inputs


def load_images(filepaths, image_size=32, channels="auto"):
    """Loads images as an (N, C, S, S) float32 array in [0, 1].

    Args:
        filepaths: the image paths
        image_size (32): the side every image is resized to
        channels ("auto"): ``"gray"``, ``"rgb"``, or ``"auto"`` (gray when
            every image is single-channel)

    Raises:
        HardnessError: an unreadable image
    """
    from PIL import Image

    if channels not in [value for value, _ in CHANNEL_CHOICES]:
        raise HardnessError("channels must be 'auto', 'gray' or 'rgb'")
    images = []
    modes = set()
    for path in filepaths:
        try:
            with Image.open(path) as image:
                modes.add(image.mode)
                image = image.convert("RGB").resize(
                    (image_size, image_size), Image.BILINEAR
                )
                images.append(np.asarray(image, dtype=np.float32) / 255.0)
        except Exception as e:
            raise HardnessError("Cannot read image %s: %s" % (path, e))
    if not images:
        raise HardnessError("No images to load")
    array = np.stack(images).transpose(0, 3, 1, 2)
    gray = channels == "gray" or (
        channels == "auto" and modes <= {"L", "1", "I", "I;16", "F"}
    )
    if gray:
        array = array.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(array)


def load_inputs(data, config):
    """Reads the training inputs of ``data``: its embeddings field, or its
    images (``config.on == "images"``).

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData`
        config: a :class:`SingleDynamicsConfig`

    Returns:
        an (N, D) array of vectors or an (N, C, S, S) array of images
    """
    if config.on == "images":
        return load_images(data.filepaths, config.image_size, config.channels)
    if not config.embeddings_field:
        raise HardnessError(
            "Training dynamics need inputs: pass embeddings_field=... (a "
            "vector field, e.g. from fiftyone_hardness.compute_embeddings) "
            "or on='images' to train a small CNN on the images"
        )
    return data.embeddings(config.embeddings_field)


# ---------------------------------------------------------------- methods


def compute_methods(record, methods=None, noise_rate=None):
    """Computes training-dynamics methods on a record.

    Args:
        record: a
            :class:`fiftyone_hardness.methods.dynamics.recorder.TrainingRecord`
        methods (None): method names (None for all 13)
        noise_rate (None): the noise rate of the top-fraction flags; None
            for the AUM-based estimate

    Returns:
        a dict mapping each name to a
        :class:`fiftyone_hardness.methods.dynamics.scores.MethodScore`
    """
    return {
        m.name: m.compute(record, noise_rate=noise_rate)
        for m in fhs.get_methods(methods)
    }


def _record_for(data, config, names):
    """Validates the labels, reads and prepares the inputs, and returns
    ``(record, cached)``: a training record with the needs of ``names``."""
    check_labels(
        data.labels,
        data.num_classes,
        min_per_class=2,
        what="Training dynamics",
    )
    X = prepare_inputs(load_inputs(data, config), config)
    return get_record(
        X,
        data.labels,
        data.num_classes,
        config,
        fhs.needs_of(fhs.get_methods(names)),
        device=config.device,
        progress=data.progress,
        use_cache=config.use_cache,
    )


def _training_results(record, config, cached):
    """The results every training-dynamics run stores: the training curve,
    the training setup and whether the record was reused."""
    return {
        "train_accuracy": list(record.train_accuracy),
        "eval_accuracy": list(record.eval_accuracy),
        "training_config": config.training_dict(),
        "reused_record": bool(cached),
    }


# --------------------------------------------------------------- dynamics


def run_dynamics(data, config=None):
    """Trains once with the recorder and computes the chosen
    training-dynamics methods (all 13 by default).

    Writes, for each method ``m``, the suffixes ``{m}_score`` (higher =
    harder) and ``{m}_flag``, plus extras: ``aum_value``, ``data_iq_group``
    (easy / ambiguous / hard), ``data_iq_confidence``,
    ``data_iq_aleatoric``, ``data_maps_confidence``,
    ``data_maps_variability``, ``forgetting_count``,
    ``conf_agree_agreement``.

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData`
        config (None): a :class:`DynamicsConfig`; None for the defaults

    Returns:
        a :class:`fiftyone_hardness.methods.base.MethodOutput`
    """
    config = config or DynamicsConfig()
    names = config.method_names
    record, cached = _record_for(data, config, names)
    computed = compute_methods(record, names, config.noise_rate)
    results = {
        "methods": _per_method_results(computed, data),
        "noise_rate": _run_noise_rate(record, config),
        "threshold": None,
    }
    results.update(_agreement_summary(computed, data))
    results.update(_training_results(record, config, cached))
    return MethodOutput(fields=_method_fields(computed), results=results)


def _method_fields(computed):
    """``{m}_score``, ``{m}_flag`` and ``{m}_{extra}`` of each method."""
    fields = {}
    for name, out in computed.items():
        fields["%s_score" % name] = out.score
        fields["%s_flag" % name] = out.flag
        for suffix, values in out.extras.items():
            fields["%s_%s" % (name, suffix)] = values
    return fields


def _per_method_results(computed, data):
    """Each method's results, with its mean score per class."""
    per_method = {}
    for name, out in computed.items():
        per_method[name] = dict(out.results)
        per_method[name]["class_scores"] = class_means(
            out.score, data.labels, data.classes
        )
    return per_method


def _run_noise_rate(record, config):
    """The rate of the top-fraction flags: the one given, else the AUM
    estimate."""
    if config.noise_rate is not None:
        return float(config.noise_rate)
    return float(fhs.estimate_noise_rate(record))


def _agreement_summary(computed, data):
    """What the methods say together: the samples most of them flag, and
    the mean rank percentile of each class."""
    flags = np.stack([out.flag for out in computed.values()])
    ranks = np.stack(
        [_rank_percentile(out.score) for out in computed.values()]
    ).mean(0)
    return {
        "num_flagged": int((flags.mean(0) > 0.5).sum()),
        "class_scores": class_means(ranks, data.labels, data.classes),
    }


def _rank_percentile(scores):
    from scipy.stats import rankdata

    return (rankdata(scores) - 1) / max(len(scores) - 1, 1)


# --------------------------------------------------------- single methods


def _run_single(name, data, config):
    config = config or SingleDynamicsConfig()
    record, cached = _record_for(data, config, [name])
    out = compute_methods(record, [name], config.noise_rate)[name]
    fields = {"score": out.score, "flag": out.flag}
    fields.update(out.extras)
    results = dict(out.results)
    results.update(_training_results(record, config, cached))
    return MethodOutput(fields=fields, results=results)


def _single_runner(name):
    def run(data, config=None):
        return _run_single(name, data, config)

    run.__name__ = run.__qualname__ = "run_%s" % name
    run.__doc__ = """Computes the %r training-dynamics method alone (%s), writing
    ``score``, ``flag`` and its extras. Reuses a cached record of the same
    data and training setup (e.g. of a ``"dynamics"`` run).

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData`
        config (None): a :class:`SingleDynamicsConfig`; None for the
            defaults

    Returns:
        a :class:`fiftyone_hardness.methods.base.MethodOutput`
    """ % (
        name,
        METHOD_DESCRIPTIONS[name],
    )
    return run


run_aum = _single_runner("aum")
run_data_iq = _single_runner("data_iq")
run_data_maps = _single_runner("data_maps")
run_el2n = _single_runner("el2n")
run_grand = _single_runner("grand")
run_forgetting = _single_runner("forgetting")
run_loss = _single_runner("loss")
run_prototypicality = _single_runner("prototypicality")
run_vog = _single_runner("vog")
run_allsh = _single_runner("allsh")
run_conf_agree = _single_runner("conf_agree")
run_detector = _single_runner("detector")
