"""
Shared pieces of the App operators: form inputs (label field, embeddings
field, run key), progress reporting for immediate and delegated execution,
and :class:`HardnessOperator`, the base of every method's operator.

Operators stay thin: they parse the form and call
:func:`fiftyone_hardness.api.apply_hardness` /
:func:`fiftyone_hardness.api.compute_embeddings`.
"""
import logging
import queue
import threading

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.methods.embeddings import EmbeddingsConfig
from fiftyone_hardness.operators.forms import config_inputs, config_values

logger = logging.getLogger(__name__)



def classification_fields(view):
    """Returns the names of the ``fo.Classification`` fields of ``view``."""
    schema = view.get_field_schema(
        ftype=fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification
    )
    return sorted(schema)


def vector_fields(view):
    """Returns the names of the fields of ``view`` that hold vectors."""
    schema = view.get_field_schema()
    names = []
    for name, field in schema.items():
        if isinstance(field, fo.VectorField):
            names.append(name)
        elif isinstance(field, fo.ListField) and isinstance(
            field.field, fo.FloatField
        ):
            names.append(name)
    return sorted(names)


def _choices_view(choices, multiple=False):
    view = types.DropdownView(multiple=multiple)
    for value, text in choices:
        view.add_choice(value, label=text)
    return view


def dropdown_input(
    inputs, name, choices, default, label, description=None, required=False
):
    """Adds a dropdown of ``choices``, a list of ``(value, text)`` pairs."""
    view = _choices_view(choices)
    inputs.enum(name, view.values(), default=default, required=required,
                label=label, description=description, view=view)


def multi_select_input(inputs, name, choices, default, label,
                       description=None):
    """Adds a multi-select list of ``choices`` (``(value, text)`` pairs)."""
    inputs.list(name, types.String(), default=default, required=True,
                label=label, description=description,
                view=_choices_view(choices, multiple=True))


def label_field_input(ctx, inputs):
    """Adds a dropdown of Classification fields. Returns False (after adding
    an error notice) when the view has none."""
    fields = classification_fields(ctx.view)
    if not fields:
        inputs.view(
            "no_labels",
            types.Error(
                label="No fo.Classification field",
                description=(
                    "Hardness methods score classification labels; this "
                    "dataset has no field of type fo.Classification"
                ),
            ),
        )
        return False
    choices = types.DropdownView()
    for name in fields:
        choices.add_choice(name, label=name)
    default = "ground_truth" if "ground_truth" in fields else fields[0]
    inputs.enum(
        "label_field",
        choices.values(),
        default=default,
        required=True,
        label="Label field",
        description="The fo.Classification labels to score (never modified)",
        view=choices,
    )
    return True


def embeddings_input(ctx, inputs, required=True):
    """Adds a dropdown of vector fields, or, when there is none, offers to
    compute embeddings first. Returns True when the form is complete."""
    fields = vector_fields(ctx.view)
    if fields:
        choices = types.DropdownView()
        for name in fields:
            choices.add_choice(name, label=name)
        inputs.enum(
            "embeddings_field",
            choices.values(),
            default=fields[0],
            required=required,
            label="Embeddings field",
            view=choices,
        )
        return True
    inputs.view(
        "no_embeddings",
        types.Warning(
            label="No embeddings on this dataset",
            description="Compute them first (stored in 'embeddings')",
        ),
    )
    inputs.bool(
        "compute_embeddings_first",
        default=True,
        label="Compute embeddings now",
        view=types.CheckboxView(),
    )
    model_input(ctx, inputs)
    return bool(ctx.params.get("compute_embeddings_first", True))


#: the :class:`EmbeddingsConfig` parameters "Compute embeddings now" offers
EMBEDDING_MODEL_PARAMS = ("model", "pretrained")

#: the field "Compute embeddings now" writes
FIRST_EMBEDDINGS_FIELD = "embeddings"


def model_input(ctx, inputs):
    """Adds the embedding model and its weights, as
    :class:`~fiftyone_hardness.methods.embeddings.EmbeddingsConfig` declares
    them. Returns whether their values are valid."""
    others = [
        p.name
        for p in EmbeddingsConfig.parameters()
        if p.name not in EMBEDDING_MODEL_PARAMS
    ]
    return config_inputs(
        inputs, embedding_model_params(ctx), EmbeddingsConfig, hide=others
    )


def embedding_model_params(ctx):
    """Returns the model and weights chosen by :func:`model_input`."""
    values = {name: ctx.params.get(name) for name in EMBEDDING_MODEL_PARAMS}
    return config_values(values, EmbeddingsConfig)


def run_key_input(ctx, inputs, default):
    """Adds the run key and overwrite inputs, with an inline error when the
    key exists and overwrite is off."""
    run_key = ctx.params.get("run_key") or default
    overwrite = bool(ctx.params.get("overwrite", False))
    exists = run_key in ctx.dataset.list_runs()
    inputs.str(
        "run_key",
        default=default,
        required=True,
        label="Run key",
        description="Fields are written as {run_key}_score, {run_key}_flag...",
        invalid=exists and not overwrite,
        error_message=(
            "A run with key '%s' exists; choose another key or overwrite"
            % run_key
        ),
    )
    inputs.bool("overwrite", default=False, label="Overwrite an existing run")
    return not (exists and not overwrite)


def run_with_progress(ctx, function, **kwargs):
    """Calls ``function(progress=..., **kwargs)``, reporting its progress to
    the App. A generator: use ``result = yield from run_with_progress(...)``.

    Delegated executions report through ``ctx.set_progress``; immediate
    ones run the function in a thread and yield ``set_progress`` triggers.
    """
    if ctx.delegated:

        def report(fraction, message=""):
            ctx.set_progress(progress=fraction, label=message)

        return function(progress=report, **kwargs)

    updates = queue.Queue()
    outcome = {}

    def target():
        try:
            outcome["result"] = function(
                progress=lambda f, m="": updates.put((f, m)), **kwargs
            )
        except BaseException as e:  # re-raised in the caller's thread
            outcome["error"] = e
        finally:
            updates.put(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    last = None
    while True:
        update = updates.get()
        if update is None:
            break
        shown = (round(update[0], 2), update[1])
        if shown != last:
            last = shown
            yield ctx.trigger(
                "set_progress", dict(progress=update[0], label=update[1])
            )
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class HardnessOperator(foo.Operator):
    """Base of the operators that run one hardness method.

    The form is built from the method's config dataclass (the registry's
    ``config``): one input per parameter, with the same validation as
    Python. Subclasses set :attr:`method`, :attr:`label` and
    :attr:`description`, and may override :meth:`source_inputs` (inputs the
    operator renders itself, e.g. where the features come from; return
    False when the form cannot be completed), :meth:`hidden` (parameters
    that do not apply to the current choices) and :meth:`source_params`.
    """

    method = None
    label = None
    description = None
    needs_embeddings = True

    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_%s" % self.method,
            label=self.label,
            description=self.description,
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    @property
    def config_class(self):
        from fiftyone_hardness.methods import registry

        return registry.get_spec(self.method).get_config_class()

    #: parameters :meth:`source_inputs` renders itself
    source_fields = ("embeddings_field",)

    def source_inputs(self, ctx, inputs):
        if self.needs_embeddings:
            return embeddings_input(ctx, inputs)
        return True

    def hidden(self, ctx):
        """Returns the parameters that do not apply to the current form
        values (they are neither shown nor sent)."""
        return ()

    def source_params(self, ctx):
        """Returns the parameters :meth:`source_inputs` collected."""
        field = ctx.params.get("embeddings_field")
        if not field and self.embeddings_first(ctx):
            field = FIRST_EMBEDDINGS_FIELD
        return {"embeddings_field": field} if field else {}

    def embeddings_first(self, ctx):
        """Whether :meth:`execute` computes embeddings before the method:
        the form had no embeddings field to offer (see
        :func:`embeddings_input`)."""
        return (
            self.needs_embeddings
            and "embeddings_field" in self.source_fields
            and not ctx.params.get("embeddings_field")
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ready = label_field_input(ctx, inputs)
        if ready:
            ready = self.source_inputs(ctx, inputs) is not False
        if ready:
            # validated with the source's values, e.g. the field that
            # "Compute embeddings now" writes
            ready = config_inputs(
                inputs,
                dict(ctx.params, **self.source_params(ctx)),
                self.config_class,
                skip=self.source_fields,
                hide=self.hidden(ctx),
            )
            run_key_input(ctx, inputs, default=self.method)
        return types.Property(inputs, view=types.View(label=self.label))

    def method_params(self, ctx):
        """Returns the ``apply_hardness`` keyword arguments of the form."""
        hidden = set(self.hidden(ctx))
        params = config_values(
            ctx.params, self.config_class, skip=self.source_fields
        )
        params = {k: v for k, v in params.items() if k not in hidden}
        params.update(self.source_params(ctx))
        return params

    def execute(self, ctx):
        from fiftyone_hardness import api

        params = self.method_params(ctx)
        if self.embeddings_first(ctx):
            yield from run_with_progress(
                ctx,
                api.compute_embeddings,
                samples=ctx.target_view(),
                embeddings_field=params["embeddings_field"],
                skip_existing=True,
                **embedding_model_params(ctx)
            )
        yield from self.run_method(ctx, params)

    def run_method(self, ctx, params):
        """Runs ``apply_hardness`` with the form's label field, run key and
        overwrite plus ``params``, with progress; reloads the App and yields
        the run's summary. A generator."""
        from fiftyone_hardness import api

        results = yield from run_with_progress(
            ctx,
            api.apply_hardness,
            samples=ctx.target_view(),
            method=self.method,
            label_field=ctx.params["label_field"],
            run_key=ctx.params.get("run_key") or self.method,
            overwrite=bool(ctx.params.get("overwrite", False)),
            **params
        )
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
        yield {"summary": results.summary(), "run_key": results.key}

    def __call__(
        self, sample_collection, label_field="ground_truth",
        delegate=False, **params
    ):
        """Runs the operator from Python, e.g.
        ``foo.get_operator(uri)(dataset, embeddings_field="emb")``."""
        params["label_field"] = label_field
        params.setdefault("run_key", self.method)
        return foo.execute_operator(
            self.uri,
            dict(view=sample_collection.view(), params=params),
            request_delegation=delegate,
        )
