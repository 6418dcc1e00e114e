"""
Re-ranking a review queue as the reviewer works.

A hardness run ranks the samples to review once. Every verdict a reviewer
gives ("wrong, it is X" or "right") is new evidence about the labels around
that sample: a corrected label changes the vote of every sample that has it
among its nearest neighbours. :class:`Reranker` keeps that vote up to date
and re-scores the samples still to review after each batch of verdicts:

1. a k-nearest-neighbour graph of the samples (:func:`knn_graph`, cosine
   similarity, ``(N, k)`` indices, from
   :mod:`fiftyone_hardness.methods.neighbors`) and its reverse lists
   (:func:`reverse_neighbours`: who has sample ``j`` as a neighbour), built
   once per run;
2. each sample's *disagreement*: the weighted share of its neighbours whose
   label differs from its own (:func:`knn_disagreement`); a reviewed label
   counts :data:`TRUST_WEIGHT` times as much as an unreviewed one (once by
   default);
3. after a batch of verdicts, only the votes of the changed samples and of
   their reverse neighbours are recomputed (``O(batch x k)`` rows instead of
   ``N``), and the remaining queue is ordered by

   ``priority = percentile(run score) + gain x (disagreement - initial
   disagreement)``

   so that, before any verdict, the queue is exactly the run's hardest-first
   order, and afterwards a sample moves by how much the corrected labels
   around it changed the evidence against its own label.

:func:`simulate_review` replays a reviewer with the true labels (a demo
dataset with injected noise) and counts the label errors found per review,
with re-ranking and with the fixed ranking.

Arrays only: the FiftyOne side (which samples, which labels, the cache per
run) is :mod:`fiftyone_hardness.dataset_io.review_queue`. See
``docs/app.md`` (review in the panel) for the measured gain and speed.

Memory, for N samples and k neighbours: the graph (``8 N k`` bytes) and
its reverse lists (``8 N k + 8 N``; ``3 x 8 N k`` while sorted), about ten
per-sample arrays of :class:`Reranker` (``~70 N``) and a full vote over
all rows (``~25 N k``, transient); an update touches O(batch x k) rows.
The graph is built once, with the neighbour index's own peak
(:mod:`~fiftyone_hardness.methods.neighbors`). No N x N array: about
0.5 GB at N = 1M, k = 10 (plus the index's 1.3 GB at D = 512).
"""

import logging

import numpy as np

from fiftyone_hardness.methods.base import HardnessError, no_progress
from fiftyone_hardness.methods.validation import check_features

logger = logging.getLogger(__name__)

#: neighbours per sample in the graph
DEFAULT_K = 10

#: how many unreviewed votes a reviewed label is worth. 1: a reviewed label
#: counts as any other, only its value changes; more weight also moves the
#: samples around a *confirmed* label, which on the digits demo promoted
#: clean samples near class borders and found fewer errors (see
#: ``docs/app.md``)
TRUST_WEIGHT = 1.0

#: how far a change of disagreement moves a sample in the queue, in units
#: of the run score's percentile: one of 10 neighbours relabelled (0.1)
#: moves it by 2.5 percentile points. Larger gains let one relabelled
#: neighbour outweigh the run's own evidence (measured in ``docs/app.md``)
DEFAULT_GAIN = 0.25

#: verdicts between two re-rankings
DEFAULT_BATCH = 10


def knn_graph(X, k=DEFAULT_K, method="auto", device=None, progress=None):
    """Returns the ``k`` nearest neighbours of every row of ``X`` by cosine
    similarity, the row itself excluded, from the package's one neighbour
    index (:func:`fiftyone_hardness.methods.neighbors.nearest_neighbors`):
    exact up to 20k rows on a CPU (and on a GPU), approximate (an inverted
    file with exact re-ranking) above.

    Args:
        X: an (N, D) feature array
        k (10): neighbours per row; capped at ``N - 1``
        method ("auto"): ``"exact"``, ``"ivf"`` or ``"auto"`` (see
            :func:`~fiftyone_hardness.methods.neighbors.nearest_neighbors`)
        device (None): a torch device; ``cuda`` when available
        progress (None): a callable ``(fraction, message)``

    Returns:
        an (N, k) int64 array, nearest first

    Raises:
        HardnessError: fewer than 2 rows, or non-finite features
    """
    from fiftyone_hardness.methods.neighbors import nearest_neighbors

    X = check_features(X, what="the re-ranking features")
    n = len(X)
    if n < 2:
        raise HardnessError(
            "A neighbour graph needs at least 2 samples; got %d" % n
        )
    k = int(min(k, n - 1))
    if k < 1:
        raise HardnessError("The neighbour graph needs k >= 1; got %d" % k)
    found = nearest_neighbors(
        X,
        k,
        metric="cosine",
        method=method,
        device=device,
        progress=progress or no_progress,
    )
    return np.asarray(found.indices, dtype=np.int64)


def reverse_neighbours(neighbours, num_rows=None):
    """Returns the reverse lists of a neighbour graph in CSR form:
    ``indices[indptr[j]:indptr[j + 1]]`` are the rows that have ``j`` among
    their neighbours.

    Args:
        neighbours: an (N, k) int array (see :func:`knn_graph`)
        num_rows (None): N; ``len(neighbours)`` by default

    Returns:
        ``(indptr, indices)``, int64 arrays of lengths ``N + 1`` and
        ``N x k``
    """
    neighbours = np.asarray(neighbours, dtype=np.int64)
    n = len(neighbours) if num_rows is None else int(num_rows)
    k = neighbours.shape[1]
    targets = neighbours.ravel()
    sources = np.repeat(np.arange(len(neighbours), dtype=np.int64), k)
    order = np.argsort(targets, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(targets, minlength=n), out=indptr[1:])
    return indptr, sources[order]


def neighbour_votes(neighbours, labels, weights, rows=None):
    """Returns ``(own, total)`` for ``rows`` (all by default): the weight of
    the neighbours that share the row's label, and of all its
    neighbours."""
    if rows is None:
        nbrs = neighbours
        own_labels = labels
    else:
        nbrs = neighbours[rows]
        own_labels = labels[rows]
    w = weights[nbrs]
    same = labels[nbrs] == own_labels[:, None]
    return (w * same).sum(axis=1), w.sum(axis=1)


def knn_disagreement(neighbours, labels, weights=None):
    """Returns each sample's disagreement with its neighbours, from
    scratch: ``1 - (weight of neighbours with its label) / (weight of all
    its neighbours)``, in [0, 1] (1 = no neighbour shares its label).

    Args:
        neighbours: an (N, k) int array (see :func:`knn_graph`)
        labels: (N,) int class indices
        weights (None): (N,) vote weight of each sample's label; 1 by
            default
    """
    labels = np.asarray(labels)
    if weights is None:
        weights = np.ones(len(labels))
    own, total = neighbour_votes(neighbours, labels, weights)
    return 1.0 - own / np.maximum(total, 1e-12)


def percentile_ranks(scores):
    """Returns the rank of each score as a fraction in [0, 1] (1 = the
    highest), ties sharing their mean rank; NaN scores rank lowest."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    filled = np.where(np.isfinite(scores), scores, -np.inf)
    n = len(filled)
    if n <= 1:
        return np.ones(n)
    return (rankdata(filled) - 1.0) / (n - 1.0)


class Reranker(object):
    """The k-NN vote of a review queue, kept up to date as verdicts arrive.

    Args:
        neighbours: an (N, k) int array over every scored sample (see
            :func:`knn_graph`)
        labels: (N,) int class indices, the labels as they are now
        base_scores: (N,) the run's score, higher = harder
        queue: the rows to review (e.g. the flagged samples), in any order
        gain (0.25): see :data:`DEFAULT_GAIN`
        trust_weight (1.0): see :data:`TRUST_WEIGHT`
        reverse (None): ``reverse_neighbours(neighbours)``, if already
            computed

    Raises:
        HardnessError: arrays of mismatched lengths, or queue rows out of
            range
    """

    def __init__(
        self,
        neighbours,
        labels,
        base_scores,
        queue,
        gain=DEFAULT_GAIN,
        trust_weight=TRUST_WEIGHT,
        reverse=None,
    ):
        self.neighbours = np.asarray(neighbours, dtype=np.int64)
        n = len(self.neighbours)
        self.labels = np.array(labels, dtype=np.int64)
        base_scores = np.asarray(base_scores, dtype=np.float64)
        queue = np.unique(np.asarray(queue, dtype=np.int64))
        _check_lengths(n, self.labels, base_scores, queue)
        self.gain = float(gain)
        self.trust_weight = float(trust_weight)
        self.reverse = (
            reverse
            if reverse is not None
            else reverse_neighbours(self.neighbours, n)
        )
        self.weights = np.ones(n)
        self.base = percentile_ranks(base_scores)
        self._tiebreak = base_scores
        self._own, self._total = neighbour_votes(
            self.neighbours, self.labels, self.weights
        )
        self.initial = self.disagreement()
        self.in_queue = np.zeros(n, dtype=bool)
        self.in_queue[queue] = True
        self.reviewed = np.zeros(n, dtype=bool)
        self.priority = self.base.copy()

    @property
    def num_samples(self):
        return len(self.neighbours)

    def disagreement(self, rows=None):
        """The current disagreement of ``rows`` (all by default)."""
        if rows is None:
            return 1.0 - self._own / np.maximum(self._total, 1e-12)
        return 1.0 - self._own[rows] / np.maximum(self._total[rows], 1e-12)

    def record(self, rows, labels=None):
        """Records verdicts: ``rows`` were reviewed, their true labels being
        ``labels`` (the corrected class for "wrong", the current label for
        "right"; None: every label is right). Only the votes that these
        changes touch are recomputed; the queue is re-ordered by
        :meth:`rescore`.

        Returns:
            the rows whose vote was recomputed
        """
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return rows
        if labels is not None:
            self.labels[rows] = np.atleast_1d(np.asarray(labels, np.int64))
        self.weights[rows] = self.trust_weight
        self.reviewed[rows] = True
        return self._update_votes(rows)

    def forget(self, rows, labels):
        """Undoes :meth:`record` for ``rows`` (their review was cleared):
        they take ``labels`` again and return to the queue.

        Returns:
            the rows whose vote was recomputed
        """
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return rows
        self.labels[rows] = np.atleast_1d(np.asarray(labels, np.int64))
        self.weights[rows] = 1.0
        self.reviewed[rows] = False
        return self._update_votes(rows)

    def _update_votes(self, rows):
        """Recomputes the votes of ``rows`` and of every row that has one
        of them as a neighbour (its reverse neighbours)."""
        starts, stops = self.reverse[0][rows], self.reverse[0][rows + 1]
        affected = np.concatenate(
            [rows] + [self.reverse[1][a:b] for a, b in zip(starts, stops)]
        )
        affected = np.unique(affected)
        self._own[affected], self._total[affected] = neighbour_votes(
            self.neighbours, self.labels, self.weights, affected
        )
        return affected

    def remaining(self):
        """The queue rows not reviewed yet."""
        return np.flatnonzero(self.in_queue & ~self.reviewed)

    def rescore(self):
        """Recomputes the priority of the remaining queue from the current
        votes. Returns the remaining rows, highest priority first."""
        rows = self.remaining()
        self.priority[rows] = self.base[rows] + self.gain * (
            self.disagreement(rows) - self.initial[rows]
        )
        return self.order(rows)

    def order(self, rows=None):
        """Returns ``rows`` (the remaining queue by default) sorted by
        priority, highest first; ties by the run score."""
        rows = self.remaining() if rows is None else np.asarray(rows)
        keys = np.lexsort((-self._tiebreak[rows], -self.priority[rows]))
        return rows[keys]

    def rescore_from_scratch(self):
        """The same as :meth:`rescore`, recomputing every vote: the
        reference that the incremental update is measured against."""
        self._own, self._total = neighbour_votes(
            self.neighbours, self.labels, self.weights
        )
        return self.rescore()


def _check_lengths(n, labels, base_scores, queue):
    if len(labels) != n or len(base_scores) != n:
        raise HardnessError(
            "The re-ranker needs one label and one score per graph row: "
            "got %d rows, %d labels, %d scores"
            % (n, len(labels), len(base_scores))
        )
    if len(queue) and (queue.min() < 0 or queue.max() >= n):
        raise HardnessError(
            "Queue rows must index the %d graph rows; got %d..%d"
            % (n, queue.min(), queue.max())
        )


def simulate_review(
    neighbours,
    labels,
    truth,
    base_scores,
    queue,
    budget=100,
    batch=DEFAULT_BATCH,
    rerank=True,
    gain=DEFAULT_GAIN,
    trust_weight=TRUST_WEIGHT,
):
    """Replays a reviewer who knows the true labels: reviews ``budget``
    samples of the queue, ``batch`` at a time, always the first ones of the
    current order; with ``rerank`` the queue is re-scored after each batch,
    otherwise it stays in the run's order.

    Args:
        neighbours: an (N, k) int array (see :func:`knn_graph`)
        labels: (N,) the given (noisy) class indices
        truth: (N,) the true class indices
        base_scores: (N,) the run's score, higher = harder
        queue: the rows to review (e.g. the flagged samples)
        budget (100): reviews in all
        batch (10): reviews between two re-rankings
        rerank (True): re-score the queue after each batch
        gain, trust_weight: see :class:`Reranker`

    Returns:
        a dict with ``reviewed`` (the rows in review order), ``found`` (how
        many of them were label errors) and ``found_per_batch`` (cumulative)
    """
    labels = np.asarray(labels, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    reranker = Reranker(
        neighbours,
        labels,
        base_scores,
        queue,
        gain=gain,
        trust_weight=trust_weight,
    )
    order = reranker.order()
    reviewed, cumulative = [], []
    while len(reviewed) < budget and len(order):
        take = order[: min(batch, budget - len(reviewed))]
        reranker.record(take, truth[take])
        reviewed.extend(int(i) for i in take)
        cumulative.append(int(np.sum(labels[reviewed] != truth[reviewed])))
        order = reranker.rescore() if rerank else _drop(order, take)
    reviewed = np.asarray(reviewed, dtype=np.int64)
    return {
        "reviewed": reviewed,
        "found": int(np.sum(labels[reviewed] != truth[reviewed])),
        "found_per_batch": cumulative,
    }


def _drop(order, taken):
    return order[~np.isin(order, taken)]
