"""
Consensus of hardness runs: one score from the oriented scores of chosen
runs / methods, weighted by how well each finds label noise *on these
data*, a flag rule, one noise-rate estimate with an interval, and the
members' pairwise Spearman agreement. See ``docs/methods.md`` section 7.

Members are named as

- ``"run_key"``: the score of a single-method run, or every score of a
  ``dynamics`` run,
- ``"run_key.method"``: one method of a ``dynamics`` run.

Arrays only: the FiftyOne layer resolves each member through the run
schema and hands over its scores and flags
(:meth:`fiftyone_hardness.methods.base.LabeledData.member_scores`) and how
it was made (:meth:`~fiftyone_hardness.methods.base.LabeledData.
member_runs`: its method and stored config). Every score is oriented
higher = harder.

Weighting (``ConsensusConfig.weighting``):

- ``"calibrated"``: known label noise of several kinds is injected into a
  copy of the labels (:mod:`fiftyone_hardness.methods.noise_estimate`) and
  the members that are cheap to re-run (confident learning on a k-NN vote,
  a logistic-regression probe or stored predictions) are re-run on it. How
  well each finds the injected flips weighs them into a *reference*; every
  member's separation d' is then its agreement with the reference's flags
  on the real labels (a re-run member that did not find the injected flips
  gets none). The weights are the non-negative linear discriminant of the
  members' normal scores (correlated members share their weight; a member
  with no signal gets none). The re-run members' noise-rate estimators are
  calibrated by their response to the injection and combined into one
  estimate with an interval, and the flags are the top fraction of the
  consensus score at that estimate.
- ``"agreement"``: no injection; every member's separation comes from its
  agreement with the other members' equal-weight mean, the noise rate from
  the members' own estimates, the flags from their majority.
- ``"equal"``: the plain rank average of every member.

``results["weighting"]`` says which one ran (``"calibrated"`` falls back
to ``"agreement"`` when no member can be re-run, and says why).

Memory, for N samples and M members, beyond their (M, N) scores and flags:
the (N, M) normal scores (``8 N M`` bytes), the re-run members' scores
(at most ``8 N M`` more), about ``2 x 8 N M`` of centred copies in
:func:`discriminant_weights`, and O(N) per pair for the Spearman matrix;
the correlations are M x M. No N x N array: about 0.2 GB at N = 1M,
M = 6. ``"calibrated"`` adds the embeddings, read once for all re-runs
(``4 N D``, 2 GB at D = 512), and one re-run's own peak at a time (e.g.
confident learning's, :mod:`~fiftyone_hardness.methods.confident_learning`).
"""

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata, spearmanr

from fiftyone_hardness.methods import noise_estimate
from fiftyone_hardness.methods.base import (
    HardnessError,
    MethodOutput,
    top_fraction_flags,
)
from fiftyone_hardness.methods.config import MethodConfig, param

logger = logging.getLogger(__name__)

WEIGHTING_CHOICES = [
    (
        "calibrated",
        "Calibrated on known noise injected into a copy of the labels",
    ),
    ("agreement", "From the members' agreement (no injection)"),
    ("equal", "Equal weights (plain rank average)"),
]
WEIGHTINGS = tuple(value for value, _ in WEIGHTING_CHOICES)

RERUN_CHOICES = [
    ("cheap", "Only cheap members (confident learning) are re-run"),
    ("all", "Every member is re-run (costs one more run of each)"),
]

FLAG_RULE_CHOICES = [
    (
        "auto",
        "The estimated noise rate's top fraction (majority without "
        "calibration)",
    ),
    ("estimate", "Top fraction at the estimated noise rate"),
    ("majority", "Flagged by most members"),
    ("top", "Top noise-rate fraction"),
]
FLAG_RULES = tuple(value for value, _ in FLAG_RULE_CHOICES)

#: the ridge that shrinks the members' correlation towards independence in
#: the discriminant (chosen on the selection settings, see the module
#: docstring of :mod:`fiftyone_hardness.methods.noise_estimate`)
CORRELATION_RIDGE = 0.6

#: where the calibrated weighting takes each member's separation d' from:
#: ``"agreement"`` (every member's agreement with the reference, the
#: combination of the re-run members weighted by how well each found the
#: injected flips; a re-run member that did not find them gets none),
#: ``"injection"`` (the re-run members' d' on the injected flips, the
#: others' agreement) or ``"corrected"`` (as ``"injection"``, the
#: agreement divided by the reference's estimated precision). Chosen on the
#: selection settings: the injected flips rank the re-run members against
#: each other well, but their d' on them is not on the same scale as the
#: others' agreement
SEPARATION_SOURCE = "agreement"

#: the fewest samples (and pseudo-positives) for learned weights; fewer
#: fall back to equal weights
MIN_SAMPLES = 20

#: options that a calibration re-run switches off: extras that cost time
#: and do not change the scores
_RERUN_OVERRIDES = {
    "cleanlab": {
        "remove_and_retrain": False,
        "eval_label_field": None,
        "store_probs": False,
    },
    "rer": {"estimate_probs": False},
}

#: a re-run's AUROC on its own injected flips is at most this close to 1
#: (d' stays finite)
_MAX_AUROC = 0.999


def _check_kinds(value):
    unknown = [k for k in value if k not in noise_estimate.INJECTABLE_KINDS]
    if not value or unknown:
        return "expected one or more of %s" % ", ".join(
            noise_estimate.INJECTABLE_KINDS
        )
    return None


@dataclass
class ConsensusConfig(MethodConfig):
    """A consensus of existing hardness runs: members' oriented scores
    weighted by how well each finds label noise on these data, a flag rule
    and one noise-rate estimate; see ``docs/methods.md`` section 7."""

    runs: list = param(
        None,
        "Members: run keys (a dynamics run contributes all its methods) or "
        "'run_key.method'",
        kind="strings",
        label="Members",
    )
    weighting: str = param(
        "calibrated",
        "How the members are weighed: calibrated on known injected noise, "
        "from their agreement, or equally",
        choices=WEIGHTING_CHOICES,
        label="Weighting",
    )
    rerun: str = param(
        "cheap",
        "With weighting='calibrated': which members are re-run on the "
        "injected labels; the others are weighed from their agreement with "
        "those",
        choices=RERUN_CHOICES,
        label="Members re-run",
    )
    injection_rate: float = param(
        noise_estimate.DEFAULT_INJECTION_RATE,
        "With weighting='calibrated': the fraction of labels changed in the "
        "copy",
        minimum=0,
        maximum=0.5,
        exclusive_minimum=True,
        label="Injected fraction",
    )
    injection_kinds: list = param(
        list(noise_estimate.CALIBRATION_KINDS),
        "With weighting='calibrated': the kinds of noise injected, in equal "
        "parts",
        kind="strings",
        choices=noise_estimate.INJECTABLE_KINDS,
        check=_check_kinds,
        label="Injected kinds",
    )
    rule: str = param(
        "auto",
        "'auto' (the estimated noise rate's top fraction when calibrated, "
        "else the majority of the members' flags), 'estimate', 'majority' "
        "(flagged by more than half of the members) or 'top' (the top "
        "noise_rate fraction)",
        choices=FLAG_RULE_CHOICES,
        label="Flag rule",
    )
    noise_rate: float = param(
        None,
        "For rule='top': the fraction flagged; empty for the members' mean "
        "flag rate",
        kind="float",
        minimum=0,
        maximum=1,
        label="Noise rate (optional)",
    )
    seed: int = param(0, "Seed of the injection", minimum=0, label="Seed")

    def check(self):
        if not self.runs:
            return (
                "runs",
                "A consensus needs runs=[...]: one or more members, run keys "
                "or 'run_key.method'",
            )
        if self.noise_rate is not None and self.rule != "top":
            return (
                "noise_rate",
                "Invalid noise_rate=%r: it only applies with rule='top'"
                % self.noise_rate,
            )
        return None


# --------------------------------------------------------------------------
# Array-level building blocks
# --------------------------------------------------------------------------


def rank_average(scores, weights=None):
    """Rank-averages oriented scores.

    Args:
        scores: a dict mapping member names to (N,) score arrays, or an
            (M, N) array
        weights (None): (M,) non-negative weights; None for equal ones

    Returns:
        an (N,) array in [0, 1]: the (weighted) mean over members of each
        sample's normalized rank ``(rank - 1) / (N - 1)`` (ties get their
        average rank)
    """
    matrix = _as_matrix(scores)
    n = matrix.shape[1]
    ranks = np.stack([rankdata(row) for row in matrix])
    normalized = (ranks - 1) / max(n - 1, 1)
    if weights is None:
        return normalized.mean(0)
    weights = np.asarray(weights, dtype=float)
    return weights @ normalized / max(weights.sum(), 1e-12)


def normal_scores(values):
    """The normal scores of ``values``' ranks, ``Phi^-1((rank - 0.5) /
    N)``: any score's order on one common, unbounded scale (ties share
    their average rank)."""
    values = np.asarray(values, dtype=float)
    return norm.ppf((rankdata(values) - 0.5) / len(values))


def separation(truth, scores):
    """How well ``scores`` separate the ``truth`` samples from the others.

    Returns:
        a tuple ``(auroc, d_prime)`` with ``d' = sqrt(2) Phi^-1(AUROC)``
        (the distance between two unit normals with that AUROC); None for
        both when ``truth`` has one class
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return None, None
    ranks = rankdata(scores)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    auroc = (ranks[truth].sum() - positives * (positives + 1) / 2.0) / (
        positives * negatives
    )
    return float(auroc), _d_prime(auroc)


def has_signal(auroc, num_positives, num_samples, z=2.0):
    """Whether an AUROC is above chance by more than ``z`` standard errors
    (the error of an AUROC of 0.5 between ``num_positives`` and the other
    samples): a member whose scores only agree by chance gets no weight."""
    if auroc is None:
        return False
    n1 = max(int(num_positives), 1)
    n2 = max(int(num_samples) - n1, 1)
    error = np.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))
    return bool(auroc - 0.5 > z * error)


def _d_prime(auroc):
    auroc = float(np.clip(auroc, 1 - _MAX_AUROC, _MAX_AUROC))
    return float(np.sqrt(2.0) * norm.ppf(auroc))


def discriminant_weights(normal, positives, separations, ridge=None):
    """Non-negative weights of the linear discriminant of the members'
    normal scores.

    With unit-variance members whose means differ by ``separations``
    between noisy and clean samples, the best linear combination is
    ``C^-1 d`` (``C`` their within-class correlation). Correlated members
    then share the weight one of them would get alone, and a member that
    adds nothing gets none; the weights are found by non-negative least
    squares (a noise detector is never used backwards), and the correlation
    is shrunk by ``ridge`` towards the identity (fewer samples than
    members, or nearly identical members, stay well posed).

    Args:
        normal: (N, M) normal scores of the members
        positives: (N,) bool, the samples taken as noisy for the within-class
            correlation
        separations: (M,) each member's d'
        ridge (None): the shrinkage, in [0, 1]; None for
            :data:`CORRELATION_RIDGE`

    Returns:
        (M,) non-negative weights summing to 1 (equal weights when no
        member separates)
    """
    from scipy.optimize import nnls

    ridge = CORRELATION_RIDGE if ridge is None else float(ridge)
    normal = np.asarray(normal, dtype=float)
    d = np.maximum(np.nan_to_num(np.asarray(separations, dtype=float)), 0)
    m = normal.shape[1]
    if not d.any():
        return np.full(m, 1.0 / m)
    # a member without signal gets no weight (it would only be used to
    # cancel the others' noise, which is chance on this sample)
    keep = d > 0
    normal, d = normal[:, keep], d[keep]
    positives = np.asarray(positives, dtype=bool)
    centered = np.concatenate(
        [
            normal[positives] - normal[positives].mean(0),
            normal[~positives] - normal[~positives].mean(0),
        ]
    )
    cov = centered.T @ centered / max(len(centered) - 2, 1)
    scale = np.sqrt(np.maximum(np.diag(cov), 1e-12))
    corr = cov / np.outer(scale, scale)
    corr = (1 - ridge) * corr + ridge * np.eye(len(d))
    lower = np.linalg.cholesky(corr)
    solved, _ = nnls(lower.T, np.linalg.solve(lower, d))
    if solved.sum() <= 0:
        solved = d
    weights = np.zeros(m)
    weights[keep] = solved / solved.sum()
    return weights


def reference_precision(d_prime, noise_rate):
    """The precision of the top ``noise_rate`` fraction of a score that
    separates noisy from clean samples by ``d_prime`` (two unit normals),
    when a fraction ``noise_rate`` is noisy."""
    from scipy.optimize import brentq

    eta = float(np.clip(noise_rate, 1e-3, 1 - 1e-3))

    def excess(t):
        return eta * norm.sf(t - d_prime) + (1 - eta) * norm.sf(t) - eta

    threshold = brentq(excess, -20.0, 20.0)
    return float(norm.sf(threshold - d_prime))


def agreement_separation(reference, scores, precision, noise_rate):
    """A member's separation estimated from its agreement with a reference
    flag set (the top ``noise_rate`` fraction of a reference score).

    If the reference flags have precision ``p`` (and flag a fraction
    ``eta``), the mean normal score of a member whose noisy samples score
    ``d`` above its clean ones differs by ``d (p - nu)`` between flagged
    and unflagged samples, ``nu = eta (1 - p) / (1 - eta)`` being the noisy
    fraction left among the unflagged: the estimate divides the observed
    separation by ``p - nu`` (a member that shares the reference's errors is
    overestimated).

    Returns:
        a tuple ``(auroc, d_prime)`` (None when the reference is degenerate)
    """
    auroc, d = separation(reference, scores)
    if auroc is None:
        return None, None
    eta = float(np.clip(noise_rate, 1e-3, 1 - 1e-3))
    factor = precision - eta * (1 - precision) / (1 - eta)
    d = d / max(factor, 0.2)
    return float(norm.cdf(d / np.sqrt(2.0))), float(d)


def injected_separation(mask, scores):
    """A re-run member's separation of the injected flips from every other
    sample.

    The others include the samples that were already noisy, which lowers
    every member's figure alike (by how much depends on how the injected
    flips rank against the real ones, unknown), so it is not corrected:
    the figures compare members with each other.

    Returns:
        a tuple ``(auroc, d_prime)``
    """
    return separation(mask, scores)


def spearman_matrix(scores):
    """The pairwise Spearman rank correlations of the members' scores.

    Args:
        scores: a dict mapping member names to (N,) score arrays

    Returns:
        an (M, M) array (1 on the diagonal; 0 where a member is constant)
    """
    matrix = _as_matrix(scores)
    m = len(matrix)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            if np.ptp(matrix[i]) == 0 or np.ptp(matrix[j]) == 0:
                rho = 0.0
            else:
                rho = float(spearmanr(matrix[i], matrix[j])[0])
            out[i, j] = out[j, i] = rho
    return out


def _as_matrix(scores):
    if isinstance(scores, dict):
        scores = list(scores.values())
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or len(matrix) < 1:
        raise HardnessError("A consensus needs at least one score array")
    return matrix


def consensus(scores, flags=None, rule="majority", noise_rate=None):
    """Combines oriented scores (and flags) of several members with equal
    weights (the rank average).

    Args:
        scores: a dict mapping member names to (N,) oriented score arrays
        flags (None): a dict mapping member names to (N,) bool flags, for
            the ``"majority"`` rule
        rule ("majority"): ``"majority"`` flags samples flagged by more
            than half of the members that have flags; ``"top"`` (or
            ``"estimate"``) flags the top ``noise_rate`` fraction of the
            consensus score
        noise_rate (None): for ``"top"``; None for the mean flag rate of
            the members

    Returns:
        a dict with ``score`` (N,), ``flag`` (N,), ``votes`` (N,) (members
        flagging, or None), ``threshold``, ``noise_rate`` and
        ``spearman`` ``{"names": [...], "matrix": [[...]]}``
    """
    if rule not in FLAG_RULES:
        raise HardnessError(
            "Unknown flag rule '%s'; use one of %s"
            % (rule, ", ".join(FLAG_RULES))
        )
    score = rank_average(scores)
    flags = {k: np.asarray(v, dtype=bool) for k, v in (flags or {}).items()}
    if rule == "auto":
        rule = "majority"
    flag, votes, threshold = _flags(score, flags, rule, noise_rate)
    spearman, mean_spearman = _agreement(scores)
    return {
        "score": score,
        "flag": flag,
        "votes": votes,
        "threshold": threshold,
        "noise_rate": float(flag.mean()),
        "spearman": spearman,
        "mean_spearman": mean_spearman,
    }


def _flags(score, flags, rule, noise_rate):
    """The flags of one rule: ``(flag, votes or None, threshold)``."""
    votes = np.sum(list(flags.values()), axis=0) if flags else None
    if rule == "majority":
        if not flags:
            raise HardnessError(
                "The 'majority' flag rule needs members with flag fields; "
                "use rule='top' with a noise_rate"
            )
        return votes > len(flags) / 2.0, votes, None
    if noise_rate is None:
        if not flags:
            raise HardnessError(
                "The '%s' flag rule needs a noise rate: no member has flags "
                "or an estimate; use rule='top' with noise_rate=..." % rule
            )
        noise_rate = float(np.mean([f.mean() for f in flags.values()]))
    flag = top_fraction_flags(score, noise_rate)
    threshold = float(score[flag].min()) if flag.any() else None
    return flag, votes, threshold


def _agreement(scores):
    names = list(scores)
    rho = spearman_matrix(scores)
    upper = rho[np.triu_indices(len(names), 1)]
    return (
        {"names": names, "matrix": rho.tolist()},
        float(upper.mean()) if len(upper) else None,
    )


# --------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------


def resolve_members(data, runs):
    """Reads the score (and flag) arrays of the consensus members.

    The members' fields are not looked up here: the FiftyOne layer resolves
    each member through the run schema
    (:meth:`fiftyone_hardness.methods.base.LabeledData.member_scores`).

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData`
        runs: member names: ``"run_key"`` or ``"run_key.method"``

    Returns:
        a tuple ``(scores, flags)`` of dicts keyed by member name
        (``run_key`` or ``run_key.method``); a member without flags for
        every sample has no entry in ``flags``

    Raises:
        HardnessError: no members, an unknown member (listing the valid
            ones), missing scores
    """
    if isinstance(runs, str):
        runs = [runs]
    if not runs:
        raise HardnessError(
            "A consensus needs runs=[...]: run keys or 'run_key.method'"
        )
    scores, flags = {}, {}
    for member in runs:
        for name, values, member_flags in data.member_scores(member):
            values = np.asarray(values, dtype=np.float64)
            missing = int(np.sum(~np.isfinite(values)))
            if missing:
                raise HardnessError(
                    "Consensus member '%s' has no score for %d of the %d "
                    "samples; run it on this view first"
                    % (name, missing, len(values))
                )
            scores[name] = values
            if member_flags is not None:
                flags[name] = np.asarray(member_flags, dtype=bool)
    return scores, flags


def member_runs(data, runs):
    """How each member score was made (see
    :meth:`fiftyone_hardness.methods.base.LabeledData.member_runs`), keyed
    by member name; empty for data that do not say."""
    if isinstance(runs, str):
        runs = [runs]
    out = {}
    for member in runs:
        for info in data.member_runs(member):
            out[info["name"]] = info
    return out


def is_cheap(method, config):
    """Whether a run of ``method`` with ``config`` is cheap to re-run:
    confident learning on stored predictions, a k-NN vote or a
    logistic-regression probe (well under the cost of RER or of a training
    run)."""
    if method != "cleanlab":
        return False
    config = config or {}
    return bool(config.get("pred_field")) or config.get("probs", "logreg") in (
        "knn",
        "logreg",
    )


# --------------------------------------------------------------------------
# The "consensus" method
# --------------------------------------------------------------------------


@dataclass
class _Calibration:
    """What the re-runs on injected noise gave.

    Attributes:
        injection: the :class:`~fiftyone_hardness.methods.noise_estimate.
            Injection`
        scores: member name -> (N,) score on the injected labels
        noise_rates: member name -> (real, injected) own estimates
        runs: run key -> seconds of its re-run
        skipped: run key -> why it was not re-run
    """

    injection: object
    scores: dict
    noise_rates: dict
    runs: dict
    skipped: dict

    @property
    def seconds(self):
        return float(sum(self.runs.values()))


def run_consensus(data, config):
    """Registry adapter of ``"consensus"``: a weighted combination of the
    oriented scores of ``config.runs``, in named steps.

    Writes ``score`` (in [0, 1], higher = harder: the normal CDF of the
    standardized weighted normal scores), ``flag`` and, when members have
    flags, ``votes`` (number of members flagging the sample).

    Results: ``members``, ``weights`` (member -> weight, summing to 1; near
    0 for a member with no signal on these data), ``member_quality``
    (member -> ``auroc``, ``d_prime`` and ``source``: ``"injection"`` or
    ``"agreement"``), ``weighting`` (the one that ran) and
    ``weighting_note``, ``calibration`` (what was injected, which runs were
    re-run and how long it took), ``noise_rate`` and
    ``noise_rate_interval`` (the combined estimate), ``noise_estimates``
    (each estimator's own estimate, response and weight), ``rule``,
    ``threshold``, ``spearman`` and ``mean_spearman``.

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData` whose
            ``member_scores`` / ``member_runs`` resolve the members
        config: a :class:`ConsensusConfig`

    Returns:
        a :class:`fiftyone_hardness.methods.base.MethodOutput`
    """
    scores, flags = resolve_members(data, config.runs)
    infos = member_runs(data, config.runs)
    names = list(scores)
    normal = np.column_stack([normal_scores(scores[n]) for n in names])
    weighting, note, calibration = _calibration_step(
        data, config, names, infos
    )
    data.progress(0.8, "weighing %d members" % len(names))
    estimate = _noise_estimate(weighting, calibration, infos, names, data)
    weights, quality = _weights(
        weighting, names, normal, calibration, estimate
    )
    score = _consensus_score(normal, weights)
    rule, flag, votes, threshold = _flag_step(
        config, weighting, score, flags, estimate
    )
    fields = {"score": score, "flag": flag}
    if votes is not None:
        fields["votes"] = votes.astype(np.int64)
    results = _results(
        config,
        names,
        weights,
        quality,
        (weighting, note),
        calibration,
        estimate,
        (rule, threshold, flag),
        scores,
    )
    return MethodOutput(fields=fields, results=results)


def _calibration_step(data, config, names, infos):
    """Decides the weighting and, for ``"calibrated"``, injects the noise
    and re-runs the members: ``(weighting, note, calibration or None)``."""
    weighting, note = _choose_weighting(data, config, names, infos)
    if weighting != "calibrated":
        return weighting, note, None
    data.progress(0.1, "re-running members on injected noise")
    calibration = _calibrate(data, config, names, infos)
    if not calibration.scores:
        note = "no member could be re-run: %s" % "; ".join(
            "%s: %s" % kv for kv in calibration.skipped.items()
        )
        return "agreement", note, calibration
    return weighting, note, calibration


def _consensus_score(normal, weights):
    """The weighted normal scores, standardized, through the normal CDF:
    in [0, 1], higher = harder."""
    combined = normal @ weights
    spread = combined.std()
    if not spread:
        return np.full(len(combined), 0.5)
    return norm.cdf((combined - combined.mean()) / spread)


def _flag_step(config, weighting, score, flags, estimate):
    """The flags of the rule: ``(rule, flag, votes, threshold)``."""
    rule = _resolve_rule(config.rule, weighting, flags)
    rate = config.noise_rate
    if rule == "estimate":
        rate = estimate["estimate"]
    flag, votes, threshold = _flags(score, flags, rule, rate)
    return rule, flag, votes, threshold


def _choose_weighting(data, config, names, infos):
    """The weighting that can run: ``(weighting, note)``."""
    if len(names) == 1:
        return "equal", "a single member"
    if data.num_samples < MIN_SAMPLES:
        return "equal", "fewer than %d samples" % MIN_SAMPLES
    if config.weighting == "calibrated" and not infos:
        return "agreement", (
            "the data do not say how the members were made, so none can be "
            "re-run"
        )
    return config.weighting, None


def _rerun_plan(data, config, names, infos):
    """The runs to re-run: ``({run_key: (method, params)}, {run_key:
    why not})``."""
    from fiftyone_hardness.methods import registry

    plan, skipped = {}, {}
    for name in names:
        info = infos.get(name)
        if info is None:
            continue
        key, method = info["run_key"], info["method"]
        if key in plan or key in skipped:
            continue
        if info.get("label_field") not in (None, data.label_field):
            skipped[key] = (
                "computed on another label field (%s)" % info["label_field"]
            )
        elif method == "consensus":
            skipped[key] = "a consensus"
        elif method not in registry.list_methods():
            skipped[key] = "method '%s' is not registered here" % method
        elif config.rerun == "cheap" and not is_cheap(method, info["config"]):
            skipped[key] = "not cheap to re-run (rerun='all' re-runs it)"
        else:
            plan[key] = (method, dict(info["config"] or {}))
    return plan, skipped


def _calibrate(data, config, names, infos):
    """Injects known noise into a copy of the labels and re-runs the
    planned members on it."""
    plan, skipped = _rerun_plan(data, config, names, infos)
    injection = noise_estimate.inject_calibration_noise(
        data.labels,
        data.num_classes,
        rate=config.injection_rate,
        kinds=config.injection_kinds,
        seed=config.seed,
    )
    noisy = _injected_data(data, injection)
    scores, noise_rates, seconds = {}, {}, {}
    for i, (key, (method, params)) in enumerate(plan.items()):
        data.progress(
            0.1 + 0.7 * i / max(len(plan), 1), "re-running '%s'" % key
        )
        start = time.perf_counter()
        try:
            output = _rerun(noisy, method, params)
        except HardnessError as e:
            # e.g. a class left with too few samples for this method
            skipped[key] = "its re-run failed: %s" % e
            continue
        seconds[key] = time.perf_counter() - start
        for name in names:
            info = infos.get(name)
            if info is None or info["run_key"] != key:
                continue
            values, rate = _member_output(output, info["score"])
            if values is None:
                continue
            scores[name] = values
            noise_rates[name] = (info.get("noise_rate"), rate)
    return _Calibration(injection, scores, noise_rates, seconds, skipped)


def _injected_data(data, injection):
    """The data with the injected labels (the features are read once and
    shared by the re-runs)."""
    cache = {}
    load_vectors = data.load_vectors

    def cached_vectors(path):
        if path not in cache:
            cache[path] = (
                load_vectors(path)
                if load_vectors is not None
                else data.embeddings(path)
            )
        return cache[path]

    return dataclasses.replace(
        data,
        labels=injection.labels,
        progress=lambda fraction, message="": None,
        load_vectors=cached_vectors,
        load_scores=None,
        load_member_runs=None,
    )


def _rerun(data, method, params):
    """Runs ``method`` with a run's stored parameters (minus costly extras)
    on ``data``."""
    from fiftyone_hardness.methods import registry

    config_class = registry.get_spec(method).get_config_class()
    if config_class is None:
        return registry.run_method(method, data, dict(params))
    known = {p.name for p in config_class.parameters()}
    kwargs = {k: v for k, v in params.items() if k in known}
    kwargs.update(
        {
            k: v
            for k, v in _RERUN_OVERRIDES.get(method, {}).items()
            if k in known
        }
    )
    config = config_class.from_kwargs(method=method, **kwargs)
    return registry.run_method(method, data, config)


def _member_output(output, sub):
    """A member's score and own noise estimate in a re-run's output (the
    main score, or sub-method ``sub``'s)."""
    suffix = "score" if sub is None else "%s_score" % sub
    values = output.fields.get(suffix)
    if values is None:
        return None, None
    results = output.results or {}
    if sub is None:
        rate = results.get("noise_rate")
    else:
        entry = (results.get("methods") or {}).get(sub) or {}
        own = entry.get("own_noise_estimate", True)
        rate = entry.get("noise_rate") if own else None
    return np.asarray(values, dtype=np.float64), rate


def _noise_estimate(weighting, calibration, infos, names, data):
    """The consensus's noise-rate estimate: the calibrated combination of
    the re-run members' estimators, or (without calibration) the median of
    the members' own estimates with their range."""
    own = {
        n: infos[n].get("noise_rate")
        for n in names
        if n in infos and infos[n].get("noise_rate") is not None
    }
    if calibration is not None and calibration.scores:
        estimators = {
            n: rates
            for n, rates in calibration.noise_rates.items()
            if rates[0] is not None and rates[1] is not None
        }
        out = noise_estimate.combine_noise_estimates(
            estimators, calibration.injection, data.num_samples
        )
        if out["estimate"] is not None:
            out["calibrated"] = True
            out["own"] = own
            return out
    values = list(own.values())
    return {
        "estimate": float(np.median(values)) if values else None,
        "interval": (
            [float(min(values)), float(max(values))] if values else None
        ),
        "estimators": {},
        "calibrated": False,
        "own": own,
    }


def _weights(weighting, names, normal, calibration, estimate):
    """Each member's weight and how it was judged: ``(weights, quality)``."""
    m = len(names)
    if weighting == "equal":
        return np.full(m, 1.0 / m), {}
    eta = estimate["estimate"]
    if eta is None or not 0 < eta < 1:
        eta = 0.1
    if weighting == "calibrated":
        separations, quality, reference = _calibrated_separations(
            names, normal, calibration, eta
        )
    else:
        separations, quality, reference = _agreement_separations(
            names, normal, eta
        )
    if reference.sum() < 2 or (~reference).sum() < 2:
        return np.full(m, 1.0 / m), quality
    weights = discriminant_weights(normal, reference, separations)
    return weights, quality


def _calibrated_separations(names, normal, calibration, eta):
    """Each member's d' (see :data:`SEPARATION_SOURCE`) and the reference
    flags: the top ``eta`` fraction of the re-run members' combination,
    weighted by how well each found the injected flips."""
    injection = calibration.injection
    n = len(injection.mask)
    quality, separations = {}, np.zeros(len(names))
    rerun = [i for i, name in enumerate(names) if name in calibration.scores]
    for i in rerun:
        auroc, d = injected_separation(
            injection.mask, calibration.scores[names[i]]
        )
        signal = has_signal(auroc, injection.num_injected, n)
        quality[names[i]] = dict(
            _quality(auroc, d, "injection", signal), injected_auroc=auroc
        )
        separations[i] = d if signal else 0.0
    sub = discriminant_weights(
        normal[:, rerun],
        top_fraction_flags(normal[:, rerun] @ separations[rerun], eta),
        separations[rerun],
    )
    reference = top_fraction_flags(normal[:, rerun] @ sub, eta)
    precision = 1.0
    if SEPARATION_SOURCE == "corrected":
        injected = np.column_stack(
            [normal_scores(calibration.scores[names[i]]) for i in rerun]
        )
        _, d_ref = injected_separation(injection.mask, injected @ sub)
        precision = reference_precision(d_ref or 0.0, eta)
    for i, name in enumerate(names):
        if name in calibration.scores and SEPARATION_SOURCE != "agreement":
            continue
        raw, _ = separation(reference, normal[:, i])
        auroc, d = agreement_separation(
            reference, normal[:, i], precision, eta
        )
        signal = has_signal(raw, reference.sum(), n)
        if name in calibration.scores:
            # no signal on the injected flips: none taken from agreement
            signal = signal and quality[name]["signal"]
            quality[name].update(auroc=auroc, d_prime=d, signal=signal)
        else:
            quality[name] = _quality(auroc, d, "agreement", signal)
        separations[i] = d if signal else 0.0
    return separations, quality, reference


def _agreement_separations(names, normal, eta):
    """d' of every member from its agreement with the equal-weight mean of
    the *other* members' normal scores (a member is not its own reference,
    or a score with no signal would agree with itself); no correction, the
    reference's errors being unknown. The reference flags returned (for the
    discriminant's correlation) are those of the mean of all members."""
    total = normal.sum(1)
    m = normal.shape[1]
    quality, separations = {}, np.zeros(len(names))
    for i, name in enumerate(names):
        others = (total - normal[:, i]) / max(m - 1, 1)
        reference = top_fraction_flags(others, eta)
        auroc, d = separation(reference, normal[:, i])
        signal = has_signal(auroc, reference.sum(), len(reference))
        quality[name] = _quality(auroc, d, "agreement", signal)
        separations[i] = d if signal else 0.0
    return separations, quality, top_fraction_flags(total, eta)


def _quality(auroc, d, source, signal):
    return {
        "auroc": None if auroc is None else float(auroc),
        "d_prime": None if d is None else float(d),
        "source": source,
        "signal": bool(signal),
    }


def _resolve_rule(rule, weighting, flags):
    if rule != "auto":
        return rule
    if weighting == "calibrated" or not flags:
        return "estimate"
    return "majority"


def _results(
    config,
    names,
    weights,
    quality,
    weighting,
    calibration,
    estimate,
    flagging,
    scores,
):
    """The run's results (see :func:`run_consensus`)."""
    (weighting, note), (rule, threshold, flag) = weighting, flagging
    spearman, mean_spearman = _agreement(scores)
    if estimate["estimate"] is not None and rule == "estimate":
        noise_rate = estimate["estimate"]
    else:
        noise_rate = float(flag.mean())
    return {
        "members": names,
        "weights": {n: float(w) for n, w in zip(names, weights)},
        "member_quality": quality,
        "weighting": weighting,
        "weighting_requested": config.weighting,
        "weighting_note": note,
        "calibration": _calibration_summary(calibration),
        "rule": rule,
        "threshold": threshold,
        "noise_rate": noise_rate,
        "noise_rate_interval": estimate["interval"],
        "noise_rate_calibrated": bool(estimate.get("calibrated")),
        "noise_estimates": {
            "estimators": estimate["estimators"],
            "own": estimate.get("own", {}),
        },
        "spearman": spearman,
        "mean_spearman": mean_spearman,
    }


def _calibration_summary(calibration):
    if calibration is None:
        return None
    injection = calibration.injection
    return {
        "injected_rate": injection.rate,
        "injected_kinds": list(injection.kinds),
        "num_injected": injection.num_injected,
        "seed": injection.seed,
        "rerun": {k: float(v) for k, v in calibration.runs.items()},
        "not_rerun": dict(calibration.skipped),
        "seconds": calibration.seconds,
    }
