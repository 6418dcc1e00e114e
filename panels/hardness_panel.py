"""
The Hardness panel: a python panel on the App's grid surface that shows a
hardness run (dataset difficulty, noise rate, number flagged), its class
difficulty as a sorted bar chart, its score histogram with the threshold,
the hardest flagged samples and, when several runs exist, how much their
scores agree.

Clicking a class bar loads that class sorted hardest first; clicking or
box-selecting histogram bars loads that score range; clicking a table row
selects the sample; a button saves the flagged samples as a saved view named
after the run. The panel only reads runs, through their schema
(:meth:`fiftyone_hardness.dataset_io.runs.HardnessRunResults.scores`) and
:mod:`fiftyone_hardness.dataset_io.run_views`; it never computes scores nor
parses field names.
"""

import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.dataset_io.runs import list_hardness_runs

logger = logging.getLogger(__name__)

PANEL_NAME = "hardness_panel"

_BAR_COLOR = "#FF6D04"
_HIST_COLOR = "#4C9BE8"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


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
                "rate, hardest classes and flagged samples. Click a class "
                "bar or a histogram bar to load those samples, hardest first."
            ),
        )

    #
    # Lifecycle
    #

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.run_key = None
        ctx.panel.state.score = None
        self._refresh(ctx)

    #
    # Events
    #

    def on_change_run(self, ctx):
        ctx.panel.state.run_key = ctx.params.get("value")
        ctx.panel.state.score = None
        self._refresh(ctx)

    def on_change_score(self, ctx):
        ctx.panel.state.score = ctx.params.get("value")
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
        ctx.panel.state.last_action = "class %s" % label
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
        ctx.panel.state.last_action = "selected %s" % sample_id
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
        ctx.panel.state.last_action = "scores %.4g..%.4g" % (lo, hi)
        ctx.ops.set_view(
            run_views.score_range_view(ctx.dataset, score.score_field, lo, hi)
        )

    def _refresh(self, ctx):
        """Reads the chosen run through its schema into the panel's state
        and data, one step per part of the layout."""
        state = ctx.panel.state
        runs = list_hardness_runs(ctx.dataset) if ctx.dataset else []
        state.runs = runs
        if state.run_key not in runs:
            state.run_key = runs[-1] if runs else None
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
        state.figures = _figures_markdown(results, score, ctx.dataset)
        _load_class_chart(ctx, results, score)
        _load_histogram(ctx, results, score)
        state.flagged_table = (
            run_views.flagged_rows(ctx.dataset, results, score)
            if score is not None
            else []
        )
        _load_agreement(ctx)

    #
    # Layout
    #

    def render(self, ctx):
        state = ctx.panel.state
        panel = types.Object()
        if not state.runs:
            self._render_no_runs(panel)
        else:
            self._render_header(panel, state)
            if state.figures:
                panel.md(state.figures, name="figures")
            self._render_class_chart(panel)
            self._render_histogram(panel, state)
            self._render_actions(panel, state)
            self._render_flagged_table(panel)
            if state.has_agreement:
                self._render_agreement(panel)
        return types.Property(
            panel, view=types.GridView(orientation="vertical", gap=2)
        )

    def _render_no_runs(self, panel):
        panel.md(
            "### No hardness runs yet\n\nRun a hardness method from the "
            "operator browser (e.g. *Hardness: RER*), or from Python "
            "with `dataset.apply_hardness(...)`, then refresh.",
            name="no_runs",
        )
        panel.btn("refresh", label="Refresh", on_click=self.on_refresh)

    def _render_header(self, panel, state):
        """The run dropdown, the score dropdown (runs with several scores)
        and the refresh button."""
        header = panel.h_stack("header", align_y="center", gap=2)
        choices = types.DropdownView()
        for key in state.runs:
            choices.add_choice(key, label=key)
        header.enum(
            "run_key",
            choices.values(),
            default=state.run_key,
            label="Hardness run",
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
            header.enum(
                "score",
                score_choices.values(),
                default=state.score,
                label="Score",
                view=score_choices,
                on_change=self.on_change_score,
            )
        header.btn("refresh", label="Refresh", on_click=self.on_refresh)

    def _render_class_chart(self, panel):
        panel.plot(
            "class_chart",
            label="Class difficulty (click a class: its samples, hardest "
            "first)",
            config=_PLOT_CONFIG,
            layout={
                "height": 280,
                "margin": {"l": 50, "r": 10, "t": 10, "b": 60},
                "xaxis": {"type": "category", "title": {"text": "class"}},
                "yaxis": {"title": {"text": "mean score"}},
                "hovermode": "closest",
            },
            on_click=self.on_class_click,
        )

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
            layout={
                "height": 260,
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

    def _render_flagged_table(self, panel):
        table = types.TableView(on_click_row=self.on_row_click)
        table.add_column("label", label="Label")
        table.add_column("predicted", label="Predicted")
        table.add_column("score", label="Score")
        panel.list(
            "flagged_table",
            types.Object(),
            view=table,
            label="Hardest flagged samples (click a row to select it)",
        )

    def _render_agreement(self, panel):
        panel.plot(
            "agreement",
            label="Agreement between runs (Spearman rank correlation)",
            config=_PLOT_CONFIG,
            layout={
                "height": 320,
                "margin": {"l": 120, "r": 10, "t": 10, "b": 120},
            },
        )


def _load_class_chart(ctx, results, score):
    classes = (
        run_views.class_difficulty(ctx.dataset, results, score)
        if score is not None
        else []
    )
    ctx.panel.data.class_chart = [
        {
            "type": "bar",
            "x": [c for c, _ in classes],
            "y": [v for _, v in classes],
            "marker": {"color": _BAR_COLOR},
            "hovertemplate": "class %{x}: %{y:.3f}<extra></extra>",
        }
    ]


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
    """The Spearman agreement between the scores of every run."""
    names, matrix, _ = run_views.agreement_matrix(ctx.dataset)
    ctx.panel.state.has_agreement = bool(names)
    ctx.panel.data.agreement = (
        [
            {
                "type": "heatmap",
                "z": matrix,
                "x": names,
                "y": names,
                "zmin": -1,
                "zmax": 1,
                "colorscale": "RdBu",
                "texttemplate": "%{z:.2f}",
                "hovertemplate": "%{y} vs %{x}: %{z:.3f}<extra></extra>",
            }
        ]
        if names
        else []
    )


def _figures_markdown(results, score=None, samples=None):
    rows = run_views.run_figures(results, score, samples)
    lines = ["| Figure | Value |", "|---|---|"]
    for label, value in rows:
        lines.append("| %s | %s |" % (label, value))
    return "\n".join(lines)
