"""
Aggregation and reporting of a hardness benchmark grid, on plain records:
tables of mean figures per method and hardness type, ranks per setting,
stability across seeds, a markdown report and PNG plots.

A *record* is one method evaluated on one setting: a dict with
``hardness``, ``rate``, ``seed``, ``method`` and the figures of
:func:`fiftyone_hardness.benchmarking.metrics.evaluate_scores` (``auroc``,
``auprc``, ``f1``, ...), plus ``seconds`` (the wall time of the run that
produced the score).
"""

import collections
import logging
import os

import numpy as np

from fiftyone_hardness.benchmarking import metrics as evaluation

logger = logging.getLogger(__name__)

#: hardness type -> the family it belongs to in the report
FAMILIES = {
    "uniform": "mislabeling",
    "asymmetric": "mislabeling",
    "adjacent": "mislabeling",
    "instance": "mislabeling",
    "symmetric": "mislabeling",
    "pair": "mislabeling",
    "confidence": "mislabeling",
    "human": "mislabeling",
    "ood_covariate": "near-OOD",
    "domain_shift": "near-OOD",
    "far_ood": "far-OOD",
    "zoom_shift": "atypical",
    "crop_shift": "atypical",
    "atypical": "atypical",
}

#: pairs of types that docs/methods.md section 4 defines as one injection
SAME_INJECTION = [
    ("uniform", "symmetric", "a random different class"),
    ("instance", "confidence", "the most likely wrong class of a clean model"),
]


def _ordered(values):
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def mean_table(records, metric="auroc", by=("method", "hardness")):
    """Mean of ``metric`` over the records of each ``by`` group.

    Returns:
        a dict ``tuple(group values) -> {"mean", "std", "n"}`` (None values
        are left out; groups with none get ``mean`` None)
    """
    groups = collections.defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in by)].append(r)
    return {
        key: evaluation.summarize(rs, keys=[metric])[metric]
        for key, rs in groups.items()
    }


def mean_ranks(records, metric="auroc"):
    """Each method's rank within each setting (hardness, rate, seed) by
    ``metric`` (1 = best, ties share the average rank; a method without a
    value ranks last), averaged over the settings.

    Returns:
        a dict ``method -> {"mean", "std", "n"}``, best first, and per
        family: ``{family: {method: mean rank}}``
    """
    from scipy.stats import rankdata

    settings = collections.defaultdict(dict)
    for r in records:
        value = r.get(metric)
        settings[(r["hardness"], r["rate"], r["seed"])][r["method"]] = (
            -np.inf if value is None else float(value)
        )
    per_method = collections.defaultdict(list)
    per_family = collections.defaultdict(lambda: collections.defaultdict(list))
    for (hardness, _, _), values in settings.items():
        methods = list(values)
        ranks = rankdata([-values[m] for m in methods], method="average")
        family = FAMILIES.get(hardness, "other")
        for m, rank in zip(methods, ranks):
            per_method[m].append(rank)
            per_family[family][m].append(rank)
    overall = {
        m: {
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
            "n": len(v),
        }
        for m, v in per_method.items()
    }
    overall = dict(sorted(overall.items(), key=lambda kv: kv[1]["mean"]))
    families = {
        family: {m: float(np.mean(v)) for m, v in methods.items()}
        for family, methods in per_family.items()
    }
    return overall, families


def stability_table(scores):
    """Stability across seeds: the mean pairwise Spearman correlation of a
    method's scores between the seeds of one (hardness, rate), over the
    samples every seed's clone shares.

    Args:
        scores: a dict ``(hardness, rate, seed, method) -> {source id:
            score}``

    Returns:
        a dict ``(method, hardness) -> mean stability over the rates``
    """
    grouped = collections.defaultdict(list)
    for (hardness, rate, seed, method), table in scores.items():
        grouped[(method, hardness, rate)].append(table)
    per_rate = collections.defaultdict(list)
    for (method, hardness, rate), tables in grouped.items():
        if len(tables) < 2:
            continue
        shared = set(tables[0])
        for t in tables[1:]:
            shared &= set(t)
        shared = sorted(shared)
        if len(shared) < 2:
            continue
        value = evaluation.stability(
            [np.array([t[k] for k in shared], dtype=float) for t in tables]
        )
        if value is not None:
            per_rate[(method, hardness)].append(value)
    return {key: float(np.mean(v)) for key, v in per_rate.items()}


def summarize_grid(records, scores=None):
    """Everything the report shows, as JSON-serializable dicts.

    Returns:
        a dict with ``methods`` (best mean rank first), ``types``,
        ``auroc`` / ``auprc`` / ``f1`` (method -> type -> mean),
        ``auroc_by_rate`` (method -> type -> rate -> mean), ``ranks``,
        ``family_ranks``, ``noise_rate_abs_error`` (method -> type -> mean,
        for methods with an estimate), ``stability`` (method -> type ->
        mean Spearman) and ``seconds`` (method -> mean run time)
    """
    ranks, family_ranks = mean_ranks(records)
    methods = list(ranks)
    types = _ordered(r["hardness"] for r in records)
    # a noise-rate estimate targets label noise: judge it on those types
    labels_only = [
        r for r in records if FAMILIES.get(r["hardness"]) == "mislabeling"
    ]
    errors = _by_method_and_type(
        labels_only, "noise_rate_abs_error", methods, types
    )
    seconds = mean_table(records, "seconds", by=("method",))
    out = {
        "methods": methods,
        "types": types,
        "auroc": _by_method_and_type(records, "auroc", methods, types),
        "auprc": _by_method_and_type(records, "auprc", methods, types),
        "f1": _by_method_and_type(records, "f1", methods, types),
        "auroc_by_rate": _auroc_by_rate(records),
        "ranks": ranks,
        "family_ranks": family_ranks,
        "noise_rate_abs_error": {m: v for m, v in errors.items() if v},
        "seconds": {m: seconds[(m,)]["mean"] for m in methods},
    }
    consensus = consensus_summary(records)
    if consensus:
        out["consensus"] = consensus
    if scores:
        stab = stability_table(scores)
        out["stability"] = {
            m: {t: stab[(m, t)] for t in types if (m, t) in stab}
            for m in methods
        }
    return out


#: where the defaults of the calibrated consensus and of its noise-rate
#: estimate were chosen (``speed/consensus_calibration.py``), and so which
#: settings of a grid only evaluate them
DEFAULTS_CHOSEN_ON = {
    "features": "digits, efficientnet_lite0 embeddings (64 px)",
    "noise": "uniform",
    "rates": [0.05, 0.1, 0.2, 0.3, 0.4],
    "seeds": [100, 101],
    "script": "speed/consensus_calibration.py",
    "note": "They were chosen before the calibration's choice of samples "
    "got a random stream of its own (it had coincided with noise drawn "
    "with the same seed and rate) and were not chosen again after it.",
}

#: the consensus's goal margin for the noise-rate estimate
NOISE_RATE_GOAL = 0.03

#: the rates on which the noise-rate estimate is judged
NOISE_RATE_GOAL_RATES = (0.05, 0.4)

#: the mislabeling types that are the kind of noise that chose the
#: defaults (``symmetric`` is the same injection as ``uniform``): their
#: columns are reported, but the goals are judged on the others
SELECTION_KINDS = ("uniform", "symmetric")

#: the calibrated consensus (the default), whose goals the report judges
CALIBRATED = "consensus"


def consensus_summary(records):
    """How each consensus run of a grid compares with its members.

    A consensus record (``consensus: True``) is compared, setting by
    setting, with the records of the same setting that are not consensus
    runs (its members): per mislabeling type, its mean AUROC and F1 against
    the best member's (the member with the best mean in that column), and
    how many settings it won; per type and rate, its noise-rate estimate
    against the truth (error, interval coverage); and the time of its
    calibration against the members' run times.

    Returns:
        a dict with ``columns`` (type -> consensus -> figures), ``noise``
        (consensus -> type -> rate -> figures), ``cost`` and ``weighting``
        (consensus -> weighting that ran -> count); empty without consensus
        records
    """
    consensus = [r for r in records if r.get("consensus")]
    if not consensus:
        return {}
    members = [r for r in records if not r.get("consensus")]
    labels = [
        r for r in records if FAMILIES.get(r["hardness"]) == "mislabeling"
    ]
    names = _ordered(r["method"] for r in consensus)
    types = _ordered(r["hardness"] for r in labels)
    weighting = collections.defaultdict(collections.Counter)
    for r in consensus:
        weighting[r["method"]][str(r.get("weighting"))] += 1
    out = {
        "columns": {
            t: {
                name: _versus_best_member(records, name, t, members)
                for name in names
            }
            for t in types
        },
        "noise": {
            name: _noise_by_rate([r for r in labels if r["method"] == name])
            for name in names
        },
        "noise_by_rate": _noise_by_rate_and_group(labels, names),
        "cost": _calibration_cost(consensus, members),
        "weighting": {k: dict(v) for k, v in weighting.items()},
        "selection_kinds": [t for t in types if t in SELECTION_KINDS],
    }
    out["goals"] = _goals(out, names)
    return out


def _versus_best_member(records, name, hardness, members):
    """One consensus in one column: its mean AUROC / F1, the best
    member's, and the settings it won."""
    mine = [
        r for r in records if r["method"] == name and r["hardness"] == hardness
    ]
    column = [r for r in members if r["hardness"] == hardness]
    out = {"settings": len(mine)}
    for metric in ("auroc", "f1"):
        table = mean_table(column, metric, by=("method",))
        means = {
            m[0]: v["mean"] for m, v in table.items() if v["mean"] is not None
        }
        value = evaluation.summarize(mine, keys=[metric])[metric]["mean"]
        best = max(means, key=means.get) if means else None
        out[metric] = value
        out["best_" + metric] = [best, means.get(best)]
        out["wins_" + metric] = _setting_wins(mine, column, metric)
        out["margin_" + metric] = (
            None
            if value is None or means.get(best) is None
            else float(value - means[best])
        )
    return out


def _setting_wins(mine, column, metric):
    """In how many settings the consensus beat every member."""
    best = collections.defaultdict(lambda: -np.inf)
    for r in column:
        if r.get(metric) is not None:
            key = (r["rate"], r["seed"])
            best[key] = max(best[key], r[metric])
    return int(
        sum(
            1
            for r in mine
            if r.get(metric) is not None
            and r[metric] > best[(r["rate"], r["seed"])]
        )
    )


def _noise_by_rate(records):
    """``{type: {rate: figures}}`` of a noise-rate estimate: mean estimate
    and truth, mean and largest absolute error, the fraction of settings
    within :data:`NOISE_RATE_GOAL` and covered by the interval."""
    groups = collections.defaultdict(list)
    for r in records:
        if r.get("noise_rate_estimate") is not None:
            groups[(r["hardness"], r["rate"])].append(r)
    out = collections.defaultdict(dict)
    for (hardness, rate), rs in groups.items():
        errors = [r["noise_rate_abs_error"] for r in rs]
        covered = [
            r["noise_rate_covered"]
            for r in rs
            if r.get("noise_rate_covered") is not None
        ]
        out[hardness][str(rate)] = {
            "estimate": float(np.mean([r["noise_rate_estimate"] for r in rs])),
            "truth": float(np.mean([r["noise_rate_true"] for r in rs])),
            "abs_error": float(np.mean(errors)),
            "max_abs_error": float(np.max(errors)),
            "within_goal": float(
                np.mean([e <= NOISE_RATE_GOAL + 1e-9 for e in errors])
            ),
            "covered": float(np.mean(covered)) if covered else None,
            "n": len(rs),
        }
    return dict(out)


def _noise_by_rate_and_group(labels, names):
    """The noise-rate estimates by injected rate, pooled over the
    mislabeling types that did not choose the defaults (``"evaluation"``)
    and over those that did (``"selection"``): each consensus's figures
    (see :func:`_noise_figures`) and each member's own estimate's mean
    absolute error, ``{group: {rate: {"consensus": {name: figures},
    "members": {method: figures}}}}``."""
    out = {}
    groups = {
        "evaluation": [
            r for r in labels if r["hardness"] not in SELECTION_KINDS
        ],
        "selection": [r for r in labels if r["hardness"] in SELECTION_KINDS],
    }
    for group, rs in groups.items():
        by_rate = collections.defaultdict(
            lambda: {"consensus": {}, "members": {}}
        )
        estimated = [r for r in rs if r.get("noise_rate_estimate") is not None]
        for (method, rate), table in _group(
            estimated, ("method", "rate")
        ).items():
            kind = "consensus" if table[0].get("consensus") else "members"
            if kind == "consensus" and method not in names:
                continue
            by_rate[str(rate)][kind][method] = _noise_figures(table)
        if by_rate:
            out[group] = {
                rate: by_rate[rate] for rate in sorted(by_rate, key=float)
            }
    return out


def _group(records, keys):
    groups = collections.defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _noise_figures(records):
    """Mean estimate and truth, mean / largest absolute error, the fraction
    within :data:`NOISE_RATE_GOAL`, interval coverage and mean width."""
    errors = [r["noise_rate_abs_error"] for r in records]
    covered = [
        r["noise_rate_covered"]
        for r in records
        if r.get("noise_rate_covered") is not None
    ]
    widths = [
        r["noise_rate_interval"][1] - r["noise_rate_interval"][0]
        for r in records
        if r.get("noise_rate_interval")
    ]
    return {
        "estimate": float(
            np.mean([r["noise_rate_estimate"] for r in records])
        ),
        "truth": float(np.mean([r["noise_rate_true"] for r in records])),
        "error": (
            float(np.mean([r["noise_rate_error"] for r in records]))
            if all(r.get("noise_rate_error") is not None for r in records)
            else None
        ),
        "abs_error": float(np.mean(errors)),
        "max_abs_error": float(np.max(errors)),
        "within_goal": float(
            np.mean([e <= NOISE_RATE_GOAL + 1e-9 for e in errors])
        ),
        "covered": float(np.mean(covered)) if covered else None,
        "width": float(np.mean(widths)) if widths else None,
        "n": len(records),
    }


def _goals(consensus, names):
    """The goals of the calibrated consensus, judged on the mislabeling
    types that did not choose its defaults: in how many columns it beats
    its best member on AUROC and on F1, and how many settings at rates in
    :data:`NOISE_RATE_GOAL_RATES` have a noise-rate estimate within
    :data:`NOISE_RATE_GOAL` of the truth (or in its interval)."""
    name = CALIBRATED if CALIBRATED in names else (names or [None])[0]
    if name is None:
        return {}
    columns = {
        t: by_name[name]
        for t, by_name in consensus["columns"].items()
        if t not in SELECTION_KINDS and name in by_name
    }
    out = {"consensus": name, "columns": sorted(columns)}
    for metric in ("auroc", "f1"):
        beaten = [
            t for t, f in columns.items() if (f["margin_" + metric] or 0) > 0
        ]
        out[metric] = {
            "beats": len(beaten),
            "of": len(columns),
            "not_beaten": sorted(set(columns) - set(beaten)),
        }
    low, high = NOISE_RATE_GOAL_RATES
    rates = consensus["noise_by_rate"].get("evaluation", {})
    within = covered = n = 0
    failing = []
    for rate, figures in rates.items():
        if not low - 1e-9 <= float(rate) <= high + 1e-9:
            continue
        f = figures["consensus"].get(name)
        if f is None:
            continue
        within += round(f["within_goal"] * f["n"])
        covered += round((f["covered"] or 0) * f["n"])
        n += f["n"]
        if f["abs_error"] > NOISE_RATE_GOAL:
            failing.append(rate)
    out["noise"] = {
        "within": int(within),
        "covered": int(covered),
        "of": int(n),
        "rates_failing_on_average": failing,
    }
    return out


def _calibration_cost(consensus, members):
    """Mean calibration time of the calibrated consensus runs against the
    members' mean run times (a run's time once per setting)."""
    calibration = [
        r["calibration_seconds"]
        for r in consensus
        if r.get("calibration_seconds") is not None
    ]
    runs = collections.defaultdict(dict)
    for r in members:
        runs[r["run_key"]][(r["hardness"], r["rate"], r["seed"])] = r[
            "seconds"
        ]
    # setting by setting: the calibration against one run of the members
    # it re-ran, in the same process
    within = []
    for r in consensus:
        setting = (r["hardness"], r["rate"], r["seed"])
        rerun_here = [runs[k].get(setting) for k in r.get("rerun") or []]
        if r.get("calibration_seconds") is None or not rerun_here:
            continue
        if None in rerun_here:
            continue
        within.append(r["calibration_seconds"] <= sum(rerun_here))
    run_seconds = {
        k: float(np.mean(list(v.values()))) for k, v in runs.items()
    }
    rerun = _ordered(k for r in consensus for k in (r.get("rerun") or []))
    cheapest = min(run_seconds, key=run_seconds.get) if run_seconds else None
    totals = collections.defaultdict(list)
    for r in consensus:
        if r.get("seconds") is not None:
            totals[r["run_key"]].append(r["seconds"])
    return {
        "calibration": float(np.mean(calibration)) if calibration else None,
        "calibration_max": float(np.max(calibration)) if calibration else None,
        "runs": run_seconds,
        "rerun": rerun,
        "rerun_seconds": float(
            sum(run_seconds[k] for k in rerun if k in run_seconds)
        ),
        "cheapest": [cheapest, run_seconds.get(cheapest)],
        "within_rerun": [int(sum(within)), len(within)],
        "consensus_runs": {
            k: float(np.mean(v)) for k, v in totals.items() if v
        },
    }


def _by_method_and_type(records, metric, methods, types):
    """``{method: {type: mean of metric}}``, leaving out missing means."""
    table = mean_table(records, metric)
    return {
        m: {
            t: table[(m, t)]["mean"]
            for t in types
            if (m, t) in table and table[(m, t)]["mean"] is not None
        }
        for m in methods
    }


def _auroc_by_rate(records):
    """``{method: {type: {rate: mean AUROC}}}``, rates as strings (JSON
    keys)."""
    by_rate = mean_table(records, "auroc", by=("method", "hardness", "rate"))
    out = collections.defaultdict(lambda: collections.defaultdict(dict))
    for (m, t, rate), value in by_rate.items():
        out[m][t][str(rate)] = value["mean"]
    return {m: dict(v) for m, v in out.items()}


def _cell(value, fmt="%.3f"):
    return "-" if value is None else fmt % value


def _table(summary, metric, fmt="%.3f"):
    types = summary["types"]
    lines = [
        "| method | " + " | ".join(types) + " | mean |",
        "|---" * (len(types) + 2) + "|",
    ]
    for m in summary["methods"]:
        row = summary[metric].get(m, {})
        values = [row.get(t) for t in types]
        present = [v for v in values if v is not None]
        mean = float(np.mean(present)) if present else None
        lines.append(
            "| %s | " % m
            + " | ".join(_cell(v, fmt) for v in values)
            + " | %s |" % _cell(mean, fmt)
        )
    return "\n".join(lines)


def best_per_type(summary, metric="auroc"):
    """Returns ``{type: (method, value)}``: the best method per type."""
    out = {}
    for t in summary["types"]:
        candidates = [
            (summary[metric][m][t], m)
            for m in summary["methods"]
            if t in summary[metric].get(m, {})
        ]
        if candidates:
            value, method = max(candidates)
            out[t] = (method, value)
    return out


def markdown_report(summary, config, plots=None):
    """The benchmark report as markdown.

    Args:
        summary: the output of :func:`summarize_grid`
        config: a dict describing the grid (dataset, types, rates, seeds,
            methods, features, wall time, machine)
        plots (None): a dict ``title -> relative PNG path`` to embed
    """
    lines = _header_section(config)
    lines += _rank_section(summary)
    lines += _best_section(summary)
    lines += _metric_sections(summary)
    lines += _noise_rate_section(summary)
    lines += _consensus_sections(summary, config)
    lines += _stability_section(summary)
    lines += _time_section(summary)
    for title, path in (plots or {}).items():
        lines += ["", "## " + title, "", "![%s](%s)" % (title, path)]
    return "\n".join(lines) + "\n"


def _header_section(config):
    """The title, how to read the figures, and the grid that was run."""
    lines = [
        "# Hardness benchmark: %s" % config.get("dataset", ""),
        "",
        "Known hardness was injected into clones of the dataset "
        "(`fiftyone_hardness.benchmarking.injection`) and every method "
        "scored each clone; "
        "perturbed samples are the positives and every score is oriented "
        "higher = harder, so 0.5 AUROC is chance and below 0.5 means the "
        "method ranks the injected samples as *easier* than the rest.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        lines.append("| %s | %s |" % (key, value))
    return lines


def _rank_section(summary):
    """Mean ranks, overall and per family of hardness types."""
    lines = ["", "## Mean rank (AUROC, 1 = best, over every setting)", ""]
    families = {}
    for t in summary["types"]:
        families.setdefault(FAMILIES.get(t, "other"), []).append(t)
    lines += [
        "Families: "
        + "; ".join(
            "%s = %s" % (f, ", ".join(ts))
            for f, ts in sorted(families.items())
        )
        + ".",
        "",
    ]
    same = [
        (a, b, why)
        for a, b, why in SAME_INJECTION
        if a in summary["types"] and b in summary["types"]
    ]
    if same:
        lines += [
            " ".join(
                "`%s` and `%s` are the same injection under two names (%s), "
                "so their columns match." % (a, b, why)
                for a, b, why in same
            ),
            "",
        ]
    family_names = sorted(summary["family_ranks"])
    lines += ["| method | mean rank | " + " | ".join(family_names) + " |"]
    lines += ["|---|---|" + "---|" * len(family_names)]
    for m, r in summary["ranks"].items():
        fam = [
            _cell(summary["family_ranks"][f].get(m), "%.1f")
            for f in family_names
        ]
        lines.append("| %s | %.2f | %s |" % (m, r["mean"], " | ".join(fam)))
    return lines


def _best_section(summary):
    lines = ["", "## Best method per hardness type (AUROC)", ""]
    for t, (m, value) in best_per_type(summary).items():
        lines.append("- **%s**: %s (%.3f)" % (t, m, value))
    return lines


def _metric_sections(summary):
    """One table (method x hardness type) per metric."""
    sections = [
        ("AUROC (mean over rates and seeds)", "auroc", "%.3f"),
        ("AUPRC", "auprc", "%.3f"),
        ("F1 of each method's own flags", "f1", "%.3f"),
    ]
    lines = []
    for title, metric, fmt in sections:
        lines += ["", "## " + title, "", _table(summary, metric, fmt)]
    return lines


def _noise_rate_section(summary):
    if not summary.get("noise_rate_abs_error"):
        return []
    return [
        "",
        "## Noise-rate estimate: mean absolute error",
        "",
        "Only methods that estimate a noise rate, on the mislabeling "
        "types; the truth is the injected fraction.",
        "",
        _table(
            dict(summary, methods=list(summary["noise_rate_abs_error"])),
            "noise_rate_abs_error",
        ),
    ]


def _consensus_sections(summary, config=None):
    """The consensus against its best member, its noise-rate estimate, the
    cost of its calibration and where its defaults were chosen."""
    consensus = summary.get("consensus")
    if not consensus:
        return []
    lines = _defaults_section(consensus, config or {})
    lines += _goals_section(consensus)
    lines += _versus_section(consensus)
    lines += _noise_by_rate_section(consensus)
    lines += _consensus_noise_section(consensus)
    lines += _cost_section(consensus)
    return lines


def _defaults_section(consensus=None, config=None):
    chosen = DEFAULTS_CHOSEN_ON
    lines = [
        "",
        "## Consensus: where its defaults were chosen",
        "",
        "The defaults of the calibrated consensus and of its noise-rate "
        "estimate (injected fraction, correlation ridge, slope tolerance, "
        "interval spread) were chosen by `%s` on %s with **%s** noise at "
        "rates %s and seeds %s only. Every other column below "
        "(structured and instance noise, seeds of this grid) only "
        "evaluates them; the `%s` column (and `symmetric`, the same "
        "injection) is the kind that chose them, on other seeds."
        % (
            chosen["script"],
            chosen["features"],
            chosen["noise"],
            ", ".join(str(r) for r in chosen["rates"]),
            ", ".join(str(s) for s in chosen["seeds"]),
            chosen["noise"],
        )
        + (" " + chosen["note"] if chosen.get("note") else ""),
    ]
    columns = list((consensus or {}).get("columns") or {})
    evaluated = [t for t in columns if t not in SELECTION_KINDS]
    if evaluated:
        rates = (config or {}).get("mislabeling rates") or []
        seeds = (config or {}).get("seeds") or []
        lines += [
            "",
            "Settings that evaluated them (this grid): %s noise%s%s. "
            "Nothing in this grid chose or tuned a default; the goals "
            "below are judged on these kinds only."
            % (
                ", ".join("**%s**" % t for t in evaluated),
                (
                    " at rates %s" % ", ".join(str(r) for r in rates)
                    if rates
                    else ""
                ),
                (
                    ", seeds %s" % ", ".join(str(s) for s in seeds)
                    if seeds
                    else ""
                ),
            ),
        ]
    return lines


def _goals_section(consensus):
    """The goals of issue 15 on the kinds that did not choose the
    defaults, met or not."""
    goals = consensus.get("goals") or {}
    if not goals.get("columns"):
        return []
    lines = [
        "",
        "## Consensus goals (kinds that did not choose the defaults)",
        "",
        "Judged for `%s` on the columns %s."
        % (
            goals["consensus"],
            ", ".join("`%s`" % t for t in goals["columns"]),
        ),
        "",
    ]
    for metric, title in (("auroc", "AUROC"), ("f1", "F1 of its own flags")):
        g = goals[metric]
        met = g["beats"] == g["of"]
        lines.append(
            "- Beats its best member on %s in every column: **%s** "
            "(%d of %d columns%s)."
            % (
                title,
                "met" if met else "not met",
                g["beats"],
                g["of"],
                (
                    ""
                    if met
                    else "; not in %s"
                    % ", ".join("`%s`" % t for t in g["not_beaten"])
                ),
            )
        )
    noise = goals.get("noise") or {}
    if noise.get("of"):
        met = noise["within"] == noise["of"]
        failing = noise["rates_failing_on_average"]
        lines.append(
            "- Combined noise-rate estimate within %.2f of the truth at "
            "rates %s-%s: **%s** (%d of %d settings; the interval holds "
            "the truth in %d of %d%s)."
            % (
                NOISE_RATE_GOAL,
                NOISE_RATE_GOAL_RATES[0],
                NOISE_RATE_GOAL_RATES[1],
                "met" if met else "not met",
                noise["within"],
                noise["of"],
                noise["covered"],
                noise["of"],
                (
                    "; mean error above %.2f at rates %s"
                    % (NOISE_RATE_GOAL, ", ".join(failing))
                    if failing
                    else ""
                ),
            )
        )
    return lines


def _noise_by_rate_section(consensus):
    """Per injected rate: each consensus's error, coverage and interval
    width next to every member's own estimate's error."""
    lines = []
    titles = {
        "evaluation": "kinds that did not choose the defaults",
        "selection": "the kind that chose the defaults, other seeds",
    }
    for group, by_rate in consensus.get("noise_by_rate", {}).items():
        names = _ordered(n for f in by_rate.values() for n in f["consensus"])
        members = _ordered(n for f in by_rate.values() for n in f["members"])
        if not names:
            continue
        # the calibrated consensus in full, the other consensus runs and
        # the members by their mean absolute error
        main = CALIBRATED if CALIBRATED in names else names[0]
        others = [n for n in names if n != main]
        header = [
            "rate",
            "`%s` abs. error (max)" % main,
            "within %.2f" % NOISE_RATE_GOAL,
            "in interval (width)",
        ]
        header += ["`%s`" % n for n in others]
        header += ["%s" % m for m in members]
        lines += [
            "",
            "## Noise-rate estimate by rate: %s" % titles.get(group, group),
            "",
            "Mean absolute error of `%s`'s combined estimate (largest "
            "in brackets) over the settings of each injected rate, how "
            "many settings are within %.2f of the truth and how many "
            "intervals hold it (mean width); then the mean absolute "
            "errors of the other consensus runs and of every member's "
            "own estimate (only the members the calibration re-ran are "
            "combined)." % (main, NOISE_RATE_GOAL),
            "",
            "| " + " | ".join(header) + " |",
            "|---" * len(header) + "|",
        ]
        for rate, figures in by_rate.items():
            row = [rate]
            f = figures["consensus"].get(main)
            if f is None:
                row += ["-", "-", "-"]
            else:
                row += [
                    "%.3f (%.3f)" % (f["abs_error"], f["max_abs_error"]),
                    "%d/%d" % (round(f["within_goal"] * f["n"]), f["n"]),
                    (
                        "-"
                        if f["covered"] is None
                        else "%d/%d (%s)"
                        % (
                            round(f["covered"] * f["n"]),
                            f["n"],
                            _cell(f["width"]),
                        )
                    ),
                ]
            for n in others:
                f = figures["consensus"].get(n)
                row.append("-" if f is None else "%.3f" % f["abs_error"])
            for m in members:
                f = figures["members"].get(m)
                row.append("-" if f is None else "%.3f" % f["abs_error"])
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _versus_section(consensus):
    lines = [
        "",
        "## Consensus vs its best member (mislabeling)",
        "",
        "Means over rates and seeds; the best member is the member run with "
        "the best mean in that column; *wins* counts the settings where the "
        "consensus beat every member.",
        "",
        "| type | consensus | AUROC | best member | AUROC | wins | "
        "beats? (margin) | F1 | best member | F1 | wins | "
        "beats? (margin) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for hardness, by_name in consensus["columns"].items():
        kind = " (chose defaults)" if hardness in SELECTION_KINDS else ""
        for name, f in by_name.items():
            row = [hardness + kind, name]
            for metric in ("auroc", "f1"):
                best, value = f["best_" + metric]
                beats = _beats(f[metric], value)
                mark = "**" if beats else ""
                margin = f.get("margin_" + metric)
                row += [
                    "%s%s%s" % (mark, _cell(f[metric]), mark),
                    str(best),
                    _cell(value),
                    "%d/%d" % (f["wins_" + metric], f["settings"]),
                    "%s (%s)"
                    % ("yes" if beats else "no", _cell(margin, "%+.3f")),
                ]
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Bold: the consensus beats its best member in that column. "
        "Weighting that ran: %s."
        % "; ".join(
            "%s: %s"
            % (name, ", ".join("%s x%d" % kv for kv in counts.items()))
            for name, counts in consensus["weighting"].items()
        ),
    ]
    return lines


def _beats(value, other):
    return value is not None and other is not None and value > other


def _consensus_noise_section(consensus):
    lines = [
        "",
        "## Consensus noise-rate estimate by rate",
        "",
        "Mean estimate (mean absolute error; settings within %.2f; "
        "settings whose interval holds the truth) per mislabeling type and "
        "injected rate." % NOISE_RATE_GOAL,
    ]
    for name, by_type in consensus["noise"].items():
        rates = sorted({r for v in by_type.values() for r in v}, key=float)
        if not rates:
            continue
        lines += [
            "",
            "`%s`:" % name,
            "",
            "| type | " + " | ".join(rates) + " |",
            "|---" * (len(rates) + 1) + "|",
        ]
        for hardness, by_rate in by_type.items():
            cells = []
            for rate in rates:
                f = by_rate.get(rate)
                if f is None:
                    cells.append("-")
                    continue
                covered = (
                    ""
                    if f["covered"] is None
                    else ", %d%% in interval" % round(100 * f["covered"])
                )
                cells.append(
                    "%.3f (%.3f; %d%% within%s)"
                    % (
                        f["estimate"],
                        f["abs_error"],
                        round(100 * f["within_goal"]),
                        covered,
                    )
                )
            lines.append("| %s | %s |" % (hardness, " | ".join(cells)))
    return lines


def _cost_section(consensus):
    cost = consensus["cost"]
    if cost.get("calibration") is None:
        return []
    runs = ", ".join(
        "%s %.1f s" % kv
        for kv in sorted(cost["runs"].items(), key=lambda kv: kv[1])
    )
    lines = [
        "",
        "## Cost of the calibration",
        "",
        "The calibrated consensus re-runs %s on the injected labels: "
        "%.1f s on average (at most %.1f s), against %.1f s for one run of "
        "those members (member runs: %s)."
        % (
            ", ".join("`%s`" % k for k in cost["rerun"]) or "no member",
            cost["calibration"],
            cost["calibration_max"],
            cost["rerun_seconds"],
            runs,
        ),
    ]
    cheapest, seconds = cost.get("cheapest") or [None, None]
    within, settings = cost.get("within_rerun") or [0, 0]
    extra = []
    if cheapest is not None and seconds is not None:
        extra.append(
            "The cheapest member is `%s` (%.1f s a run)." % (cheapest, seconds)
        )
    if settings:
        extra.append(
            "Setting by setting, the calibration took at most one run of "
            "the members it re-ran in %d of %d settings." % (within, settings)
        )
    if cost.get("consensus_runs"):
        extra.append(
            "Whole consensus runs (reading the members, calibration, "
            "weights, flags): %s."
            % ", ".join(
                "`%s` %.1f s" % kv for kv in cost["consensus_runs"].items()
            )
        )
    if extra:
        lines += ["", " ".join(extra)]
    return lines


def _stability_section(summary):
    if not summary.get("stability"):
        return []
    return [
        "",
        "## Stability across seeds",
        "",
        "Mean pairwise Spearman correlation of the scores of clones "
        "made with different injection seeds, over the samples they "
        "share (different samples are perturbed in each, so this is the "
        "stability of the whole pipeline).",
        "",
        _table(summary, "stability"),
    ]


def _time_section(summary):
    lines = ["", "## Time per run (s, mean over settings)", ""]
    lines += ["| method | seconds |", "|---|---|"]
    for m in summary["methods"]:
        seconds = _cell(summary["seconds"].get(m), "%.1f")
        lines.append("| %s | %s |" % (m, seconds))
    lines.append("")
    lines.append(
        "Methods of one `dynamics` run share one training run, so they show "
        "its time."
    )
    return lines


def plot_heatmap(summary, path, metric="auroc"):
    """A method x hardness-type heatmap of the mean ``metric`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, types = summary["methods"], summary["types"]
    values = np.full((len(methods), len(types)), np.nan)
    for i, m in enumerate(methods):
        for j, t in enumerate(types):
            v = summary[metric].get(m, {}).get(t)
            if v is not None:
                values[i, j] = v
    fig, ax = plt.subplots(
        figsize=(1.0 + 0.75 * len(types), 1.0 + 0.38 * len(methods))
    )
    image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(types)), types, rotation=40, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for i in range(len(methods)):
        for j in range(len(types)):
            if np.isfinite(values[i, j]):
                ax.text(
                    j,
                    i,
                    "%.2f" % values[i, j],
                    ha="center",
                    va="center",
                    fontsize=7,
                )
    fig.colorbar(image, ax=ax, label=metric.upper())
    ax.set_title("%s by method and hardness type" % metric.upper())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ranks(summary, path):
    """Mean rank per method (bar chart with the spread over settings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["ranks"])
    means = [summary["ranks"][m]["mean"] for m in methods]
    stds = [summary["ranks"][m]["std"] for m in methods]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(methods)))
    ax.barh(range(len(methods)), means, xerr=stds, color="#4c72b0", alpha=0.85)
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    ax.set_xlabel("mean rank by AUROC over settings (1 = best)")
    ax.set_title("Method ranks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(summary, config, output_dir):
    """Writes ``report.md``, ``auroc_heatmap.png`` and ``ranks.png`` into
    ``output_dir`` and returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    heatmap = plot_heatmap(
        summary, os.path.join(output_dir, "auroc_heatmap.png")
    )
    ranks = plot_ranks(summary, os.path.join(output_dir, "ranks.png"))
    plots = {
        "AUROC heatmap": os.path.basename(heatmap),
        "Mean ranks": os.path.basename(ranks),
    }
    report = os.path.join(output_dir, "report.md")
    with open(report, "w") as f:
        f.write(markdown_report(summary, config, plots))
    return {"report": report, "heatmap": heatmap, "ranks": ranks}
