"""
The consensus of hardness runs (``methods/consensus.py``) and the calibrated
noise-rate estimate (``methods/noise_estimate.py``): the injection, the
estimators' responses, weights that ignore a member with no signal, a
calibrated consensus that beats its best member on digits with known
asymmetric noise (a kind of noise and a seed that did not choose the
defaults), an interval that covers the true rate, the no-injection option,
and the FiftyOne path.

The members are cheap (the k-NN vote and the probe with cleanlab, a random
score) and run on arrays, except in the last test; about a minute with the
session's digits embeddings.
"""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fiftyone_hardness.methods import consensus as fhc
from fiftyone_hardness.methods import noise_estimate as fhn
from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import (
    HardnessError,
    LabeledData,
    MethodOutput,
)
from fiftyone_hardness.methods.label_noise import inject_label_noise

# ------------------------------------------------------------- helpers


def _random_scores(data, seed=0):
    """A member with no signal: random scores, re-drawn on every run."""
    rng = np.random.default_rng(int(seed) + int(data.labels.sum()))
    return MethodOutput(
        fields={"score": rng.random(data.num_samples)},
        results={"noise_rate": None},
    )


class _Members:
    """Runs members on arrays and serves them as the FiftyOne layer would
    (``member_scores`` and ``member_runs`` of a ``LabeledData``)."""

    def __init__(self, X, labels, specs):
        self.X = X
        self.labels = labels
        self.specs = specs
        self.outputs = {}
        for key, (method, params) in specs.items():
            self.outputs[key] = registry.run_method(
                method,
                self._data(labels),
                registry.make_config(method, dict(params)),
            )

    def _data(self, labels, **kwargs):
        return LabeledData(
            ids=np.arange(len(labels)).astype(str),
            labels=np.asarray(labels),
            classes=[str(c) for c in range(10)],
            label_field="ground_truth",
            load_vectors=lambda path: self.X,
            **kwargs,
        )

    def load_scores(self, key):
        out = self.outputs[key]
        return [(key, out.fields["score"], out.fields.get("flag"))]

    def load_member_runs(self, key):
        method, params = self.specs[key]
        return [
            {
                "name": key,
                "run_key": key,
                "method": method,
                "label_field": "ground_truth",
                "config": dict(params),
                "score": None,
                "noise_rate": self.outputs[key].results.get("noise_rate"),
            }
        ]

    def data(self, with_runs=True):
        return self._data(
            self.labels,
            load_scores=self.load_scores,
            load_member_runs=self.load_member_runs if with_runs else None,
        )


KNN = ("cleanlab", {"embeddings_field": "embeddings", "probs": "knn"})
LOGREG = ("cleanlab", {"embeddings_field": "embeddings"})


@pytest.fixture(scope="module")
def structured_noise(digits_embedded):
    """The digits embeddings with 20% class-conditional asymmetric noise
    injected into the clean labels, seed 7: a kind of noise and a seed that
    did not choose the defaults (uniform noise, seeds 100-101). Members: the
    k-NN vote and the probe with cleanlab, and a random score."""
    from fiftyone_hardness.dataset_io import data as fhdata

    data = fhdata.load_labeled_data(digits_embedded, "ground_truth_clean")
    X = data.embeddings("embeddings")
    noisy, mask = inject_label_noise(
        data.labels, data.num_classes, 0.2, kind="asymmetric", seed=7
    )
    registry.register_method("random_scores", _random_scores)
    members = _Members(
        X,
        noisy,
        {"knn": KNN, "logreg": LOGREG, "random": ("random_scores", {})},
    )
    return members, mask


# ------------------------------------------------------ noise_estimate


def test_injection_changes_exactly_the_asked_fraction_in_kinds():
    labels = np.repeat(np.arange(10), 50)
    injection = fhn.inject_calibration_noise(labels, 10, rate=0.12, seed=3)
    assert injection.num_injected == 60
    assert (injection.labels[injection.mask] != labels[injection.mask]).all()
    assert (injection.labels[~injection.mask] == labels[~injection.mask]).all()
    assert set(injection.kinds) == {"uniform", "pair", "asymmetric"}
    # the labels passed in are untouched, the injection is seeded
    assert (labels == np.repeat(np.arange(10), 50)).all()
    again = fhn.inject_calibration_noise(labels, 10, rate=0.12, seed=3)
    np.testing.assert_array_equal(again.labels, injection.labels)
    # a third of the changes are pair flips (y -> y + 1)
    plus_one = (injection.labels - labels) % 10 == 1
    assert plus_one[injection.mask].sum() >= 20
    with pytest.raises(HardnessError, match="injection kinds"):
        fhn.inject_calibration_noise(labels, 10, kinds=["instance"])
    with pytest.raises(HardnessError, match="injection rate"):
        fhn.inject_calibration_noise(labels, 10, rate=0.0)


def test_injection_is_independent_of_noise_drawn_with_the_same_seed():
    # label noise drawn with default_rng(seed).choice at the calibration's
    # own rate and seed (as the benchmark's injection does) must not pick
    # the same samples: the injection would then add almost no noise (the
    # benchmark grid's 10%, seed 0 settings showed it)
    clean = np.repeat(np.arange(10), 100)
    noisy, mask = inject_label_noise(clean, 10, 0.1, kind="pair", seed=0)
    injection = fhn.inject_calibration_noise(noisy, 10, rate=0.1, seed=0)
    overlap = (injection.mask & mask).sum() / float(injection.num_injected)
    # independent choices overlap by about the noise rate (0.1)
    assert overlap < 0.25
    truth = (injection.labels != clean).mean() - mask.mean()
    assert truth == pytest.approx(injection.added_noise(mask.mean()), abs=0.03)


def test_response_slope_recovers_a_biased_estimator():
    labels = np.repeat(np.arange(10), 100)
    injection = fhn.inject_calibration_noise(labels, 10, rate=0.1, seed=0)
    # an estimator that sees 40% of the true rate, at a true rate of 0.3
    eta = 0.3
    rise = injection.added_noise(eta)
    assert 0.05 < rise < 0.1  # already-wrong samples stay wrong
    slope = fhn.response_slope(0.4 * eta, 0.4 * (eta + rise), injection)
    assert slope == pytest.approx(0.4, abs=1e-9)
    value, corrected = fhn.calibrated_estimate(0.4 * eta, slope)
    assert corrected and value == pytest.approx(eta)
    # an unbiased estimator keeps its estimate
    unbiased = fhn.response_slope(eta, eta + rise, injection)
    assert unbiased == pytest.approx(1.0)
    combined = fhn.combine_noise_estimates(
        {
            "biased": (0.4 * eta, 0.4 * (eta + rise)),
            "unbiased": (eta, eta + rise),
        },
        injection,
        len(labels),
    )
    assert combined["estimate"] == pytest.approx(eta, abs=1e-6)
    low, high = combined["interval"]
    assert low < eta < high and high - low < 0.2
    assert combined["estimators"]["biased"]["corrected"] is True
    assert combined["estimators"]["unbiased"]["corrected"] is False


# ------------------------------------------------------------ consensus


def test_a_member_with_no_signal_gets_no_weight(structured_noise):
    members, _ = structured_noise
    for rerun in ("cheap", "all"):
        out = fhc.run_consensus(
            members.data(),
            fhc.ConsensusConfig(runs=["knn", "logreg", "random"], rerun=rerun),
        )
        weights = out.results["weights"]
        assert sum(weights.values()) == pytest.approx(1.0)
        assert weights["random"] < 0.02, (rerun, weights)
        assert min(weights["knn"], weights["logreg"]) > 0.1, weights
        quality = out.results["member_quality"]["random"]
        # judged on the injected flips when re-run, else by agreement
        expected = "injection" if rerun == "all" else "agreement"
        assert quality["source"] == expected
        assert abs(quality["auroc"] - 0.5) < 0.1
    assert out.results["calibration"]["rerun"].keys() == {
        "knn",
        "logreg",
        "random",
    }


def test_calibrated_consensus_beats_its_best_member(structured_noise):
    members, mask = structured_noise
    runs = ["knn", "logreg", "random"]
    out = fhc.run_consensus(members.data(), fhc.ConsensusConfig(runs=runs))
    results = out.results
    assert results["weighting"] == "calibrated"
    assert results["calibration"]["num_injected"] == round(0.1 * len(mask))
    assert set(results["calibration"]["rerun"]) == {"knn", "logreg"}
    assert "random" in results["calibration"]["not_rerun"]

    def f1(flags):
        tp = np.sum(flags & mask)
        return 2 * tp / (flags.sum() + mask.sum())

    aurocs = {
        k: roc_auc_score(mask, members.outputs[k].fields["score"])
        for k in runs
    }
    f1s = {k: f1(members.outputs[k].fields["flag"]) for k in ("knn", "logreg")}
    auroc = roc_auc_score(mask, out.fields["score"])
    print("\nAUROC %.4f vs members %s" % (auroc, aurocs))
    print("F1 %.3f vs members %s" % (f1(out.fields["flag"]), f1s))
    assert auroc > max(aurocs.values())
    assert f1(out.fields["flag"]) > max(f1s.values())
    # the old equal-weight rank average is dragged down by the random one
    plain = fhc.run_consensus(
        members.data(),
        fhc.ConsensusConfig(runs=runs, weighting="equal", rule="majority"),
    )
    assert roc_auc_score(mask, plain.fields["score"]) < auroc - 0.02


def test_noise_estimate_interval_covers_the_truth(structured_noise):
    members, mask = structured_noise
    out = fhc.run_consensus(
        members.data(), fhc.ConsensusConfig(runs=["knn", "logreg", "random"])
    )
    results = out.results
    low, high = results["noise_rate_interval"]
    truth = mask.mean()
    print(
        "\nnoise rate %.3f [%.3f, %.3f], truth %.3f, estimators %s"
        % (
            results["noise_rate"],
            low,
            high,
            truth,
            results["noise_estimates"]["estimators"],
        )
    )
    assert results["noise_rate_calibrated"] is True
    assert low <= truth <= high
    assert high - low < 0.15
    assert abs(results["noise_rate"] - truth) < 0.05
    # the flags are the estimate's top fraction of the consensus score
    assert out.fields["flag"].mean() == pytest.approx(
        results["noise_rate"], abs=1.0 / len(mask)
    )
    # each member's own estimate is kept beside the combination
    own = results["noise_estimates"]["own"]
    assert own["knn"] == members.outputs["knn"].results["noise_rate"]
    estimators = results["noise_estimates"]["estimators"]
    assert set(estimators) == {"knn", "logreg"}
    assert all(e["slope"] is not None for e in estimators.values())


def test_no_injection_option_is_recorded(structured_noise):
    members, mask = structured_noise
    calls = []

    def counting(data, seed=0):
        calls.append(data.labels.copy())
        return _random_scores(data, seed)

    registry.register_method("counted_random", counting)
    counted = _Members(
        members.X, members.labels, {"c": ("counted_random", {})}
    )
    members.outputs["c"], members.specs["c"] = (
        counted.outputs["c"],
        counted.specs["c"],
    )
    calls.clear()
    out = fhc.run_consensus(
        members.data(),
        fhc.ConsensusConfig(
            runs=["knn", "logreg", "c"], weighting="agreement", rerun="all"
        ),
    )
    results = out.results
    assert not calls  # nothing re-run, nothing injected
    assert results["weighting"] == "agreement"
    assert results["weighting_requested"] == "agreement"
    assert results["calibration"] is None
    assert results["noise_rate_calibrated"] is False
    assert {q["source"] for q in results["member_quality"].values()} == {
        "agreement"
    }
    assert results["weights"]["c"] < 0.05
    assert roc_auc_score(mask, out.fields["score"]) > 0.9
    # majority of the members' flags without a calibrated threshold
    assert results["rule"] == "majority"

    # data that cannot say how members were made: calibration falls back,
    # and says so
    fallback = fhc.run_consensus(
        members.data(with_runs=False),
        fhc.ConsensusConfig(runs=["knn", "logreg"]),
    )
    assert fallback.results["weighting"] == "agreement"
    assert fallback.results["weighting_requested"] == "calibrated"
    assert "re-run" in fallback.results["weighting_note"]


def test_config_validation():
    with pytest.raises(HardnessError, match="injection_kinds"):
        fhc.ConsensusConfig.from_kwargs(
            method="consensus", runs=["a"], injection_kinds=["confidence"]
        )
    with pytest.raises(HardnessError, match="injection_rate"):
        fhc.ConsensusConfig.from_kwargs(
            method="consensus", runs=["a"], injection_rate=0.7
        )
    with pytest.raises(HardnessError, match="weighting"):
        fhc.ConsensusConfig.from_kwargs(
            method="consensus", runs=["a"], weighting="magic"
        )
    assert fhc.is_cheap("cleanlab", {"probs": "knn"})
    assert fhc.is_cheap("cleanlab", {"pred_field": "predictions"})
    assert not fhc.is_cheap("cleanlab", {"probs": "mlp"})
    assert not fhc.is_cheap("rer", {})


def test_discriminant_weights_share_between_copies():
    rng = np.random.default_rng(0)
    truth = rng.random(2000) < 0.2
    signal = truth * 2.0 + rng.normal(size=2000)
    other = truth * 2.0 + rng.normal(size=2000)
    normal = np.column_stack(
        [fhc.normal_scores(v) for v in (signal, signal, other)]
    )
    d = [fhc.separation(truth, normal[:, i])[1] for i in range(3)]
    # with little shrinkage, two copies of one member together weigh about
    # what the independent one does
    weights = fhc.discriminant_weights(normal, truth, d, ridge=0.05)
    assert weights[0] + weights[1] == pytest.approx(weights[2], abs=0.1)
    # the default shrinkage (chosen on the selection settings) still shares
    # the copies' weight: together they get less than two independent
    # members would (2/3)
    weights = fhc.discriminant_weights(normal, truth, d)
    assert weights[0] + weights[1] < 0.62
    assert weights[0] == pytest.approx(weights[1])


# --------------------------------------------------- through FiftyOne


def test_consensus_through_apply_hardness(digits):
    """The FiftyOne layer hands the consensus each member's method and
    config (the cheap k-NN vote is re-run on injected noise; the dataset's
    labels stay as they are)."""
    import fiftyone_hardness  # noqa: F401  (adds apply_hardness)

    before = digits.values("ground_truth.label")
    digits.apply_hardness(
        "cleanlab", embeddings_field="pixels", probs="knn", run_key="knn"
    )
    digits.apply_hardness(
        "cleanlab", embeddings_field="pixels", run_key="logreg"
    )
    out = digits.apply_hardness("consensus", runs=["knn", "logreg"])
    assert out.weighting == "calibrated"
    assert set(out.calibration["rerun"]) == {"knn", "logreg"}
    assert sum(out.weights.values()) == pytest.approx(1.0)
    # the combined estimate comes from both members' calibrated estimators
    # (their own estimates kept); on the demo's 20% symmetric noise it is
    # within 0.05 of the truth (measured: 0.165, interval 0.135-0.194: both
    # cleanlab estimators under-count here, which the calibration's
    # proportional model cannot see; see docs/benchmark/report.md)
    low, high = out.noise_rate_interval
    assert low < out.noise_rate < high
    assert abs(out.noise_rate - 0.2) < 0.05
    assert out.noise_rate_calibrated
    assert set(out.noise_estimates["own"]) == {"knn", "logreg"}
    assert set(out.noise_estimates["estimators"]) == {"knn", "logreg"}
    truth = digits.values("mislabeled")
    assert roc_auc_score(truth, digits.values("consensus_score")) > 0.95
    assert digits.values("ground_truth.label") == before
    assert digits.count("consensus_flag") == len(digits)
