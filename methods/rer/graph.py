"""
The neighbour graph of the ``"umap"`` objective: UMAP's ``(a, b)`` curve
parameters, the fuzzy kNN graph of each class, and the sampling of its
edges in proportion to their weight (the positive pairs of parametric UMAP).

``a`` and ``b`` are fitted from ``(spread, min_dist)`` as umap-learn does
and are always positive: the reference implementation's negative ``(a, b)``
turn its loss into NaN at every step.

torch is imported inside the functions that need it.
"""

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def find_ab_params(spread=1.0, min_dist=0.1):
    """Fits UMAP's ``(a, b)`` so that ``1 / (1 + a d^(2b))`` approximates
    ``1`` for ``d < min_dist`` and ``exp(-(d - min_dist) / spread)``
    beyond. Both are positive."""
    from scipy.optimize import curve_fit

    d = np.linspace(0, spread * 3, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(
        lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)),
        d,
        target,
        p0=(1.0, 1.0),
        bounds=([1e-3, 1e-2], [1e3, 10.0]),
    )
    return float(a), float(b)


def fuzzy_knn_graph(X, n_neighbors=40, method="auto", device=None, seed=0):
    """UMAP's fuzzy simplicial set of the points ``X``.

    For each point, memberships to its ``k`` nearest neighbours are
    ``exp(-(d - rho) / sigma)`` with ``rho`` the distance to the nearest
    neighbour and ``sigma`` chosen so that they sum to ``log2(k)``; the
    graph is symmetrized with the fuzzy union ``A + A^T - A * A^T``.

    The neighbours come from
    :func:`fiftyone_hardness.methods.neighbors.nearest_neighbors`
    (Euclidean): exact on a GPU and up to
    :data:`~fiftyone_hardness.methods.neighbors.EXACT_MAX_ROWS` points,
    approximate above, so memory is ``O(n * k)``, never ``n x n``: about
    ``n * k * 60`` bytes at the peak (the neighbours, the memberships and
    the sparse union), e.g. 480 MB for 200k points and k=40.

    Args:
        X: (n, D) float array (or a float tensor)
        n_neighbors (40): neighbours per point (capped at ``n - 1``)
        method ("auto"): the neighbour search: ``"auto"``, ``"exact"`` or
            ``"ivf"`` (approximate)
        device (None): the torch device of the search
        seed (0): the seed of the approximate search

    Returns:
        a tuple ``(heads, tails, weights)`` of the directed edges (both
        directions of each undirected edge); weights are float32
    """
    from fiftyone_hardness.methods.neighbors import nearest_neighbors

    n = len(X)
    k = int(min(n_neighbors, n - 1))
    if k < 1:
        return (np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32))
    found = nearest_neighbors(
        X, k, metric="euclidean", method=method, device=device, seed=seed
    )
    weights = _memberships(found.distances, k)
    return _fuzzy_union(found.indices, weights, n)


def _memberships(knn, k):
    """``exp(-(d - rho) / sigma)`` of each point's (sorted) neighbour
    distances ``knn`` (n, k), with ``sigma`` found by bisection (all rows
    at once) so that each row sums to ``log2(k)``."""
    knn = np.asarray(knn, dtype=np.float32)
    n = len(knn)
    positive = np.where(knn > 0, knn, np.inf)
    rho = np.min(positive, axis=1)
    rho = np.where(np.isfinite(rho), rho, 0.0).astype(np.float32)
    shifted = np.maximum(knn - rho[:, None], 0.0)
    target = math.log2(k) if k > 1 else 1.0
    lo = np.zeros(n, np.float32)
    hi = np.full(n, np.inf, np.float32)
    sigma = np.ones(n, np.float32)
    for _ in range(64):  # bisection on every row at once
        total = np.exp(-shifted / sigma[:, None]).sum(1)
        big = total > target
        hi = np.where(big, sigma, hi)
        lo = np.where(big, lo, sigma)
        sigma = np.where(np.isfinite(hi), (lo + hi) / 2, sigma * 2)
    mean_dist = max(float(np.mean(knn[np.isfinite(knn)])), 1e-12)
    sigma = np.maximum(sigma, np.float32(1e-3 * mean_dist))
    return np.exp(-shifted / sigma[:, None])


def _fuzzy_union(neighbors, weights, n):
    """The fuzzy union ``A + A^T - A * A^T`` of the directed kNN graph, as
    ``(heads, tails, weights)`` of its nonzero entries."""
    import scipy.sparse as sp

    k = neighbors.shape[1]
    rows = np.repeat(np.arange(n), k)
    graph = sp.csr_matrix(
        (weights.ravel(), (rows, neighbors.ravel())), shape=(n, n)
    )
    del rows
    transpose = graph.T.tocsr()
    graph = (graph + transpose - graph.multiply(transpose)).tocoo()
    keep = graph.data > 0
    return graph.row[keep], graph.col[keep], graph.data[keep]


@dataclass
class ClassGraphs:
    """The fuzzy graphs of several classes, flattened, as torch tensors:
    the edges of class j are ``heads/tails[starts[j]:starts[j + 1]]``
    (global row indices), with cumulative weights for sampling edges in
    proportion to their weight.

    Attributes:
        heads: (E,) the first row of each edge
        tails: (E,) the second row of each edge
        cumweights: (E,) float64 cumulative edge weights over all classes
        cum_starts: (M,) the cumulative weight before each class's edges
        cum_totals: (M,) the total edge weight of each class
    """

    heads: object
    tails: object
    cumweights: object
    cum_starts: object
    cum_totals: object

    @classmethod
    def build(cls, X, class_rows, n_neighbors, device, method="auto", seed=0):
        """Builds the graph of each class from its rows of ``X``.

        Args:
            X: (N, D) features, a float32 tensor (on ``device``) or array
            class_rows: one array of row indices per class
            n_neighbors: neighbours per point
            device: the torch device of the tensors (and of the search)
            method ("auto"): the neighbour search of
                :func:`fuzzy_knn_graph`
            seed (0): the seed of the approximate search
        """
        import torch

        heads, tails, weights = [], [], []
        cum_starts, totals = [], []
        offset = 0.0
        for rows in class_rows:
            h, t, w = fuzzy_knn_graph(
                (
                    X[torch.as_tensor(rows, device=X.device)]
                    if torch.is_tensor(X)
                    else X[rows]
                ),
                n_neighbors,
                method=method,
                device=device,
                seed=seed,
            )
            if len(w) == 0:  # a single sample: a self edge
                h, t, w = np.zeros(1, int), np.zeros(1, int), np.ones(1)
            w = w.astype(np.float64)
            heads.append(rows[h])
            tails.append(rows[t])
            weights.append(w)
            cum_starts.append(offset)
            totals.append(float(w.sum()))
            offset += float(w.sum())
        cum = np.cumsum(np.concatenate(weights))

        def tensor(values, dtype=None):
            return torch.as_tensor(values, dtype=dtype, device=device)

        return cls(
            heads=tensor(np.concatenate(heads)),
            tails=tensor(np.concatenate(tails)),
            cumweights=tensor(cum, torch.float64),
            cum_starts=tensor(cum_starts, torch.float64),
            cum_totals=tensor(totals, torch.float64),
        )

    def sample_edges(self, batch_size, gen):
        """Draws ``batch_size`` edges of each class, each with probability
        proportional to its weight. Returns ``(heads, tails)``, two (M,
        batch_size) tensors of row indices."""
        import torch

        m = len(self.cum_starts)
        u = torch.rand(
            m,
            batch_size,
            generator=gen,
            device=self.cumweights.device,
            dtype=torch.float64,
        )
        target = self.cum_starts[:, None] + u * self.cum_totals[:, None]
        edge = torch.searchsorted(self.cumweights, target.reshape(-1))
        edge = edge.clamp_max(len(self.cumweights) - 1)
        return (
            self.heads[edge].reshape(m, batch_size),
            self.tails[edge].reshape(m, batch_size),
        )
