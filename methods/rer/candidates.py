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

From these, :class:`CandidateStatistics` gives the same
:class:`~fiftyone_hardness.methods.rer.statistics.ErrorStatistics` as the
full computation: ``own`` and ``rand_own`` exactly; ``min1``, ``arg1``,
``min2`` exactly whenever the two best classes are among the evaluated ones
(measured: see :data:`~fiftyone_hardness.methods.rer.config.RERConfig`'s
``nearest_classes``); ``total`` as an unbiased estimate.

Every run audits itself: :class:`CandidateStatistics` also evaluates a
random subset of ``audit_rows`` samples under every class and records how
often the candidates' minimum over the other classes, and the predicted
class, equal the exact ones there (``results["candidate_audit"]``), so a
user sees what the approximation cost on their data, not on ours.

Cost: ``N * (m + r + 2)`` autoencoder evaluations instead of ``N * K``,
plus ``N * K * D`` multiply-adds for the centroid distances (a 1/500 of one
evaluation per class at 512 dims and 256 hidden units), plus the audit's
``audit_rows * K`` evaluations (:func:`audit_size`: at most
``max(2e5, 100 K)``, about 12% of the candidates' at 100k samples and
K = 100). Memory: the
``(N, m + r + 2)`` classes and errors (12 bytes each), one block of
``(chunk, K)`` centroid distances and the ``(K, audit_rows)`` audit
errors; never ``N x K``.

torch is imported inside the functions that need it.
"""

import logging

import numpy as np

from fiftyone_hardness.methods.rer.statistics import ErrorStatistics

logger = logging.getLogger(__name__)


def use_candidates(nearest_classes, sampled_classes, num_present):
    """Whether the candidate classes evaluate fewer classes per sample than
    there are (else the exact computation is as cheap and exact)."""
    if nearest_classes is None:
        return False
    return nearest_classes + sampled_classes + 2 < num_present


def candidate_classes(
    Xs,
    labels,
    rand_labels,
    fit_rows,
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
        fit_rows: the fitted rows of each present class
        present: the (P,) classes with samples
        nearest_classes: m
        sampled_classes: r
        seed (0): the seed of the sampled classes
        chunk_floats (2**24): the most floats of one block of distances
    """
    import torch

    device = Xs.device
    present_t = torch.as_tensor(present, device=device)
    centroids = torch.stack(
        [Xs[torch.as_tensor(rows, device=device)].mean(0) for rows in fit_rows]
    )
    position = torch.full(
        (int(present.max()) + 1,), -1, dtype=torch.long, device=device
    )
    position[present_t] = torch.arange(len(present), device=device)
    labels_t = torch.as_tensor(labels, device=device)
    own = position[labels_t]
    near = _nearest_centroids(
        Xs, centroids, own, nearest_classes, chunk_floats
    )
    far = _sampled_far(own, near, len(present), sampled_classes, seed)
    slots = torch.cat(
        [
            labels_t[:, None],
            torch.as_tensor(rand_labels, device=device)[:, None],
            present_t[near],
            present_t[far],
        ],
        dim=1,
    )
    return slots


def _nearest_centroids(Xs, centroids, own, m, chunk_floats):
    """The (N, m) positions of the m centroids nearest each row, its own
    class excluded."""
    import torch

    n = len(Xs)
    norms = (centroids * centroids).sum(1)
    chunk = max(1, chunk_floats // len(centroids))
    out = torch.empty((n, m), dtype=torch.long, device=Xs.device)
    for s in range(0, n, chunk):
        # -|x - c|^2 + |x|^2: larger = nearer
        scores = torch.addmm(
            norms, Xs[s : s + chunk], centroids.T, beta=-1, alpha=2
        )
        rows = torch.arange(len(scores), device=Xs.device)
        scores[rows, own[s : s + chunk]] = -float("inf")
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


def audit_size(num_rows, num_present):
    """The rows the audit evaluates under every class: 1000, fewer when
    there are so many classes that ``rows * K`` would pass 2e5
    evaluations (at least 100), never more than there are."""
    return int(min(num_rows, max(100, min(1000, 200000 // num_present))))


class CandidateStatistics:
    """Collects the errors of each sample under its candidate classes, one
    chunk of trained classes at a time, and turns them into
    :class:`~fiftyone_hardness.methods.rer.statistics.ErrorStatistics`.

    Args:
        slots: the (N, S) classes of :func:`candidate_classes`
        nearest_classes: m (slots ``2 .. m + 1``)
        num_present: the number of classes with an autoencoder
        rand_labels: (N,) the random wrong labels
        present: the (P,) classes with samples
        seed (0): the seed of the audited rows
    """

    def __init__(
        self, slots, nearest_classes, num_present, rand_labels, present, seed=0
    ):
        import torch

        self.slots = slots
        rng = np.random.default_rng(int(seed) + 23)
        n = len(slots)
        self.audit_rows = np.sort(
            rng.choice(n, audit_size(n, num_present), replace=False)
        )
        self.present = np.asarray(present)
        self.audit_errors = np.full(
            (len(self.present), len(self.audit_rows)), np.nan, np.float32
        )
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
        audit = torch.as_tensor(self.audit_rows, device=Xs.device)
        positions = np.searchsorted(self.present, np.asarray(class_ids))
        with torch.no_grad():
            for s in range(0, len(audit), block_rows):
                self.audit_errors[positions, s : s + block_rows] = (
                    model.errors(Xs[audit[s : s + block_rows]]).cpu().numpy()
                )
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
        self.audit = self._audit(slots, values, arg1)
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

    def _audit(self, slots, values, arg1):
        """The audit (module notes): on the audited rows, the share whose
        minimum error over the other classes and whose predicted class
        (smallest error over every class) equal the exact ones."""
        rows = self.audit_rows
        exact = self.audit_errors.astype(np.float64)
        own = slots[rows, 0].cpu().numpy()
        own_position = np.searchsorted(self.present, own)
        columns = np.arange(len(rows))
        exact_pred = self.present[np.argmin(exact, axis=0)]
        exact[own_position, columns] = np.inf
        exact_other = exact.min(axis=0)
        best = values[rows].cpu().numpy()
        pred = arg1[rows].cpu().numpy()
        other = np.where(pred == own, best[:, 1], best[:, 0])
        return dict(
            rows=int(len(rows)),
            min_other_equal=float(
                np.mean(np.isclose(other, exact_other, rtol=1e-5, atol=1e-7))
            ),
            predictions_equal=float(np.mean(pred == exact_pred)),
        )
