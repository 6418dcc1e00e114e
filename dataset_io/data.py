"""
Reading labelled data out of a FiftyOne collection: the one read path.

:func:`load_labeled_data` validates the label field and returns a
:class:`fiftyone_hardness.methods.base.LabeledData` (ids, class indices,
class names, and loaders for other fields), so that methods never touch
FiftyOne themselves.

Memory: ids and labels are streamed from one database cursor (no Python
list of every id or label is kept), and a vector field is read by
:func:`read_vectors` in chunks straight into one preallocated ``(N, D)``
float32 array: the peak is that array plus one chunk, about 1.05x the array
for 512-d vectors in chunks of 20k (a list of per-sample arrays from
``values()`` stacked at the end costs about 3.5x). See
``docs/performance.md``.
"""

import io
import logging
import zlib

import numpy as np

import fiftyone as fo

from fiftyone_hardness.dataset_io.run_views import (
    member_scores_loader,
    resolve_member,
)
from fiftyone_hardness.methods.base import HardnessError, LabeledData

logger = logging.getLogger(__name__)

#: the most samples decoded per chunk by :func:`read_vectors` (about 40 MB
#: of 512-d float32 vectors); fewer for smaller collections (see
#: :data:`CHUNKS_PER_READ`)
VECTOR_CHUNK_SIZE = 20000

#: at least this many chunks per read, so that one chunk's documents and
#: decoded bytes (about 3.5x its rows of the array) stay near a tenth of
#: the array whatever N is
CHUNKS_PER_READ = 32

#: the fewest samples per chunk (per-chunk overhead)
MIN_CHUNK_SIZE = 1000

#: documents per database round trip (see :func:`_cursor`)
CURSOR_BATCH_SIZE = 4096


def validate_label_field(samples, label_field):
    """Checks that ``label_field`` is a ``fo.Classification`` field.

    Raises:
        HardnessError: if the field is missing or of another type
    """
    schema = samples.get_field_schema()
    classification_fields = sorted(
        name
        for name, field in schema.items()
        if isinstance(field, fo.EmbeddedDocumentField)
        and issubclass(field.document_type, fo.Classification)
    )
    hint = (
        "Classification fields here: %s" % ", ".join(classification_fields)
        if classification_fields
        else "this dataset has no fo.Classification field"
    )
    if label_field.startswith(samples._FRAMES_PREFIX) or ("." in label_field):
        raise HardnessError(
            "'%s' is a %s field; hardness methods score top-level "
            "fo.Classification fields of samples. Copy the labels into a "
            "top-level field first (e.g. dataset.clone_sample_field or "
            "set_values); %s"
            % (
                label_field,
                (
                    "frame"
                    if label_field.startswith(samples._FRAMES_PREFIX)
                    else "nested"
                ),
                hint,
            )
        )
    if label_field not in schema:
        raise HardnessError(
            "Dataset '%s' has no field '%s'; %s"
            % (samples._dataset.name, label_field, hint)
        )
    if label_field not in classification_fields:
        field = schema[label_field]
        kind = getattr(field, "document_type", None) or type(field)
        raise HardnessError(
            "Field '%s' holds %s, but hardness methods need fo.Classification "
            "labels; %s" % (label_field, kind.__name__, hint)
        )


def load_labeled_data(
    samples, label_field, progress=None, chunk_size=VECTOR_CHUNK_SIZE
):
    """Reads the labelled samples of ``samples`` as arrays.

    Samples whose label is missing are skipped and counted in
    ``num_skipped``. Classes are the observed labels, in the order of
    ``dataset.classes[label_field]`` or ``dataset.default_classes`` when
    declared, else sorted.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        label_field: the ``fo.Classification`` field to read
        progress (None): a callable ``(fraction, message)``
        chunk_size (VECTOR_CHUNK_SIZE): samples per chunk when reading
            vector fields (:func:`read_vectors`)

    Raises:
        HardnessError: empty collection, bad label field, no labels
    """
    if len(samples) == 0:
        raise HardnessError(
            "The collection is empty: nothing to compute hardness on"
        )
    validate_label_field(samples, label_field)
    ids, codes, names, keep = _read_ids_and_labels(
        samples, label_field, chunk_size
    )
    if not len(ids):
        raise HardnessError(
            "No sample of this collection has a label in '%s'" % label_field
        )
    classes = _class_order(samples, label_field, names)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[name] for name in names], dtype=int)[codes]
    del codes

    cache = {}

    def load_values(path):
        if path not in cache:
            values = samples.values(path)
            cache[path] = [v for v, k in zip(values, keep) if k]
        return cache[path]

    def load_vectors(path):
        return read_vectors(
            samples, path, ids, label_field, chunk_size=chunk_size
        )

    def load_matrix(path):
        return read_matrix(
            samples, path, ids, label_field, chunk_size=chunk_size
        )

    return LabeledData(
        ids=ids,
        labels=labels,
        classes=classes,
        num_skipped=int(len(keep) - len(ids)),
        label_field=label_field,
        load_values=load_values,
        load_vectors=load_vectors,
        load_matrix=load_matrix,
        progress=progress or (lambda fraction, message="": None),
        load_classes=lambda field: declared_classes(samples, field),
        load_scores=member_scores_loader(samples, load_values),
        load_member_runs=member_runs_loader(samples),
    )


def member_runs_loader(samples):
    """Returns the ``load_member_runs`` loader of a
    :class:`~fiftyone_hardness.methods.base.LabeledData`: ``member ->
    [dict]``, how each score of a consensus member was made (its run's
    method, label field and stored parameters), read from the run schema
    so that the consensus can re-run cheap members on injected noise."""

    def load_member_runs(member):
        out = []
        for score in resolve_member(samples, member):
            config = samples.get_run_info(score.run_key).config
            # the schema of score_members has no results; the noise rate
            # is in the run's results
            results = samples.load_run_results(score.run_key)
            if results is not None:
                score = next(
                    (s for s in results.scores() if s.member == score.member),
                    score,
                )
            params = {
                k: v
                for k, v in config.serialize().items()
                if k not in _RUN_BOOKKEEPING
            }
            out.append(
                {
                    "name": score.member,
                    "run_key": score.run_key,
                    "method": config.method,
                    "label_field": getattr(config, "label_field", None),
                    "config": params,
                    "score": None if score.main else score.name,
                    "noise_rate": score.noise_rate,
                }
            )
        return out

    return load_member_runs


#: entries of a stored run config that are not the method's parameters
_RUN_BOOKKEEPING = ("cls", "type", "method", "label_field", "field_suffixes")


def declared_classes(samples, field):
    dataset = samples._dataset
    classes = dataset.classes.get(field) if dataset.classes else None
    return list(classes or dataset.default_classes or []) or None


def read_vectors(
    samples, path, ids, label_field, chunk_size=VECTOR_CHUNK_SIZE
):
    """Reads the vector field ``path`` of the labelled samples ``ids`` into
    one validated ``(N, D)`` float32 array, row ``i`` for ``ids[i]``.

    The field is streamed from one database cursor in chunks of
    ``chunk_size`` samples; each chunk's vectors are decoded (FiftyOne
    stores a ``VectorField`` value as zlib-compressed ``numpy.save`` bytes)
    and written into the array, which is allocated once when the first
    vector gives its length. Lists (``ListField``) and other array-likes are
    read too. Samples of ``samples`` without a label in ``label_field`` are
    skipped, as in :func:`load_labeled_data`.

    Raises:
        HardnessError: the field does not exist, or, with the messages of
            :func:`fiftyone_hardness.methods.validation.vectors_to_array`,
            some samples have no vector, vectors of different lengths,
            values that are not numbers, NaN/inf values or identical rows
    """
    from fiftyone_hardness.methods.validation import check_features

    _check_vector_field(samples, path)
    array = _read_rows(samples, path, ids, label_field, chunk_size, np.float32)
    return check_features(array, what=path, ids=ids)


def read_matrix(samples, path, ids, label_field, chunk_size=VECTOR_CHUNK_SIZE):
    """Reads the per-sample numeric vectors at ``path`` (e.g. a predictions
    field's ``logits``) of the labelled samples ``ids`` into one ``(N, K)``
    float64 array, in chunks, as :func:`read_vectors` does; or returns None
    when they are not one numeric vector of one length per sample (or the
    path does not exist), so that the caller's general path can say what
    is wrong.

    ``8 N K`` bytes plus a chunk at the peak, against 2.5x that through
    ``values()`` and stacking (100k x 100 logits: +83 MB in 1.3 s against
    +192 MB in 4.6 s, ``speed/predictions_read.py``).
    Values are kept as read (no NaN/inf check, no check of identical
    rows): validating them is the caller's business.
    """
    try:
        _check_vector_field(samples, path)
        matrix = _read_rows(
            samples, path, ids, label_field, chunk_size, np.float64
        )
    except HardnessError:
        return None
    # one number per sample is not a vector of class scores
    return matrix if matrix.shape[1] >= 2 else None


def _read_rows(samples, path, ids, label_field, chunk_size, dtype):
    """The vectors at ``path`` of the labelled samples ``ids`` as one
    (N, D) ``dtype`` array, filled chunk by chunk; raises what
    :meth:`_VectorRows.finish` raises."""
    rows = _VectorRows(len(ids), path, dtype=dtype)
    chunk_size = _chunk_rows(len(ids), chunk_size)
    for chunk in _labelled_chunks(samples, path, ids, label_field, chunk_size):
        rows.add_chunk(chunk)
    return rows.finish(ids)


def _chunk_rows(num_rows, chunk_size):
    """Rows per chunk of a vector read: ``chunk_size``, fewer so that a read
    takes at least :data:`CHUNKS_PER_READ` chunks (of at least
    :data:`MIN_CHUNK_SIZE`)."""
    return min(
        chunk_size, max(MIN_CHUNK_SIZE, -(-num_rows // CHUNKS_PER_READ))
    )


def _read_ids_and_labels(samples, label_field, chunk_size):
    """Streams ``(id, label)`` of every sample once, into preallocated
    arrays (no list of every id or label, no concatenation at the end).

    Returns:
        ``(ids, codes, names, keep)``: the (N,) ids of the labelled samples,
        their (N,) label codes into ``names`` (labels in order of first
        appearance), and the (M,) bool mask of labelled samples over the
        whole collection (the order of ``samples.values()``)
    """
    label_path = _db_path(samples, label_field + ".label")
    cursor = _cursor(samples, {"_id": True, "l": "$" + label_path})
    size = len(samples)
    # ObjectId strings: 24 characters (wider ids widen the column)
    ids, codes, keep = (
        _Column(size, "U24"),
        _Column(size, np.int64),
        _Column(size, bool),
    )
    code_of = {}
    chunk_ids, chunk_codes, chunk_keep = [], [], []
    for doc in cursor:
        label = doc.get("l")
        chunk_keep.append(label is not None)
        if label is not None:
            chunk_ids.append(str(doc["_id"]))
            chunk_codes.append(code_of.setdefault(label, len(code_of)))
        if len(chunk_keep) >= chunk_size:
            for column, chunk in (
                (ids, chunk_ids),
                (codes, chunk_codes),
                (keep, chunk_keep),
            ):
                column.extend(chunk)
                del chunk[:]
    ids.extend(chunk_ids)
    codes.extend(chunk_codes)
    keep.extend(chunk_keep)
    return ids.finish(), codes.finish(), list(code_of), keep.finish()


class _Column(object):
    """A 1-D array filled chunk by chunk into a preallocated buffer (it
    grows should the collection grow while it is read)."""

    def __init__(self, capacity, dtype):
        self.array = np.empty(capacity, dtype=dtype)
        self.size = 0

    def extend(self, values):
        kind = self.array.dtype.kind
        values = np.asarray(
            values, dtype="U" if kind == "U" else self.array.dtype
        )
        if kind == "U" and values.dtype.itemsize > self.array.dtype.itemsize:
            self.array = self.array.astype(values.dtype)  # wider strings
        end = self.size + len(values)
        if end > len(self.array):
            grown = np.empty(max(end, 2 * len(self.array)), self.array.dtype)
            grown[: self.size] = self.array[: self.size]
            self.array = grown
        self.array[self.size : end] = values
        self.size = end

    def finish(self):
        array = self.array[: self.size]
        # a copy releases the buffer when most samples were unlabelled
        return array.copy() if self.size < 0.9 * len(self.array) else array


def _class_order(samples, label_field, observed):
    """The observed labels in the declared order, then the rest sorted."""
    observed = set(observed)
    declared = declared_classes(samples, label_field) or []
    classes = [c for c in declared if c in observed]
    return classes + sorted(observed - set(classes))


def _check_vector_field(samples, path):
    if samples.has_field(path):
        return
    vector_fields = sorted(
        name
        for name, field in samples.get_field_schema().items()
        if isinstance(field, (fo.VectorField, fo.ArrayField, fo.ListField))
    )
    raise HardnessError(
        "This collection has no field '%s'; %s. Compute embeddings with "
        "fiftyone_hardness.compute_embeddings"
        % (
            path,
            (
                "vector fields here: %s" % ", ".join(vector_fields)
                if vector_fields
                else "it has no vector field"
            ),
        )
    )


def _labelled_chunks(samples, path, ids, label_field, chunk_size):
    """Yields lists of ``(row, raw value)`` of the labelled samples, at most
    ``chunk_size`` per list, ``row`` the index of the sample in ``ids``.

    The cursor runs the same view as :func:`_read_ids_and_labels`, so the
    labelled samples come in the order of ``ids`` and each row is found by
    a pointer; should the order differ (e.g. a sort with ties), rows are
    looked up by id instead.
    """
    cursor = _cursor(
        samples,
        {
            "_id": True,
            "l": "$" + _db_path(samples, label_field + ".label"),
            "v": "$" + _db_path(samples, path),
        },
    )
    num_rows = len(ids)
    expected = 0
    row_of = None
    chunk = []
    for doc in cursor:
        if doc.get("l") is None:
            continue
        _id = str(doc["_id"])
        if row_of is None and expected < num_rows and ids[expected] == _id:
            row = expected
            expected += 1
        else:
            if row_of is None:
                logger.debug("'%s' read out of order: rows found by id", path)
                row_of = {i: r for r, i in enumerate(ids.tolist())}
            row = row_of.get(_id)
            if row is None:  # labelled since the ids were read
                continue
        chunk.append((row, doc.get("v")))
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _cursor(samples, projection):
    """A cursor over the documents of ``samples`` (its view stages applied,
    in the order of ``values()``) with only the fields of ``projection``.

    Documents are fetched :data:`CURSOR_BATCH_SIZE` at a time: pymongo
    decodes a whole batch at once, and the server's default batches (up to
    16 MB of BSON) decode to about 80 MB of dicts of ids and labels.
    """
    cursor = samples._aggregate(pipeline=[{"$project": projection}])
    if hasattr(cursor, "batch_size"):
        cursor.batch_size(CURSOR_BATCH_SIZE)
    return cursor


def _db_path(samples, path):
    try:
        return samples._handle_db_field(path)
    except Exception:  # pragma: no cover - private API of older FiftyOne
        return path


class _VectorRows(object):
    """Fills an (N, D) float32 array chunk by chunk and collects what
    :func:`~fiftyone_hardness.methods.validation.vectors_to_array` would
    refuse, to raise the same error after the pass.

    Serialized vectors whose ``numpy.save`` header equals the first one's
    (same dtype and shape, C order) are decoded together with one
    ``np.frombuffer``; any other value goes through the general path, which
    is ``vectors_to_array``'s own conversion.
    """

    def __init__(self, num_rows, name, dtype=np.float32):
        self.num_rows = num_rows
        self.name = name
        self.dtype = dtype
        self.array = None
        self.dims = set()
        self.seen = np.zeros(num_rows, dtype=bool)
        self.missing = []
        self.size_error = None  # (row, exception) with the smallest row
        self.value_error = None
        self._header = None  # the first vector's numpy.save header
        self._dtype = None

    def add_chunk(self, chunk):
        fast_rows, payloads = [], []
        for row, value in chunk:
            self.seen[row] = True
            if value is None:
                self.missing.append(row)
                continue
            if isinstance(value, bytes):
                try:
                    value = zlib.decompress(value)
                    if self._fast(value):
                        fast_rows.append(row)
                        payloads.append(memoryview(value)[len(self._header) :])
                        continue
                    value = np.load(io.BytesIO(value), allow_pickle=False)
                except (zlib.error, ValueError, OSError, EOFError) as e:
                    self._error("value_error", row, e)
                    continue
            self._add_value(row, value)
        if fast_rows:
            block = np.frombuffer(b"".join(payloads), dtype=self._dtype)
            block = block.reshape(len(fast_rows), -1)
            fast_rows = np.asarray(fast_rows)
            if (np.diff(fast_rows) == 1).all():  # in order: a slice
                first = fast_rows[0]
                self.array[first : first + len(fast_rows)] = block
            else:
                self.array[fast_rows] = block

    def finish(self, ids):
        """Returns the array, or raises what ``vectors_to_array`` raises for
        the same values (missing, unsized, mixed lengths, not numbers)."""
        from fiftyone_hardness.methods.validation import check_vector_rows

        if not self.seen.all():
            raise HardnessError(
                "%d labelled samples were removed or unlabelled while "
                "'%s' was read; run again"
                % (int((~self.seen).sum()), self.name)
            )
        problems = dict(num_rows=self.num_rows, ids=ids, name=self.name)
        check_vector_rows(missing=sorted(self.missing), **problems)
        if self.size_error is not None:
            check_vector_rows(error=self.size_error[1], **problems)
        check_vector_rows(dims=self.dims, **problems)
        if self.value_error is not None:
            check_vector_rows(error=self.value_error[1], **problems)
        return self.array

    def _fast(self, raw):
        if self._header is None:
            self._read_header(raw)
        return (
            self._header is not False
            and raw.startswith(self._header)
            and (len(raw) == self._size)
        )

    def _read_header(self, raw):
        with io.BytesIO(raw) as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                self._header = False
                return
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        size = int(np.prod(shape))
        if dtype.kind not in "biuf" or (fortran and len(shape) > 1):
            self._header = False
            return
        self._header = bytes(raw[:offset])
        self._size = offset + size * dtype.itemsize
        self._dtype = dtype
        self._allocate(size)
        self.dims.add(size)
        if self.array.shape[1] != size:
            # the first vector was a list of another length: these go
            # through the general path, which records the mixed lengths
            self._header = False

    def _allocate(self, dim):
        if self.array is None:
            self.array = np.empty((self.num_rows, dim), dtype=self.dtype)

    def _add_value(self, row, value):
        # vectors_to_array's conversion, one value at a time
        try:
            size = np.size(value)
        except (TypeError, ValueError) as e:
            self._error("size_error", row, e)
            return
        self.dims.add(size)
        self._allocate(size)
        if size != self.array.shape[1]:
            return
        try:
            self.array[row] = np.ravel(np.asarray(value, dtype=self.dtype))
        except (TypeError, ValueError) as e:
            self._error("value_error", row, e)

    def _error(self, kind, row, error):
        current = getattr(self, kind)
        if current is None or row < current[0]:
            setattr(self, kind, (row, error))
