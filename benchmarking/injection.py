"""
Inject known hardness into a **clone** of a dataset, for benchmarking
hardness methods on your own data (see ``docs/methods.md``
section 4).

::

    import fiftyone_hardness.benchmarking.injection as fhp

    noisy = fhp.inject_hardness(dataset, "uniform", rate=0.1, seed=0)
    shifted = fhp.inject_hardness(
        dataset, "zoom_shift", rate=0.2, output_dir="/data/zoomed"
    )

The source collection and its media are never modified: the clone gets the
perturbed labels / vectors, and image perturbations write **new** image
files into ``output_dir`` that only the clone points to (unperturbed samples
keep pointing at the original files, which nothing writes to).

Every clone gets, per sample:

- ``hardness_injected`` (str): the hardness type for the samples that really
  changed, else None
- ``hardness_truth`` (bool): True exactly for those samples
- ``hardness_source_id`` (str): the id of the sample it was cloned from

plus, for label types, ``hardness_original_label``: the label before
injection on the changed samples (None elsewhere, where the label is
unchanged), and a description of the injection in
``dataset.info["hardness_injection"]``.

Injections compose: a clone of a perturbed clone keeps the earlier truth
(a sample perturbed twice gets ``"type1+type2"``), its earliest original
label, and the earlier description under ``info[...]["previous"]``.

Exactly ``round(rate * N)`` of the N eligible samples (labelled ones for
label types, all images for image types, the ones with a vector for
``atypical``) are chosen uniformly without replacement, seeded; the truth
counts only chosen samples that really changed (e.g. an all-black image
under ``ood_covariate`` cannot change and is not counted).
"""

import concurrent.futures
import logging
import os
from dataclasses import dataclass

import numpy as np

import fiftyone as fo
import fiftyone.core.media as fom

from fiftyone_hardness.benchmarking import perturbations
from fiftyone_hardness.dataset_io import data as fhdata
from fiftyone_hardness.dataset_io import runs
from fiftyone_hardness.dataset_io.progress import progress_callback
from fiftyone_hardness.methods import label_noise
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.validation import vectors_to_array

logger = logging.getLogger(__name__)

#: the label hardness types
LABEL_TYPES = tuple(label_noise.LABEL_NOISE_KINDS) + ("human",)

#: the image hardness types (need an image collection)
IMAGE_TYPES = perturbations.IMAGE_KINDS

#: the vector (tabular / embeddings) hardness types
VECTOR_TYPES = perturbations.VECTOR_KINDS

#: every hardness type
HARDNESS_TYPES = LABEL_TYPES + IMAGE_TYPES + VECTOR_TYPES

#: the ``info`` key describing the injection on the clone
INFO_KEY = "hardness_injection"

TYPE_FIELD = "hardness_injected"
TRUTH_FIELD = "hardness_truth"
SOURCE_ID_FIELD = "hardness_source_id"
ORIGINAL_LABEL_FIELD = "hardness_original_label"


def list_hardness_types():
    """Returns a dict mapping each hardness type to its family
    (``"label"``, ``"image"`` or ``"vector"``)."""
    types = {t: "label" for t in LABEL_TYPES}
    types.update({t: "image" for t in IMAGE_TYPES})
    types.update({t: "vector" for t in VECTOR_TYPES})
    return types


def default_name(samples, hardness, rate, seed):
    """Returns the default name of the clone,
    ``"{dataset}-{hardness}-p{rate}-s{seed}"``."""
    return "%s-%s-p%s-s%s" % (
        samples._dataset.name,
        hardness,
        "all" if rate is None else ("%g" % rate),
        seed,
    )


def inject_hardness(
    samples,
    hardness,
    rate=0.1,
    seed=0,
    name=None,
    label_field="ground_truth",
    features_field=None,
    pred_probs=None,
    annotator_field=None,
    vector_field=None,
    output_dir=None,
    far_ood_source=None,
    stale_fields=None,
    persistent=False,
    overwrite=False,
    num_workers=None,
    progress=None,
):
    """Clones ``samples`` into a new dataset and injects known hardness.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        hardness: one of :data:`HARDNESS_TYPES`: label noise (``uniform``,
            ``symmetric``, ``asymmetric``, ``adjacent``, ``pair``,
            ``instance``, ``confidence``, ``human``), image shifts
            (``ood_covariate``, ``domain_shift``, ``zoom_shift``,
            ``crop_shift``, ``far_ood``) or ``atypical`` (vectors)
        rate (0.1): the fraction of eligible samples to perturb. For
            ``human`` None takes every sample where the annotators disagree
        seed (0): the random seed
        name (None): the new dataset's name; by default
            :func:`default_name`
        label_field ("ground_truth"): the ``fo.Classification`` field whose
            labels label types change (on the clone)
        features_field (None): ``confidence`` / ``instance``: a vector field
            on which a clean model (cross-validated logistic regression) is
            fitted to find each sample's most confusable class
        pred_probs (None): ``confidence`` / ``instance``: (N, K) out-of-sample
            probabilities of a clean model instead, one row per labelled
            sample of ``samples`` in order, columns in the class order
            (declared classes of ``label_field``, then sorted others)
        annotator_field (None): ``human``: the ``fo.Classification`` field of
            a second annotator
        vector_field (None): ``atypical``: the vector field to perturb (on the
            clone)
        output_dir (None): image types: where the new image files go; by
            default ``{fo.config.default_dataset_dir}/hardness-injections/
            {name}``. Existing files are never overwritten
        far_ood_source (None): ``far_ood``: the replacing images, as an array
            ``(M, H, W[, C])`` (uint8, or float in [0, 1]) or a list of image
            paths; by default scikit-image's LFW subset (200 faces)
        stale_fields (None): image types: vector fields computed from the
            images, cleared (set to None) on the perturbed samples so that
            they are recomputed (e.g. with ``compute_embeddings(...,
            skip_existing=True)``). By default every field written by
            :func:`fiftyone_hardness.compute_embeddings`
        persistent (False): whether the clone persists across sessions
        overwrite (False): whether to delete an existing dataset ``name``
        num_workers (None): threads for image files (default: up to 4)
        progress (None): ``True``/``False`` to show/hide a progress bar,
            None for FiftyOne's default, or a callable
            ``(fraction, message)``

    Returns:
        the new :class:`fiftyone.core.dataset.Dataset`

    Raises:
        HardnessError: on bad input (unknown type, missing field, too few
            disagreements for ``human``, existing dataset name, ...);
            nothing is created in that case
    """
    family = _validate_request(
        samples,
        hardness,
        rate,
        label_field,
        annotator_field,
        vector_field,
        features_field,
        pred_probs,
    )
    with progress_callback(progress, "inject %s" % hardness) as report:
        name = _free_clone_name(
            samples,
            name or default_name(samples, hardness, rate, seed),
            overwrite,
        )
        if family == "image":
            output_dir = _image_output_dir(output_dir, name)
        report(0.0, "cloning")
        clone = _clone(samples, name, persistent)
        try:
            report(0.05, "perturbing")
            if family == "label":
                details = _inject_labels(
                    clone,
                    hardness,
                    rate,
                    seed,
                    label_field,
                    features_field,
                    pred_probs,
                    annotator_field,
                )
            elif family == "image":
                details = _inject_images(
                    clone,
                    hardness,
                    rate,
                    seed,
                    output_dir,
                    far_ood_source,
                    stale_fields,
                    num_workers,
                    report,
                )
            else:
                details = _inject_vectors(
                    clone, hardness, rate, seed, vector_field
                )
            info = _record_truth(clone, hardness, details)
            _describe_injection(
                clone, samples, hardness, family, rate, seed, info
            )
        except BaseException:
            clone.delete()
            raise
        report(1.0, "%d samples perturbed" % info["num_changed"])
    return clone


def _validate_request(
    samples,
    hardness,
    rate,
    label_field,
    annotator_field,
    vector_field,
    features_field,
    pred_probs,
):
    """Checks everything before anything is created; returns the family of
    ``hardness``."""
    families = list_hardness_types()
    if hardness not in families:
        raise HardnessError(
            "Unknown hardness type '%s'; choose one of %s"
            % (hardness, ", ".join(HARDNESS_TYPES))
        )
    family = families[hardness]
    if rate is None and hardness != "human":
        raise HardnessError("rate is required for '%s'" % hardness)
    if rate is not None:
        perturbations.num_to_perturb(0, rate)  # validates
    if len(samples) == 0:
        raise HardnessError("The collection is empty: nothing to perturb")
    _check_inputs(
        samples,
        hardness,
        family,
        label_field,
        annotator_field,
        vector_field,
        features_field,
        pred_probs,
    )
    return family


def _free_clone_name(samples, name, overwrite):
    """Returns ``name`` after deleting an existing dataset of that name
    (only with ``overwrite``, and never the source itself)."""
    if fo.dataset_exists(name):
        if not overwrite:
            raise HardnessError(
                "A dataset named '%s' exists; pass overwrite=True or choose "
                "another name" % name
            )
        if name == samples._dataset.name:
            raise HardnessError("The clone cannot replace its source")
        fo.delete_dataset(name)
    return name


def _image_output_dir(output_dir, name):
    return os.path.abspath(
        output_dir
        or os.path.join(
            fo.config.default_dataset_dir, "hardness-injections", name
        )
    )


def _clone(samples, name, persistent):
    """Clones ``samples`` without the hardness runs of the unperturbed data
    and records each sample's source id."""
    source_ids = samples.values("id")
    clone = samples.clone(name, persistent=persistent)
    try:
        if len(clone) != len(source_ids):
            raise HardnessError("The clone lost samples")  # pragma: no cover
        _drop_stale_runs(samples, clone)
        clone.set_values(SOURCE_ID_FIELD, source_ids)
    except BaseException:
        clone.delete()
        raise
    return clone


def _record_truth(clone, hardness, details):
    """Writes the truth and type fields of the samples that really changed
    (combined with an earlier injection's); returns the counts and
    ``details`` without the id lists, for the description."""
    clone_ids = clone.values("id")
    changed_ids = set(details.pop("changed_ids"))
    reverted_ids = set(details.pop("reverted_ids", []))
    truth, types = _combine_truth(
        clone, clone_ids, changed_ids, reverted_ids, hardness
    )
    clone.set_values(TRUTH_FIELD, truth)
    clone.add_sample_field(TYPE_FIELD, fo.StringField)
    if types:
        clone.set_values(TYPE_FIELD, types, key_field="id")
    info = dict(
        num_samples=len(clone_ids),
        num_changed=len(changed_ids),
        num_truth=int(sum(truth)),
    )
    info.update(details)
    if reverted_ids:
        info["num_reverted"] = len(reverted_ids)
    return info


def _describe_injection(clone, samples, hardness, family, rate, seed, info):
    """Stores the description in ``clone.info[INFO_KEY]``, keeping an
    earlier injection's under ``"previous"``."""
    previous = (clone.info or {}).get(INFO_KEY)
    description = dict(
        type=hardness,
        family=family,
        rate=rate,
        seed=seed,
        source_dataset=samples._dataset.name,
        num_samples=info["num_samples"],
        num_changed=info["num_changed"],
        num_truth=info["num_truth"],
        truth_field=TRUTH_FIELD,
        type_field=TYPE_FIELD,
    )
    description.update(info)
    if previous:
        description["previous"] = previous
    clone.info[INFO_KEY] = runs.to_jsonable(description)
    clone.save()


def _combine_truth(clone, clone_ids, changed_ids, reverted_ids, hardness):
    """The truth and the types to write. When the source was itself a
    perturbed clone, earlier perturbed samples stay perturbed and a sample
    perturbed twice gets both types (``"uniform+zoom_shift"``); a sample
    whose only perturbations were label changes and whose label is now
    back to its original (``reverted_ids``) is clean again."""
    old_truth = [False] * len(clone_ids)
    old_types = [None] * len(clone_ids)
    if clone.has_field(TRUTH_FIELD):
        old_truth = [bool(v) for v in clone.values(TRUTH_FIELD)]
    if clone.has_field(TYPE_FIELD):
        old_types = clone.values(TYPE_FIELD)
    families = list_hardness_types()
    truth = []
    types = {}
    for i, old, old_type in zip(clone_ids, old_truth, old_types):
        if i not in changed_ids:
            truth.append(old)
            continue
        kinds = old_type.split("+") if old_type else []
        if i in reverted_ids:
            kinds = [k for k in kinds if families.get(k) != "label"]
        else:
            kinds.append(hardness)
        truth.append(bool(kinds))
        types[i] = "+".join(kinds) or None
    return truth, types


def _check_inputs(
    samples,
    hardness,
    family,
    label_field,
    annotator_field,
    vector_field,
    features_field,
    pred_probs,
):
    if family == "label":
        fhdata.validate_label_field(samples, label_field)
        if hardness == "human":
            if not annotator_field:
                raise HardnessError(
                    "'human' noise needs annotator_field: a second "
                    "annotator's fo.Classification field"
                )
            fhdata.validate_label_field(samples, annotator_field)
        if hardness in ("confidence", "instance") and pred_probs is None:
            if not features_field:
                raise HardnessError(
                    "'%s' noise needs a clean model: pass features_field "
                    "(e.g. embeddings) or pred_probs" % hardness
                )
            _check_vector_field(samples, features_field)
    elif family == "image":
        if samples.media_type != fom.IMAGE:
            raise HardnessError(
                "'%s' perturbs images; this collection holds '%s'"
                % (hardness, samples.media_type)
            )
    else:
        if not vector_field:
            raise HardnessError(
                "'%s' needs vector_field: the vector field to perturb"
                % hardness
            )
        _check_vector_field(samples, vector_field)


def _check_vector_field(samples, field):
    if not samples.has_field(field):
        raise HardnessError(
            "Dataset '%s' has no field '%s'" % (samples._dataset.name, field)
        )


def _drop_stale_runs(samples, clone):
    """Hardness runs scored the unperturbed data: remove them (and their
    fields) from the clone."""
    for key in runs.list_hardness_runs(samples):
        fields = (
            samples.get_run_info(key).config.build().get_fields(samples, key)
        )
        if key in clone.list_runs():
            clone.delete_run(key)
        schema = clone.get_field_schema()
        fields = [f for f in fields if f in schema]
        if fields:
            clone.delete_sample_fields(fields)


def _class_list(dataset, fields, observed):
    declared = []
    for field in fields:
        declared += list(fhdata.declared_classes(dataset, field) or [])
    classes = []
    for c in declared:
        if c in observed and c not in classes:
            classes.append(c)
    classes += sorted(set(observed) - set(classes))
    return classes


def _inject_labels(
    clone,
    hardness,
    rate,
    seed,
    label_field,
    features_field,
    pred_probs,
    annotator_field,
):
    labelled = _labelled_samples(clone, hardness, label_field, annotator_field)
    details = {"label_field": label_field, "num_eligible": len(labelled.y)}
    if hardness == "human":
        noisy, mask = label_noise.inject_human_noise(
            labelled.y, labelled.y_other, rate=rate, seed=seed
        )
        details["annotator_field"] = annotator_field
        details["num_disagreeing"] = int(
            np.sum((labelled.y_other >= 0) & (labelled.y_other != labelled.y))
        )
    else:
        probs = _clean_model_probs(
            clone, hardness, seed, labelled, features_field, pred_probs
        )
        if probs is not None and pred_probs is None:
            details["features_field"] = features_field
        noisy, mask = label_noise.inject_label_noise(
            labelled.y,
            len(labelled.classes),
            rate,
            kind=hardness,
            seed=seed,
            pred_probs=probs,
        )

    reverted = _write_label_changes(clone, label_field, labelled, noisy, mask)
    details["num_chosen"] = (
        int(mask.sum()) if rate is None else int(round(rate * len(mask)))
    )
    details["changed_ids"] = labelled.ids[mask].tolist()
    details["reverted_ids"] = labelled.ids[reverted].tolist()
    return details


@dataclass
class _Labelled:
    """The labelled samples of a clone as arrays: ``ids``, ``keep`` (which
    samples of the clone have a label), ``classes``, ``y`` (class indices)
    and, for ``human`` noise, ``y_other`` (the second annotator's, -1 where
    it has none)."""

    ids: np.ndarray
    keep: np.ndarray
    classes: list
    y: np.ndarray
    y_other: np.ndarray = None


def _labelled_samples(clone, hardness, label_field, annotator_field):
    ids, labels = clone.values(["id", label_field + ".label"])
    keep = np.array([label is not None for label in labels], dtype=bool)
    if not keep.any():
        raise HardnessError("No sample has a label in '%s'" % label_field)
    ids = np.asarray(ids)[keep]
    labels = [label for label, k in zip(labels, keep) if k]
    observed = set(labels)
    other = None
    if hardness == "human":
        other = clone.values(annotator_field + ".label")
        other = [o for o, k in zip(other, keep) if k]
        observed |= {o for o in other if o is not None}
    classes = _class_list(
        clone, [label_field] + ([annotator_field] if other else []), observed
    )
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=int)
    y_other = None
    if other is not None:
        y_other = np.array(
            [index[o] if o is not None else -1 for o in other], dtype=int
        )
    return _Labelled(ids, keep, classes, y, y_other)


def _clean_model_probs(
    clone, hardness, seed, labelled, features_field, pred_probs
):
    """The clean model's out-of-sample probabilities that ``confidence`` and
    ``instance`` noise need (given, or fitted on ``features_field``); None
    for the other kinds."""
    if hardness not in ("confidence", "instance"):
        return None
    num_classes = len(labelled.classes)
    if pred_probs is not None:
        probs = np.asarray(pred_probs, dtype=float)
        if probs.shape != (len(labelled.y), num_classes):
            raise HardnessError(
                "pred_probs must have shape (%d, %d) (labelled "
                "samples x classes %s), got %s"
                % (len(labelled.y), num_classes, labelled.classes, probs.shape)
            )
        return probs
    values = clone.values(features_field)
    values = [v for v, k in zip(values, labelled.keep) if k]
    X = vectors_to_array(values, labelled.ids, features_field)
    return label_noise.clean_model_pred_probs(
        X, labelled.y, num_classes, seed=seed
    )


def _write_label_changes(clone, label_field, labelled, noisy, mask):
    """Writes the new labels of the chosen samples and keeps each one's
    earliest original label. Returns the mask of the samples whose label
    went back to its original (a perturbed clone of a perturbed clone)."""
    ids = labelled.ids
    names = np.asarray(labelled.classes, dtype=object)
    reverted = np.zeros(len(labelled.y), dtype=bool)
    if clone.has_field(ORIGINAL_LABEL_FIELD):
        # a perturbed clone of a perturbed clone: keep the earliest label,
        # and notice labels flipped back to it
        earlier = [
            v
            for v, k in zip(clone.values(ORIGINAL_LABEL_FIELD), labelled.keep)
            if k
        ]
        fresh = mask & np.array([v is None for v in earlier], dtype=bool)
        reverted = mask & np.array(
            [v is not None and v == names[n] for v, n in zip(earlier, noisy)],
            dtype=bool,
        )
    else:
        clone.add_sample_field(ORIGINAL_LABEL_FIELD, fo.StringField)
        fresh = mask
    if fresh.any():
        clone.set_values(
            ORIGINAL_LABEL_FIELD,
            dict(zip(ids[fresh].tolist(), names[labelled.y[fresh]].tolist())),
            key_field="id",
        )
    if reverted.any():
        clone.set_values(
            ORIGINAL_LABEL_FIELD,
            {i: None for i in ids[reverted].tolist()},
            key_field="id",
        )
    changed = ids[mask]
    if len(changed):
        clone.set_values(
            label_field + ".label",
            dict(zip(changed.tolist(), names[noisy[mask]].tolist())),
            key_field="id",
        )
    return reverted


def _inject_images(
    clone,
    hardness,
    rate,
    seed,
    output_dir,
    far_ood_source,
    stale_fields,
    num_workers,
    report,
):
    ids, filepaths = clone.values(["id", "filepath"])
    rng = np.random.default_rng(seed)
    chosen = perturbations.choose_samples(len(ids), rate, rng)
    seeds = rng.integers(0, 2**32, size=len(chosen), dtype=np.uint64)
    replacements = [None] * len(chosen)
    details = {"output_dir": output_dir, "num_eligible": len(ids)}
    if hardness == "far_ood":
        source = _far_ood_source(far_ood_source)
        picks = rng.integers(0, len(source), size=len(chosen))
        replacements = [source[int(p)] for p in picks]
        details["far_ood_source"] = (
            "skimage lfw_subset"
            if far_ood_source is None
            else "%d images" % len(source)
        )
    os.makedirs(output_dir, exist_ok=True)

    def work(j):
        i = chosen[j]
        # a clone keeps its source's sample ids: the clone's own id makes
        # the names unique, so re-running an injection (overwrite=True)
        # never meets the files of the clone it replaces
        dst = os.path.join(output_dir, "%s-%s.png" % (clone._doc.id, ids[i]))
        replacement = replacements[j]
        if isinstance(replacement, str):
            replacement = _read_image(replacement)
        changed = _perturb_file(
            filepaths[i],
            dst,
            hardness,
            np.random.default_rng(int(seeds[j])),
            replacement,
        )
        return i, dst if changed else None

    workers = num_workers or min(4, os.cpu_count() or 1)
    new_paths = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for done, (i, dst) in enumerate(pool.map(work, range(len(chosen)))):
            if dst is not None:
                new_paths[ids[i]] = dst
            if done % 50 == 0 or done == len(chosen) - 1:
                report(
                    0.05 + 0.9 * (done + 1) / max(len(chosen), 1),
                    "%d/%d images" % (done + 1, len(chosen)),
                )

    if new_paths:
        clone.set_values("filepath", new_paths, key_field="id")
        clone.set_values(
            "metadata", {i: None for i in new_paths}, key_field="id"
        )
        cleared = _stale_fields(clone, stale_fields)
        for field in cleared:
            clone.set_values(
                field, {i: None for i in new_paths}, key_field="id"
            )
        details["cleared_fields"] = cleared
    details["num_chosen"] = len(chosen)
    details["changed_ids"] = list(new_paths)
    return details


def _stale_fields(clone, stale_fields):
    if stale_fields is not None:
        fields = list(stale_fields)
        for field in fields:
            _check_vector_field(clone, field)
        return fields
    from fiftyone_hardness.api import EMBEDDINGS_INFO_KEY

    fields = []
    for name, field in clone.get_field_schema().items():
        if EMBEDDINGS_INFO_KEY in (field.info or {}):
            fields.append(name)
    return fields


def _far_ood_source(source):
    if source is None:
        return perturbations.lfw_images()
    if isinstance(source, str):
        raise HardnessError(
            "far_ood_source must be an image array or a list of paths"
        )
    if isinstance(source, np.ndarray):
        if source.ndim not in (3, 4) or len(source) == 0:
            raise HardnessError(
                "far_ood_source must be an (M, H, W[, C]) array"
            )
        return source
    source = list(source)
    if not source:
        raise HardnessError("far_ood_source is empty")
    return source


def _read_image(path):
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("L", "RGB", "RGBA"):
            array = np.asarray(image)
        elif image.mode in ("1", "LA", "I", "I;16", "F"):
            array = np.asarray(image.convert("L"))
        else:
            array = np.asarray(image.convert("RGB"))
    return np.array(array, dtype=np.uint8)


def _perturb_file(src, dst, hardness, rng, replacement):
    """Writes the perturbed ``src`` to ``dst`` (PNG) when it changed.
    Returns whether it changed. Never overwrites an existing file."""
    from PIL import Image

    image = _read_image(src)
    out = perturbations.perturb_image(
        image, hardness, rng, replacement=replacement
    )
    if out.shape == image.shape and np.array_equal(out, image):
        return False
    if os.path.exists(dst):
        raise HardnessError(
            "%s exists; choose an empty output_dir (existing files are "
            "never overwritten)" % dst
        )
    tmp = dst + ".tmp.png"
    Image.fromarray(out).save(tmp, format="PNG")
    os.replace(tmp, dst)
    return True


def _inject_vectors(clone, hardness, rate, seed, vector_field):
    ids, values = clone.values(["id", vector_field])
    keep = [i for i, v in enumerate(values) if v is not None]
    if not keep:
        raise HardnessError("No sample has a value in '%s'" % vector_field)
    kept_ids = np.asarray(ids)[keep]
    kept = [values[i] for i in keep]
    vectors_to_array(kept, kept_ids, vector_field)  # validates
    X = np.stack([np.ravel(np.asarray(v, dtype=np.float64)) for v in kept])
    out, mask, feature = perturbations.inject_atypical(X, rate, seed=seed)
    new_values = {}
    for row in np.flatnonzero(mask):
        original = kept[row]
        if isinstance(original, np.ndarray):
            vector = original.copy()
            vector.flat[feature[row]] = out[row, feature[row]]
        else:
            vector = list(original)
            vector[feature[row]] = float(out[row, feature[row]])
        new_values[kept_ids[row]] = vector
    if new_values:
        clone.set_values(vector_field, new_values, key_field="id")
    return {
        "vector_field": vector_field,
        "num_eligible": len(keep),
        "num_chosen": int(round(rate * len(keep))),
        "changed_ids": list(new_values),
    }
