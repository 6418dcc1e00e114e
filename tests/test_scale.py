"""
The chunked vector reader (``dataset_io/data.py:read_vectors``, issue 14):
the same array as the list path (``values()`` + ``vectors_to_array``) in
the same order, for views, chunk boundaries and stored formats; the same
errors for bad vectors; and a peak memory near the array's size.
"""

import datetime
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_hardness.dataset_io.data import (
    load_labeled_data,
    read_vectors,
)
from fiftyone_hardness.methods.base import HardnessError, LabeledData
from fiftyone_hardness.methods.validation import vectors_to_array

# small chunks, so that every read crosses many chunk boundaries
CHUNK = 7


def _vectors(n=60, dim=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim))


@pytest.fixture
def vectors_dataset():
    """60 samples, every 4th unlabelled; the same vectors stored as a
    VectorField of float32 (``emb``) and of float64 (``emb64``) and as a
    list of floats (``lst``); ``rank`` for filters and sorts."""
    X = _vectors()
    dataset = fo.Dataset()
    dataset.add_samples(
        [
            fo.Sample(
                filepath="/vectors/%03d.png" % i,
                gt=(
                    fo.Classification(label="c%d" % (i % 3)) if i % 4 else None
                ),
                emb=X[i].astype(np.float32),
                emb64=X[i],
                lst=X[i].tolist(),
                rank=int((i * 7) % 10),
            )
            for i in range(len(X))
        ],
        progress=False,
    )
    yield dataset
    fo.delete_dataset(dataset.name)


def _list_path(data, field):
    """The loader before issue 14: a list of vectors, then stacked."""
    return vectors_to_array(data.values(field), data.ids, field)


def _expected(view, field):
    """The vectors of the labelled samples of ``view``, in its order, read
    with FiftyOne's own ``values()``."""
    ids, labels, values = view.values(["id", "gt.label", field])
    rows = [
        (i, v) for i, lab, v in zip(ids, labels, values) if lab is not None
    ]
    return [i for i, _ in rows], np.array(
        [np.asarray(v, dtype=np.float32) for _, v in rows]
    )


def test_chunked_reader_equals_the_list_path(vectors_dataset):
    dataset = vectors_dataset
    views = {
        "dataset": dataset,
        "filter": dataset.match(F("rank") >= 3),
        "sort": dataset.sort_by("rank", reverse=True),
        "filter+sort": dataset.match(F("rank") != 5).sort_by("filepath"),
        "labels filtered": dataset.filter_labels(
            "gt", F("label") != "c1", only_matches=False
        ),
    }
    for name, view in views.items():
        data = load_labeled_data(view, "gt", chunk_size=CHUNK)
        for field in ("emb", "emb64", "lst"):
            ids, expected = _expected(view, field)
            X = data.embeddings(field)
            assert X.dtype == np.float32, (name, field)
            assert list(data.ids) == ids, (name, field)
            assert np.array_equal(X, expected), (name, field)
            assert np.array_equal(X, _list_path(data, field)), (name, field)
        assert data.num_skipped == len(view) - len(ids)


def test_rows_follow_the_ids_in_any_order(vectors_dataset):
    # a read whose cursor order differs from the ids' finds rows by id
    data = load_labeled_data(vectors_dataset, "gt", chunk_size=CHUNK)
    X = data.embeddings("emb")
    order = np.random.default_rng(1).permutation(len(data.ids))
    shuffled = read_vectors(
        vectors_dataset, "emb", data.ids[order], "gt", chunk_size=CHUNK
    )
    assert np.array_equal(shuffled, X[order])


def test_chunk_size_does_not_change_the_array(vectors_dataset):
    arrays = [
        load_labeled_data(vectors_dataset, "gt", chunk_size=c).embeddings(
            "emb"
        )
        for c in (1, CHUNK, 10**6)
    ]
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])


def _both_errors(dataset, field):
    """The HardnessError messages of the chunked reader and the list path
    on the same data."""
    data = load_labeled_data(dataset, "gt", chunk_size=CHUNK)
    messages = []
    for read in (data.embeddings, lambda f: _list_path(data, f)):
        with pytest.raises(HardnessError) as error:
            read(field)
        messages.append(str(error.value))
    return messages


def test_bad_vectors_raise_the_list_paths_errors(vectors_dataset):
    dataset = vectors_dataset
    X = _vectors()
    # (values, what the message says, the sample it names: the first bad
    # one in the order of the ids)
    cases = [
        (
            [None if i in (30, 9) else x for i, x in enumerate(X)],
            "2 of 45 labelled samples have no value",
            9,
        ),
        (
            [x[:3] if i in (13, 14) else x for i, x in enumerate(X)],
            "different lengths [3, 5]",
            None,
        ),
        (
            [np.full(5, np.nan) if i == 21 else x for i, x in enumerate(X)],
            "1 samples have NaN or inf",
            21,
        ),
        ([np.zeros(5) for _ in X], "are identical", None),
    ]
    sample_ids = dataset.values("id")
    for values, expected, named in cases:
        dataset.set_values("bad", values)
        ours, listed = _both_errors(dataset, "bad")
        assert ours == listed, expected
        assert expected in ours
        if named is not None:
            assert "sample %s" % sample_ids[named] in ours
    # a field of strings: not numbers, in the same words
    dataset.set_values("name", ["a%d" % i for i in range(len(X))])
    ours, listed = _both_errors(dataset, "name")
    assert ours == listed
    assert "does not hold numeric vectors" in ours


def test_predictions_are_read_in_chunks_as_the_list_path_reads_them(
    vectors_dataset,
):
    """Issue 14: a predictions field's logits (and a vector field of
    probabilities) are read in chunks into one float64 array, equal to
    stacking ``values()``; anything that is not one numeric vector of one
    length per labelled sample gives None, so that confident learning's
    list path names the problem."""
    dataset = vectors_dataset
    X = _vectors()
    dataset.set_values(
        "pred",
        [fo.Classification(label="c0", logits=x) for x in X],
    )
    sort = dataset.sort_by("rank", reverse=True)
    for view in (dataset, sort):
        data = load_labeled_data(view, "gt", chunk_size=CHUNK)
        for path in ("pred.logits", "emb64", "lst", "emb"):
            matrix = data.matrix(path)
            listed = np.asarray(data.values(path), dtype=np.float64)
            assert matrix.dtype == np.float64, path
            assert np.array_equal(matrix, listed), path  # float64 kept
    data = load_labeled_data(dataset, "gt", chunk_size=CHUNK)
    missing = [fo.Classification(label="c0", logits=x) for x in X]
    missing[13] = fo.Classification(label="c0")  # labelled row, no logits
    dataset.set_values("pred", missing)
    dataset.set_values("mixed", [x[: 3 + i % 2] for i, x in enumerate(X)])
    dataset.set_values("number", [float(i) for i in range(len(X))])
    for path in ("pred.logits", "pred", "mixed", "number", "nope.logits"):
        assert data.matrix(path) is None, path
    # arrays without a collection have no chunked reader
    assert (
        LabeledData(ids=np.array(["a"]), labels=[0], classes=["x"]).matrix("v")
        is None
    )


def test_numeric_array_columns_are_written_in_chunks_as_set_values_would(
    vectors_dataset, monkeypatch
):
    """Issue 14: an (N, K) column (e.g. cleanlab's stored probabilities) is
    written one chunk of rows at a time, with the field type and values
    that ``set_values`` gives the same lists; cleanlab's ``store_probs``
    writes through it and ``delete_run`` removes the field."""
    from fiftyone_hardness.dataset_io import runs

    dataset = vectors_dataset
    monkeypatch.setattr(runs, "WRITE_CHUNK_ROWS", CHUNK)
    ids = dataset.values("id")
    rng = np.random.default_rng(4)
    probs = rng.random((len(ids), 4))
    probs[3, 1] = np.nan
    counts = rng.integers(0, 9, size=(len(ids), 3))
    runs.write_fields(
        dataset,
        ids,
        {"w_probs": probs, "w_counts": counts, "w_x": probs[:, 0]},
    )
    dataset.set_values("ref_probs", probs.tolist())
    dataset.set_values("ref_counts", counts.tolist())
    for ours, ref, array in (
        ("w_probs", "ref_probs", probs),
        ("w_counts", "ref_counts", counts),
    ):
        field, expected = dataset.get_field(ours), dataset.get_field(ref)
        assert type(field) is type(expected) is fo.ListField
        assert type(field.field) is type(expected.field), ours
        np.testing.assert_array_equal(
            np.array(dataset.values(ours), dtype=float), array
        )
    # the same documents: BSON arrays of doubles (NaN kept)
    np.testing.assert_array_equal(
        np.array(dataset.values("w_probs")),
        np.array(dataset.values("ref_probs")),
    )

    results = dataset.apply_hardness(
        "cleanlab",
        label_field="gt",
        embeddings_field="emb",
        store_probs=True,
        run_key="stored",
    )
    labelled = dataset.exists("gt")
    stored = np.array(labelled.values("stored_probs"))
    assert stored.shape == (len(labelled), 3)
    np.testing.assert_allclose(stored.sum(1), 1.0)
    assert results.num_samples == len(labelled)
    dataset.delete_run("stored")
    assert not dataset.has_sample_field("stored_probs")


def test_missing_field_is_named(vectors_dataset):
    data = load_labeled_data(vectors_dataset, "gt", chunk_size=CHUNK)
    with pytest.raises(HardnessError, match="no field 'nope'.*emb"):
        data.embeddings("nope")


def test_labeled_data_without_a_vector_loader_uses_the_list_path():
    X = _vectors(n=6)
    data = LabeledData(
        ids=np.array(["a", "b", "c", "d", "e", "f"]),
        labels=np.array([0, 1, 0, 1, 0, 1]),
        classes=["x", "y"],
        load_values=lambda path: list(X),
    )
    assert np.array_equal(data.embeddings("v"), X.astype(np.float32))


# -- memory -----------------------------------------------------------------


def _available_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _bulk_dataset(n, dim):
    """``n`` labelled samples with ``dim``-d float32 vectors, inserted as
    documents (``add_samples`` would take minutes)."""
    import io

    from bson import ObjectId

    dataset = fo.Dataset()
    dataset.persistent = True
    dataset.add_sample_field(
        "gt", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification
    )
    dataset.add_sample_field("emb", fo.VectorField)
    with io.BytesIO() as f:
        np.save(f, np.zeros(dim, dtype=np.float32))
        header = f.getvalue()[: -4 * dim]
    rng = np.random.default_rng(0)
    now = datetime.datetime.utcnow()
    for start in range(0, n, 20000):
        X = rng.normal(size=(min(20000, n - start), dim)).astype(np.float32)
        dataset._sample_collection.insert_many(
            [
                {
                    "_id": ObjectId(),
                    "filepath": "/v/%d.png" % (start + i),
                    "tags": [],
                    "_media_type": "image",
                    "gt": {
                        "_id": ObjectId(),
                        "_cls": "Classification",
                        "tags": [],
                        "label": "c%d" % (i % 10),
                    },
                    "emb": zlib.compress(header + x.tobytes()),
                    "_dataset_id": dataset._doc.id,
                    "created_at": now,
                    "last_modified_at": now,
                }
                for i, x in enumerate(X)
            ]
        )
    return dataset


_PEAK_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import fiftyone as fo
    import fiftyone_hardness.api  # imports before measuring
    from fiftyone_hardness.dataset_io.data import load_labeled_data
    from fiftyone_hardness.methods.validation import vectors_to_array

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    dataset = fo.load_dataset(sys.argv[1])
    len(dataset)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = status("VmRSS")
    data = load_labeled_data(dataset, "gt")
    if sys.argv[2] == "chunked":
        X = data.embeddings("emb")
    else:
        X = vectors_to_array(data.values("emb"), data.ids, "emb")
    print("PEAK", status("VmHWM") - start, X.nbytes, X.shape[0])
    """)


def _peak(name, path):
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, name, path],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PEAK")]
    assert lines, done.stderr[-2000:]
    rise, nbytes, rows = map(int, lines[-1].split()[1:])
    return rise, nbytes, rows


def test_reading_vectors_peaks_near_the_array_size():
    """100k x 256 float32 (102 MB): ids, labels and vectors read with a
    peak rise under 1.6x the array (the list path needs about 4x; about
    0.1x of the rise is the ids, 96 bytes each)."""
    available = _available_memory()
    if available is None or available < 8 * 2**30:
        pytest.skip("needs 8 GB of free memory")
    if not _can_reset_peak():
        pytest.skip("needs /proc/self/clear_refs to measure a peak")
    dataset = _bulk_dataset(100000, 256)
    try:
        rise, nbytes, rows = _peak(dataset.name, "chunked")
        listed, _, _ = _peak(dataset.name, "list")
    finally:
        fo.delete_dataset(dataset.name)
    assert rows == 100000
    assert rise < 1.6 * nbytes, (rise / nbytes, listed / nbytes)
    assert listed > 1.6 * nbytes  # the measurement tells the paths apart
