"""
One writer at a time per dataset: a lock kept in MongoDB with a lease.

Writing a run, applying corrections and undoing them each read, decide and
then write; two processes doing that on one dataset at once can interleave
and lose data (a backup overwritten, a run mixed from two computations).
MongoDB makes each single-document update atomic but not such sequences, so
they hold :func:`dataset_lock` for the read-decide-write part.

The lock is one document per dataset in the ``hardness_locks`` collection of
FiftyOne's database: ``{_id: dataset id, holder, purpose, expires_at}``.
Taking it is one atomic upsert that matches only a free or expired lock
(the unique ``_id`` makes a second taker fail with a duplicate key). The
holder renews the lease from a background thread, so a lock outlives long
writes but expires ``lease`` seconds after its holder dies (SIGKILL, a lost
machine). A second writer waits up to ``timeout`` seconds and then fails
with a :class:`~fiftyone_hardness.methods.base.HardnessError` naming the
holder. Re-entrant within one thread.

Within one process, threads race on something else: FiftyOne keeps one
Dataset object per dataset, and the App server reloads it at the start of
every request, from the thread that serves the request. Operators and panel
events therefore write on a Dataset object of their own
(:func:`own_dataset_object`).
"""

import contextlib
import datetime
import logging
import os
import signal
import socket
import threading
import time
import uuid

import fiftyone.core.odm as foo
from pymongo.errors import DuplicateKeyError

from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

COLLECTION = "hardness_locks"

#: seconds a lock stays valid without renewal (its holder renews it every
#: third of this while alive); the environment variable lets fault-injection
#: tests use short leases
DEFAULT_LEASE = float(os.environ.get("FIFTYONE_HARDNESS_LOCK_LEASE", 30.0))

#: seconds a second writer waits before giving up
DEFAULT_TIMEOUT = 60.0

_held = threading.local()


def own_dataset_object(dataset):
    """Returns a Dataset object of ``dataset`` that no other thread holds.

    Why: FiftyOne keeps one Dataset object per dataset and process, and the
    App server reloads it (``load_dataset(..., reload=True)``) at the start
    of every request: the panel's poll, the grid and the sidebar, each from
    its own thread. An operator or panel event that writes through that
    object races with those reloads. A reload that read the dataset
    document just before our new field was declared puts back a schema
    without it: FiftyOne's own ``set_values`` then fails with "Dataset has
    no field". A reload in the middle of ``register_run`` leaves the run
    written into a document that no longer exists (``ReferenceError``).
    Nobody else reloads a Dataset object of our own; views built on it
    (``ctx.view`` once the context holds it) are ours too.

    The new object is built the way FiftyOne builds the shared one, but it
    is not put in FiftyOne's cache of Dataset objects.
    """
    import fiftyone.core.dataset as fod

    # Dataset(name) would return the shared object; _make_instance is what
    # DatasetSingleton calls to build a new one (fiftyone/core/singletons.py)
    return fod.Dataset._make_instance(dataset.name, False)


def reload_shared_dataset(name):
    """Reloads FiftyOne's shared Dataset object of dataset ``name``, if
    this process has one, after a write through
    :func:`own_dataset_object`."""
    import fiftyone.core.dataset as fod

    shared = fod.Dataset._instances.get(name) if name else None
    if shared is None or shared.deleted:
        return
    try:
        shared.reload()
    except Exception:  # e.g. deleted meanwhile: the next load finds out
        logger.debug("Could not reload dataset '%s'", name, exc_info=True)


def _collection():
    return foo.get_db_conn()[COLLECTION]


def _now():
    return datetime.datetime.utcnow()


def describe_holder():
    """Returns how this process names itself as a lock holder."""
    return "%s pid %d" % (socket.gethostname(), os.getpid())


def current_lock(dataset):
    """Returns the lock document of ``dataset`` (holder, purpose,
    expires_at), or None when it is free."""
    doc = _collection().find_one({"_id": str(dataset._doc.id)})
    if doc is None or doc["expires_at"] < _now():
        return None
    return doc


@contextlib.contextmanager
def dataset_lock(dataset, purpose, timeout=None, lease=None):
    """Holds the write lock of ``dataset`` for the ``with`` block.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset` (or any
            collection; its dataset is locked)
        purpose: what the holder does, shown to a writer that waits
        timeout (None): seconds to wait for a busy lock; default
            :data:`DEFAULT_TIMEOUT`
        lease (None): seconds the lock survives its holder; default
            :data:`DEFAULT_LEASE`

    Raises:
        HardnessError: the lock stayed busy for ``timeout`` seconds
    """
    dataset = getattr(dataset, "_dataset", dataset)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    lease = DEFAULT_LEASE if lease is None else lease
    key = str(dataset._doc.id)
    depth = getattr(_held, "depth", {})
    _held.depth = depth
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return

    token = "%s #%s" % (describe_holder(), uuid.uuid4().hex[:8])
    _acquire(key, token, purpose, timeout, lease, dataset.name)
    depth[key] = 1
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(key, token, lease, stop), daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        depth.pop(key, None)
        stop.set()
        renewer.join()
        _collection().delete_one({"_id": key, "holder": token})


def _acquire(key, token, purpose, timeout, lease, name):
    collection = _collection()
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        now = _now()
        try:
            collection.find_one_and_update(
                {"_id": key, "expires_at": {"$lt": now}},
                {
                    "$set": {
                        "holder": token,
                        "purpose": purpose,
                        "since": now,
                        "expires_at": now + datetime.timedelta(seconds=lease),
                    }
                },
                upsert=True,
            )
            return
        except DuplicateKeyError:
            pass
        if time.monotonic() >= deadline:
            doc = collection.find_one({"_id": key}) or {}
            raise HardnessError(
                "Dataset '%s' is being written by %s (%s, since %s UTC); "
                "waited %.0f s. Try again when it has finished, or, if that "
                "process is gone, wait for its lock to expire (%.0f s)"
                % (
                    name,
                    doc.get("holder", "another process"),
                    doc.get("purpose", "?"),
                    doc.get("since", "?"),
                    timeout,
                    lease,
                )
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _renew(key, token, lease, stop):
    collection = _collection()
    while not stop.wait(lease / 3.0):
        result = collection.update_one(
            {"_id": key, "holder": token},
            {
                "$set": {
                    "expires_at": _now() + datetime.timedelta(seconds=lease)
                }
            },
        )
        if not result.matched_count:
            logger.warning("Lost the write lock of dataset %s", key)
            return


class HeldInterrupts(object):
    """What :func:`hold_interrupts` yields: :meth:`check` raises the
    held Ctrl-C, if one came, at a point where no write is in flight."""

    def __init__(self):
        self.received = False

    def check(self):
        if self.received:
            self.received = False
            raise KeyboardInterrupt


@contextlib.contextmanager
def hold_interrupts():
    """Holds back Ctrl-C (SIGINT) during a block of database writes; the
    block calls ``check()`` between its batches, where the interrupt is
    raised, and one still held is raised when the block ends.

    Why: an interrupt raised inside a pymongo call abandons the request,
    but the server still carries it out, so a cleanup that runs at once can
    finish *before* the abandoned batch of writes lands (values left in
    fields the cleanup had removed); and an interrupt inside pymongo's
    connection handling can leave it stuck. In a thread other than the main
    one (where signals are not delivered) this does nothing.
    """
    held = HeldInterrupts()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def _hold(signum, frame):
        held.received = True

    previous = signal.signal(signal.SIGINT, _hold)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)
    held.check()
