"""
The ``inject_hardness`` operator: clone the current view into a new dataset
with known hardness injected (label noise, image shifts, atypical vectors),
for benchmarking hardness methods on your own data.

Thin: it parses the form and calls
:func:`fiftyone_hardness.benchmarking.injection.inject_hardness`; it ends
with a summary, and an error is shown in the App.
"""

import logging

import fiftyone as fo
import fiftyone.core.media as fom
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.operators.paths import app_path, path_error
from fiftyone_hardness.operators.common import (
    classification_fields,
    dropdown_input,
    label_field_input,
    on_own_dataset,
    run_with_progress,
    stream_to_app,
    target_input,
    vector_fields,
)

logger = logging.getLogger(__name__)

OUTPUT_DIR_WHAT = "the folder for the new images"

#: (type, family, form label); kept here so the form does not import numpy
#: code paths it does not need
HARDNESS_CHOICES = [
    ("uniform", "label", "Uniform: a random different class"),
    ("symmetric", "label", "Symmetric (RER): a random different class"),
    ("asymmetric", "label", "Asymmetric: Dirichlet transition per class"),
    ("adjacent", "label", "Adjacent: y +- 1"),
    ("pair", "label", "Pair: y -> y + 1"),
    ("instance", "label", "Instance: a clean model's most confused class"),
    ("confidence", "label", "Confidence: a clean model's likeliest wrong"),
    ("human", "label", "Human: a second annotator's disagreeing label"),
    ("ood_covariate", "image", "Near-OOD: Gaussian noise (0.5 x max)"),
    ("domain_shift", "image", "Domain shift: noise + cartoon filter"),
    ("zoom_shift", "image", "Zoom shift: x1.75 central zoom"),
    ("crop_shift", "image", "Crop shift: content moved 10 px"),
    ("far_ood", "image", "Far-OOD: replaced by a face (LFW), label kept"),
    ("atypical", "vector", "Atypical: one feature from its top 1%"),
]

_FAMILIES = {name: family for name, family, _ in HARDNESS_CHOICES}


class InjectHardness(foo.Operator):
    """Creates a perturbed clone of the current view with the perturbed
    samples marked in ``hardness_truth`` / ``hardness_injected``."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="inject_hardness",
            label="Hardness: inject known hardness (benchmark)",
            description=(
                "Clone this view into a new dataset with known label noise, "
                "image shifts or atypical vectors, to test which method "
                "finds which problem on your data. The source and its "
                "media are never modified"
            ),
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        target_input(ctx, inputs, verb="Clones")
        choices = types.DropdownView()
        for name, _, text in HARDNESS_CHOICES:
            choices.add_choice(name, label=text)
        inputs.enum(
            "hardness",
            choices.values(),
            default="uniform",
            required=True,
            label="Hardness type",
            view=choices,
        )
        hardness = ctx.params.get("hardness") or "uniform"
        family = _FAMILIES.get(hardness, "label")
        ready = _family_inputs(ctx, inputs, hardness, family)
        if ready:
            inputs.float(
                "rate",
                default=0.1,
                required=hardness != "human",
                min=0.0,
                max=1.0,
                label="Fraction to perturb",
                description=(
                    "Exactly round(rate x N) samples are chosen"
                    + (
                        "; empty: every disagreement"
                        if hardness == "human"
                        else ""
                    )
                ),
            )
            inputs.int("seed", default=0, label="Seed")
            ready = _name_input(ctx, inputs, hardness)
        return types.Property(
            inputs, view=types.View(label="Inject known hardness")
        )

    @on_own_dataset
    def execute(self, ctx):
        return stream_to_app(
            ctx,
            self._steps(ctx),
            output=_output,
            title="Hardness: inject known hardness",
        )

    def _steps(self, ctx):
        from fiftyone_hardness.benchmarking import injection as perturb

        params = _params(ctx)
        dataset = yield from run_with_progress(
            ctx, perturb.inject_hardness, samples=ctx.target_view(), **params
        )
        info = dict(dataset.info.get(perturb.INFO_KEY, {}))
        if ctx.params.get("open_dataset", True) and not ctx.delegated:
            yield ctx.trigger("open_dataset", dict(dataset=dataset.name))
        yield {
            "message": "Created dataset '%s': %s of its %s samples perturbed "
            "(marked in 'hardness_truth')"
            % (dataset.name, info.get("num_changed"), info.get("num_samples")),
            "dataset": dataset.name,
            "num_samples": info.get("num_samples"),
            "num_changed": info.get("num_changed"),
        }

    def __call__(
        self, sample_collection, hardness="uniform", delegate=False, **params
    ):
        """Runs the operator from Python, e.g.
        ``foo.get_operator(uri)(dataset, hardness="uniform", rate=0.1)``."""
        params["hardness"] = hardness
        params.setdefault("open_dataset", False)
        return foo.execute_operator(
            self.uri,
            dict(view=sample_collection.view(), params=params),
            request_delegation=delegate,
        )


def _output(result):
    outputs = types.Object()
    outputs.str("message", label="Summary", view=types.MarkdownView())
    outputs.str("dataset", label="New dataset")
    outputs.int("num_samples", label="Samples")
    outputs.int("num_changed", label="Perturbed (hardness_truth)")
    return types.Property(
        outputs, view=types.View(label="Inject known hardness: done")
    )


def _error(inputs, name, label, description):
    inputs.view(name, types.Error(label=label, description=description))
    return False


def _dropdown(inputs, name, fields, label, description, default=None):
    dropdown_input(
        inputs,
        name,
        [(f, f) for f in fields],
        default if default in fields else fields[0],
        label,
        description,
        required=True,
    )


def _family_inputs(ctx, inputs, hardness, family):
    if family == "label":
        if not label_field_input(ctx, inputs):
            return False
        label_field = ctx.params.get("label_field")
        if hardness == "human":
            others = [
                f for f in classification_fields(ctx.view) if f != label_field
            ]
            if not others:
                return _error(
                    inputs,
                    "no_annotator",
                    "No second annotator",
                    "Human noise takes labels from a second "
                    "fo.Classification field; this dataset has only one",
                )
            _dropdown(
                inputs,
                "annotator_field",
                others,
                "Second annotator's field",
                "Its labels replace the chosen ones where they disagree",
            )
        elif hardness in ("instance", "confidence"):
            fields = vector_fields(ctx.view)
            if not fields:
                return _error(
                    inputs,
                    "no_features",
                    "No features for the clean model",
                    "This type fits a clean model on a vector field; "
                    "compute embeddings first",
                )
            _dropdown(
                inputs,
                "features_field",
                fields,
                "Features for the clean model",
                "A cross-validated logistic regression on these finds each "
                "sample's most confusable class",
                default="embeddings",
            )
        return True
    if family == "image":
        if ctx.view.media_type != fom.IMAGE:
            return _error(
                inputs,
                "not_images",
                "Not an image dataset",
                "'%s' perturbs images; this view holds '%s'"
                % (hardness, ctx.view.media_type),
            )
        error = path_error(ctx.params.get("output_dir"), OUTPUT_DIR_WHAT)
        inputs.str(
            "output_dir",
            label="Folder for the new images",
            description=(
                "Empty: fiftyone's dataset dir/hardness-injections/<name>. "
                "Existing files are never overwritten"
            ),
            invalid=error is not None,
            error_message=error,
        )
        return error is None
    fields = vector_fields(ctx.view)
    if not fields:
        return _error(
            inputs,
            "no_vectors",
            "No vector field",
            "'atypical' perturbs a vector field (embeddings or features)",
        )
    _dropdown(
        inputs,
        "vector_field",
        fields,
        "Vector field",
        "One feature of each chosen sample takes a value from its top 1%",
    )
    return True


def _name_input(ctx, inputs, hardness):
    from fiftyone_hardness.benchmarking.injection import default_name

    rate = ctx.params.get("rate", 0.1)
    seed = ctx.params.get("seed", 0) or 0
    default = default_name(ctx.view, hardness, rate, seed)
    name = ctx.params.get("name") or default
    overwrite = bool(ctx.params.get("overwrite", False))
    exists = fo.dataset_exists(name)
    inputs.str(
        "name",
        default=default,
        required=True,
        label="New dataset name",
        invalid=exists and not overwrite,
        error_message="A dataset named '%s' exists" % name,
    )
    inputs.bool("overwrite", default=False, label="Replace it if it exists")
    inputs.bool(
        "persistent",
        default=True,
        label="Persistent",
        description="Keep the new dataset after the App closes",
    )
    inputs.bool(
        "open_dataset", default=True, label="Open the new dataset afterwards"
    )
    return not (exists and not overwrite)


def _params(ctx):
    p = ctx.params
    hardness = p.get("hardness") or "uniform"
    rate = p.get("rate", 0.1)
    params = dict(
        hardness=hardness,
        rate=None if rate is None else float(rate),
        seed=int(p.get("seed") or 0),
        name=p.get("name") or None,
        overwrite=bool(p.get("overwrite", False)),
        persistent=bool(p.get("persistent", True)),
    )
    family = _FAMILIES.get(hardness)
    if family == "label":
        params["label_field"] = p.get("label_field") or "ground_truth"
        for key in ("annotator_field", "features_field"):
            if p.get(key):
                params[key] = p[key]
    elif family == "image":
        if p.get("output_dir"):
            params["output_dir"] = app_path(p["output_dir"], OUTPUT_DIR_WHAT)
    elif family == "vector":
        params["vector_field"] = p.get("vector_field")
    return params
