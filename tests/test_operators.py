"""
The operators without a browser (FiftyOne's real operator executor and
execution contexts): which samples a compute form scores and its choices,
the summary every operator ends with and the button that opens the flagged
samples, errors turned into App-visible messages while Python callers still
get the exception, unknown parameters refused once for every method, the
per-run sidebar groups across write, rename and delete, the readable
counter-example output, and review forms that say what they change.
"""

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.constants import ViewTarget
from fiftyone.operators.executor import (
    ExecutionContext,
    ExecutionError,
    Executor,
)
from fiftyone.operators.message import GeneratedMessage
from fiftyone import ViewField as F

from fiftyone_hardness.dataset_io import runs as fhruns
from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import HardnessError, MethodOutput
from fiftyone_hardness.operators import common
from fiftyone_hardness.operators.cleanlab import ComputeCleanlab
from fiftyone_hardness.operators.consensus import ComputeConsensus
from fiftyone_hardness.operators.dynamics import ComputeDynamics
from fiftyone_hardness.operators.rer import ComputeRER
from fiftyone_hardness.operators.review import (
    ApplyLabelCorrections,
    ReviewLabel,
    UndoLabelCorrections,
)

from app_helpers import PLUGIN, plugin_dir, register_test_method


@pytest.fixture
def plugin(tmp_path):
    with plugin_dir(tmp_path):
        yield PLUGIN


@pytest.fixture
def centroid_runs(digits):
    register_test_method()
    digits.apply_hardness(
        "centroid", run_key="first", embeddings_field="pixels"
    )
    digits.apply_hardness(
        "centroid", run_key="second", embeddings_field="pixels"
    )
    return digits


def _context(dataset, params=None, view=None, selected=None, **request):
    """A real execution context, as the App's requests build it."""
    request_params = dict(
        dataset_name=dataset.name, params=dict(params or {}), **request
    )
    if view is not None:
        request_params["view"] = view._serialize()
    if selected is not None:
        request_params["selected"] = list(selected)
    return ExecutionContext(request_params=request_params, executor=Executor())


def _form(operator, ctx):
    return operator.resolve_input(ctx).to_json()["type"]["properties"]


def _invalid(props):
    return {
        name: prop["error_message"]
        for name, prop in props.items()
        if prop.get("invalid")
    }


def _lines(messages):
    return [m.to_json() for m in messages]


def _triggers(messages, name):
    """The params of the ``name`` triggers among generated messages."""
    found = []
    for line in _lines(messages):
        body = line.get("body") or {}
        if line.get("cls") == "InvocationRequest" and (
            body.get("operator_uri") == name
        ):
            found.append(body.get("params") or {})
    return found


# which samples a compute form scores


def test_compute_forms_offer_the_view_target_with_counts(digits):
    view = digits.limit(30)
    # the App selects among the samples it shows
    selected = view.skip(3).limit(4).values("id")

    # no view, no selection: the dataset is the only choice (hidden)
    props = _form(ComputeRER(), _context(digits))
    target = props["view_target"]
    assert target["default"] == ViewTarget.DATASET
    assert target["view"]["name"] == "HiddenView"
    summary = props["target_summary"]["view"]["label"]
    assert "Scores 1,797 samples (the whole dataset)" in summary
    assert "1,797 have a 'ground_truth' label, of 10 classes" in summary

    # a view and a selection: three choices with their counts, the view
    # by default (never the selection: methods need samples per class)
    props = _form(
        ComputeCleanlab(), _context(digits, view=view, selected=selected)
    )
    target = props["view_target"]
    assert target["default"] == ViewTarget.CURRENT_VIEW
    choices = {c["value"]: c["description"] for c in target["view"]["choices"]}
    assert choices == {
        ViewTarget.DATASET: "All 1,797 samples of the dataset",
        ViewTarget.CURRENT_VIEW: "The 30 samples of the current view",
        ViewTarget.SELECTED_SAMPLES: "The 4 selected samples",
    }
    assert props["target_summary"]["view"]["label"].startswith(
        "Scores 30 samples (the current view)"
    )

    # choosing the selection changes what the form says it scores
    props = _form(
        ComputeDynamics(),
        _context(
            digits,
            params={"view_target": ViewTarget.SELECTED_SAMPLES},
            view=view,
            selected=selected,
        ),
    )
    assert props["target_summary"]["view"]["label"].startswith(
        "Scores 4 samples (the selected samples); 4 have a 'ground_truth' "
        "label"
    )


def test_the_chosen_target_is_what_is_scored(plugin, centroid_runs):
    dataset = centroid_runs
    view = dataset.limit(500)
    for target, expected in [
        (ViewTarget.CURRENT_VIEW, 500),
        (ViewTarget.DATASET, len(dataset)),
    ]:
        key = "cons_%s" % target.lower()
        result = foo.execute_operator(
            plugin + "/compute_consensus",
            dict(
                dataset=dataset,
                view=view,
                params={
                    "label_field": "ground_truth",
                    "runs": ["first", "second"],
                    "run_key": key,
                    "view_target": target,
                },
            ),
        )
        assert result.error is None, result.error
        assert dataset.load_run_results(key).num_samples == expected
        assert len(dataset.exists(key + "_score")) == expected


def test_compute_embeddings_form_says_what_it_embeds(digits):
    from fiftyone_hardness.operators.compute_embeddings import (
        ComputeEmbeddings,
    )

    props = _form(ComputeEmbeddings(), _context(digits, view=digits.limit(7)))
    assert props["view_target"]["default"] == ViewTarget.CURRENT_VIEW
    assert props["target_summary"]["view"]["label"] == (
        "Embeds 7 samples (the current view)"
    )


# unknown parameters: refused once, in the base class


def test_unknown_parameters_are_refused_for_every_method(centroid_runs):
    dataset = centroid_runs
    for operator in (
        ComputeRER(),
        ComputeCleanlab(),
        ComputeDynamics(),
        ComputeConsensus(),
    ):
        props = _form(operator, _context(dataset, {"epochz": 3}))
        errors = _invalid(props)
        assert "unknown_params" in errors, type(operator).__name__
        assert "Unknown parameter epochz" in errors["unknown_params"]
        # the operator's own inputs and the base ones are not unknown
        params = {"label_field": "ground_truth", "run_key": "x"}
        params.update({name: None for name in operator.operator_params})
        props = _form(operator, _context(dataset, params))
        assert "unknown_params" not in _invalid(props)
    # cleanlab's radio is its own input, declared once on the class
    props = _form(
        ComputeCleanlab(), _context(dataset, {"source": "embeddings"})
    )
    assert "unknown_params" not in _invalid(props)
    for cls in (ComputeRER, ComputeCleanlab, ComputeDynamics):
        assert cls.resolve_input is common.HardnessOperator.resolve_input


# summaries and errors


def _two_scores(data):
    rng = np.random.default_rng(0)
    n = data.num_samples
    a, b = rng.random(n), rng.random(n)
    return MethodOutput(
        fields={
            "a_score": a,
            "a_flag": a > np.quantile(a, 0.9),
            "b_score": b,
        },
        results={
            "noise_rate": None,
            "methods": {"a": {"noise_rate": 0.1, "num_flagged": 180}},
        },
    )


def test_run_summary(centroid_runs):
    dataset = centroid_runs
    results = dataset.load_run_results("first")
    summary = common.run_summary(results)
    flagged = int(np.sum(dataset.values("first_flag")))
    assert summary["num_scored"] == len(dataset)
    assert summary["num_flagged"] == flagged
    assert summary["noise_rate"] is None
    assert summary["message"] == (
        "Scored 1,797 samples, flagged %d (%.1f%%)."
        % (flagged, 100.0 * flagged / len(dataset))
    )

    registry.register_method("two_scores_op", _two_scores, "test")
    two = dataset.apply_hardness("two_scores_op", run_key="two")
    summary = common.run_summary(two)
    assert summary["score"] == "a" and summary["num_scores"] == 2
    assert summary["num_flagged"] == 180
    assert summary["noise_rate"] == 0.1
    assert "estimated noise rate 0.100 by 'a', the first of its 2 " in (
        summary["message"]
    )

    # RER with candidate classes says what they cost on this dataset: a
    # fixed number of nearest classes, or as many as the coverage needs
    def rer_near(coverage):
        run = dataset.apply_hardness(
            "rer",
            run_key="rer_near",
            embeddings_field="pixels",
            nearest_classes=3,
            sampled_classes=1,
            candidate_coverage=coverage,
        )
        audit = dataset.load_run_results("rer_near").candidate_audit
        message = common.run_summary(run)["message"]
        dataset.delete_run("rer_near")
        return audit, message

    audit, message = rer_near(None)
    assert audit["rows"] == 1000 and 0 < audit["min_other_equal"] <= 1
    assert audit["nearest_classes"] == 3
    assert (
        "3 nearest classes: on 1000 random samples, %.1f%% got the same "
        "smallest error" % (100 * audit["min_other_equal"])
    ) in message
    # on these 10 digit classes (pixels) the coverage needs more nearest
    # classes than leave enough out: every class is evaluated, and the
    # summary says why
    audit, message = rer_near(0.999)
    assert audit["nearest_classes"] is None, audit
    assert audit["min_other_equal"] == 1.0
    assert (
        "errors computed under every class: the nearest classes did not "
        "reach candidate_coverage=0.999 on this dataset (measured on 1000 "
        "random samples)"
    ) in message

    # the button opens the run's flagged samples (of that score)
    output = common.summary_output(summary, PLUGIN).to_json()
    button = output["type"]["properties"]["open_view"]["view"]
    assert button["operator"] == PLUGIN + "/load_hardness_view"
    assert button["params"] == {
        "run_key": "two",
        "which": "flagged",
        "score": "a",
    }
    assert "180 flagged" in button["label"]


def test_operators_end_with_a_summary_and_a_way_to_the_flagged(
    plugin, centroid_runs
):
    dataset = centroid_runs
    operator = foo.get_operator(plugin + "/compute_consensus")
    ctx = _context(
        dataset,
        {
            "label_field": "ground_truth",
            "runs": ["first", "second"],
            "run_key": "cons",
        },
    )
    messages = list(operator.execute(ctx))
    assert all(isinstance(m, GeneratedMessage) for m in messages)
    shown = _triggers(messages, "show_output")
    assert len(shown) == 1
    results = dataset.load_run_results("cons")
    summary = shown[0]["results"]
    assert summary["run_key"] == "cons"
    assert summary["num_scored"] == len(dataset)
    assert summary["num_flagged"] == results.num_flagged > 0
    assert summary["message"].startswith("Scored 1,797 samples, flagged")
    props = shown[0]["outputs"]["type"]["properties"]
    assert props["open_view"]["view"]["operator"] == (
        plugin + "/load_hardness_view"
    )
    # the button's operator shows exactly the run's flagged samples
    out = foo.execute_operator(
        plugin + "/load_hardness_view",
        dict(dataset=dataset, params=props["open_view"]["view"]["params"]),
    )
    assert out.result["num_samples"] == results.num_flagged


def test_execution_errors_are_shown_in_the_app_and_raised(
    plugin, centroid_runs
):
    dataset = centroid_runs
    operator = foo.get_operator(plugin + "/compute_consensus")
    # the key exists (e.g. created since the form was resolved)
    params = {
        "label_field": "ground_truth",
        "runs": ["first"],
        "run_key": "second",
    }
    expected = None
    try:
        dataset.apply_hardness("consensus", runs=["first"], run_key="second")
    except HardnessError as e:
        expected = str(e)
    assert expected and "already exists" in expected

    messages = []
    with pytest.raises(HardnessError) as raised:
        for message in operator.execute(_context(dataset, params)):
            messages.append(message)
    assert str(raised.value) == expected
    notes = _triggers(messages, "notify")
    assert notes == [{"message": expected, "variant": "error"}]
    shown = _triggers(messages, "show_output")
    error = shown[0]["outputs"]["type"]["properties"]["error"]["view"]
    assert error["name"] == "Error" and error["description"] == expected
    # the line that makes the App treat the operation as failed
    assert {"error": expected, "error_message": expected}.items() <= (
        _lines(messages)[-1].items()
    )

    # Python callers of the operator are refused too (by the form)
    with pytest.raises(ExecutionError, match="'second' exists"):
        foo.execute_operator(
            plugin + "/compute_consensus",
            dict(dataset=dataset, params=params),
        )
    assert dataset.load_run_results("second").method == "centroid"


def test_embedding_summary():
    from fiftyone_hardness.operators.compute_embeddings import (
        embedding_output,
        embedding_summary,
    )

    summary = embedding_summary(
        {"num_embedded": 5, "num_skipped": 2, "failed": {"abc": "bad file"}},
        "emb",
    )
    assert summary["message"] == (
        "Embedded 5 samples into 'emb', skipped 2 that already had one, 1 "
        "failed (unreadable images; they have no embedding)."
    )
    assert summary["failed"] == [{"id": "abc", "error": "bad file"}]
    props = embedding_output(summary).to_json()["type"]["properties"]
    assert "failed" in props and "num_embedded" in props


# sidebar groups


def _groups(dataset):
    dataset.reload()
    return {
        g.name: list(g.paths) for g in dataset.app_config.sidebar_groups or []
    }


def test_sidebar_group_per_run_across_write_rename_delete(digits):
    register_test_method()
    dataset = digits
    # a run written before any group exists: grouped when the next run
    # materializes FiftyOne's default groups
    dataset.apply_hardness(
        "centroid", run_key="old", embeddings_field="pixels"
    )
    dataset.app_config.sidebar_groups = None
    dataset.save()
    dataset.apply_hardness("centroid", run_key="a", embeddings_field="pixels")
    groups = _groups(dataset)
    assert groups["hardness: a"] == ["a_score", "a_flag", "a_pred"]
    assert groups["hardness: old"] == ["old_score", "old_flag", "old_pred"]
    # FiftyOne's default groups no longer list them
    listed = [p for name, paths in groups.items() for p in paths]
    assert sorted(listed) == sorted(set(listed))
    assert "a_score" not in groups["primitives"]

    # a group the user made is never touched, even one named like ours
    dataset.app_config.sidebar_groups.append(
        fo.SidebarGroupDocument(name="mine", paths=["mislabeled"])
    )
    dataset.app_config.sidebar_groups.append(
        fo.SidebarGroupDocument(name="hardness: b", paths=["ground_truth"])
    )
    for group in dataset.app_config.sidebar_groups:
        if group.name in ("primitives", "labels"):
            group.paths = [
                p
                for p in group.paths
                if p not in ("mislabeled", "ground_truth")
            ]
    dataset.save()
    dataset.apply_hardness("centroid", run_key="b", embeddings_field="pixels")
    groups = _groups(dataset)
    assert groups["mine"] == ["mislabeled"]
    assert groups["hardness: b"] == ["ground_truth"]

    # rename: the group follows its run
    dataset.rename_run("a", "renamed")
    groups = _groups(dataset)
    assert "hardness: a" not in groups
    assert groups["hardness: renamed"] == [
        "renamed_score",
        "renamed_flag",
        "renamed_pred",
    ]

    # delete: the group goes with its fields; the user's groups stay
    dataset.delete_run("renamed")
    dataset.delete_run("b")
    groups = _groups(dataset)
    assert "hardness: renamed" not in groups
    assert groups["hardness: b"] == ["ground_truth"]
    assert groups["mine"] == ["mislabeled"]
    assert groups["hardness: old"] == ["old_score", "old_flag", "old_pred"]

    # overwrite: one group, the run's fields
    dataset.apply_hardness(
        "centroid", run_key="old", embeddings_field="pixels", overwrite=True
    )
    groups = _groups(dataset)
    assert groups["hardness: old"] == ["old_score", "old_flag", "old_pred"]


def test_a_run_with_many_fields_gets_a_collapsed_group(digits):
    def many(data):
        n = data.num_samples
        return MethodOutput(
            fields={
                "m%d_score" % i: np.arange(n, dtype=float)
                for i in range(fhruns.SIDEBAR_EXPANDED_MAX_FIELDS + 1)
            },
            results={},
        )

    registry.register_method("many_scores_op", many, "test")
    digits.apply_hardness("many_scores_op", run_key="many")
    digits.reload()
    group = [
        g
        for g in digits.app_config.sidebar_groups
        if g.name == fhruns.sidebar_group_name("many")
    ][0]
    assert len(group.paths) == fhruns.SIDEBAR_EXPANDED_MAX_FIELDS + 1
    assert group.expanded is False


# counter-examples


def test_counterexample_output_is_readable(plugin, digits):
    mislabeled = digits.match(F("mislabeled") == True)  # noqa: E712
    sample_id = mislabeled.first().id
    result = foo.execute_operator(
        plugin + "/find_counterexamples",
        dict(
            dataset=digits,
            current_sample=sample_id,
            params={
                "label_field": "ground_truth",
                "embeddings_field": "pixels",
                "k": 4,
            },
        ),
    )
    out = result.result
    label = digits[sample_id].ground_truth.label
    rows = out["samples"]
    # the sample first, marked, then its counter-examples with labels
    assert rows[0]["id"] == sample_id and rows[0]["label"] == label
    assert rows[0]["rank"].startswith("this sample")
    assert [r["rank"] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert {r["label"] for r in rows[1:]} == {out["target_label"]}
    labels = dict(zip(*digits.values(["id", "ground_truth.label"])))
    assert all(labels[r["id"]] == r["label"] for r in rows)
    # rounded: 3 decimals, 3 significant digits
    assert out["probability"] == round(out["probability"], 3)
    for row in rows[1:]:
        value = row["incompatibility"]
        assert value == float("%.3g" % value)
    assert rows[1]["relative"] == 1.0
    assert all(0 < r["relative"] <= 1 for r in rows[1:])
    # why the candidates have their class
    text = out["explanation"]
    if out["predicted"] != label:
        assert out["target_label"] == out["predicted"]
        assert (
            "Candidates are the samples labelled **%s**, the class the "
            "model predicts for this sample" % out["predicted"]
        ) in text
    assert "this sample's label is likely wrong" in text
    # the grid shows the sample first and opens it
    requests = result.executor.to_json()["requests"]
    names = [r["operator_uri"] for r in requests]
    assert names.index("set_view") < names.index("open_sample")
    opened = requests[names.index("open_sample")]["params"]
    assert opened["id"] == sample_id


def test_explanation_when_the_model_agrees_or_a_class_is_chosen():
    from fiftyone_hardness.operators.review import explain_counterexamples

    result = {
        "label": "3",
        "predicted": "3",
        "target_label": "5",
        "probability": 0.91234,
        "counterexample_ids": ["x"],
    }
    text = explain_counterexamples(result)
    assert "agrees with this sample's label **3** (probability 0.912)" in (
        text
    )
    assert "labelled **5**, the class the model finds most probable " in (text)
    assert "the class you chose" in explain_counterexamples(result, True)
    result["counterexample_ids"] = []
    assert "no counter-example" in explain_counterexamples(result)


# review forms say what they change


def test_review_forms_say_exactly_what_they_change(plugin, digits):
    sample_id = digits.first().id
    forms = {
        cls.__name__: _form(cls(), _context(digits, current_sample=sample_id))
        for cls in (ReviewLabel, ApplyLabelCorrections, UndoLabelCorrections)
    }
    for name, props in forms.items():
        help_text = props["label_field"]["view"]["description"]
        assert "never modified" not in help_text, name
    assert "not changed until you apply" in (
        forms["ReviewLabel"]["label_field"]["view"]["description"]
    )
    apply_help = forms["ApplyLabelCorrections"]["label_field"]["view"][
        "description"
    ]
    assert "'<field>_original'" in apply_help and "replaces" in apply_help
    modes = {
        c["value"]: c["description"]
        for c in forms["ApplyLabelCorrections"]["mode"]["view"]["choices"]
    }
    assert "'ground_truth' itself is not changed" in modes["new_field"]
    assert "Replaces the label" in modes["in_place"]
    assert "ground_truth_original" in modes["in_place"]
    assert "original label back" in (
        forms["UndoLabelCorrections"]["label_field"]["view"]["description"]
    )

    # and each confirms what it did
    clean = digits[sample_id].ground_truth_clean.label
    wrong = "0" if clean != "0" else "1"
    result = foo.execute_operator(
        plugin + "/review_label",
        dict(
            dataset=digits,
            current_sample=sample_id,
            params={
                "label_field": "ground_truth",
                "verdict": "wrong",
                "correct_label": wrong,
            },
        ),
    )
    notes = [
        r["params"]
        for r in result.executor.to_json()["requests"]
        if r["operator_uri"] == "notify"
    ]
    assert notes == [
        {
            "message": "Marked 1 label as wrong (correct class: %s)" % wrong,
            "variant": "success",
        }
    ]
    result = foo.execute_operator(
        plugin + "/apply_label_corrections",
        dict(
            dataset=digits,
            params={"label_field": "ground_truth", "mode": "in_place"},
        ),
    )
    notes = [
        r["params"]["message"]
        for r in result.executor.to_json()["requests"]
        if r["operator_uri"] == "notify"
    ]
    assert notes == [
        "Corrected 1 label in 'ground_truth' (originals in "
        "'ground_truth_original')"
    ]
    assert digits[sample_id].ground_truth.label == wrong


def test_run_choices_default_to_the_newest_run(centroid_runs):
    from fiftyone_hardness.operators.runs import LoadHardnessView

    dataset = centroid_runs
    dataset.apply_hardness(
        "centroid", run_key="a_newest", embeddings_field="pixels"
    )
    props = _form(LoadHardnessView(), _context(dataset))
    choices = [c["value"] for c in props["run_key"]["view"]["choices"]]
    assert choices == ["a_newest", "second", "first"]
    assert props["run_key"]["default"] == "a_newest"
