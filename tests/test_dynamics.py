"""
Training dynamics: the recorder, the 13 H-CAT methods (formulas pinned on a
hand-made record, quality on digits with known noise), the consensus, bad
input (refused alike by Python and the App), the package's layers, and the
run / operator path through ``dataset.apply_hardness``.
"""

import dataclasses
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fiftyone_hardness.methods import consensus as fhc
from fiftyone_hardness.methods import dynamics as fhd
from fiftyone_hardness.methods.base import HardnessError, LabeledData
from fiftyone_hardness.methods.dynamics import cache as fhcache
from fiftyone_hardness.methods.dynamics import scores as fhs
from fiftyone_hardness.methods.dynamics.config import (
    METHOD_DESCRIPTIONS,
    SINGLE_METHODS,
    DynamicsConfig,
    SingleDynamicsConfig,
)
from fiftyone_hardness.methods.label_noise import inject_label_noise

ALL = list(fhs.METHODS)
LEARNING_DYNAMICS = [
    "aum",
    "data_iq",
    "data_maps",
    "el2n",
    "grand",
    "forgetting",
    "loss",
    "vog",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: threads only add contention on a shared 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def record():
    """A tiny hand-made record: 3 epochs, 6 samples, 3 classes."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = np.array(
        [
            [[2, 0, 0], [0, 1, 0], [0, 3, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]],
            [[3, 0, 0], [1, 0, 0], [0, 3, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0]],
            [[4, 0, 1], [0, 2, 0], [0, 4, 0], [2, 0, 0], [0, 0, 2], [0, 1, 0]],
        ],
        dtype=np.float32,
    )
    return fhd.TrainingRecord(
        labels=labels,
        num_classes=3,
        logits=logits,
        margins=rng.normal(size=(3, 6)).astype(np.float32),
        early_index=1,
        features=rng.normal(size=(6, 4)),
        grad_norms=rng.random(6),
        input_grad_var=rng.random(6),
        mc_probs=_softmax(rng.normal(size=(5, 6, 3))),
        aug_probs=_softmax(rng.normal(size=(2, 6, 3))),
        cv_probs=_softmax(rng.normal(size=(6, 3)) * 2),
        calib_probs=rng.random((3, 6)),
        calib_flipped=np.array([1, 0, 1, 0, 0, 0], bool),
        calib_clean=np.array([0, 1, 0, 1, 1, 1], bool),
    )


def test_formulas_on_hand_made_record(record):
    y = record.labels
    n = len(y)
    rows = np.arange(n)
    probs = _softmax(record.logits.astype(np.float64))
    p = probs[:, rows, y]  # (E, N) probability of the observed label
    out = fhd.compute_methods(record, noise_rate=1 / 3)

    # AUM: -mean margin; flag AUM < 0
    aum = record.margins.mean(0)
    np.testing.assert_allclose(out["aum"].score, -aum, rtol=1e-6)
    np.testing.assert_array_equal(out["aum"].flag, aum < 0)
    np.testing.assert_allclose(out["aum"].extras["value"], aum, rtol=1e-6)

    # Data-IQ: group level + 1 - confidence
    conf = p.mean(0)
    alea = (p * (1 - p)).mean(0)
    groups = np.where(
        (conf >= 0.8) & (alea <= 0.15),
        "easy",
        np.where((conf <= 0.2) & (alea <= 0.15), "hard", "ambiguous"),
    )
    level = np.select([groups == "easy", groups == "hard"], [0, 2], 1)
    np.testing.assert_allclose(out["data_iq"].score, level + 1 - conf)
    assert list(out["data_iq"].extras["group"]) == list(groups)
    np.testing.assert_array_equal(out["data_iq"].flag, groups == "hard")
    assert set(groups) >= {"easy", "ambiguous"}

    # Data Maps: 1 - confidence, variability = std
    np.testing.assert_allclose(out["data_maps"].score, 1 - conf)
    np.testing.assert_allclose(
        out["data_maps"].extras["variability"], p.std(0)
    )
    np.testing.assert_array_equal(out["data_maps"].flag, conf < 0.5)
    # not one shared score
    assert not np.allclose(out["data_maps"].score, out["data_iq"].score)

    # EL2N at the early epoch (index 1)
    el2n = np.linalg.norm(probs[1] - np.eye(3)[y], axis=1)
    np.testing.assert_allclose(out["el2n"].score, el2n)
    # top-fraction flags: 1/3 of 6 = the 2 highest
    np.testing.assert_array_equal(out["el2n"].flag, el2n >= np.sort(el2n)[-2])

    # GraNd: the recorded per-sample gradient norms
    np.testing.assert_allclose(out["grand"].score, record.grad_norms)

    # Forgetting: learned -> forgotten transitions; never learned = max + 1
    learned = record.logits.argmax(-1) == y
    count = (learned[:-1] & ~learned[1:]).sum(0)
    never = ~learned.any(0)
    assert never.any() and count.max() > 0
    expected = np.where(never, count.max() + 1, count)
    np.testing.assert_allclose(out["forgetting"].score, expected)
    np.testing.assert_array_equal(out["forgetting"].extras["count"], count)
    np.testing.assert_array_equal(out["forgetting"].flag, never)

    # small loss: mean cross-entropy over epochs
    np.testing.assert_allclose(out["loss"].score, (-np.log(p)).mean(0))

    # prototypicality: cosine distance to the observed-class centroid
    f = record.features / np.linalg.norm(record.features, axis=1)[:, None]
    cent = np.stack([f[y == c].mean(0) for c in range(3)])
    cos = (f * cent[y]).sum(1) / np.linalg.norm(cent[y], axis=1)
    np.testing.assert_allclose(out["prototypicality"].score, 1 - cos)

    # VoG: class-normalized
    v = record.input_grad_var
    z = np.empty(n)
    for c in range(3):
        m = y == c
        z[m] = (v[m] - v[m].mean()) / v[m].std()
    np.testing.assert_allclose(out["vog"].score, z)

    # ALLSH: KL(p || p_aug) of the last epoch, averaged over passes
    last = probs[-1]
    kl = (last[None] * np.log(last[None] / record.aug_probs)).sum(-1)
    np.testing.assert_allclose(out["allsh"].score, kl.mean(0), rtol=1e-6)

    # Conf-Agree: 1 - mean MC probability of the predicted class
    mean = record.mc_probs.mean(0)
    pred = mean.argmax(1)
    np.testing.assert_allclose(
        out["conf_agree"].score, 1 - mean[rows, pred], rtol=1e-6
    )

    # Detector: logistic regression of flipped vs clean calibration
    # trajectories, applied to this run's trajectories -> a probability
    from sklearn.linear_model import LogisticRegression

    def feats(q):
        return np.column_stack([q.T, q.mean(0), q.std(0), q.min(0), q.max(0)])

    lr = LogisticRegression(max_iter=2000).fit(
        feats(record.calib_probs), record.calib_flipped
    )
    prob = lr.predict_proba(feats(p))[:, 1]
    np.testing.assert_allclose(out["detector"].score, prob, rtol=1e-6)
    assert ((prob > 0) & (prob < 1)).all()
    assert len(np.unique(out["detector"].score)) > 2  # not 0/1
    np.testing.assert_array_equal(out["detector"].flag, prob > 0.5)

    # cleanlab: 1 - self-confidence of the out-of-sample probabilities
    np.testing.assert_allclose(
        out["cleanlab"].score, 1 - record.cv_probs[rows, y]
    )

    # every result dict has the documented keys
    for name, o in out.items():
        assert {"threshold", "noise_rate", "num_flagged", "rule"} <= set(
            o.results
        ), name
        assert o.results["num_flagged"] == int(o.flag.sum())


def test_adding_a_method_is_one_class(record):
    class Margin(fhs.HardnessMethod):
        name = "last_margin"

        def scores(self, record):
            return -record.margins[-1], {}

    out = Margin().compute(record, noise_rate=0.5)
    assert out.flag.sum() == 3
    np.testing.assert_allclose(out.score, -record.margins[-1])


def test_missing_need_is_a_clear_error(record):
    record.grad_norms = None
    with pytest.raises(HardnessError, match="grand"):
        fhd.compute_methods(record, ["grand"])
    with pytest.raises(HardnessError, match="Unknown training-dynamics"):
        fhd.compute_methods(record, ["nope"])


def _digits(n=None, rate=0.2):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.data.astype(np.float32) / 16.0
    y = d.target
    if n:
        X, y = X[:n], y[:n]
    noisy, mask = inject_label_noise(y, 10, rate, seed=0)
    return X, noisy, mask


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("on", ["embeddings", "images"])
def test_recorder_does_not_change_the_trained_model(on):
    X, y, _ = _digits(n=300)
    if on == "images":
        X = X.reshape(-1, 1, 8, 8)
    config = SingleDynamicsConfig(on=on, epochs=3, hidden=32, seed=3)
    X = fhd.prepare_inputs(X, config)
    plain, none = fhd.train(X, y, 10, config, record=False)
    assert none is None
    inner = set(fhd.NEEDS) - {"cv_probs", "calibration"}
    recorded, record = fhd.train(X, y, 10, config, needs=inner)
    a, b = _state(plain), _state(recorded)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert record.logits.shape == (3, 300, 10)
    assert record.mc_probs.shape == (config.mc_passes, 300, 10)
    # the recorded last-epoch logits are the trained model's eval outputs
    np.testing.assert_allclose(
        fhd.softmax(record.logits[-1]),
        fhd.predict_probs(recorded, X),
        rtol=1e-4,
        atol=1e-6,
    )
    # the auxiliary models trained alongside (batched) leave the main run
    # and its record alone
    full = fhd.record_training(X, y, 10, config, needs=fhd.NEEDS)
    for name in ("logits", "margins", "features", "mc_probs", "aug_probs"):
        np.testing.assert_array_equal(
            getattr(full, name), getattr(record, name), err_msg=name
        )
    np.testing.assert_array_equal(full.grad_norms, record.grad_norms)
    np.testing.assert_array_equal(full.input_grad_var, record.input_grad_var)
    # another seed trains another model
    other, _ = fhd.train(
        X,
        y,
        10,
        SingleDynamicsConfig(on=on, epochs=3, hidden=32),
        record=False,
    )
    assert not torch.equal(_state(other)["head.weight"], b["head.weight"])


def _loop_grad_norms(model, X, y):
    norms = []
    for i in range(len(X)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(
            model(X[i : i + 1]), y[i : i + 1]
        ).backward()
        norms.append(
            torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
        )
    model.zero_grad()
    return torch.stack(norms)


class _Normed(torch.nn.Module):
    """A model with a layer the closed form does not cover (LayerNorm)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_per_sample_gradients_match_a_loop():
    from fiftyone_hardness.methods.dynamics import gradients as fhg

    torch.manual_seed(0)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    models = [
        (fhd.MLP(5, 3, hidden=7).eval(), torch.randn(9, 5)),
        (
            fhd.SmallCNN((2, 8, 8), 3, hidden=6, width=3).eval(),
            torch.randn(9, 2, 8, 8),
        ),
        (_Normed().eval(), torch.randn(9, 5)),
    ]
    for model, X in models:
        # the MLP and the CNN take the closed form, LayerNorm needs vmap
        closed = fhg._closed_form_layers(model) is not None
        assert closed == (not isinstance(model, _Normed))
        norms = fhd.per_sample_grad_norms(model, X, y, batch_size=4)
        torch.testing.assert_close(
            norms, _loop_grad_norms(model, X, y), rtol=1e-5, atol=1e-6
        )
        assert all(p.grad is None for p in model.parameters())
        assert not model.training

    model, X = models[0]
    grads = fhd.input_gradients(model, X, y, batch_size=4)
    logit_grads = fhd.input_gradients(model, X, y, 4, target="logit")
    for i in range(9):
        x = X[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).log_softmax(-1)[0, y[i]], x)
        assert torch.allclose(grads[i], g[0], atol=1e-6)
        x = X[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x)[0, y[i]], x)
        assert torch.allclose(logit_grads[i], g[0], atol=1e-6)


def test_vog_variance_matches_numpy():
    torch.manual_seed(0)
    X = torch.randn(7, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    checkpoints = [fhd.MLP(5, 3, hidden=4).eval() for _ in range(3)]
    grads = np.stack(
        [fhd.input_gradients(m, X, y).double().numpy() for m in checkpoints]
    )
    np.testing.assert_allclose(
        fhd.vog_variance(checkpoints, X, y, batch_size=3),
        grads.var(0).mean(1),
        rtol=1e-10,
    )


@pytest.mark.parametrize("on", ["embeddings", "images"])
def test_batched_members_match_their_sequential_training(on):
    # the K-fold models and the calibration run, trained alongside the main
    # model as one batched model, are the models trained one after another
    X, y, _ = _digits(n=300)
    if on == "images":
        X = X.reshape(-1, 1, 8, 8)
    config = SingleDynamicsConfig(on=on, epochs=3, hidden=32, seed=1)
    X = fhd.prepare_inputs(X, config)
    needs = ["cv_probs", "calibration"]
    messages = []
    batched = fhd.record_training(
        X, y, 10, config, needs, progress=lambda f, m: messages.append(m)
    )
    # one joint run: progress counts the main run's epochs only
    assert messages == ["epoch %d/3" % e for e in (1, 2, 3)]
    sequential = fhd.record_training(
        X, y, 10, dataclasses.replace(config, batched_members=False), needs
    )
    np.testing.assert_array_equal(batched.logits, sequential.logits)
    # float rounding differs (batched matmuls): a few ulps after 3 epochs
    np.testing.assert_allclose(
        batched.cv_probs, sequential.cv_probs, rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(
        batched.calib_probs, sequential.calib_probs, rtol=0, atol=1e-4
    )
    np.testing.assert_array_equal(
        batched.calib_flipped, sequential.calib_flipped
    )
    np.testing.assert_array_equal(batched.calib_clean, sequential.calib_clean)
    # out-of-sample: every row has the probabilities of the fold holding
    # it out, a distribution
    np.testing.assert_allclose(batched.cv_probs.sum(1), 1, atol=1e-5)
    assert batched.calib_probs.shape == (3, 300)
    assert batched.calib_flipped.any() and batched.calib_clean.any()
    assert not (batched.calib_flipped & batched.calib_clean).any()


def test_unstackable_members_train_one_after_another(monkeypatch):
    from fiftyone_hardness.methods.dynamics import members as fhm

    def refuse(models):
        raise fhm.Unstackable("a layer the stack does not know")

    X, y, _ = _digits(n=200)
    config = SingleDynamicsConfig(epochs=2, hidden=16)
    X = fhd.prepare_inputs(X, config)
    sequential = fhd.record_training(
        X,
        y,
        10,
        dataclasses.replace(config, batched_members=False),
        ["cv_probs"],
    )
    monkeypatch.setattr(fhm, "_stack_layers", refuse)
    fallback = fhd.record_training(X, y, 10, config, ["cv_probs"])
    np.testing.assert_array_equal(fallback.cv_probs, sequential.cv_probs)


def test_disk_backed_records_give_the_same_scores(tmp_path, monkeypatch):
    import os
    import tempfile

    from fiftyone_hardness.methods.dynamics.storage import ArrayStore

    # a store puts arrays on disk once the budget is spent
    store = ArrayStore(budget_mb=1.0 / 1024, temp_dir=str(tmp_path))
    small = store.empty((100,), np.float32, "small")
    big = store.empty((1000,), np.float32, "big")
    assert not isinstance(small, np.memmap) and isinstance(big, np.memmap)
    big[:] = 7
    assert big.sum() == 7000
    # the file is unlinked as soon as mapped: nothing is left behind
    assert os.listdir(tmp_path) == []

    X, y, mask = _digits(n=400)
    config = SingleDynamicsConfig(epochs=4, hidden=32)
    X = fhd.prepare_inputs(X, config)
    in_memory = fhd.record_training(X, y, 10, config, fhd.NEEDS)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    on_disk = fhd.record_training(
        X, y, 10, dataclasses.replace(config, memory_budget_mb=0), fhd.NEEDS
    )
    for name in (
        "logits",
        "margins",
        "features",
        "mc_probs",
        "aug_probs",
        "cv_probs",
        "calib_probs",
    ):
        assert isinstance(getattr(on_disk, name), np.memmap), name
        assert not isinstance(getattr(in_memory, name), np.memmap), name
    assert on_disk.nbytes_in_memory() < in_memory.nbytes_in_memory() / 10
    assert os.listdir(tmp_path) == []
    a = fhd.compute_methods(in_memory)
    b = fhd.compute_methods(on_disk)
    for m in ALL:
        np.testing.assert_array_equal(a[m].score, b[m].score, err_msg=m)
        np.testing.assert_array_equal(a[m].flag, b[m].flag, err_msg=m)


def test_the_cache_keeps_older_records_within_the_budget():
    X, y, _ = _digits(n=200)
    fhd.clear_cache()
    tiny = SingleDynamicsConfig(epochs=2, hidden=8, memory_budget_mb=0.02)
    X = fhd.prepare_inputs(X, tiny)
    first, _ = fhd.get_record(X, y, 10, tiny, ())
    assert first.nbytes_in_memory() > 0.02 * (1 << 20) / 2
    fhd.get_record(X, y, 10, dataclasses.replace(tiny, seed=1), ())
    # the two would exceed the budget: only the newest stays
    assert len(fhcache._RECORD_CACHE) == 1
    roomy = dataclasses.replace(tiny, memory_budget_mb=64)
    fhd.get_record(X, y, 10, roomy, ())
    fhd.get_record(X, y, 10, dataclasses.replace(roomy, seed=2), ())
    assert len(fhcache._RECORD_CACHE) == 3
    fhd.clear_cache()


def _vectors_data(X, y, classes=10):
    return LabeledData(
        ids=np.array(["s%d" % i for i in range(len(y))]),
        labels=np.asarray(y),
        classes=[str(c) for c in range(classes)],
        load_values=lambda path: list(X),
    )


def test_bad_training_input():
    X, y, _ = _digits(n=200)
    with pytest.raises(HardnessError, match="Invalid epochs=1"):
        SingleDynamicsConfig(epochs=1)
    with pytest.raises(HardnessError, match="early_epoch=5.*epochs=3"):
        SingleDynamicsConfig(epochs=3, early_epoch=5)
    y1 = y.copy()
    y1[y1 == 3] = 4
    y1[0] = 3  # class 3 has one sample
    config = DynamicsConfig(embeddings_field="x", epochs=2, methods=["aum"])
    with pytest.raises(HardnessError, match="at least 2 samples per class"):
        fhd.run_dynamics(_vectors_data(X, y1), config)
    with pytest.raises(HardnessError, match="embeddings_field=.*images"):
        fhd.run_dynamics(_vectors_data(X, y), DynamicsConfig(epochs=2))
    Xn = X.copy()
    Xn[5, 2] = np.nan
    with pytest.raises(HardnessError, match="NaN"):
        fhd.prepare_inputs(Xn, SingleDynamicsConfig())
    with pytest.raises(HardnessError, match="NaN"):
        fhd.run_dynamics(_vectors_data(Xn, y), config)
    with pytest.raises(HardnessError, match="needs images as an"):
        fhd.prepare_inputs(X, SingleDynamicsConfig(on="images"))


def test_methods_none_means_all_and_order_is_hcat():
    assert DynamicsConfig().method_names == list(METHOD_DESCRIPTIONS)
    assert DynamicsConfig(methods=None).method_names == list(
        METHOD_DESCRIPTIONS
    )
    assert DynamicsConfig(methods=["loss", "aum"]).method_names == [
        "aum",
        "loss",
    ]


def test_run_dynamics_on_arrays():
    X, y, mask = _digits(n=400)
    fhd.clear_cache()
    config = DynamicsConfig(
        embeddings_field="x", epochs=4, hidden=32, methods=["aum", "loss"]
    )
    out = fhd.run_dynamics(_vectors_data(X, y), config)
    assert sorted(out.fields) == [
        "aum_flag",
        "aum_score",
        "aum_value",
        "loss_flag",
        "loss_score",
    ]
    assert out.results["training_config"]["model"] == "mlp"
    assert out.results["training_config"]["epochs"] == 4
    assert not out.results["reused_record"]
    assert _auroc(mask, out.fields["loss_score"]) > 0.7
    # a single method alone reuses the record, even with another noise rate
    single = fhd.run_loss(
        _vectors_data(X, y),
        SingleDynamicsConfig(
            embeddings_field="x", epochs=4, hidden=32, noise_rate=0.1
        ),
    )
    assert single.results["reused_record"]
    np.testing.assert_array_equal(
        single.fields["score"], out.fields["loss_score"]
    )
    assert single.fields["flag"].sum() == 40


def test_interrupted_training_records_nothing():
    X, y, _ = _digits(n=200)
    config = SingleDynamicsConfig(epochs=4, hidden=16)
    X = fhd.prepare_inputs(X, config)
    fhd.clear_cache()

    def stop(fraction, message):
        if "epoch 2/" in message:
            raise KeyboardInterrupt

    with pytest.raises(
        fhd.TrainingInterrupted, match="interrupted at epoch 2"
    ):
        fhd.get_record(X, y, 10, config, (), progress=stop)
    assert not fhcache._RECORD_CACHE


def test_consensus_formulas():
    a = np.array([0.1, 0.5, 0.9, 0.3])
    b = np.array([1.0, 3.0, 2.0, 0.0])
    c = np.array([5.0, 5.0, 1.0, 0.0])
    scores = {"a": a, "b": b, "c": c}
    from scipy.stats import rankdata, spearmanr

    expected = np.mean([(rankdata(s) - 1) / 3 for s in (a, b, c)], axis=0)
    np.testing.assert_allclose(fhc.rank_average(scores), expected)
    rho = fhc.spearman_matrix(scores)
    assert rho[0, 1] == pytest.approx(spearmanr(a, b)[0])
    assert rho[1, 2] == pytest.approx(spearmanr(b, c)[0])
    np.testing.assert_allclose(np.diag(rho), 1)
    flags = {
        "a": np.array([0, 1, 1, 0], bool),
        "b": np.array([0, 1, 0, 0], bool),
        "c": np.array([1, 1, 0, 0], bool),
    }
    out = fhc.consensus(scores, flags)
    np.testing.assert_array_equal(out["flag"], [False, True, False, False])
    np.testing.assert_array_equal(out["votes"], [1, 3, 1, 0])
    top = fhc.consensus(scores, flags, rule="top", noise_rate=0.5)
    assert top["flag"].sum() == 2
    assert top["flag"][np.argmax(expected)]
    with pytest.raises(HardnessError, match="flag rule"):
        fhc.consensus(scores, flags, rule="vote")


def test_consensus_reads_members_through_the_data():
    members = {
        "dyn": [
            ("dyn.aum", [0.1, 0.2, 0.3], [False, False, True]),
            ("dyn.loss", [0.3, 0.2, 0.1], [True, False, False]),
        ],
        "rer": [("rer", [1.0, 2.0, 3.0], None)],
    }
    members["dyn.loss"] = members["dyn"][1:]

    def load_scores(member):
        if member not in members:
            raise HardnessError("No scores for consensus member %r" % member)
        return members[member]

    data = LabeledData(
        ids=np.array(["a", "b", "c"]),
        labels=np.array([0, 1, 0]),
        classes=["x", "y"],
        load_scores=load_scores,
    )
    scores, flags = fhc.resolve_members(data, ["dyn", "rer"])
    assert sorted(scores) == ["dyn.aum", "dyn.loss", "rer"]
    assert sorted(flags) == ["dyn.aum", "dyn.loss"]
    scores, _ = fhc.resolve_members(data, ["dyn.loss"])
    assert list(scores) == ["dyn.loss"]
    with pytest.raises(HardnessError, match="No scores for consensus"):
        fhc.resolve_members(data, ["nothing"])
    out = fhc.run_consensus(
        data,
        fhc.ConsensusConfig(runs=["dyn", "rer"], rule="top", noise_rate=1 / 3),
    )
    assert out.fields["flag"].sum() == 1
    assert out.results["spearman"]["names"] == ["dyn.aum", "dyn.loss", "rer"]


# ------------------------------------------------- through apply_hardness


def _auroc(truth, values):
    return roc_auc_score(np.asarray(truth, bool), np.asarray(values, float))


def test_dynamics_on_digits_pixels(digits):
    import fiftyone_hardness  # noqa: F401  (adds apply_hardness)

    fhd.clear_cache()
    truth = digits.values("mislabeled")
    digits.apply_hardness("dynamics", embeddings_field="pixels")

    aurocs = {}
    for m in ALL:
        score = digits.values("dynamics_%s_score" % m)
        flag = digits.values("dynamics_%s_flag" % m)
        assert None not in score and None not in flag, m
        aurocs[m] = _auroc(truth, score)
    for extra in (
        "aum_value",
        "data_iq_group",
        "data_maps_confidence",
        "data_maps_variability",
        "forgetting_count",
    ):
        assert None not in digits.values("dynamics_%s" % extra), extra
    assert set(digits.distinct("dynamics_data_iq_group")) <= {
        "easy",
        "ambiguous",
        "hard",
    }
    print("\nAUROC vs the known mistakes (digits pixels, 20% noise):")
    for m, a in sorted(aurocs.items(), key=lambda kv: -kv[1]):
        print("  %-16s %.3f" % (m, a))
    assert min(aurocs.values()) > 0.5, aurocs
    # the batched auxiliary models (cleanlab's folds, the Detector's
    # calibration run) as good as the sequential ones were (0.997, 0.994)
    for m in ("aum", "data_iq", "data_maps", "loss", "cleanlab", "detector"):
        assert aurocs[m] >= 0.95, (m, aurocs[m])

    # results: per-method figures, training curve, config
    loaded = digits.load_run_results("dynamics")
    assert set(loaded.methods) == set(ALL)
    for m, res in loaded.methods.items():
        assert {"num_flagged", "threshold", "noise_rate"} <= set(res), m
        assert res["num_flagged"] == sum(digits.values("dynamics_%s_flag" % m))
    assert len(loaded.train_accuracy) == 20
    assert loaded.eval_accuracy[-1] > 0.7
    assert loaded.training_config["epochs"] == 20
    assert 0.1 < loaded.noise_rate < 0.3  # truth: 0.2
    assert loaded.methods["cleanlab"]["noise_rate"] == pytest.approx(
        0.2, abs=0.06
    )
    # own flag rules estimate a rate; top-fraction flags reuse the run's
    assert loaded.methods["aum"]["own_noise_estimate"] is True
    assert loaded.methods["el2n"]["own_noise_estimate"] is False
    assert loaded.methods["el2n"]["noise_rate"] == loaded.noise_rate

    # a single method reuses the recorded run of the same setup
    aum = digits.apply_hardness("aum", embeddings_field="pixels")
    assert aum.reused_record
    np.testing.assert_allclose(
        digits.values("aum_score"), digits.values("dynamics_aum_score")
    )
    assert digits.has_field("aum_value") and digits.has_field("aum_flag")
    other = digits.apply_hardness(
        "loss", embeddings_field="pixels", epochs=3, run_key="loss3"
    )
    assert not other.reused_record

    # consensus of the learning-dynamics methods
    members = ["dynamics.%s" % m for m in LEARNING_DYNAMICS]
    cons = digits.apply_hardness("consensus", runs=members)
    auc = _auroc(truth, digits.values("consensus_score"))
    median = float(np.median(list(aurocs.values())))
    print(
        "  consensus of %s: %.3f (median single %.3f)"
        % ("+".join(LEARNING_DYNAMICS), auc, median)
    )
    assert auc >= median
    names = cons.spearman["names"]
    matrix = np.asarray(cons.spearman["matrix"])
    assert names == members and matrix.shape == (8, 8)
    assert (matrix[np.triu_indices(8, 1)] > 0).all()
    assert cons.num_flagged == sum(digits.values("consensus_flag"))
    # a whole dynamics run as a member, next to a single-method run
    both = digits.apply_hardness(
        "consensus", runs=["dynamics", "loss3"], run_key="cons_all"
    )
    assert len(both.members) == 14

    digits.delete_run("dynamics")
    assert not [
        f for f in digits.get_field_schema() if f.startswith("dynamics_")
    ]


def test_dynamics_bad_input_writes_nothing(digits):
    import fiftyone_hardness  # noqa: F401

    def nothing_written():
        return "dynamics" not in digits.list_runs() and not [
            f for f in digits.get_field_schema() if f.startswith("dynamics")
        ]

    with pytest.raises(HardnessError, match="embeddings_field"):
        digits.apply_hardness("dynamics")

    one = digits.match({"ground_truth.label": {"$ne": "3"}}).limit(300)
    three = digits.match({"ground_truth.label": "3"}).limit(1)
    ids = one.values("id") + three.values("id")
    with pytest.raises(HardnessError, match="at least 2 samples per class"):
        digits.select(ids).apply_hardness(
            "dynamics", embeddings_field="pixels", epochs=2
        )

    def interrupt(fraction, message=""):
        if "epoch 2/" in message:
            raise KeyboardInterrupt

    with pytest.raises(HardnessError, match="interrupted at epoch 2 of 5"):
        digits.apply_hardness(
            "dynamics", embeddings_field="pixels", epochs=5, progress=interrupt
        )
    assert nothing_written()

    sample = digits.first()
    sample["pixels"] = np.full(64, np.nan)
    sample.save()
    with pytest.raises(HardnessError, match="NaN"):
        digits.apply_hardness("dynamics", embeddings_field="pixels", epochs=2)
    assert nothing_written()


def test_small_cnn_on_images_end_to_end(digits):
    import fiftyone_hardness  # noqa: F401

    view = digits.take(300, seed=0)
    results = view.apply_hardness(
        "dynamics",
        on="images",
        image_size=16,
        epochs=3,
        hidden=32,
        run_key="cnn",
    )
    assert results.training_config["model"] == "cnn"
    assert len(results.train_accuracy) == 3
    for m in ALL:
        score = np.asarray(view.values("cnn_%s_score" % m), dtype=float)
        assert np.isfinite(score).all(), m
    assert len(digits.exists("cnn_vog_score")) == 300


#: invalid parameters, each refused alike by Python and the App: the
#: values, Python's message and the App's (when it differs: the App offers
#: no early_epoch, so a value for it is an unknown parameter there)
INVALID = [
    ({"epochs": 1}, "Invalid epochs=1", None),
    ({"epochs": "abc"}, "Invalid epochs='abc'", None),
    ({"methods": ["aum", "nope"]}, "unknown method.*'nope'", None),
    ({"methods": []}, "at least one method", None),
    ({"noise_rate": 1.5}, "Invalid noise_rate=1.5", None),
    # not in the form: the App accepts and refuses it as Python does
    ({"epochs": 3, "early_epoch": 5}, "early_epoch=5.*epochs=3", None),
    ({"on": "pixels"}, "Invalid on='pixels'", None),
    ({"epoch": 3}, "Unknown parameter epoch.*valid parameters", None),
]


@pytest.mark.parametrize(
    "bad,message,app_message", INVALID, ids=[str(i[0]) for i in INVALID]
)
def test_invalid_values_are_refused_by_python_and_the_app(
    plugins_dir, digits, bad, message, app_message
):
    import fiftyone.operators as foo

    import fiftyone_hardness as foh

    view = digits.take(100, seed=0)

    def nothing_written():
        return "bad" not in digits.list_runs() and not [
            f for f in digits.get_field_schema() if f.startswith("bad_")
        ]

    def reads_nothing(*args, **kwargs):
        raise AssertionError("data were read before the config was checked")

    # Python: both entry points refuse before reading any data
    from fiftyone_hardness.dataset_io import data as fhdata

    real = fhdata.load_labeled_data
    fhdata.load_labeled_data = reads_nothing
    try:
        with pytest.raises(HardnessError, match=message):
            view.apply_hardness(
                "dynamics", embeddings_field="pixels", run_key="bad", **bad
            )
        with pytest.raises(HardnessError, match=message):
            foh.compute_dynamics(
                view, embeddings_field="pixels", run_key="bad", **bad
            )
    finally:
        fhdata.load_labeled_data = real
    assert nothing_written()

    # the App: FiftyOne refuses to execute a form with an invalid input
    from fiftyone.operators.executor import ExecutionError

    operator = foo.get_operator("@fiftyone-hardness/hardness/compute_dynamics")
    with pytest.raises(ExecutionError, match="Validation error") as error:
        operator(view, embeddings_field="pixels", run_key="bad", **bad)
    assert re.search(app_message or message, str(error.value)), error.value
    assert nothing_written()


def test_operators(plugins_dir, digits):
    import fiftyone.operators as foo

    uri = "@fiftyone-hardness/hardness/compute_dynamics"
    view = digits.take(200, seed=1)
    result = foo.get_operator(uri)(
        view,
        embeddings_field="pixels",
        epochs=3,
        methods=["aum", "loss", "data_iq"],
        run_key="op_dyn",
    )
    assert result.error is None, result.error
    assert len(digits.exists("op_dyn_aum_score")) == 200
    assert not digits.has_field("op_dyn_vog_score")
    config = digits.get_run_info("op_dyn").config
    assert config.epochs == 3

    result = foo.get_operator("@fiftyone-hardness/hardness/compute_consensus")(
        view, runs=["op_dyn"], run_key="op_cons"
    )
    assert result.error is None, result.error
    assert len(digits.exists("op_cons_score")) == 200
    assert digits.load_run_results("op_cons").members == [
        "op_dyn.aum",
        "op_dyn.data_iq",
        "op_dyn.loss",
    ]

    # a small CNN on the images: no embeddings field needed or computed
    result = foo.get_operator(uri)(
        view,
        on="images",
        image_size=16,
        epochs=2,
        hidden=16,
        methods=["aum"],
        run_key="op_cnn",
    )
    assert result.error is None, result.error
    assert len(digits.exists("op_cnn_aum_score")) == 200
    assert digits.load_run_results("op_cnn").training_config["model"] == "cnn"
    assert not digits.has_field("embeddings")


def _form(digits, params):
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_hardness.operators import dynamics as fhod

    # a real context: the form offers FiftyOne's view target
    ctx = ExecutionContext(
        request_params={"dataset_name": digits.name, "params": params}
    )
    return (
        fhod.ComputeDynamics()
        .resolve_input(ctx)
        .to_json()["type"]["properties"]
    )


def test_form_comes_from_the_config(digits):
    form = _form(digits, {})
    # what the old form offered, with the config's defaults and choices
    for name in (
        "label_field",
        "embeddings_field",
        "on",
        "methods",
        "epochs",
        "batch_size",
        "lr",
        "hidden",
        "seed",
        "noise_rate",
        "run_key",
    ):
        assert name in form, name
    assert "image_size" not in form  # only for on="images"
    assert "early_epoch" not in form  # form=False in the config
    choices = form["methods"]["view"]["choices"]
    assert [(c["value"], c["label"]) for c in choices] == list(
        METHOD_DESCRIPTIONS.items()
    )
    assert form["epochs"]["default"] == 20
    assert [c["value"] for c in form["on"]["view"]["choices"]] == [
        "embeddings",
        "images",
    ]

    images = _form(digits, {"on": "images"})
    assert "embeddings_field" not in images
    assert "image_size" in images

    # an invalid value is marked at its field, with Python's message
    bad = _form(digits, {"epochs": 1})
    assert bad["epochs"]["invalid"]
    assert "Invalid epochs=1" in bad["epochs"]["error_message"]
    assert not any(p.get("invalid") for p in form.values())


def test_one_source_of_method_names():
    from fiftyone_hardness.methods import registry

    assert list(fhs.METHODS) == list(METHOD_DESCRIPTIONS)
    assert list(SINGLE_METHODS) == [
        m for m in METHOD_DESCRIPTIONS if m != "cleanlab"
    ]
    for cls in fhs.METHODS.values():
        assert "description" not in vars(cls), cls
    methods = registry.list_methods()
    for name, description in SINGLE_METHODS.items():
        assert methods[name] == description
        run = registry.get_method(name)
        assert run.__name__ == "run_%s" % name
        assert description in run.__doc__


def test_importing_the_package_imports_no_torch():
    code = textwrap.dedent("""
        import sys
        import fiftyone_hardness
        from fiftyone_hardness.methods import registry
        from fiftyone_hardness.methods import dynamics
        import fiftyone_hardness.methods.dynamics.config
        import fiftyone_hardness.methods.dynamics.scores
        registry.list_methods()
        registry.get_spec("dynamics").get_config_class()
        assert "torch" not in sys.modules, "torch imported"
        assert callable(dynamics.run_aum)
        assert "torch" in sys.modules
        """)
    subprocess.run([sys.executable, "-c", code], check=True)
