"""
Known hardness on arrays: image and feature perturbations for the benchmark
(see ``docs/methods.md`` section 4). Label perturbations live in
:mod:`fiftyone_hardness.methods.label_noise`.

Every function here is pure numpy (plus OpenCV / PIL for resampling), seeded
through an explicit ``numpy.random.Generator``, and never reads or writes
files: :mod:`fiftyone_hardness.benchmarking.injection` does the I/O on a clone of the
dataset.

Image kinds (:data:`IMAGE_KINDS`), on ``uint8`` arrays of shape ``(H, W)`` or
``(H, W, C)``:

- ``ood_covariate``: additive Gaussian noise with std ``0.5 * max(image)``
- ``domain_shift``: the same noise, then a cartoon filter (edge-preserving
  smoothing, colour quantization, dark edges)
- ``zoom_shift``: central crop of ``1 / 1.75`` of each side, resized back
- ``crop_shift``: the content moved 10 px left or right, the uncovered band
  filled with the image's background (median of its border)
- ``far_ood``: the image replaced by one from another image set (by default
  scikit-image's LFW subset of faces), resized and converted to the same
  shape; the label is kept

Vector kind (:data:`VECTOR_KINDS`), on ``(N, D)`` float arrays:

- ``atypical``: one feature of each chosen sample set to a value from the top
  1% of that feature's marginal distribution
"""

import logging
import os

import numpy as np

from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)

IMAGE_KINDS = (
    "ood_covariate",
    "domain_shift",
    "zoom_shift",
    "crop_shift",
    "far_ood",
)

VECTOR_KINDS = ("atypical",)

#: the defaults of the image perturbations (H-CAT's settings)
NOISE_STD_FRACTION = 0.5
ZOOM_FACTOR = 1.75
SHIFT_PIXELS = 10
ATYPICAL_QUANTILE = 0.99


def num_to_perturb(num_samples, rate):
    """Returns ``round(rate * num_samples)``, validating ``rate``.

    Raises:
        HardnessError: if ``rate`` is not in [0, 1]
    """
    if rate is None or not 0 <= float(rate) <= 1:
        raise HardnessError("rate must be in [0, 1], got %s" % (rate,))
    return int(round(float(rate) * num_samples))


def choose_samples(num_samples, rate, rng):
    """Chooses exactly ``round(rate * num_samples)`` indices uniformly
    without replacement.

    Args:
        num_samples: the number of candidates N
        rate: the fraction to choose, in [0, 1]
        rng: a ``numpy.random.Generator``

    Returns:
        a sorted int array of indices
    """
    k = num_to_perturb(num_samples, rate)
    return np.sort(rng.choice(num_samples, size=k, replace=False))


def perturb_image(image, kind, rng, replacement=None, **kwargs):
    """Applies image perturbation ``kind`` to one image.

    Args:
        image: a ``uint8`` array of shape ``(H, W)`` or ``(H, W, C)``
        kind: one of :data:`IMAGE_KINDS`
        rng: a ``numpy.random.Generator`` (noise, shift direction)
        replacement: for ``far_ood``, the replacing image (any size, float in
            [0, 1] or uint8, gray or colour)
        **kwargs: overrides of the defaults: ``std_fraction``,
            ``zoom_factor``, ``shift``

    Returns:
        a ``uint8`` array with the shape of ``image``
    """
    image = _check_image(image)
    if kind == "ood_covariate":
        return add_gaussian_noise(
            image, rng, kwargs.get("std_fraction", NOISE_STD_FRACTION)
        )
    if kind == "domain_shift":
        noisy = add_gaussian_noise(
            image, rng, kwargs.get("std_fraction", NOISE_STD_FRACTION)
        )
        return cartoonize(noisy)
    if kind == "zoom_shift":
        return central_zoom(image, kwargs.get("zoom_factor", ZOOM_FACTOR))
    if kind == "crop_shift":
        shift = int(kwargs.get("shift", SHIFT_PIXELS))
        direction = 1 if rng.random() < 0.5 else -1
        return shift_horizontally(image, direction * shift)
    if kind == "far_ood":
        if replacement is None:
            raise HardnessError("far_ood needs a replacement image")
        return match_image(replacement, image.shape)
    raise HardnessError(
        "Unknown image perturbation '%s'; choose one of %s"
        % (kind, ", ".join(IMAGE_KINDS))
    )


def add_gaussian_noise(image, rng, std_fraction=NOISE_STD_FRACTION):
    """Adds Gaussian noise with std ``std_fraction * image.max()`` and clips
    to [0, 255]. An all-black image is returned unchanged."""
    image = _check_image(image)
    std = std_fraction * float(image.max())
    noisy = image.astype(np.float32) + rng.normal(
        0.0, std, size=image.shape
    ).astype(np.float32)
    return _to_uint8(noisy)


def cartoonize(image, levels=6, edge_block=9, edge_offset=9):
    """A cartoon filter: edge-preserving smoothing, colour quantization to
    ``levels`` levels per channel, and dark edges where a pixel is darker
    than its local mean by more than ``edge_offset``.

    Args:
        image: a ``uint8`` array ``(H, W)`` or ``(H, W, C)``
        levels (6): intensity levels per channel after quantization
        edge_block (9): odd size of the local-mean window for edges
        edge_offset (9): how much darker than the local mean an edge is

    Returns:
        a ``uint8`` array with the shape of ``image``
    """
    import cv2

    image = _check_image(image)
    squeeze = image.ndim == 2
    work = image[..., None] if squeeze else image
    channels = work.shape[2]
    if channels == 1:
        gray = work[..., 0]
        smooth = cv2.bilateralFilter(np.ascontiguousarray(gray), 7, 75, 75)
        smooth = smooth[..., None]
    else:
        rgb = np.ascontiguousarray(work[..., :3])
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        smooth = cv2.bilateralFilter(rgb, 7, 75, 75)
    step = 256.0 / levels
    quantized = np.floor(smooth.astype(np.float32) / step) * step + step / 2
    blurred = cv2.medianBlur(np.ascontiguousarray(gray), 5)
    local_mean = cv2.blur(blurred.astype(np.float32), (edge_block, edge_block))
    edges = blurred.astype(np.float32) < local_mean - edge_offset
    quantized[edges] = 0
    out = _to_uint8(quantized)
    if channels > 3:
        out = np.concatenate([out, work[..., 3:]], axis=2)
    return out[..., 0] if squeeze else out


def central_zoom(image, zoom_factor=ZOOM_FACTOR):
    """Crops the central ``1 / zoom_factor`` of each side and resizes it
    back to the original size (bilinear)."""
    image = _check_image(image)
    if zoom_factor < 1:
        raise HardnessError("zoom_factor must be >= 1, got %s" % zoom_factor)
    h, w = image.shape[:2]
    ch = max(1, int(h / zoom_factor))
    cw = max(1, int(w / zoom_factor))
    top = (h - ch) // 2
    left = (w - cw) // 2
    crop = image[top : top + ch, left : left + cw]
    return _resize(crop, (h, w))


def shift_horizontally(image, shift):
    """Moves the content ``shift`` pixels right (negative: left) keeping the
    size; the uncovered band takes the image's background value (the median
    of its border pixels, per channel)."""
    image = _check_image(image)
    w = image.shape[1]
    shift = int(np.clip(shift, -w, w))
    if shift == 0:
        return image.copy()
    border = np.concatenate(
        [image[0], image[-1], image[:, 0], image[:, -1]], axis=0
    )
    background = np.median(border, axis=0)
    out = np.empty_like(image)
    out[...] = np.round(background).astype(np.uint8)
    if shift > 0:
        out[:, shift:] = image[:, : w - shift]
    else:
        out[:, : w + shift] = image[:, -shift:]
    return out


def match_image(image, shape):
    """Converts ``image`` (float in [0, 1] or uint8; gray or colour) to a
    ``uint8`` array of ``shape`` (resized bilinearly; gray replicated to
    colour channels, colour averaged to gray)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = _to_uint8(np.asarray(image, dtype=np.float32) * 255.0)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    target_channels = shape[2] if len(shape) == 3 else None
    if target_channels is None and image.ndim == 3:
        image = _to_uint8(image[..., :3].astype(np.float32).mean(axis=2))
    resized = _resize(image, shape[:2])
    if target_channels is not None:
        if resized.ndim == 2:
            resized = np.repeat(resized[..., None], target_channels, axis=2)
        elif resized.shape[2] != target_channels:
            resized = resized[..., :3]
            if target_channels > 3:
                alpha = np.full(
                    resized.shape[:2] + (target_channels - 3,),
                    255,
                    dtype=np.uint8,
                )
                resized = np.concatenate([resized, alpha], axis=2)
    return resized


def lfw_images():
    """Returns scikit-image's LFW subset (200 grayscale 25 x 25 faces and
    non-faces, float in [0, 1]): the default far-OOD source.

    Raises:
        HardnessError: if scikit-image or its data file is missing
    """
    try:
        import skimage
    except ImportError as e:  # pragma: no cover - fiftyone requires it
        raise HardnessError(
            "far_ood's default source needs scikit-image; pass "
            "far_ood_source=... instead"
        ) from e
    path = os.path.join(
        os.path.dirname(skimage.__file__), "data", "lfw_subset.npy"
    )
    if not os.path.exists(path):
        raise HardnessError(
            "scikit-image's lfw_subset.npy is missing (%s); pass "
            "far_ood_source=... instead" % path
        )
    return np.load(path)


def inject_atypical(features, rate, seed=0, quantile=ATYPICAL_QUANTILE):
    """Makes ``round(rate * N)`` samples atypical: one feature of each
    (uniformly chosen among those it can change) takes a value drawn from
    the top ``1 - quantile`` of that feature's marginal.

    A feature whose top values all equal the sample's current value cannot
    change it and is never chosen for that sample; a sample with no such
    feature stays unchanged and is not in the mask.

    Args:
        features: (N, D) array
        rate: fraction of samples to perturb, in [0, 1]
        seed: random seed
        quantile (0.99): the marginal quantile above which values are drawn

    Returns:
        a tuple ``(perturbed, mask, feature_index)``: the new (N, D) float
        array, the bool mask of changed samples, and the changed feature of
        each sample (-1 where unchanged)
    """
    X = np.array(features, dtype=np.float64)
    if X.ndim != 2:
        raise HardnessError("atypical needs an (N, D) feature array")
    n, d = X.shape
    rng = np.random.default_rng(seed)
    chosen = choose_samples(n, rate, rng)
    num_top = max(1, int(np.ceil((1 - quantile) * n)))
    top = -np.sort(-X, axis=0)[:num_top]  # (num_top, D), largest first
    top_min, top_max = top.min(axis=0), top.max(axis=0)

    out = X.copy()
    feature = np.full(n, -1, dtype=int)
    for i in chosen:
        stuck = (top_min == top_max) & (X[i] == top_max)
        candidates = np.flatnonzero(~stuck)
        if len(candidates) == 0:
            continue
        j = int(rng.choice(candidates))
        values = top[:, j][top[:, j] != X[i, j]]
        out[i, j] = rng.choice(values)
        feature[i] = j
    mask = (out != X).any(axis=1)
    return out, mask, feature


def _check_image(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise HardnessError(
            "Image perturbations work on uint8 images, got %s" % image.dtype
        )
    if image.ndim not in (2, 3):
        raise HardnessError(
            "Images must be (H, W) or (H, W, C), got shape %s" % (image.shape,)
        )
    return image


def _to_uint8(array):
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def _resize(image, size):
    import cv2

    h, w = size
    out = cv2.resize(
        np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR
    )
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out
