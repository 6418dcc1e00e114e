"""
Known label noise on arrays: pick exactly ``round(rate * N)`` samples
uniformly without replacement (seeded) and give each a *different* class.

Used by the demo dataset, the tests and the benchmark. Kinds (see
``../shared/METHODS.md`` section 4):

- ``symmetric`` / ``uniform``: a uniformly random different class
- ``pair``: ``y -> y + 1 mod K``
- ``adjacent``: ``y -> y +- 1 mod K`` (random sign)
- ``asymmetric``: one Dirichlet(1) transition row per class with a zero
  diagonal, sampled once per seed
- ``confidence`` / ``instance``: the most likely wrong class under
  ``pred_probs`` (out-of-sample probabilities of a clean model), which must
  be given
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
        probs = np.array(pred_probs, dtype=float)[chosen]
        probs[np.arange(len(y)), y] = -np.inf
        new = probs.argmax(axis=1)

    noisy = labels.copy()
    noisy[chosen] = new
    mask = noisy != labels
    return noisy, mask
