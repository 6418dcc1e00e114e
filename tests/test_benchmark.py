"""
The benchmark grid (``python -m fiftyone_hardness.benchmarking``): aggregation
and report on hand-made records, a small real grid on digits (quality,
files, summary run, the source left untouched), bad input, the operator.
"""

import json
import os

import numpy as np
import pytest

import fiftyone as fo

from fiftyone_hardness.benchmarking import grid as fhb
from fiftyone_hardness.benchmarking import report as br
from fiftyone_hardness.methods.base import HardnessError


def _record(hardness, seed, method, auroc, **extra):
    return dict(
        hardness=hardness,
        rate=0.1,
        seed=seed,
        method=method,
        auroc=auroc,
        seconds=1.0,
        **extra,
    )


def test_ranks_and_tables_on_hand_made_records():
    records = [
        _record("uniform", 0, "a", 0.9),
        _record("uniform", 0, "b", 0.7),
        _record("uniform", 0, "c", 0.7),
        _record("uniform", 1, "a", 0.8),
        _record("uniform", 1, "b", 0.6),
        _record("uniform", 1, "c", None),
        _record("zoom_shift", 0, "a", 0.4),
        _record("zoom_shift", 0, "b", 0.6),
        _record("zoom_shift", 0, "c", 0.5),
    ]
    ranks, families = br.mean_ranks(records)
    # uniform seed 0: a=1, b=c=2.5; seed 1: a=1, b=2, c (missing) last = 3;
    # zoom_shift: b=1, c=2, a=3
    assert ranks["a"]["mean"] == pytest.approx((1 + 1 + 3) / 3)
    assert ranks["b"]["mean"] == pytest.approx((2.5 + 2 + 1) / 3)
    assert ranks["c"]["mean"] == pytest.approx((2.5 + 3 + 2) / 3)
    assert list(ranks) == ["a", "b", "c"]  # best (lowest) mean rank first
    assert families["mislabeling"]["a"] == 1.0
    assert families["atypical"]["b"] == 1.0

    summary = br.summarize_grid(records)
    assert summary["auroc"]["a"]["uniform"] == pytest.approx(0.85)
    assert summary["auroc"]["c"]["uniform"] == pytest.approx(0.7)  # None out
    assert br.best_per_type(summary) == {
        "uniform": ("a", pytest.approx(0.85)),
        "zoom_shift": ("b", pytest.approx(0.6)),
    }


def test_stability_over_shared_samples():
    rng = np.random.default_rng(0)
    base = rng.random(50)
    ids = ["s%d" % i for i in range(50)]
    same = {("uniform", 0.1, s, "m"): dict(zip(ids, base)) for s in (0, 1)}
    assert br.stability_table(same)[("m", "uniform")] == pytest.approx(1.0)
    # only the shared samples count: seed 1 lacks the first 10
    partial = {
        ("uniform", 0.1, 0, "m"): dict(zip(ids, base)),
        ("uniform", 0.1, 1, "m"): dict(zip(ids[10:], -base[10:])),
    }
    assert br.stability_table(partial)[("m", "uniform")] == pytest.approx(-1)


def test_report_files(tmp_path):
    records = [
        _record(t, s, m, v, f1=v / 2, auprc=v, noise_rate_abs_error=0.01)
        for t in ("uniform", "far_ood")
        for s in (0, 1)
        for m, v in (("rer", 0.9), ("loss", 0.6))
    ]
    summary = br.summarize_grid(records)
    paths = br.write_report(summary, {"dataset": "x"}, str(tmp_path))
    for key in ("heatmap", "ranks"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(paths["report"]).read()
    assert "| rer | 0.900 | 0.900 | 0.900 |" in text
    assert "![AUROC heatmap](auroc_heatmap.png)" in text
    assert "far-OOD = far_ood; mislabeling = uniform." in text
    assert "same injection" not in text  # only said when both are present
    both = br.summarize_grid(
        [
            _record(t, 0, m, v)
            for t in ("uniform", "symmetric")
            for m, v in (("rer", 0.9), ("loss", 0.6))
        ]
    )
    assert "`uniform` and `symmetric` are the same injection" in (
        br.markdown_report(both, {})
    )
    # noise-rate errors are judged on mislabeling types only
    assert summary["noise_rate_abs_error"]["rer"] == {
        "uniform": pytest.approx(0.01)
    }


def test_label_types_run_at_their_own_rates():
    settings = fhb.grid_settings(
        ["pair", "zoom_shift"], [0.1, 0.2], [0], label_props=[0.05, 0.4]
    )
    assert settings == [
        ("pair", 0.05, 0),
        ("pair", 0.4, 0),
        ("zoom_shift", 0.1, 0),
        ("zoom_shift", 0.2, 0),
    ]
    assert fhb.grid_settings(["pair"], [0.1], [0, 1]) == [
        ("pair", 0.1, 0),
        ("pair", 0.1, 1),
    ]
    # the command line's grid: structured noise at 5 rates
    assert fhb.DEFAULT_LABEL_PROPS == (0.05, 0.1, 0.2, 0.3, 0.4)
    assert {"consensus", "consensus_agreement", "consensus_equal"} <= set(
        fhb.DEFAULT_METHODS
    )


def _consensus_records():
    """Two members and a consensus on two seeds of one setting, plus the
    consensus's noise-rate estimate."""
    records = []
    for seed in (0, 1):
        for method, auroc, f1, seconds in (
            ("a", 0.90, 0.80, 5.0),
            ("b", 0.85, 0.75, 1.0),
        ):
            record = _record(
                "pair", seed, method, auroc, f1=f1, run_key=method
            )
            record["seconds"] = seconds
            records.append(record)
        estimate = 0.11 if seed == 0 else 0.15
        records.append(
            _record(
                "pair",
                seed,
                "consensus",
                0.95 - 0.1 * seed,
                f1=0.85,
                run_key="consensus",
                consensus=True,
                weighting="calibrated",
                calibration_seconds=0.5,
                rerun=["b"],
                noise_rate_estimate=estimate,
                noise_rate_true=0.1,
                noise_rate_abs_error=abs(estimate - 0.1),
                noise_rate_covered=seed == 0,
            )
        )
    return records


def test_consensus_against_its_best_member():
    records = _consensus_records()
    summary = br.summarize_grid(records)
    column = summary["consensus"]["columns"]["pair"]["consensus"]
    assert column["auroc"] == pytest.approx(0.9)
    # a has the best mean AUROC (0.90); the consensus beat it on seed 0 only
    assert column["best_auroc"] == ["a", pytest.approx(0.9)]
    assert column["wins_auroc"] == 1 and column["settings"] == 2
    assert column["best_f1"] == ["a", pytest.approx(0.8)]
    assert column["wins_f1"] == 2
    noise = summary["consensus"]["noise"]["consensus"]["pair"]["0.1"]
    assert noise["abs_error"] == pytest.approx(0.03)
    assert noise["within_goal"] == 0.5 and noise["covered"] == 0.5
    cost = summary["consensus"]["cost"]
    assert cost["rerun"] == ["b"] and cost["calibration"] == 0.5
    assert cost["rerun_seconds"] == pytest.approx(1.0)
    assert summary["consensus"]["weighting"] == {
        "consensus": {"calibrated": 2}
    }
    text = br.markdown_report(summary, {})
    assert "## Consensus vs its best member (mislabeling)" in text
    assert "| pair | consensus | 0.900 | a | 0.900 | 1/2 |" in text
    assert "**0.850** | a | 0.800 | 2/2 |" in text
    assert "chosen by `speed/consensus_calibration.py`" in text
    assert "**uniform** noise" in text
    assert "0.130 (0.030; 50% within, 50% in interval)" in text
    assert "re-runs `b` on the injected labels: 0.5 s" in text


@pytest.fixture(scope="module")
def clean_digits():
    from fiftyone_hardness import demo

    dataset = demo.load_digits_dataset(
        name="hardness-test-benchmark-source",
        noise_rate=0.0,
        overwrite=True,
        persistent=False,
    )
    yield dataset
    dataset.delete()


def test_small_grid_on_digits(clean_digits, tmp_path):
    before_datasets = set(fo.list_datasets())
    before_labels = clean_digits.values("ground_truth.label")
    before_fields = set(clean_digits.get_field_schema())
    out = str(tmp_path / "report")

    summary = fhb.run_benchmark(
        clean_digits,
        types=["uniform", "pair"],
        props=[0.1],
        seeds=[0, 1],
        methods=["rer", "cleanlab_knn", "consensus"],
        embeddings_field="pixels",
        output_dir=out,
        run_key="bench",
        progress=lambda *a: None,
    )

    # one record per method and setting, every setting really perturbed
    assert len(summary["records"]) == 2 * 2 * 3
    assert {r["num_perturbed"] for r in summary["records"]} == {180}
    auroc = summary["auroc"]
    print(
        {
            m: {t: round(v, 3) for t, v in row.items()}
            for m, row in auroc.items()
        }
    )
    # quality on known mistakes: the k-NN vote and RER find label flips on
    # digit pixels (measured: 0.99+ and 0.98+)
    assert auroc["cleanlab_knn"]["uniform"] >= 0.95
    assert auroc["rer"]["uniform"] >= 0.95
    assert auroc["consensus"]["pair"] >= 0.9
    assert set(summary["stability"]["rer"]) == {"uniform", "pair"}
    # the consensus was calibrated on injected noise (the k-NN vote is the
    # cheap member it re-ran) and says how it did against its members
    consensus = [r for r in summary["records"] if r["method"] == "consensus"]
    assert {r["weighting"] for r in consensus} == {"calibrated"}
    assert all(r["rerun"] == ["cleanlab_knn"] for r in consensus)
    assert all(r["calibration_seconds"] > 0 for r in consensus)
    assert all(r["noise_rate_covered"] is not None for r in consensus)
    assert set(summary["consensus"]["columns"]) == {"uniform", "pair"}

    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved["auroc"]["rer"]["uniform"] == pytest.approx(
        auroc["rer"]["uniform"]
    )
    assert os.path.exists(os.path.join(out, "auroc_heatmap.png"))
    assert "cleanlab_knn" in open(os.path.join(out, "report.md")).read()

    # the summary run is on the source, not among hardness runs
    from fiftyone_hardness.dataset_io import runs

    results = clean_digits.load_run_results("bench")
    assert results.ranks == summary["ranks"]
    assert "bench" not in runs.list_hardness_runs(clean_digits)

    # the source is untouched and every clone is gone
    assert clean_digits.values("ground_truth.label") == before_labels
    assert set(clean_digits.get_field_schema()) == before_fields
    assert set(fo.list_datasets()) == before_datasets

    with pytest.raises(HardnessError, match="already exists"):
        fhb.run_benchmark(
            clean_digits,
            types=["uniform"],
            embeddings_field="pixels",
            run_key="bench",
        )
    clean_digits.delete_run("bench")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(types=["nope"]), "Unknown hardness types"),
        (dict(types=["human"]), "second annotator"),
        (dict(props=[1.5]), "Rates must be in"),
        (dict(methods=["nope"]), "Unknown method 'nope'"),
        (dict(embeddings_field="missing"), "has no field 'missing'"),
        # pixels were not made by compute_embeddings: images cannot be
        # re-embedded after a perturbation
        (dict(types=["zoom_shift"]), "not made by compute_embeddings"),
        (dict(label_field="pixels"), "Classification"),
    ],
)
def test_bad_grids(clean_digits, kwargs, message):
    args = dict(types=["uniform"], embeddings_field="pixels", run_key=None)
    args.update(kwargs)
    before = set(fo.list_datasets())
    with pytest.raises(HardnessError, match=message):
        fhb.run_benchmark(clean_digits, **args)
    assert set(fo.list_datasets()) == before


def test_operator_runs_a_grid(
    clean_digits, tmp_path, plugins_dir, monkeypatch
):
    from fiftyone_hardness.operators.benchmark import _params

    # App paths must lie in an allowed directory (operators/paths.py)
    monkeypatch.setenv("FIFTYONE_HARDNESS_ALLOWED_DIRS", str(tmp_path))

    params = _params(
        {
            "types": ["uniform"],
            "props": "0.1",
            "seeds": "0, 1",
            "methods": ["cleanlab_knn"],
            "embeddings_field": "pixels",
            "run_key": "op_bench",
        }
    )
    assert params["props"] == [0.1] and params["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="numbers"):
        _params({"props": "a, b"})

    import fiftyone.operators as foo

    try:
        uri = "@fiftyone-hardness/hardness/run_hardness_benchmark"
        assert uri in [op.uri for op in foo.list_operators()]
        view = clean_digits.take(600, seed=1)  # a view: cloned for the grid
        result = foo.get_operator(uri)(
            view,
            label_field="ground_truth",
            types=["uniform"],
            props="0.1",
            seeds="0, 1",
            methods=["cleanlab_knn"],
            embeddings_field="pixels",
            run_key="op_bench",
            output_dir=str(tmp_path / "out"),
        )
        assert result.error is None, result.error
        # a generator operator: its output goes to the App; from Python the
        # report and the summary run are what it leaves behind
        with open(tmp_path / "out" / "report.md") as f:
            assert "cleanlab_knn" in f.read()
        summary = clean_digits.load_run_results("op_bench")
        assert summary.config.samples == 600
        assert summary.auroc["cleanlab_knn"]["uniform"] > 0.9
    finally:
        if "op_bench" in clean_digits.list_runs():
            clean_digits.delete_run("op_bench")


def test_operator_form(clean_digits):
    from types import SimpleNamespace

    from fiftyone_hardness.operators.benchmark import RunHardnessBenchmark

    ctx = SimpleNamespace(
        params={}, view=clean_digits.view(), dataset=clean_digits
    )
    form = RunHardnessBenchmark().resolve_input(ctx).to_json()
    props = form["type"]["properties"]
    assert {
        "label_field",
        "embeddings_field",
        "types",
        "methods",
        "props",
        "seeds",
        "run_key",
    } <= set(props)
    offered = [c["value"] for c in props["types"]["view"]["choices"]]
    assert "far_ood" in offered and "human" not in offered

    # a dataset without vectors: an error notice instead of the grid form
    bare = clean_digits.select_fields("ground_truth")
    ctx = SimpleNamespace(params={}, view=bare, dataset=clean_digits)
    props = (
        RunHardnessBenchmark()
        .resolve_input(ctx)
        .to_json()["type"]["properties"]
    )
    assert "no_embeddings" in props and "types" not in props
