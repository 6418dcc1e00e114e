"""
The built-in demo dataset: scikit-learn's 1797 handwritten digits as real PNG
images, with optional known label noise.

Fields:

- ``ground_truth`` (``fo.Classification``): the label, noisy if asked
- ``ground_truth_clean`` (``fo.Classification``): the original label
- ``mislabeled`` (bool): whether ``ground_truth`` differs from the original
- ``pixels`` (vector): the 64 raw pixel values scaled to [0, 1]
"""

import logging
import os

import numpy as np

from fiftyone_hardness.methods.label_noise import inject_label_noise

logger = logging.getLogger(__name__)

DIGITS_CLASSES = [str(i) for i in range(10)]


def cache_dir():
    """Where the demo's image files live (``FIFTYONE_HARDNESS_CACHE`` or
    ``~/.cache/fiftyone-hardness``)."""
    return os.environ.get(
        "FIFTYONE_HARDNESS_CACHE",
        os.path.join(os.path.expanduser("~"), ".cache", "fiftyone-hardness"),
    )


def write_digit_images(image_size=64):
    """Writes the 1797 digits as ``image_size`` PNG files (once) and returns
    ``(filepaths, pixels, labels)``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = os.path.join(cache_dir(), "digits-%d" % image_size)
    os.makedirs(folder, exist_ok=True)
    filepaths = []
    for i, image in enumerate(digits.images):
        path = os.path.join(folder, "%04d.png" % i)
        if not os.path.exists(path):
            gray = np.uint8(np.round(255 - image * (255 / 16.0)))
            tmp = path + ".tmp.png"
            Image.fromarray(gray, mode="L").resize(
                (image_size, image_size), Image.BICUBIC
            ).save(tmp)
            os.replace(tmp, path)
        filepaths.append(path)
    pixels = digits.data.astype(np.float32) / 16.0
    return filepaths, pixels, digits.target.astype(int)


def load_digits_dataset(
    name="hardness-digits",
    noise_rate=0.2,
    noise_kind="symmetric",
    seed=0,
    overwrite=False,
    persistent=True,
):
    """Builds (or loads) the digits demo dataset.

    Args:
        name: the dataset name
        noise_rate: fraction of labels to corrupt (0 for clean labels)
        noise_kind: a kind from
            :data:`fiftyone_hardness.methods.label_noise.LABEL_NOISE_KINDS`
        seed: the noise seed
        overwrite: rebuild the dataset when one with this name exists
        persistent: whether the dataset persists across sessions

    Returns:
        a :class:`fiftyone.core.dataset.Dataset`
    """
    import fiftyone as fo

    if fo.dataset_exists(name):
        if not overwrite:
            return fo.load_dataset(name)
        fo.delete_dataset(name)

    filepaths, pixels, clean = write_digit_images()
    noisy, mask = inject_label_noise(
        clean, len(DIGITS_CLASSES), noise_rate, kind=noise_kind, seed=seed
    )
    names = np.asarray(DIGITS_CLASSES)

    dataset = fo.Dataset(name, persistent=persistent)
    samples = [
        fo.Sample(
            filepath=path,
            ground_truth=fo.Classification(label=names[y]),
            ground_truth_clean=fo.Classification(label=names[c]),
            mislabeled=bool(m),
            pixels=p,
        )
        for path, y, c, m, p in zip(filepaths, noisy, clean, mask, pixels)
    ]
    dataset.add_samples(samples, progress=False)
    dataset.default_classes = list(DIGITS_CLASSES)
    dataset.info["hardness_demo"] = {
        "noise_rate": noise_rate,
        "noise_kind": noise_kind,
        "seed": seed,
        "num_mislabeled": int(mask.sum()),
    }
    dataset.save()
    return dataset


#: the runs the demo makes when their method is available:
#: (method, run key, parameters)
DEMO_RUNS = [
    ("rer", "rer", {"embeddings_field": "embeddings"}),
    ("cleanlab", "cleanlab", {"embeddings_field": "embeddings"}),
    ("dynamics", "dynamics", {"embeddings_field": "embeddings"}),
]


def main(name="hardness-digits"):
    """Builds the demo dataset with 20% known label noise, computes
    embeddings, runs every available method and prints what it found."""
    import fiftyone_hardness as foh
    from fiftyone_hardness.methods import registry
    from sklearn.metrics import roc_auc_score

    print(
        "Building '%s': 1797 digit images, 20%% symmetric label noise" % name
    )
    dataset = load_digits_dataset(name=name, noise_rate=0.2, overwrite=True)
    truth = np.asarray(dataset.values("mislabeled"), dtype=bool)
    print(
        "  %d labels were corrupted on purpose (field 'mislabeled')"
        % truth.sum()
    )

    print("Computing offline efficientnet_lite0 embeddings ('embeddings')")
    foh.compute_embeddings(
        dataset, embeddings_field="embeddings", image_size=64
    )

    available = registry.list_methods()
    for method, run_key, params in DEMO_RUNS:
        if method not in available:
            continue
        print("\nRunning '%s'" % method)
        results = dataset.apply_hardness(method, run_key=run_key, **params)
        print(results.summary())
        for field in results.fields:
            if field.endswith("_score"):
                scores = np.asarray(dataset.values(field), dtype=float)
                print(
                    "  %-32s AUROC vs the known mistakes: %.3f"
                    % (field, roc_auc_score(truth, scores))
                )

    print(
        '\nOpen it in the App:\n  .venv/bin/python -c "import fiftyone as fo; '
        "s = fo.launch_app(fo.load_dataset('%s')); s.wait()\"" % name
    )
    print("then sort by a *_score field, or open the Hardness panel from '+'.")


if __name__ == "__main__":
    main()
