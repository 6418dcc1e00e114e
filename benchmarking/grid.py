"""
The hardness benchmark: "which method finds which kind of problem on MY
data?" Injects known hardness into clones of a dataset
(:mod:`fiftyone_hardness.benchmarking.injection`), scores every clone with
every method, evaluates them against the known mask
(:mod:`fiftyone_hardness.benchmarking.evaluation`) and writes
``results.json``, a markdown report and PNG plots, plus a summary run on the
source dataset.

From a shell::

    python -m fiftyone_hardness.benchmarking --dataset NAME \\
        --embeddings-field embeddings --types uniform pair zoom_shift \\
        --props 0.1 0.2 --seeds 0 1 --methods rer cleanlab dynamics \\
        --output-dir docs/benchmark

    # the built-in digits demo (clean labels, offline embeddings)
    python -m fiftyone_hardness.benchmarking --demo

    # re-render (or merge) finished grids' reports from their results
    python -m fiftyone_hardness.benchmarking \\
        --report-from a/results.json b/results.json --output-dir docs/benchmark

From Python::

    import fiftyone_hardness.benchmarking.grid as fhb

    summary = fhb.run_benchmark(dataset, types=["uniform", "zoom_shift"])
    print(dataset.load_run_results("hardness_benchmark").summary())

Method names are registry methods (``rer``, ``cleanlab``, ``dynamics``,
``aum``, ...) plus ``cleanlab_knn`` (cleanlab on the k-NN vote) and
``consensus`` (the calibrated consensus of all other runs on the clone:
members weighed on known noise injected into a copy of the clone's labels,
see ``docs/methods.md`` section 7), ``consensus_agreement`` (weighed from
the members' agreement, no injection) and ``consensus_equal`` (the plain
rank average with majority flags). A ``dynamics`` run contributes each of
its 13 methods; its ``cleanlab`` is reported as ``cleanlab_dynamics``.

Mislabeling types run at ``label_props`` (the command line's default:
0.05-0.4, :data:`DEFAULT_LABEL_PROPS`), the others at ``props``.

Embeddings of perturbed images are recomputed on each clone with the model
recorded on the embeddings field (only the perturbed samples: the clone
keeps everyone else's). Each setting runs in its own clone, deleted
afterwards with its image files; with ``workers > 1`` settings run in
parallel processes.
"""

import argparse
import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
import uuid

import fiftyone as fo

from fiftyone_hardness import api
from fiftyone_hardness.benchmarking import evaluation as fhe
from fiftyone_hardness.benchmarking import injection as fhp
from fiftyone_hardness.benchmarking import report as benchmark_report
from fiftyone_hardness.dataset_io import data as fhdata
from fiftyone_hardness.dataset_io import runs
from fiftyone_hardness.dataset_io.progress import progress_callback
from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

#: the grid of issue 6 on images: every mislabeling type (``human`` needs a
#: second annotator's field), near-OOD, far-OOD and the atypical shifts
DEFAULT_TYPES = (
    "uniform",
    "asymmetric",
    "adjacent",
    "instance",
    "symmetric",
    "pair",
    "confidence",
    "ood_covariate",
    "far_ood",
    "zoom_shift",
    "crop_shift",
)
DEFAULT_PROPS = (0.1, 0.2)
#: the rates of the mislabeling types on the command line: structured noise
#: (pair, adjacent, asymmetric) and the others at several rates, over the
#: range the noise-rate estimate is judged on
DEFAULT_LABEL_PROPS = (0.05, 0.1, 0.2, 0.3, 0.4)
DEFAULT_SEEDS = (0, 1)
DEFAULT_METHODS = (
    "rer",
    "cleanlab",
    "cleanlab_knn",
    "dynamics",
    "consensus",
    "consensus_agreement",
    "consensus_equal",
)
DEFAULT_RUN_KEY = "hardness_benchmark"

#: method names that are a registry method with fixed options
VARIANTS = {
    "cleanlab_knn": ("cleanlab", {"probs": "knn"}),
    "consensus_agreement": ("consensus", {"weighting": "agreement"}),
    "consensus_equal": (
        "consensus",
        {"weighting": "equal", "rule": "majority"},
    ),
}

#: every run of the other methods is a member of the consensus runs
CONSENSUS = "consensus"

_IMAGE_TYPES = set(fhp.IMAGE_TYPES)


def _method_spec(name):
    if name in VARIANTS:
        return VARIANTS[name]
    if name not in api.list_methods():
        raise HardnessError(
            "Unknown method '%s'; use one of: %s"
            % (
                name,
                ", ".join(sorted(set(api.list_methods()) | set(VARIANTS))),
            )
        )
    return name, {}


def check_grid(
    samples,
    types,
    props,
    seeds,
    methods,
    label_field,
    embeddings_field,
    run_key=None,
    overwrite=False,
):
    """Validates a grid before anything runs.

    Raises:
        HardnessError: unknown type or method, bad rate, missing fields,
            an existing summary run without ``overwrite``
    """
    unknown = [t for t in types if t not in fhp.list_hardness_types()]
    if unknown:
        raise HardnessError(
            "Unknown hardness types %s; use: %s"
            % (unknown, ", ".join(fhp.list_hardness_types()))
        )
    if "human" in types:
        raise HardnessError(
            "'human' needs a second annotator's field; run it with "
            "perturb.inject_hardness(..., annotator_field=...)"
        )
    for rate in props:
        if not 0 < float(rate) < 1:
            raise HardnessError("Rates must be in (0, 1); got %r" % (rate,))
    if not props:
        raise HardnessError("Give at least one rate")
    if not seeds:
        raise HardnessError("Give at least one seed")
    if not methods:
        raise HardnessError("Give at least one method")
    for name in methods:
        _method_spec(name)
    if len(samples) == 0:
        raise HardnessError("The collection is empty")
    fhdata.validate_label_field(samples, label_field)
    if not samples.has_field(embeddings_field):
        raise HardnessError(
            "Dataset '%s' has no field '%s'; compute it first with "
            "fiftyone_hardness.compute_embeddings(samples, "
            "embeddings_field='%s')"
            % (samples._dataset.name, embeddings_field, embeddings_field)
        )
    if set(types) & _IMAGE_TYPES and not api.get_embeddings_info(
        samples, embeddings_field
    ):
        raise HardnessError(
            "Image hardness types need to recompute '%s' on perturbed "
            "images, but it was not made by compute_embeddings (no record "
            "of its model); use label types only, or recompute it"
            % embeddings_field
        )
    if run_key:
        runs.validate_run_key(samples, run_key, overwrite=overwrite)


def clean_model_probs(samples, label_field, embeddings_field, seed=0):
    """Out-of-sample probabilities of a clean model (our cross-validated
    logistic-regression probe on the embeddings), one row per labelled
    sample in order, for ``instance`` / ``confidence`` injections; computed
    once per benchmark instead of once per clone."""
    from fiftyone_hardness.methods import probes

    data = fhdata.load_labeled_data(samples, label_field)
    X = data.embeddings(embeddings_field)
    probe = probes.cross_val_probs(
        X, data.labels, len(data.classes), seed=seed
    )
    return probe.pred_probs, data.classes


def run_setting(
    source_name,
    hardness,
    rate,
    seed,
    methods,
    label_field,
    embeddings_field,
    pred_probs=None,
    work_dir=None,
):
    """One cell of the grid: inject, score, evaluate, clean up.

    Returns:
        ``(records, scores)``: one record per method (see
        :mod:`fiftyone_hardness.benchmarking.report`) and
        ``{method: {source id: score}}``
    """
    source = fo.load_dataset(source_name)
    name = "hardness-benchmark-%s" % uuid.uuid4().hex[:10]
    image_dir = os.path.join(work_dir or tempfile.gettempdir(), name)
    clone = _inject_setting(
        source,
        name,
        hardness,
        rate,
        seed,
        label_field,
        embeddings_field,
        pred_probs,
        image_dir,
    )
    try:
        _embed_perturbed(source, clone, embeddings_field)
        seconds = _score_clone(clone, methods, label_field, embeddings_field)
        evaluated = fhe.evaluate_runs(clone, run_keys=list(seconds))
        setting = dict(hardness=hardness, rate=float(rate), seed=int(seed))
        return _collect(clone, evaluated, seconds, setting)
    finally:
        clone.delete()
        shutil.rmtree(image_dir, ignore_errors=True)


def _quiet(fraction, message=""):
    pass


def _inject_setting(
    source,
    name,
    hardness,
    rate,
    seed,
    label_field,
    embeddings_field,
    pred_probs,
    image_dir,
):
    """The setting's clone with its hardness injected."""
    return fhp.inject_hardness(
        source,
        hardness,
        rate=rate,
        seed=seed,
        name=name,
        label_field=label_field,
        pred_probs=(
            pred_probs if hardness in ("instance", "confidence") else None
        ),
        vector_field=embeddings_field if hardness == "atypical" else None,
        output_dir=image_dir,
        progress=_quiet,
    )


def _embed_perturbed(source, clone, embeddings_field):
    """Recomputes the embeddings that the injection cleared (perturbed
    images) with the model recorded on the source's field."""
    if not len(clone.exists(embeddings_field, False)):
        return
    info = api.get_embeddings_info(source, embeddings_field)
    api.compute_embeddings(
        clone,
        model=info["model"],
        pretrained=info.get("pretrained"),
        image_size=info.get("image_size"),
        embeddings_field=embeddings_field,
        skip_existing=True,
        progress=_quiet,
    )


def _is_consensus(name):
    return _method_spec(name)[0] == CONSENSUS


def _score_clone(clone, methods, label_field, embeddings_field):
    """Runs every method on the clone (run key = method name), the
    consensus runs of the others last. Returns ``{run_key: seconds}``."""
    seconds = {}
    members = [m for m in methods if not _is_consensus(m)]
    for name in members:
        method, options = _method_spec(name)
        start = time.perf_counter()
        api.apply_hardness(
            clone,
            method,
            label_field=label_field,
            run_key=name,
            embeddings_field=embeddings_field,
            progress=_quiet,
            **options,
        )
        seconds[name] = time.perf_counter() - start
    for name in methods:
        if not _is_consensus(name) or not members:
            continue
        _, options = _method_spec(name)
        start = time.perf_counter()
        api.apply_hardness(
            clone,
            CONSENSUS,
            label_field=label_field,
            run_key=name,
            runs=members,
            progress=_quiet,
            **options,
        )
        seconds[name] = time.perf_counter() - start
    return seconds


def _collect(clone, evaluated, seconds, setting):
    """One record per score of every run, and each score by source sample
    id (for stability across seeds)."""
    records, scores = [], {}
    source_ids = clone.values(fhp.SOURCE_ID_FIELD)
    for run_key, figures in evaluated.items():
        for score_name, f in figures.items():
            label = _score_label(run_key, score_name, evaluated)
            record = {
                k: v
                for k, v in f.items()
                if k not in ("run_key", "method", "score_field", "flag_field")
            }
            record.update(setting)
            record.update(
                method=label, run_key=run_key, seconds=seconds[run_key]
            )
            if _is_consensus(run_key):
                record.update(_consensus_extras(clone, run_key))
            records.append(record)
            values = clone.values(f["score_field"])
            scores[label] = {
                i: float(v)
                for i, v in zip(source_ids, values)
                if v is not None
            }
    return records, scores


def _consensus_extras(clone, run_key):
    """What a consensus record adds: the weighting that ran, the calibration
    time and the members' weights."""
    results = clone.load_run_results(run_key)
    calibration = getattr(results, "calibration", None) or {}
    return {
        "consensus": True,
        "weighting": getattr(results, "weighting", None),
        "calibration_seconds": calibration.get("seconds"),
        "rerun": sorted(calibration.get("rerun") or {}),
        "weights": dict(getattr(results, "weights", None) or {}),
    }


def _score_label(run_key, score_name, evaluated):
    """The report name of one score: the run key for a single-score run,
    the method for a multi-score run (``dynamics``), suffixed with the run
    key when a single-score run already has that name."""
    if len(evaluated[run_key]) == 1:
        return run_key
    if score_name in evaluated:
        return "%s_%s" % (score_name, run_key)
    return score_name


def _init_worker(num_threads):
    import torch

    torch.set_num_threads(num_threads)
    logging.getLogger("fiftyone").setLevel(logging.WARNING)


def run_benchmark(
    samples,
    types=DEFAULT_TYPES,
    props=DEFAULT_PROPS,
    seeds=DEFAULT_SEEDS,
    methods=DEFAULT_METHODS,
    label_field="ground_truth",
    embeddings_field="embeddings",
    output_dir=None,
    run_key=DEFAULT_RUN_KEY,
    overwrite=False,
    workers=1,
    progress=None,
    label_props=None,
):
    """Runs the benchmark grid and reports it.

    Args:
        samples: the source dataset (or a view); never modified except for
            the summary run
        types: hardness types (see
            :func:`fiftyone_hardness.benchmarking.injection.list_hardness_types`)
        props: injected fractions
        seeds: injection seeds
        methods: method names (see the module docs)
        label_field ("ground_truth"): the ``fo.Classification`` field
        embeddings_field ("embeddings"): the features every method uses
        output_dir (None): where ``results.json``, ``report.md`` and the
            plots go; None writes no files
        run_key ("hardness_benchmark"): the summary run's key on
            ``samples``; None stores none
        overwrite (False): replace an existing summary run
        workers (1): settings run in parallel processes
        progress (None): ``True``/``False`` to show/hide a progress bar,
            None for FiftyOne's default, or a callable
            ``(fraction, message)``
        label_props (None): injected fractions of the mislabeling types;
            None for ``props`` (the command line passes
            :data:`DEFAULT_LABEL_PROPS`)

    Returns:
        the summary dict of
        :func:`fiftyone_hardness.benchmarking.report.summarize_grid`
        with ``records`` and ``config`` added
    """
    types, props, seeds = list(types), [float(p) for p in props], list(seeds)
    label_props = (
        props if label_props is None else [float(p) for p in label_props]
    )
    methods = list(methods)
    check_grid(
        samples,
        types,
        sorted(set(props) | set(label_props)),
        seeds,
        methods,
        label_field,
        embeddings_field,
        run_key=run_key,
        overwrite=overwrite,
    )

    start = time.perf_counter()
    settings = grid_settings(types, props, seeds, label_props)
    with progress_callback(progress, "benchmark") as report:
        with _source_dataset(samples) as source:
            pred_probs = None
            if set(types) & {"instance", "confidence"}:
                pred_probs, _ = clean_model_probs(
                    source, label_field, embeddings_field
                )
            records, scores = _run_settings(
                source.name,
                settings,
                (methods, label_field, embeddings_field),
                pred_probs,
                workers,
                report,
            )

    summary = benchmark_report.summarize_grid(records, scores)
    config = _grid_config(
        samples,
        label_field,
        embeddings_field,
        types,
        (props, label_props),
        seeds,
        methods,
        settings,
        workers,
        start,
    )
    summary.update(config=config, records=records)
    if output_dir:
        summary["report"] = _write_outputs(summary, config, output_dir)
    if run_key:
        _save_summary_run(samples, run_key, summary, overwrite)
    return summary


@contextlib.contextmanager
def _source_dataset(samples):
    """The source as a dataset: settings load it by name (in worker
    processes too), so a view becomes a temporary dataset, deleted
    afterwards."""
    if isinstance(samples, fo.Dataset):
        yield samples
        return
    temporary = samples.clone(
        "hardness-benchmark-source-%s" % uuid.uuid4().hex[:8]
    )
    try:
        yield temporary
    finally:
        temporary.delete()


def _run_settings(source_name, settings, args, pred_probs, workers, report):
    """Runs every setting (in ``workers`` processes when more than one),
    reporting each as it finishes. Returns ``(records, scores)`` with
    scores keyed by ``(hardness, rate, seed, method)``."""
    records, scores = [], {}
    done = set()

    def collect(setting, result):
        setting_records, setting_scores = result
        records.extend(setting_records)
        for method, table in setting_scores.items():
            scores[setting + (method,)] = table
        done.add(setting)
        report(len(done) / len(settings), "%s p=%.2f seed %d done" % setting)

    work_dir = tempfile.mkdtemp(prefix="hardness-benchmark-")
    try:
        report(0.0, "%d settings" % len(settings))
        if workers <= 1:
            for setting in settings:
                collect(
                    setting,
                    run_setting(
                        source_name,
                        *setting,
                        *args,
                        pred_probs=pred_probs,
                        work_dir=work_dir,
                    ),
                )
        else:
            _run_in_processes(
                source_name,
                settings,
                args,
                pred_probs,
                workers,
                work_dir,
                collect,
            )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return records, scores


def _run_in_processes(
    source_name, settings, args, pred_probs, workers, work_dir, collect
):
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )
    try:
        futures = {
            pool.submit(
                run_setting,
                source_name,
                *setting,
                *args,
                pred_probs=pred_probs,
                work_dir=work_dir,
            ): setting
            for setting in settings
        }
        for future in concurrent.futures.as_completed(futures):
            collect(futures[future], future.result())
    finally:
        # a failed setting stops the grid now, not after the queue
        pool.shutdown(wait=True, cancel_futures=True)


def grid_settings(types, props, seeds, label_props=None):
    """The settings ``(type, rate, seed)`` of a grid: mislabeling types at
    ``label_props`` (None: ``props``), the others at ``props``."""
    label_props = props if label_props is None else label_props
    return [
        (t, float(p), s)
        for t in types
        for p in (label_props if _is_label_type(t) else props)
        for s in seeds
    ]


def _is_label_type(hardness):
    return benchmark_report.FAMILIES.get(hardness) == "mislabeling"


def _grid_config(
    samples,
    label_field,
    embeddings_field,
    types,
    rates,
    seeds,
    methods,
    settings,
    workers,
    start,
):
    """What was run, where, and how long it took (the report's header)."""
    return {
        "dataset": samples._dataset.name,
        "samples": len(samples),
        "label field": label_field,
        "features": _describe_features(samples, embeddings_field),
        "hardness types": types,
        "rates": (
            rates[0]
            if not all(_is_label_type(t) for t in types)
            else "- (no image or atypical type)"
        ),
        "mislabeling rates": rates[1],
        "seeds": seeds,
        "methods": methods,
        "settings": len(settings),
        "workers": workers,
        "wall time": "%.0f s" % (time.perf_counter() - start),
        "machine": "%s, %d CPU cores"
        % (platform.machine(), os.cpu_count() or 1),
    }


def _write_outputs(summary, config, output_dir):
    """Writes the report, its plots and ``results.json``; returns the
    report's path."""
    paths = benchmark_report.write_report(summary, config, output_dir)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(runs.to_jsonable(summary), f, indent=1)
    return paths["report"]


def _describe_features(samples, embeddings_field):
    info = api.get_embeddings_info(samples, embeddings_field) or {}
    if not info:
        return "`%s`" % embeddings_field
    extra = ", %dpx" % info["image_size"] if info.get("image_size") else ""
    return "`%s` (%s, %d dims%s)" % (
        embeddings_field,
        info.get("model"),
        info.get("dim", 0),
        extra,
    )


def _save_summary_run(samples, run_key, summary, overwrite):
    if run_key in samples.list_runs():
        if not overwrite:
            raise HardnessError("Run '%s' already exists" % run_key)
        samples.delete_run(run_key)
    config = runs.HardnessBenchmarkConfig(
        **runs.to_jsonable(
            {k.replace(" ", "_"): v for k, v in summary["config"].items()}
        )
    )
    samples.register_run(run_key, config)
    results = runs.HardnessBenchmarkResults(
        samples,
        config,
        run_key,
        num_settings=summary["config"]["settings"],
        report=summary.get("report"),
        **runs.to_jsonable(
            {k: v for k, v in summary.items() if k not in ("config", "report")}
        ),
    )
    samples.save_run_results(run_key, results)


def load_demo_source(name="hardness-digits-clean"):
    """The digits demo dataset with clean labels and offline-backbone
    embeddings (64 px) in ``embeddings``: the benchmark's built-in source."""
    from fiftyone_hardness import demo

    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        if dataset.has_field("embeddings") and not len(
            dataset.exists("embeddings", False)
        ):
            return dataset
        dataset.delete()
    dataset = demo.load_digits_dataset(
        name=name, noise_rate=0.0, overwrite=True
    )
    api.compute_embeddings(
        dataset, embeddings_field="embeddings", image_size=64
    )
    return dataset


def rewrite_report(results_paths, output_dir=None):
    """Re-renders a grid's report from its ``results.json`` (after a change
    to the report code) without running anything, or merges the results
    of several grids run on the same source with the same methods (e.g.
    one per group of hardness types) into one report.

    The summary is computed again from the stored records; the stability
    across seeds, which needs the scores, is kept as stored (per method and
    hardness type, so grids over different types merge exactly).

    Args:
        results_paths: one ``results.json`` written by
            :func:`run_benchmark`, or a list of them
        output_dir (None): where to write; None for the folder of the first
            ``results.json``

    Returns:
        the new summary
    """
    if isinstance(results_paths, str):
        results_paths = [results_paths]
    saved = []
    for path in results_paths:
        with open(path) as f:
            saved.append(json.load(f))
    records = [r for s in saved for r in s["records"]]
    config = _merged_config([s["config"] for s in saved])
    summary = benchmark_report.summarize_grid(records)
    stability = {}
    for s in saved:
        for method, by_type in (s.get("stability") or {}).items():
            stability.setdefault(method, {}).update(by_type)
    if stability:
        summary["stability"] = stability
    summary.update(config=config, records=records)
    output_dir = output_dir or os.path.dirname(
        os.path.abspath(results_paths[0])
    )
    summary["report"] = _write_outputs(summary, config, output_dir)
    return summary


def _merged_config(configs):
    """One report header for several grids: types, rates and seeds joined,
    settings and wall times added up."""
    if len(configs) == 1:
        return dict(configs[0])
    config = dict(configs[0])

    def joined(key, ordered=False):
        values = []
        for c in configs:
            for v in c.get(key) or []:
                if v not in values:
                    values.append(v)
        return values if ordered else sorted(values)

    config["hardness types"] = joined("hardness types", ordered=True)
    for key in ("rates", "mislabeling rates", "seeds"):
        config[key] = joined(key)
    if all(_is_label_type(t) for t in config["hardness types"]):
        # no type ran at the image / atypical rates
        config.pop("rates", None)
    config["settings"] = sum(int(c.get("settings") or 0) for c in configs)
    seconds = [float(str(c.get("wall time", "0")).split()[0]) for c in configs]
    config["wall time"] = "%.0f s (%d grid runs: %s)" % (
        sum(seconds),
        len(configs),
        " + ".join("%.0f s" % s for s in seconds),
    )
    return config


def best_method_lines(summary):
    """One line per method, best mean rank first."""
    return ["%-22s %.2f" % (m, r["mean"]) for m, r in summary["ranks"].items()]


def main(argv=None):
    """``python -m fiftyone_hardness.benchmarking``: runs the grid and
    prints the ranking."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.report_from:
        summary = rewrite_report(args.report_from, args.output_dir)
        _print_summary(summary)
        return
    if args.demo:
        dataset = load_demo_source()
    else:
        if not fo.dataset_exists(args.dataset):
            parser.error("no dataset named '%s'" % args.dataset)
        dataset = fo.load_dataset(args.dataset)
    try:
        summary = run_benchmark(
            dataset,
            types=args.types,
            props=args.props,
            seeds=args.seeds,
            label_props=args.label_props,
            methods=args.methods,
            label_field=args.label_field,
            embeddings_field=args.embeddings_field,
            output_dir=args.output_dir or "hardness-benchmark",
            run_key=args.run_key,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    except HardnessError as e:
        parser.exit(2, "error: %s\n" % e)
    _print_summary(summary)


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m fiftyone_hardness.benchmarking",
        description="Inject known hardness into clones of a dataset, score "
        "them with every method and report which method finds what.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="the source dataset's name")
    source.add_argument(
        "--demo",
        action="store_true",
        help="the built-in digits dataset (clean labels)",
    )
    source.add_argument(
        "--report-from",
        nargs="+",
        metavar="RESULTS_JSON",
        help="re-render the report of finished grids from their "
        "results.json files (several are merged into one report), into "
        "--output-dir if given, else next to the first",
    )
    parser.add_argument("--label-field", default="ground_truth")
    parser.add_argument("--embeddings-field", default="embeddings")
    parser.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES))
    parser.add_argument(
        "--props",
        nargs="+",
        type=float,
        default=list(DEFAULT_PROPS),
        help="rates of the image and atypical types",
    )
    parser.add_argument(
        "--label-props",
        nargs="+",
        type=float,
        default=list(DEFAULT_LABEL_PROPS),
        help="rates of the mislabeling types",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS)
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where the report goes (default: hardness-benchmark/)",
    )
    parser.add_argument("--run-key", default=DEFAULT_RUN_KEY)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    return parser


def _print_summary(summary):
    print("\nmean rank by AUROC (1 = best):")
    for line in best_method_lines(summary):
        print("  " + line)
    print("\nbest per hardness type:")
    for t, (m, v) in benchmark_report.best_per_type(summary).items():
        print("  %-14s %-22s AUROC %.3f" % (t, m, v))
    print(
        "\nreport: %s (%s)"
        % (summary.get("report"), summary["config"]["wall time"])
    )


if __name__ == "__main__":
    # run the package module, so that worker processes and pickled
    # functions refer to fiftyone_hardness.benchmarking, not __main__
    from fiftyone_hardness.benchmarking import grid as _benchmark

    _benchmark.main()
