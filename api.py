"""
The public Python API: :func:`compute_embeddings` and :func:`apply_hardness`
(also available as ``dataset.apply_hardness(...)`` on every FiftyOne
``Dataset`` and ``DatasetView`` once ``fiftyone_hardness`` is imported).

Operators call these same functions, so the App and Python share one path.
"""
import logging


import fiftyone.core.collections as focl
import fiftyone.core.media as fom

from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods import runs
from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

#: the key under which ``compute_embeddings`` records provenance in the
#: embeddings field's ``info``
EMBEDDINGS_INFO_KEY = "hardness_embeddings"


def list_methods():
    """Returns a dict mapping each hardness method name to a description."""
    return registry.list_methods()


def apply_hardness(
    samples,
    method,
    label_field="ground_truth",
    run_key=None,
    overwrite=False,
    progress=None,
    **kwargs
):
    """Computes a hardness method on a collection and stores it as a run.

    Every score field is oriented so that higher = harder / more likely
    mislabeled. Original labels are never modified.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        method: the method name, e.g. ``"rer"``, ``"cleanlab"``,
            ``"dynamics"``, ``"aum"``, ``"consensus"`` (see
            :func:`list_methods`)
        label_field ("ground_truth"): the ``fo.Classification`` field to
            score. Samples without a label are skipped and counted
        run_key (None): the run key; defaults to the method name. Fields
            are written as ``{run_key}_{suffix}``
        overwrite (False): whether to replace an existing run with this key
        progress (None): a callable ``(fraction, message)`` receiving
            progress, or None for a progress bar
        **kwargs: method-specific parameters, e.g. ``embeddings_field``

    Returns:
        a :class:`fiftyone_hardness.methods.runs.HardnessRunResults`

    Raises:
        HardnessError: on bad input (unknown method, missing or non-
            Classification label field, existing run key without
            ``overwrite``, missing or NaN embeddings, ...). Nothing is
            written in that case
    """
    run = registry.get_method(method)
    run_key = run_key or method
    runs.validate_run_key(samples, run_key, overwrite=overwrite)

    with _progress_reporter(progress, "%s" % method) as report:
        data = runs.load_labeled_data(samples, label_field, progress=report)
        output = run(data, **kwargs)
        report(1.0, "writing fields")
        results = runs.save_run(
            samples, run_key, method, kwargs, data, output, overwrite=overwrite
        )
    return results


def compute_embeddings(
    samples,
    model="efficientnet_lite0",
    pretrained=None,
    embeddings_field="embeddings",
    device=None,
    batch_size=64,
    num_workers=0,
    skip_existing=False,
    image_size=None,
    progress=None,
    write_every=1024,
):
    """Computes image embeddings for the samples of a collection.

    Only the samples of ``samples`` are touched; with ``skip_existing`` the
    ones that already have a value are left alone, so several workers can
    fill one field over disjoint views. What produced the field (model,
    weights, dim) is recorded in the field's ``info["hardness_embeddings"]``.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection` of
            images
        model ("efficientnet_lite0"): an open_clip architecture name such as
            ``"ViT-B-32"`` or ``"efficientnet_lite0"`` (offline backbone)
        pretrained (None): open_clip pretrained tag or local checkpoint path
        embeddings_field ("embeddings"): the vector field to write
        device (None): torch device; ``cuda`` when available by default
        batch_size (64): images per forward pass
        num_workers (0): image-decoding worker processes
        skip_existing (False): leave samples that already have an embedding
        image_size (None): input size for ``efficientnet_lite0``
        progress (None): a callable ``(fraction, message)`` or None for a bar
        write_every (1024): samples buffered between database writes

    Returns:
        a dict with ``num_embedded``, ``num_skipped`` (already had one),
        ``failed`` (sample id -> error message for unreadable images) and
        ``info`` (the model description)

    Raises:
        HardnessError: for non-image collections, an unknown model, or a
            field that holds embeddings from another model
    """
    from fiftyone_hardness.methods import embeddings as fhe

    if samples.media_type != fom.IMAGE:
        raise HardnessError(
            "compute_embeddings needs an image collection; this one has "
            "media type '%s'" % samples.media_type
        )
    embedder = fhe.load_embedder(
        model=model, pretrained=pretrained, device=device, image_size=image_size
    )
    _check_embeddings_provenance(samples, embeddings_field, embedder.info)

    todo = samples
    if skip_existing and samples.has_field(embeddings_field):
        todo = samples.exists(embeddings_field, False)
    ids, filepaths = todo.values(["id", "filepath"])
    result = {
        "num_embedded": 0,
        "num_skipped": len(samples) - len(ids),
        "failed": {},
        "info": embedder.info,
    }
    buffer = {}
    with _progress_reporter(progress, "embedding") as report:
        done = 0
        for indices, vectors, errors in fhe.embed_files(
            filepaths, embedder, batch_size=batch_size, num_workers=num_workers
        ):
            for i, vector in zip(indices, vectors):
                buffer[ids[i]] = vector
            for i, error in errors.items():
                result["failed"][ids[i]] = error
            done += len(indices) + len(errors)
            if len(buffer) >= write_every:
                _write_vectors(samples, embeddings_field, buffer)
                result["num_embedded"] += len(buffer)
                buffer = {}
            report(done / max(len(ids), 1), "%d/%d images" % (done, len(ids)))
        if buffer:
            _write_vectors(samples, embeddings_field, buffer)
            result["num_embedded"] += len(buffer)

    if result["num_embedded"]:
        _record_provenance(samples, embeddings_field, embedder.info)
    for sample_id, error in result["failed"].items():
        logger.warning("Could not embed sample %s: %s", sample_id, error)
    return result


def _write_vectors(samples, field, vectors):
    samples.set_values(field, vectors, key_field="id")


def _check_embeddings_provenance(samples, field, info):
    if not samples.has_field(field):
        return
    existing = samples._dataset.get_field(field).info or {}
    recorded = existing.get(EMBEDDINGS_INFO_KEY)
    if recorded and (
        recorded.get("model") != info["model"]
        or recorded.get("dim") != info["dim"]
    ):
        raise HardnessError(
            "Field '%s' holds %s embeddings (dim %s); choose another "
            "embeddings_field for %s (dim %s)"
            % (field, recorded.get("model"), recorded.get("dim"),
               info["model"], info["dim"])
        )


def _record_provenance(samples, field, info):
    dataset_field = samples._dataset.get_field(field)
    dataset_field.info = dict(dataset_field.info or {})
    dataset_field.info[EMBEDDINGS_INFO_KEY] = runs.to_jsonable(info)
    dataset_field.save()


def get_embeddings_info(samples, embeddings_field):
    """Returns what produced ``embeddings_field`` (model, pretrained, dim),
    as recorded by :func:`compute_embeddings`, or None."""
    if not samples.has_field(embeddings_field):
        return None
    info = samples._dataset.get_field(embeddings_field).info or {}
    return info.get(EMBEDDINGS_INFO_KEY)


class _progress_reporter(object):
    """Context manager yielding a ``(fraction, message)`` callback: the
    given one, or a tqdm bar over 0..100%."""

    def __init__(self, progress, description):
        self._progress = progress
        self._description = description
        self._bar = None

    def __enter__(self):
        if self._progress is not None:
            return self._progress
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=100, desc=self._description, unit="%", leave=False
        )

        def report(fraction, message=""):
            target = int(round(100 * min(max(fraction, 0.0), 1.0)))
            if target > self._bar.n:
                self._bar.update(target - self._bar.n)
            if message:
                self._bar.set_postfix_str(message, refresh=False)

        return report

    def __exit__(self, *args):
        if self._bar is not None:
            self._bar.close()
        return False


def _apply_hardness_method(self, method, **kwargs):
    return apply_hardness(self, method, **kwargs)


_apply_hardness_method.__doc__ = apply_hardness.__doc__
focl.SampleCollection.apply_hardness = _apply_hardness_method
