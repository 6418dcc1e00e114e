"""
Review operators: mark labels as wrong (with the correct class) or right,
apply the reviewed corrections (into a new field, or in place with a backup)
and undo them, and show a suspicious sample next to its counter-examples.

The work is done by :mod:`fiftyone_hardness.dataset_io.review` and
:mod:`fiftyone_hardness.dataset_io.counterexamples`; these operators parse
the form, pick the samples (the open sample, else the selected ones) and
confirm what they did with a notification. Each form says exactly what it
changes: reviewing records verdicts beside the labels, applying writes a new
field or the label field itself (keeping the originals), undoing restores
them.
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
    on_own_dataset,
    plural,
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


def _notify(ctx, message):
    ctx.ops.notify(message, variant="success")


#: what each operator does to the label field, shown at the field
REVIEW_LABELS_HELP = (
    "The labels to review. Your verdict is stored beside them, in "
    "'<field>_reviewed'; the labels themselves are not changed until you "
    "apply the corrections"
)
APPLY_LABELS_HELP = (
    "The reviewed labels. 'Into a new label field' leaves them unchanged; "
    "'into this field' replaces the label of every sample reviewed as "
    "wrong, after copying the original into '<field>_original' (undo "
    "restores it)"
)
UNDO_LABELS_HELP = (
    "The label field whose in-place corrections to undo: every corrected "
    "sample gets its original label back from '<field>_original'"
)
COUNTEREXAMPLE_LABELS_HELP = (
    "The labels the last layer is fit on and the candidates are chosen "
    "by; only read"
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
        label_field = label_field_input(ctx, inputs, REVIEW_LABELS_HELP)
        if label_field is None:
            return types.Property(inputs)
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

    @on_own_dataset
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
        _notify(ctx, _review_message(verdict, count, ctx.params))
        return {"num_reviewed": count}


def _review_message(verdict, count, params):
    if verdict == "clear":
        return "Cleared the review of %s" % plural(count, "sample")
    if verdict == "right":
        return "Marked %s as right" % plural(count, "label")
    return "Marked %s as wrong (correct class: %s)" % (
        plural(count, "label"),
        params.get("correct_label"),
    )


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
        label_field = label_field_input(ctx, inputs, APPLY_LABELS_HELP)
        if label_field is None:
            return types.Property(inputs)
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
        modes.add_choice(
            "new_field",
            label="Into a new label field",
            description="A copy of '%s' with the corrections; '%s' itself "
            "is not changed" % (label_field, label_field),
        )
        modes.add_choice(
            "in_place",
            label="Into '%s'" % label_field,
            description="Replaces the label of each sample reviewed as "
            "wrong; its original label is first copied into '%s', and "
            "'Hardness: undo applied corrections' restores it"
            % review.backup_field(label_field),
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

    @on_own_dataset
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
        message = "Corrected %s in '%s'" % (
            plural(result["num_corrected"], "label"),
            result["field"],
        )
        if result.get("backup_field"):
            message += " (originals in '%s')" % result["backup_field"]
        if result.get("num_stale"):
            message += "; skipped %d whose label changed since the review" % (
                result["num_stale"]
            )
        _notify(ctx, message)
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
        label_field = label_field_input(ctx, inputs, UNDO_LABELS_HELP)
        if label_field is None:
            return types.Property(inputs)
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
                "labels will be restored from '%s' (samples edited since "
                "are left alone)" % (count, label_field, backup)
            ),
        )
        return types.Property(
            inputs, view=types.View(label="Undo applied corrections")
        )

    @on_own_dataset
    def execute(self, ctx):
        label_field = ctx.params.get("label_field") or "ground_truth"
        result = review.undo_corrections(ctx.dataset, label_field)
        ctx.ops.reload_dataset()
        message = "Restored %s of '%s'" % (
            plural(result["num_restored"], "original label"),
            label_field,
        )
        if result.get("num_edited"):
            message += "; left alone %d edited since" % result["num_edited"]
        _notify(ctx, message)
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
        if label_field_input(ctx, inputs, COUNTEREXAMPLE_LABELS_HELP) is None:
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

    @on_own_dataset
    def execute(self, ctx):
        from fiftyone_hardness import api

        ids = target_sample_ids(ctx)
        if len(ids) != 1:
            raise HardnessError("Open or select exactly one sample")
        label_field = ctx.params.get("label_field") or "ground_truth"
        params = self._params(ctx)
        result = api.find_counterexamples(
            ctx.dataset, ids[0], label_field, **params
        )
        view = result.pop("view")
        ctx.ops.set_view(view)
        # the sample leads the grid and opens in the sample view, whose
        # arrows then step through its counter-examples in order (a
        # selection would not do: setting the view clears it)
        ctx.ops.open_sample(ids[0])
        return counterexample_output(
            result,
            view,
            label_field,
            chosen_target=params.get("target_label") is not None,
        )

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str(
            "explanation", label="Why these", view=types.MarkdownView()
        )
        outputs.str("label", label="This sample's label")
        outputs.str("predicted", label="Model's prediction")
        outputs.float(
            "probability", label="Model's probability of this sample's label"
        )
        outputs.str("target_label", label="Candidates labelled")
        outputs.int("num_candidates", label="Candidates")
        table = types.TableView()
        table.add_column("rank", label="#")
        table.add_column("id", label="Sample")
        table.add_column("label", label="Label")
        table.add_column("incompatibility", label="Incompatibility")
        table.add_column("relative", label="vs. the first")
        outputs.list(
            "samples",
            types.Object(),
            label="This sample, then its counter-examples, most "
            "incompatible first (the grid shows them in this order)",
            view=table,
        )
        return types.Property(
            outputs, view=types.View(label="Counter-examples")
        )


def _significant(value, digits=3):
    """``value`` rounded to ``digits`` significant digits (incompatibility
    scores span orders of magnitude: 422479.93 -> 422000.0)."""
    return float("%.*g" % (digits, value))


def counterexample_output(result, view, label_field, chosen_target=False):
    """The readable output of :class:`FindCounterexamples`: rounded
    figures, a sentence saying why the candidates have their class, and one
    row per sample shown (the sample first, marked, then its
    counter-examples with their labels).

    Args:
        result: the dict of
            :func:`fiftyone_hardness.api.find_counterexamples` (without its
            view)
        view: the view it returned (the sample, then its counter-examples)
        label_field: the label field
        chosen_target (False): whether the user chose the candidates' class

    Returns:
        a JSON-able dict: ``sample_id``, ``label``, ``predicted``,
        ``probability``, ``target_label``, ``num_candidates``,
        ``explanation``, ``samples`` (the table rows) and
        ``counterexamples`` (``id``, ``label``, ``score`` of each)
    """
    labels = dict(zip(*view.values(["id", label_field + ".label"])))
    ids, scores = result["counterexample_ids"], list(result["scores"])
    top = max(scores) if scores else None
    rows = [
        {
            "rank": "this sample (open)",
            "id": result["sample_id"],
            "label": result["label"],
            "incompatibility": None,
            "relative": None,
        }
    ]
    counterexamples = []
    for rank, (sample_id, score) in enumerate(zip(ids, scores), 1):
        score = float(score)
        rows.append(
            {
                "rank": str(rank),
                "id": sample_id,
                "label": labels.get(sample_id),
                "incompatibility": _significant(score),
                "relative": round(score / top, 2) if top else None,
            }
        )
        counterexamples.append(
            {
                "id": sample_id,
                "label": labels.get(sample_id),
                "score": _significant(score),
            }
        )
    return {
        "sample_id": result["sample_id"],
        "label": result["label"],
        "predicted": result["predicted"],
        "probability": round(float(result["probability"]), 3),
        "target_label": result["target_label"],
        "num_candidates": result["num_candidates"],
        "explanation": explain_counterexamples(result, chosen_target),
        "samples": rows,
        "counterexamples": counterexamples,
    }


def explain_counterexamples(result, chosen_target=False):
    """Says why the candidates have their class and how to read the
    counter-examples."""
    label, predicted = result["label"], result["predicted"]
    target = result["target_label"]
    probability = float(result["probability"])
    if chosen_target:
        why = (
            "Candidates are the samples labelled **%s**, the class you "
            "chose." % target
        )
    elif predicted != label:
        why = (
            "The model predicts **%s** for this sample, labelled **%s** "
            "(probability of its label: %.3f). Candidates are the samples "
            "labelled **%s**, the class the model predicts for this sample."
            % (predicted, label, probability, target)
        )
    else:
        why = (
            "The model agrees with this sample's label **%s** (probability "
            "%.3f). Candidates are the samples labelled **%s**, the class "
            "the model finds most probable after it."
            % (label, probability, target)
        )
    if not result["counterexample_ids"]:
        return (
            why + " No sample has that label: there is no " "counter-example."
        )
    return why + (
        " The counter-examples are the candidates that most contradict the "
        "label **%s** of this sample: if their labels are right, this "
        "sample's label is likely wrong; if this sample's label is right, "
        "theirs are likely wrong. This sample is open in the sample view "
        "and first in the grid; the arrows step through its "
        "counter-examples, most incompatible first." % label
    )
