"""
The Hardness panel: a python panel on the App's grid surface that shows a
hardness run and walks a reviewer from a hard class to a fixed label.

For the run chosen (the newest by default) it shows the run's figures, each
with what it means in plain words; the classes hardest first (a bar chart on
an axis fitted to the data, and a table with each class's flagged count and
noise estimate); the score histogram with the threshold; a review queue of
the flagged samples, hardest first, re-ranked with the corrected labels as
the reviewer works; the hardest flagged samples with their review status;
and, when several runs exist, the agreement of the scores the user picks.

The panel is live: a timer (:class:`fiftyone.operators.types.TimerView`)
polls a cheap signature of the runs (keys, run ids, timestamps) and of the
samples (count and latest ``last_modified_at``, an index lookup), read
straight from the database (:func:`~fiftyone_hardness.dataset_io.run_views.
change_signatures`), so that a
run computed, renamed, deleted or written again, and reviews, corrections
and undos made anywhere, show without a manual Refresh; a run whose scored
labels changed since it was computed is marked stale.

Clicking a class bar loads that class sorted hardest first; clicking or
box-selecting histogram bars loads that score range; clicking a table row
selects the sample; a button saves the flagged samples as a saved view named
after the run. The panel only reads runs, through their schema
(:meth:`fiftyone_hardness.dataset_io.runs.HardnessRunResults.scores`),
:mod:`fiftyone_hardness.dataset_io.run_views` and
:mod:`fiftyone_hardness.dataset_io.review_queue`, and records verdicts
through :mod:`fiftyone_hardness.dataset_io.review`; it never computes scores
nor parses field names. See ``docs/app.md``.
"""

import datetime
import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.dataset_io import review_queue as fhqueue
from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.dataset_io.runs import list_hardness_runs
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.operators.common import error_text, use_own_dataset

logger = logging.getLogger(__name__)

PANEL_NAME = "hardness_panel"

#: how often the panel checks for new runs and label changes (ms)
POLL_MS = 3000

#: the most score series shown in the agreement view by default
AGREEMENT_DEFAULT_SERIES = 6

#: samples of the review queue that the grid shows at once
QUEUE_VIEW_SIZE = 25

_BAR_COLOR = "#FF6D04"
_HIST_COLOR = "#4C9BE8"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_CLASS_HEIGHT = 300
_HIST_HEIGHT = 260

_CLASS_HELP = (
    "Each bar is a class's mean score, hardest first. Scores are oriented "
    "so that higher = harder for every method, and the axis is fitted to "
    "the bars, so small differences show. *Flagged* counts the class's "
    "samples the run flags; *noise estimate* = flagged / scored, the share "
    "of the class's labels the run calls wrong."
)
_HIST_HELP = (
    "How many samples have each score; samples right of the red threshold "
    "are flagged."
)
_AGREEMENT_HELP = (
    "Spearman rank correlation between the scores you pick: 1 = the two "
    "scores rank the samples identically, 0 = unrelated, -1 = opposite."
)


class HardnessPanel(foo.Panel):
    """The Hardness panel (``hardness_panel``)."""

    @property
    def config(self):
        return foo.PanelConfig(
            name=PANEL_NAME,
            label="Hardness",
            icon="troubleshoot",
            surfaces="grid",
            help_markdown=(
                "Hardness runs of this dataset: difficulty, estimated noise "
                "rate, hardest classes and flagged samples, and a review "
                "queue of the flagged samples. Click a class bar or a "
                "histogram bar to load those samples, hardest first."
            ),
        )

    def execute(self, ctx):
        """Runs a panel event as :meth:`fiftyone.operators.Panel.execute`
        does, with the event's writes to the panel's state and data sent to
        the App as one patch each, before the layout (the App re-renders the
        panel once per patch, and an event sets dozens of keys), and the
        layout only when the state changed. Every event works on a Dataset
        object of its own (:func:`use_own_dataset`); an idle poll loads
        none."""
        if ctx.params.get("__method__") != "on_poll":
            use_own_dataset(ctx)
        panel = getattr(ctx, "_panel", None)
        if panel is None or ctx.params.get("__method__") in (
            None,
            "on_startup",
        ):
            return super().execute(ctx)
        state = _Buffered(panel._state, ctx.ops.patch_panel_state)
        data = _Buffered(panel._data, ctx.ops.patch_panel_data)
        real = panel._state, panel._data
        panel._state, panel._data = state, data
        try:
            name = ctx.params.get("__method__")
            method = getattr(self, name, None)
            result = None
            if method is not None:
                ctx.event_args = ctx.params.get("event_args", {})
                try:
                    result = method(ctx)
                except Exception as e:
                    # unexpected: shown to the person who clicked, and the
                    # panel stays as it was, its half-made updates dropped
                    # (FiftyOne shows an uncaught error in place of the
                    # panel's content: in CI the review was gone from the
                    # panel for the 30 s the browser test waited)
                    logger.exception("Hardness panel: %s failed", name)
                    ctx.ops.notify(
                        "The Hardness panel could not do that: %s"
                        % error_text(e),
                        variant="error",
                    )
                    return None
            # the layout depends on the state only: an event that changed
            # no state (an idle poll, a chart click that sets the grid's
            # view) sends no new layout, and the App keeps the one it has
            relayout = bool(state._updates)
            state.flush()
            data.flush()
            if relayout:
                ctx.ops.show_panel_output(self.render(ctx))
            return result
        finally:
            panel._state, panel._data = real

    #
    # Lifecycle
    #

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        for key in (
            "run_key",
            "run_id",
            "runs",
            "run_list",
            "score",
            "review_id",
        ):
            setattr(ctx.panel.state, key, None)
        ctx.panel.state.review_skipped = []
        self._refresh(ctx)

    def on_poll(self, ctx):
        """The timer's event: refreshes what changed since the last look
        (runs, or samples: labels, reviews), and nothing otherwise."""
        # the signatures come straight from the database: an idle poll
        # does not even load the dataset (ctx.dataset reloads it)
        dataset_id = getattr(ctx, "dataset_id", None)
        name = getattr(ctx, "dataset_name", None)
        if not (dataset_id or name):
            if ctx.dataset is None:
                return
            dataset_id = ctx.dataset._doc.id
        runs_sig, samples_sig = run_views.change_signatures(
            dataset_id=dataset_id, dataset_name=name
        )
        if runs_sig is None:
            return
        state = ctx.panel.state
        changed = (runs_sig, samples_sig) != (
            state.runs_signature,
            state.samples_signature,
        )
        if changed or state.review_building:
            use_own_dataset(ctx)
        if runs_sig != state.runs_signature:
            self._refresh(ctx)
        elif samples_sig != state.samples_signature:
            self._refresh_samples(ctx)
        elif state.review_building:
            self._load_review(ctx)  # the re-ranking graph may be ready

    #
    # Events
    #

    def on_change_run(self, ctx):
        key = ctx.params.get("value")
        ctx.panel.state.run_key = key
        ctx.panel.state.run_id = None
        ctx.panel.state.score = None
        ctx.panel.state.review_id = None
        ctx.panel.state.review_skipped = []
        self._refresh(ctx)

    def on_change_score(self, ctx):
        ctx.panel.state.score = ctx.params.get("value")
        ctx.panel.state.review_id = None
        ctx.panel.state.review_skipped = []
        self._refresh(ctx)

    def on_refresh(self, ctx):
        self._refresh(ctx)

    def on_class_click(self, ctx):
        label = ctx.params.get("x")
        results = self._results(ctx)
        if results is None or label is None:
            return
        view = run_views.class_view(
            ctx.dataset, results, str(label), self._score(ctx, results)
        )
        ctx.ops.set_view(view)

    def on_histogram_click(self, ctx):
        index = ctx.params.get("idx")
        edges = ctx.panel.state.hist_edges or []
        if index is None or index + 1 >= len(edges):
            return
        self._set_score_range(ctx, edges[index], edges[index + 1])

    def on_histogram_select(self, ctx):
        points = ctx.params.get("data") or []
        edges = ctx.panel.state.hist_edges or []
        indices = [p.get("idx") for p in points if p.get("idx") is not None]
        indices = [i for i in indices if i + 1 < len(edges)]
        if not indices:
            return
        self._set_score_range(
            ctx, edges[min(indices)], edges[max(indices) + 1]
        )

    def on_row_click(self, ctx):
        row = ctx.params.get("row")
        rows = ctx.panel.state.flagged_table or []
        if row is None or not 0 <= row < len(rows):
            return
        sample_id = rows[row]["id"]
        ctx.ops.set_selected_samples([sample_id])

    def on_show_flagged(self, ctx):
        results = self._results(ctx)
        if results is None:
            return
        view = run_views.flagged_view(
            ctx.dataset, results, self._score(ctx, results)
        )
        ctx.ops.set_view(view)

    def on_save_view(self, ctx):
        results = self._results(ctx)
        if results is None:
            return
        name = run_views.save_flagged_view(
            ctx.dataset, results, self._score(ctx, results)
        )
        ctx.panel.state.saved_view = name
        ctx.ops.notify("Saved the flagged samples as view '%s'" % name)
        # the App learns about the new saved view when it reloads the
        # dataset; loading it by name right away would race that reload
        ctx.ops.reload_dataset()
        ctx.ops.set_view(
            run_views.flagged_view(
                ctx.dataset, results, self._score(ctx, results)
            )
        )

    def on_open_saved_view(self, ctx):
        name = ctx.panel.state.saved_view
        if name and ctx.dataset.has_saved_view(name):
            ctx.ops.set_view(name=name)

    def on_clear_view(self, ctx):
        ctx.ops.clear_view()

    def on_change_agreement(self, ctx):
        value = ctx.params.get("value")
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        ctx.panel.state.agreement_series = list(value or [])
        _load_agreement(ctx)

    #
    # Review events
    #

    def on_review_start(self, ctx):
        """Shows the queue in the grid, the current sample selected."""
        self._show_queue(ctx)

    def on_review_open(self, ctx):
        """Opens the current queue sample in the sample view."""
        sample_id = ctx.panel.state.review_id
        if sample_id:
            self._show_queue(ctx)
            ctx.ops.open_sample(id=sample_id)

    def on_review_class(self, ctx):
        ctx.panel.state.correct_class = ctx.params.get("value")

    def on_review_wrong(self, ctx):
        label = ctx.panel.state.correct_class
        if not label:
            self._review_error(
                ctx, "Pick the correct class first, then press Wrong"
            )
            return
        self._verdict(ctx, "wrong", label)

    def on_review_right(self, ctx):
        self._verdict(ctx, "right")

    def on_review_skip(self, ctx):
        sample_id = ctx.panel.state.review_id
        if not sample_id:
            return
        skipped = [
            i for i in (ctx.panel.state.review_skipped or []) if i != sample_id
        ]
        ctx.panel.state.review_skipped = skipped + [sample_id]
        ctx.panel.state.review_id = None
        ctx.panel.state.review_error = None
        ctx.panel.state.review_message = "Skipped; it comes back at the end"
        self._load_review(ctx)
        self._show_queue(ctx)

    def on_queue_row_click(self, ctx):
        row = ctx.params.get("row")
        rows = ctx.panel.state.review_queue or []
        if row is None or not 0 <= row < len(rows):
            return
        ctx.panel.state.review_id = rows[row]["id"]
        ctx.panel.state.review_error = None
        self._load_review(ctx)
        self._show_queue(ctx)

    def _verdict(self, ctx, verdict, label=None):
        state = ctx.panel.state
        sample_id = state.review_id
        results = self._results(ctx)
        if not sample_id or results is None:
            return
        score = self._score(ctx, results)
        try:
            queue = fhqueue.get_queue(ctx.dataset, results, score)
            item = queue.item(sample_id)
            reranked = fhqueue.record_verdict(
                ctx.dataset, queue, sample_id, verdict, correct_label=label
            )
        except HardnessError as e:
            self._review_error(ctx, str(e))
            return
        if verdict == "wrong":
            message = "Recorded: labelled %s, it is %s" % (
                item["label"],
                label,
            )
        else:
            message = "Recorded: %s is right" % item["label"]
        if reranked:
            message += "; the queue was re-ranked with the corrected labels"
        state.review_message = message
        state.review_error = None
        state.review_id = None
        state.review_skipped = [
            i for i in (state.review_skipped or []) if i != sample_id
        ]
        self._load_review(ctx, results, score)
        state.flagged_table = run_views.flagged_rows(
            ctx.dataset, results, score
        )
        # the review changed the samples: no refresh needed on the next poll
        state.samples_signature = run_views.samples_signature(ctx.dataset)
        self._show_queue(ctx)

    def _review_error(self, ctx, message):
        ctx.panel.state.review_error = message
        ctx.ops.notify(message, variant="error")

    def _show_queue(self, ctx):
        """Loads the next :data:`QUEUE_VIEW_SIZE` samples of the queue in
        the grid, current first, and selects the current one."""
        state = ctx.panel.state
        results = self._results(ctx)
        score = self._score(ctx, results) if results is not None else None
        if score is None:
            return
        try:
            queue = fhqueue.get_queue(ctx.dataset, results, score)
        except HardnessError:
            return
        ids = queue.remaining(state.review_skipped or [])
        current = state.review_id
        if current:
            ids = [current] + [i for i in ids if i != current]
        if not ids:
            return
        ctx.ops.set_view(
            ctx.dataset.select(ids[:QUEUE_VIEW_SIZE], ordered=True)
        )
        if current:
            ctx.ops.set_selected_samples([current])

    #
    # Data
    #

    def _results(self, ctx):
        key = ctx.panel.state.run_key
        if not key or key not in list_hardness_runs(ctx.dataset):
            return None
        return run_views.load_results(ctx.dataset, key, check=False)

    def _score(self, ctx, results):
        """The chosen score of the run (a ``RunScore``), else its default
        one; None when the run has no score."""
        names = [s.name for s in results.scores()]
        if not names:
            return None
        name = ctx.panel.state.score
        return results.score(name if name in names else None)

    def _set_score_range(self, ctx, lo, hi):
        results = self._results(ctx)
        if results is None:
            return
        score = self._score(ctx, results)
        if score is None:
            return
        ctx.ops.set_view(
            run_views.score_range_view(ctx.dataset, score.score_field, lo, hi)
        )

    def _refresh(self, ctx):
        """Reads the runs, chooses one and loads it through its schema into
        the panel's state and data, one step per part of the layout."""
        state = ctx.panel.state
        dataset = ctx.dataset
        runs = run_views.runs_newest_first(dataset) if dataset else []
        _choose_run(state, runs)
        state.runs_signature, state.samples_signature = (
            run_views.change_signatures(dataset_id=dataset._doc.id)
            if dataset
            else (None, None)
        )
        results = self._results(ctx)
        if results is None:
            state.figures = None
            return
        score = self._score(ctx, results)
        state.scores = [
            {"name": s.name, "field": s.score_field} for s in results.scores()
        ]
        state.score = score.name if score is not None else None
        state.score_field = score.score_field if score is not None else None
        state.figures = _figures_markdown(results, score, dataset)
        _load_class_chart(ctx, results, score)
        _load_histogram(ctx, results, score)
        self._refresh_samples(ctx, results, score)
        _load_agreement(ctx)

    def _refresh_samples(self, ctx, results=None, score=None):
        """Reloads what depends on the samples' labels and reviews: the
        staleness mark, the class table, the review queue and the flagged
        table."""
        state = ctx.panel.state
        state.samples_signature = run_views.samples_signature(ctx.dataset)
        if results is None:
            results = self._results(ctx)
            if results is None:
                return
            score = self._score(ctx, results)
        stale, message = fhqueue.run_staleness(ctx.dataset, results)
        state.stale = message if stale else None
        if score is None:
            state.class_table = None
            state.flagged_table = []
            state.review_item = None
            return
        state.class_table = _class_table_markdown(
            run_views.class_table(ctx.dataset, results, score)
        )
        state.flagged_table = run_views.flagged_rows(
            ctx.dataset, results, score
        )
        self._load_review(ctx, results, score)

    def _load_review(self, ctx, results=None, score=None):
        """Loads the review queue: the current sample, what to prefill,
        the progress and the next samples."""
        state = ctx.panel.state
        if results is None:
            results = self._results(ctx)
            if results is None:
                return
            score = self._score(ctx, results)
        if score is None:
            state.review_item = None
            return
        try:
            queue = fhqueue.get_queue(ctx.dataset, results, score)
        except HardnessError as e:
            state.review_item = None
            state.review_progress = "No review queue: %s" % e
            return
        skipped = list(state.review_skipped or [])
        remaining = queue.remaining(skipped)
        previous = current = state.review_id
        if current not in remaining:
            current = remaining[0] if remaining else None
        state.review_id = current
        state.review_classes = list(queue.classes)
        shown = ([current] if current else []) + [
            i for i in remaining[: fhqueue.QUEUE_ROWS + 1] if i != current
        ][: fhqueue.QUEUE_ROWS]
        items = queue.items(ctx.dataset, shown)
        item = items[0] if current else None
        state.review_item = item
        if current != previous or state.correct_class is None:
            # a new sample: the run's prediction; the same one: the
            # reviewer's pick stays
            state.correct_class = _prefill(item)
        progress = queue.progress()
        state.review_progress = _progress_text(progress, len(skipped))
        state.review_status = queue.status_message
        state.review_building = queue.status == fhqueue.BUILDING
        state.review_queue = items[1:] if current else items

    #
    # Layout
    #

    def render(self, ctx):
        # a property whose name is also a state key shows the state's value
        # (e.g. a dict), not the one given here: view-only parts are named
        # *_text / *_box, apart from the state they show
        state = ctx.panel.state
        panel = types.Object()
        panel.view(
            "poll",
            types.TimerView(interval=POLL_MS, on_interval=self.on_poll),
        )
        if not state.runs:
            self._render_no_runs(panel)
        else:
            self._render_header(panel, state)
            if state.stale:
                panel.view(
                    "stale_warning",
                    types.Warning(label="Stale run", description=state.stale),
                )
            if state.figures:
                panel.md(state.figures, name="figures")
            self._render_class_chart(panel, state)
            self._render_histogram(panel, state)
            self._render_actions(panel, state)
            self._render_review(panel, state)
            self._render_flagged_table(panel)
            if state.agreement_choices:
                self._render_agreement(panel, state)
        return types.Property(
            panel, view=types.GridView(orientation="vertical", gap=2)
        )

    def _render_no_runs(self, panel):
        panel.md(
            "### No hardness runs yet\n\nRun a hardness method from the "
            "operator browser (e.g. *Hardness: RER*), or from Python "
            "with `dataset.apply_hardness(...)`: it shows here when done.",
            name="no_runs",
        )
        panel.btn("refresh", label="Refresh", on_click=self.on_refresh)

    def _render_header(self, panel, state):
        """The run dropdown (newest first), the score dropdown (runs with
        several scores) and the refresh button. The dropdowns are top-level
        properties, so that their value is ``state.run_key`` /
        ``state.score`` even when the panel switches run by itself."""
        choices = types.DropdownView()
        for run in state.run_list or []:
            choices.add_choice(run["key"], label=_run_label(run))
        panel.enum(
            "run_key",
            choices.values(),
            default=state.run_key,
            label="Hardness run (newest first)",
            view=choices,
            on_change=self.on_change_run,
        )
        scores = state.scores or []
        if len(scores) > 1:
            score_choices = types.DropdownView()
            for score in scores:
                score_choices.add_choice(
                    score["name"],
                    label="%s (%s)" % (score["name"], score["field"]),
                )
            panel.enum(
                "score",
                score_choices.values(),
                default=state.score,
                label="Score",
                view=score_choices,
                on_change=self.on_change_score,
            )
        panel.btn("refresh", label="Refresh", on_click=self.on_refresh)

    def _render_class_chart(self, panel, state):
        panel.plot(
            "class_chart",
            label="Classes, hardest first (click a class: its samples, "
            "hardest first)",
            config=_PLOT_CONFIG,
            height=_CLASS_HEIGHT,
            layout={
                "height": _CLASS_HEIGHT,
                "autosize": True,
                "margin": {"l": 60, "r": 10, "t": 10, "b": 60},
                "xaxis": {"type": "category", "title": {"text": "class"}},
                "yaxis": {
                    "title": {"text": "mean score (higher = harder)"},
                    "range": state.class_range,
                    "autorange": state.class_range is None,
                },
                "hovermode": "closest",
            },
            on_click=self.on_class_click,
        )
        text = _CLASS_HELP
        if state.class_table:
            text += "\n\n" + state.class_table
        panel.md(text, name="class_help")

    def _render_histogram(self, panel, state):
        """The score histogram, with the threshold as a red line."""
        shapes = []
        if state.threshold is not None:
            shapes.append(
                {
                    "type": "line",
                    "x0": state.threshold,
                    "x1": state.threshold,
                    "yref": "paper",
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": "red", "dash": "dash", "width": 2},
                }
            )
        panel.plot(
            "histogram",
            label="Score histogram%s (click or box-select bars: that range)"
            % (
                ", threshold %.3f in red" % state.threshold
                if state.threshold is not None
                else ""
            ),
            config=_PLOT_CONFIG,
            height=_HIST_HEIGHT,
            layout={
                "height": _HIST_HEIGHT,
                "autosize": True,
                "margin": {"l": 50, "r": 10, "t": 10, "b": 50},
                "xaxis": {"title": {"text": state.score_field or "score"}},
                "yaxis": {"title": {"text": "samples"}},
                "shapes": shapes,
                "bargap": 0,
                "dragmode": "select",
                "selectdirection": "h",
                "hovermode": "closest",
            },
            on_click=self.on_histogram_click,
            on_selected=self.on_histogram_select,
        )
        panel.md(_HIST_HELP, name="histogram_help")

    def _render_actions(self, panel, state):
        """Save / show the flagged samples, reset the view, and open the
        view saved last."""
        buttons = panel.h_stack("actions", gap=2)
        buttons.btn(
            "save_view",
            label="Save flagged as view",
            variant="contained",
            on_click=self.on_save_view,
        )
        buttons.btn(
            "show_flagged", label="Show flagged", on_click=self.on_show_flagged
        )
        buttons.btn(
            "clear_view", label="Reset view", on_click=self.on_clear_view
        )
        if state.saved_view:
            saved = panel.h_stack("saved", align_y="center", gap=2)
            saved.md(
                "Saved view: **%s**" % state.saved_view, name="saved_view_note"
            )
            saved.btn(
                "open_saved_view",
                label="Open saved view",
                on_click=self.on_open_saved_view,
            )

    def _render_review(self, panel, state):
        """The review card: progress, the current sample with the run's
        predicted class prefilled, one button per verdict, and the next
        samples of the queue."""
        lines = ["### Review flagged samples"]
        if state.review_progress:
            lines.append("**%s**" % state.review_progress)
        if state.review_status:
            lines.append(state.review_status)
        panel.md("\n\n".join(lines), name="review_header")
        item = state.review_item
        if not item:
            panel.md(
                "Every flagged sample of this run is reviewed.",
                name="review_done",
            )
            return
        panel.md(_item_markdown(item), name="review_item_text")
        choices = types.DropdownView()
        for label in state.review_classes or []:
            if label != item.get("label"):
                choices.add_choice(label, label=label)
        panel.enum(
            "correct_class",
            choices.values(),
            default=state.correct_class,
            label="Correct class (prefilled with the run's prediction)",
            view=choices,
            on_change=self.on_review_class,
        )
        buttons = panel.h_stack("review_actions", gap=2)
        buttons.btn(
            "review_wrong",
            label="Wrong: it is %s" % (state.correct_class or "..."),
            variant="contained",
            on_click=self.on_review_wrong,
        )
        buttons.btn(
            "review_right",
            label="Right: %s" % item.get("label"),
            variant="outlined",
            on_click=self.on_review_right,
        )
        buttons.btn("review_skip", label="Skip", on_click=self.on_review_skip)
        buttons.btn(
            "review_open",
            label="Open sample",
            on_click=self.on_review_open,
        )
        buttons.btn(
            "review_start",
            label="Show queue in grid",
            on_click=self.on_review_start,
        )
        if state.review_error:
            panel.view(
                "review_error_box",
                types.Error(
                    label="Not recorded", description=state.review_error
                ),
            )
        elif state.review_message:
            panel.md(state.review_message, name="review_message_text")
        if state.review_queue:
            _sample_table(
                panel,
                "review_queue",
                "Next in the queue (click a row to review it now)",
                self.on_queue_row_click,
                ("disagreement", "Neighbours disagreeing"),
            )

    def _render_flagged_table(self, panel):
        _sample_table(
            panel,
            "flagged_table",
            "Hardest flagged samples (click a row to select it)",
            self.on_row_click,
            ("review", "Review"),
        )

    def _render_agreement(self, panel, state):
        choices = types.DropdownView(multiple=True)
        for name in state.agreement_choices:
            choices.add_choice(name, label=name)
        panel.list(
            "agreement_series",
            types.String(),
            default=state.agreement_series,
            label="Scores to compare",
            view=choices,
            on_change=self.on_change_agreement,
        )
        count = len(state.agreement_series or [])
        if count < 2:
            panel.md(
                "Pick two or more scores to see how they agree.",
                name="agreement_hint",
            )
            return
        height = 120 + 36 * count
        panel.plot(
            "agreement",
            label="Agreement between the scores picked",
            config=_PLOT_CONFIG,
            height=height,
            layout={
                "height": height,
                "autosize": True,
                "margin": {"l": 140, "r": 10, "t": 10, "b": 120},
            },
        )
        panel.md(_AGREEMENT_HELP, name="agreement_help")


class _Buffered(object):
    """A panel's state or data whose writes are collected and sent with
    one patch (:meth:`flush`); reads see them at once.

    Args:
        ref: the ``PanelRefState`` or ``PanelRefData``
        patch: ``ctx.ops.patch_panel_state`` or ``patch_panel_data``
    """

    def __init__(self, ref, patch):
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_patch", patch)
        object.__setattr__(self, "_updates", {})

    def set(self, key, value=None):
        # top-level keys only: this panel sets no nested path
        updates = key if isinstance(key, dict) else {key: value}
        self._ref._data.update(updates)
        self._updates.update(updates)

    def get(self, key, default=None):
        return self._ref.get(key, default)

    def clear(self):
        self._updates.clear()
        self._ref.clear()

    def flush(self):
        if self._updates:
            self._patch(dict(self._updates))
            self._updates.clear()

    def __setattr__(self, key, value):
        self.set(key, value)

    def __getattr__(self, key):
        return self.get(key)


def _choose_run(state, runs):
    """Sets ``state.runs`` (keys, newest first), ``state.run_list`` (their
    details) and the run shown: the one shown before, followed
    through a rename; a run that appeared since the last look (the newest
    of them); else the newest run."""
    known = {r["id"] for r in (state.run_list or [])}
    by_id = {r["id"]: r for r in runs}
    keys = [r["key"] for r in runs]
    new = [r for r in runs if r["id"] not in known]
    current = None
    if state.run_id in by_id:
        current = by_id[state.run_id]["key"]  # survives a rename
    elif state.run_key in keys and state.run_id is None:
        current = state.run_key  # chosen in the dropdown
    if state.run_list and new:
        current = new[0]["key"]  # a new run: show it
    if current is None and runs:
        current = runs[0]["key"]
    state.run_list = runs
    state.runs = keys
    if current != state.run_key:
        state.review_id = None
        state.review_skipped = []
    state.run_key = current
    state.run_id = next((r["id"] for r in runs if r["key"] == current), None)


def _run_label(run):
    when = run.get("timestamp") or ""
    try:
        when = datetime.datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        pass
    return "%s (%s, %s)" % (run["key"], run.get("method") or "?", when)


def _prefill(item):
    """The class to prefill: the run's prediction when it differs from
    the label."""
    if not item:
        return None
    predicted = item.get("predicted")
    if predicted is not None and predicted != item.get("label"):
        return predicted
    return None


def _progress_text(progress, num_skipped):
    text = "%d of %d reviewed" % (progress["reviewed"], progress["total"])
    if progress["reviewed"]:
        text += " (%d wrong, %d right)" % (
            progress["wrong"],
            progress["right"],
        )
    if num_skipped:
        text += "; %d skipped" % num_skipped
    return text


def _item_markdown(item):
    lines = [
        "| Now reviewing | |",
        "|---|---|",
        "| Label | **%s** |" % item["label"],
    ]
    if item.get("predicted") is not None:
        lines.append("| Run's prediction | %s |" % item["predicted"])
    lines.append("| Score | %s |" % item.get("score"))
    if item.get("disagreement") is not None:
        lines.append(
            "| Neighbours with another label | %.0f%% |"
            % (100 * item["disagreement"])
        )
    lines.append("| Sample | `%s` |" % item["id"])
    return "\n".join(lines)


def _load_class_chart(ctx, results, score):
    """The class bars on an axis fitted to the data: each bar rises from
    just below the easiest class to its mean score, so the hardest class
    has the tallest bar whatever the score's sign."""
    rows = (
        run_views.class_table(ctx.dataset, results, score)
        if score is not None
        else []
    )
    values = [r["score"] for r in rows]
    lo, hi = run_views.fitted_range(values)
    ctx.panel.state.class_range = [lo, hi] if rows else None
    ctx.panel.data.class_chart = [
        {
            "type": "bar",
            "x": [r["class"] for r in rows],
            "y": [v - lo for v in values],
            "base": lo,
            "customdata": [
                [
                    r["score"],
                    "-" if r["flagged"] is None else r["flagged"],
                    r["total"],
                    (
                        "-"
                        if r["noise"] is None
                        else "%.1f%%" % (100 * r["noise"])
                    ),
                ]
                for r in rows
            ],
            "marker": {"color": _BAR_COLOR},
            "hovertemplate": "class %{x}: mean score %{customdata[0]:.3f}"
            "<br>flagged %{customdata[1]} of %{customdata[2]} "
            "(noise estimate %{customdata[3]})<extra></extra>",
        }
    ]


def _class_table_markdown(rows, limit=20):
    if not rows:
        return None
    lines = [
        "| Class | Mean score | Flagged | Scored | Noise estimate |",
        "|---|---|---|---|---|",
    ]
    for r in rows[:limit]:
        lines.append(
            "| %s | %.3f | %s | %d | %s |"
            % (
                r["class"],
                r["score"],
                "-" if r["flagged"] is None else r["flagged"],
                r["total"],
                "-" if r["noise"] is None else "%.1f%%" % (100 * r["noise"]),
            )
        )
    if len(rows) > limit:
        lines.append("| ... %d more classes | | | | |" % (len(rows) - limit))
    return "\n".join(lines)


def _load_histogram(ctx, results, score):
    """The histogram of the score, its bin edges (for the click events)
    and its threshold in score units."""
    state = ctx.panel.state
    if score is None:
        state.threshold, counts, edges = None, [], []
    else:
        state.threshold = run_views.threshold_for(results, score, ctx.dataset)
        counts, edges = run_views.score_histogram(
            ctx.dataset, score.score_field
        )
    state.hist_edges = edges
    ctx.panel.data.histogram = [
        {
            "type": "bar",
            "x": [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])],
            "y": counts,
            "width": [b - a for a, b in zip(edges[:-1], edges[1:])],
            "marker": {"color": _HIST_COLOR},
            "hovertemplate": "score %{x:.3f}: %{y} samples<extra></extra>",
        }
    ]


def _load_agreement(ctx):
    """The Spearman agreement between the scores the user picked (by
    default the main score of each run, at most
    :data:`AGREEMENT_DEFAULT_SERIES`)."""
    state = ctx.panel.state
    names = [n for n, _ in run_views.agreement_series(ctx.dataset)]
    state.agreement_choices = names if len(names) >= 2 else []
    picked = [n for n in (state.agreement_series or []) if n in names]
    if state.agreement_series is None or (
        not picked and state.agreement_series
    ):
        main = [n for n in names if "." not in n]
        picked = (main + [n for n in names if "." in n])[
            :AGREEMENT_DEFAULT_SERIES
        ]
    state.agreement_series = picked
    state.has_agreement = len(picked) >= 2
    if len(picked) < 2:
        ctx.panel.data.agreement = []
        return
    shown, matrix, _ = run_views.agreement_matrix(ctx.dataset, series=picked)
    ctx.panel.data.agreement = [
        {
            "type": "heatmap",
            "z": matrix,
            "x": shown,
            "y": shown,
            "zmin": -1,
            "zmax": 1,
            "colorscale": "RdBu",
            "texttemplate": "%{z:.2f}",
            "hovertemplate": "%{y} vs %{x}: %{z:.3f}<extra></extra>",
        }
    ]


def _figures_markdown(results, score=None, samples=None):
    rows = run_views.explained_figures(results, score, samples)
    lines = ["| Figure | Value | What it means |", "|---|---|---|"]
    for label, value, meaning in rows:
        lines.append("| %s | %s | %s |" % (label, value, meaning))
    return "\n".join(lines)


def _sample_table(panel, name, label, on_click_row, last_column):
    """A clickable table of samples: label, predicted class, score and
    ``last_column`` (key, heading)."""
    table = types.TableView(on_click_row=on_click_row)
    table.add_column("label", label="Label")
    table.add_column("predicted", label="Predicted")
    table.add_column("score", label="Score")
    key, heading = last_column
    table.add_column(key, label=heading)
    panel.list(name, types.Object(), view=table, label=label)
