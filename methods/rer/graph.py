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


def fuzzy_knn_graph(X, n_neighbors=40):
    """UMAP's fuzzy simplicial set of the points ``X`` (exact kNN).

    For each point, memberships to its ``k`` nearest neighbours are
    ``exp(-(d - rho) / sigma)`` with ``rho`` the distance to the nearest
    neighbour and ``sigma`` chosen so that they sum to ``log2(k)``; the
    graph is symmetrized with the fuzzy union ``A + A^T - A * A^T``.

    Args:
        X: (n, D) float array
        n_neighbors (40): neighbours per point (capped at ``n - 1``)

    Returns:
        a tuple ``(heads, tails, weights)`` of the directed edges (both
        directions of each undirected edge)
    """
    import scipy.sparse as sp

    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    k = int(min(n_neighbors, n - 1))
    if k < 1:
        return (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    sq = (X**2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0))
    np.fill_diagonal(dist, np.inf)
    neighbors = np.argpartition(dist, k - 1, axis=1)[:, :k]
    knn = np.take_along_axis(dist, neighbors, axis=1)
    positive = np.where(knn > 0, knn, np.inf)
    rho = np.min(positive, axis=1)
    rho = np.where(np.isfinite(rho), rho, 0.0)
    shifted = np.maximum(knn - rho[:, None], 0.0)
    target = math.log2(k) if k > 1 else 1.0
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    sigma = np.ones(n)
    for _ in range(64):  # bisection on every row at once
        total = np.exp(-shifted / sigma[:, None]).sum(1)
        big = total > target
        hi = np.where(big, sigma, hi)
        lo = np.where(big, lo, sigma)
        sigma = np.where(np.isfinite(hi), (lo + hi) / 2, sigma * 2)
    mean_dist = max(float(np.mean(knn[np.isfinite(knn)])), 1e-12)
    sigma = np.maximum(sigma, 1e-3 * mean_dist)
    weights = np.exp(-shifted / sigma[:, None])
    rows = np.repeat(np.arange(n), k)
    graph = sp.coo_matrix(
        (weights.ravel(), (rows, neighbors.ravel())), shape=(n, n)
    ).tocsr()
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
    def build(cls, X, class_rows, n_neighbors, device):
        """Builds the graph of each class from its rows of ``X``.

        Args:
            X: (N, D) numpy features
            class_rows: one array of row indices per class
            n_neighbors: neighbours per point
            device: the torch device of the tensors
        """
        import torch

        heads, tails, weights = [], [], []
        cum_starts, totals = [], []
        offset = 0.0
        for rows in class_rows:
            h, t, w = fuzzy_knn_graph(X[rows], n_neighbors)
            if len(w) == 0:  # a single sample: a self edge
                h, t, w = np.zeros(1, int), np.zeros(1, int), np.ones(1)
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
