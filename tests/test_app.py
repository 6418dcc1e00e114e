"""
The App side without a browser: the plugin registers its operators and the
Hardness panel; run-management and review operators work through
FiftyOne's operator executor; the panel's data and layout are built for a
run and its events set the expected views.
"""

import json

import numpy as np
import pytest

import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionError
from fiftyone import ViewField as F

from fiftyone_hardness.methods import registry
from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.methods.base import MethodOutput
from fiftyone_hardness.panels.hardness_panel import HardnessPanel

from app_helpers import (
    PLUGIN,
    FakePanelContext,
    add_demo_run,
    plugin_dir,
    register_test_method,
)

OPERATOR_NAMES = [
    "list_hardness_runs",
    "load_hardness_view",
    "rename_hardness_run",
    "delete_hardness_run",
    "review_label",
    "apply_label_corrections",
    "undo_label_corrections",
    "find_counterexamples",
]


@pytest.fixture
def plugin(tmp_path):
    with plugin_dir(tmp_path):
        yield PLUGIN


@pytest.fixture
def two_runs(digits):
    register_test_method()
    digits.apply_hardness(
        "centroid", run_key="first", embeddings_field="pixels"
    )
    digits.apply_hardness(
        "centroid", run_key="second", embeddings_field="pixels"
    )
    return digits


def _run(uri, dataset, **ctx):
    ctx.setdefault("params", {}).setdefault("label_field", "ground_truth")
    result = foo.execute_operator(uri, dict(dataset=dataset, **ctx))
    assert result.error is None, result.error
    return result.result


def test_operators_and_panel_are_registered(plugin):
    uris = {op.uri for op in foo.list_operators()}
    for name in OPERATOR_NAMES:
        assert "%s/%s" % (plugin, name) in uris
    panels = {op.uri for op in foo.list_operators(type="panel")}
    assert "%s/hardness_panel" % plugin in panels


def test_run_management_operators(plugin, two_runs):
    dataset = two_runs
    rows = _run(plugin + "/list_hardness_runs", dataset)["runs"]
    assert [r["run_key"] for r in rows] == ["first", "second"]
    assert rows[0]["num_flagged"] == int(np.sum(dataset.values("first_flag")))

    out = _run(
        plugin + "/load_hardness_view", dataset, params={"run_key": "first"}
    )
    assert out["num_samples"] == rows[0]["num_flagged"]
    out = _run(
        plugin + "/load_hardness_view",
        dataset,
        params={"run_key": "first", "which": "all"},
    )
    assert out["num_samples"] == len(dataset)

    _run(
        plugin + "/rename_hardness_run",
        dataset,
        params={"run_key": "first", "new_run_key": "renamed"},
    )
    assert dataset.has_field("renamed_score")
    assert not dataset.has_field("first_score")
    with pytest.raises(ExecutionError, match="'second' already exists"):
        foo.execute_operator(
            plugin + "/rename_hardness_run",
            dict(
                dataset=dataset,
                params={"run_key": "renamed", "new_run_key": "second"},
            ),
        )

    _run(
        plugin + "/delete_hardness_run", dataset, params={"run_key": "renamed"}
    )
    assert dataset.list_runs() == ["second"]
    assert not any(f.startswith("renamed") for f in dataset.get_field_schema())


def test_review_operators(plugin, digits):
    view = digits.match(F("mislabeled") == True).limit(3)  # noqa: E712
    ids, clean = view.values(["id", "ground_truth_clean.label"])
    before = digits.values("ground_truth.label")
    for sample_id, label in zip(ids, clean):
        _run(
            plugin + "/review_label",
            digits,
            current_sample=sample_id,
            params={"verdict": "wrong", "correct_label": label},
        )
    right = digits.match(F("mislabeled") == False).first().id  # noqa: E712
    _run(
        plugin + "/review_label",
        digits,
        selected=[right],
        params={"verdict": "right"},
    )
    assert digits.values("ground_truth.label") == before
    counts = digits.count_values("ground_truth_reviewed.verdict")
    assert (counts["wrong"], counts["right"]) == (3, 1)

    out = _run(
        plugin + "/apply_label_corrections",
        digits,
        params={"mode": "in_place"},
    )
    assert out["num_corrected"] == 3
    labels = dict(zip(*digits.values(["id", "ground_truth.label"])))
    assert [labels[i] for i in ids] == clean
    out = _run(plugin + "/undo_label_corrections", digits)
    assert out["num_restored"] == 3
    assert digits.values("ground_truth.label") == before

    out = _run(
        plugin + "/apply_label_corrections",
        digits,
        params={"mode": "new_field", "target_field": "gt_fixed"},
    )
    assert out["field"] == "gt_fixed"
    assert digits.values("ground_truth.label") == before


def test_counterexamples_operator(plugin, digits):
    sample_id = digits.skip(100).first().id
    out = _run(
        plugin + "/find_counterexamples",
        digits,
        current_sample=sample_id,
        params={"embeddings_field": "pixels", "k": 4},
    )
    assert len(out["counterexamples"]) == 4
    assert {c["label"] for c in out["counterexamples"]} == {
        out["target_label"]
    }
    with pytest.raises(ExecutionError, match="exactly one"):
        foo.execute_operator(
            plugin + "/find_counterexamples",
            dict(
                dataset=digits,
                selected=digits.limit(2).values("id"),
                params={
                    "embeddings_field": "pixels",
                    "label_field": "ground_truth",
                },
            ),
        )


def _last_view(ctx):
    name, args, kwargs = ctx.ops.calls[-1]
    assert name == "set_view"
    return args[0] if args else kwargs["view"]


def test_panel_data_and_events(two_runs):
    dataset = two_runs
    panel = HardnessPanel()
    ctx = FakePanelContext(dataset)
    panel.on_load(ctx)
    state, data = ctx.panel.state, ctx.panel.data
    assert state.runs == ["first", "second"]
    assert state.run_key == "second"
    assert "Flagged" in state.figures and "Threshold" in state.figures
    results = dataset.load_run_results("second")
    bars = data.class_chart[0]
    assert sorted(bars["x"]) == sorted(results.class_scores)
    assert bars["y"] == sorted(bars["y"], reverse=True)
    assert sum(data.histogram[0]["y"]) == len(dataset)
    assert state.threshold == pytest.approx(results.threshold)
    assert len(state.flagged_table) == run_views.TABLE_ROWS
    scores = [row["score"] for row in state.flagged_table]
    assert scores == sorted(scores, reverse=True)
    assert state.has_agreement
    heatmap = data.agreement[0]
    assert heatmap["x"] == ["first", "second"]
    assert heatmap["z"][0][1] == pytest.approx(1.0)  # same method twice

    # the layout serializes (what the App receives)
    json.dumps(panel.render(ctx).to_json())

    # a class bar: that class, hardest first
    ctx.params = {"x": bars["x"][0]}
    panel.on_class_click(ctx)
    assert ctx.ops.calls[-1][0] == "set_view"
    view = _last_view(ctx)
    assert set(view.values("ground_truth.label")) == {bars["x"][0]}
    values = view.values("second_score")
    assert values == sorted(values, reverse=True)

    # a histogram bar: that score range
    edges = state.hist_edges
    counts = data.histogram[0]["y"]
    index = int(np.argmax(counts))
    ctx.params = {"idx": index}
    panel.on_histogram_click(ctx)
    view = _last_view(ctx)
    assert len(view) == counts[index]
    ctx.params = {"data": [{"idx": index}, {"idx": index + 1}]}
    panel.on_histogram_select(ctx)
    view = _last_view(ctx)
    assert len(view) == counts[index] + counts[index + 1]
    assert min(view.values("second_score")) >= edges[index] - 1e-9

    # a table row selects its sample
    ctx.params = {"row": 0}
    panel.on_row_click(ctx)
    assert ctx.ops.calls[-1][0] == "set_selected_samples"
    assert ctx.ops.calls[-1][1][0] == [state.flagged_table[0]["id"]]

    # switching runs and saving the flagged samples as a view
    ctx.params = {"value": "first"}
    panel.on_change_run(ctx)
    assert state.run_key == "first"
    panel.on_save_view(ctx)
    assert "first-flagged" in dataset.list_saved_views()
    saved = dataset.load_saved_view("first-flagged")
    assert len(saved) == dataset.load_run_results("first").num_flagged
    assert len(_last_view(ctx)) == len(saved)
    panel.on_open_saved_view(ctx)
    assert ctx.ops.calls[-1] == ("set_view", (), {"name": "first-flagged"})


def test_panel_without_runs_and_with_a_demo_run(digits):
    panel = HardnessPanel()
    ctx = FakePanelContext(digits)
    panel.on_load(ctx)
    assert ctx.panel.state.runs == []
    rendered = json.dumps(panel.render(ctx).to_json())
    assert "No hardness runs yet" in rendered

    results = add_demo_run(digits)
    panel.on_refresh(ctx)
    assert ctx.panel.state.run_key == results.key
    figures = dict(run_views.run_figures(results))
    assert figures["Samples scored"] == len(digits)
    if results.method == "rer":
        assert "Dataset difficulty (chi_avg)" in ctx.panel.state.figures
        assert "Estimated noise rate" in ctx.panel.state.figures


def _two_scores(data, embeddings_field="pixels"):
    """A multi-score run: ``a`` flags its top 10% (its stored threshold is
    in another unit), ``b`` flags by a rule that is no score threshold."""
    X = data.embeddings(embeddings_field)
    a = X.std(axis=1)
    b = X.mean(axis=1)
    return MethodOutput(
        fields={
            "a_score": a,
            "a_flag": a > np.quantile(a, 0.9),
            "b_score": b,
            "b_flag": data.labels == 3,
        },
        results={"methods": {"a": {"threshold": -5.0, "noise_rate": 0.1}}},
    )


def test_multi_score_runs(digits):
    registry.register_method("two_scores", _two_scores, "test")
    results = digits.apply_hardness("two_scores", run_key="two")
    assert run_views.score_fields(results) == ["two_a_score", "two_b_score"]
    a = np.asarray(digits.values("two_a_score"))
    flags = np.asarray(digits.values("two_a_flag"))
    expected = (a[flags].min() + a[~flags].max()) / 2
    assert run_views.threshold_for(results, "two_a_score", digits) == (
        pytest.approx(expected)
    )
    assert run_views.threshold_for(results, "two_b_score", digits) is None
    figures = dict(run_views.run_figures(results, "two_a_score", digits))
    assert figures["Flagged by this score"] == int(flags.sum())
    assert figures["Noise rate by this score"] == 0.1
    classes = run_views.class_difficulty(digits, results, "two_b_score")
    assert len(classes) == 10
    assert [v for _, v in classes] == sorted(
        [v for _, v in classes], reverse=True
    )
    view = run_views.flagged_view(digits, results, "two_b_score")
    assert set(view.values("ground_truth.label")) == {"3"}
    names, matrix, used = run_views.agreement_matrix(digits)
    assert names == ["two_a", "two_b"] and used == len(digits)

    panel = HardnessPanel()
    ctx = FakePanelContext(digits)
    panel.on_load(ctx)
    assert ctx.panel.state.score_field == "two_a_score"
    ctx.params = {"value": "two_b_score"}
    panel.on_change_score_field(ctx)
    assert ctx.panel.state.threshold is None
    assert "two_b_score" in ctx.panel.state.figures
    json.dumps(panel.render(ctx).to_json())
