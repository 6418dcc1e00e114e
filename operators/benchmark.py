"""
The ``run_hardness_benchmark`` operator: inject known hardness into clones
of the current view, score them with every method and write a report
(best delegated: the default grid takes minutes).

Thin: it parses the form and calls
:func:`fiftyone_hardness.benchmarking.run_benchmark`; it ends with the
ranking, and an error is shown in the App.
"""

import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.operators.paths import app_path, path_error
from fiftyone_hardness.operators.common import (
    dropdown_input,
    label_field_input,
    multi_select_input,
    on_own_dataset,
    run_with_progress,
    stream_to_app,
    vector_fields,
)
from fiftyone_hardness.operators.perturb import HARDNESS_CHOICES

logger = logging.getLogger(__name__)

REPORT_WHAT = "the report folder"

#: the methods offered in the form (see fiftyone_hardness.benchmarking)
METHOD_CHOICES = [
    ("rer", "RER (class-wise autoencoders)"),
    ("cleanlab", "Confident learning, cross-validated probe"),
    ("cleanlab_knn", "Confident learning, k-NN vote"),
    ("dynamics", "Training dynamics: all 13 H-CAT methods"),
    ("consensus", "Consensus of the other runs"),
]


def _numbers(text, cast, name):
    try:
        values = [cast(v) for v in str(text).replace(",", " ").split()]
    except ValueError:
        raise ValueError("'%s' must be numbers separated by commas" % name)
    if not values:
        raise ValueError("Give at least one value for '%s'" % name)
    return values


class RunHardnessBenchmark(foo.Operator):
    """Runs the hardness benchmark grid on the current view."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="run_hardness_benchmark",
            label="Hardness: benchmark methods on injected hardness",
            description=(
                "Which method finds which problem on this data? Injects "
                "known hardness into clones (the source is never modified), "
                "scores them and writes a report"
            ),
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        from fiftyone_hardness.benchmarking import grid as benchmark

        inputs = types.Object()
        ready = label_field_input(ctx, inputs)
        fields = vector_fields(ctx.view)
        if not fields:
            inputs.view(
                "no_embeddings",
                types.Error(
                    label="No embeddings",
                    description="Run 'compute_embeddings' first",
                ),
            )
            ready = False
        if ready:
            dropdown_input(
                inputs,
                "embeddings_field",
                [(f, f) for f in fields],
                "embeddings" if "embeddings" in fields else fields[0],
                "Embeddings field",
                "Recomputed on perturbed images with its model",
                required=True,
            )
            multi_select_input(
                inputs,
                "types",
                [(n, text) for n, _, text in HARDNESS_CHOICES if n != "human"],
                list(benchmark.DEFAULT_TYPES),
                "Hardness types",
            )
            multi_select_input(
                inputs,
                "methods",
                METHOD_CHOICES,
                list(benchmark.DEFAULT_METHODS),
                "Methods",
            )
            inputs.str(
                "props",
                default="0.1, 0.2",
                required=True,
                label="Fractions to perturb",
            )
            inputs.str("seeds", default="0, 1", required=True, label="Seeds")
            error = path_error(ctx.params.get("output_dir"), REPORT_WHAT)
            inputs.str(
                "output_dir",
                default="",
                label="Report folder",
                description="results.json, report.md and PNG plots; empty: "
                "none (the summary run still holds the figures)",
                invalid=error is not None,
                error_message=error,
            )
            run_key = ctx.params.get("run_key") or benchmark.DEFAULT_RUN_KEY
            exists = run_key in ctx.dataset.list_runs()
            overwrite = bool(ctx.params.get("overwrite", False))
            inputs.str(
                "run_key",
                default=benchmark.DEFAULT_RUN_KEY,
                required=True,
                label="Summary run key",
                invalid=exists and not overwrite,
                error_message="A run '%s' exists" % run_key,
            )
            inputs.bool(
                "overwrite",
                default=False,
                label="Replace an existing summary run",
            )
            inputs.int("workers", default=1, label="Worker processes")
        return types.Property(
            inputs, view=types.View(label="Hardness benchmark")
        )

    @on_own_dataset
    def execute(self, ctx):
        return stream_to_app(
            ctx,
            self._steps(ctx),
            output=_output,
            title="Hardness: benchmark",
        )

    def _steps(self, ctx):
        from fiftyone_hardness.benchmarking import grid as benchmark

        params = _params(ctx.params)
        summary = yield from run_with_progress(
            ctx, benchmark.run_benchmark, samples=ctx.target_view(), **params
        )
        best = benchmark.best_method_lines(summary)
        yield {
            "report": summary.get("report") or "",
            "ranking": "\n".join(best),
            "wall_time": summary["config"]["wall time"],
        }

    def __call__(self, sample_collection, delegate=False, **params):
        """Runs the operator from Python, e.g.
        ``foo.get_operator(uri)(dataset, types=["uniform"], ...)``."""
        return foo.execute_operator(
            self.uri,
            dict(view=sample_collection.view(), params=params),
            request_delegation=delegate,
        )


def _output(result):
    outputs = types.Object()
    outputs.str("report", label="Report")
    outputs.str("ranking", label="Mean rank by AUROC", view=types.CodeView())
    outputs.str("wall_time", label="Wall time")
    return types.Property(outputs, view=types.View(label="Benchmark: done"))


def _params(p):
    from fiftyone_hardness.benchmarking import grid as benchmark

    props = p.get("props", "0.1, 0.2")
    seeds = p.get("seeds", "0, 1")
    return dict(
        types=list(p.get("types") or benchmark.DEFAULT_TYPES),
        methods=list(p.get("methods") or benchmark.DEFAULT_METHODS),
        props=(
            props
            if isinstance(props, list)
            else _numbers(props, float, "props")
        ),
        seeds=(
            seeds if isinstance(seeds, list) else _numbers(seeds, int, "seeds")
        ),
        label_field=p.get("label_field") or "ground_truth",
        embeddings_field=p.get("embeddings_field") or "embeddings",
        output_dir=(
            app_path(p["output_dir"], REPORT_WHAT)
            if p.get("output_dir")
            else None
        ),
        run_key=p.get("run_key") or benchmark.DEFAULT_RUN_KEY,
        overwrite=bool(p.get("overwrite", False)),
        workers=int(p.get("workers") or 1),
    )
