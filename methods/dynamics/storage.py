"""
Where the training-dynamics recorder keeps its per-sample arrays (the
per-epoch logits, the features, the MC-dropout and augmented probabilities,
the Detector's calibration trajectories, the cross-validated
probabilities): in memory up to a budget (``memory_budget_mb`` of
:class:`fiftyone_hardness.methods.dynamics.config.SingleDynamicsConfig`),
beyond it in disk-backed ``np.memmap`` files under a temporary directory.
See ``docs/methods.md`` section 3.

The arrays keep their dtype (float32) either way, so a record's scores do
not depend on where its arrays live (tested). float16 would halve the
memory but not bound it (E x N x K still grows with every factor), and it
changes results: on digits with 20% noise, rounding the record's arrays to
float16 changed 8 of ALLSH's flags (a KL divergence of near-equal
distributions) and Forgetting counts by one (argmax over near-tied
logits).

A memory-mapped file is unlinked as soon as it is mapped (POSIX), so the
disk space is returned when the array is garbage collected and nothing is
left behind by a crash; elsewhere the file is removed when the array is
collected.
"""

import logging
import os
import tempfile
import weakref

import numpy as np

logger = logging.getLogger(__name__)

_MB = 1 << 20


class ArrayStore(object):
    """Allocates arrays in memory while their total stays within
    ``budget_mb``, and as disk-backed ``np.memmap`` arrays beyond it.

    Args:
        budget_mb: the memory budget in MiB (0: every array on disk; None:
            no budget, everything in memory)
        temp_dir (None): where the memory-mapped files go (None: the
            system's temporary directory, ``$TMPDIR``)
    """

    def __init__(self, budget_mb, temp_dir=None):
        self.budget = None if budget_mb is None else int(budget_mb * _MB)
        self.temp_dir = temp_dir
        self.in_memory = 0
        self.on_disk = 0
        self.names_on_disk = []

    def empty(self, shape, dtype=np.float32, name="array"):
        """An uninitialized array of ``shape`` and ``dtype``, in memory if
        it fits in what is left of the budget, else memory-mapped."""
        shape = tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if self.budget is None or self.in_memory + nbytes <= self.budget:
            self.in_memory += nbytes
            return np.empty(shape, dtype=dtype)
        self.on_disk += nbytes
        self.names_on_disk.append(name)
        logger.info(
            "Recorder array %s (%.0f MiB) is disk-backed: over the memory "
            "budget of %.0f MiB",
            name,
            nbytes / _MB,
            self.budget / _MB,
        )
        return _memmap(shape, dtype, self.temp_dir, name)

    def zeros(self, shape, dtype=np.float32, name="array"):
        """Like :meth:`empty`, filled with zeros."""
        array = self.empty(shape, dtype, name)
        array[...] = 0
        return array


def _memmap(shape, dtype, temp_dir, name):
    handle, path = tempfile.mkstemp(
        prefix="fiftyone-hardness-%s-" % name, suffix=".f32", dir=temp_dir
    )
    os.close(handle)
    if not all(shape):
        # np.memmap refuses empty files
        os.remove(path)
        return np.empty(shape, dtype=dtype)
    array = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
    try:
        # the mapping keeps the data; the disk space is freed with it
        os.remove(path)
    except OSError:
        weakref.finalize(array, _remove_quietly, path)
    return array


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def in_memory_bytes(*arrays):
    """The bytes of ``arrays`` held in memory (memory-mapped ones and None
    count 0)."""
    total = 0
    for array in arrays:
        if isinstance(array, np.ndarray) and not _is_memmap(array):
            total += array.nbytes
    return total


def _is_memmap(array):
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base if isinstance(array, np.ndarray) else None
    return False
