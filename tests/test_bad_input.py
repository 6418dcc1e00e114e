"""
Odd input gets a clear HardnessError before anything is written (issue 12's
probes): fields we did not create are never overwritten, nested and frame
label fields are refused with a hint, degenerate features are refused.
"""

import numpy as np
import pytest

import fiftyone as fo

import fiftyone_hardness as foh
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.validation import check_features


@pytest.fixture
def small(digits):
    view = digits.take(20, seed=0)
    dataset = view.clone()
    yield dataset
    dataset.delete()


def test_a_users_vector_field_is_never_overwritten(small):
    user = {i: np.full(8, 7.0) for i in small.values("id")}
    small.set_values("embeddings", user, key_field="id")
    with pytest.raises(HardnessError, match="did not write"):
        foh.compute_embeddings(
            small, embeddings_field="embeddings", image_size=32
        )
    kept = small.values("embeddings")
    assert all(np.array_equal(v, np.full(8, 7.0)) for v in kept)


def test_an_interrupted_fill_cannot_be_mixed_with_another_model(small):
    def interrupt(fraction, message=""):
        if fraction > 0.3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        foh.compute_embeddings(
            small,
            embeddings_field="emb",
            image_size=32,
            batch_size=4,
            write_every=4,
            progress=interrupt,
        )
    filled = len(small.exists("emb"))
    assert 0 < filled < len(small)
    # the partial fill is attributed to its model ...
    assert foh.api.get_embeddings_info(small, "emb")["dim"] == 1280
    # ... so another model is refused, even with skip_existing
    with pytest.raises(HardnessError, match="holds efficientnet_lite0"):
        foh.compute_embeddings(
            small,
            embeddings_field="emb",
            model="RN50",
            pretrained=None,
            skip_existing=True,
        )
    assert len(small.exists("emb")) == filled
    # the same model completes it
    foh.compute_embeddings(
        small, embeddings_field="emb", image_size=32, skip_existing=True
    )
    assert len(small.exists("emb")) == len(small)


def test_nested_and_frame_label_fields_are_refused_clearly(small):
    small.add_sample_field(
        "meta",
        fo.EmbeddedDocumentField,
        embedded_doc_type=fo.DynamicEmbeddedDocument,
    )
    with pytest.raises(HardnessError, match="nested field"):
        small.apply_hardness(
            "cleanlab", label_field="meta.gt", embeddings_field="pixels"
        )
    with pytest.raises(HardnessError, match="frame field"):
        small.apply_hardness(
            "cleanlab", label_field="frames.gt", embeddings_field="pixels"
        )


def test_degenerate_features_are_refused():
    with pytest.raises(HardnessError, match="identical"):
        check_features(np.zeros((50, 16)), what="emb")
    with pytest.raises(HardnessError, match="NaN"):
        check_features(np.array([[1.0, np.nan], [0.0, 1.0]]), what="emb")
    ok = check_features(np.eye(4), what="emb")
    assert ok.dtype == np.float32


@pytest.mark.parametrize("key", ["_x", "rer\n", "a b", "", "1abc", "a.b"])
def test_malformed_run_keys_are_refused_before_computing(small, key):
    with pytest.raises(HardnessError, match="Invalid run key"):
        small.apply_hardness(
            "cleanlab", run_key=key, embeddings_field="pixels"
        )
    assert not small.list_runs()


def _label_scores(data):
    from fiftyone_hardness.methods.base import MethodOutput

    score = np.linspace(0, 1, data.num_samples)
    return MethodOutput(fields={"score": score, "flag": score > 0.5})


def test_class_names_starting_with_a_dollar_get_their_view(small):
    from fiftyone_hardness.dataset_io import run_views
    from fiftyone_hardness.methods import registry

    registry.register_method("test_linear", _label_scores, "test")
    ids = small.values("id")[:5]
    for sample in small.select(ids):
        sample.ground_truth.label = "$dollar"
        sample.save()
    results = small.apply_hardness("test_linear", run_key="lin")
    view = run_views.class_view(small, results, "$dollar")
    assert sorted(view.values("id")) == sorted(ids)
