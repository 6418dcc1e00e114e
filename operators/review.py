"""
Review operators: mark labels as wrong (with the correct class) or right,
apply the reviewed corrections (into a new field, or in place with a backup)
and undo them, and show a suspicious sample next to its counter-examples.

The work is done by :mod:`fiftyone_hardness.dataset_io.counterexamples`; these operators parse
the form and pick the samples (the open sample, else the selected ones).
"""

import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.dataset_io import review
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.counterexamples import CounterexamplesConfig
from fiftyone_hardness.operators.common import (
    dropdown_input,
    label_field_input,
    vector_fields,
)
from fiftyone_hardness.operators.forms import (
    blocking_error,
    config_inputs,
    config_values,
    refuse_unknown_params,
)

logger = logging.getLogger(__name__)


def target_sample_ids(ctx):
    """The samples an operator acts on: the open sample in the modal, else
    the selected samples."""
    if ctx.current_sample:
        return [ctx.current_sample]
    return list(ctx.selected or [])


def class_choices(dataset, label_field):
    """The classes of ``label_field``: declared classes first, then every
    observed label."""
    declared = list(
        (dataset.classes or {}).get(label_field)
        or dataset.default_classes
        or []
    )
    observed = dataset.distinct(label_field + ".label")
    return declared + sorted(c for c in observed if c not in declared)


def _no_samples(inputs, what):
    inputs.view(
        "no_samples",
        types.Error(
            label="No sample",
            description="Open a sample or select samples to %s" % what,
        ),
    )


def _reviewer(ctx):
    return ctx.params.get("reviewer") or ctx.user_id or None


class ReviewLabel(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="review_label",
            label="Hardness: review label",
            description="Mark the label of the open/selected samples as "
            "wrong (with the correct class) or right; the label itself is "
            "not changed",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ids = target_sample_ids(ctx)
        if not ids:
            _no_samples(inputs, "review")
            return types.Property(inputs)
        if not label_field_input(ctx, inputs):
            return types.Property(inputs)
        label_field = ctx.params.get("label_field") or "ground_truth"
        verdicts = types.RadioGroup()
        verdicts.add_choice("wrong", label="Label is wrong")
        verdicts.add_choice("right", label="Label is right")
        verdicts.add_choice("clear", label="Clear my review")
        inputs.enum(
            "verdict",
            verdicts.values(),
            default="wrong",
            required=True,
            label="Verdict on %d sample(s)" % len(ids),
            view=verdicts,
        )
        if ctx.params.get("verdict", "wrong") == "wrong":
            choices = types.AutocompleteView()
            for name in class_choices(ctx.dataset, label_field):
                choices.add_choice(name, label=name)
            inputs.str(
                "correct_label",
                required=True,
                label="Correct class",
                description="Stored in '%s'"
                % review.review_field(label_field),
                view=choices,
            )
        inputs.str("note", label="Note (optional)")
        return types.Property(inputs, view=types.View(label="Review label"))

    def execute(self, ctx):
        ids = target_sample_ids(ctx)
        label_field = ctx.params.get("label_field") or "ground_truth"
        verdict = ctx.params.get("verdict", "wrong")
        if verdict == "clear":
            count = review.clear_reviews(ctx.dataset, ids, label_field)
        else:
            count = review.mark_labels(
                ctx.dataset,
                ids,
                verdict,
                correct_label=ctx.params.get("correct_label"),
                label_field=label_field,
                reviewer=_reviewer(ctx),
                note=ctx.params.get("note") or None,
            )
        ctx.ops.reload_dataset()
        return {"num_reviewed": count}


class ApplyLabelCorrections(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="apply_label_corrections",
            label="Hardness: apply reviewed corrections",
            description="Write the reviewed corrections into a new label "
            "field, or into the label field keeping the originals",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if not label_field_input(ctx, inputs):
            return types.Property(inputs)
        label_field = ctx.params.get("label_field") or "ground_truth"
        summary = review.review_summary(ctx.dataset, label_field)
        inputs.view(
            "summary",
            types.Notice(
                label="%d corrections to apply (%d reviewed wrong, %d right, "
                "%d already corrected in place)"
                % (
                    summary["pending"],
                    summary["wrong"],
                    summary["right"],
                    summary["corrected"],
                )
            ),
        )
        modes = types.RadioGroup()
        modes.add_choice("new_field", label="Into a new label field")
        modes.add_choice(
            "in_place",
            label="Into '%s' (originals kept in '%s', undoable)"
            % (label_field, review.backup_field(label_field)),
        )
        inputs.enum(
            "mode",
            modes.values(),
            default="new_field",
            label="Apply",
            view=modes,
        )
        if ctx.params.get("mode", "new_field") == "new_field":
            inputs.str(
                "target_field",
                default="%s_corrected" % label_field,
                required=True,
                label="New field",
            )
        return types.Property(
            inputs, view=types.View(label="Apply reviewed corrections")
        )

    def execute(self, ctx):
        label_field = ctx.params.get("label_field") or "ground_truth"
        target = None
        if ctx.params.get("mode", "new_field") == "new_field":
            target = ctx.params.get("target_field") or (
                "%s_corrected" % label_field
            )
        result = review.apply_corrections(
            ctx.dataset, label_field=label_field, target_field=target
        )
        ctx.ops.reload_dataset()
        return result


class UndoLabelCorrections(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="undo_label_corrections",
            label="Hardness: undo applied corrections",
            description="Restore the original labels of samples corrected "
            "in place",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if not label_field_input(ctx, inputs):
            return types.Property(inputs)
        label_field = ctx.params.get("label_field") or "ground_truth"
        backup = review.backup_field(label_field)
        count = (
            len(ctx.dataset.exists(backup))
            if ctx.dataset.has_field(backup)
            else 0
        )
        inputs.view(
            "summary",
            types.Notice(
                label="%d samples of '%s' hold corrections; their original "
                "labels will be restored" % (count, label_field)
            ),
        )
        return types.Property(
            inputs, view=types.View(label="Undo applied corrections")
        )

    def execute(self, ctx):
        label_field = ctx.params.get("label_field") or "ground_truth"
        result = review.undo_corrections(ctx.dataset, label_field)
        ctx.ops.reload_dataset()
        return result


class FindCounterexamples(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="find_counterexamples",
            label="Hardness: find counter-examples",
            description="Show a suspicious sample next to the samples most "
            "incompatible with its label (CINCER)",
            dynamic=True,
        )

    #: parameters the form renders itself (from the dataset's fields and
    #: classes); the others come from the config
    source_fields = ("embeddings_field", "target_label")

    def resolve_input(self, ctx):
        inputs = types.Object()
        ids = target_sample_ids(ctx)
        if len(ids) != 1:
            blocking_error(
                inputs,
                "one_sample",
                "Open one sample, or select exactly one (%d selected)"
                % len(ids),
            )
            return types.Property(inputs)
        if not label_field_input(ctx, inputs):
            return types.Property(inputs)
        fields = vector_fields(ctx.dataset)
        if not fields:
            blocking_error(
                inputs,
                "no_embeddings",
                "Counter-examples need an embeddings field; run 'Hardness: "
                "compute embeddings' first",
            )
            return types.Property(inputs)
        default = CounterexamplesConfig.parameter("embeddings_field").default
        dropdown_input(
            inputs,
            "embeddings_field",
            [(name, name) for name in fields],
            default if default in fields else fields[0],
            CounterexamplesConfig.parameter("embeddings_field").label,
            required=True,
        )
        config_inputs(
            inputs,
            self._params(ctx),
            CounterexamplesConfig,
            skip=self.source_fields,
        )
        self._target_label_input(ctx, inputs)
        refuse_unknown_params(
            inputs, ctx.params, CounterexamplesConfig, ("label_field",)
        )
        return types.Property(
            inputs, view=types.View(label="Find counter-examples")
        )

    def _target_label_input(self, ctx, inputs):
        label_field = ctx.params.get("label_field") or "ground_truth"
        classes = class_choices(ctx.dataset, label_field)
        value = ctx.params.get("target_label")
        parameter = CounterexamplesConfig.parameter("target_label")
        view = types.AutocompleteView()
        for name in classes:
            view.add_choice(name, label=name)
        inputs.str(
            "target_label",
            label=parameter.label,
            description=parameter.help,
            view=view,
            invalid=bool(value) and value not in classes,
            error_message="Unknown class '%s'; the classes of '%s' are %s"
            % (value, label_field, ", ".join(classes)),
        )

    def _params(self, ctx):
        """The keyword arguments of
        :func:`fiftyone_hardness.api.find_counterexamples`."""
        params = config_values(
            ctx.params, CounterexamplesConfig, skip=self.source_fields
        )
        for name in self.source_fields:
            if ctx.params.get(name):
                params[name] = ctx.params[name]
        return params

    def execute(self, ctx):
        from fiftyone_hardness import api

        ids = target_sample_ids(ctx)
        if len(ids) != 1:
            raise HardnessError("Open or select exactly one sample")
        label_field = ctx.params.get("label_field") or "ground_truth"
        result = api.find_counterexamples(
            ctx.dataset, ids[0], label_field, **self._params(ctx)
        )
        view = result.pop("view")
        ctx.ops.set_view(view)
        labels = dict(zip(*view.values(["id", label_field + ".label"])))
        result["counterexamples"] = [
            {"id": i, "label": labels.get(i), "score": round(s, 4)}
            for i, s in zip(result["counterexample_ids"], result["scores"])
        ]
        return result

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("label", label="Sample's label")
        outputs.str("predicted", label="Model's prediction")
        outputs.float("probability", label="Model's probability of the label")
        outputs.str("target_label", label="Candidates labelled")
        outputs.int("num_candidates", label="Candidates")
        table = types.TableView()
        table.add_column("label", label="Label")
        table.add_column("score", label="Incompatibility")
        table.add_column("id", label="Sample")
        outputs.list(
            "counterexamples",
            types.Object(),
            label="Counter-examples, most incompatible first (shown after "
            "the sample in the grid)",
            view=table,
        )
        return types.Property(outputs)
