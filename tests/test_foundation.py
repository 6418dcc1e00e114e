"""
The foundation: packaging and plugin registration, the run machinery behind
``apply_hardness`` (persistence across processes, overwrite protection,
cleanup), embeddings and their bad inputs.
"""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.operators as foo

import fiftyone_hardness as foh
from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import HardnessError, MethodOutput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _centroid_distance(data, embeddings_field="pixels"):
    """A small real method for exercising the run machinery: distance of
    each sample to its class centroid, flagged above the 90th percentile."""
    X = data.embeddings(embeddings_field)
    centroids = np.stack(
        [X[data.labels == k].mean(0) for k in range(data.num_classes)]
    )
    score = np.linalg.norm(X - centroids[data.labels], axis=1)
    threshold = float(np.quantile(score, 0.9))
    pred = np.asarray(data.classes)[
        np.argmin(((X[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    ]
    return MethodOutput(
        fields={"score": score, "flag": score > threshold, "pred": pred},
        results={"threshold": threshold, "noise_rate": None},
    )


registry.register_method("centroid", _centroid_distance, "test method")


def test_package_imports_from_anywhere(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fiftyone_hardness.dataset_io.runs as r;"
            "import fiftyone_hardness as f; print(r.__name__, "
            "hasattr(f, 'apply_hardness'))",
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["fiftyone_hardness.dataset_io.runs", "True"]


def test_plugin_registers_operators(tmp_path, digits):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    os.symlink(REPO, plugins / "fiftyone-hardness")
    old = fo.config.plugins_dir
    fo.config.plugins_dir = str(plugins)
    try:
        uris = [op.uri for op in foo.list_operators()]
        uri = "@fiftyone-hardness/hardness/compute_embeddings"
        assert uri in uris
        view = digits.take(40, seed=0)
        result = foo.get_operator(uri)(
            view, embeddings_field="op_embeddings", image_size=64
        )
        assert result.error is None, result.error
    finally:
        fo.config.plugins_dir = old
    assert len(digits.exists("op_embeddings")) == 40
    assert np.asarray(view.first()["op_embeddings"]).shape == (1280,)


def test_offline_embeddings_are_real_features(digits_embedded):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X = np.stack(digits_embedded.values("embeddings"))
    y = digits_embedded.values("ground_truth_clean.label")
    acc = cross_val_score(LogisticRegression(max_iter=2000), X, y, cv=5).mean()
    print("5-fold accuracy on efficientnet_lite0 embeddings: %.3f" % acc)
    assert acc >= 0.75
    info = foh.api.get_embeddings_info(digits_embedded, "embeddings")
    assert info["model"] == "efficientnet_lite0" and info["dim"] == 1280


def test_embedding_speed_on_cpu(digits):
    start = time.time()
    result = foh.compute_embeddings(
        digits, embeddings_field="timed", image_size=64, device="cpu"
    )
    elapsed = time.time() - start
    print("1797 digits embedded in %.1f s" % elapsed)
    assert result["num_embedded"] == 1797 and not result["failed"]
    assert elapsed < 60


def test_skip_existing_fills_disjoint_shards(digits):
    first = digits[:100]
    r1 = foh.compute_embeddings(first, embeddings_field="e", image_size=32)
    assert r1["num_embedded"] == 100
    assert len(digits.exists("e")) == 100  # only the view was touched
    before = np.asarray(first.first()["e"])
    r2 = foh.compute_embeddings(
        digits[:300], embeddings_field="e", image_size=32, skip_existing=True
    )
    assert (r2["num_embedded"], r2["num_skipped"]) == (200, 100)
    assert np.array_equal(np.asarray(first.first()["e"]), before)
    assert len(digits.exists("e")) == 300


def test_unreadable_image_is_reported_by_id(tmp_path, digits):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    view = digits[:20]
    sample = view.first()
    sample.filepath = str(bad)
    sample.save()
    result = foh.compute_embeddings(view, embeddings_field="e2", image_size=32)
    assert result["num_embedded"] == 19
    assert list(result["failed"]) == [sample.id]
    assert "cannot identify image" in result["failed"][sample.id]


def test_non_image_media_is_rejected():
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath="/tmp/video.mp4"))
    with pytest.raises(HardnessError, match="image collection"):
        foh.compute_embeddings(dataset)
    dataset.delete()


def test_unknown_model_is_rejected(digits):
    with pytest.raises(HardnessError, match="Unknown model"):
        foh.compute_embeddings(digits[:2], model="no-such-net")


#: invalid embeddings parameters: ``(kwargs, what Python says, what the App
#: says)``. Each is sent through ``foh.compute_embeddings`` and the
#: ``compute_embeddings`` operator
INVALID_EMBEDDINGS = [
    (dict(batch_size=0), "Invalid batch_size=0", None),
    (dict(embeddings_field=""), "Invalid embeddings_field=''", None),
    (dict(embeddings_field="a.b"), "Invalid embeddings_field='a.b'", None),
    (dict(model=""), "Invalid model=''", None),
    (dict(image_size=4), "Invalid image_size=4", None),
    (dict(skip_existing="yes"), "Invalid skip_existing='yes'", None),
    (
        dict(batchsize=8),
        "Unknown parameter batchsize.*valid parameters",
        "Unknown parameter batchsize",
    ),
    # not in the form: the App accepts and refuses it as Python does
    (dict(num_workers=-1), "Invalid num_workers=-1", None),
]


@pytest.mark.parametrize(
    "kwargs,python_says,app_says",
    INVALID_EMBEDDINGS,
    ids=[repr(c[0]) for c in INVALID_EMBEDDINGS],
)
def test_invalid_embeddings_values_are_refused_by_python_and_the_app(
    plugins_dir, digits_dataset, kwargs, python_says, app_says
):
    from fiftyone.operators.executor import ExecutionError

    view = digits_dataset.limit(4)
    before = set(digits_dataset.get_field_schema())
    with pytest.raises(HardnessError, match=python_says):
        foh.compute_embeddings(view, **kwargs)
    operator = foo.get_operator(
        "@fiftyone-hardness/hardness/compute_embeddings"
    )
    # FiftyOne refuses to execute a form with an invalid property
    with pytest.raises(ExecutionError, match="Validation error") as refused:
        operator(view, **kwargs)
    assert re.search(app_says or python_says, str(refused.value))
    assert set(digits_dataset.get_field_schema()) == before


def test_embeddings_form_comes_from_the_config(plugins_dir, digits):
    from fiftyone.operators.executor import ExecutionContext

    from fiftyone_hardness.methods.embeddings import EmbeddingsConfig

    operator = foo.get_operator(
        "@fiftyone-hardness/hardness/compute_embeddings"
    )

    def form(**params):
        ctx = ExecutionContext(
            request_params=dict(dataset_name=digits.name, params=params)
        )
        return operator.resolve_input(ctx).type.properties

    shown = form()
    expected = [p.name for p in EmbeddingsConfig.parameters() if p.form]
    # which samples to embed leads the form, then the config's parameters
    assert list(shown) == ["view_target", "target_summary"] + expected
    assert shown["batch_size"].type.min == 1
    assert shown["model"].default == "efficientnet_lite0"
    assert shown["skip_existing"].default is False
    # the input size only applies to the offline backbone
    assert "image_size" not in form(model="ViT-B-32")
    # an emptied field name is refused in the form, where it is typed
    assert form(embeddings_field="")["embeddings_field"].invalid
    video = fo.Dataset()
    video.add_sample(fo.Sample(filepath="/tmp/video.mp4"))
    ctx = ExecutionContext(
        request_params=dict(dataset_name=video.name, params={})
    )
    assert operator.resolve_input(ctx).type.properties["not_images"].invalid
    video.delete()


def test_missing_and_wrong_label_fields(digits):
    with pytest.raises(HardnessError, match="has no field 'labels'"):
        digits.apply_hardness("centroid", label_field="labels")
    sample = digits.first()
    sample["boxes"] = fo.Detections(detections=[])
    sample.save()
    with pytest.raises(
        HardnessError, match="holds Detections.*Classification"
    ):
        digits.apply_hardness("centroid", label_field="boxes")
    with pytest.raises(HardnessError, match="Unknown hardness method"):
        digits.apply_hardness("nope")


def test_missing_and_nan_embeddings(digits):
    digits.take(3, seed=1).set_field("pixels", None).save()
    with pytest.raises(
        HardnessError, match="3 of 1797 labelled samples have no"
    ):
        digits.apply_hardness("centroid")
    vec = np.full(64, np.nan)
    sample = digits.exists("pixels").first()
    sample["pixels"] = vec
    sample.save()
    view = digits.exists("pixels")
    with pytest.raises(HardnessError, match="NaN or inf"):
        view.apply_hardness("centroid")
    assert "centroid" not in digits.list_runs()


def test_run_key_protection_and_overwrite(digits):
    results = digits.apply_hardness("centroid")
    assert results.num_flagged == int(np.sum(digits.values("centroid_flag")))
    with pytest.raises(HardnessError, match="already exists.*overwrite=True"):
        digits.apply_hardness("centroid")
    with pytest.raises(HardnessError, match="Invalid run key"):
        digits.apply_hardness("centroid", run_key="bad key")
    digits.apply_hardness(
        "centroid", overwrite=True, embeddings_field="pixels"
    )
    assert digits.list_runs() == ["centroid"]
    digits.add_sample_field("other_score", fo.FloatField)
    with pytest.raises(HardnessError, match="other_score.*do not belong"):
        digits.apply_hardness("centroid", run_key="other")


def test_unlabeled_samples_are_skipped_and_counted(digits):
    digits.take(7, seed=2).set_field("ground_truth", None).save()
    results = digits.apply_hardness("centroid")
    assert (results.num_samples, results.num_skipped) == (1790, 7)
    assert len(digits.exists("centroid_score")) == 1790
    assert set(results.class_scores) == {str(i) for i in range(10)}


def test_labels_are_never_modified(digits):
    before = digits.values("ground_truth.label")
    digits.apply_hardness("centroid")
    assert digits.values("ground_truth.label") == before


def test_run_loads_and_deletes_in_a_fresh_process(digits):
    digits.persistent = True
    digits.apply_hardness("centroid", run_key="persisted")
    digits.rename_run("persisted", "renamed")
    assert digits.has_field("renamed_score")
    assert not digits.has_field("persisted_score")
    code = """
import fiftyone as fo
ds = fo.load_dataset(%r)
info = ds.get_run_info("renamed")
print(type(info.config).__module__, type(info.config).__name__)
res = ds.load_run_results("renamed")
print(type(res).__name__, res.method, res.num_samples)
ds.delete_run("renamed")
print(sorted(f for f in ds.get_field_schema() if f.startswith("renamed")))
""" % digits.name
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "fiftyone_hardness.dataset_io.runs HardnessRunConfig"
    assert lines[1] == "HardnessRunResults centroid 1797"
    assert lines[2] == "[]"
    digits.reload()
    assert "renamed" not in digits.list_runs()
    assert not digits.has_field("renamed_score")


def test_run_on_a_view_touches_only_the_view(digits):
    view = digits.match(fo.ViewField("ground_truth.label").is_in(["1", "7"]))
    results = view.apply_hardness("centroid")
    assert results.num_samples == len(view)
    assert len(digits.exists("centroid_score")) == len(view)
    assert set(results.class_scores) == {"1", "7"}


def test_single_class_and_empty_view(digits):
    one = digits.match(fo.ViewField("ground_truth.label") == "3")
    with pytest.raises(HardnessError, match="empty"):
        digits.limit(0).apply_hardness("centroid")
    results = one.apply_hardness("centroid")  # method decides; runs layer ok
    assert results.num_samples == len(one)


def test_open_clip_local_checkpoint_matches_a_direct_forward(tmp_path, digits):
    import open_clip
    import torch
    from PIL import Image

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=None
    )
    checkpoint = str(tmp_path / "vit-b-32.pt")
    torch.save(model.state_dict(), checkpoint)

    view = digits.limit(6)
    result = foh.compute_embeddings(
        view,
        model="ViT-B-32",
        pretrained=checkpoint,
        embeddings_field="clip",
        batch_size=4,
        device="cpu",
    )
    assert result["num_embedded"] == 6
    ours = np.stack(view.values("clip"))
    with torch.no_grad():
        images = torch.stack(
            [
                preprocess(Image.open(p).convert("RGB"))
                for p in view.values("filepath")
            ]
        )
        direct = model.eval().encode_image(images)
        direct = torch.nn.functional.normalize(direct, dim=-1).numpy()
    assert ours.shape == (6, 512)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    # the default path resizes with torch, within one intensity level of
    # PIL (tests/test_embeddings.py): ~2e-4 here; other weights: ~0.2
    np.testing.assert_allclose(ours, direct, atol=2e-3)
    info = foh.api.get_embeddings_info(digits, "clip")
    assert info["pretrained"] == checkpoint and info["dim"] == 512

    with pytest.raises(HardnessError, match="holds ViT-B-32 embeddings"):
        foh.compute_embeddings(view, embeddings_field="clip", image_size=32)
