"""
Shared pieces of the App operators: form inputs (label field, the samples to
process, embeddings field, run key), progress reporting for immediate and
delegated execution, the stream that carries a generator operator's result
and errors to the App, and :class:`HardnessOperator`, the base of every
method's operator.

Operators stay thin: they parse the form and call
:func:`fiftyone_hardness.api.apply_hardness` /
:func:`fiftyone_hardness.api.compute_embeddings`.
"""

import functools
import inspect
import logging
import queue
import threading
import time

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.constants import ViewTarget
from fiftyone.operators.message import GeneratedMessage

from fiftyone_hardness.dataset_io.locks import (
    own_dataset_object,
    reload_shared_dataset,
)
from fiftyone_hardness.methods.embeddings import EmbeddingsConfig
from fiftyone_hardness.operators.forms import (
    config_inputs,
    config_values,
    refuse_unknown_params,
)

logger = logging.getLogger(__name__)


def use_own_dataset(ctx):
    """Makes ``ctx.dataset``, and the views the context builds on it
    (``ctx.view``, ``ctx.target_view()``), a Dataset object of this
    request's own: the App server reloads its shared one from the threads
    of other requests while we write (see
    :func:`~fiftyone_hardness.dataset_io.locks.own_dataset_object`)."""
    dataset = ctx.dataset
    if dataset is None:
        return
    ctx._dataset = own_dataset_object(dataset)
    ctx._view = None  # built again on the new object when asked for


def on_own_dataset(execute):
    """Decorates an operator's ``execute``: it runs on a Dataset object of
    its own (:func:`use_own_dataset`), and FiftyOne's shared object of the
    dataset is reloaded once it is done, so that a Python caller of
    ``execute_operator`` sees what it wrote, as after FiftyOne's own
    operators. A generator ``execute`` is followed to its end."""

    @functools.wraps(execute)
    def wrapper(self, ctx):
        use_own_dataset(ctx)
        name = ctx.dataset.name if ctx.dataset is not None else None
        result = execute(self, ctx)
        if inspect.isgenerator(result):
            return _then_reload(result, name)
        reload_shared_dataset(name)
        return result

    return wrapper


def _then_reload(messages, name):
    try:
        return (yield from messages)
    finally:
        reload_shared_dataset(name)


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
    inputs.enum(
        name,
        view.values(),
        default=default,
        required=required,
        label=label,
        description=description,
        view=view,
    )


def multi_select_input(
    inputs, name, choices, default, label, description=None
):
    """Adds a multi-select list of ``choices`` (``(value, text)`` pairs)."""
    inputs.list(
        name,
        types.String(),
        default=default,
        required=True,
        label=label,
        description=description,
        view=_choices_view(choices, multiple=True),
    )


#: what the label field of a hardness method is for: methods only read it
SCORED_LABELS_HELP = (
    "The fo.Classification labels to score; a hardness run only reads "
    "them and writes its own {run_key}_* fields"
)


def label_field_input(ctx, inputs, description=SCORED_LABELS_HELP):
    """Adds a dropdown of Classification fields described by
    ``description``. Returns the chosen field, or None (after adding an
    error notice) when the view has none."""
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
        return None
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
        description=description,
        view=choices,
    )
    chosen = ctx.params.get("label_field")
    return chosen if chosen in fields else default


#: how :func:`target_input` names each target in its notice
_TARGET_WORDS = {
    ViewTarget.DATASET: "the whole dataset",
    ViewTarget.CURRENT_VIEW: "the current view",
    ViewTarget.SELECTED_SAMPLES: "the selected samples",
    ViewTarget.BASE_VIEW: "the base view",
}


def _count(n):
    return "{:,}".format(n)


def plural(n, word, plural_word=None):
    """Returns e.g. "1 sample", "1,797 samples"."""
    return "%s %s" % (
        _count(n),
        word if n == 1 else plural_word or word + "s",
    )


def target_input(ctx, inputs, label_field=None, verb="Scores"):
    """Adds the choice of the samples to process, as FiftyOne's own brain
    operators offer it (``inputs.view_target``: the dataset, the current
    view or the selected samples, each described with its count; hidden
    when the dataset is the only choice), and a notice saying how many
    samples the operator will process (with how many carry a label in
    ``label_field``, and of how many classes).

    The default is the current view when the App has one, else the
    dataset (never the selection: methods that learn from the labels need
    more than a few samples), which is also what ``ctx.target_view()``
    resolves for a Python caller that does not choose.

    Returns:
        the target view (``ctx.target_view()``)
    """
    num_dataset = ctx.dataset.count()
    num_view = ctx.view.count() if ctx.has_custom_view else num_dataset
    num_selected = len(ctx.selected or [])
    inputs.view_target(
        ctx,
        default_target=(
            ViewTarget.CURRENT_VIEW
            if ctx.has_custom_view
            else ViewTarget.DATASET
        ),
        dataset_description="All %s of the dataset"
        % plural(num_dataset, "sample"),
        current_view_description="The %s of the current view"
        % plural(num_view, "sample"),
        selected_samples_description="The %s"
        % plural(num_selected, "selected sample"),
    )
    target = ctx.target_view()
    inputs.view(
        "target_summary",
        types.Notice(label=describe_target(ctx, target, label_field, verb)),
    )
    return target


#: the most delegated operations :func:`delegated_runs_input` lists
MAX_DELEGATED_SHOWN = 5


def delegated_runs(dataset, plugin_name):
    """Returns the delegated operations of the plugin ``plugin_name`` on
    ``dataset`` that are queued or running, as dicts (``id``,
    ``operator``, ``state``, ``progress`` (a fraction, or None), ``label``
    and ``updated_at``), running ones first, with the progress their
    workers stored (:func:`run_with_progress`).

    FiftyOne Enterprise's runs page shows the same stored progress; the
    open-source App has no such page, so the plugin's forms show these
    (:func:`delegated_runs_input`).
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    service = DelegatedOperationService()
    rows = []
    for state in (ExecutionRunState.RUNNING, ExecutionRunState.QUEUED):
        for op in service.list_operations(
            dataset_id=dataset._doc.id, run_state=state
        ):
            if not op.operator.startswith(plugin_name + "/"):
                continue
            status = op.status
            rows.append(
                {
                    "id": str(op.id),
                    "operator": op.operator.rsplit("/", 1)[-1],
                    "state": str(state),
                    "progress": getattr(status, "progress", None),
                    "label": getattr(status, "label", None),
                    "updated_at": getattr(status, "updated_at", None),
                }
            )
    return rows


def describe_delegated_run(row):
    """E.g. "compute_embeddings: running, 64% (64/100 images)"."""
    text = "%s: %s" % (row["operator"], row["state"])
    if row["progress"] is not None:
        text += ", %d%%" % int(round(100 * row["progress"]))
    if row["label"]:
        text += " (%s)" % row["label"]
    return text


def delegated_runs_input(ctx, inputs, plugin_name):
    """Adds a notice listing the plugin's delegated operations on the
    dataset that are queued or running, with the progress their workers
    stored (nothing when there are none). Never fails the form.

    Returns:
        the rows of :func:`delegated_runs` (empty when none or unknown)
    """
    if not plugin_name or ctx.dataset is None:
        return []
    try:
        rows = delegated_runs(ctx.dataset, plugin_name)
    except Exception as e:  # the form works without it
        logger.debug("Could not list delegated operations: %s", e)
        return []
    if rows:
        shown = [describe_delegated_run(r) for r in rows[:MAX_DELEGATED_SHOWN]]
        if len(rows) > MAX_DELEGATED_SHOWN:
            shown.append("%d more" % (len(rows) - MAX_DELEGATED_SHOWN))
        inputs.view(
            "delegated_runs",
            types.Notice(
                label="Delegated runs on this dataset: %s" % "; ".join(shown)
            ),
        )
    return rows


def describe_target(ctx, target, label_field=None, verb="Scores"):
    """Returns the sentence :func:`target_input` shows, e.g. "Scores 1,797
    samples (the whole dataset); 1,797 have a 'ground_truth' label, of 10
    classes"."""
    chosen = ctx.request_params.get("view_target") or (
        ViewTarget.CURRENT_VIEW if ctx.has_custom_view else ViewTarget.DATASET
    )
    total = target.count()
    sentence = "%s %s (%s)" % (
        verb,
        plural(total, "sample"),
        _TARGET_WORDS.get(chosen, "the chosen samples"),
    )
    if label_field and total:
        counts = target.count_values(label_field + ".label")
        labelled = sum(n for label, n in counts.items() if label is not None)
        classes = sum(1 for label in counts if label is not None)
        sentence += "; %s %s a '%s' label, of %s" % (
            _count(labelled),
            "has" if labelled == 1 else "have",
            label_field,
            plural(classes, "class", "classes"),
        )
    return sentence


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


#: the fewest seconds between two progress updates that a delegated run
#: stores (each is a write to the database)
STORED_PROGRESS_INTERVAL = 0.5


class _StoredProgress(object):
    """The progress callable of a delegated run: passes ``(fraction,
    message)`` to ``ctx.set_progress``, which FiftyOne stores on the
    delegated operation (its ``status``: progress, label, time), where the
    App's runs page shows it while the run goes on. At most one update is
    stored every :data:`STORED_PROGRESS_INTERVAL` seconds (and the end, a
    fraction of 1, at once); :meth:`flush` stores the last one held
    back."""

    def __init__(self, ctx, interval=None):
        self.ctx = ctx
        self.interval = (
            STORED_PROGRESS_INTERVAL if interval is None else interval
        )
        self._stored_at = None
        self._held = None

    def __call__(self, fraction, message=""):
        now = time.monotonic()
        if (
            self._stored_at is None
            or now - self._stored_at >= self.interval
            or (fraction is not None and fraction >= 1)
        ):
            self._store(fraction, message, now)
        else:
            self._held = (fraction, message)

    def _store(self, fraction, message, now):
        self._held = None
        self._stored_at = now
        self.ctx.set_progress(progress=fraction, label=message)

    def flush(self):
        """Stores the last update that was held back, if any."""
        if self._held is not None:
            self._store(*self._held, now=time.monotonic())


def run_with_progress(ctx, function, **kwargs):
    """Calls ``function(progress=..., **kwargs)``, reporting its progress to
    the App. A generator: use ``result = yield from run_with_progress(...)``.

    Delegated executions report through ``ctx.set_progress``, which
    FiftyOne stores on the delegated operation for the App (see
    :class:`_StoredProgress`); immediate ones run the function in a thread
    and yield ``set_progress`` triggers.
    """
    if ctx.delegated:
        report = _StoredProgress(ctx)
        try:
            return function(progress=report, **kwargs)
        finally:
            report.flush()

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


class _StreamLine(GeneratedMessage):
    """One line of a generator operator's stream to the App, written as the
    App reads it."""

    def __init__(self, line):
        super().__init__()
        self.line = line

    def to_json(self):
        return self.line


def error_line(message):
    """The stream line that marks the operation as failed in the App (as a
    non-generator operator's error does): the App then keeps the
    operator's prompt open, showing "Error occurred during operator
    execution" with ``message`` as its details."""
    return _StreamLine(
        {
            "type": "ERROR",
            "cls": None,
            "body": None,
            "error": message,
            "error_message": message,
        }
    )


def error_text(error):
    """The message an execution error shows in the App: a
    :class:`~fiftyone_hardness.methods.base.HardnessError` already names
    the problem and the fix; anything else is prefixed with its type."""
    from fiftyone_hardness.methods.base import HardnessError

    if isinstance(error, HardnessError):
        return str(error)
    return "%s: %s" % (type(error).__name__, error)


def error_output(title, message):
    """The output an operation that failed shows: ``title`` and the
    message, as an error."""
    outputs = types.Object()
    outputs.view("error", types.Error(label=title, description=message))
    return types.Property(outputs, view=types.View(label=title))


def stream_to_app(ctx, steps, output=None, title="The operation"):
    """Runs ``steps``, the generator of a generator operator's work, for
    the App, and makes its end visible there.

    A delegated execution (run by a ``fiftyone delegated launch`` worker)
    has no App to stream to: it runs ``steps`` to the end and returns its
    result dict, which FiftyOne stores on the delegated operation
    (``result.result``) beside the progress reported on the way (see
    :func:`run_with_progress`); FiftyOne drops whatever a generator
    yields there, so a generator would store nothing. An exception fails
    the operation with its message.

    Otherwise it returns a generator for the App:

    -   its messages (progress, triggers) are passed on;
    -   the last dict it yields, its result, is shown with ``output(result)``
        (a ``types.Property``) through FiftyOne's ``show_output``, in the
        dialog that showed the progress;
    -   an exception is shown in that dialog too, as an error notification
        with its message, and as the failed state of the operator's prompt;
        it is then re-raised, so that Python callers of the operator see
        it.

    Without this, FiftyOne's generator stream drops the result, and an
    exception only ends the stream: the App closes the prompt as if the
    operation had succeeded, and the error is only in the server log.

    Args:
        ctx: the execution context
        steps: a generator yielding messages, then its result dict
        output (None): a function of the result returning the output
            property to show, or None to show nothing
        title ("The operation"): what failed, e.g. the operator's label

    Returns:
        the JSON-able result dict (delegated), or a generator of messages
    """
    if ctx.delegated:
        return _run_to_end(steps)
    return _stream(ctx, steps, output, title)


def _run_to_end(steps):
    """Runs ``steps`` to its end; returns its last dict, JSON-able."""
    from fiftyone_hardness.dataset_io.runs import to_jsonable

    result = None
    for item in steps:
        if not isinstance(item, GeneratedMessage):
            result = item
    return None if result is None else to_jsonable(result)


def _stream(ctx, steps, output, title):
    result = None
    try:
        for item in steps:
            if isinstance(item, GeneratedMessage):
                yield item
            else:
                result = item
    except Exception as e:
        message = error_text(e)
        failed = "%s failed" % title
        yield ctx.ops.show_output(error_output(failed, message).to_json(), {})
        yield ctx.ops.notify(message, variant="error")
        yield error_line(message)
        raise
    if result is not None and output is not None:
        yield ctx.ops.show_output(output(result).to_json(), result)


def _candidate_message(audit):
    """What RER's candidate classes did on this dataset (``audit`` is its
    ``candidate_audit``, methods/rer/candidates.py). Runs saved before
    the coverage rule have no ``nearest_classes``: they used 10."""
    if "nearest_classes" in audit and audit["nearest_classes"] is None:
        return (
            "; errors computed under every class: the nearest classes did "
            "not reach candidate_coverage=%g on this dataset (measured on "
            "%d random samples)" % (audit["coverage"], audit["rows"])
        )
    return (
        "; errors computed under each sample's %d nearest classes: on %d "
        "random samples, %.1f%% got the same smallest error over the other "
        "classes as under every class (set nearest_classes=None for the "
        "exact computation)"
        % (
            audit.get("nearest_classes", 10),
            audit["rows"],
            100.0 * audit["min_other_equal"],
        )
    )


def run_summary(results):
    """Returns the short summary of a run that an operator ends with: what
    was scored, flagged and the noise-rate estimate of its default score
    (the main one, else the first), with a sentence saying it.

    Args:
        results: a
            :class:`~fiftyone_hardness.dataset_io.runs.HardnessRunResults`

    Returns:
        a JSON-able dict: ``run_key``, ``method``, ``score`` (its name),
        ``num_scores``, ``num_scored``, ``num_skipped``, ``num_flagged``
        (None when the score has no flags), ``noise_rate`` (None when the
        method has no estimate) and ``message``
    """
    scores = results.scores()
    score = scores[0] if scores else None
    scored = int(results.num_samples or 0)
    flagged = getattr(results, "num_flagged", None)
    noise_rate = getattr(results, "noise_rate", None)
    if score is not None:
        if score.flag_field is None:
            flagged = None
        elif score.num_flagged is not None:
            flagged = score.num_flagged
        noise_rate = score.noise_rate
    parts = ["Scored %s" % plural(scored, "sample")]
    if flagged is not None:
        parts.append(
            "flagged %s (%.1f%%)"
            % (_count(flagged), 100.0 * flagged / scored if scored else 0.0)
        )
    if noise_rate is not None:
        parts.append("estimated noise rate %.3f" % noise_rate)
    message = ", ".join(parts)
    if len(scores) > 1:
        message += " by '%s', the first of its %d scores" % (
            score.name,
            len(scores),
        )
    skipped = int(getattr(results, "num_skipped", 0) or 0)
    if skipped:
        message += "; %s without a label skipped" % plural(skipped, "sample")
    audit = getattr(results, "candidate_audit", None)
    if audit:
        message += _candidate_message(audit)
    return {
        "run_key": results.key,
        "method": results.method,
        "score": score.name if score is not None else None,
        "num_scores": len(scores),
        "num_scored": scored,
        "num_skipped": skipped,
        "num_flagged": None if flagged is None else int(flagged),
        "noise_rate": None if noise_rate is None else round(noise_rate, 3),
        "message": message + ".",
    }


def summary_output(summary, plugin_name, title="Done"):
    """The output that shows a run's :func:`run_summary`: the sentence,
    the figures, and a button that shows the flagged samples, hardest
    first (the plugin's ``load_hardness_view`` operator), or all scored
    samples when the score has no flags."""
    outputs = types.Object()
    outputs.str("message", label="Summary", view=types.MarkdownView())
    outputs.int("num_scored", label="Samples scored")
    flagged = summary.get("num_flagged")
    if flagged is not None:
        outputs.int("num_flagged", label="Flagged")
    if summary.get("noise_rate") is not None:
        outputs.float("noise_rate", label="Estimated noise rate")
    params = {
        "run_key": summary.get("run_key"),
        "which": "flagged" if flagged else "all",
    }
    if summary.get("num_scores", 1) > 1 and summary.get("score"):
        params["score"] = summary["score"]
    outputs.view(
        "open_view",
        types.Button(
            label=(
                "Show the %s flagged samples, hardest first" % _count(flagged)
                if flagged
                else "Show the scored samples, hardest first"
            ),
            operator="%s/load_hardness_view" % plugin_name,
            params=params,
        ),
    )
    return types.Property(outputs, view=types.View(label=title))


#: form inputs of every :class:`HardnessOperator` that are not parameters
#: of its method
BASE_OPERATOR_PARAMS = (
    "label_field",
    "run_key",
    "overwrite",
    "compute_embeddings_first",
) + EMBEDDING_MODEL_PARAMS


class HardnessOperator(foo.Operator):
    """Base of the operators that run one hardness method.

    The form is built from the method's config dataclass (the registry's
    ``config``): one input per parameter, with the same validation as
    Python. It also offers which samples to score (the dataset, the current
    view or the selection, with their counts), and refuses names that are
    neither a parameter of the method nor an input of the form (a
    misspelled parameter from a Python caller would otherwise be dropped;
    Python's ``apply_hardness`` refuses it too). Execution ends with the
    run's summary and a button that shows its flagged samples; an error is
    shown in the App (see :func:`stream_to_app`).

    Subclasses set :attr:`method`, :attr:`label` and :attr:`description`,
    and may override :meth:`source_inputs` (inputs the operator renders
    itself, e.g. where the features come from; return False when the form
    cannot be completed), :meth:`hidden` (parameters that do not apply to
    the current choices), :meth:`source_params` and
    :attr:`operator_params`.
    """

    method = None
    label = None
    description = None
    needs_embeddings = True

    #: the operator's own form inputs that are not parameters of its method
    #: (beyond :data:`BASE_OPERATOR_PARAMS`), e.g. a radio that chooses
    #: where the features come from
    operator_params = ()

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

    def known_params(self):
        """The form inputs that are not parameters of the method."""
        return BASE_OPERATOR_PARAMS + tuple(self.operator_params)

    def resolve_input(self, ctx):
        inputs = types.Object()
        label_field = label_field_input(ctx, inputs)
        ready = label_field is not None
        if ready:
            target_input(ctx, inputs, label_field)
            delegated_runs_input(ctx, inputs, self.plugin_name)
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
        refuse_unknown_params(
            inputs, ctx.params, self.config_class, self.known_params()
        )
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

    @on_own_dataset
    def execute(self, ctx):
        return stream_to_app(
            ctx,
            self._steps(ctx),
            output=lambda summary: summary_output(
                summary, self.plugin_name, title="%s: done" % self.label
            ),
            title=self.label,
        )

    def _steps(self, ctx):
        from fiftyone_hardness import api

        params = self.method_params(ctx)
        if self.embeddings_first(ctx):
            yield from run_with_progress(
                ctx,
                api.compute_embeddings,
                samples=ctx.target_view(),
                embeddings_field=params["embeddings_field"],
                skip_existing=True,
                **embedding_model_params(ctx),
            )
        yield from self.run_method(ctx, params)

    def run_method(self, ctx, params):
        """Runs ``apply_hardness`` with the form's label field, run key and
        overwrite plus ``params``, with progress; reloads the App and yields
        the run's summary (:func:`run_summary`). A generator."""
        from fiftyone_hardness import api

        results = yield from run_with_progress(
            ctx,
            api.apply_hardness,
            samples=ctx.target_view(),
            method=self.method,
            label_field=ctx.params.get("label_field") or "ground_truth",
            run_key=ctx.params.get("run_key") or self.method,
            overwrite=bool(ctx.params.get("overwrite", False)),
            **params,
        )
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
        yield run_summary(results)

    def __call__(
        self,
        sample_collection,
        label_field="ground_truth",
        delegate=False,
        **params,
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
