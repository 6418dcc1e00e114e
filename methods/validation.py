"""
Validation of the arrays every method receives: labels and features.

Called once, at the boundary of each method's entry point (as cleanlab's
``assert_valid_inputs``), so that the computations behind it can trust their
inputs. Every failure is a
:class:`~fiftyone_hardness.methods.base.HardnessError` that says what is
wrong and how to fix it.
"""

import numpy as np

from fiftyone_hardness.methods.base import HardnessError


def check_labels(
    labels,
    num_classes=None,
    min_classes=2,
    min_per_class=1,
    what="this method",
):
    """Validates class-index labels.

    Args:
        labels: (N,) integer class indices
        num_classes (None): K; ``max(labels) + 1`` when None
        min_classes (2): the fewest distinct classes allowed
        min_per_class (1): the fewest samples a present class may have
        what ("this method"): the caller's name, for messages

    Returns:
        ``(labels as int64, num_classes, counts)``, ``counts`` the (K,)
        samples per class

    Raises:
        HardnessError: not 1-D integers, out of range, too few classes, or a
            class with too few samples
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (
        np.issubdtype(labels.dtype, np.integer) or len(labels) == 0
    ):
        raise HardnessError(
            "%s needs labels as a 1-D array of integer class indices; got "
            "%s of shape %s" % (what, labels.dtype, labels.shape)
        )
    if len(labels) == 0:
        raise HardnessError("No samples to compute on")
    if labels.min() < 0:
        raise HardnessError(
            "Labels must be class indices >= 0; got %d" % labels.min()
        )
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise HardnessError(
            "Label index %d is out of range for %d classes"
            % (labels.max(), num_classes)
        )
    counts = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(counts)
    if len(present) < min_classes:
        raise HardnessError(
            "%s needs labels of at least %d classes; these have %d"
            % (what, min_classes, len(present))
        )
    small = present[counts[present] < min_per_class]
    if len(small):
        raise HardnessError(
            "%s needs at least %d samples per class; class index %d has %d. "
            "Remove or relabel it (e.g. filter the view) and run again"
            % (what, min_per_class, small[0], counts[small[0]])
        )
    return labels.astype(np.int64), int(num_classes), counts


def check_features(X, num_rows=None, what="features", ids=None):
    """Validates an (N, D) feature matrix and returns it as float32.

    Args:
        X: an (N, D) array-like
        num_rows (None): the N it must have (the number of labels)
        what ("features"): its name, for messages (e.g. a field name)
        ids (None): the sample ids, to name a bad row in messages

    Raises:
        HardnessError: not 2-D numbers, wrong number of rows, NaN or inf
    """
    X = np.asarray(X)
    if (
        X.ndim != 2
        or X.dtype == object
        or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool)
    ):
        raise HardnessError(
            "'%s' must be an (N, D) array of numbers with one vector of the "
            "same length per sample; got an array of shape %s and type %s"
            % (what, X.shape, X.dtype)
        )
    if num_rows is not None and len(X) != num_rows:
        raise HardnessError(
            "Got %d rows of '%s' for %d labels" % (len(X), what, num_rows)
        )
    X = X.astype(np.float32, copy=False)
    bad = _nonfinite_rows(X)
    if bad.any():
        first = np.flatnonzero(bad)[0]
        raise HardnessError(
            "%d samples have NaN or inf values in '%s' (e.g. %s)"
            % (
                int(bad.sum()),
                what,
                (
                    "sample %s" % ids[first]
                    if ids is not None
                    else "row %d" % first
                ),
            )
        )
    if len(X) > 1 and _all_rows_equal(X):
        # e.g. all-zero embeddings from a failed model: every method would
        # flag an arbitrary fraction of the data
        raise HardnessError(
            "All %d rows of '%s' are identical (e.g. all zeros): they carry "
            "no information about the samples; recompute them (e.g. with "
            "compute_embeddings)" % (len(X), what)
        )
    return X


def _all_rows_equal(X, block=4096):
    """Whether every row equals the first, stopping at the first block with
    a different row (on real data: the first one, so this costs nothing)."""
    for start in range(1, len(X), block):
        if (X[start : start + block] != X[0]).any():
            return False
    return True


def _nonfinite_rows(X, block_size=1 << 22):
    """The (N,) mask of rows with a NaN or inf, checked ``block_size``
    values at a time (an (N, D) bool temporary would add a quarter of a
    float32 X)."""
    block = max(1, block_size // max(1, X.shape[1]))
    bad = np.zeros(len(X), dtype=bool)
    for start in range(0, len(X), block):
        bad[start : start + block] = ~np.isfinite(
            X[start : start + block]
        ).all(axis=1)
    return bad


def vectors_to_array(values, ids, name="embeddings"):
    """Stacks a list of per-sample vectors into a validated (N, D) float32
    array.

    Args:
        values: list of array-likes (or None for missing)
        ids: the sample ids, for error messages
        name: the field name, for error messages

    Raises:
        HardnessError: missing vectors, mixed dimensions, values that are
            not numbers, NaN/inf values
    """
    if not len(values):
        raise HardnessError("No samples to compute on")
    problems = dict(num_rows=len(values), ids=ids, name=name)
    check_vector_rows(
        missing=[i for i, v in enumerate(values) if v is None], **problems
    )
    try:
        dims = {np.size(v) for v in values}
    except (TypeError, ValueError) as e:
        check_vector_rows(error=e, **problems)
    check_vector_rows(dims=dims, **problems)
    array = np.empty((len(values), dims.pop()), dtype=np.float32)
    try:
        for row, value in enumerate(values):
            array[row] = np.ravel(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError) as e:
        check_vector_rows(error=e, **problems)
    return check_features(array, what=name, ids=ids)


def check_vector_rows(num_rows, ids, name, missing=(), dims=(), error=None):
    """Raises the error of :func:`vectors_to_array` for vectors described
    by a summary, so that readers which stream vectors into an array
    (``dataset_io/data.py:read_vectors``) refuse them in the same words.

    Args:
        num_rows: the number of samples
        ids: the sample ids, for error messages
        name: the field name, for error messages
        missing (()): the sorted rows without a vector
        dims (()): the set of vector lengths seen
        error (None): the exception raised converting a value to numbers

    Raises:
        HardnessError: missing vectors, mixed dimensions, values that are
            not numbers
    """
    if len(missing):
        raise HardnessError(
            "%d of %d labelled samples have no value in '%s' (e.g. sample "
            "%s); compute the embeddings for them first or exclude them "
            "from the view" % (len(missing), num_rows, name, ids[missing[0]])
        )
    if len(dims) > 1:
        raise HardnessError(
            "'%s' holds vectors of different lengths %s; all samples "
            "need embeddings from the same model" % (name, sorted(dims))
        )
    if error is not None:
        raise HardnessError(
            "'%s' does not hold numeric vectors (%s); choose a field "
            "written by compute_embeddings" % (name, error)
        )
