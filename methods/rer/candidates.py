"""
RER's error phase below ``O(N x K)`` for many classes: each sample's
reconstruction error is computed under a few classes that can matter, not
under all K (``nearest_classes``; ``docs/methods.md`` section 1).

The classes ("slots") each sample ``i`` is evaluated under:

- slot 0: its label ``y_i`` (the numerator of its RER);
- slot 1: its random wrong label ``y'_i`` (the random-label statistics);
- the next ``m`` slots: the ``m`` other classes whose centroids (the mean of
  their fitted rows, in the features the autoencoders see) are nearest to
  ``x_i``: the classes whose autoencoders can reconstruct it best, so the
  smallest and second-smallest errors over classes are among them;
- the last ``r`` slots: classes drawn uniformly (with replacement) from
  the remaining "far" ones, whose mean error estimates the far classes'
  sum (the ``total`` of the chi statistics).

**How many nearest classes (m).** Centroids are only a proxy for the
autoencoder that reconstructs a sample best, and how good a proxy depends
on the data (on our benchmark data the best other class is among the 10
nearest centroids for 92% of samples with K = 50, for 43% with K = 100 and
heavily overlapping classes). So m is measured on each run: all
autoencoders are trained first, then :class:`ClassAudit` evaluates
:data:`AUDIT_ROWS` random samples (1000) under every class and finds,
for each, the rank of its best other class among the other classes
ordered by centroid distance. With ``candidate_coverage`` c, m is the
``ceil((A + 1) c)``-th smallest of those A ranks, plus one (at least
``nearest_classes``): since the audited rows are a random sample of the
rows, a row's best other class is then among its m nearest with
probability at least c (the conformal quantile; with A = 1000 and
c = 0.999, the largest rank seen plus one). When that m leaves fewer than
``r + 2`` classes out, every class is evaluated: the exact computation.
With ``candidate_coverage=None``, m is ``nearest_classes`` as given.

From the slots, :class:`CandidateStatistics` gives the same
:class:`~fiftyone_hardness.methods.rer.statistics.ErrorStatistics` as the
full computation: ``own`` and ``rand_own`` exactly; ``min1``, ``arg1``,
``min2`` exactly whenever the two best classes are among the evaluated
ones; ``total`` as an unbiased estimate. The run records, in
``results["candidate_audit"]``, the m used and how often the final
statistics' minimum over the other classes and predicted class equal the
exact ones on the audited rows (an in-sample check when m was chosen on
them; an honest estimate with ``candidate_coverage=None``).

Cost: ``N * (m + r + 2)`` autoencoder evaluations instead of ``N * K``,
plus ``N * K * D`` multiply-adds for the centroid distances (a 1/500 of one
evaluation per class at 512 dims and 256 hidden units), plus the audit's
``A * K`` evaluations (1% of the exact ones at 100k samples). Memory: the
``(N, m + r + 2)`` classes and errors (12 bytes each), one block of
``(chunk, K)`` centroid distances and the ``(K, A)`` audit errors; never
``N x K``. The trained models wait for m in memory up to
``memory_budget_mb`` (``K x 4 x (2 D H + 2 H C)`` bytes for hidden size H
and code size C: 108 MB at K = 100, D = 512), in an anonymous temporary
file beyond (``core.py``).

torch is imported inside the functions that need it.
"""

import logging
import math

import numpy as np

from fiftyone_hardness.methods.rer.statistics import ErrorStatistics

logger = logging.getLogger(__name__)


AUDIT_ROWS = 1000
"""The rows :class:`ClassAudit` evaluates under every class: enough for the
conformal rule at a coverage of 0.999 (it needs ``A >= c / (1 - c)``)."""


def use_candidates(nearest_classes, sampled_classes, num_present, num_rows):
    """Whether the candidate classes can evaluate fewer classes per sample
    than there are, and the audit fewer rows than there are (else the
    exact computation is as cheap and exact)."""
    if nearest_classes is None:
        return False
    if num_rows <= AUDIT_ROWS:
        return False
    return nearest_classes + sampled_classes + 2 < num_present


def class_centroids(Xs, fit_rows):
    """The (P, D) means of each present class's fitted rows of ``Xs``."""
    import torch

    device = Xs.device
    return torch.stack(
        [Xs[torch.as_tensor(rows, device=device)].mean(0) for rows in fit_rows]
    )


def _positions(present, device):
    """A lookup from class id to its position among the present classes."""
    import torch

    position = torch.full(
        (int(present.max()) + 1,), -1, dtype=torch.long, device=device
    )
    position[torch.as_tensor(present, device=device)] = torch.arange(
        len(present), device=device
    )
    return position


def candidate_classes(
    Xs,
    labels,
    rand_labels,
    centroids,
    present,
    nearest_classes,
    sampled_classes,
    seed=0,
    chunk_floats=1 << 24,
):
    """The (N, 2 + m + r) classes each sample is evaluated under (see the
    module notes), as an int64 tensor on ``Xs``'s device.

    Args:
        Xs: the (N, D) scaled features, a float32 tensor
        labels: (N,) the labels
        rand_labels: (N,) the random wrong labels
        centroids: the (P, D) :func:`class_centroids`
        present: the (P,) classes with samples
        nearest_classes: m
        sampled_classes: r
        seed (0): the seed of the sampled classes
        chunk_floats (2**24): the most floats of one block of distances
    """
    import torch

    device = Xs.device
    present_t = torch.as_tensor(present, device=device)
    labels_t = torch.as_tensor(labels, device=device)
    own = _positions(present, device)[labels_t]
    near = _nearest_centroids(
        Xs, centroids, own, nearest_classes, chunk_floats
    )
    far = _sampled_far(own, near, len(present), sampled_classes, seed)
    return torch.cat(
        [
            labels_t[:, None],
            torch.as_tensor(rand_labels, device=device)[:, None],
            present_t[near],
            present_t[far],
        ],
        dim=1,
    )


def _centroid_scores(X, centroids, own):
    """(B, P) ``2 x . c - |c|^2`` (larger = nearer centroid; the row's
    own norm does not change the order), the own class at -inf."""
    import torch

    norms = (centroids * centroids).sum(1)
    scores = torch.addmm(norms, X, centroids.T, beta=-1, alpha=2)
    scores[torch.arange(len(X), device=X.device), own] = -float("inf")
    return scores


def _nearest_centroids(Xs, centroids, own, m, chunk_floats):
    """The (N, m) positions of the m centroids nearest each row, its own
    class excluded."""
    import torch

    n = len(Xs)
    chunk = max(1, chunk_floats // len(centroids))
    out = torch.empty((n, m), dtype=torch.long, device=Xs.device)
    for s in range(0, n, chunk):
        scores = _centroid_scores(
            Xs[s : s + chunk], centroids, own[s : s + chunk]
        )
        out[s : s + chunk] = torch.topk(scores, m, dim=1).indices
    return out


def _sampled_far(own, near, num_present, r, seed):
    """(N, r) positions drawn uniformly from the classes that are neither
    the row's own nor among its nearest: the u-th such class is ``u`` plus
    the number of excluded positions at or below it, found by stepping
    over the sorted excluded positions."""
    import torch

    n = len(own)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 17)
    excluded = torch.sort(torch.cat([own[:, None], near], dim=1), dim=1).values
    num_far = num_present - excluded.shape[1]
    u = torch.randint(0, num_far, (n, r), generator=gen).to(own.device)
    for j in range(excluded.shape[1]):
        u += (u >= excluded[:, j : j + 1]).long()
    return u


def conformal_rank(ranks, coverage):
    """The ``ceil((A + 1) coverage)``-th smallest of the A ``ranks``: a new
    exchangeable rank is at most it with probability at least
    ``coverage``. None when A is too small for that coverage."""
    ranks = np.sort(np.asarray(ranks))
    k = int(math.ceil((len(ranks) + 1) * float(coverage) - 1e-9))
    if k > len(ranks):
        return None
    return int(ranks[max(k, 1) - 1])


class ClassAudit:
    """``AUDIT_ROWS`` random rows evaluated under every class: they choose
    how many nearest classes the others need (:meth:`nearest_needed`) and
    check the final statistics (:meth:`summary`).

    Args:
        labels: (N,) the labels
        present: the (P,) classes with samples
        seed (0): the seed of the audited rows
    """

    def __init__(self, labels, present, seed=0):
        rng = np.random.default_rng(int(seed) + 23)
        n = len(labels)
        self.rows = np.sort(rng.choice(n, min(n, AUDIT_ROWS), replace=False))
        self.labels = np.asarray(labels)[self.rows]
        self.present = np.asarray(present)
        self.errors = np.full(
            (len(self.present), len(self.rows)), np.nan, np.float32
        )

    def evaluate(self, model, class_ids, Xs, block_rows):
        """Fills the errors under ``class_ids`` (the classes of ``model``,
        in its order)."""
        import torch

        rows = torch.as_tensor(self.rows, device=Xs.device)
        positions = np.searchsorted(self.present, np.asarray(class_ids))
        self.errors[positions] = (
            model.errors(Xs[rows], block_rows).cpu().numpy()
        )

    def _exact(self):
        """(positions of the exact best other classes, exact predictions,
        exact minimum error over the other classes) of the audited rows."""
        if np.isnan(self.errors).any():
            raise RuntimeError("some audited rows were never evaluated")
        exact = self.errors.astype(np.float64)
        pred = self.present[np.argmin(exact, axis=0)]
        columns = np.arange(len(self.rows))
        exact[np.searchsorted(self.present, self.labels), columns] = np.inf
        return np.argmin(exact, axis=0), pred, exact.min(axis=0)

    def nearest_needed(self, Xs, centroids, coverage):
        """The m for ``coverage`` (module notes): the conformal rank of the
        audited rows' best other classes among their other classes by
        centroid distance, plus one; None when the audit is too small."""
        import torch

        best, _, _ = self._exact()
        rows = torch.as_tensor(self.rows, device=Xs.device)
        own = _positions(self.present, Xs.device)[
            torch.as_tensor(self.labels, device=Xs.device)
        ]
        scores = _centroid_scores(Xs[rows], centroids, own)
        target = scores[
            torch.arange(len(rows), device=Xs.device),
            torch.as_tensor(best, device=Xs.device),
        ]
        # classes strictly nearer than the best other one: 0 = the nearest
        ranks = (scores > target[:, None]).sum(1).cpu().numpy()
        rank = conformal_rank(ranks, coverage)
        return None if rank is None else rank + 1

    def summary(self, stats, nearest_classes, coverage):
        """The record of a run (module notes): the audited rows, the m
        used (None when every class was evaluated), the coverage asked
        for and the shares of audited rows whose final minimum over the
        other classes and predicted class equal the exact ones."""
        _, exact_pred, exact_other = self._exact()
        min1, min2 = stats.min1[self.rows], stats.min2[self.rows]
        pred = stats.arg1[self.rows]
        other = np.where(pred == self.labels, min2, min1)
        return dict(
            rows=int(len(self.rows)),
            nearest_classes=nearest_classes,
            coverage=coverage,
            min_other_equal=float(
                np.mean(np.isclose(other, exact_other, rtol=1e-5, atol=1e-7))
            ),
            predictions_equal=float(np.mean(pred == exact_pred)),
        )


class CandidateStatistics:
    """Collects the errors of each sample under its candidate classes, one
    chunk of trained classes at a time, and turns them into
    :class:`~fiftyone_hardness.methods.rer.statistics.ErrorStatistics`.

    Args:
        slots: the (N, S) classes of :func:`candidate_classes`
        nearest_classes: m (slots ``2 .. m + 1``)
        num_present: the number of classes with an autoencoder
        rand_labels: (N,) the random wrong labels
    """

    def __init__(self, slots, nearest_classes, num_present, rand_labels):
        import torch

        self.slots = slots
        self.m = int(nearest_classes)
        self.num_present = int(num_present)
        self.rand_labels = np.asarray(rand_labels)
        self.errors = torch.full(
            slots.shape, float("nan"), dtype=torch.float32, device=slots.device
        )
        flat = slots.reshape(-1)
        self._order = torch.argsort(flat, stable=True)
        classes, counts = torch.unique_consecutive(
            flat[self._order], return_counts=True
        )
        starts = torch.cumsum(counts, 0) - counts
        self._segments = {
            int(c): (int(s), int(k))
            for c, s, k in zip(
                classes.tolist(), starts.tolist(), counts.tolist()
            )
        }

    def evaluate(self, model, class_ids, Xs, block_rows):
        """Computes the errors of the pairs whose class is one of
        ``class_ids`` (the classes of ``model``, in its order)."""
        import torch

        width = self.slots.shape[1]
        flat_errors = self.errors.view(-1)
        with torch.no_grad():
            for index, c in enumerate(class_ids):
                if int(c) not in self._segments:
                    continue
                start, count = self._segments[int(c)]
                pairs = self._order[start : start + count]
                rows = pairs // width
                for s in range(0, count, block_rows):
                    flat_errors[pairs[s : s + block_rows]] = model.errors_of(
                        index, Xs[rows[s : s + block_rows]]
                    )

    def result(self):
        """The :class:`ErrorStatistics` of the evaluated pairs."""
        import torch

        errors = self.errors.double()
        slots = self.slots
        if torch.isnan(errors).any():
            raise RuntimeError("some candidate pairs were never evaluated")
        # the two smallest over distinct classes: a class evaluated twice
        # (the random wrong label among the nearest, a far class drawn
        # twice) counts once
        order = torch.argsort(slots, dim=1, stable=True)
        sorted_slots = torch.gather(slots, 1, order)
        sorted_errors = torch.gather(errors, 1, order)
        repeat = torch.zeros_like(sorted_slots, dtype=torch.bool)
        repeat[:, 1:] = sorted_slots[:, 1:] == sorted_slots[:, :-1]
        sorted_errors = sorted_errors.masked_fill(repeat, float("inf"))
        values, best = torch.topk(sorted_errors, 2, dim=1, largest=False)
        arg1 = torch.gather(sorted_slots, 1, best[:, :1]).squeeze(1)
        near = errors[:, 2 : 2 + self.m].sum(1)
        far = errors[:, 2 + self.m :].mean(1)
        num_far = self.num_present - 1 - self.m
        total = errors[:, 0] + near + num_far * far
        return ErrorStatistics(
            own=errors[:, 0].cpu().numpy(),
            min1=values[:, 0].cpu().numpy(),
            arg1=arg1.cpu().numpy(),
            min2=values[:, 1].cpu().numpy(),
            total=total.cpu().numpy(),
            rand_own=errors[:, 1].cpu().numpy(),
            rand_labels=self.rand_labels,
            num_classes=self.num_present,
        )
