"""
Counter-examples for a suspicious label (CINCER, Teso et al. 2021).

For a suspicious sample ``i`` (observed label ``y~_i``, model prediction
``y^_i != y~_i``) the candidates are the samples ``k`` labelled ``y^_i``.
Each candidate is scored by the last-layer Fisher kernel

    K(i, k) = g_i^T F^+ g_k,   g = grad_W log P(y~ | x)

where ``W`` are the weights (and bias) of a softmax last layer on the
features, ``F`` is the empirical Fisher information of that layer over a
random subset of ``m`` samples and ``F^+`` its pseudo-inverse. Up to a
positive factor, ``-K(i, k)`` is the influence-function estimate of how much
*removing* ``k`` from the training data would raise ``log P(y~_i | x_i)``, so
the most incompatible candidate -- the counter-example -- is the one with the
most negative kernel value: ``incompatibility = KERNEL_SIGN * K(i, k)`` with
``KERNEL_SIGN = -1``. The sign was settled by measurement on the digits demo
(``tests/test_counterexamples.py``): with ``-1`` the top counter-examples of
correctly labelled suspicious samples are mislabeled far more often than
random candidates; with ``+1`` less often.

Everything here works on numpy arrays;
:func:`fiftyone_hardness.dataset_io.counterexamples.find_counterexamples`
reads them from a collection. See ``docs/methods.md`` section 6.

Memory, for N samples, D dims, K classes, ``P = D + 1``, T = the probe's
training rows (``max_train``, 50k by default), m = fisher_size and r <= m
the Fisher rank, beyond the (N, D) features: the probe's column
statistics (in blocks), its float64 standardized training rows (``2 x 8 T
D``, with scikit-learn's solver state, a few ``8 T K``), the Fisher
gradients and their SVD (``3 x 8 m K P``), and one batch of 2048
candidates' inputs, probabilities and embeddings (``8 x 2048 (P + K + r
K)``), plus ``16 N / K`` for the candidates' indices and scores. Only the
queried row, the Fisher subset and the candidates get inputs: at N = 1M,
D = 512 about 0.4 GB + 0.3 GB for the Fisher part at m = r = K = 100 (12
GB before, when every row's inputs were built).
"""

import logging
from dataclasses import dataclass

import numpy as np

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.config import MethodConfig, param
from fiftyone_hardness.methods.validation import (
    check_features,
    check_labels,
)

logger = logging.getLogger(__name__)

#: counter-examples maximize ``KERNEL_SIGN * g_i^T F^+ g_k``
KERNEL_SIGN = -1.0


def _not_blank(value):
    return "name the field" if not value.strip() else None


@dataclass
class CounterexamplesConfig(MethodConfig):
    """Counter-examples of a suspicious label (CINCER); see
    ``docs/methods.md`` section 6."""

    embeddings_field: str = param(
        "embeddings",
        "The features the last layer is fit on",
        label="Embeddings field",
        check=_not_blank,
    )
    k: int = param(
        5,
        "The number of counter-examples",
        minimum=1,
        maximum=100,
        label="Counter-examples",
    )
    target_label: str = param(
        None,
        "The class whose samples are candidates; empty for the model's "
        "prediction for the sample (its most probable other class when the "
        "model agrees with the label)",
        kind="str",
        label="Candidate class (optional)",
    )
    fisher_size: int = param(
        100,
        "Samples in the Fisher subset (CINCER: 30-100)",
        minimum=2,
        form=False,
    )
    seed: int = param(0, "The Fisher subset seed", minimum=0, form=False)
    C: float = param(
        1.0,
        "The last layer's inverse L2 regularization strength",
        minimum=0,
        exclusive_minimum=True,
        form=False,
    )
    max_train: int = param(
        50000,
        "Fit the last layer on a random subset of at most this many "
        "samples (None for all)",
        kind="int",
        optional=True,
        minimum=10,
        form=False,
    )


class SoftmaxProbe(object):
    """A softmax (multinomial logistic) last layer on standardized features.

    Args:
        features: an (N, D) array
        labels: (N,) int class indices
        num_classes: the number of classes K
        C (1.0): inverse L2 regularization strength
        max_iter (500): optimizer iterations
        max_train (None): fit on a random subset of at most this many
            samples (all by default)
        seed (0): the subset seed
    """

    def __init__(
        self,
        features,
        labels,
        num_classes,
        C=1.0,
        max_iter=500,
        max_train=None,
        seed=0,
    ):
        from sklearn.linear_model import LogisticRegression

        from fiftyone_hardness.methods.probes import column_statistics

        X = np.asarray(features)  # no float64 copy of every row
        labels = np.asarray(labels, dtype=int)
        self.num_classes = int(num_classes)
        self.mean, self.scale = column_statistics(X)
        self.scale[self.scale < 1e-12] = 1.0
        train = np.arange(len(X))
        if max_train is not None and len(X) > max_train:
            rng = np.random.default_rng(seed)
            train = np.sort(rng.choice(len(X), max_train, replace=False))
        present = np.unique(labels[train])
        if len(present) < 2:
            raise HardnessError(
                "Counter-examples need at least 2 classes; the labels have %d"
                % len(present)
            )
        model = LogisticRegression(C=C, max_iter=max_iter)
        with _small_problem_threads(X[train].size * self.num_classes):
            model.fit(self._standardize(X[train]), labels[train])
        D = X.shape[1]
        # absent classes get weights 0 and a very negative bias
        self.weights = np.zeros((self.num_classes, D + 1))
        self.weights[:, D] = -30.0
        coef = model.coef_
        intercept = model.intercept_
        if len(present) == 2:  # sklearn stores one row for binary problems
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        self.weights[present, :D] = coef
        self.weights[present, D] = intercept

    def _standardize(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.scale

    def inputs(self, features):
        """Returns the last layer's inputs ``[standardized x, 1]``."""
        Z = self._standardize(features)
        return np.hstack([Z, np.ones((len(Z), 1))])

    def predict_proba(self, features):
        """Returns the (N, K) class probabilities."""
        return softmax(self.inputs(features) @ self.weights.T)

    def inputs_and_probs(self, features):
        """Returns ``(inputs(features), predict_proba(features))``, the
        inputs computed once."""
        inputs = self.inputs(features)
        return inputs, softmax(inputs @ self.weights.T)


def _small_problem_threads(size):
    """One BLAS thread for small fits: there, threads only contend (badly so
    on a busy machine); large fits keep the default."""
    import contextlib

    if size > 5e7:
        return contextlib.nullcontext()
    import threadpoolctl

    return threadpoolctl.threadpool_limits(1)


def softmax(logits):
    """Row-wise softmax of an (N, K) array."""
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def last_layer_gradients(inputs, probs, labels):
    """Returns ``grad_W log P(label | x)`` of a softmax layer ``W`` (K x P),
    flattened: an (N, K * P) array with rows ``(onehot(label) - p) (x) x``.

    Args:
        inputs: (N, P) last-layer inputs (bias column included)
        probs: (N, K) probabilities
        labels: (N,) int labels
    """
    residual = -np.asarray(probs, dtype=np.float64).copy()
    residual[np.arange(len(residual)), labels] += 1.0
    return np.einsum("nk,np->nkp", residual, inputs).reshape(len(inputs), -1)


class FisherKernel(object):
    """The last-layer Fisher kernel ``g_i^T F^+ g_k``.

    ``F = G^T G / m`` is the empirical Fisher over ``m`` samples with
    gradient rows ``G``; with ``G / sqrt(m) = U S V^T``,
    ``F^+ = V S^-2 V^T``, so the kernel is the dot product of the
    embeddings ``phi(g) = S^-1 V^T g``. Only (m, K * P) numbers are stored.

    Args:
        inputs: (N, P) last-layer inputs of the Fisher subset
        probs: (N, K) probabilities of the Fisher subset
        labels: (N,) their labels
        rcond (1e-6): singular values below ``rcond * max`` are dropped
    """

    def __init__(self, inputs, probs, labels, rcond=1e-6):
        G = last_layer_gradients(inputs, probs, labels) / np.sqrt(len(inputs))
        _, s, vt = np.linalg.svd(G, full_matrices=False)
        keep = s > rcond * (s[0] if len(s) else 0.0)
        self.singular_values = s[keep]
        self.num_classes = probs.shape[1]
        self.num_inputs = inputs.shape[1]
        # (r, K, P)
        self._vt = vt[keep].reshape(-1, self.num_classes, self.num_inputs)

    @property
    def rank(self):
        return len(self.singular_values)

    def embed(self, inputs, probs, labels, batch_size=2048):
        """Returns ``phi(g)`` (N, rank) for the gradients of ``labels``."""
        residual = -np.asarray(probs, dtype=np.float64).copy()
        residual[np.arange(len(residual)), labels] += 1.0
        r, K, P = self._vt.shape
        flat = self._vt.reshape(r * K, P)
        out = np.empty((len(inputs), r))
        for start in range(0, len(inputs), batch_size):
            stop = start + batch_size
            proj = (inputs[start:stop] @ flat.T).reshape(-1, r, K)
            out[start:stop] = np.einsum(
                "nrk,nk->nr", proj, residual[start:stop]
            )
        return out / self.singular_values

    def matrix(self):
        """Returns the dense ``F^+`` (K * P)^2 (for tests on small
        problems)."""
        V = self._vt.reshape(self.rank, -1)
        return (V.T / self.singular_values**2) @ V


def fisher_subset(num_samples, size=100, seed=0):
    """Returns sorted random indices of the Fisher subset."""
    size = min(int(size), num_samples)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_samples, size, replace=False))


def counterexample_candidates(labels, index, target):
    """Returns the indices ``k != index`` labelled ``target``."""
    candidates = np.flatnonzero(np.asarray(labels) == target)
    return candidates[candidates != index]


def incompatibility(
    kernel, probe, features, labels, index, candidates, batch_size=2048
):
    """Returns ``KERNEL_SIGN * g_index^T F^+ g_k`` for each candidate ``k``
    (higher = more incompatible with ``index``'s label). The candidates'
    last-layer inputs are built ``batch_size`` rows at a time."""
    inputs, probs = probe.inputs_and_probs(features[[index]])
    phi_i = kernel.embed(inputs, probs, labels[[index]])[0]
    scores = np.empty(len(candidates))
    for start in range(0, len(candidates), batch_size):
        rows = candidates[start : start + batch_size]
        inputs, probs = probe.inputs_and_probs(features[rows])
        phi_k = kernel.embed(inputs, probs, labels[rows])
        scores[start : start + len(rows)] = KERNEL_SIGN * (phi_k @ phi_i)
    return scores


def rank_counterexamples(
    features,
    labels,
    num_classes,
    index,
    target=None,
    k=5,
    fisher_size=100,
    seed=0,
    C=1.0,
    max_train=None,
    probe=None,
):
    """Finds the counter-examples of sample ``index``.

    Args:
        features: (N, D) features
        labels: (N,) observed int labels
        num_classes: K
        index: the suspicious sample's row
        target (None): the class whose samples are candidates; by default
            the probe's prediction for ``index`` (or, when the probe agrees
            with the label, its most probable other class)
        k (5): how many counter-examples to return
        fisher_size (100): samples in the Fisher subset (CINCER: 30-100)
        seed (0): Fisher subset seed
        C (1.0): the probe's inverse L2 strength
        max_train (None): fit the probe on a random subset of at most this
            many samples
        probe (None): an already fitted :class:`SoftmaxProbe`

    Returns:
        a dict with ``target`` (class index), ``predicted`` (the probe's
        class for ``index``), ``probability`` (the probe's P(observed
        label)), ``indices`` (top-k candidate rows, most incompatible
        first), ``scores`` (their incompatibility) and ``num_candidates``

    Raises:
        HardnessError: bad labels or features, or ``index`` out of range
    """
    labels, num_classes, _ = check_labels(
        labels, num_classes, what="Counter-examples"
    )
    # validated, but kept in its own precision (the probe fits in float64)
    check_features(features, num_rows=len(labels))
    if not 0 <= index < len(labels):
        raise HardnessError(
            "Sample index %d is out of range for %d samples"
            % (index, len(labels))
        )
    if probe is None:
        probe = SoftmaxProbe(
            features, labels, num_classes, C=C, max_train=max_train, seed=seed
        )
    # inputs and probabilities of the rows that need them only (the
    # queried row, the Fisher subset, the candidates in batches): not of
    # all N rows
    own = probe.predict_proba(features[[index]])[0]
    predicted = int(np.argmax(own))
    if target is None:
        target = predicted
        if target == labels[index]:
            order = np.argsort(-own)
            target = int(order[1])
    candidates = counterexample_candidates(labels, index, target)
    result = {
        "target": int(target),
        "predicted": predicted,
        "probability": float(own[labels[index]]),
        "indices": [],
        "scores": [],
        "num_candidates": int(len(candidates)),
    }
    if not len(candidates):
        return result
    subset = fisher_subset(len(labels), fisher_size, seed)
    kernel = FisherKernel(
        *probe.inputs_and_probs(features[subset]), labels[subset]
    )
    scores = incompatibility(
        kernel, probe, features, labels, index, candidates
    )
    order = np.argsort(-scores, kind="stable")[:k]
    result["indices"] = [int(i) for i in candidates[order]]
    result["scores"] = [float(s) for s in scores[order]]
    return result
