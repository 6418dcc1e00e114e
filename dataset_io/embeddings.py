"""
Computing image embeddings for a FiftyOne collection and storing them on
its samples, with what produced them recorded on the field.

The model and the batching are :mod:`fiftyone_hardness.methods.embeddings`;
this module reads file paths, writes the vectors (from a background thread,
while the model embeds the next batches) and keeps the provenance record
that stops one field from mixing two models.
"""

import logging
import queue
import threading

import fiftyone as fo
import fiftyone.core.media as fom

from fiftyone_hardness.dataset_io.locks import dataset_lock
from fiftyone_hardness.dataset_io.runs import to_jsonable
from fiftyone_hardness.methods import embeddings as fhe
from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

#: the key under which provenance is recorded in the embeddings field's
#: ``info``
EMBEDDINGS_INFO_KEY = "hardness_embeddings"


def compute_embeddings(samples, config, progress):
    """Embeds the images of ``samples`` into ``config.embeddings_field``.

    The vectors are written by a background thread
    (:class:`_BackgroundWriter`) while the model embeds the next batches.
    When the embedding stops early (an error, Ctrl-C), the vectors already
    handed to the writer are written before the error goes on; each is one
    document update, so the field holds whole vectors only, attributed to
    their model, and a later run with ``skip_existing`` completes it.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        config: a :class:`fiftyone_hardness.methods.embeddings.EmbeddingsConfig`
        progress: a callable ``(fraction, message)``

    Returns:
        a dict with ``num_embedded``, ``num_skipped``, ``failed`` and
        ``info`` (see :func:`fiftyone_hardness.compute_embeddings`)
    """
    if samples.media_type != fom.IMAGE:
        raise HardnessError(
            "compute_embeddings needs an image collection; this one has "
            "media type '%s'" % samples.media_type
        )
    field = config.embeddings_field
    progress(0.0, "loading %s" % config.model)
    embedder = fhe.load_embedder(
        model=config.model,
        pretrained=config.pretrained,
        device=config.device,
        image_size=config.image_size,
    )
    # recorded before the first write: a field filled halfway by an
    # interrupted run is still attributed to its model, so that a later
    # run with another model cannot mix vectors into it
    created = _claim_field(samples, field, embedder.info)

    ids, filepaths = _samples_to_embed(samples, field, config.skip_existing)
    result = {
        "num_embedded": 0,
        "num_skipped": len(samples) - len(ids),
        "failed": {},
        "info": embedder.info,
    }
    writer = _BackgroundWriter(samples, field)
    try:
        _embed_into(writer, ids, filepaths, embedder, config, result, progress)
    except BaseException:
        # what was handed to the writer is written; then the error goes on
        writer.close(raise_errors=False)
        raise
    writer.close()
    result["num_embedded"] = writer.num_written

    if created and not result["num_embedded"]:
        _release_field(samples, field)
    for sample_id, error in result["failed"].items():
        logger.warning("Could not embed sample %s: %s", sample_id, error)
    return result


def _samples_to_embed(samples, field, skip_existing):
    """Returns the ``(ids, filepaths)`` of the samples to embed."""
    todo = samples
    if skip_existing and samples.has_field(field):
        todo = samples.exists(field, False)
    return todo.values(["id", "filepath"])


def _embed_into(writer, ids, filepaths, embedder, config, result, progress):
    """Embeds ``filepaths`` and hands the vectors to ``writer`` every
    ``config.write_every`` samples; records failures in ``result``."""
    buffer = {}
    done = 0
    for indices, vectors, errors in fhe.embed_files(
        filepaths,
        embedder,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        decode_device=config.decode_device,
        prefetch=config.prefetch,
        preprocess=config.preprocess,
    ):
        for i, vector in zip(indices, vectors):
            buffer[ids[i]] = vector
        for i, error in errors.items():
            result["failed"][ids[i]] = error
        done += len(indices) + len(errors)
        if len(buffer) >= config.write_every:
            writer.put(buffer)
            buffer = {}
        progress(done / max(len(ids), 1), "%d/%d images" % (done, len(ids)))
    if buffer:
        writer.put(buffer)


class _BackgroundWriter(object):
    """Writes dicts ``sample id -> vector`` to ``field`` from a thread, so
    that the model never waits on the database.

    At most ``depth`` dicts wait; :meth:`put` blocks beyond that (the
    database sets the pace when it is the slower side). A failed write is
    raised by the next :meth:`put` or by :meth:`close`; the dicts queued
    after it are dropped.

    Args:
        samples: the collection written to
        field: the vector field
        depth (2): the dicts that may wait
    """

    def __init__(self, samples, field, depth=2):
        self.samples = samples
        self.field = field
        self.num_written = 0
        self.error = None
        self._queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(
            target=self._run, name="embeddings-writer", daemon=True
        )
        self._thread.start()

    def _run(self):
        while True:
            vectors = self._queue.get()
            if vectors is None:
                return
            if self.error is not None:
                continue  # drained, so that put() never blocks for ever
            try:
                _write_vectors(self.samples, self.field, vectors)
                self.num_written += len(vectors)
            except BaseException as e:  # raised in the caller's thread
                self.error = e

    def put(self, vectors):
        """Queues a dict ``sample id -> vector`` for writing."""
        while True:
            self._raise_error()
            try:
                self._queue.put(vectors, timeout=0.1)
                return
            except queue.Full:
                pass

    def close(self, raise_errors=True):
        """Waits until every queued dict is written (or dropped after a
        failure), then raises the failure when ``raise_errors``."""
        self._queue.put(None)
        self._thread.join()
        if raise_errors:
            self._raise_error()

    def _raise_error(self):
        if self.error is not None:
            raise self.error


def get_embeddings_info(samples, embeddings_field):
    """Returns what produced ``embeddings_field`` (model, pretrained, dim),
    as recorded by :func:`compute_embeddings`, or None."""
    if not samples.has_field(embeddings_field):
        return None
    info = samples._dataset.get_field(embeddings_field).info or {}
    return info.get(EMBEDDINGS_INFO_KEY)


def _write_vectors(samples, field, vectors):
    samples.set_values(field, vectors, key_field="id")


#: what must agree between the provenance recorded on a field and the
#: model about to write into it: vectors that differ in any of these are not
#: comparable. (``pretrained`` is not compared: the path of one checkpoint
#: differs from machine to machine, e.g. between two workers.)
_PROVENANCE_KEYS = ("model", "dim", "image_size", "normalized")


def _claim_field(samples, field, info):
    """Checks and records what writes into ``field`` as one step, under the
    dataset's write lock and on a freshly reloaded schema, so that several
    processes embedding shards of one dataset at once (e.g. delegated
    operations run by ``fiftyone delegated launch`` workers) agree: the
    first creates the field and records its model, the others find that
    record, accept it when it names the same model, and are refused with a
    :class:`~fiftyone_hardness.methods.base.HardnessError` when it does
    not.

    Returns:
        whether this call created the field
    """
    dataset = samples._dataset
    with dataset_lock(
        dataset, "recording the model of embeddings field '%s'" % field
    ):
        # another process may have created the field or recorded its model
        # since this dataset was loaded
        dataset.reload()
        _check_provenance(samples, field, info)
        created = not dataset.has_sample_field(field)
        if created or get_embeddings_info(dataset, field) != to_jsonable(info):
            _record_provenance(samples, field, info)
    return created


def _release_field(samples, field):
    """Deletes ``field``, created by a run that wrote nothing into it,
    unless another process wrote into it meanwhile."""
    dataset = samples._dataset
    with dataset_lock(
        dataset, "removing the empty embeddings field '%s'" % field
    ):
        dataset.reload()
        if dataset.has_sample_field(field) and not len(dataset.exists(field)):
            dataset.delete_sample_field(field)


def _check_provenance(samples, field, info):
    """Refuses to write into a field that holds something else: vectors of
    another model (or of the same model at another input size), or values
    we did not write (a user's own field)."""
    if not samples.has_field(field):
        return
    recorded = get_embeddings_info(samples, field)
    dataset = samples._dataset
    if recorded is None and len(dataset.exists(field)):
        raise HardnessError(
            "Field '%s' already holds values that compute_embeddings did "
            "not write; choose another embeddings_field (or delete that "
            "field first if you no longer need it)" % field
        )
    if recorded and _differs(recorded, info):
        raise HardnessError(
            "Field '%s' holds %s embeddings (%s); choose another "
            "embeddings_field for %s (%s)"
            % (
                field,
                recorded.get("model"),
                _settings(recorded),
                info.get("model"),
                _settings(info),
            )
        )


def _differs(recorded, info):
    for key in _PROVENANCE_KEYS:
        if key in recorded and key in info and recorded[key] != info[key]:
            return True
    return False


def _settings(info):
    """E.g. "dim 1280, image_size 32"."""
    parts = ["dim %s" % info.get("dim")]
    if info.get("image_size") is not None:
        parts.append("image_size %s" % info["image_size"])
    return ", ".join(parts)


def _record_provenance(samples, field, info):
    dataset = samples._dataset
    if not dataset.has_sample_field(field):
        dataset.add_sample_field(field, fo.VectorField)
    dataset_field = dataset.get_field(field)
    dataset_field.info = dict(dataset_field.info or {})
    dataset_field.info[EMBEDDINGS_INFO_KEY] = to_jsonable(info)
    dataset_field.save()
