"""
The review queue of the Hardness panel, and whether a run is stale.

:class:`ReviewQueue` holds what the panel needs to walk a reviewer through a
run's flagged samples, hardest first: the scored samples' ids, labels and
scores, the run's predicted class of each, the verdicts recorded so far
(read from the review field of
:mod:`fiftyone_hardness.dataset_io.review`) and, when the run's samples have
embeddings, a :class:`fiftyone_hardness.methods.reranking.Reranker` that
re-scores the remaining queue with the corrected labels after each batch of
verdicts.

Queues are cached in the process (the App server) per dataset, run, run
timestamp and score (:func:`get_queue`): the neighbour graph takes minutes
to build for 100k samples on a CPU and is needed at every verdict, while
everything it is built from is in the database, so a new process rebuilds it
instead of storing a second copy that could go stale. The graph is built in
a background thread when the reviewer gives a first verdict; the queue
serves the run's order until it is ready, and the verdicts given meanwhile
are applied when it is. Nothing here writes to the dataset: verdicts are
written by :mod:`~fiftyone_hardness.dataset_io.review`.

A run is *stale* when the labels it scored have changed since it was
computed: :func:`~fiftyone_hardness.dataset_io.run_views.labels_digest` of
the scored ``(id, label)`` pairs is stored with the run (``labels_digest`` in its results) and compared with
the labels now (:func:`run_staleness`).

Memory per cached queue (at most :data:`CACHE_SIZE`), for N scored samples
and k neighbours: the ids (a string array and a dict id -> row), labels,
scores and predicted class names, about ``0.4 KB x N``, and the
:class:`~fiftyone_hardness.methods.reranking.Reranker`, about
``16 N k + 70 N`` bytes: 0.6 GB at N = 1M, k = 10, up to 2.4 GB for four
queues. Building the graph adds the (N, D) features and the neighbour
index's peak once (2 + 1.3 GB at D = 512), freed when it is built.
"""

import collections
import logging
import threading

import numpy as np
from bson import ObjectId

from fiftyone_hardness.dataset_io import review as fhreview
from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.dataset_io.data import load_labeled_data
from fiftyone_hardness.dataset_io.embeddings import EMBEDDINGS_INFO_KEY
from fiftyone_hardness.methods import reranking
from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

#: queues kept per process
CACHE_SIZE = 4

#: rows of the queue table the panel shows
QUEUE_ROWS = 10

READY = "ready"
WAITING = "waiting"
BUILDING = "building"
NO_FEATURES = "no_features"
FAILED = "failed"


def scored_labels(samples, results, score=None):
    """Returns ``(ids, labels)`` of the samples that the run wrote a score
    to (a value, even None), with their label now (None when removed)."""
    score = run_views.as_score(results, score)
    dataset = samples._dataset
    label_path = results.label_field + ".label"
    cursor = dataset._sample_collection.find(
        {score.score_field: {"$exists": True}},
        {"_id": True, label_path: True},
    )
    ids, labels = [], []
    for doc in cursor:
        ids.append(str(doc["_id"]))
        label = doc.get(results.label_field) or {}
        labels.append(label.get("label") if isinstance(label, dict) else None)
    return ids, labels


def run_staleness(samples, results):
    """Tells whether the labels a run scored have changed since the run.

    Returns:
        ``(stale, message)``: ``stale`` is True/False, or None when the run
        stored no fingerprint of its labels (runs made before this check
        existed); ``message`` says it in words
    """
    stored = getattr(results, "labels_digest", None)
    if not stored:
        return None, (
            "This run did not record its labels, so label changes since "
            "it cannot be detected"
        )
    if not results.scores():
        return None, "This run wrote no score"
    ids, labels = scored_labels(samples, results)
    if run_views.labels_digest(ids, labels) == stored:
        return False, "The labels are the ones this run scored"
    return True, (
        "Labels of '%s' changed since this run scored them (e.g. "
        "corrections applied): its scores and flags describe the old "
        "labels. Run it again to score the labels as they are now"
        % results.label_field
    )


def features_field(samples, results):
    """Returns the vector field to build the neighbour graph from: the
    run's ``embeddings_field`` when the dataset has it, else a field made
    by ``compute_embeddings``, else None."""
    dataset = samples._dataset
    field = getattr(results.config, "embeddings_field", None)
    if field and dataset.has_sample_field(field):
        return field
    for name, f in dataset.get_field_schema().items():
        if EMBEDDINGS_INFO_KEY in (getattr(f, "info", None) or {}):
            return name
    return None


def _status_text(verdict, label):
    if verdict == fhreview.WRONG:
        return "wrong -> %s" % label
    return verdict


class ReviewQueue(object):
    """The flagged samples of one score of a run, in review order.

    Build it with :meth:`build` (or get the cached one with
    :func:`get_queue`). Methods are safe to call from several threads.

    Attributes:
        run_key, label_field, score_field, pred_field: where it reads from
        ids: (N,) the scored samples (the neighbour graph's rows)
        classes: the class names; ``labels`` index them
        labels: (N,) the labels as given when the queue was built
        scores: (N,) the run's score
        queue: the rows to review (the flagged samples)
        status: :data:`READY` (re-ranking), :data:`WAITING` (the graph is
            built at the first verdict), :data:`BUILDING` (it is being
            built), :data:`NO_FEATURES` or :data:`FAILED` (the run's order
            only)
        status_message: the status in words
        batch_size: verdicts between two re-rankings
    """

    def __init__(
        self,
        run_key,
        label_field,
        score_field,
        pred_field,
        ids,
        classes,
        labels,
        scores,
        preds,
        queue,
        batch_size=reranking.DEFAULT_BATCH,
    ):
        self.run_key = run_key
        self.label_field = label_field
        self.score_field = score_field
        self.pred_field = pred_field
        self.ids = np.asarray(ids)
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.preds = list(preds) if preds is not None else None
        self.queue = np.asarray(queue, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.row_of = {str(i): r for r, i in enumerate(self.ids)}
        self.verdicts = {}
        self.pending = []
        self.reranker = None
        self._graph_source = None
        self.status = BUILDING
        self.status_message = "Preparing the queue"
        self.num_reranks = 0
        self._order = self._base_order()
        self._lock = threading.RLock()

    #
    # Building
    #

    @classmethod
    def build(cls, samples, results, score=None, background=None):
        """Reads a run's scored samples and builds its queue.

        Args:
            samples: the collection the run is on
            results: the run's results
            score (None): a ``RunScore`` or a score name; the default score
            background (None): True: build the neighbour graph in a
                background thread now; False: build it now, before
                returning; None: build it in a background thread when the
                first verdict is recorded (the graph is needed only at the
                first re-ranking, :attr:`batch_size` verdicts later, and
                building it, torch's import included, takes seconds that
                would slow the App's other requests down)

        Raises:
            HardnessError: the run has no score, or no scored sample
        """
        score = run_views.as_score(results, score)
        scored = samples._dataset.exists(score.score_field)
        data = load_labeled_data(scored, results.label_field)
        scores = np.array(
            [
                np.nan if v is None else float(v)
                for v in data.values(score.score_field)
            ]
        )
        pred_field = score.companion("pred")
        preds = None
        if pred_field is not None:
            preds = [
                None if p is None else str(p) for p in data.values(pred_field)
            ]
        flagged = set(
            run_views.flagged_view(samples._dataset, results, score).values(
                "id"
            )
        )
        rows = [r for r, i in enumerate(data.ids) if str(i) in flagged]
        queue = cls(
            results.key,
            results.label_field,
            score.score_field,
            pred_field,
            data.ids,
            data.classes,
            data.labels,
            scores,
            preds,
            rows,
        )
        field = features_field(samples, results)
        if field is None:
            queue._set_status(
                NO_FEATURES,
                "No embeddings on these samples: the queue keeps the "
                "run's order (compute embeddings to re-rank it as you "
                "review)",
            )
        elif background is None:
            queue._graph_source = (data, field)
            queue._set_status(
                WAITING,
                "The queue is in the run's order; your first verdict "
                "starts building a neighbour graph of the %d scored "
                "samples (%s), and the queue is then re-ranked with the "
                "corrected labels every %d verdicts"
                % (len(data.ids), field, queue.batch_size),
            )
        elif background:
            queue._start_graph(data, field)
        else:
            queue._build_graph(data, field)
        queue.sync(samples)
        return queue

    def _start_graph(self, data, field):
        """Builds the neighbour graph in a background thread."""
        self._graph_source = None
        self._set_status(
            BUILDING,
            "Building the neighbour graph of %d samples (%s) to re-rank "
            "the queue; it keeps the run's order until then"
            % (len(data.ids), field),
        )
        thread = threading.Thread(
            target=self._build_graph,
            args=(data, field),
            name="hardness-review-graph",
            daemon=True,
        )
        thread.start()

    def _build_graph(self, data, field):
        try:
            X = data.embeddings(field)
            neighbours = reranking.knn_graph(X)
        except Exception as e:  # the queue still works without it
            logger.warning(
                "Could not build the re-ranking graph of run '%s': %s",
                self.run_key,
                e,
            )
            self._set_status(
                FAILED,
                "Re-ranking is off (%s); the queue keeps the run's order" % e,
            )
            return
        with self._lock:
            self.reranker = reranking.Reranker(
                neighbours, self.labels, self.scores, self.queue
            )
            self.features_field = field
            rows = [self.row_of[i] for i in self.verdicts]
            if rows:
                self.reranker.record(rows, self._true_labels(rows))
            self.pending = []
            self._order = list(self.reranker.rescore())
            self._set_status(
                READY,
                "Re-ranked with the corrected labels every %d verdicts "
                "(%d nearest neighbours in '%s')"
                % (self.batch_size, neighbours.shape[1], field),
            )

    def _set_status(self, status, message):
        self.status = status
        self.status_message = message

    def _base_order(self):
        """The queue rows by the run's score, hardest first."""
        keys = np.lexsort(
            (self.queue, -np.nan_to_num(self.scores[self.queue]))
        )
        return list(self.queue[keys])

    #
    # Verdicts
    #

    def _class_index(self, label):
        label = str(label)
        if label not in self.classes:
            self.classes.append(label)  # a class no scored sample had
        return self.classes.index(label)

    def _true_labels(self, rows):
        out = []
        for r in rows:
            verdict, label = self.verdicts[str(self.ids[r])]
            if verdict == fhreview.WRONG:
                out.append(self._class_index(label))
            else:
                out.append(int(self.labels[r]))
        return np.asarray(out, dtype=np.int64)

    def record(self, sample_id, verdict, label=None):
        """Records a verdict (already written with
        :mod:`~fiftyone_hardness.dataset_io.review`); re-ranks the queue
        once :attr:`batch_size` verdicts are pending.

        Args:
            sample_id: the sample
            verdict: ``"wrong"`` or ``"right"``
            label (None): the correct class, for ``"wrong"``

        Returns:
            True when the queue was re-ranked
        """
        sample_id = str(sample_id)
        with self._lock:
            if sample_id not in self.row_of:
                return False
            self.verdicts[sample_id] = _verdict(verdict, label)
            self.pending.append(self.row_of[sample_id])
            if self._graph_source is not None:
                self._start_graph(*self._graph_source)
            if len(self.pending) >= self.batch_size:
                self.rerank()
                return True
            return False

    def rerank(self):
        """Re-scores the remaining queue with the verdicts pending (the
        incremental update of :class:`~fiftyone_hardness.methods.
        reranking.Reranker`). Without a graph, the run's order is kept."""
        with self._lock:
            pending = list(dict.fromkeys(self.pending))
            self.pending = []
            if self.reranker is None:
                return
            self.reranker.record(pending, self._true_labels(pending))
            self._order = list(self.reranker.rescore())
            self.num_reranks += 1

    def sync(self, samples):
        """Reads the verdicts recorded in the database (e.g. by the
        ``review_label`` operator, or another reviewer) and records those
        the queue does not know yet. Returns how many were new."""
        field = fhreview.review_field(self.label_field)
        dataset = samples._dataset
        if not dataset.has_sample_field(field):
            return 0
        # one query over the reviewed samples only (usually few), instead
        # of a view selecting every scored sample
        cursor = dataset._sample_collection.find(
            {field + ".verdict": {"$in": list(fhreview.VERDICTS)}},
            {"_id": True, field + ".verdict": True, field + ".label": True},
        )
        ids, verdicts, labels = [], [], []
        for doc in cursor:
            sample_id = str(doc["_id"])
            if sample_id not in self.row_of:
                continue
            review = doc.get(field) or {}
            ids.append(sample_id)
            verdicts.append(review.get("verdict"))
            labels.append(review.get("label"))
        new = 0
        with self._lock:
            for i, verdict, label in zip(ids, verdicts, labels):
                if self.verdicts.get(i) == _verdict(verdict, label):
                    continue
                self.record(i, verdict, label)
                new += 1
            removed = [i for i in self.verdicts if i not in set(ids)]
            if removed:
                self._forget(removed)
        return new

    def _forget(self, ids):
        """Returns samples whose review was cleared to the queue."""
        for i in ids:
            del self.verdicts[i]
        rows = [self.row_of[i] for i in ids]
        self.pending = [r for r in self.pending if r not in set(rows)]
        if self.reranker is None:
            self._order = self._base_order()
            return
        self.reranker.forget(rows, self.labels[rows])
        self._order = list(self.reranker.rescore())

    #
    # Reading
    #

    def remaining(self, skipped=()):
        """The ids still to review, in the current order; ``skipped`` ids
        go last, in the order they were skipped."""
        with self._lock:
            ids = [str(self.ids[r]) for r in self._order]
        ids = [i for i in ids if i not in self.verdicts]
        skipped = [i for i in skipped if i in set(ids)]
        skip = set(skipped)
        return [i for i in ids if i not in skip] + skipped

    def item(self, sample_id):
        """What the panel shows of a sample: ``id``, ``label``,
        ``predicted``, ``score``, ``rank`` (1 = hardest) and, with a graph,
        ``disagreement`` (share of its neighbours with another label)."""
        r = self.row_of[str(sample_id)]
        label = self.classes[self.labels[r]]
        item = {
            "id": str(sample_id),
            "label": label,
            "predicted": self.preds[r] if self.preds is not None else None,
            "score": _rounded(self.scores[r]),
            "status": (
                _status_text(*self.verdicts[str(sample_id)])
                if str(sample_id) in self.verdicts
                else None
            ),
        }
        if self.reranker is not None:
            item["disagreement"] = _rounded(
                float(self.reranker.disagreement([r])[0])
            )
        return item

    def items(self, samples, ids):
        """:meth:`item` of each of ``ids``, with the label as it is now in
        the dataset (it may have been corrected since the queue was built:
        then the run is stale too)."""
        items = [self.item(i) for i in ids]
        if not items:
            return items
        field = self.label_field
        cursor = samples._dataset._sample_collection.find(
            {"_id": {"$in": [ObjectId(i) for i in ids]}},
            {"_id": True, field + ".label": True},
        )
        now = {}
        for doc in cursor:
            label = doc.get(field)
            now[str(doc["_id"])] = (
                label.get("label") if isinstance(label, dict) else None
            )
        for item in items:
            if now.get(item["id"]) is not None:
                item["label"] = now[item["id"]]
        return items

    def progress(self):
        """Returns ``{"reviewed", "total", "wrong", "right", "pending"}``
        for the queue (its flagged samples)."""
        with self._lock:
            queued = {str(self.ids[r]) for r in self.queue}
            done = [v for i, (v, _) in self.verdicts.items() if i in queued]
            return {
                "reviewed": len(done),
                "total": len(queued),
                "wrong": sum(v == fhreview.WRONG for v in done),
                "right": sum(v == fhreview.RIGHT for v in done),
                "pending": len(self.pending),
            }


def _verdict(verdict, label):
    """A verdict as the queue keeps it: the label only for "wrong"."""
    if verdict == fhreview.WRONG:
        return verdict, str(label)
    return verdict, None


def _rounded(value, digits=4):
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


_CACHE = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


def queue_key(samples, results, score=None):
    """The cache key of a run's queue: dataset, run key, run timestamp
    (a run written again is another run) and score field."""
    score = run_views.as_score(results, score)
    info = samples._dataset.get_run_info(results.key)
    return (
        str(samples._dataset._doc.id),
        results.key,
        str(info.timestamp),
        score.score_field,
    )


def get_queue(samples, results, score=None, background=None):
    """Returns the cached :class:`ReviewQueue` of a run's score, building it
    on first use; the verdicts recorded in the database since are read in
    (:meth:`ReviewQueue.sync`).

    Raises:
        HardnessError: the run has no score, or no scored sample
    """
    key = queue_key(samples, results, score)
    with _CACHE_LOCK:
        queue = _CACHE.get(key)
        if queue is not None:
            _CACHE.move_to_end(key)
    if queue is None:
        queue = ReviewQueue.build(
            samples, results, score, background=background
        )
        with _CACHE_LOCK:
            _CACHE[key] = queue
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    else:
        queue.sync(samples)
    return queue


def clear_cache():
    """Forgets every cached queue."""
    with _CACHE_LOCK:
        _CACHE.clear()


def record_verdict(
    samples, queue, sample_id, verdict, correct_label=None, reviewer=None
):
    """Writes a verdict with :mod:`~fiftyone_hardness.dataset_io.review`
    and records it in ``queue``.

    Args:
        samples: the collection the run is on
        queue: the :class:`ReviewQueue`
        sample_id: the sample
        verdict: ``"wrong"`` or ``"right"``
        correct_label (None): the correct class, for ``"wrong"``
        reviewer (None): who reviewed; the login name by default

    Returns:
        True when the queue was re-ranked

    Raises:
        HardnessError: as :func:`~fiftyone_hardness.dataset_io.review.
            mark_labels` (e.g. the "correct" class is the current label)
    """
    if verdict == fhreview.WRONG:
        fhreview.mark_label_wrong(
            samples,
            sample_id,
            correct_label,
            label_field=queue.label_field,
            reviewer=reviewer,
        )
    elif verdict == fhreview.RIGHT:
        fhreview.mark_label_right(
            samples,
            sample_id,
            label_field=queue.label_field,
            reviewer=reviewer,
        )
    else:
        raise HardnessError(
            "Unknown verdict %r; use 'wrong' or 'right'" % (verdict,)
        )
    return queue.record(
        sample_id,
        verdict,
        str(correct_label) if verdict == fhreview.WRONG else None,
    )
