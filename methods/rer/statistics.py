"""
The RER formulas on per-sample error statistics (``docs/methods.md``
section 1, steps 4-7): error ratios, the chi statistics, the noise-rate
estimate and its calibration constants, the threshold ansatz, class and
dataset difficulty, the mistake probability and the random wrong labels
they are measured against.

Everything here works on :class:`ErrorStatistics`, a few (N,) arrays, never
on the K x N error matrix, so the same formulas serve the chunked training
(:mod:`fiftyone_hardness.methods.rer.autoencoders`) and a full matrix
(:meth:`ErrorStatistics.from_errors`). Numpy only.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.rer.config import REFERENCE_DIFFICULTY_RANGES

logger = logging.getLogger(__name__)


#: The constants of the noise-rate estimate and of the threshold ansatz.
#:
#: ``"reference"``: ``docs/methods.md`` section 1 verbatim: ``eta = (chi0 -
#: chi_rand) / (1 - chi_rand)``; if ``chi_max < 1.12``: ``t = max(1.01, 1 +
#: (1 / chi_rand - 1) / (1 + 10 eta))``, else ``t = 1.01 * chi0 ^ (-1.5 /
#: (1 + 13.8 eta))``.
#:
#: ``"fitted"``: measured for our autoencoders; see the note at the end of
#: this module for the procedure and the data.
CALIBRATIONS = {
    "reference": dict(
        eta_scale=1.0,
        eta_offset=0.0,
        chi_max_switch=1.12,
        t_min=1.01,
        gamma_low=10.0,
        t_scale=1.01,
        gamma_exp=1.5,
        gamma_high=13.8,
    ),
}


@dataclass
class ErrorStatistics:
    """Per-sample running statistics of the reconstruction errors
    ``E[c, i]``, enough for every RER formula without the K x N matrix.

    Attributes:
        own: (N,) ``E[y_i, i]``, the error of the sample's own class
        min1: (N,) smallest error over classes
        arg1: (N,) the class with the smallest error
        min2: (N,) second-smallest error over classes
        total: (N,) sum of the errors over classes
        rand_own: (N,) ``E[y'_i, i]`` for a random wrong label ``y'_i``
        rand_labels: (N,) the random wrong labels
        num_classes: the number of classes K that have an autoencoder
    """

    own: np.ndarray
    min1: np.ndarray
    arg1: np.ndarray
    min2: np.ndarray
    total: np.ndarray
    rand_own: np.ndarray
    rand_labels: np.ndarray
    num_classes: int

    @classmethod
    def from_errors(cls, errors, labels, rand_labels=None):
        """Computes the statistics from a full ``(K, N)`` error matrix."""
        errors = np.asarray(errors, dtype=np.float64)
        labels = np.asarray(labels, dtype=int)
        k, n = errors.shape
        if rand_labels is None:
            rand_labels = random_wrong_labels(labels, k, seed=0)
        order = np.argsort(errors, axis=0, kind="stable")
        cols = np.arange(n)
        return cls(
            own=errors[labels, cols],
            min1=errors[order[0], cols],
            arg1=order[0],
            min2=errors[order[1], cols],
            total=errors.sum(axis=0),
            rand_own=errors[rand_labels, cols],
            rand_labels=np.asarray(rand_labels, dtype=int),
            num_classes=k,
        )


@dataclass
class RERResult:
    """What :func:`fiftyone_hardness.methods.rer.compute_rer` returns.

    Attributes:
        scores: (N,) the RER of each sample (higher = more likely
            mislabeled)
        flags: (N,) bool, RER above the threshold
        preds: (N,) int, the class whose autoencoder reconstructs the
            sample best
        probs: (N,) mistake probabilities, or None
        stats: the :class:`ErrorStatistics`
        results: dataset-level results (JSON-serializable)
        errors: the (K, N) error matrix when ``keep_errors=True``, else None
        losses: (steps, K) training losses per class
    """

    scores: np.ndarray
    flags: np.ndarray
    preds: np.ndarray
    probs: object
    stats: ErrorStatistics
    results: dict
    errors: object = None
    losses: object = field(default=None, repr=False)


def random_wrong_labels(labels, num_classes, seed=0, present=None):
    """Returns a uniformly random label different from each label, among
    the ``present`` classes (default: all ``num_classes``)."""
    labels = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    if present is None:
        present = np.arange(num_classes)
    present = np.asarray(present, dtype=int)
    position = np.searchsorted(present, labels)
    shift = rng.integers(1, len(present), size=len(labels))
    return present[(position + shift) % len(present)]


def _min_other(stats, labels):
    """``min_{c != labels_i} E[c, i]`` from the running statistics."""
    return np.where(stats.arg1 == labels, stats.min2, stats.min1)


def error_ratios(stats, labels):
    """The RER of each sample, ``E[y_i, i] / min_{c != y_i} E[c, i]``."""
    return stats.own / np.maximum(_min_other(stats, labels), 1e-12)


def random_label_ratios(stats):
    """The RERs recomputed with every label replaced by a random wrong one
    (``stats.rand_labels``)."""
    other = _min_other(stats, stats.rand_labels)
    return stats.rand_own / np.maximum(other, 1e-12)


def chi_statistics(stats, labels):
    """Returns ``(chi0, chi_rand)`` of ``docs/methods.md`` section 1,
    step 5."""
    k = stats.num_classes
    avg_without_min = (stats.total - stats.min1) / (k - 1)
    avg_without_min = np.maximum(avg_without_min, 1e-12)
    chi0 = float(np.mean(stats.own / avg_without_min))
    chi_rand = float(np.mean(stats.min1 / avg_without_min))
    return chi0, chi_rand


def get_calibration(calibration):
    """Returns the constants of a named calibration (a key of
    :data:`CALIBRATIONS`), or those of a dict overriding some of the
    reference constants."""
    if isinstance(calibration, dict):
        constants = dict(CALIBRATIONS["reference"])
        constants.update(calibration)
        return constants
    if calibration not in CALIBRATIONS:
        raise HardnessError(
            "Unknown calibration '%s'; choose one of %s"
            % (calibration, ", ".join(CALIBRATIONS))
        )
    return CALIBRATIONS[calibration]


def noise_rate_estimate(chi0, chi_rand, calibration="fitted"):
    """The estimated fraction of mislabeled samples.

    The reference formula is ``eta = (chi0 - chi_rand) / (1 - chi_rand)``;
    a calibration maps it linearly, ``eta_scale * eta + eta_offset``, then
    clips it to ``[0, 1]``.
    """
    constants = get_calibration(calibration)
    raw = (chi0 - chi_rand) / max(1.0 - chi_rand, 1e-12)
    eta = constants["eta_scale"] * raw + constants["eta_offset"]
    return float(np.clip(eta, 0.0, 1.0))


def ansatz_threshold(chi_max, chi0, chi_rand, eta, calibration="fitted"):
    """The RER threshold of ``docs/methods.md`` section 1, step 6, with the
    constants of ``calibration``: samples with RER above it are flagged."""
    c = get_calibration(calibration)
    if chi_max < c["chi_max_switch"]:
        return float(
            max(
                c["t_min"],
                1.0 + (1.0 / chi_rand - 1.0) / (1.0 + c["gamma_low"] * eta),
            )
        )
    return float(
        c["t_scale"]
        * chi0 ** (-c["gamma_exp"] / (1.0 + c["gamma_high"] * eta))
    )


def classification_difficulty(chi_avg, lo, hi):
    """``clip((chi_avg - lo) / (hi - lo), 0, 1)``."""
    return float(np.clip((chi_avg - lo) / max(hi - lo, 1e-12), 0.0, 1.0))


def class_difficulties(ratios, labels, num_classes):
    """The mean RER of each class (NaN for classes without samples)."""
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.bincount(labels, weights=ratios, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def resolve_difficulty_range(value):
    """Returns the ``(lo, hi)`` of a ``difficulty_range`` option: a pair as
    it is, a feature-model name (a key of
    :data:`~fiftyone_hardness.methods.rer.config.REFERENCE_DIFFICULTY_RANGES`)
    its reference range, None as None (the data-driven range)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in REFERENCE_DIFFICULTY_RANGES:
            raise HardnessError(
                "No reference difficulty range for '%s'; known: %s, or pass "
                "(lo, hi)" % (value, ", ".join(REFERENCE_DIFFICULTY_RANGES))
            )
        return REFERENCE_DIFFICULTY_RANGES[value]
    lo, hi = value
    return float(lo), float(hi)


def data_difficulty_range(stats, rand_ratios):
    """The data-driven ``(lo, hi)`` used when the feature model has no
    reference range: ``lo`` is the mean RER if every sample carried the
    label of its best-reconstructing class (``min / second-min``), ``hi``
    the mean RER under uniformly random wrong labels. So 0 = labels as
    consistent with the features as possible, 1 = as bad as random."""
    lo = float(np.mean(stats.min1 / np.maximum(stats.min2, 1e-12)))
    hi = float(np.mean(rand_ratios))
    return lo, max(hi, lo + 1e-6)


def mistake_probability(ratios, rand_ratios, eta, grid_size=1024):
    """Vectorized Appendix-D probability that each sample is mislabeled.

    ``P(mistake | r) = p(r | mistake) * eta / p(r)``, clipped to [0, 1],
    where ``p(r)`` is a Gaussian KDE of the observed RERs and
    ``p(r | mistake)`` a Gaussian KDE of the RERs recomputed with random
    wrong labels. Both KDEs are evaluated on a grid by binning and a
    Gaussian convolution (Silverman's bandwidth), so the cost is
    ``O(N + grid^2)`` instead of a Python loop per sample. In the tails the
    density ratio is unreliable: below the mode of the observed RERs the
    curve is made non-increasing towards small RERs, beyond its maximum
    non-decreasing. Samples get the value interpolated at their RER.

    Args:
        ratios: (N,) the observed RERs
        rand_ratios: (N,) the RERs under random wrong labels
        eta: the noise rate
        grid_size (1024): grid points

    Returns:
        an (N,) float array in [0, 1]
    """
    ratios = np.asarray(ratios, dtype=float)
    rand_ratios = np.asarray(rand_ratios, dtype=float)
    if not eta or eta <= 0:
        return np.zeros(len(ratios))
    lo = min(ratios.min(), rand_ratios.min())
    hi = max(ratios.max(), rand_ratios.max())
    pad = 0.1 * max(hi - lo, 1e-6)
    grid = np.linspace(lo - pad, hi + pad, grid_size)
    p_r = _binned_kde(ratios, grid)
    p_mistake = _binned_kde(rand_ratios, grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where(p_r > 1e-12, p_mistake * eta / p_r, 0.0)
    prob = np.clip(np.nan_to_num(prob), 0.0, 1.0)
    # in the tails, where the observed density vanishes, the ratio of
    # densities is noise: below the mode of the observed RERs the curve is
    # made non-increasing towards small RERs, and beyond its maximum (right
    # of the mode) non-decreasing, since a larger RER means a likelier
    # mistake
    mode = int(np.argmax(p_r))
    prob[: mode + 1] = np.minimum.accumulate(prob[: mode + 1][::-1])[::-1]
    peak = mode + int(np.argmax(prob[mode:]))
    prob[peak:] = np.maximum.accumulate(prob[peak:])
    return np.interp(ratios, grid, prob)


def _binned_kde(values, grid):
    n = len(values)
    std = np.std(values)
    iqr = np.subtract(*np.percentile(values, [75, 25]))
    scale = min(std, iqr / 1.349) if iqr > 0 else std
    bandwidth = max(1.06 * scale * n ** (-0.2), 1e-6)
    step = grid[1] - grid[0]
    counts, _ = np.histogram(
        values, bins=len(grid), range=(grid[0] - step / 2, grid[-1] + step / 2)
    )
    half = int(min(len(grid) - 1, math.ceil(5 * bandwidth / step)))
    offsets = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2)
    density = np.convolve(counts, kernel, mode="same")
    return density / max(density.sum() * step, 1e-300)


def rer_from_statistics(
    stats,
    labels,
    calibration="fitted",
    difficulty_range=None,
    estimate_probs=False,
):
    """Every RER output from the per-sample error statistics.

    Args:
        stats: an :class:`ErrorStatistics`
        labels: (N,) int observed labels
        calibration ("fitted"): a key of :data:`CALIBRATIONS` or a dict
            overriding some of the reference constants
        difficulty_range (None): ``(lo, hi)`` or a feature-model name for
            the ``classification_difficulty`` normalization (see
            :func:`resolve_difficulty_range`); None for the data-driven
            range of :func:`data_difficulty_range`
        estimate_probs (False): also compute the mistake probabilities

    Returns:
        a :class:`RERResult` (without errors and losses)
    """
    labels = np.asarray(labels, dtype=int)
    ratios = error_ratios(stats, labels)
    chi_avg = float(np.mean(ratios))
    chi0, chi_rand = chi_statistics(stats, labels)
    eta = noise_rate_estimate(chi0, chi_rand, calibration)
    chi_max = float(np.max(ratios))
    threshold = ansatz_threshold(chi_max, chi0, chi_rand, eta, calibration)
    flags = ratios > threshold
    rand_ratios = random_label_ratios(stats)
    given = resolve_difficulty_range(difficulty_range)
    if given is None:
        lo, hi = data_difficulty_range(stats, rand_ratios)
        source = "data"
    else:
        lo, hi = given
        source = "given"
    num_classes = int(max(labels.max(), stats.arg1.max()) + 1)
    class_chis = class_difficulties(ratios, labels, num_classes)
    probs = None
    if estimate_probs:
        probs = mistake_probability(ratios, rand_ratios, eta)
    results = dict(
        chi_avg=chi_avg,
        chi0=chi0,
        chi_rand=chi_rand,
        chi_max=chi_max,
        noise_rate=eta,
        noise_rate_raw=(chi0 - chi_rand) / max(1.0 - chi_rand, 1e-12),
        threshold=float(threshold),
        num_flagged=int(flags.sum()),
        classification_difficulty=classification_difficulty(chi_avg, lo, hi),
        difficulty_range=[float(lo), float(hi)],
        difficulty_range_source=source,
        class_chis={
            int(c): float(v)
            for c, v in enumerate(class_chis)
            if np.isfinite(v)
        },
        chi_avg_random_labels=float(np.mean(rand_ratios)),
    )
    return RERResult(
        scores=ratios,
        flags=flags,
        preds=stats.arg1.astype(int),
        probs=probs,
        stats=stats,
        results=results,
    )


# How the "fitted" constants were measured (2026-11, this repository):
#
# 1. Calibration data, all with known injected label noise
#    (:func:`fiftyone_hardness.methods.label_noise.inject_label_noise`) and
#    none of the settings the tests check (digits pixels with 20% symmetric
#    noise at seeds 0/1, clean digits pixels, the backbone embeddings with
#    20% symmetric noise at seed 0): 33 settings =
#    sklearn digits pixels, noise seeds 10 and 11, symmetric 5/10/30/40%,
#    pair 10/20/30%, asymmetric 20%, adjacent 20%; the offline
#    efficientnet_lite0 embeddings of the digit images (64 px), 0/10/30%
#    symmetric and 20% pair; wine, breast cancer, iris and the scikit-image
#    LFW face/non-face subset (raw features), 0/10/20/30% symmetric.
# 2. Each setting was run with the default configuration (objective
#    "umap", 10 epochs, seed = noise seed). Epochs were chosen on the same
#    data: mean AUROC over the noisy settings was 0.923 / 0.956 / 0.940 /
#    0.940 / 0.937 / 0.927 for 5 / 10 / 15 / 20 / 30 / 50 UMAP epochs and
#    0.937 / 0.948 / 0.913 / 0.834 for 5 / 10 / 30 / 100 reconstruction
#    epochs: longer training lets each class autoencoder memorize the
#    mislabeled samples it is fed, which lowers their RER. The "umap"
#    objective at 10 epochs is the default because it ranks best.
# 3. Noise rate: least squares of the true rate on the reference estimate
#    gave ``eta = 1.0168 * raw - 0.0135`` (mean absolute error 0.031 vs 0.034
#    for the reference formula, i.e. the reference formula is nearly
#    calibrated for our trained autoencoders at 10 epochs; at 30+ epochs it
#    underestimates, e.g. -0.015 to -0.075 mean bias).
# 4. Threshold: with that estimate, a grid search over the ansatz constants
#    ``t = t_scale * chi0 ^ (-gamma_exp / (1 + gamma_high * eta))`` (t_scale
#    0.90-1.30, gamma_exp 0-3, gamma_high 0-30, then a finer grid) for the
#    best mean flag F1 over the noisy settings: t_scale 1.01, gamma_exp 0.80,
#    gamma_high 12.5 (mean F1 0.815 vs 0.789 with the reference constants;
#    2-4% of the samples flagged on clean labels). The other branch
#    (``chi_max < 1.12``) was never reached (min chi_max 1.21), so its
#    constants stay the reference ones.
# 5. Later, the default projection on principal components
#    (``pca_components="auto"``,
#    :data:`fiftyone_hardness.methods.rer.projection.AUTO_PCA_VARIANCE`) was
#    chosen on the same kind of calibration data, now scripted with 38
#    settings in ``speed/rer_calibration.py`` (it adds LFW and drops nothing
#    the tests check). Mean AUROC / F1 / noise MAE: 0.961 / 0.825 / 0.035
#    without projection, 0.976 / 0.851 / 0.030 with it. Refitting the
#    constants on the projected runs changed nothing that matters (noise
#    line 1.0176 * raw + 0.0021, same MAE 0.030; best threshold grid F1
#    0.8510 vs 0.8509 with the constants below), so they were kept.
#
# The constants hold for the default objective and epochs; with other
# training settings, measure again (``speed/rer_calibration.py --refit``)
# or use ``calibration="reference"``.
CALIBRATIONS["fitted"] = dict(
    CALIBRATIONS["reference"],
    eta_scale=1.0168,
    eta_offset=-0.0135,
    t_scale=1.01,
    gamma_exp=0.80,
    gamma_high=12.5,
)
