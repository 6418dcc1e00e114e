"""
Calibration by known label noise, on arrays: a small, known amount of
label noise of several kinds is injected into the observed labels, and the
response of each detector and each noise-rate estimator to it tells how far
to trust them on these data (see ``docs/methods.md`` section 7).

- :func:`inject_calibration_noise`: the injection (a mix of kinds of
  :mod:`fiftyone_hardness.methods.label_noise`, on a copy of the labels);
- :func:`added_noise`: how much the injection raised the true noise rate,
  which depends on the unknown rate (an injected flip of a sample that was
  already wrong leaves it wrong, or even puts it right);
- :func:`response_slope` and :func:`calibrated_estimate`: one estimator's
  response to the injection, and its estimate corrected where the response
  shows a bias;
- :func:`combine_noise_estimates`: one noise-rate estimate with an interval
  from several estimators.

The defaults (:data:`DEFAULT_INJECTION_RATE`, :data:`SLOPE_TOLERANCE`,
:data:`SLOPE_SPREAD`) were chosen on the digits embeddings with *uniform*
noise and seeds 100-101 only; the benchmark grid evaluates them on the
other kinds of noise and seeds (``docs/benchmark/report.md``).

Memory: O(N) only. :func:`inject_calibration_noise` keeps the labels as
int64, their noisy copy and the mask (``17 N`` bytes) plus the chosen rows
(``8 rate N``; numpy may draw them from a permutation of N, ``8 N``):
at most about ``33 N`` bytes, 33 MB at N = 1M; the estimators work on a
handful of numbers. The cost of calibration is the members' re-runs on the
injected labels (:mod:`~fiftyone_hardness.methods.consensus`), not this.
"""

import logging
from dataclasses import dataclass

import numpy as np

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.label_noise import inject_label_noise

logger = logging.getLogger(__name__)

#: the kinds of noise injected for calibration, in equal parts: a random
#: other class, the next class (structured), and a class-conditional
#: transition (asymmetric)
CALIBRATION_KINDS = ("uniform", "pair", "asymmetric")

#: the kinds :func:`inject_calibration_noise` accepts (those that need no
#: model's probabilities)
INJECTABLE_KINDS = ("uniform", "symmetric", "pair", "adjacent", "asymmetric")

#: the fraction of samples whose label the calibration changes (0.05, 0.1
#: and 0.2 weighed members alike on the selection settings; 0.1 gave the
#: best noise-rate estimate)
DEFAULT_INJECTION_RATE = 0.1

#: an estimator's response slope is trusted as a bias (and its estimate
#: corrected) only when it differs from 1 by more than this: the confident
#: joint's slopes, unbiased on the selection settings, spread over
#: 0.75-1.4 from one run to the next (0.3 corrected them into errors)
SLOPE_TOLERANCE = 0.5

#: the relative uncertainty of one estimator that the interval assumes:
#: twice the narrowest value (0.05) whose intervals held the truth on every
#: selection setting, a margin for kinds of noise that did not choose it
SLOPE_SPREAD = 0.1

#: an estimator whose estimate rises by less than this per unit of added
#: noise does not measure it (left out of the combination)
MIN_RESPONSE = 0.3

#: the calibration draws its samples from its own stream of the seed,
#: ``default_rng([seed, CALIBRATION_STREAM])``: with ``default_rng(seed)``
#: it chose exactly the samples that label noise drawn the usual way with
#: the same seed and rate had changed (e.g. a benchmark's injection at 10%,
#: seed 0), so it added almost no noise and the estimators seemed not to
#: respond. The model of :func:`added_noise` needs a choice independent of
#: the existing noise.
CALIBRATION_STREAM = 0x15CA


@dataclass
class Injection:
    """Known label noise injected for calibration.

    Attributes:
        labels: (N,) the labels with the injected noise
        mask: (N,) bool, where the label was changed
        kinds: the kinds injected, in equal parts
        rate: the fraction of samples changed
        seed: the seed
        num_classes: K
    """

    labels: np.ndarray
    mask: np.ndarray
    kinds: tuple
    rate: float
    seed: int
    num_classes: int

    @property
    def num_injected(self):
        return int(self.mask.sum())

    def added_noise(self, noise_rate):
        """The rise of the true noise rate, given the rate before."""
        return added_noise(
            self.num_injected / float(len(self.mask)),
            noise_rate,
            self.num_classes,
            self.kinds,
        )


def inject_calibration_noise(
    labels,
    num_classes,
    rate=DEFAULT_INJECTION_RATE,
    kinds=CALIBRATION_KINDS,
    seed=0,
):
    """Changes the labels of ``round(rate * N)`` samples (chosen uniformly,
    seeded, from a stream of the seed of its own, see
    :data:`CALIBRATION_STREAM`), split in equal parts between ``kinds``;
    the labels passed in are not modified.

    Args:
        labels: (N,) int array of observed class indices
        num_classes: K (>= 2)
        rate (0.1): the fraction of samples to change, in (0, 1)
        kinds: kinds of :func:`fiftyone_hardness.methods.label_noise.
            inject_label_noise` that need no probabilities (see
            :data:`INJECTABLE_KINDS`)
        seed (0): random seed

    Returns:
        an :class:`Injection`

    Raises:
        HardnessError: bad rate or kinds, fewer than 2 classes, or fewer
            samples than kinds to inject
    """
    labels = np.asarray(labels, dtype=int)
    kinds = tuple(kinds)
    _check_injection(labels, num_classes, rate, kinds)
    rng = np.random.default_rng([int(seed), CALIBRATION_STREAM])
    count = int(round(rate * len(labels)))
    chosen = rng.choice(len(labels), size=count, replace=False)
    noisy = labels.copy()
    for i, (kind, rows) in enumerate(
        zip(kinds, np.array_split(chosen, len(kinds)))
    ):
        if len(rows):
            noisy[rows], _ = inject_label_noise(
                labels[rows],
                num_classes,
                1.0,
                kind=kind,
                seed=int(rng.integers(2**31)) + i,
            )
    return Injection(
        labels=noisy,
        mask=noisy != labels,
        kinds=kinds,
        rate=float(rate),
        seed=int(seed),
        num_classes=int(num_classes),
    )


def _check_injection(labels, num_classes, rate, kinds):
    if not 0 < float(rate) < 1:
        raise HardnessError(
            "Invalid injection rate %r: expected a fraction in (0, 1)" % rate
        )
    unknown = [k for k in kinds if k not in INJECTABLE_KINDS]
    if not kinds or unknown:
        raise HardnessError(
            "Invalid injection kinds %r: expected one or more of %s"
            % (list(kinds), ", ".join(INJECTABLE_KINDS))
        )
    if num_classes < 2:
        raise HardnessError("Calibration by injected noise needs 2 classes")
    if int(round(rate * len(labels))) < len(kinds):
        raise HardnessError(
            "Too few samples (%d) to inject %d kinds of noise at rate %s; "
            "use weighting='agreement'" % (len(labels), len(kinds), rate)
        )


def _back_probability(kind, num_classes):
    """The chance that an injected flip of an already wrong label lands on
    the sample's true class (a random other class of the K - 1; for the
    next class, only when the wrong label was the previous one)."""
    if num_classes <= 2:
        return 1.0
    return 1.0 / (num_classes - 1)


def added_noise(injected_rate, noise_rate, num_classes, kinds):
    """The rise of the true noise rate when a fraction ``injected_rate`` of
    samples, chosen uniformly, gets a new label, given the rate before.

    A chosen sample that was right becomes wrong (+1); one that was wrong
    stays wrong, or becomes right when the new label is its true class
    (-1). So the rise is ``injected_rate * (1 - noise_rate * (1 + b))``
    with ``b`` the chance of landing on the true class, about
    ``1 / (K - 1)``.

    Returns:
        a float
    """
    back = float(np.mean([_back_probability(k, num_classes) for k in kinds]))
    eta = float(np.clip(noise_rate, 0.0, 1.0))
    return float(injected_rate) * max(1.0 - eta * (1.0 + back), 0.0)


def response_slope(estimate, injected_estimate, injection):
    """How much an estimator's estimate rises per unit of true noise added.

    With an estimate proportional to the true rate (``e = s * eta``), the
    rise over the injection is ``s * added_noise(eta)``; solving both
    equations for ``s`` gives ``(e1 - e0) / r + e0 * (1 + b)`` (``r`` the
    injected fraction, ``b`` as in :func:`added_noise`).

    Args:
        estimate: the estimate on the observed labels
        injected_estimate: the estimate after the injection
        injection: the :class:`Injection`

    Returns:
        the slope (1 for an unbiased estimator), or None when an estimate
        is missing
    """
    if estimate is None or injected_estimate is None:
        return None
    rate = injection.num_injected / float(len(injection.mask))
    if rate <= 0:
        return None
    back = float(
        np.mean(
            [
                _back_probability(k, injection.num_classes)
                for k in injection.kinds
            ]
        )
    )
    e0, e1 = float(estimate), float(injected_estimate)
    return (e1 - e0) / rate + e0 * (1.0 + back)


def calibrated_estimate(estimate, slope, tolerance=None):
    """An estimator's estimate, divided by its response slope when the
    slope shows a bias (it differs from 1 by more than ``tolerance``, None
    for :data:`SLOPE_TOLERANCE`).

    Returns:
        a tuple ``(estimate, corrected)``; the estimate is clipped to
        [0, 1]
    """
    tolerance = SLOPE_TOLERANCE if tolerance is None else tolerance
    if slope is None or abs(slope - 1.0) <= tolerance or slope <= 0.05:
        return float(np.clip(estimate, 0.0, 1.0)), False
    return float(np.clip(estimate / slope, 0.0, 1.0)), True


def combine_noise_estimates(
    estimators,
    injection,
    num_samples,
    tolerance=None,
    spread=None,
):
    """One noise-rate estimate, with an interval, from several estimators
    calibrated by their response to the injection.

    An estimator that hardly responds to the injected noise (slope below
    :data:`MIN_RESPONSE`, e.g. a rule that flags almost nothing) is left
    out. Each other one is corrected by :func:`calibrated_estimate` and
    weighted by the inverse of its variance: ``(spread * ref)^2`` (its
    calibration uncertainty, ``ref`` the estimators' median), plus the
    sampling variance ``ref (1 - ref) / N``, plus ``(e - e / slope)^2``
    when its slope was within the tolerance but not 1 (a bias that was not
    corrected). The interval is the weighted mean plus or minus twice the
    larger of its standard error and the estimators' spread around it.

    Args:
        estimators: a dict ``name -> (estimate, injected_estimate)``
        injection: the :class:`Injection`
        num_samples: N
        tolerance (None): see :func:`calibrated_estimate`
        spread (None): the relative uncertainty of one estimator; None for
            :data:`SLOPE_SPREAD`

    Returns:
        a dict with ``estimate``, ``interval`` ``[low, high]`` and
        ``estimators`` ``{name: {"estimate", "injected_estimate", "slope",
        "calibrated", "corrected", "weight", "left_out"}}``; ``estimate``
        and ``interval`` are None when no estimator responded
    """
    spread = SLOPE_SPREAD if spread is None else spread
    table, used = {}, []
    for name, (e0, e1) in estimators.items():
        entry = {
            "estimate": _float(e0),
            "injected_estimate": _float(e1),
            "slope": None,
            "calibrated": None,
            "corrected": False,
            "weight": 0.0,
            "left_out": None,
        }
        table[name] = entry
        if entry["estimate"] is None or entry["injected_estimate"] is None:
            entry["left_out"] = "no estimate"
            continue
        slope = response_slope(e0, e1, injection)
        entry["slope"] = slope
        if slope < MIN_RESPONSE:
            entry["left_out"] = "does not respond to the injected noise"
            continue
        value, corrected = calibrated_estimate(e0, slope, tolerance)
        entry.update(calibrated=value, corrected=corrected)
        used.append(name)
    if not used:
        return {"estimate": None, "interval": None, "estimators": table}
    values = np.array([table[n]["calibrated"] for n in used])
    ref = float(np.clip(np.median(values), 0.01, 0.99))
    variances = []
    for name, value in zip(used, values):
        slope = table[name]["slope"]
        bias = 0.0 if table[name]["corrected"] else value - value / slope
        variances.append(
            (spread * ref) ** 2
            + ref * (1 - ref) / max(num_samples, 1)
            + bias**2
        )
    variances = np.asarray(variances)
    weights = (1.0 / variances) / np.sum(1.0 / variances)
    for name, w in zip(used, weights):
        table[name]["weight"] = float(w)
    estimate = float(np.dot(weights, values))
    error = float(np.sqrt(np.dot(weights**2, variances)))
    scatter = float(np.sqrt(np.dot(weights, (values - estimate) ** 2)))
    half = 2.0 * max(error, scatter)
    return {
        "estimate": estimate,
        "interval": [max(estimate - half, 0.0), min(estimate + half, 1.0)],
        "estimators": table,
    }


def _float(value):
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if np.isfinite(value) else None
