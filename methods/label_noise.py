"""
Known label noise on arrays: pick exactly ``round(rate * N)`` samples
uniformly without replacement (seeded) and give each a *different* class.

Used by the demo dataset, the tests and the benchmark. Kinds (see
``docs/methods.md`` section 4):

- ``symmetric`` / ``uniform``: a uniformly random different class
- ``pair``: ``y -> y + 1 mod K``
- ``adjacent``: ``y -> y +- 1 mod K`` (random sign)
- ``asymmetric``: one Dirichlet(1) transition row per class with a zero
  diagonal, sampled once per seed
- ``confidence`` / ``instance``: the most likely wrong class under
  ``pred_probs`` (out-of-sample probabilities of a clean model), which must
  be given; :func:`clean_model_pred_probs` computes them from features

:func:`inject_human_noise` takes labels from a second annotator where it
disagrees (``human`` noise, as RER does with CIFAR-10N).

Memory: :func:`inject_label_noise` is O(N) (a copy of the labels, the
chosen rows, the mask) plus, for ``confidence`` / ``instance`` noise, the
chosen rows of the probabilities (``8 rate N K`` bytes; the full (N, K)
array is not copied). :func:`clean_model_pred_probs`, a helper of the demo
and the benchmark, holds a float64 copy of the features, a fold's training
copy and scikit-learn's standardized copy of it, and the (N, K) output:
about ``2.6 x 8 N D + 8 N K`` bytes, 11 GB at N = 1M, D = 512, K = 100.
"""

import numpy as np

from fiftyone_hardness.methods.base import HardnessError

LABEL_NOISE_KINDS = (
    "symmetric",
    "uniform",
    "pair",
    "adjacent",
    "asymmetric",
    "confidence",
    "instance",
)


def inject_label_noise(
    labels, num_classes, rate, kind="symmetric", seed=0, pred_probs=None
):
    """Returns noisy labels and the mask of samples whose label changed.

    Args:
        labels: (N,) int array of clean class indices
        num_classes: the number of classes K (>= 2)
        rate: fraction of samples to corrupt, in [0, 1]
        kind: one of :data:`LABEL_NOISE_KINDS`
        seed: random seed
        pred_probs: (N, K) probabilities, required by ``confidence`` and
            ``instance``

    Returns:
        a tuple ``(noisy_labels, mask)``; ``mask.sum() == round(rate * N)``
        and ``noisy_labels[mask] != labels[mask]`` everywhere
    """
    labels = np.asarray(labels, dtype=int)
    n = len(labels)
    if kind not in LABEL_NOISE_KINDS:
        raise HardnessError(
            "Unknown label noise kind '%s'; choose one of %s"
            % (kind, ", ".join(LABEL_NOISE_KINDS))
        )
    if num_classes < 2:
        raise HardnessError("Label noise needs at least 2 classes")
    if not 0 <= rate <= 1:
        raise HardnessError("rate must be in [0, 1], got %s" % rate)

    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=int(round(rate * n)), replace=False)
    y = labels[chosen]
    k = num_classes

    if kind in ("symmetric", "uniform"):
        new = (y + rng.integers(1, k, size=len(y))) % k
    elif kind == "pair":
        new = (y + 1) % k
    elif kind == "adjacent":
        new = (y + rng.choice([-1, 1], size=len(y))) % k
    elif kind == "asymmetric":
        transition = rng.dirichlet(np.ones(k - 1), size=k)
        new = np.empty_like(y)
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            others = np.delete(np.arange(k), c)
            new[rows] = rng.choice(others, size=len(rows), p=transition[c])
    else:
        if pred_probs is None:
            raise HardnessError(
                "'%s' label noise needs pred_probs of a clean model" % kind
            )
        probs = np.asarray(pred_probs, dtype=float)[chosen]
        probs[np.arange(len(y)), y] = -np.inf
        new = probs.argmax(axis=1)

    noisy = labels.copy()
    noisy[chosen] = new
    mask = noisy != labels
    return noisy, mask


def clean_model_pred_probs(
    features, labels, num_classes, seed=0, folds=5, num_threads=1
):
    """Out-of-sample class probabilities of a clean model: a cross-validated
    multinomial logistic regression on ``features`` (standardized), fitted
    on the clean ``labels``. ``confidence`` and ``instance`` noise use them
    to pick each sample's most confusable class.

    Args:
        features: (N, D) array (embeddings or raw features)
        labels: (N,) int array of clean class indices
        num_classes: the number of classes K
        seed: random seed of the fold split
        folds (5): the number of cross-validation folds (reduced to the
            smallest class count when a class has fewer samples)
        num_threads (1): BLAS threads (more threads oversubscribe busy
            machines: 40x slower measured on 2 shared cores)

    Returns:
        an (N, K) float array; every row sums to 1
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    X = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    if X.ndim != 2 or len(X) != len(labels):
        raise HardnessError(
            "features must be an (N, D) array with one row per label"
        )
    counts = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise HardnessError("A clean model needs at least 2 classes")
    folds = int(min(folds, counts[present].min()))
    if folds < 2:
        raise HardnessError(
            "A clean model needs at least 2 samples in every class"
        )
    probs = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=num_threads):
        for train, test in splitter.split(X, labels):
            model = make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=1000)
            )
            model.fit(X[train], labels[train])
            fold_classes = model[-1].classes_
            probs[np.ix_(test, fold_classes)] = model.predict_proba(X[test])
    return probs


def inject_human_noise(labels, annotator_labels, rate=None, seed=0):
    """Label noise made by people: chosen samples take a second annotator's
    label, only where the annotator disagrees (as RER does with the
    CIFAR-10N human labels).

    Args:
        labels: (N,) int array of clean class indices
        annotator_labels: (N,) int array of the second annotator's class
            indices (in the same class list; -1 for no annotation)
        rate (None): the fraction of all N samples to corrupt; exactly
            ``round(rate * N)`` are chosen uniformly among the disagreeing
            samples. None takes every disagreeing sample
        seed: random seed

    Returns:
        a tuple ``(noisy_labels, mask)``, as :func:`inject_label_noise`

    Raises:
        HardnessError: when fewer samples disagree than ``round(rate * N)``
    """
    labels = np.asarray(labels, dtype=int)
    other = np.asarray(annotator_labels, dtype=int)
    if other.shape != labels.shape:
        raise HardnessError(
            "The annotator labels must have one entry per sample"
        )
    disagree = np.flatnonzero((other >= 0) & (other != labels))
    if rate is None:
        chosen = disagree
    else:
        if not 0 <= rate <= 1:
            raise HardnessError("rate must be in [0, 1], got %s" % rate)
        k = int(round(rate * len(labels)))
        if k > len(disagree):
            raise HardnessError(
                "Only %d of %d samples have a second label that disagrees "
                "(%.1f%%); human noise at rate %s needs %d"
                % (
                    len(disagree),
                    len(labels),
                    100.0 * len(disagree) / max(len(labels), 1),
                    rate,
                    k,
                )
            )
        rng = np.random.default_rng(seed)
        chosen = rng.choice(disagree, size=k, replace=False)
    noisy = labels.copy()
    noisy[chosen] = other[chosen]
    mask = noisy != labels
    return noisy, mask
