"""
The ``compute_embeddings`` operator: image embeddings for the dataset, the
current view or the selected samples.

Thin: its form comes from
:class:`fiftyone_hardness.methods.embeddings.EmbeddingsConfig` and it calls
:func:`fiftyone_hardness.api.compute_embeddings`; it ends with a summary
(embedded, skipped, failed), and an error is shown in the App.
"""

import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.methods.embeddings import (
    OFFLINE_BACKBONE,
    EmbeddingsConfig,
)
from fiftyone_hardness.operators.common import (
    delegated_runs_input,
    on_own_dataset,
    run_with_progress,
    stream_to_app,
    target_input,
)
from fiftyone_hardness.operators.forms import (
    blocking_error,
    config_inputs,
    config_values,
    refuse_unknown_params,
)

logger = logging.getLogger(__name__)


def _hidden(ctx):
    """The parameters that do not apply to the chosen model."""
    model = ctx.params.get("model") or OFFLINE_BACKBONE
    return () if model == OFFLINE_BACKBONE else ("image_size",)


def _emptied(ctx):
    """The required parameters the form holds an empty string for: Python
    refuses them, so the form does too, rather than reading "the default"
    (as :func:`~fiftyone_hardness.operators.forms.config_values` does)."""
    return [
        p.name
        for p in EmbeddingsConfig.parameters()
        if p.form and not p.optional and ctx.params.get(p.name) == ""
    ]


def _refuse_emptied(ctx, inputs):
    for name in _emptied(ctx):
        prop = inputs.properties.get(name)
        if prop is not None:
            prop.invalid = True
            prop.error_message = EmbeddingsConfig.parameter(name).error("")


def _form_values(ctx):
    """The form's values as keyword arguments (the hidden ones included, so
    that they are validated as Python validates them)."""
    values = config_values(ctx.params, EmbeddingsConfig)
    values.update({name: "" for name in _emptied(ctx)})
    return values


def _params(ctx):
    """The keyword arguments of
    :func:`fiftyone_hardness.api.compute_embeddings` that the form sends."""
    hidden = _hidden(ctx)
    return {k: v for k, v in _form_values(ctx).items() if k not in hidden}


#: the failed samples the output lists
MAX_FAILED_SHOWN = 20


def embedding_summary(result, field):
    """The summary :class:`ComputeEmbeddings` ends with, from the result of
    :func:`fiftyone_hardness.api.compute_embeddings`."""
    failed = result.get("failed") or {}
    parts = ["Embedded %d samples into '%s'" % (result["num_embedded"], field)]
    if result.get("num_skipped"):
        parts.append("skipped %d that already had one" % result["num_skipped"])
    if failed:
        parts.append(
            "%d failed (unreadable images; they have no embedding)"
            % len(failed)
        )
    return {
        "message": ", ".join(parts) + ".",
        "embeddings_field": field,
        "num_embedded": result["num_embedded"],
        "num_skipped": result["num_skipped"],
        "num_failed": len(failed),
        "failed": [
            {"id": i, "error": str(e)}
            for i, e in list(failed.items())[:MAX_FAILED_SHOWN]
        ],
    }


def embedding_output(summary):
    """The output that shows an :func:`embedding_summary`."""
    outputs = types.Object()
    outputs.str("message", label="Summary", view=types.MarkdownView())
    outputs.int("num_embedded", label="Samples embedded")
    outputs.int("num_skipped", label="Skipped (already had one)")
    outputs.int("num_failed", label="Failed (unreadable images)")
    if summary.get("failed"):
        table = types.TableView()
        table.add_column("id", label="Sample")
        table.add_column("error", label="Error")
        outputs.list(
            "failed",
            types.Object(),
            label="Failed samples (the first %d)" % MAX_FAILED_SHOWN,
            view=table,
        )
    return types.Property(
        outputs, view=types.View(label="Hardness: compute embeddings: done")
    )


class ComputeEmbeddings(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_embeddings",
            label="Hardness: compute embeddings",
            description=(
                "Image embeddings (open_clip or the offline "
                "efficientnet_lite0 backbone) stored on each sample"
            ),
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if ctx.view.media_type != "image":
            blocking_error(
                inputs,
                "not_images",
                "Not an image dataset: embeddings need image samples; this "
                "view holds '%s'" % ctx.view.media_type,
            )
            return types.Property(inputs)
        target_input(ctx, inputs, verb="Embeds")
        delegated_runs_input(ctx, inputs, self.plugin_name)
        config_inputs(
            inputs, _form_values(ctx), EmbeddingsConfig, hide=_hidden(ctx)
        )
        _refuse_emptied(ctx, inputs)
        refuse_unknown_params(inputs, ctx.params, EmbeddingsConfig)
        return types.Property(
            inputs, view=types.View(label="Compute embeddings")
        )

    @on_own_dataset
    def execute(self, ctx):
        return stream_to_app(
            ctx,
            self._steps(ctx),
            output=embedding_output,
            title="Hardness: compute embeddings",
        )

    def _steps(self, ctx):
        from fiftyone_hardness import api

        params = _params(ctx)
        result = yield from run_with_progress(
            ctx,
            api.compute_embeddings,
            samples=ctx.target_view(),
            **params,
        )
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
        yield embedding_summary(
            result, params.get("embeddings_field") or "embeddings"
        )

    def __call__(self, sample_collection, delegate=False, **params):
        """Runs the operator from Python, e.g.
        ``foo.get_operator(uri)(dataset, embeddings_field="emb")``."""
        return foo.execute_operator(
            self.uri,
            dict(view=sample_collection.view(), params=params),
            request_delegation=delegate,
        )
