"""
The one neighbour index (methods/neighbors.py) behind RER's class graphs
and the k-NN vote: the exact search equals scikit-learn's, and the
approximate one (inverted file, re-ranked) finds most true neighbours,
returns their true distances, nearest first, never the row itself, the
same for a given seed, and completes rows whose lists are too small.
"""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.neighbors import nearest_neighbors


def _classes(n, dims=64, num_classes=20, seed=0):
    """Gaussian classes in an 8-d subspace plus isotropic noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, 8)) * 2.0
    proj = rng.normal(size=(8, dims)) / np.sqrt(8)
    labels = rng.integers(num_classes, size=n)
    z = means[labels] + rng.normal(size=(n, 8))
    X = z @ proj + 0.3 * rng.normal(size=(n, dims))
    return X.astype(np.float32)


def _sklearn(X, k, metric):
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(X)
    distances, indices = nn.kneighbors(X)
    return indices[:, 1:], distances[:, 1:]


def _true_distances(X, indices, metric):
    rows = np.repeat(np.arange(len(X)), indices.shape[1])
    a, b = X[rows].astype(np.float64), X[indices.ravel()].astype(np.float64)
    if metric == "cosine":
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1)
        d = 1 - cos / np.linalg.norm(b, axis=1)
    else:
        d = np.linalg.norm(a - b, axis=1)
    return d.reshape(indices.shape)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_equals_sklearn(metric):
    X = _classes(3000)
    got = nearest_neighbors(X, 10, metric=metric, method="exact")
    indices, distances = _sklearn(X, 10, metric)
    # the same neighbours, nearest first (ties aside: continuous data)
    assert np.mean(got.indices == indices) > 0.999
    assert np.allclose(got.distances, distances, atol=1e-4)
    assert not (got.indices == np.arange(len(X))[:, None]).any()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_approximate_search_finds_the_true_neighbours(metric):
    """20k rows, 141 lists, 24 probes: most true neighbours are found, and
    what is returned is exact about itself: true distances of those rows,
    sorted, never the row itself."""
    X = _classes(20000)
    got = nearest_neighbors(X, 10, metric=metric, method="ivf")
    assert got.method == "ivf" and got.info["lists"] == 141
    queries = np.arange(0, len(X), 10)
    exact = nearest_neighbors(X, 10, metric=metric, method="exact")
    recall = np.mean(
        [
            len(set(a) & set(b)) / 10
            for a, b in zip(got.indices[queries], exact.indices[queries])
        ]
    )
    assert recall > 0.9, recall
    assert np.allclose(
        got.distances, _true_distances(X, got.indices, metric), atol=1e-4
    )
    assert (np.diff(got.distances, axis=1) >= 0).all()
    assert not (got.indices == np.arange(len(X))[:, None]).any()
    assert (got.indices >= 0).all()
    # the k-th neighbour found is never nearer than the true k-th
    assert (got.distances[:, -1] >= exact.distances[:, -1] - 1e-5).all()


def test_approximate_search_is_deterministic_and_completes_small_lists():
    X = _classes(5000)
    a = nearest_neighbors(X, 10, method="ivf", seed=3)
    b = nearest_neighbors(X, 10, method="ivf", seed=3)
    assert np.array_equal(a.indices, b.indices)
    # one probe of lists of 2 rows: no row has 10 candidates, every row
    # gets the exact search
    tiny = nearest_neighbors(
        X, 10, method="ivf", lists_per_sqrt=50.0, probes=1
    )
    exact = nearest_neighbors(X, 10, method="exact")
    assert tiny.info["exact_rows"] == len(X)
    assert np.array_equal(tiny.indices, exact.indices)
    assert np.allclose(tiny.distances, exact.distances, atol=1e-6)
    # lists of 14 rows: some rows (measured: 833) completed, the others
    # re-ranked, all with their true distances, nearest first
    some = nearest_neighbors(X, 10, method="ivf", lists_per_sqrt=5.0, probes=1)
    assert 0 < some.info["exact_rows"] < len(X)
    assert np.allclose(
        some.distances, _true_distances(X, some.indices, "cosine"), atol=1e-4
    )
    assert (np.diff(some.distances, axis=1) >= 0).all()


def test_bad_options_are_refused():
    X = _classes(100)
    with pytest.raises(HardnessError, match="Unknown option"):
        nearest_neighbors(X, 5, method="ivf", probe=3)
    with pytest.raises(HardnessError, match="1 <= k < N"):
        nearest_neighbors(X, 100)


@pytest.mark.parametrize("chunk_floats", [1 << 26, 4096])
def test_list_scan_keeps_the_best_of_every_probed_member(chunk_floats):
    """The list-by-list scan drops no candidate: the result is the top c
    over every member of the probed lists, also for rows whose own list is
    tiny and with groups and blocks small enough to split lists (4096
    floats)."""
    import torch

    from fiftyone_hardness.methods.neighbors import _scan_lists

    rng = np.random.default_rng(0)
    n, num_lists, probes, c = 600, 12, 4, 8
    Z = torch.from_numpy(rng.normal(size=(n, 6)).astype(np.float32))
    # uneven lists, two of them tiny (1 and 3 rows)
    own = rng.choice(num_lists - 2, size=n)
    own[:1], own[1:4] = num_lists - 2, num_lists - 1
    others = np.stack([rng.permutation(num_lists)[:probes] for _ in range(n)])
    lists = np.concatenate([own[:, None], others], axis=1)
    lists = np.array(  # own list first, no list twice
        [[r[0]] + [j for j in r[1:] if j != r[0]][: probes - 1] for r in lists]
    )
    got = _scan_lists(
        Z,
        torch.from_numpy(lists),
        num_lists,
        c,
        chunk_floats,
        lambda *a: None,
    ).numpy()
    z = Z.numpy().astype(np.float64)
    for i in range(n):
        members = np.flatnonzero(np.isin(own, lists[i]))
        members = members[members != i]
        scores = 2 * z[members] @ z[i] - (z[members] ** 2).sum(1)
        best = set(members[np.argsort(-scores)[:c]])
        assert set(got[i][got[i] >= 0]) == best, i
