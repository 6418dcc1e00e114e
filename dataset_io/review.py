"""
Human review of suspicious labels, and applying the corrections.

A reviewer marks a sample's label as *wrong* (naming the correct class) or
*right*. The verdict goes to a separate ``fo.Classification`` field,
``{label_field}_reviewed``, whose ``label`` is the class the reviewer says is
correct and whose attributes record ``verdict`` (``"wrong"``/``"right"``),
``original`` (the label at review time), ``reviewer`` and ``reviewed_at``
(UTC). The label field itself is never touched by a review.

:func:`apply_corrections` then writes the reviewed corrections either into a
new label field (a copy of the label field with the corrections applied), or
back into the label field, after copying each changed sample's original
label document verbatim into ``{label_field}_original``;
:func:`undo_corrections` copies those documents back, byte for byte, and
drops the backup. Both copies are done by the database (update pipelines),
so nothing is lost in a round trip through Python objects.
"""

import getpass
import logging
from datetime import datetime, timezone

from bson import ObjectId
from pymongo import UpdateOne

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_hardness.dataset_io.data import (
    declared_classes,
    validate_label_field,
)
from fiftyone_hardness.dataset_io.locks import dataset_lock
from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

WRONG = "wrong"
RIGHT = "right"
VERDICTS = (WRONG, RIGHT)

#: the key marking fields created by this module in ``field.info``
INFO_KEY = "hardness_review"


def review_field(label_field):
    """Returns the name of the review field of ``label_field``."""
    return "%s_reviewed" % label_field


def backup_field(label_field):
    """Returns the name of the field holding the original labels of samples
    whose ``label_field`` was corrected in place."""
    return "%s_original" % label_field


def default_reviewer():
    """Returns the name recorded as reviewer when none is given."""
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no login name available
        return "unknown"


def mark_labels(
    samples,
    sample_ids,
    verdict,
    correct_label=None,
    label_field="ground_truth",
    reviewer=None,
    note=None,
    allow_new_class=False,
):
    """Records a reviewer's verdict on the labels of some samples.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        sample_ids: a sample id or an iterable of them
        verdict: ``"wrong"`` or ``"right"``
        correct_label (None): the correct class, required for ``"wrong"``
        label_field ("ground_truth"): the reviewed ``fo.Classification``
            field (never modified)
        reviewer (None): who reviewed; the login name by default
        note (None): an optional free-text note
        allow_new_class (False): accept a ``correct_label`` that is not yet
            a class of the label field (declared in ``dataset.classes`` /
            ``default_classes`` or used by some sample); refused by default
            because a typo would otherwise become a class

    Returns:
        the number of samples marked

    Raises:
        HardnessError: unknown verdict, missing correct label, samples not
            in the collection or without a label, or a "correction" equal to
            the current label, an unknown class, a malformed sample id
    """
    if verdict not in VERDICTS:
        raise HardnessError(
            "Unknown verdict %r; use 'wrong' or 'right'" % (verdict,)
        )
    validate_label_field(samples, label_field)
    sample_ids = _as_ids(sample_ids)
    labels = _current_labels(samples, sample_ids, label_field)
    if verdict == WRONG:
        if correct_label is None or str(correct_label) == "":
            raise HardnessError(
                "Marking a label as wrong needs the correct class "
                "(correct_label=...)"
            )
        correct_label = str(correct_label)
        _check_known_class(
            samples, label_field, correct_label, allow_new_class
        )
        same = [i for i in sample_ids if labels[i] == correct_label]
        if same:
            raise HardnessError(
                "Sample %s is already labelled '%s'; mark it as right "
                "instead" % (same[0], correct_label)
            )

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    reviewer = reviewer or default_reviewer()
    values = {}
    for sample_id in sample_ids:
        attrs = dict(
            verdict=verdict,
            original=labels[sample_id],
            reviewer=reviewer,
            reviewed_at=now,
        )
        if note:
            attrs["note"] = note
        values[sample_id] = fo.Classification(
            label=correct_label if verdict == WRONG else labels[sample_id],
            **attrs,
        )
    field = review_field(label_field)
    dataset = samples._dataset
    # the lock also serializes schema changes: two processes adding fields
    # at once can otherwise drop one field from the schema
    with dataset_lock(dataset, "recording reviews of %s" % label_field):
        dataset.set_values(field, values, key_field="id")
        _mark_field(
            dataset, field, {"kind": "review", "label_field": label_field}
        )
    return len(values)


def mark_label_wrong(samples, sample_ids, correct_label, **kwargs):
    """Marks the labels of ``sample_ids`` as wrong, ``correct_label`` being
    the right class. See :func:`mark_labels`."""
    return mark_labels(
        samples, sample_ids, WRONG, correct_label=correct_label, **kwargs
    )


def mark_label_right(samples, sample_ids, **kwargs):
    """Marks the labels of ``sample_ids`` as right. See
    :func:`mark_labels`."""
    return mark_labels(samples, sample_ids, RIGHT, **kwargs)


def clear_reviews(samples, sample_ids, label_field="ground_truth"):
    """Removes the review of some samples. Returns how many had one."""
    field = review_field(label_field)
    if not samples.has_field(field):
        return 0
    sample_ids = _as_ids(sample_ids)
    view = samples._dataset.select(sample_ids).exists(field)
    count = len(view)
    if count:
        view.set_field(field, None).save(field)
    return count


def reviewed_view(samples, label_field="ground_truth", verdict=None):
    """Returns the reviewed samples of ``samples`` (only those with
    ``verdict`` if given), most recent first."""
    field = review_field(label_field)
    if not samples.has_field(field):
        return samples.limit(0)
    view = samples.exists(field)
    if verdict is not None:
        view = view.match(F(field + ".verdict") == verdict)
    return view.sort_by(field + ".reviewed_at", reverse=True)


def review_summary(samples, label_field="ground_truth"):
    """Returns counts of the reviews in ``samples``: ``wrong``, ``right``,
    ``pending`` (wrong labels not yet corrected in the label field) and
    ``corrected`` (samples whose label field holds a correction)."""
    field = review_field(label_field)
    summary = {"wrong": 0, "right": 0, "pending": 0, "corrected": 0}
    if not samples.has_field(field):
        return summary
    counts = samples.count_values(field + ".verdict")
    summary["wrong"] = counts.get(WRONG, 0)
    summary["right"] = counts.get(RIGHT, 0)
    summary["pending"] = len(_corrections(samples, label_field)[0])
    backup = backup_field(label_field)
    if samples.has_field(backup):
        summary["corrected"] = len(samples.exists(backup))
    return summary


def apply_corrections(
    samples, label_field="ground_truth", target_field=None, append=False
):
    """Applies the reviewed corrections ("wrong -> class X") of ``samples``.

    With ``target_field`` (a new field name), the label field is copied into
    ``target_field`` for the samples of the collection and the corrections
    are applied there; ``label_field`` is untouched. Without it, the
    corrections go back into ``label_field``: the original label document of
    every changed sample is first copied verbatim into
    ``{label_field}_original``, then only its ``label`` is replaced.
    :func:`undo_corrections` restores them.

    Corrections whose recorded ``original`` no longer matches the label
    field (the label changed since the review) are skipped and counted.
    Holds the dataset's write lock (:mod:`~fiftyone_hardness.dataset_io.
    locks`), so a concurrent apply or undo cannot interleave with it.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        label_field ("ground_truth"): the reviewed label field
        target_field (None): a new field to receive the corrected labels, or
            None to correct ``label_field`` in place
        append (False): in place, apply new corrections although earlier
            ones are still applied (their backups are kept: undo restores
            every original at once). Refused by default, so that two
            rounds of corrections are never mixed by accident

    Returns:
        a dict with ``num_corrected``, ``num_stale`` (skipped),
        ``field`` (the field written) and ``backup_field`` (None for a new
        field)

    Raises:
        HardnessError: bad label field; ``target_field`` is the backup or
            review field, or exists and was not made by a previous
            :func:`apply_corrections` of this label field; in place, an
            unrestored backup exists and ``append`` is False
    """
    validate_label_field(samples, label_field)
    dataset = samples._dataset
    if target_field in (None, "", label_field):
        with dataset_lock(dataset, "applying corrections to %s" % label_field):
            return _apply_in_place(samples, label_field, append)

    _check_target_field(dataset, label_field, target_field)
    with dataset_lock(dataset, "applying corrections to %s" % target_field):
        if not dataset.has_field(target_field):
            samples.clone_sample_field(label_field, target_field)
            _mark_field(
                dataset,
                target_field,
                {"kind": "corrected_labels", "source": label_field},
            )
        changes, stale = _corrections(samples, label_field, skip_applied=False)
        _set_labels(dataset, target_field, changes)
    dataset.reload()
    return {
        "num_corrected": len(changes),
        "num_stale": stale,
        "field": target_field,
        "backup_field": None,
    }


def _check_target_field(dataset, label_field, target_field):
    """A new-field target must be new, or hold corrections of
    ``label_field`` made by :func:`apply_corrections`; never the backup or
    review field (overwriting the backup would lose the originals)."""
    reserved = {
        backup_field(label_field): "the backup of the original labels",
        review_field(label_field): "the review verdicts",
    }
    if target_field in reserved:
        raise HardnessError(
            "Field '%s' holds %s of '%s' and cannot receive corrections; "
            "choose another target field"
            % (target_field, reserved[target_field], label_field)
        )
    if not dataset.has_field(target_field):
        return
    marker = _field_marker(dataset.get_field(target_field))
    if (
        marker.get("kind") != "corrected_labels"
        or marker.get("source") != label_field
    ):
        raise HardnessError(
            "Field '%s' already exists and does not hold corrections of "
            "'%s'; choose another target field" % (target_field, label_field)
        )


def undo_corrections(samples, label_field="ground_truth"):
    """Restores the original label documents of the samples of ``samples``
    whose ``label_field`` was corrected in place, byte for byte, and removes
    their backup. The backup field is deleted once no sample uses it.

    A sample whose label was edited after the apply (it no longer holds the
    reviewed correction) is left alone, with its backup, and reported: undo
    never reverts someone's later edit. Holds the dataset's write lock.

    Returns:
        a dict with ``num_restored``, ``num_edited`` (left alone) and
        ``edited_ids``
    """
    dataset = samples._dataset
    backup = backup_field(label_field)
    result = {"num_restored": 0, "num_edited": 0, "edited_ids": []}
    with dataset_lock(dataset, "undoing corrections of %s" % label_field):
        dataset.reload()
        if not dataset.has_field(backup):
            return result
        _drop_unneeded_backups(samples, label_field)
        ids = samples.exists(backup).values("_id")
        if ids:
            still_corrected = {
                "$eq": [
                    "$%s.label" % label_field,
                    "$%s.label" % review_field(label_field),
                ]
            }
            restored = dataset._sample_collection.update_many(
                {
                    "_id": {"$in": ids},
                    backup: {"$ne": None},
                    "$expr": still_corrected,
                },
                [
                    {
                        "$set": {
                            label_field: "$" + backup,
                            "last_modified_at": _now(),
                        }
                    },
                    {"$unset": backup},
                ],
            )
            result["num_restored"] = restored.modified_count
        dataset.reload()
        edited = samples.exists(backup).values("id")
        result.update(num_edited=len(edited), edited_ids=edited)
        if not len(dataset.exists(backup)):
            dataset.delete_sample_field(backup)
    if edited:
        logger.warning(
            "%d samples of '%s' were edited after the corrections were "
            "applied; left as they are (their originals stay in '%s')",
            len(edited),
            label_field,
            backup,
        )
    return result


def _apply_in_place(samples, label_field, append):
    dataset = samples._dataset
    dataset.reload()
    backup = backup_field(label_field)
    _drop_unneeded_backups(samples, label_field)
    changes, stale = _corrections(samples, label_field)
    if changes and not append and dataset.has_field(backup):
        applied = len(dataset.exists(backup))
        if applied:
            raise HardnessError(
                "%d samples of '%s' still hold corrections applied earlier "
                "(originals in '%s'); undo them first, or pass append=True "
                "to add these %d corrections on top"
                % (applied, label_field, backup, len(changes))
            )
    if changes:
        _declare_backup(dataset, label_field, backup)
        ids = [ObjectId(i) for i in changes]
        # copy each original once: a sample corrected twice keeps its
        # first original
        dataset._sample_collection.update_many(
            {"_id": {"$in": ids}, backup: None},
            [
                {
                    "$set": {
                        backup: "$" + label_field,
                        "last_modified_at": _now(),
                    }
                }
            ],
        )
        _set_labels(dataset, label_field, changes)
    dataset.reload()
    return {
        "num_corrected": len(changes),
        "num_stale": stale,
        "field": label_field,
        "backup_field": (
            backup if changes or dataset.has_field(backup) else None
        ),
    }


def _drop_unneeded_backups(samples, label_field):
    """Removes backups equal to the label they back up.

    An apply interrupted between copying the originals and writing the
    corrections leaves such backups: the label was never changed, so
    there is nothing to restore, and they must not count as "corrections
    still applied"."""
    dataset = samples._dataset
    backup = backup_field(label_field)
    if not dataset.has_field(backup):
        return
    ids = samples.exists(backup).values("_id")
    if ids:
        dataset._sample_collection.update_many(
            {
                "_id": {"$in": ids},
                backup: {"$ne": None},
                "$expr": {"$eq": ["$" + label_field, "$" + backup]},
            },
            [{"$unset": backup}],
        )


def _declare_backup(dataset, label_field, backup):
    # declared before any value is written, so a backup value is never
    # left in a field missing from the schema
    if not dataset.has_field(backup):
        dataset.add_sample_field(
            backup,
            fo.EmbeddedDocumentField,
            embedded_doc_type=fo.Classification,
            description="Original '%s' labels of corrected samples"
            % label_field,
            info={INFO_KEY: {"kind": "backup", "source": label_field}},
        )


def _corrections(samples, label_field, skip_applied=True):
    """Returns ``({sample id: corrected class}, num_stale)`` for the
    reviews of ``samples`` that say "wrong" (with ``skip_applied``, only
    those whose correction is not yet in ``label_field``)."""
    field = review_field(label_field)
    if not samples.has_field(field):
        return {}, 0
    view = samples.match(F(field + ".verdict") == WRONG)
    ids, current, corrected, original = view.values(
        [
            "id",
            label_field + ".label",
            field + ".label",
            field + ".original",
        ]
    )
    changes, stale = {}, 0
    for i, cur, new, orig in zip(ids, current, corrected, original):
        if cur == new:
            if not skip_applied:
                changes[i] = new
            continue
        if cur != orig:
            stale += 1
            continue
        changes[i] = new
    return changes, stale


def _set_labels(dataset, field, changes):
    if not changes:
        return
    now = _now()
    ops = [
        UpdateOne(
            {"_id": ObjectId(i), field: {"$ne": None}},
            {"$set": {field + ".label": label, "last_modified_at": now}},
        )
        for i, label in changes.items()
    ]
    for start in range(0, len(ops), 10000):
        dataset._sample_collection.bulk_write(
            ops[start : start + 10000], ordered=False
        )


def _current_labels(samples, sample_ids, label_field):
    view = samples.select(sample_ids)
    ids, labels = view.values(["id", label_field + ".label"])
    found = dict(zip(ids, labels))
    missing = [i for i in sample_ids if i not in found]
    if missing:
        raise HardnessError(
            "%d of the given samples are not in this collection (e.g. %s)"
            % (len(missing), missing[0])
        )
    unlabeled = [i for i in sample_ids if found[i] is None]
    if unlabeled:
        raise HardnessError(
            "Sample %s has no label in '%s' to review"
            % (unlabeled[0], label_field)
        )
    return found


def _as_ids(sample_ids):
    if isinstance(sample_ids, str):
        sample_ids = [sample_ids]
    sample_ids = [str(i) for i in sample_ids]
    if not sample_ids:
        raise HardnessError("No samples given to review")
    malformed = [i for i in sample_ids if not ObjectId.is_valid(i)]
    if malformed:
        raise HardnessError(
            "%r is not a sample id (ids are 24 hex characters, e.g. "
            "sample.id)" % malformed[0]
        )
    return list(dict.fromkeys(sample_ids))


def _check_known_class(samples, label_field, label, allow_new_class):
    if allow_new_class:
        return
    known = set(declared_classes(samples, label_field) or [])
    if label in known:
        return
    known |= set(samples._dataset.distinct(label_field + ".label"))
    if label not in known:
        raise HardnessError(
            "'%s' is not a class of '%s' (classes: %s); check the spelling, "
            "or pass allow_new_class=True to introduce it"
            % (label, label_field, ", ".join(sorted(known)))
        )


def _field_marker(field):
    if field is None:
        return {}
    return (field.info or {}).get(INFO_KEY) or {}


def _mark_field(dataset, name, marker):
    field = dataset.get_field(name)
    info = dict(field.info or {})
    if info.get(INFO_KEY) != marker:
        info[INFO_KEY] = marker
        field.info = info
        field.save()


def _now():
    return datetime.utcnow()


# kept importable from here: ``fiftyone_hardness.review`` used to hold both
from fiftyone_hardness.api import find_counterexamples  # noqa: E402,F401
