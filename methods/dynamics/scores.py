"""
The 13 H-CAT training-dynamics hardness methods, each computed from one
:class:`fiftyone_hardness.methods.dynamics.recorder.TrainingRecord`; see
``docs/methods.md`` section 3. Their names, order and descriptions are
:data:`fiftyone_hardness.methods.dynamics.config.METHOD_DESCRIPTIONS`.

A method is a small class: its :attr:`HardnessMethod.needs` tell the
recorder what to collect, and :meth:`HardnessMethod.compute` turns the
record into a score oriented **higher = harder / more likely mislabeled**,
a flag from a documented rule, and extras. Adding a method is one new class
listed in :data:`METHODS` (and, for a built-in method, one entry of
``METHOD_DESCRIPTIONS``).

Flag rules:

- AUM: ``AUM < 0`` (on average over training, another class has the larger
  logit)
- Data-IQ: the ``hard`` group
- Data Maps: confidence below 1/2 (the hard-to-learn region)
- Forgetting: never learned in any epoch
- Detector: ``P(noisy) > 0.5``
- cleanlab: ``cleanlab.filter.find_label_issues``
- EL2N, GraNd, small loss, prototypicality, VoG, ALLSH, Conf-Agree: the
  top ``noise_rate`` fraction of scores, where ``noise_rate`` is the one
  given, else the estimate of :func:`estimate_noise_rate`
"""

import logging
from dataclasses import dataclass, field

import numpy as np

from fiftyone_hardness.methods.base import HardnessError, top_fraction_flags
from fiftyone_hardness.methods.dynamics.config import METHOD_DESCRIPTIONS

logger = logging.getLogger(__name__)

_EPS = 1e-12


@dataclass
class MethodScore:
    """The output of one method.

    Attributes:
        score: (N,) float, higher = harder
        flag: (N,) bool
        extras: dict mapping a short field suffix to an (N,) array
        results: dict with ``threshold``, ``noise_rate``, ``num_flagged``,
            ``rule`` and extras
    """

    score: np.ndarray
    flag: np.ndarray
    extras: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def estimate_noise_rate(record):
    """The fraction of samples whose AUM is negative: the model, averaged
    over every minibatch update, preferred another class to the observed
    one. Cheap (always recorded) and used for the top-fraction flags."""
    return float(np.mean(record.margins.mean(0) < 0))


def _top_fraction(score, noise_rate):
    flag = top_fraction_flags(score, noise_rate)
    threshold = float(score[flag].min()) if flag.any() else None
    return flag, threshold


class HardnessMethod(object):
    """Base class of a training-dynamics hardness method."""

    #: the method name (field ``{run_key}_{name}_score``)
    name = None
    #: recorder needs beyond ``logits`` and ``margins``
    needs = frozenset()
    #: whether the flag is the top ``noise_rate`` fraction
    top_fraction = True
    #: the flag rule, in words
    rule = "top noise_rate fraction of scores"

    def scores(self, record):
        """Returns ``(score, extras)`` for ``record``."""
        raise NotImplementedError

    def flags(self, score, extras, record):
        """Returns ``(flag, threshold)`` for rules other than top-fraction;
        ``threshold`` is in score units or None."""
        raise NotImplementedError

    def compute(self, record, noise_rate=None):
        """Computes the method on ``record``.

        Args:
            record: a
                :class:`~fiftyone_hardness.methods.dynamics.recorder.TrainingRecord`
            noise_rate (None): the noise rate for top-fraction flags; None
                for :func:`estimate_noise_rate`

        Returns:
            a :class:`MethodScore`
        """
        self.check(record)
        score, extras = self.scores(record)
        score = np.asarray(score, dtype=np.float64)
        results = {"rule": self.rule}
        if self.top_fraction:
            if noise_rate is None:
                noise_rate = estimate_noise_rate(record)
            flag, threshold = _top_fraction(score, noise_rate)
            results["noise_rate"] = float(noise_rate)
            # the rate was given or is the run's shared estimate (the AUM
            # rule's), not this method's own
            results["own_noise_estimate"] = False
        else:
            flag, threshold = self.flags(score, extras, record)
            results["noise_rate"] = float(np.mean(flag))
            results["own_noise_estimate"] = True
        results["threshold"] = threshold
        results["num_flagged"] = int(np.sum(flag))
        return MethodScore(
            score=score,
            flag=np.asarray(flag, dtype=bool),
            extras=extras,
            results=results,
        )

    def check(self, record):
        missing = [
            need
            for need, attr in _NEED_ATTRS.items()
            if need in self.needs and getattr(record, attr) is None
        ]
        if missing:
            raise HardnessError(
                "Method '%s' needs %s, which this training record lacks"
                % (self.name, ", ".join(missing))
            )


_NEED_ATTRS = {
    "features": "features",
    "grand": "grad_norms",
    "vog": "input_grad_var",
    "mc_dropout": "mc_probs",
    "augment": "aug_probs",
    "cv_probs": "cv_probs",
    "calibration": "calib_probs",
}


def confidence_stats(record):
    """Returns ``(confidence, aleatoric, variability)`` of the observed
    label's eval probability over epochs: ``mean_e p``, ``mean_e p(1-p)``
    and ``std_e p``."""
    p = record.label_probs
    return p.mean(0), (p * (1 - p)).mean(0), p.std(0)


class AUM(HardnessMethod):
    """Area under the margin (Pleiss et al. 2020): the mean over every
    minibatch update of ``z_y~ - max_{j != y~} z_j``; score = -AUM."""

    name = "aum"
    top_fraction = False
    rule = "AUM < 0"

    def scores(self, record):
        aum = record.margins.mean(0)
        return -aum, {"value": aum}

    def flags(self, score, extras, record):
        return extras["value"] < 0, 0.0


DATA_IQ_EASY_CONFIDENCE = 0.8
DATA_IQ_HARD_CONFIDENCE = 0.2
DATA_IQ_ALEATORIC = 0.15
_GROUP_LEVEL = {"easy": 0.0, "ambiguous": 1.0, "hard": 2.0}


def data_iq_groups(confidence, aleatoric):
    """Data-IQ's groups: easy (confidence >= 0.8 and aleatoric <= 0.15),
    hard (confidence <= 0.2 and aleatoric <= 0.15), else ambiguous."""
    groups = np.full(len(confidence), "ambiguous", dtype=object)
    low = aleatoric <= DATA_IQ_ALEATORIC
    groups[low & (confidence >= DATA_IQ_EASY_CONFIDENCE)] = "easy"
    groups[low & (confidence <= DATA_IQ_HARD_CONFIDENCE)] = "hard"
    return groups


class DataIQ(HardnessMethod):
    """Data-IQ (Seedat et al. 2022). Its output is a group; the score
    orders by group (hard 2 > ambiguous 1 > easy 0) and within a group by
    ``1 - confidence``: ``score = level(group) + 1 - confidence``."""

    name = "data_iq"
    top_fraction = False
    rule = "group == 'hard'"

    def scores(self, record):
        confidence, aleatoric, _ = confidence_stats(record)
        groups = data_iq_groups(confidence, aleatoric)
        level = np.array([_GROUP_LEVEL[g] for g in groups])
        return level + 1.0 - confidence, {
            "group": groups,
            "confidence": confidence,
            "aleatoric": aleatoric,
        }

    def flags(self, score, extras, record):
        return extras["group"] == "hard", _GROUP_LEVEL["hard"]


class DataMaps(HardnessMethod):
    """Dataset cartography (Swayamdipta et al. 2020): confidence
    ``mean_e p`` and variability ``std_e p``; score = 1 - confidence."""

    name = "data_maps"
    top_fraction = False
    rule = "confidence < 0.5 (hard to learn)"

    def scores(self, record):
        confidence, _, variability = confidence_stats(record)
        return 1.0 - confidence, {
            "confidence": confidence,
            "variability": variability,
        }

    def flags(self, score, extras, record):
        return extras["confidence"] < 0.5, 0.5


class EL2N(HardnessMethod):
    """EL2N (Paul et al. 2021): ``|| softmax(z) - onehot(y~) ||_2`` at the
    early epoch."""

    name = "el2n"

    def scores(self, record):
        score = np.empty(len(record.labels))
        for rows in record.row_chunks(record.num_classes):
            p = record.epoch_probs(record.early_index, rows)
            p[np.arange(len(p)), record.labels[rows]] -= 1.0
            score[rows] = np.linalg.norm(p, axis=1)
        return score, {}


class GraNd(HardnessMethod):
    """GraNd (Paul et al. 2021): the norm of the per-sample gradient of the
    loss with respect to all parameters at the early epoch (exact, in
    closed form: :mod:`fiftyone_hardness.methods.dynamics.gradients`)."""

    name = "grand"
    needs = frozenset(["grand"])

    def scores(self, record):
        return np.asarray(record.grad_norms, dtype=np.float64), {}


def forgetting_counts(record):
    """Returns ``(count, never_learned)``: learned -> forgotten transitions
    of ``argmax_k z_e == y~`` between consecutive epochs, and whether the
    sample was never learned."""
    learned = record.learned()
    count = (learned[:-1] & ~learned[1:]).sum(0)
    return count, ~learned.any(0)


class Forgetting(HardnessMethod):
    """Forgetting events (Toneva et al. 2019) between the eval passes of
    consecutive epochs. Never-learned samples get ``max(count) + 1``, above
    every sample that was learned."""

    name = "forgetting"
    top_fraction = False
    rule = "never learned"

    def scores(self, record):
        count, never = forgetting_counts(record)
        score = count.astype(np.float64)
        score[never] = count.max() + 1.0
        return score, {"count": count.astype(np.int64)}

    def flags(self, score, extras, record):
        _, never = forgetting_counts(record)
        return never, float(score.max()) if never.any() else None


class SmallLoss(HardnessMethod):
    """Small loss: the mean over epochs of the cross-entropy of the eval
    logits with the observed label."""

    name = "loss"

    def scores(self, record):
        return -np.log(np.clip(record.label_probs, _EPS, None)).mean(0), {}


class Prototypicality(HardnessMethod):
    """Prototypicality (Sorscher et al. 2022): cosine distance of the
    normalized penultimate features to the mean normalized feature of the
    observed class."""

    name = "prototypicality"
    needs = frozenset(["features"])

    def scores(self, record):
        # two passes a chunk of samples at a time: the class centroids of
        # the normalized features, then each sample's cosine to its own
        y = record.labels
        chunks = record.row_chunks(record.features.shape[1])
        sums = np.zeros((record.num_classes, record.features.shape[1]))
        for rows in chunks:
            np.add.at(sums, y[rows], _unit_rows(record.features[rows]))
        counts = np.bincount(y, minlength=record.num_classes)
        centroids = sums / np.maximum(counts, 1)[:, None]
        centroids /= np.clip(
            np.linalg.norm(centroids, axis=1, keepdims=True), _EPS, None
        )
        score = np.empty(len(y))
        for rows in chunks:
            f = _unit_rows(record.features[rows])
            score[rows] = 1.0 - (f * centroids[y[rows]]).sum(1)
        return score, {}


def _unit_rows(f):
    f = np.asarray(f, dtype=np.float64)
    return f / np.clip(np.linalg.norm(f, axis=1, keepdims=True), _EPS, None)


def class_normalize(values, labels):
    """Z-scores ``values`` within each observed class (std 0 -> 1)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(values)
    for c in np.unique(labels):
        rows = labels == c
        std = values[rows].std()
        out[rows] = (values[rows] - values[rows].mean()) / (
            std if std > 0 else 1.0
        )
    return out


class VoG(HardnessMethod):
    """Variance of gradients (Agarwal et al. 2022): the variance over
    checkpoints of the input gradient of the observed class (of
    ``log p(y~|x)`` by default, of the logit ``z_y~`` with
    ``vog_target="logit"``; see
    :class:`fiftyone_hardness.methods.dynamics.config.SingleDynamicsConfig`),
    averaged
    over input dims, z-scored within each observed class."""

    name = "vog"
    needs = frozenset(["vog"])

    def scores(self, record):
        return class_normalize(record.input_grad_var, record.labels), {}


class ALLSH(HardnessMethod):
    """ALLSH (Zhang & Plank 2022): ``KL(p(x) || p(aug(x)))`` of the final
    model, averaged over augmented passes (images: flip + noise; vectors:
    Gaussian noise)."""

    name = "allsh"
    needs = frozenset(["augment"])

    def scores(self, record):
        score = np.empty(len(record.labels))
        per_row = record.aug_probs.shape[0] * record.num_classes
        for rows in record.row_chunks(per_row):
            p = np.clip(record.epoch_probs(-1, rows), _EPS, None)
            q = np.clip(
                np.asarray(record.aug_probs[:, rows], dtype=np.float64),
                _EPS,
                None,
            )
            kl = (p[None] * (np.log(p[None]) - np.log(q))).sum(-1)
            score[rows] = kl.mean(0)
        return score, {}


class ConfAgree(HardnessMethod):
    """Conf-Agree: ``1 -`` the mean MC-dropout probability of the predicted
    class (the argmax of the mean); extra ``agreement``, the fraction of
    passes whose argmax is that class."""

    name = "conf_agree"
    needs = frozenset(["mc_dropout"])

    def scores(self, record):
        n = len(record.labels)
        confidence, agreement = np.empty(n), np.empty(n)
        per_row = record.mc_probs.shape[0] * record.num_classes
        for rows in record.row_chunks(per_row):
            mc = np.asarray(record.mc_probs[:, rows], dtype=np.float64)
            pred = mc.mean(0).argmax(1)
            own = np.arange(mc.shape[1])
            confidence[rows] = mc[:, own, pred].mean(0)
            agreement[rows] = (mc.argmax(-1) == pred[None]).mean(0)
        return 1.0 - confidence, {"agreement": agreement}


def trajectory_features(label_probs):
    """Detector features of (E, N) probability trajectories: the E values
    plus their mean, std, min and max -> (N, E + 4)."""
    p = np.asarray(label_probs, dtype=np.float64)
    return np.column_stack([p.T, p.mean(0), p.std(0), p.min(0), p.max(0)])


class Detector(HardnessMethod):
    """A logistic-regression detector trained on the p_e(label)
    trajectories of a calibration run in which clean-looking samples were
    flipped on purpose (positives) against clean-looking unflipped ones
    (negatives); applied to this run's trajectories. Score = P(noisy)."""

    name = "detector"
    needs = frozenset(["calibration"])
    top_fraction = False
    rule = "P(noisy) > 0.5"

    def scores(self, record):
        from sklearn.linear_model import LogisticRegression

        features = trajectory_features(record.calib_probs)
        train = record.calib_flipped | record.calib_clean
        target = record.calib_flipped[train]
        if target.all() or not target.any():
            raise HardnessError(
                "The Detector's calibration run needs flipped and clean "
                "samples"
            )
        model = LogisticRegression(max_iter=2000)
        model.fit(features[train], target)
        prob = model.predict_proba(trajectory_features(record.label_probs))
        return prob[:, 1], {}

    def flags(self, score, extras, record):
        return score > 0.5, 0.5


class Cleanlab(HardnessMethod):
    """Confident learning on out-of-sample (K-fold) probabilities:
    score = 1 - ``cleanlab.rank.get_label_quality_scores`` (self
    confidence); flags from ``cleanlab.filter.find_label_issues``."""

    name = "cleanlab"
    needs = frozenset(["cv_probs"])
    top_fraction = False
    rule = "cleanlab.filter.find_label_issues (prune_by_noise_rate)"

    def scores(self, record):
        from cleanlab.rank import get_label_quality_scores

        quality = get_label_quality_scores(
            record.labels, record.cv_probs, method="self_confidence"
        )
        return 1.0 - quality, {}

    def flags(self, score, extras, record):
        from cleanlab.filter import find_label_issues

        # n_jobs=1: cleanlab's process pool costs more than it saves here,
        # and fails inside spawned worker processes
        flag = find_label_issues(
            record.labels,
            record.cv_probs,
            filter_by="prune_by_noise_rate",
            n_jobs=1,
        )
        return flag, float(score[flag].min()) if flag.any() else None


_CLASSES = {
    m.name: m
    for m in (
        AUM,
        DataIQ,
        DataMaps,
        EL2N,
        GraNd,
        Forgetting,
        SmallLoss,
        Prototypicality,
        VoG,
        ALLSH,
        ConfAgree,
        Detector,
        Cleanlab,
    )
}

#: name -> method class, in H-CAT's order (the names and the order are
#: those of ``METHOD_DESCRIPTIONS``; a name without a class fails here)
METHODS = {name: _CLASSES[name] for name in METHOD_DESCRIPTIONS}

#: the methods that cost nothing beyond the recorder's logits and margins
CHEAP_METHODS = ("aum", "data_iq", "data_maps", "el2n", "loss", "forgetting")


def get_methods(names=None):
    """Returns method instances for ``names`` (None for all 13).

    Raises:
        HardnessError: an unknown name
    """
    if names is None:
        names = list(METHODS)
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise HardnessError(
            "Unknown training-dynamics method(s) %s; choose from %s"
            % (", ".join(map(repr, unknown)), ", ".join(METHODS))
        )
    if not names:
        raise HardnessError("Choose at least one method")
    return [METHODS[n]() for n in dict.fromkeys(names)]


def needs_of(methods):
    """The union of the recorder needs of ``methods``."""
    needs = set()
    for method in methods:
        needs |= set(method.needs)
    return frozenset(needs)
