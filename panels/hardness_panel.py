"""
The Hardness panel: a python panel on the App's grid surface that shows a
hardness run (dataset difficulty, noise rate, number flagged), its class
difficulty as a sorted bar chart, its score histogram with the threshold,
the hardest flagged samples and, when several runs exist, how much their
scores agree.

Clicking a class bar loads that class sorted hardest first; clicking or
box-selecting histogram bars loads that score range; clicking a table row
selects the sample; a button saves the flagged samples as a saved view named
after the run. The panel only reads runs
(:mod:`fiftyone_hardness.dataset_io.run_views`); it never computes scores.
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
        ctx.panel.state.score_field = None
        self._refresh(ctx)

    #
    # Events
    #

    def on_change_run(self, ctx):
        ctx.panel.state.run_key = ctx.params.get("value")
        ctx.panel.state.score_field = None
        self._refresh(ctx)

    def on_change_score_field(self, ctx):
        ctx.panel.state.score_field = ctx.params.get("value")
        self._refresh(ctx)

    def on_refresh(self, ctx):
        self._refresh(ctx)

    def on_class_click(self, ctx):
        label = ctx.params.get("x")
        results = self._results(ctx)
        if results is None or label is None:
            return
        view = run_views.class_view(
            ctx.dataset, results, str(label), self._score_field(ctx, results)
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
            ctx.dataset, results, self._score_field(ctx, results)
        )
        ctx.ops.set_view(view)

    def on_save_view(self, ctx):
        results = self._results(ctx)
        if results is None:
            return
        name = run_views.save_flagged_view(
            ctx.dataset, results, self._score_field(ctx, results)
        )
        ctx.panel.state.saved_view = name
        ctx.ops.notify("Saved the flagged samples as view '%s'" % name)
        # the App learns about the new saved view when it reloads the
        # dataset; loading it by name right away would race that reload
        ctx.ops.reload_dataset()
        ctx.ops.set_view(
            run_views.flagged_view(
                ctx.dataset, results, self._score_field(ctx, results)
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

    def _score_field(self, ctx, results):
        fields = run_views.score_fields(results)
        field = ctx.panel.state.score_field
        return field if field in fields else (fields[0] if fields else None)

    def _set_score_range(self, ctx, lo, hi):
        results = self._results(ctx)
        if results is None:
            return
        field = self._score_field(ctx, results)
        ctx.panel.state.last_action = "scores %.4g..%.4g" % (lo, hi)
        ctx.ops.set_view(
            run_views.score_range_view(ctx.dataset, field, lo, hi)
        )

    def _refresh(self, ctx):
        state = ctx.panel.state
        runs = list_hardness_runs(ctx.dataset) if ctx.dataset else []
        state.runs = runs
        if state.run_key not in runs:
            state.run_key = runs[-1] if runs else None
        results = self._results(ctx)
        if results is None:
            state.figures = None
            return

        fields = run_views.score_fields(results)
        field = self._score_field(ctx, results)
        state.score_fields = fields
        state.score_field = field
        state.figures = _figures_markdown(results, field, ctx.dataset)

        classes = run_views.class_difficulty(ctx.dataset, results, field)
        ctx.panel.data.class_chart = [
            {
                "type": "bar",
                "x": [c for c, _ in classes],
                "y": [v for _, v in classes],
                "marker": {"color": _BAR_COLOR},
                "hovertemplate": "class %{x}: %{y:.3f}<extra></extra>",
            }
        ]

        state.threshold = (
            run_views.threshold_for(results, field, ctx.dataset)
            if field
            else None
        )
        counts, edges = (
            run_views.score_histogram(ctx.dataset, field)
            if field
            else ([], [])
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

        state.flagged_table = (
            run_views.flagged_rows(ctx.dataset, results, field)
            if field
            else []
        )

        names, matrix, _ = run_views.agreement_matrix(ctx.dataset)
        state.has_agreement = bool(names)
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

    #
    # Layout
    #

    def render(self, ctx):
        state = ctx.panel.state
        panel = types.Object()
        runs = state.runs or []
        if not runs:
            panel.md(
                "### No hardness runs yet\n\nRun a hardness method from the "
                "operator browser (e.g. *Hardness: RER*), or from Python "
                "with `dataset.apply_hardness(...)`, then refresh.",
                name="no_runs",
            )
            panel.btn("refresh", label="Refresh", on_click=self.on_refresh)
            return types.Property(
                panel, view=types.GridView(orientation="vertical", gap=2)
            )

        header = panel.h_stack("header", align_y="center", gap=2)
        choices = types.DropdownView()
        for key in runs:
            choices.add_choice(key, label=key)
        header.enum(
            "run_key",
            choices.values(),
            default=state.run_key,
            label="Hardness run",
            view=choices,
            on_change=self.on_change_run,
        )
        fields = state.score_fields or []
        if len(fields) > 1:
            field_choices = types.DropdownView()
            for field in fields:
                field_choices.add_choice(field, label=field)
            header.enum(
                "score_field",
                field_choices.values(),
                default=state.score_field,
                label="Score",
                view=field_choices,
                on_change=self.on_change_score_field,
            )
        header.btn("refresh", label="Refresh", on_click=self.on_refresh)

        if state.figures:
            panel.md(state.figures, name="figures")

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

        if state.has_agreement:
            panel.plot(
                "agreement",
                label="Agreement between runs (Spearman rank correlation)",
                config=_PLOT_CONFIG,
                layout={
                    "height": 320,
                    "margin": {"l": 120, "r": 10, "t": 10, "b": 120},
                },
            )

        return types.Property(
            panel, view=types.GridView(orientation="vertical", gap=2)
        )


def _figures_markdown(results, score_field=None, samples=None):
    rows = run_views.run_figures(results, score_field, samples)
    lines = ["| Figure | Value |", "|---|---|"]
    for label, value in rows:
        lines.append("| %s | %s |" % (label, value))
    return "\n".join(lines)
