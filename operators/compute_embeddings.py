"""
The ``compute_embeddings`` operator: image embeddings for the current view.
"""
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.operators.common import model_input, run_with_progress


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
            inputs.view(
                "not_images",
                types.Error(
                    label="Not an image dataset",
                    description="Embeddings need image samples; this view "
                    "holds '%s'" % ctx.view.media_type,
                ),
            )
            return types.Property(inputs)
        model_input(inputs)
        inputs.str(
            "embeddings_field",
            default="embeddings",
            required=True,
            label="Embeddings field",
        )
        inputs.int("batch_size", default=64, label="Batch size")
        inputs.bool(
            "skip_existing",
            default=True,
            label="Skip samples that already have an embedding",
        )
        return types.Property(
            inputs, view=types.View(label="Compute embeddings")
        )

    def execute(self, ctx):
        from fiftyone_hardness import api

        result = yield from run_with_progress(
            ctx,
            api.compute_embeddings,
            samples=ctx.target_view(),
            model=ctx.params.get("model") or "efficientnet_lite0",
            pretrained=ctx.params.get("pretrained") or None,
            embeddings_field=ctx.params.get("embeddings_field", "embeddings"),
            batch_size=int(ctx.params.get("batch_size") or 64),
            skip_existing=bool(ctx.params.get("skip_existing", True)),
            image_size=ctx.params.get("image_size") or None,
        )
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
        yield {
            "num_embedded": result["num_embedded"],
            "num_skipped": result["num_skipped"],
            "failed": result["failed"],
        }

    def __call__(self, sample_collection, delegate=False, **params):
        """Runs the operator from Python, e.g.
        ``foo.get_operator(uri)(dataset, embeddings_field="emb")``."""
        params.setdefault("model", "efficientnet_lite0")
        params.setdefault("embeddings_field", "embeddings")
        return foo.execute_operator(
            self.uri,
            dict(view=sample_collection.view(), params=params),
            request_delegation=delegate,
        )
