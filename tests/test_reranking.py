"""
Re-ranking the review queue (:mod:`fiftyone_hardness.methods.reranking`):
the neighbour graph is the exact cosine k-NN, its reverse lists are right,
the incremental vote update equals a recomputation from scratch, a re-score
of 100k samples takes well under a second, and on the digits demo (20%
symmetric noise, seed 0) a simulated reviewer finds at least as many label
errors with re-ranking as with the run's fixed order.
"""

import time

import numpy as np
import pytest

from fiftyone_hardness.methods import reranking
from fiftyone_hardness.methods.base import HardnessError


def test_knn_graph_is_the_exact_cosine_neighbours():
    rng = np.random.RandomState(0)
    X = rng.randn(300, 8).astype(np.float32)
    got = reranking.knn_graph(X, k=5)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sims = Xn @ Xn.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert got.shape == (300, 5)
    assert (got == expected).mean() > 0.99  # float ties aside
    assert not (got == np.arange(300)[:, None]).any()  # never itself


def test_knn_graph_refuses_bad_input():
    with pytest.raises(HardnessError, match="at least 2 samples"):
        reranking.knn_graph(np.ones((1, 3), np.float32))
    with pytest.raises(HardnessError):
        reranking.knn_graph(np.array([[np.nan, 1.0], [1.0, 2.0]]))


def test_reverse_neighbours():
    neighbours = np.array([[1, 2], [2, 0], [0, 1], [0, 2]])
    indptr, indices = reranking.reverse_neighbours(neighbours)
    rev = {
        j: sorted(indices[indptr[j] : indptr[j + 1]].tolist())
        for j in range(4)
    }
    assert rev == {0: [1, 2, 3], 1: [0, 2], 2: [0, 1, 3], 3: []}


def test_incremental_update_equals_recomputation():
    rng = np.random.RandomState(1)
    n, k = 2000, 10
    neighbours = rng.randint(0, n, size=(n, k))
    labels = rng.randint(0, 5, size=n)
    scores = rng.rand(n)
    queue = np.argsort(-scores)[:400]
    reranker = reranking.Reranker(neighbours, labels, scores, queue)
    order = reranker.order()
    assert list(order) == list(queue)  # no verdict yet: the run's order
    for _ in range(5):
        rows = order[:10]
        reranker.record(rows, rng.randint(0, 5, size=10))
        order = reranker.rescore()
        weights = reranker.weights
        expected = reranking.knn_disagreement(
            neighbours, reranker.labels, weights
        )
        np.testing.assert_allclose(reranker.disagreement(), expected)
    assert len(order) == 400 - 50
    assert not np.isin(order, reranker.remaining(), invert=True).any()


def test_rescore_of_100k_samples_is_under_a_second():
    # the re-score's cost does not depend on where the neighbours are: a
    # random graph of the real size stands in for a built one
    rng = np.random.RandomState(2)
    n, k = 100000, 10
    neighbours = rng.randint(0, n, size=(n, k))
    labels = rng.randint(0, 100, size=n)
    scores = rng.rand(n)
    queue = np.argsort(-scores)[: n // 5]
    reranker = reranking.Reranker(neighbours, labels, scores, queue)
    order = reranker.order()
    start = time.perf_counter()
    reranker.record(order[:10], rng.randint(0, 100, size=10))
    reranker.rescore()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, "re-score took %.3f s" % elapsed


def _digits_demo(seed=0):
    from sklearn.datasets import load_digits

    from fiftyone_hardness.methods.label_noise import inject_label_noise
    from fiftyone_hardness.methods.probes import cross_val_probs

    X, clean = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    noisy, _ = inject_label_noise(clean, 10, 0.2, kind="symmetric", seed=seed)
    probs = cross_val_probs(X, noisy, 10, model="logreg").pred_probs
    # confident learning's score: 1 - self-confidence
    scores = 1.0 - probs[np.arange(len(noisy)), noisy]
    return X, noisy, clean, scores


def test_reranking_finds_at_least_as_many_errors_on_the_digits_demo():
    X, noisy, clean, scores = _digits_demo(seed=0)
    neighbours = reranking.knn_graph(X)
    queue = np.argsort(-scores)[: int(0.23 * len(scores))]
    found = {}
    for budget in (100, 400):
        for rerank in (False, True):
            found[budget, rerank] = reranking.simulate_review(
                neighbours,
                noisy,
                clean,
                scores,
                queue,
                budget=budget,
                batch=10,
                rerank=rerank,
            )["found"]
    assert found[100, True] >= found[100, False]
    assert found[400, True] >= found[400, False]
    # it reviews what it says: budget samples of the queue, each once
    result = reranking.simulate_review(
        neighbours, noisy, clean, scores, queue, budget=100
    )
    assert len(set(result["reviewed"])) == 100
    assert np.isin(result["reviewed"], queue).all()
    assert result["found_per_batch"][-1] == result["found"]
