"""
The App side without a browser: the plugin registers its operators and the
Hardness panel; run-management and review operators work through
FiftyOne's operator executor; the panel's data and layout are built for a
run and its events set the expected views.
"""

import contextlib
import json

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionError
from fiftyone import ViewField as F

from fiftyone_hardness.methods import registry
from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.methods.base import HardnessError, MethodOutput
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
    "compute_consensus",
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
    out = _run(
        plugin + "/load_hardness_view", dataset, params={"run_key": "renamed"}
    )
    assert out["num_samples"] == rows[0]["num_flagged"]
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
    # newest first, the newest shown
    assert state.runs == ["second", "first"]
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
    # the timer's poll finds it: no Refresh
    panel.on_poll(ctx)
    assert ctx.panel.state.run_key == results.key
    figures = dict(run_views.run_figures(results))
    assert figures["Samples scored"] == len(digits)
    if results.method == "rer":
        assert "Dataset difficulty (chi_avg)" in ctx.panel.state.figures
        assert "Estimated noise rate" in ctx.panel.state.figures
        assert "on a 0 easy to 1 hard scale" in ctx.panel.state.figures
        assert "(no noise) and 1 (random labels)" in ctx.panel.state.figures


# ------------------------------------------------------------ live panel


def _panel_event(uri, dataset, method, state, **params):
    result = foo.execute_operator(
        uri,
        dict(
            dataset=dataset,
            params=dict(
                params,
                __method__=method,
                panel_id="test-panel",
                panel_state=state,
            ),
        ),
    )
    assert result.error is None, result.error
    return [(r.operator_uri, r.params) for r in result.executor._requests]


@contextlib.contextmanager
def _reloads_racing_every_save(dataset, monkeypatch):
    """Makes every save of the document of FiftyOne's shared Dataset object
    of ``dataset`` lose the race with a reload from another thread: right
    after the save, the document as read just before it is put back, as
    a reload does when it reads before our save and lands after it. The
    App server reloads the shared object at the start of every request (the
    panel's poll, the grid, the sidebar), so this happens in the App, rarely
    and at random: CI met it once ("Dataset has no field
    'ground_truth_reviewed'" after a panel verdict, the verdict lost). Here
    it happens at every save of the shared object, and never to a Dataset
    object of our own. Yields a list whose length counts the races."""
    import fiftyone.core.dataset as fod
    import fiftyone.core.odm as fodm

    save = fodm.DatasetDocument.save
    races = []

    def save_then_stale_reload(doc, *args, **kwargs):
        shared = fod.Dataset._instances.get(dataset.name)
        if shared is None or doc is not shared._doc:
            return save(doc, *args, **kwargs)
        stale = fod._load_dataset(shared, shared.name, virtual=True)
        result = save(doc, *args, **kwargs)
        shared._doc, shared._sample_doc_cls, shared._frame_doc_cls = stale
        races.append(1)
        return result

    monkeypatch.setattr(fodm.DatasetDocument, "save", save_then_stale_reload)
    try:
        yield races
    finally:
        monkeypatch.setattr(fodm.DatasetDocument, "save", save)
        dataset.reload()


def _raw_labels(dataset):
    return list(
        dataset._sample_collection.find({}, {"ground_truth": 1}).sort("_id")
    )


def test_app_writes_survive_reloads_from_other_requests(
    plugin, two_runs, monkeypatch
):
    """Operators and panel events write on a Dataset object of their own,
    so a reload of FiftyOne's shared one from another request's thread
    cannot undo what they just declared. On the shared object every write
    below failed under this race, a field or a run half made."""
    from fiftyone_hardness.dataset_io import review

    dataset = two_runs
    uri = "%s/%s" % (plugin, "hardness_panel")
    labels = _raw_labels(dataset)
    ids = dataset.values("id")

    # the race is real on the shared object
    with _reloads_racing_every_save(dataset, monkeypatch) as races:
        with pytest.raises(ValueError, match="has no field"):
            review.mark_labels(dataset, ids[0], "right")
    assert races
    dataset.delete_sample_field("ground_truth_reviewed")

    state = _panel_event(uri, dataset, "on_load", {})[0][1]["state"]
    first = state["review_id"]  # the event updates ``state`` in place
    with _reloads_racing_every_save(dataset, monkeypatch):
        requests = dict(_panel_event(uri, dataset, "on_review_right", state))
        state = requests["patch_panel_state"]["state"]
        assert not state["review_error"]
        second = state["review_id"]
        out = _run(
            plugin + "/review_label",
            dataset,
            selected=[second],
            params={"verdict": "right"},
        )
        assert out["num_reviewed"] == 1
        _run(
            plugin + "/apply_label_corrections",
            dataset,
            params={"mode": "new_field", "target_field": "fixed"},
        )
        _run(
            plugin + "/compute_consensus",
            dataset,
            params={"runs": ["first", "second"], "run_key": "cons"},
        )
        _run(
            plugin + "/rename_hardness_run",
            dataset,
            params={"run_key": "cons", "new_run_key": "agreed"},
        )
    verdicts = dataset.select([first, second], ordered=True).values(
        "ground_truth_reviewed.verdict"
    )
    assert verdicts == ["right", "right"]
    assert dataset.has_sample_field("fixed")
    assert dataset.load_run_results("agreed").num_samples == len(dataset)
    assert dataset.has_sample_field("agreed_score")
    assert _raw_labels(dataset) == labels


def test_an_unexpected_panel_error_is_shown_and_the_panel_stays(
    plugin, two_runs, monkeypatch
):
    from fiftyone_hardness.dataset_io import review_queue

    uri = "%s/%s" % (plugin, "hardness_panel")
    state = _panel_event(uri, two_runs, "on_load", {})[0][1]["state"]
    current = state["review_id"]

    def fail(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(review_queue, "record_verdict", fail)
    requests = _panel_event(uri, two_runs, "on_review_right", state)
    assert requests == [
        (
            "notify",
            {
                "message": "The Hardness panel could not do that: "
                "RuntimeError: the database went away",
                "variant": "error",
            },
        )
    ]
    assert state["review_id"] == current  # no patch, no new layout
    monkeypatch.undo()
    requests = dict(_panel_event(uri, two_runs, "on_review_right", state))
    assert requests["patch_panel_state"]["state"]["review_id"] != current


def test_panel_events_send_one_patch_and_idle_polls_nothing(plugin, two_runs):
    uri = "%s/%s" % (plugin, "hardness_panel")
    requests = _panel_event(uri, two_runs, "on_load", {})
    names = [name for name, _ in requests]
    # the App re-renders the panel once per patch: one of each, then the
    # layout
    assert names == [
        "patch_panel_state",
        "patch_panel_data",
        "show_panel_output",
    ]
    state = requests[0][1]["state"]
    assert state["run_key"] == "second"
    layout = json.dumps(requests[-1][1])
    assert "TimerView" in layout and "on_poll" in layout

    # the timer's poll with nothing changed: no request at all
    assert _panel_event(uri, two_runs, "on_poll", state) == []
    # a class click sets the grid's view; the layout stays as it is
    requests = _panel_event(uri, two_runs, "on_class_click", state, x="3")
    assert [name for name, _ in requests] == ["set_view"]

    # a new run: the poll loads it
    two_runs.apply_hardness(
        "centroid", run_key="third", embeddings_field="pixels"
    )
    requests = _panel_event(uri, two_runs, "on_poll", state)
    assert requests[0][1]["state"]["run_key"] == "third"


def test_panel_follows_new_renamed_and_deleted_runs(two_runs):
    dataset = two_runs
    panel = HardnessPanel()
    ctx = FakePanelContext(dataset)
    panel.on_load(ctx)
    state = ctx.panel.state
    assert state.run_key == "second"

    # nothing changed: the poll reloads nothing
    state.figures = "untouched"
    panel.on_poll(ctx)
    assert state.figures == "untouched"

    # a run computed elsewhere appears and is shown, newest first
    dataset.apply_hardness(
        "centroid", run_key="a_third", embeddings_field="pixels"
    )
    panel.on_poll(ctx)
    assert state.runs == ["a_third", "second", "first"]
    assert state.run_key == "a_third"
    assert "a_third (centroid," in json.dumps(panel.render(ctx).to_json())

    # the user picks an older run: a poll keeps it
    ctx.params = {"value": "first"}
    panel.on_change_run(ctx)
    panel.on_poll(ctx)
    assert state.run_key == "first"

    # renamed: the panel follows it
    dataset.rename_run("first", "first_renamed")
    panel.on_poll(ctx)
    assert state.run_key == "first_renamed"
    assert state.score_field == "first_renamed_score"

    # deleted: the panel falls back to the newest run, and its bars work
    dataset.delete_run("first_renamed")
    panel.on_poll(ctx)
    assert state.runs == ["a_third", "second"]
    assert state.run_key == "a_third"
    ctx.params = {"x": ctx.panel.data.class_chart[0]["x"][0]}
    panel.on_class_click(ctx)
    assert len(_last_view(ctx)) > 0


def test_panel_marks_a_run_stale_when_its_labels_change(two_runs):
    dataset = two_runs
    panel = HardnessPanel()
    ctx = FakePanelContext(dataset)
    panel.on_load(ctx)
    state = ctx.panel.state
    assert state.stale is None
    results = dataset.load_run_results("second")
    assert results.labels_digest  # stored by apply_hardness

    sample = dataset.first()
    old = sample.ground_truth.label
    sample.ground_truth.label = "0" if old != "0" else "1"
    sample.save()
    panel.on_poll(ctx)
    assert "changed since this run" in state.stale
    assert "Stale run" in json.dumps(panel.render(ctx).to_json())
    # the label restored: the run describes the labels again
    sample.ground_truth.label = old
    sample.save()
    panel.on_poll(ctx)
    assert state.stale is None


def test_class_view_is_hardest_first_on_a_fitted_axis(two_runs):
    dataset = two_runs
    results = dataset.load_run_results("second")
    rows = run_views.class_table(dataset, results)
    assert [r["score"] for r in rows] == sorted(
        [r["score"] for r in rows], reverse=True
    )
    flags = dataset.match(F("second_flag") == True)  # noqa: E712
    for r in rows:
        label = F("ground_truth.label") == r["class"]
        assert r["flagged"] == len(flags.match(label))
        assert r["total"] == len(dataset.match(label))
        assert r["noise"] == pytest.approx(r["flagged"] / r["total"], 1e-3)

    panel = HardnessPanel()
    ctx = FakePanelContext(dataset)
    panel.on_load(ctx)
    bars = ctx.panel.data.class_chart[0]
    lo, hi = ctx.panel.state.class_range
    scores = [r["score"] for r in rows]
    # the axis hugs the data (not from 0) and each bar rises from its
    # bottom to the class's mean score: the hardest class is the tallest
    assert lo > 0 and lo < min(scores) and hi > max(scores)
    assert bars["base"] == lo
    assert [b + lo for b in bars["y"]] == pytest.approx(scores)
    assert bars["y"][0] == max(bars["y"])
    assert bars["customdata"][0][1] == rows[0]["flagged"]
    assert "Noise estimate" in ctx.panel.state.class_table
    assert "Samples flagged as likely mislabeled: " in ctx.panel.state.figures


def test_fitted_range_fits_negative_and_flat_scores():
    # dynamics-like scores: all negative, the hardest is the highest
    lo, hi = run_views.fitted_range([-3.0, -5.0, -4.0])
    assert -5.0 > lo > -6.0 and -3.0 < hi < -2.0
    heights = [v - lo for v in (-3.0, -4.0, -5.0)]
    assert heights == sorted(heights, reverse=True) and min(heights) > 0
    lo, hi = run_views.fitted_range([0.95, 0.95])
    assert lo < 0.95 < hi


def test_agreement_compares_the_scores_the_user_picks(two_runs):
    dataset = two_runs
    dataset.apply_hardness(
        "centroid", run_key="third", embeddings_field="pixels"
    )
    panel = HardnessPanel()
    ctx = FakePanelContext(dataset)
    panel.on_load(ctx)
    state = ctx.panel.state
    assert state.agreement_choices == ["first", "second", "third"]
    assert state.agreement_series == ["first", "second", "third"]
    assert len(ctx.panel.data.agreement[0]["z"]) == 3

    ctx.params = {"value": ["first", "third"]}
    panel.on_change_agreement(ctx)
    assert ctx.panel.data.agreement[0]["x"] == ["first", "third"]
    rendered = json.dumps(panel.render(ctx).to_json())
    assert "Scores to compare" in rendered

    ctx.params = {"value": ["first"]}
    panel.on_change_agreement(ctx)
    assert not state.has_agreement
    assert "Pick two or more" in json.dumps(panel.render(ctx).to_json())


# ---------------------------------------------------------------- review


def test_review_queue_in_the_panel(two_runs):
    from fiftyone_hardness.dataset_io import review, review_queue

    review_queue.clear_cache()
    dataset = two_runs
    panel = HardnessPanel()
    ctx = FakePanelContext(dataset)
    panel.on_load(ctx)
    state = ctx.panel.state
    results = dataset.load_run_results("second")
    flagged = run_views.flagged_view(dataset, results)
    total = len(flagged)
    assert state.review_progress == "0 of %d reviewed" % total
    # no graph is built before the first verdict
    assert "your first verdict starts building" in state.review_status

    # hardest first; the run's prediction is prefilled
    first = state.review_item
    assert first["id"] == flagged.first().id
    if first["predicted"] != first["label"]:
        assert state.correct_class == first["predicted"]
    rendered = json.dumps(panel.render(ctx).to_json())
    assert "Wrong: it is" in rendered and "Skip" in rendered

    # "wrong, it is X": recorded through dataset_io.review
    other = next(c for c in state.review_classes if c != first["label"])
    ctx.params = {"value": other}
    panel.on_review_class(ctx)
    panel.on_review_wrong(ctx)
    sample = dataset[first["id"]]
    assert sample.ground_truth_reviewed.verdict == "wrong"
    assert sample.ground_truth_reviewed.label == other
    assert state.review_progress == "1 of %d reviewed (1 wrong, 0 right)" % (
        total
    )
    assert state.review_item["id"] != first["id"]
    assert "it is %s" % other in state.review_message
    row = next(r for r in state.flagged_table if r["id"] == first["id"])
    assert row["review"] == "wrong -> %s" % other
    # the grid shows the queue, the current sample selected
    name, args, _ = ctx.ops.calls[-1]
    assert name == "set_selected_samples"
    assert args[0] == [state.review_item["id"]]

    # "right"
    second = state.review_item
    panel.on_review_right(ctx)
    assert dataset[second["id"]].ground_truth_reviewed.verdict == "right"
    assert state.review_progress.startswith("2 of %d reviewed" % total)

    # "skip": it goes to the end of the queue, nothing is recorded
    third = state.review_item
    panel.on_review_skip(ctx)
    assert state.review_item["id"] != third["id"]
    assert (
        not dataset[third["id"]].has_field("ground_truth_reviewed")
        or dataset[third["id"]].ground_truth_reviewed is None
    )
    assert "1 skipped" in state.review_progress

    # "wrong" without a class: refused, with a visible error
    state.correct_class = None
    current = state.review_item["id"]
    panel.on_review_wrong(ctx)
    assert "Pick the correct class" in state.review_error
    assert state.review_item["id"] == current
    assert ctx.ops.calls[-1][0] == "notify"

    # the sample view opens on the current sample
    panel.on_review_open(ctx)
    assert ctx.ops.calls[-1] == ("open_sample", (), {"id": current})

    # a review made elsewhere (the review_label operator) shows on the poll
    review.mark_label_right(dataset, current)
    panel.on_poll(ctx)
    assert state.review_progress.startswith("3 of %d reviewed" % total)
    assert state.review_item["id"] != current


def test_predicted_class_for_review_forms(two_runs):
    dataset = two_runs
    sample = dataset.first()
    key, predicted = run_views.predicted_class(dataset, sample.id)
    assert key == "second"  # the newest run with a prediction
    assert predicted == sample["second_pred"]
    assert run_views.predicted_class(
        dataset, sample.id, label_field="other"
    ) == (None, None)


def test_review_queue_reranks_after_a_batch(two_runs):
    from fiftyone_hardness.dataset_io import review_queue
    from fiftyone_hardness.methods.reranking import DEFAULT_BATCH

    review_queue.clear_cache()
    dataset = two_runs
    results = dataset.load_run_results("second")
    queue = review_queue.get_queue(dataset, results, background=False)
    assert queue.status == review_queue.READY  # the pixels' graph
    before = queue.remaining()
    truth = dict(zip(*dataset.values(["id", "ground_truth_clean.label"])))
    labels = dict(zip(*dataset.values(["id", "ground_truth.label"])))
    for sample_id in before[:DEFAULT_BATCH]:
        if truth[sample_id] != labels[sample_id]:
            verdict, label = "wrong", truth[sample_id]
        else:
            verdict, label = "right", None
        review_queue.record_verdict(
            dataset, queue, sample_id, verdict, correct_label=label
        )
    assert queue.num_reranks == 1
    after = queue.remaining()
    assert set(after) == set(before[DEFAULT_BATCH:])
    assert after != before[DEFAULT_BATCH:]  # the corrections moved some
    # the cached queue is the same object, verdicts kept
    again = review_queue.get_queue(dataset, results)
    assert again is queue and again.progress()["reviewed"] == DEFAULT_BATCH

    # a review cleared elsewhere puts the sample back in the queue
    from fiftyone_hardness.dataset_io import review

    review.clear_reviews(dataset, [before[0]])
    queue = review_queue.get_queue(dataset, results)
    assert before[0] in queue.remaining()
    assert queue.progress()["reviewed"] == DEFAULT_BATCH - 1


def _two_scores(data, embeddings_field="pixels"):
    """A multi-score run: ``a`` flags its top 10% (its stored threshold is
    in another unit), ``b`` flags by a rule that is no score threshold and
    reuses a shared noise rate (not its own estimate)."""
    X = data.embeddings(embeddings_field)
    a = X.std(axis=1)
    b = X.mean(axis=1)
    return MethodOutput(
        fields={
            "a_score": a,
            "a_flag": a > np.quantile(a, 0.9),
            "a_value": -a,
            "b_score": b,
            "b_flag": data.labels == 3,
        },
        results={
            "methods": {
                "a": {"threshold": -5.0, "noise_rate": 0.1},
                "b": {"noise_rate": 0.3, "own_noise_estimate": False},
            }
        },
    )


def _register_two_scores():
    registry.register_method(
        "two_scores", _two_scores, "test: two scores in one run"
    )


def test_multi_score_runs(digits):
    _register_two_scores()
    results = digits.apply_hardness("two_scores", run_key="two")
    fields = [s.score_field for s in results.scores()]
    assert fields == ["two_a_score", "two_b_score"]
    a = np.asarray(digits.values("two_a_score"))
    flags = np.asarray(digits.values("two_a_flag"))
    expected = (a[flags].min() + a[~flags].max()) / 2
    assert run_views.threshold_for(results, "a", digits) == (
        pytest.approx(expected)
    )
    assert run_views.threshold_for(results, "b", digits) is None
    figures = dict(run_views.run_figures(results, "a", digits))
    assert figures["Flagged by this score"] == int(flags.sum())
    assert figures["Noise rate by this score"] == 0.1
    # b's flags reuse a shared rate: no estimate of its own is shown
    figures = dict(run_views.run_figures(results, "b", digits))
    assert "Noise rate by this score" not in figures
    classes = run_views.class_difficulty(digits, results, "b")
    assert len(classes) == 10
    assert [v for _, v in classes] == sorted(
        [v for _, v in classes], reverse=True
    )
    view = run_views.flagged_view(digits, results, "b")
    assert set(view.values("ground_truth.label")) == {"3"}
    assert run_views.flagged_view_name(results, "b") == "two_b-flagged"
    names, matrix, used = run_views.agreement_matrix(digits)
    assert names == ["two.a", "two.b"] and used == len(digits)

    panel = HardnessPanel()
    ctx = FakePanelContext(digits)
    panel.on_load(ctx)
    assert ctx.panel.state.score == "a"
    assert ctx.panel.state.score_field == "two_a_score"
    ctx.params = {"value": "b"}
    panel.on_change_score(ctx)
    assert ctx.panel.state.threshold is None
    assert "two_b_score" in ctx.panel.state.figures
    rendered = json.dumps(panel.render(ctx).to_json())
    assert "two_b_score" in rendered  # the score dropdown names its field


# ------------------------------------------------------------ run schema


def test_run_schema_of_a_single_method_run(two_runs):
    results = two_runs.load_run_results("first")
    (score,) = results.scores()
    assert score == results.score() == results.score("centroid")
    assert (score.name, score.run_key, score.main) == (
        "centroid",
        "first",
        True,
    )
    assert score.score_field == "first_score"
    assert score.flag_field == "first_flag"
    assert score.extras == {"pred": "first_pred"}
    assert score.companion("pred") == "first_pred"
    assert score.threshold == pytest.approx(results.threshold)
    assert score.noise_rate is None  # the stand-in estimates none
    assert score.num_flagged == results.num_flagged
    assert score.class_scores == results.class_scores
    assert score.orientation == "higher_is_harder"
    assert score.member == "first"
    assert results.fields == ["first_score", "first_flag", "first_pred"]
    with pytest.raises(HardnessError, match="no score 'nope'.*centroid"):
        results.score("nope")


def test_run_schema_of_a_multi_score_run(digits):
    _register_two_scores()
    digits.apply_hardness("two_scores", run_key="two")
    results = run_views.load_results(digits, "two")
    a, b = results.scores()
    assert (a.name, a.main, a.member) == ("a", False, "two.a")
    assert (a.score_field, a.flag_field) == ("two_a_score", "two_a_flag")
    assert a.extras == {"value": "two_a_value"}
    assert (a.noise_rate, a.threshold) == (0.1, -5.0)
    assert (b.name, b.member, b.extras) == ("b", "two.b", {})
    assert b.noise_rate is None  # own_noise_estimate False
    assert results.score() == a and results.score("b") == b


def test_results_ignore_stale_stored_fields(two_runs):
    """Runs saved before the schema stored their field names; loading one
    must derive them from the key instead."""
    from fiftyone_hardness.dataset_io.runs import HardnessRunResults

    config = two_runs.get_run_info("first").config
    stored = two_runs.load_run_results("first").serialize()
    stored.pop("cls", None)
    stored["fields"] = ["old_score", "old_flag"]
    results = HardnessRunResults._from_dict(stored, two_runs, config, "new")
    assert results.fields == ["new_score", "new_flag", "new_pred"]
    assert results.score().score_field == "new_score"
    assert "fields" not in two_runs.load_run_results("first").serialize()


# ---------------------------------------------------------------- rename


def test_renamed_run_loads_in_views_and_panel(two_runs):
    dataset = two_runs
    flagged = dataset.load_run_results("first").num_flagged
    dataset.rename_run("first", "first2")

    results = run_views.load_results(dataset, "first2")
    assert results.score().score_field == "first2_score"
    assert results.fields == ["first2_score", "first2_flag", "first2_pred"]
    assert all(dataset.has_field(f) for f in results.fields)
    assert len(run_views.flagged_view(dataset, results)) == flagged
    rows = run_views.flagged_rows(dataset, results)
    assert rows and rows[0]["predicted"] is not None
    from fiftyone_hardness.operators.runs import load_run_view

    assert len(load_run_view(dataset, "first2")) == flagged
    assert len(load_run_view(dataset, "second")) == (
        dataset.load_run_results("second").num_flagged
    )

    panel = HardnessPanel()
    ctx = FakePanelContext(dataset)
    panel.on_load(ctx)
    assert sorted(ctx.panel.state.runs) == ["first2", "second"]
    for key in ("first2", "second"):
        ctx.params = {"value": key}
        panel.on_change_run(ctx)
        assert ctx.panel.state.score_field == "%s_score" % key
        assert len(ctx.panel.state.flagged_table) == run_views.TABLE_ROWS
        assert sum(ctx.panel.data.histogram[0]["y"]) == len(dataset)
        json.dumps(panel.render(ctx).to_json())
    assert sorted(ctx.panel.data.agreement[0]["x"]) == ["first2", "second"]


def _snapshot(dataset):
    """The run keys, the field schema and every value of every field but
    FiftyOne's bookkeeping: what a refused rename must leave byte-identical
    (a rename that was undone updates ``last_modified_at``)."""
    dataset.reload()
    schema = dataset.get_field_schema()
    fields = sorted(
        f for f in schema if f not in ("id", "created_at", "last_modified_at")
    )
    values = {f: repr(dataset.values(f)) for f in fields}
    return dataset.list_runs(), sorted(schema), values


def test_rename_onto_a_taken_field_changes_nothing(two_runs):

    from fiftyone_hardness.dataset_io.runs import RunRenameError

    dataset = two_runs
    dataset.add_sample_field("keep_score", fo.FloatField)
    dataset.set_values("keep_score", [0.5] * len(dataset))
    before = _snapshot(dataset)
    with pytest.raises(RunRenameError, match="keep_score already exist"):
        dataset.rename_run("first", "keep")
    assert _snapshot(dataset) == before

    # a value present in the documents but undeclared is user data too
    from bson import ObjectId

    sample_id = dataset.first().id
    dataset._sample_collection.update_one(
        {"_id": ObjectId(sample_id)}, {"$set": {"hidden_flag": True}}
    )
    with pytest.raises(RunRenameError, match="hidden_flag"):
        dataset.rename_run("first", "hidden")
    with pytest.raises(RunRenameError, match="a run key has letters"):
        dataset.rename_run("first", "bad key")
    assert _snapshot(dataset) == before

    # deleting the run later leaves the user's field alone
    dataset.delete_run("first")
    assert dataset.values("keep_score") == [0.5] * len(dataset)
    assert not any(f.startswith("first_") for f in dataset.get_field_schema())
    assert dataset.list_runs() == ["second"]


def test_rename_failing_midway_is_undone(two_runs, monkeypatch):
    import fiftyone.core.dataset as fod

    from fiftyone_hardness.dataset_io.runs import RunRenameError

    dataset = two_runs
    before = _snapshot(dataset)
    original = fod.Dataset.rename_sample_fields
    calls = []

    def rename_one_then_fail(self, mapping):
        calls.append(dict(mapping))
        if len(calls) > 1:
            return original(self, mapping)
        first = dict([next(iter(mapping.items()))])
        original(self, first)
        raise RuntimeError("connection lost")

    monkeypatch.setattr(
        fod.Dataset, "rename_sample_fields", rename_one_then_fail
    )
    with pytest.raises(RunRenameError, match="nothing was changed"):
        dataset.rename_run("first", "moved")
    assert calls[1] == {"moved_score": "first_score"}  # renamed back
    assert _snapshot(dataset) == before


def test_rename_operator_refuses_a_taken_field(plugin, two_runs):

    dataset = two_runs
    dataset.add_sample_field("keep_flag", fo.BooleanField)
    before = _snapshot(dataset)
    with pytest.raises(ExecutionError, match="keep_flag already exist"):
        foo.execute_operator(
            plugin + "/rename_hardness_run",
            dict(
                dataset=dataset,
                params={"run_key": "first", "new_run_key": "keep"},
            ),
        )
    assert _snapshot(dataset) == before

    # the form marks the key before execution
    from types import SimpleNamespace

    from fiftyone_hardness.operators.runs import RenameHardnessRun

    ctx = SimpleNamespace(
        dataset=dataset, params={"run_key": "first", "new_run_key": "keep"}
    )
    form = RenameHardnessRun().resolve_input(ctx).to_json()
    new_key = form["type"]["properties"]["new_run_key"]
    assert new_key["invalid"] is True
    assert "keep_flag" in new_key["error_message"]


# ------------------------------------------------------------- consensus


def test_consensus_reads_members_through_the_schema(two_runs):
    dataset = two_runs
    _register_two_scores()
    dataset.apply_hardness("two_scores", run_key="two")

    out = dataset.apply_hardness(
        "consensus",
        runs=["first", "two.a"],
        run_key="cons",
        rule="top",
        noise_rate=0.1,
    )
    assert out.members == ["first", "two.a"]
    assert out.num_flagged == round(0.1 * len(dataset))
    whole = dataset.apply_hardness(
        "consensus", runs=["two"], run_key="cons_two"
    )
    assert whole.members == ["two.a", "two.b"]
    # majority of two flaggers: flagged by both
    both = np.asarray(dataset.values("two_a_flag")) & np.asarray(
        dataset.values("two_b_flag")
    )
    assert np.array_equal(dataset.values("cons_two_flag"), both)

    # an unknown member is refused with the list of valid ones, before
    # anything is written
    with pytest.raises(HardnessError, match="valid members: .*two.a"):
        dataset.apply_hardness("consensus", runs=["first", "nope"])
    assert "consensus" not in dataset.list_runs()
    with pytest.raises(HardnessError, match="needs runs"):
        dataset.apply_hardness("consensus", runs=[])

    # after a rename, members are found under the new key only
    dataset.rename_run("first", "first2")
    again = dataset.apply_hardness(
        "consensus",
        runs=["first2", "two.a"],
        run_key="cons",
        rule="top",
        noise_rate=0.1,
        overwrite=True,
    )
    assert again.members == ["first2", "two.a"]
    assert again.spearman["names"] == ["first2", "two.a"]
    with pytest.raises(HardnessError, match="first2"):
        dataset.apply_hardness("consensus", runs=["first"], run_key="c3")


def test_consensus_operator_form_and_run(plugin, two_runs):
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_hardness.operators.consensus import ComputeConsensus

    dataset = two_runs
    _register_two_scores()
    dataset.apply_hardness("two_scores", run_key="two")

    def form(params):
        # a real context: the form offers FiftyOne's view target
        ctx = ExecutionContext(
            request_params={"dataset_name": dataset.name, "params": params}
        )
        out = ComputeConsensus().resolve_input(ctx).to_json()
        return out["type"]["properties"]

    props = form({})
    choices = props["runs"]["view"]["choices"]
    values = [c["value"] for c in choices]
    assert values == ["first", "second", "two", "two.a", "two.b"]
    assert "rule" in props and "noise_rate" not in props
    assert "embeddings_field" not in props
    # no member chosen yet: the form cannot execute
    assert any(p.get("invalid") for p in props.values())
    props = form({"runs": ["first", "two"], "rule": "top"})
    assert "noise_rate" in props
    assert not any(p.get("invalid") for p in props.values())
    props = form({"runs": ["first"], "rule": "top", "noise_rate": 2})
    assert props["noise_rate"]["invalid"] is True

    result = foo.execute_operator(
        plugin + "/compute_consensus",
        dict(
            dataset=dataset,
            params={
                "label_field": "ground_truth",
                "runs": ["first", "two.b"],
                "run_key": "op_cons",
            },
        ),
    )
    assert result.error is None, result.error
    assert dataset.load_run_results("op_cons").members == ["first", "two.b"]
    assert dataset.has_field("op_cons_votes")
