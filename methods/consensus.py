"""
Consensus of hardness runs: the rank average of the oriented scores of
chosen runs / methods, a flag rule, and their pairwise Spearman agreement.

Members are named as

- ``"run_key"``: the score of a single-method run, or every score of a
  ``dynamics`` run,
- ``"run_key.method"``: one method of a ``dynamics`` run.

Arrays only: the FiftyOne layer resolves each member through the run
schema and hands over its scores and flags
(:meth:`fiftyone_hardness.methods.base.LabeledData.member_scores`). Every
score is oriented higher = harder, so ranks average directly.
"""

import logging
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata, spearmanr

from fiftyone_hardness.methods.base import HardnessError, MethodOutput
from fiftyone_hardness.methods.config import MethodConfig, param

logger = logging.getLogger(__name__)

FLAG_RULE_CHOICES = [
    ("majority", "Flagged by most members"),
    ("top", "Top noise-rate fraction"),
]
FLAG_RULES = tuple(value for value, _ in FLAG_RULE_CHOICES)


@dataclass
class ConsensusConfig(MethodConfig):
    """A consensus of existing hardness runs: members' oriented scores
    combined into one score, with a flag rule."""

    runs: list = param(
        None,
        "Members: run keys (a dynamics run contributes all its methods) or "
        "'run_key.method'",
        kind="strings",
        label="Members",
    )
    rule: str = param(
        "majority",
        "'majority' (flagged by more than half of the members) or 'top' "
        "(the top noise_rate fraction)",
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


def rank_average(scores):
    """Rank-averages oriented scores.

    Args:
        scores: a dict mapping member names to (N,) score arrays, or an
            (M, N) array

    Returns:
        an (N,) array in [0, 1]: the mean over members of each sample's
        normalized rank ``(rank - 1) / (N - 1)`` (ties get their average
        rank)
    """
    matrix = _as_matrix(scores)
    n = matrix.shape[1]
    ranks = np.stack([rankdata(row) for row in matrix])
    return ((ranks - 1) / max(n - 1, 1)).mean(0)


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
    """Combines oriented scores (and flags) of several members.

    Args:
        scores: a dict mapping member names to (N,) oriented score arrays
        flags (None): a dict mapping member names to (N,) bool flags, for
            the ``"majority"`` rule
        rule ("majority"): ``"majority"`` flags samples flagged by more
            than half of the members that have flags; ``"top"`` flags the
            top ``noise_rate`` fraction of the consensus score
        noise_rate (None): for ``"top"``; None for the mean flag rate of
            the members

    Returns:
        a dict with ``score`` (N,), ``flag`` (N,), ``votes`` (N,) (members
        flagging, or None), ``threshold``, ``noise_rate`` and
        ``spearman`` ``{"names": [...], "matrix": [[...]]}``
    """
    from fiftyone_hardness.methods.base import top_fraction_flags

    if rule not in FLAG_RULES:
        raise HardnessError(
            "Unknown flag rule '%s'; use one of %s"
            % (rule, ", ".join(FLAG_RULES))
        )
    names = list(scores)
    score = rank_average(scores)
    flags = {k: np.asarray(v, dtype=bool) for k, v in (flags or {}).items()}
    votes = np.sum([flags[k] for k in flags], axis=0) if flags else None
    threshold = None
    if rule == "majority":
        if not flags:
            raise HardnessError(
                "The 'majority' flag rule needs members with flag fields; "
                "use rule='top' with a noise_rate"
            )
        flag = votes > len(flags) / 2.0
    else:
        if noise_rate is None:
            if not flags:
                raise HardnessError(
                    "The 'top' flag rule needs noise_rate=... when no "
                    "member has flags"
                )
            noise_rate = float(np.mean([f.mean() for f in flags.values()]))
        flag = top_fraction_flags(score, noise_rate)
        threshold = float(score[flag].min()) if flag.any() else None
    rho = spearman_matrix(scores)
    upper = rho[np.triu_indices(len(names), 1)]
    return {
        "score": score,
        "flag": flag,
        "votes": votes,
        "threshold": threshold,
        "noise_rate": float(flag.mean()),
        "spearman": {"names": names, "matrix": rho.tolist()},
        "mean_spearman": float(upper.mean()) if len(upper) else None,
    }


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


def run_consensus(data, config):
    """Registry adapter of ``"consensus"``: the rank average of the
    oriented scores of ``config.runs``.

    Writes ``score`` (rank average in [0, 1], higher = harder), ``flag``
    and ``votes`` (number of members flagging the sample).

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData` whose
            ``load_scores`` resolves the members
        config: a :class:`ConsensusConfig`

    Returns:
        a :class:`fiftyone_hardness.methods.base.MethodOutput`
    """
    scores, flags = resolve_members(data, config.runs)
    data.progress(0.5, "combining %d members" % len(scores))
    out = consensus(
        scores, flags, rule=config.rule, noise_rate=config.noise_rate
    )
    fields = {"score": out["score"], "flag": out["flag"]}
    if out["votes"] is not None:
        fields["votes"] = out["votes"].astype(np.int64)
    results = {
        "members": list(scores),
        "rule": config.rule,
        "threshold": out["threshold"],
        "noise_rate": out["noise_rate"],
        "spearman": out["spearman"],
        "mean_spearman": out["mean_spearman"],
    }
    return MethodOutput(fields=fields, results=results)
