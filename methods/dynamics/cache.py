"""
An in-process cache of training records: the 13 methods (and each single
method run alone) share one recorded training of the same data and setup,
so running ``"aum"`` after ``"dynamics"`` trains nothing. See
``docs/methods.md`` section 3.

The cache keeps at most 4 records, and older records only while all of
them together hold no more memory than the newest one's
``memory_budget_mb`` (memory-mapped arrays do not count): a large record
evicts the others rather than multiplying the recorder's peak.
"""

import collections
import hashlib
import json
import logging

import numpy as np

from fiftyone_hardness.methods.base import select_device
from fiftyone_hardness.methods.dynamics.recorder import (
    _ALWAYS,
    record_training,
)

logger = logging.getLogger(__name__)

_CACHE_SIZE = 4
_RECORD_CACHE = collections.OrderedDict()


def training_key(X, labels, num_classes, config, device):
    """A hash of the data and the training setup
    (:meth:`~fiftyone_hardness.methods.dynamics.config.SingleDynamicsConfig.training_dict`):
    equal keys train equal models."""
    h = hashlib.sha1()
    X = np.ascontiguousarray(X)
    h.update(str(X.shape).encode())
    # the buffer itself: X.tobytes() would copy the whole array first
    h.update(memoryview(X).cast("B"))
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(
        json.dumps(
            {
                "config": config.training_dict(),
                "k": int(num_classes),
                "device": str(device),
            },
            sort_keys=True,
        ).encode()
    )
    return h.hexdigest()


def get_record(
    X,
    labels,
    num_classes,
    config,
    needs,
    device=None,
    progress=None,
    use_cache=True,
):
    """Returns a :class:`~fiftyone_hardness.methods.dynamics.recorder.TrainingRecord`
    with ``needs``, reusing the in-process cache when the same data were
    trained with the same setup (recording more needs retrains with the
    union of needs; the model is the same since recording never changes
    it).

    Args:
        X: inputs already passed through
            :func:`~fiftyone_hardness.methods.dynamics.recorder.prepare_inputs`
        labels: (N,) int observed labels
        num_classes: K
        config: a
            :class:`~fiftyone_hardness.methods.dynamics.config.SingleDynamicsConfig`
        needs: needs from
            :data:`~fiftyone_hardness.methods.dynamics.recorder.NEEDS`
        device (None): torch device
        progress (None): a callable ``(fraction, message)``
        use_cache (True): whether to read and fill the cache

    Returns:
        a tuple ``(record, cached)``
    """
    device = select_device(device)
    needs = frozenset(needs) | _ALWAYS
    key = training_key(X, labels, num_classes, config, device)
    cached = _RECORD_CACHE.get(key) if use_cache else None
    if cached is not None and needs <= cached.needs:
        _RECORD_CACHE.move_to_end(key)
        if progress is not None:
            progress(1.0, "reusing the recorded training run")
        return cached, True
    if cached is not None:
        needs = needs | cached.needs
    record = record_training(
        X, labels, num_classes, config, needs, device, progress
    )
    if use_cache:
        _RECORD_CACHE[key] = record
        _RECORD_CACHE.move_to_end(key)
        _evict(config.memory_budget_mb * float(1 << 20))
    return record, False


def _evict(budget):
    """Drops the oldest records while there are more than
    :data:`_CACHE_SIZE` or they hold more than ``budget`` bytes (the newest
    record always stays)."""

    def total():
        return sum(r.nbytes_in_memory() for r in _RECORD_CACHE.values())

    while len(_RECORD_CACHE) > 1 and (
        len(_RECORD_CACHE) > _CACHE_SIZE or total() > budget
    ):
        _RECORD_CACHE.popitem(last=False)


def clear_cache():
    """Empties the in-process cache of training records."""
    _RECORD_CACHE.clear()
