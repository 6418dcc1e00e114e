"""
Review verdicts and corrections: reviews never touch the label field,
corrections go to a new field or in place with a verbatim backup, and undo
restores the label field byte for byte.
"""

import bson
import pytest

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_hardness.dataset_io import review
from fiftyone_hardness.methods.base import HardnessError


def _raw(dataset, field="ground_truth"):
    """The label field's raw BSON, per sample, as stored in the database."""
    docs = dataset._sample_collection.find({}, {field: 1}).sort("_id", 1)
    return [bson.encode(doc) for doc in docs]


def _decorate(dataset):
    """Gives some labels extra content (confidence, tags, attributes) so
    that a byte-for-byte comparison means something."""
    view = dataset.take(50, seed=3)
    for sample in view.iter_samples(autosave=True):
        sample.ground_truth.confidence = 0.25
        sample.ground_truth.tags = ["checked"]
        sample.ground_truth["annotator"] = "anna"


def _mislabeled(dataset, n, seed=0):
    view = dataset.match(F("mislabeled") == True).take(n, seed=seed)  # noqa
    ids, clean = view.values(["id", "ground_truth_clean.label"])
    return ids, clean


def test_reviews_go_to_a_separate_field(digits):
    before = _raw(digits)
    ids, clean = _mislabeled(digits, 3)
    for sample_id, label in zip(ids, clean):
        review.mark_label_wrong(digits, [sample_id], label, reviewer="rita")
    right = digits.match(F("mislabeled") == False).first().id  # noqa: E712
    review.mark_label_right(digits, right, reviewer="rita", note="looks ok")

    assert _raw(digits) == before  # the labels are untouched
    sample = digits[ids[0]]
    reviewed = sample.ground_truth_reviewed
    assert reviewed.label == clean[0]
    assert reviewed.verdict == "wrong"
    assert reviewed.original == sample.ground_truth.label
    assert reviewed.reviewer == "rita"
    assert reviewed.reviewed_at is not None
    ok = digits[right].ground_truth_reviewed
    assert (ok.verdict, ok.label, ok.note) == (
        "right",
        digits[right].ground_truth.label,
        "looks ok",
    )
    assert review.review_summary(digits) == {
        "wrong": 3,
        "right": 1,
        "pending": 3,
        "corrected": 0,
    }
    assert len(review.reviewed_view(digits, verdict="wrong")) == 3
    assert review.clear_reviews(digits, [right]) == 1
    assert review.review_summary(digits)["right"] == 0


def test_bad_reviews_are_rejected(digits):
    sample = digits.first()
    with pytest.raises(HardnessError, match="needs the correct class"):
        review.mark_labels(digits, sample.id, "wrong")
    with pytest.raises(HardnessError, match="already labelled"):
        review.mark_label_wrong(digits, sample.id, sample.ground_truth.label)
    with pytest.raises(HardnessError, match="Unknown verdict"):
        review.mark_labels(digits, sample.id, "maybe")
    with pytest.raises(HardnessError, match="not in this collection"):
        review.mark_label_right(digits[:5], digits.last().id)
    sample.ground_truth = None
    sample.save()
    with pytest.raises(HardnessError, match="has no label"):
        review.mark_label_right(digits, sample.id)
    with pytest.raises(HardnessError, match="has no field 'labels'"):
        review.mark_label_right(digits, sample.id, label_field="labels")
    assert not digits.has_field("ground_truth_reviewed")


def test_apply_in_place_then_undo_restores_labels_byte_for_byte(digits):
    _decorate(digits)
    ids, clean = _mislabeled(digits, 20)
    # include decorated labels among the corrected ones
    decorated = digits.match(F("ground_truth.annotator") == "anna")
    extra = decorated.match(F("mislabeled") == True).limit(5)  # noqa: E712
    ids2, clean2 = extra.values(["id", "ground_truth_clean.label"])
    ids, clean = ids + ids2, clean + clean2
    for sample_id, label in zip(ids, clean):
        review.mark_label_wrong(digits, sample_id, label)
    before = _raw(digits)
    before_reviews = _raw(digits, "ground_truth_reviewed")

    result = review.apply_corrections(digits)
    assert result["num_corrected"] == len(set(ids))
    assert result["field"] == "ground_truth"
    assert result["backup_field"] == "ground_truth_original"
    labels = dict(zip(*digits.values(["id", "ground_truth.label"])))
    assert all(labels[i] == c for i, c in zip(ids, clean))
    assert _raw(digits) != before
    # only the label changed: ids, tags, confidence, attributes are kept
    sample = digits[ids2[0]] if ids2 else digits[ids[0]]
    assert sample.ground_truth_original.label != sample.ground_truth.label
    assert sample.ground_truth_original.id == sample.ground_truth.id
    if ids2:
        assert sample.ground_truth.annotator == "anna"
        assert sample.ground_truth.tags == ["checked"]
    summary = review.review_summary(digits)
    assert (summary["pending"], summary["corrected"]) == (0, len(set(ids)))

    # applying again changes nothing and keeps the first originals
    again = review.apply_corrections(digits)
    assert again["num_corrected"] == 0

    restored = review.undo_corrections(digits)
    assert restored["num_restored"] == len(set(ids))
    assert restored["num_edited"] == 0
    assert _raw(digits) == before
    assert _raw(digits, "ground_truth_reviewed") == before_reviews
    assert not digits.has_field("ground_truth_original")
    assert review.review_summary(digits)["pending"] == len(set(ids))

    # and in a fresh load of the dataset too
    assert _raw(fo.load_dataset(digits.name)) == before


def test_apply_into_a_new_field_leaves_labels_alone(digits):
    ids, clean = _mislabeled(digits, 10)
    for sample_id, label in zip(ids, clean):
        review.mark_label_wrong(digits, sample_id, label)
    before = _raw(digits)
    result = review.apply_corrections(digits, target_field="gt_fixed")
    assert result == {
        "num_corrected": 10,
        "num_stale": 0,
        "field": "gt_fixed",
        "backup_field": None,
    }
    assert _raw(digits) == before
    gt, fixed = digits.values(["ground_truth.label", "gt_fixed.label"])
    changed = {i for i, (a, b) in enumerate(zip(gt, fixed)) if a != b}
    assert len(changed) == 10
    fixed_by_id = dict(zip(digits.values("id"), fixed))
    assert [fixed_by_id[i] for i in ids] == clean
    # re-applying into our own field is fine; into a foreign field is not
    assert (
        review.apply_corrections(digits, target_field="gt_fixed")[
            "num_corrected"
        ]
        == 10
    )
    with pytest.raises(HardnessError, match="does not hold corrections"):
        review.apply_corrections(digits, target_field="ground_truth_clean")


def test_stale_corrections_and_views(digits):
    ids, clean = _mislabeled(digits, 6)
    for sample_id, label in zip(ids, clean):
        review.mark_label_wrong(digits, sample_id, label)
    # someone relabels one sample after the review: its correction is stale
    stale = digits[ids[0]]
    others = [
        c
        for c in map(str, range(10))
        if c not in (stale.ground_truth.label, clean[0])
    ]
    stale.ground_truth.label = others[0]
    stale.save()
    # apply on a view holding 3 of the reviewed samples only
    view = digits.select(ids[:3])
    result = review.apply_corrections(view)
    assert (result["num_corrected"], result["num_stale"]) == (2, 1)
    assert len(digits.exists("ground_truth_original")) == 2
    assert review.undo_corrections(digits)["num_restored"] == 2
    assert digits[ids[1]].ground_truth.label != clean[1]
    assert digits[ids[0]].ground_truth.label == others[0]


def test_backup_and_review_fields_are_never_targets(digits):
    ids, clean = _mislabeled(digits, 5)
    for sample_id, label in zip(ids, clean):
        review.mark_label_wrong(digits, sample_id, label)
    review.apply_corrections(digits)
    backup_before = _raw(digits, "ground_truth_original")
    for target in ("ground_truth_original", "ground_truth_reviewed"):
        with pytest.raises(HardnessError, match="cannot receive"):
            review.apply_corrections(digits, target_field=target)
    assert _raw(digits, "ground_truth_original") == backup_before
    # the originals still come back
    assert review.undo_corrections(digits)["num_restored"] == 5


def test_apply_refuses_a_second_round_unless_appending(digits):
    ids, clean = _mislabeled(digits, 6)
    original = _raw(digits)
    for sample_id, label in zip(ids[:3], clean[:3]):
        review.mark_label_wrong(digits, sample_id, label)
    review.apply_corrections(digits)
    for sample_id, label in zip(ids[3:], clean[3:]):
        review.mark_label_wrong(digits, sample_id, label)
    with pytest.raises(HardnessError, match="undo them first"):
        review.apply_corrections(digits)
    assert review.apply_corrections(digits, append=True)["num_corrected"] == 3
    assert review.undo_corrections(digits)["num_restored"] == 6
    assert _raw(digits) == original


def test_undo_leaves_later_edits_alone(digits):
    ids, clean = _mislabeled(digits, 4)
    for sample_id, label in zip(ids, clean):
        review.mark_label_wrong(digits, sample_id, label)
    review.apply_corrections(digits)
    # a person fixes one label by hand after the apply, to a third class
    # (setting it back to the original label would make the backup equal
    # to the label, and undo rightly drops such a backup: with the sample
    # drawn at random, this test failed about one run in nine)
    edited = digits[ids[0]]
    original = edited.ground_truth_original.label
    other = next(
        c
        for c in map(str, range(10))
        if c not in (edited.ground_truth.label, clean[0], original)
    )
    edited.ground_truth.label = other
    edited.save()
    result = review.undo_corrections(digits)
    assert result["num_restored"] == 3
    assert result["edited_ids"] == [ids[0]]
    assert digits[ids[0]].ground_truth.label == other
    # its original is kept, not lost
    assert digits[ids[0]].ground_truth_original is not None


def test_unknown_class_and_malformed_ids_are_refused(digits):
    sample = digits.first()
    with pytest.raises(HardnessError, match="not a class of"):
        review.mark_label_wrong(digits, sample.id, "seven")
    with pytest.raises(HardnessError, match="not a sample id"):
        review.mark_label_wrong(digits, "not-an-id", "7")
    assert not digits.has_field("ground_truth_reviewed")
    label = "1" if sample.ground_truth.label != "1" else "2"
    assert review.mark_label_wrong(digits, sample.id, label) == 1
    new = review.mark_label_wrong(
        digits, sample.id, "ten", allow_new_class=True
    )
    assert new == 1
