"""
Run management operators: list the hardness runs of a dataset, load a run's
flagged (or all scored) samples hardest first, rename and delete runs.

They follow FiftyOne's run conventions: runs are the dataset's custom runs
whose config is a :class:`fiftyone_hardness.dataset_io.runs.HardnessRunConfig`;
renaming and deleting go through ``dataset.rename_run`` /
``dataset.delete_run``, which rename or remove every field the run wrote
(renaming is refused, with nothing changed, when a new field name is taken).
Runs are read through the run schema
(:meth:`fiftyone_hardness.dataset_io.runs.HardnessRunResults.scores`).
"""

import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.operators.common import on_own_dataset, plural
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.dataset_io.runs import (
    RunRenameError,
    check_rename,
    list_hardness_runs,
)

logger = logging.getLogger(__name__)


def run_key_input(ctx, inputs, label="Hardness run"):
    """Adds a dropdown of the dataset's hardness runs, newest first (the
    default). Returns the chosen key, or None (after adding an error
    notice) when there is no run."""
    runs = run_views.runs_newest_first(ctx.dataset)
    if not runs:
        inputs.view(
            "no_runs",
            types.Error(
                label="No hardness runs",
                description="This dataset has no hardness run yet; run a "
                "hardness method first",
            ),
        )
        return None
    choices = types.DropdownView()
    for run in runs:
        choices.add_choice(
            run["key"],
            label=run["key"],
            description="%s, %s" % (run["method"], run["timestamp"][:16]),
        )
    keys = [run["key"] for run in runs]
    inputs.enum(
        "run_key",
        choices.values(),
        default=keys[0],
        required=True,
        label=label,
        view=choices,
    )
    key = ctx.params.get("run_key")
    return key if key in keys else keys[0]


def describe_runs(dataset):
    """Returns one row per hardness run: key, method, label field, samples,
    flagged, noise rate, threshold, fields and when it ran."""
    rows = []
    for key in list_hardness_runs(dataset):
        info = dataset.get_run_info(key)
        results = run_views.load_results(dataset, key, check=False)
        rows.append(
            {
                "run_key": key,
                "method": getattr(results, "method", info.config.method),
                "label_field": getattr(results, "label_field", None),
                "num_samples": getattr(results, "num_samples", None),
                "num_flagged": getattr(results, "num_flagged", None),
                "noise_rate": _round(getattr(results, "noise_rate", None)),
                "threshold": _round(getattr(results, "threshold", None)),
                "fields": ", ".join(getattr(results, "fields", None) or []),
                "timestamp": str(info.timestamp) if info.timestamp else None,
            }
        )
    return rows


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


class ListHardnessRuns(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="list_hardness_runs",
            label="Hardness: list runs",
            description="The hardness runs of this dataset",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view(
            "about",
            types.Notice(label="Lists the hardness runs of this dataset"),
        )
        return types.Property(inputs, view=types.View(label="Hardness runs"))

    @on_own_dataset
    def execute(self, ctx):
        return {"runs": describe_runs(ctx.dataset)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        table = types.TableView()
        for key, label in [
            ("run_key", "Run"),
            ("method", "Method"),
            ("label_field", "Label field"),
            ("num_samples", "Samples"),
            ("num_flagged", "Flagged"),
            ("noise_rate", "Noise rate"),
            ("threshold", "Threshold"),
            ("timestamp", "Ran at"),
        ]:
            table.add_column(key, label=label)
        outputs.list("runs", types.Object(), label="Hardness runs", view=table)
        return types.Property(outputs)


class LoadHardnessView(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="load_hardness_view",
            label="Hardness: load a run's samples",
            description="Show a run's flagged (or all scored) samples, "
            "hardest first",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = run_key_input(ctx, inputs)
        if key is not None:
            results = run_views.load_results(ctx.dataset, key, check=False)
            scores = results.scores()
            if len(scores) > 1:
                choices = types.DropdownView()
                for score in scores:
                    choices.add_choice(
                        score.name,
                        label="%s (%s)" % (score.name, score.score_field),
                    )
                inputs.enum(
                    "score",
                    choices.values(),
                    default=scores[0].name,
                    label="Score",
                    view=choices,
                )
            which = types.RadioGroup()
            which.add_choice("flagged", label="Flagged samples")
            which.add_choice("all", label="All scored samples")
            inputs.enum(
                "which",
                which.values(),
                default="flagged",
                label="Samples",
                view=which,
            )
        return types.Property(
            inputs, view=types.View(label="Load a hardness run's samples")
        )

    @on_own_dataset
    def execute(self, ctx):
        view = load_run_view(
            ctx.dataset,
            ctx.params["run_key"],
            score=ctx.params.get("score"),
            flagged=ctx.params.get("which", "flagged") == "flagged",
        )
        ctx.ops.set_view(view)
        flagged = ctx.params.get("which", "flagged") == "flagged"
        ctx.ops.notify(
            "Showing %s of run '%s', hardest first"
            % (
                plural(len(view), "flagged sample" if flagged else "sample"),
                ctx.params["run_key"],
            )
        )
        return {"num_samples": len(view)}


def load_run_view(dataset, run_key, score=None, flagged=True):
    """Returns the run's flagged samples (or all scored ones) for one of
    its scores (a score name, see
    :meth:`~fiftyone_hardness.dataset_io.runs.HardnessRunResults.scores`;
    the default one when None), hardest first."""
    results = run_views.load_results(dataset, run_key)
    if flagged:
        return run_views.flagged_view(dataset, results, score)
    return run_views.scored_view(dataset, results, score)


class RenameHardnessRun(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="rename_hardness_run",
            label="Hardness: rename a run",
            description="Rename a hardness run and the fields it wrote",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = run_key_input(ctx, inputs)
        if key is not None:
            new_key = ctx.params.get("new_run_key")
            error = (
                _rename_error(ctx.dataset, key, new_key) if new_key else None
            )
            inputs.str(
                "new_run_key",
                required=True,
                label="New run key",
                description="The run's fields are renamed with it; every "
                "new field name must be free",
                invalid=error is not None,
                error_message=error,
            )
        return types.Property(inputs, view=types.View(label="Rename a run"))

    @on_own_dataset
    def execute(self, ctx):
        old, new = ctx.params["run_key"], ctx.params["new_run_key"]
        error = _rename_error(ctx.dataset, old, new)
        if error:
            raise HardnessError(error)
        try:
            ctx.dataset.rename_run(old, new)
        except RunRenameError as e:
            # a field appeared since the check: nothing was renamed
            raise HardnessError(str(e)) from None
        ctx.ops.reload_dataset()
        ctx.ops.notify(
            "Renamed run '%s' to '%s', with its fields" % (old, new),
            variant="success",
        )
        return {"run_key": new}


def _rename_error(dataset, run_key, new_key):
    """Returns why ``run_key`` cannot be renamed to ``new_key``, or None."""
    try:
        check_rename(dataset, run_key, new_key)
    except HardnessError as e:
        return str(e)
    return None


class DeleteHardnessRun(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="delete_hardness_run",
            label="Hardness: delete a run",
            description="Delete a hardness run and every field it wrote",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = run_key_input(ctx, inputs)
        if key is not None:
            results = run_views.load_results(ctx.dataset, key, check=False)
            inputs.view(
                "warning",
                types.Warning(
                    label="Deletes run '%s'" % key,
                    description="and its fields: %s (labels are untouched)"
                    % ", ".join(getattr(results, "fields", None) or []),
                ),
            )
        return types.Property(inputs, view=types.View(label="Delete a run"))

    @on_own_dataset
    def execute(self, ctx):
        key = ctx.params["run_key"]
        if key not in list_hardness_runs(ctx.dataset):
            raise HardnessError("No hardness run '%s'" % key)
        ctx.dataset.delete_run(key)
        ctx.ops.reload_dataset()
        ctx.ops.notify(
            "Deleted run '%s' and its fields" % key, variant="success"
        )
        return {"deleted": key}
