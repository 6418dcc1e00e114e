"""
Nearest neighbours in bounded memory, the one index behind RER's fuzzy
neighbour graph (:mod:`fiftyone_hardness.methods.rer.graph`) and the
leave-one-out k-NN vote (:func:`fiftyone_hardness.methods.probes.
knn_vote_probs`).

:func:`nearest_neighbors` returns each row's ``k`` nearest *other* rows
(never itself), nearest first, by one of two methods:

- ``"exact"``: chunked brute force, a block of rows x all N similarities at
  a time, then the top k. ``O(N^2 D)`` time. Used on a GPU (any N) and on
  the CPU up to :data:`EXACT_MAX_ROWS` rows.
- ``"ivf"``: an inverted file in a reduced space with an exact re-ranking,
  in named steps:

  1. the search space: the rows (unit-normalized for ``"cosine"``, where
     Euclidean order is cosine order) projected on their leading
     ``search_dims`` principal components, fitted on a sample. This drops
     the directions of near-isotropic noise, in which a k-means partition
     of high-dimensional features is no better than random (measured: on
     Gaussian classes in 64 of 512 dims the same probing without the
     projection found 22% of the true neighbours, with it 90%+);
  2. the lists: k-means centroids in that space, ``lists_per_sqrt *
     sqrt(N)`` of them, trained on a sample; each row belongs to its
     nearest;
  3. the candidates: each row scans the members of its ``probes`` nearest
     lists and keeps the ``candidates`` nearest in the search space. The
     scan goes list by list: the rows probing a list form one matrix
     product against its members (full BLAS speed, unlike a per-query
     scan);
  4. the re-ranking: the candidates' true distances in the full space (the
     metric asked for, computed directly, not through norms), the ``k``
     best kept. Rows left with fewer than ``k`` candidates (tiny lists) get
     the exact search.

  Cost ``O(N * (C + probes * N / C) * search_dims + N * candidates * D)``
  with ``C ~ sqrt(N)`` lists: ``O(N^1.5)``, about 8 s at 100k x 512 on
  2 CPU cores, under 3 minutes at 1M (164-173 s; ``speed/knn.py``
  measures both methods and the growth exponent).

Peak memory beyond the (N, D) input, for N rows, D dims, d = search_dims,
p = probes, c = candidates:

- ``"exact"``: ``chunk * N`` similarities (``chunk_floats``, 64M floats =
  256 MB by default) + the (N, k) result (12 bytes per entry);
- ``"ivf"``: ``2 * N * d * 4`` bytes (the projection and its copy sorted by
  list) + the scores of one group of rows (``group * p * c`` entries of 12
  bytes, at most ``chunk_floats / 4``, held twice while reordered: 384 MB
  by default) + ``N * c * 8`` (the candidates) + one block of similarities
  + the (N, k) result. No N x N array at any size. Measured peak over the
  input (``speed/knn.py``, k=10, p=24): +0.65 GB at 100k x 512 (+2.3 GB
  before the group was capped at a quarter of ``chunk_floats``).

The approximate method is not faiss or pynndescent, which were measured on
the same data and machine (100k x 512, 2 shared CPU cores): pynndescent
0.7.0 took 29 s warm plus ~47 s of numba compilation in every new process;
faiss-cpu 1.15.1 IVFFlat with the same lists and probes searched 4x slower
than the list-by-list matrix products here, and its HNSW took 78 s to
build. This one is torch only, deterministic for a given seed, and runs on
the GPU too.

torch is imported inside the functions that need it.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from fiftyone_hardness.methods.base import HardnessError, select_device

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
METHODS = ("auto", "exact", "ivf")

#: Up to this many rows the CPU searches exactly (``method="auto"``); above
#: it, approximately. Measured with ``speed/knn.py`` on 2 CPU cores (k=10,
#: 512 dims): the exact search of 20k rows costs about as much CPU as the
#: approximate search of 100k, and below 20k it takes a few seconds at most
EXACT_MAX_ROWS = 20000

#: The defaults of the approximate search, chosen with ``speed/knn.py`` on
#: Gaussian classes in a 64-d subspace of 512 dims (the hard case for any
#: index: most of each vector is isotropic noise) and on the digits: see
#: that script's notes for the figures
IVF_DEFAULTS = dict(
    search_dims=64,  # principal components of the search space
    lists_per_sqrt=1.0,  # C = lists_per_sqrt * sqrt(N) k-means lists
    # lists each row scans: 24 keeps the k-NN vote's AUROC within 0.005 of
    # the exact vote's at 100k (8 gave +0.0051; docs/performance.md)
    probes=24,
    extra_candidates=20,  # candidates = k + max(k, extra_candidates)
    kmeans_iterations=10,
    kmeans_sample_per_list=64,  # k-means is trained on 64 * C rows
    pca_sample=50000,  # rows the principal components are fitted on
)


@dataclass
class Neighbors:
    """The ``k`` nearest other rows of each row.

    Attributes:
        indices: (N, k) int64 row indices, nearest first, never the row
            itself
        distances: (N, k) float32 distances: ``1 - cosine similarity`` or
            the Euclidean distance
        method: ``"exact"`` or ``"ivf"``
        info: how they were found (JSON-serializable)
    """

    indices: np.ndarray
    distances: np.ndarray
    method: str
    info: dict = field(default_factory=dict)


def nearest_neighbors(
    X,
    k,
    metric="cosine",
    method="auto",
    device=None,
    seed=0,
    exact_max_rows=None,
    chunk_floats=1 << 26,
    progress=None,
    **ivf_options,
):
    """The ``k`` nearest other rows of every row of ``X``.

    Args:
        X: (N, D) float features (validated by the caller), an array or a
            tensor
        k: neighbours per row, ``1 <= k < N``
        metric ("cosine"): ``"cosine"`` or ``"euclidean"``
        method ("auto"): ``"exact"``, ``"ivf"`` (approximate), or
            ``"auto"``: exact on a GPU and for up to ``exact_max_rows``
            rows, else ``"ivf"``
        device (None): the torch device; ``cuda`` when available
        seed (0): the seed of the approximate method's samples
        exact_max_rows (None): default :data:`EXACT_MAX_ROWS`
        chunk_floats (2**26): the most floats of one block of similarities
            (and of one group's candidates)
        progress (None): a callable ``(fraction, message)``
        **ivf_options: overrides of :data:`IVF_DEFAULTS`

    Returns:
        a :class:`Neighbors`
    """
    import torch

    unknown = sorted(set(ivf_options) - set(IVF_DEFAULTS))
    if unknown:
        raise HardnessError(
            "Unknown option(s) %s of the approximate neighbour search; "
            "valid: %s" % (", ".join(unknown), ", ".join(IVF_DEFAULTS))
        )
    if metric not in METRICS or method not in METHODS:
        raise HardnessError(
            "metric must be one of %s and method one of %s; got %r, %r"
            % (METRICS, METHODS, metric, method)
        )
    n = len(X)
    k = int(k)
    if not 1 <= k < n:
        raise HardnessError(
            "Nearest neighbours need 1 <= k < N; got k=%d for %d rows" % (k, n)
        )
    progress = progress or (lambda fraction, message="": None)
    device = select_device(device)
    method = _choose_method(method, n, device, exact_max_rows)
    options = dict(IVF_DEFAULTS, **ivf_options)
    if torch.is_tensor(X):
        Xt = X.detach().to(device=device, dtype=torch.float32)
    else:
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float32), device=device)
    with torch.no_grad():
        if method == "exact":
            indices, scores = _exact_search(
                Xt, k, metric, chunk_floats, progress, with_scores=True
            )
            distances = _distances_from_scores(Xt, scores, metric)
            indices, distances = _sorted_by_distance(indices, distances)
            info = {}
        else:
            candidates, info = _ivf_candidates(
                Xt, k, metric, options, seed, chunk_floats, progress
            )
            indices, distances = _rerank(
                Xt, candidates, k, metric, chunk_floats
            )
            _complete(Xt, indices, distances, k, metric, chunk_floats, info)
            indices, distances = _sorted_by_distance(indices, distances)
    info.update(method=method, metric=metric, k=k, device=str(device))
    return Neighbors(
        indices=indices.cpu().numpy(),
        distances=distances.cpu().numpy(),
        method=method,
        info=info,
    )


def _choose_method(method, n, device, exact_max_rows):
    if method != "auto":
        return method
    if exact_max_rows is None:
        exact_max_rows = EXACT_MAX_ROWS
    if str(device).startswith("cuda") or n <= exact_max_rows:
        return "exact"
    return "ivf"


# ---------------------------------------------------------------------------
# The exact search
# ---------------------------------------------------------------------------


def _exact_search(
    X, k, metric, chunk_floats, progress, rows=None, with_scores=False
):
    """The exact ``k`` nearest other rows of ``rows`` (default all), a block
    of rows at a time; returns (len(rows), k) indices, and with
    ``with_scores`` their (len(rows), k) scores too (see
    :func:`_distances_from_scores`)."""
    import torch

    n = len(X)
    rows = torch.arange(n, device=X.device) if rows is None else rows
    if metric == "cosine":
        X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sq = None
    else:
        sq = (X * X).sum(1)
    chunk = max(1, min(len(rows), chunk_floats // n))
    out = torch.empty((len(rows), k), dtype=torch.long, device=X.device)
    best = torch.empty((len(rows), k), dtype=X.dtype, device=X.device)
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        scores = X[block] @ X.T  # larger = nearer
        if sq is not None:  # -|q - x|^2 + |q|^2
            scores.mul_(2).sub_(sq[None, :])
        scores[torch.arange(len(block), device=X.device), block] = -math.inf
        top = torch.topk(scores, k, dim=1)
        out[start : start + chunk] = top.indices
        best[start : start + chunk] = top.values
        progress(
            (start + len(block)) / len(rows),
            "nearest neighbours %d/%d" % (start + len(block), len(rows)),
        )
    return (out, best) if with_scores else out


def _distances_from_scores(X, scores, metric):
    """The distances of :func:`_exact_search`'s scores over all rows:
    ``1 - score`` (cosine of unit rows), ``sqrt(|q|^2 - score)``
    (Euclidean, the score being ``2 q.x - |x|^2``). Reusing the search's
    products instead of gathering the neighbours again saved 2.8 s of the
    5 s of RER's 100 class graphs at 1000 rows each."""
    if metric == "cosine":
        return 1.0 - scores
    sq = _metric_norms(X, metric)
    return (sq[:, None] - scores).clamp_min_(0).sqrt_()


def _sorted_by_distance(indices, distances):
    """``(indices, distances)`` sorted per row nearest first, ties by
    index."""
    import torch

    by_index = torch.sort(indices, dim=1).indices
    indices = torch.gather(indices, 1, by_index)
    distances = torch.gather(distances, 1, by_index)
    order = torch.sort(distances, dim=1, stable=True).indices
    return torch.gather(indices, 1, order), torch.gather(distances, 1, order)


# ---------------------------------------------------------------------------
# The approximate search: steps 1-3 give candidates, step 4 re-ranks them
# ---------------------------------------------------------------------------


def _ivf_candidates(X, k, metric, options, seed, chunk_floats, progress):
    """Returns ``((N, c) candidate indices, -1 where missing; info)``."""
    import torch

    n = len(X)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    progress(0.0, "neighbour index: search space")
    Z = _search_space(X, metric, options, gen)
    num_lists = int(
        max(1, min(n // 2, round(options["lists_per_sqrt"] * math.sqrt(n))))
    )
    probes = int(max(1, min(options["probes"], num_lists)))
    progress(0.05, "neighbour index: %d lists" % num_lists)
    centroids = _kmeans(Z, num_lists, options, gen)
    lists = _nearest_lists(Z, centroids, probes, chunk_floats)
    num_candidates = int(min(n - 1, k + max(k, options["extra_candidates"])))
    candidates = _scan_lists(
        Z, lists, num_lists, num_candidates, chunk_floats, progress
    )
    info = dict(
        lists=num_lists,
        probes=probes,
        candidates=num_candidates,
        search_dims=int(Z.shape[1]),
    )
    return candidates, info


def _search_space(X, metric, options, gen):
    """Step 1: the rows (unit-normalized for cosine) projected on their
    leading principal components, as an (N, d) float32 tensor in which
    Euclidean distances approximate the full space's."""
    import torch

    n, dim = X.shape

    def rows(s, e):
        block = X[s:e]
        if metric == "cosine":
            block = block / block.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return block

    dims = int(min(dim, options["search_dims"]))
    if dims >= dim:
        return torch.cat([rows(s, s + 65536) for s in range(0, n, 65536)])
    sample = _sample_rows(n, options["pca_sample"], gen).to(X.device)
    S = X[sample].double()
    if metric == "cosine":
        S /= S.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mean = S.mean(0)
    S -= mean
    _, vectors = torch.linalg.eigh(S.T @ S)
    basis = vectors[:, -dims:].flip(1).to(X.dtype)
    mean = mean.to(X.dtype)
    return torch.cat(
        [(rows(s, s + 65536) - mean) @ basis for s in range(0, n, 65536)]
    )


def _sample_rows(n, size, gen):
    import torch

    if size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=gen)[:size].sort().values


def _kmeans(Z, num_lists, options, gen):
    """Step 2: Lloyd's k-means on a sample of the rows; returns the (C, d)
    centroids (an emptied centroid keeps its place)."""
    import torch

    size = options["kmeans_sample_per_list"] * num_lists
    sample = Z[_sample_rows(len(Z), size, gen).to(Z.device)]
    start = torch.randperm(len(sample), generator=gen)[:num_lists]
    centroids = sample[start.to(Z.device)].clone()
    for _ in range(int(options["kmeans_iterations"])):
        nearest = _nearest_lists(sample, centroids, 1, 1 << 24)[:, 0]
        sums = torch.zeros_like(centroids).index_add_(0, nearest, sample)
        counts = torch.bincount(nearest, minlength=num_lists)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(Z.dtype)
    return centroids


def _nearest_lists(Z, centroids, probes, chunk_floats):
    """The (N, probes) nearest centroids of each row, nearest first (column
    0 is the row's own list)."""
    import torch

    norms = (centroids * centroids).sum(1)
    chunk = max(1, chunk_floats // len(centroids))
    out = torch.empty((len(Z), probes), dtype=torch.long, device=Z.device)
    for s in range(0, len(Z), chunk):
        scores = (Z[s : s + chunk] @ centroids.T).mul_(2).sub_(norms)
        out[s : s + chunk] = torch.topk(scores, probes, dim=1).indices
    return out


def _scan_lists(Z, lists, num_lists, num_candidates, chunk_floats, progress):
    """Step 3: each row's ``num_candidates`` nearest members of its probed
    lists (in the search space), as (N, c) indices, -1 where fewer exist.

    The rows are taken in groups (consecutive in list order, so that a
    group probes few lists); within a group, the rows probing one list are
    scored against its members in one matrix product, and each keeps its
    best ``c`` of that list; the group's best ``c`` over its lists are its
    candidates."""
    import torch

    n, probes = lists.shape
    device = Z.device
    own = lists[:, 0]
    order = torch.argsort(own, stable=True)  # rows sorted by list
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=device)
    sizes = torch.bincount(own, minlength=num_lists)
    starts = (torch.cumsum(sizes, 0) - sizes).tolist()
    sizes = sizes.tolist()
    Zs = Z[order]  # members of list j: Zs[starts[j]:starts[j] + sizes[j]]
    del Z
    norms = (Zs * Zs).sum(1)
    # a quarter of chunk_floats per group: its values and members (12
    # bytes per entry) are concatenated and reordered once (x2)
    group = int(max(1, min(n, chunk_floats // (4 * probes * num_candidates))))
    candidates = torch.full(
        (n, num_candidates), -1, dtype=torch.long, device=device
    )
    for g0 in range(0, n, group):
        rows = order[g0 : g0 + group]  # original indices, in list order
        best = _scan_group(
            Zs,
            norms,
            rank[rows],
            lists[rows],
            starts,
            sizes,
            num_candidates,
            chunk_floats,
        )
        candidates[rows] = torch.where(best >= 0, order[best.clamp_min(0)], -1)
        progress(
            0.1 + 0.8 * min(n, g0 + group) / n,
            "neighbour index: scanning lists %d/%d" % (min(n, g0 + group), n),
        )
    return candidates


def _scan_group(Zs, norms, positions, lists, starts, sizes, c, chunk_floats):
    """The best ``c`` members (positions in list order) of the probed lists
    of one group of rows; ``positions`` are the rows' own positions (never
    their own candidates). Returns (g, c) positions, -1 where fewer exist."""
    import torch

    g, probes = lists.shape
    pair_list = lists.reshape(-1)
    pair_order = torch.argsort(pair_list, stable=True)
    visited, counts = torch.unique_consecutive(
        pair_list[pair_order], return_counts=True
    )
    values, members, pairs_done = [], [], []
    offset = 0
    for j, count in zip(visited.tolist(), counts.tolist()):
        pairs = pair_order[offset : offset + count]
        offset += count
        size, lo = sizes[j], starts[j]
        if size == 0:
            continue
        step = max(1, chunk_floats // size)
        keep = min(c, size)
        for a in range(0, count, step):
            block = pairs[a : a + step]
            query = positions[block // probes]
            # 2 q.x - |x|^2: larger = nearer (|q|^2 is the same per row)
            s = torch.addmm(
                norms[lo : lo + size],
                Zs.index_select(0, query),
                Zs[lo : lo + size].T,
                beta=-1,
                alpha=2,
            )
            inside = torch.nonzero((query >= lo) & (query < lo + size))
            inside = inside.squeeze(1)
            s[inside, query[inside] - lo] = -math.inf  # never itself
            # unsorted: the group's merge and the re-ranking order them
            v, m = torch.topk(s, keep, dim=1, sorted=False)
            if keep < c:
                v = torch.nn.functional.pad(v, (0, c - keep), value=-math.inf)
                m = torch.nn.functional.pad(m, (0, c - keep), value=-1 - lo)
            values.append(v)
            members.append(m + lo)
            pairs_done.append(block)
    # every pair was scored once: put the results back in pair order
    inverse = torch.argsort(torch.cat(pairs_done))
    values = torch.cat(values).index_select(0, inverse).view(g, probes * c)
    members = torch.cat(members).index_select(0, inverse).view(g, probes * c)
    best_values, best = torch.topk(values, c, dim=1, sorted=False)
    best = torch.gather(members, 1, best)
    return torch.where(torch.isfinite(best_values), best, -1)


def _rerank(X, candidates, k, metric, chunk_floats):
    """Step 4: the ``k`` candidates of each row nearest in the full space
    and their distances (index -1 where fewer than ``k`` exist)."""
    import torch

    n, c = candidates.shape
    scale = _metric_norms(X, metric)
    chunk = max(1, chunk_floats // (4 * c * X.shape[1]))
    out = torch.empty((n, k), dtype=torch.long, device=X.device)
    distances = torch.empty((n, k), dtype=torch.float32, device=X.device)
    for s in range(0, n, chunk):
        cand = candidates[s : s + chunk]
        rows = torch.arange(s, s + len(cand), device=X.device)
        dist = _pair_distances(X, rows, cand, metric, scale)
        dist = torch.where(cand >= 0, dist, math.inf)
        values, best = torch.topk(dist, k, dim=1, largest=False)
        best = torch.gather(cand, 1, best)
        out[s : s + chunk] = torch.where(torch.isfinite(values), best, -1)
        distances[s : s + chunk] = values
    return out, distances


def _complete(X, indices, distances, k, metric, chunk_floats, info):
    """Rows with fewer than ``k`` candidates get the exact search (in
    place)."""
    import torch

    short = torch.nonzero((indices < 0).any(1)).squeeze(1)
    info["exact_rows"] = int(len(short))
    if len(short):
        indices[short] = _exact_search(
            X, k, metric, chunk_floats, lambda *a: None, rows=short
        )
        distances[short] = _pair_distances(
            X, short, indices[short], metric, _metric_norms(X, metric)
        )


def _metric_norms(X, metric):
    """Per row: ``1 / |x|`` for cosine, ``|x|^2`` for Euclidean."""
    import torch

    norms = torch.cat(
        [
            (X[s : s + 65536] * X[s : s + 65536]).sum(1)
            for s in range(0, len(X), 65536)
        ]
    )
    if metric == "cosine":
        return norms.sqrt_().clamp_min_(1e-12).reciprocal_()
    return norms


def _pair_distances(X, rows, others, metric, scale):
    """(len(rows), m) distances between ``X[rows]`` and ``X[others]``
    (indices < 0 give garbage, to be masked by the caller): one gather and
    one batched product; ``scale`` from :func:`_metric_norms`."""
    import torch

    others = others.clamp_min(0)
    o = X.index_select(0, others.reshape(-1)).view(*others.shape, -1)
    dots = torch.bmm(o, X[rows][:, :, None]).squeeze(2)
    if metric == "cosine":
        return 1.0 - dots * scale[others] * scale[rows][:, None]
    sq = scale[others] + scale[rows][:, None] - 2 * dots
    return sq.clamp_min_(0).sqrt_()
