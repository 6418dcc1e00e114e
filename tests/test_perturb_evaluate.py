"""
Known hardness and its evaluation: every perturbation changes exactly
round(p N) samples and the truth counts only real changes; image
perturbations write new files and leave the source media byte-identical;
the evaluation's orientation is pinned (oracle AUROC = AUPRC = 1, reversed
AUROC = 0). Array-level tests need no database; the rest run on the digits
demo dataset (real images) through the real MongoDB of conftest.
"""

import hashlib
import os

import numpy as np
import pytest

import fiftyone as fo

from fiftyone_hardness.benchmarking import evaluation as fhe
from fiftyone_hardness.benchmarking import injection as fhp
from fiftyone_hardness.benchmarking import metrics as evaluation, perturbations
from fiftyone_hardness.methods import label_noise
from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import HardnessError, MethodOutput

N, K = 997, 10


def _digit_image(index=0, size=64):
    from PIL import Image
    from sklearn.datasets import load_digits

    gray = np.uint8(np.round(255 - load_digits().images[index] * (255 / 16.0)))
    return np.asarray(
        Image.fromarray(gray).resize((size, size), Image.BICUBIC)
    )


def _color_image():
    from sklearn.datasets import load_sample_image

    return load_sample_image("china.jpg")[::6, ::6].copy()


# --------------------------------------------------------------- labels


@pytest.mark.parametrize("kind", label_noise.LABEL_NOISE_KINDS)
@pytest.mark.parametrize("rate", [0.1, 0.23])
def test_label_noise_changes_exactly_round_pn(kind, rate):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, K, size=N)
    probs = rng.dirichlet(np.ones(K), size=N)
    noisy, mask = label_noise.inject_label_noise(
        labels, K, rate, kind=kind, seed=3, pred_probs=probs
    )
    assert mask.sum() == round(rate * N)
    assert np.array_equal(mask, noisy != labels)
    again, _ = label_noise.inject_label_noise(
        labels, K, rate, kind=kind, seed=3, pred_probs=probs
    )
    other, other_mask = label_noise.inject_label_noise(
        labels, K, rate, kind=kind, seed=4, pred_probs=probs
    )
    assert np.array_equal(noisy, again)
    assert not np.array_equal(mask, other_mask)


def test_uniform_noise_with_two_classes_always_flips():
    labels = np.arange(200) % 2
    noisy, mask = label_noise.inject_label_noise(labels, 2, 0.5, "uniform")
    assert mask.sum() == 100
    assert np.array_equal(noisy[mask], 1 - labels[mask])


def test_human_noise_takes_disagreeing_annotations():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, size=N)
    other = labels.copy()
    disagree = rng.choice(N, size=300, replace=False)
    other[disagree] = (labels[disagree] + 1 + rng.integers(0, K - 1, 300)) % K
    other[disagree[:20]] = -1  # not annotated

    noisy, mask = label_noise.inject_human_noise(labels, other, 0.1, seed=2)
    assert mask.sum() == round(0.1 * N)
    assert np.array_equal(noisy[mask], other[mask])
    assert np.array_equal(noisy[~mask], labels[~mask])

    every, every_mask = label_noise.inject_human_noise(labels, other)
    assert every_mask.sum() == 280
    with pytest.raises(HardnessError, match="disagrees"):
        label_noise.inject_human_noise(labels, other, 0.5)


def test_clean_model_pred_probs_are_out_of_sample_and_drive_confidence():
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data / 16.0, digits.target
    probs = label_noise.clean_model_pred_probs(X, y, 10, seed=0)
    assert probs.shape == (len(y), 10)
    assert np.allclose(probs.sum(1), 1)
    accuracy = (probs.argmax(1) == y).mean()
    assert 0.9 < accuracy < 1.0  # a real model, not a memorized one

    noisy, mask = label_noise.inject_label_noise(
        y, 10, 0.2, "confidence", seed=0, pred_probs=probs
    )
    wrong = probs.copy()
    wrong[np.arange(len(y)), y] = -1
    assert np.array_equal(noisy[mask], wrong.argmax(1)[mask])


# --------------------------------------------------------------- images


@pytest.mark.parametrize("kind", perturbations.IMAGE_KINDS)
@pytest.mark.parametrize("color", [False, True])
def test_image_perturbations_keep_shape_and_change_the_image(kind, color):
    image = _color_image() if color else _digit_image()
    before = image.copy()
    face = perturbations.lfw_images()[7]
    out = perturbations.perturb_image(
        image, kind, np.random.default_rng(0), replacement=face
    )
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out != image).mean() > 0.3
    assert np.array_equal(image, before)  # input untouched


def test_ood_covariate_noise_is_half_the_max():
    image = np.full((200, 200), 128, dtype=np.uint8)
    out = perturbations.perturb_image(
        image, "ood_covariate", np.random.default_rng(0)
    )
    assert 58 < np.std(out.astype(float) - 128) < 66  # 0.5 * 128, clipped
    black = np.zeros((8, 8), dtype=np.uint8)
    assert np.array_equal(
        perturbations.add_gaussian_noise(black, np.random.default_rng(0)),
        black,
    )


def test_domain_shift_is_a_cartoon():
    out = perturbations.perturb_image(
        _digit_image(), "domain_shift", np.random.default_rng(0)
    )
    assert len(np.unique(out)) <= 7  # 6 quantized levels + black edges


def test_zoom_shift_magnifies_the_center_by_1_75():
    image = np.zeros((70, 70), dtype=np.uint8)
    image[25:45, 25:45] = 255  # a 20 px square in the center
    out = perturbations.perturb_image(
        image, "zoom_shift", np.random.default_rng(0)
    )
    width = (out[35] > 127).sum()
    assert abs(width - 20 * 1.75) <= 2
    constant = np.full((30, 30), 77, dtype=np.uint8)
    assert np.array_equal(perturbations.central_zoom(constant), constant)


def test_crop_shift_moves_the_content_by_10_px():
    image = _digit_image()
    for seed in range(4):
        out = perturbations.perturb_image(
            image, "crop_shift", np.random.default_rng(seed)
        )
        right = np.array_equal(out[:, 10:], image[:, :-10])
        left = np.array_equal(out[:, :-10], image[:, 10:])
        assert right or left
        band = out[:, :10] if right else out[:, -10:]
        assert (band == 255).all()  # the digits' white background


def test_far_ood_replaces_the_image_by_another_set():
    faces = perturbations.lfw_images()
    assert faces.shape == (200, 25, 25)
    image = _digit_image()
    out = perturbations.perturb_image(
        image, "far_ood", np.random.default_rng(0), replacement=faces[3]
    )
    assert np.array_equal(out, perturbations.match_image(faces[3], (64, 64)))
    rgb = perturbations.match_image(faces[3], (20, 30, 3))
    assert rgb.shape == (20, 30, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    with pytest.raises(HardnessError, match="replacement"):
        perturbations.perturb_image(image, "far_ood", np.random.default_rng())


def test_image_perturbations_reject_bad_input():
    with pytest.raises(HardnessError, match="uint8"):
        perturbations.perturb_image(
            np.zeros((4, 4)), "zoom_shift", np.random.default_rng()
        )
    with pytest.raises(HardnessError, match="Unknown"):
        perturbations.perturb_image(
            np.zeros((4, 4), np.uint8), "blur", np.random.default_rng()
        )


# --------------------------------------------------------------- vectors


def test_atypical_sets_one_feature_from_the_top_percent():
    from sklearn.datasets import load_digits

    X = load_digits().data / 16.0
    out, mask, feature = perturbations.inject_atypical(X, 0.1, seed=0)
    assert mask.sum() == round(0.1 * len(X))
    changed = out != X
    assert (changed.sum(1)[mask] == 1).all() and not changed[~mask].any()
    rows = np.flatnonzero(mask)
    cols = feature[rows]
    assert np.array_equal(np.argmax(changed[rows], axis=1), cols)
    q99 = np.quantile(X, 0.99, axis=0, method="higher")
    assert (out[rows, cols] >= q99[cols] - 1e-12).all()
    assert not changed[:, X.std(0) == 0].any()  # constant pixels never

    constant = np.ones((50, 3))
    _, none, _ = perturbations.inject_atypical(constant, 0.5, seed=0)
    assert none.sum() == 0  # chosen but cannot change: not counted


# ----------------------------------------------------------- evaluation


def test_oracle_and_reversed_scores_pin_the_orientation():
    rng = np.random.default_rng(0)
    truth = rng.random(2000) < 0.15
    oracle = truth + 0.1 * rng.random(2000)
    figures = evaluation.evaluate_scores(truth, oracle, flags=truth)
    assert figures["auroc"] == 1.0 and figures["auprc"] == 1.0
    assert figures["precision_at_num_perturbed"] == 1.0
    assert figures["f1"] == 1.0
    reversed_ = evaluation.evaluate_scores(truth, -oracle)
    assert reversed_["auroc"] == 0.0
    assert reversed_["precision_at_50"] == 0.0
    random = evaluation.evaluate_scores(truth, rng.random(2000))
    assert abs(random["auroc"] - 0.5) < 0.05
    assert abs(random["auprc"] - random["auprc_random"]) < 0.05


def test_precision_at_k_and_flags():
    from sklearn.metrics import precision_recall_fscore_support

    truth = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    scores = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], dtype=float)
    assert evaluation.precision_at_k(truth, scores, 2) == 1.0
    assert evaluation.precision_at_k(truth, scores, 5) == 0.6
    # ties are broken in expectation: a constant score gets the base rate
    assert evaluation.precision_at_k(truth, np.zeros(10), 4) == 0.3
    flags = np.array([1, 0, 1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    got = evaluation.flag_metrics(truth, flags)
    p, r, f, _ = precision_recall_fscore_support(
        truth, flags, average="binary"
    )
    assert np.allclose([got["precision"], got["recall"], got["f1"]], [p, r, f])
    assert evaluation.flag_metrics(truth, np.zeros(10, bool))["f1"] == 0.0


def test_missing_scores_rank_last_and_noise_rate_error():
    truth = np.array([True, True, False, False])
    figures = evaluation.evaluate_scores(
        truth, [np.nan, 0.9, 0.1, 0.2], noise_rate=0.3
    )
    assert figures["num_unscored"] == 1
    assert figures["auroc"] == 0.5  # the unscored positive is missed
    assert figures["noise_rate_true"] == 0.5
    assert np.isclose(figures["noise_rate_error"], -0.2)
    assert figures["noise_rate_abs_error"] == pytest.approx(0.2)
    assert evaluation.noise_rate_error(None, 0.1)["noise_rate_error"] is None
    summary = evaluation.summarize([{"auroc": 0.6}, {"auroc": 0.8}])
    assert summary["auroc"]["mean"] == pytest.approx(0.7)


def test_stability_is_mean_pairwise_spearman():
    rng = np.random.default_rng(0)
    a = rng.random(300)
    assert evaluation.stability([a, a * 3 + 1]) == pytest.approx(1.0)
    assert evaluation.stability([a, -a]) == pytest.approx(-1.0)
    assert evaluation.stability([a, a, -a]) == pytest.approx(-1 / 3)
    assert evaluation.stability([a]) is None
    assert evaluation.stability([a, np.ones(300)]) is None


# ------------------------------------------------- FiftyOne: the clone


def _hash_files(paths):
    digests = {}
    for path in paths:
        with open(path, "rb") as f:
            digests[path] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _check_clone(clone, source, hardness, expected):
    truth = np.array(clone.values(fhp.TRUTH_FIELD))
    assert truth.sum() == expected
    injected = clone.values(fhp.TYPE_FIELD)
    assert [t is not None for t in injected] == truth.tolist()
    assert {t for t in injected if t} == {hardness}
    assert clone.values(fhp.SOURCE_ID_FIELD) == source.values("id")
    info = clone.info[fhp.INFO_KEY]
    assert info["type"] == hardness and info["num_changed"] == expected
    return truth


@pytest.mark.parametrize("kind", [k for k in fhp.LABEL_TYPES if k != "human"])
def test_label_injection_on_a_clone(digits_dataset, kind):
    source = digits_dataset
    before = source.values("ground_truth_clean.label")
    clone = fhp.inject_hardness(
        source,
        kind,
        rate=0.1,
        seed=0,
        label_field="ground_truth_clean",
        features_field="pixels",
        name="inj-%s" % kind,
    )
    try:
        truth = _check_clone(clone, source, kind, round(0.1 * len(source)))
        new = np.array(clone.values("ground_truth_clean.label"))
        old = np.array(clone.values(fhp.ORIGINAL_LABEL_FIELD))
        before = np.array(before)
        assert np.array_equal(old[truth], before[truth])
        assert (old[~truth] == None).all()  # noqa: E711
        assert np.array_equal(new != before, truth)
        if kind == "pair":
            assert all(
                int(n) == (int(o) + 1) % 10
                for n, o in zip(new[truth], old[truth])
            )
        assert source.values("ground_truth_clean.label") == before.tolist()
    finally:
        clone.delete()


def test_human_injection_uses_the_second_annotator(digits):
    # the demo's noisy labels play the second annotator: they disagree with
    # the clean labels on 20% of the samples
    disagree = np.array(digits.values("mislabeled")).sum()
    clone = fhp.inject_hardness(
        digits,
        "human",
        rate=0.1,
        label_field="ground_truth_clean",
        annotator_field="ground_truth",
        name="inj-human",
    )
    try:
        truth = _check_clone(clone, digits, "human", round(0.1 * len(digits)))
        new = np.array(clone.values("ground_truth_clean.label"))
        other = np.array(clone.values("ground_truth.label"))
        assert np.array_equal(new[truth], other[truth])
        assert clone.info[fhp.INFO_KEY]["num_disagreeing"] == disagree
    finally:
        clone.delete()
    with pytest.raises(HardnessError, match="disagree"):
        fhp.inject_hardness(
            digits,
            "human",
            rate=0.5,
            label_field="ground_truth_clean",
            annotator_field="ground_truth",
            name="inj-human-too-many",
        )
    assert not fo.dataset_exists("inj-human-too-many")


@pytest.mark.parametrize("kind", fhp.IMAGE_TYPES)
def test_image_injection_writes_new_files_only(digits_dataset, kind, tmp_path):
    source = digits_dataset
    paths = source.values("filepath")
    hashes = _hash_files(paths)
    out_dir = str(tmp_path / kind)
    clone = fhp.inject_hardness(
        source,
        kind,
        rate=0.1,
        seed=1,
        output_dir=out_dir,
        name="inj-%s" % kind,
    )
    try:
        truth = _check_clone(clone, source, kind, round(0.1 * len(source)))
        new_paths = np.array(clone.values("filepath"))
        assert np.array_equal(new_paths[~truth], np.array(paths)[~truth])
        written = sorted(os.listdir(out_dir))
        assert len(written) == truth.sum()
        assert all(os.path.dirname(p) == out_dir for p in new_paths[truth])
        from PIL import Image

        first = np.flatnonzero(truth)[0]
        with (
            Image.open(new_paths[first]) as im,
            Image.open(paths[first]) as orig,
        ):
            assert im.size == orig.size
            assert not np.array_equal(np.asarray(im), np.asarray(orig))
    finally:
        clone.delete()
    assert _hash_files(paths) == hashes  # source media byte-identical
    assert source.values("filepath") == paths


def test_image_injection_can_be_rerun_with_overwrite(digits_dataset, tmp_path):
    out_dir = str(tmp_path / "rerun")
    paths = digits_dataset.values("filepath")
    hashes = _hash_files(paths)
    kwargs = dict(rate=0.05, seed=1, output_dir=out_dir, name="inj-rerun")
    fhp.inject_hardness(digits_dataset, "crop_shift", **kwargs)
    first_files = set(os.listdir(out_dir))
    try:
        second = fhp.inject_hardness(
            digits_dataset, "crop_shift", overwrite=True, **kwargs
        )
        truth = np.array(second.values(fhp.TRUTH_FIELD), dtype=bool)
        new = np.array(second.values("filepath"))[truth]
        assert all(os.path.exists(p) for p in new)
        assert not set(map(os.path.basename, new)) & first_files
    finally:
        fo.delete_dataset("inj-rerun")
    assert _hash_files(paths) == hashes


def test_image_truth_counts_only_real_changes(tmp_path):
    from PIL import Image

    dataset = fo.Dataset()
    samples = []
    for i in range(10):
        path = str(tmp_path / ("%d.png" % i))
        value = 0 if i < 4 else 200
        Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)
        samples.append(fo.Sample(filepath=path))
    dataset.add_samples(samples, progress=False)
    clone = fhp.inject_hardness(
        dataset,
        "ood_covariate",
        rate=1.0,
        output_dir=str(tmp_path / "o"),
    )
    try:
        # black images cannot get noise (std = 0.5 x max = 0)
        assert clone.info[fhp.INFO_KEY]["num_chosen"] == 10
        assert np.array(clone.values(fhp.TRUTH_FIELD)).sum() == 6
    finally:
        clone.delete()
        dataset.delete()


def test_image_injection_clears_stale_embeddings(digits, tmp_path):
    from fiftyone_hardness.api import EMBEDDINGS_INFO_KEY

    digits.set_values("emb", [np.ones(4)] * len(digits))
    field = digits.get_field("emb")
    field.info = {EMBEDDINGS_INFO_KEY: {"model": "fake", "dim": 4}}
    field.save()
    clone = fhp.inject_hardness(
        digits,
        "zoom_shift",
        rate=0.05,
        output_dir=str(tmp_path),
    )
    try:
        truth = np.array(clone.values(fhp.TRUTH_FIELD))
        has_emb = np.array([v is not None for v in clone.values("emb")])
        assert np.array_equal(has_emb, ~truth)
        # every embeddings field made by compute_embeddings is cleared (the
        # session dataset may already hold "embeddings" from another test)
        made = [
            name
            for name, f in digits.get_field_schema().items()
            if EMBEDDINGS_INFO_KEY in (f.info or {})
        ]
        cleared = clone.info[fhp.INFO_KEY]["cleared_fields"]
        assert "emb" in cleared and sorted(cleared) == sorted(made)
        assert all(v is not None for v in digits.values("emb"))
    finally:
        clone.delete()


def test_atypical_injection_on_a_vector_field(digits_dataset):
    source = digits_dataset
    before = np.stack(source.values("pixels"))
    clone = fhp.inject_hardness(
        source,
        "atypical",
        rate=0.1,
        vector_field="pixels",
        name="inj-atypical",
    )
    try:
        truth = _check_clone(
            clone, source, "atypical", round(0.1 * len(source))
        )
        after = np.stack(clone.values("pixels"))
        changed = after != before
        assert (changed.sum(1)[truth] == 1).all()
        assert not changed[~truth].any()
        assert np.array_equal(np.stack(source.values("pixels")), before)
    finally:
        clone.delete()


def test_injections_compose(digits_dataset, tmp_path):
    source = digits_dataset
    clean = np.array(source.values("ground_truth_clean.label"))
    first = fhp.inject_hardness(
        source,
        "uniform",
        rate=0.3,
        label_field="ground_truth_clean",
        name="inj-compose-1",
    )
    second = third = None
    try:
        second = fhp.inject_hardness(
            first,
            "pair",
            rate=0.3,
            seed=5,
            label_field="ground_truth_clean",
            name="inj-compose-2",
        )
        labels = np.array(second.values("ground_truth_clean.label"))
        truth = np.array(second.values(fhp.TRUTH_FIELD))
        types = np.array(second.values(fhp.TYPE_FIELD), dtype=object)
        # the truth is exactly "differs from the source", flips back included
        assert np.array_equal(truth, labels != clean)
        assert second.info[fhp.INFO_KEY]["num_reverted"] > 0
        assert set(types[truth]) == {"uniform", "pair", "uniform+pair"}
        assert (types[~truth] == None).all()  # noqa: E711
        original = np.array(second.values(fhp.ORIGINAL_LABEL_FIELD))
        assert np.array_equal(original[truth], clean[truth])
        assert second.values(fhp.SOURCE_ID_FIELD) == first.values("id")

        third = fhp.inject_hardness(
            second,
            "crop_shift",
            rate=0.1,
            output_dir=str(tmp_path),
            name="inj-compose-3",
        )
        shifted = np.array(
            [
                t is not None and "crop_shift" in t
                for t in third.values(fhp.TYPE_FIELD)
            ]
        )
        assert shifted.sum() == round(0.1 * len(source))
        assert np.array_equal(
            np.array(third.values(fhp.TRUTH_FIELD)), truth | shifted
        )
        info = third.info[fhp.INFO_KEY]
        assert info["previous"]["type"] == "pair"
        assert info["previous"]["previous"]["type"] == "uniform"
    finally:
        for dataset in (first, second, third):
            if dataset is not None:
                dataset.delete()


def test_bad_injection_input_creates_nothing(digits_dataset):
    existing = set(fo.list_datasets())
    with pytest.raises(HardnessError, match="Unknown hardness"):
        fhp.inject_hardness(digits_dataset, "blur")
    with pytest.raises(HardnessError, match="annotator_field"):
        fhp.inject_hardness(digits_dataset, "human")
    with pytest.raises(HardnessError, match="features_field"):
        fhp.inject_hardness(digits_dataset, "instance")
    with pytest.raises(HardnessError, match="vector_field"):
        fhp.inject_hardness(digits_dataset, "atypical")
    with pytest.raises(HardnessError, match="no field"):
        fhp.inject_hardness(digits_dataset, "uniform", label_field="nope")
    with pytest.raises(HardnessError, match="rate"):
        fhp.inject_hardness(digits_dataset, "uniform", rate=1.5)
    with pytest.raises(HardnessError, match="exists"):
        fhp.inject_hardness(
            digits_dataset, "uniform", name=digits_dataset.name
        )
    assert set(fo.list_datasets()) == existing


# --------------------------------------------- FiftyOne: evaluate runs


def _oracle(data, truth_field="hardness_truth"):
    truth = np.array([bool(v) for v in data.values(truth_field)])
    return MethodOutput(
        fields={"score": truth.astype(float), "flag": truth},
        results={"noise_rate": float(truth.mean())},
    )


def _knn_disagreement(data, embeddings_field="pixels", k=10):
    """A small real detector: the fraction of a sample's k nearest
    neighbours whose label differs from its own."""
    from sklearn.neighbors import NearestNeighbors

    X = data.embeddings(embeddings_field)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    score = (data.labels[idx[:, 1:]] != data.labels[:, None]).mean(1)
    return MethodOutput(
        fields={
            "score": score,
            "flag": score > 0.5,
            "other_score": -score,
            "other_flag": score < 0.5,
            "shared_score": score,
            "shared_flag": score > 0.5,
        },
        results={
            "methods": {
                "other": {"noise_rate": 0.5},
                # a rate the method reuses (top-fraction flags), not its own
                "shared": {"noise_rate": 0.5, "own_noise_estimate": False},
            },
            "noise_rate": None,
        },
    )


registry.register_method("test_oracle", _oracle, "test: reads the truth")
registry.register_method("test_knn", _knn_disagreement, "test: kNN")


def test_evaluate_run_on_injected_noise(digits_dataset):
    clones = [
        fhp.inject_hardness(
            digits_dataset,
            "uniform",
            rate=0.2,
            seed=seed,
            label_field="ground_truth_clean",
            name="inj-eval-%d" % seed,
        )
        for seed in (0, 1)
    ]
    try:
        for clone in clones:
            for method in ("test_oracle", "test_knn"):
                clone.apply_hardness(
                    method,
                    label_field="ground_truth_clean",
                    progress=lambda fraction, message="": None,
                )
        figures = fhe.evaluate_run(clones[0], "test_oracle")
        oracle = figures["test_oracle"]
        assert oracle["auroc"] == 1.0 and oracle["auprc"] == 1.0
        assert oracle["f1"] == 1.0 and oracle["noise_rate_error"] == 0.0
        assert oracle["num_perturbed"] == round(0.2 * len(digits_dataset))

        knn = fhe.evaluate_run(clones[0], "test_knn")
        assert set(knn) == {"test_knn", "other", "shared"}
        assert knn["test_knn"]["auroc"] > 0.9  # a real detector finds it
        assert knn["other"]["auroc"] == pytest.approx(
            1 - knn["test_knn"]["auroc"]
        )
        assert knn["other"]["noise_rate_estimate"] == 0.5
        assert knn["test_knn"]["noise_rate_estimate"] is None
        assert knn["shared"]["noise_rate_estimate"] is None

        everything = fhe.evaluate_runs(clones[0])
        assert set(everything) == {"test_oracle", "test_knn"}
        field = fhe.evaluate_field(clones[0], "test_knn_score")
        assert field["auroc"] == knn["test_knn"]["auroc"]

        stable = fhe.stability_across(clones, "test_knn_score")
        assert 0.0 < stable < 1.0
        clones[0].apply_hardness(
            "test_knn",
            label_field="ground_truth_clean",
            run_key="knn15",
            k=15,
            progress=lambda fraction, message="": None,
        )
        same = fhe.stability_of_fields(
            clones[0], ["test_knn_score", "knn15_score"]
        )
        assert stable < same < 1.0
        # the scores come from the run schema: a renamed run evaluates
        # the same, under its new fields
        clones[0].rename_run("test_knn", "knn_renamed")
        renamed = fhe.evaluate_run(clones[0], "knn_renamed")
        assert set(renamed) == set(knn)
        assert renamed["other"]["score_field"] == "knn_renamed_other_score"
        assert renamed["other"]["flag_field"] == "knn_renamed_other_flag"
        for name in knn:
            assert renamed[name]["auroc"] == knn[name]["auroc"]
            assert renamed[name]["noise_rate_estimate"] == (
                knn[name]["noise_rate_estimate"]
            )
        with pytest.raises(HardnessError, match="no run"):
            fhe.evaluate_run(clones[0], "nope")
        with pytest.raises(HardnessError, match="truth field"):
            fhe.evaluate_run(clones[0], "knn_renamed", truth_field="nope")
    finally:
        for clone in clones:
            clone.delete()


def test_clones_drop_the_stale_runs_of_the_source(digits):
    digits.apply_hardness(
        "test_knn",
        label_field="ground_truth_clean",
        progress=lambda fraction, message="": None,
    )
    for samples in (digits, digits.limit(100)):
        clone = fhp.inject_hardness(
            samples,
            "pair",
            label_field="ground_truth_clean",
            name="inj-stale",
        )
        try:
            assert "test_knn" not in clone.list_runs()
            assert not clone.has_field("test_knn_score")
        finally:
            clone.delete()
    assert "test_knn" in digits.list_runs()
    assert digits.has_field("test_knn_score")


# ------------------------------------------------------------ operator


def test_operator_lists_every_hardness_type():
    from fiftyone_hardness.operators import perturb as op

    assert {c[0]: c[1] for c in op.HARDNESS_CHOICES} == (
        fhp.list_hardness_types()
    )


def test_operator_form_adapts_to_the_type(digits):
    import fiftyone.operators as foo

    from fiftyone_hardness.operators.perturb import InjectHardness

    def form(**params):
        ctx = foo.ExecutionContext(
            request_params=dict(dataset_name=digits.name, params=params)
        )
        return InjectHardness().resolve_input(ctx).type.properties

    assert {"hardness", "label_field", "rate", "seed", "name"} <= set(form())
    human = form(hardness="human", label_field="ground_truth_clean")
    assert human["annotator_field"].type.values == ["ground_truth"]
    assert "features_field" in form(hardness="confidence")
    assert "output_dir" in form(hardness="zoom_shift")
    assert human["name"].default == "%s-human-p0.1-s0" % digits.name
    taken = form(hardness="uniform", name=digits.name)
    assert taken["name"].invalid


def test_operator_creates_the_perturbed_clone(digits, tmp_path, monkeypatch):
    import fiftyone.operators as foo

    import app_helpers

    # App paths must lie in an allowed directory (operators/paths.py)
    monkeypatch.setenv("FIFTYONE_HARDNESS_ALLOWED_DIRS", str(tmp_path))

    with app_helpers.plugin_dir(tmp_path):
        uri = "@fiftyone-hardness/hardness/inject_hardness"
        op = foo.get_operator(uri)
        result = op(
            digits,
            hardness="pair",
            rate=0.2,
            seed=3,
            label_field="ground_truth_clean",
            name="op-inj-pair",
            persistent=False,
        )
        assert result.error is None, result.error
        clone = fo.load_dataset("op-inj-pair")
        try:
            assert clone.count_values(fhp.TRUTH_FIELD)[True] == round(
                0.2 * len(digits)
            )
        finally:
            clone.delete()

        result = op(
            digits,
            hardness="crop_shift",
            rate=0.05,
            output_dir=str(tmp_path / "crops"),
            name="op-inj-crop",
            persistent=False,
        )
        assert result.error is None, result.error
        clone = fo.load_dataset("op-inj-crop")
        try:
            assert len(os.listdir(tmp_path / "crops")) == round(
                0.05 * len(digits)
            )
        finally:
            clone.delete()
