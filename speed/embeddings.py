"""
Speed of ``compute_embeddings`` against the bare model forward on the same
images, measured in the same run.

The bare forward is what a user would write by hand: decode every image with
PIL, preprocess, batch, run the model; no database. Ours adds reading
filepaths from FiftyOne, batched decoding, progress and writing the vectors
back. Run::

    .venv/bin/python speed/embeddings.py [--image-size 64] [--n 1797]
"""

import argparse
import os
import time
import uuid

os.environ.setdefault(
    "FIFTYONE_DATABASE_NAME", "hardness_bench_%s" % uuid.uuid4().hex[:6]
)
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

import torch  # noqa: E402

import fiftyone as fo  # noqa: E402

import fiftyone_hardness as foh  # noqa: E402
from fiftyone_hardness import demo  # noqa: E402
from fiftyone_hardness.methods import embeddings as fhe  # noqa: E402


def bare_forward(filepaths, embedder, batch_size):
    from PIL import Image

    outputs = []
    for start in range(0, len(filepaths), batch_size):
        batch = [
            embedder.transform(Image.open(p).convert("RGB"))
            for p in filepaths[start : start + batch_size]
        ]
        outputs.append(embedder.embed(torch.stack(batch)))
    return outputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=1797)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    dataset = demo.load_digits_dataset(
        name="bench-embeddings", noise_rate=0, overwrite=True, persistent=False
    )
    view = dataset.limit(args.n)
    filepaths = view.values("filepath")
    embedder = fhe.load_embedder(image_size=args.image_size)
    bare_forward(filepaths[:64], embedder, args.batch_size)  # warm-up

    start = time.perf_counter()
    bare_forward(filepaths, embedder, args.batch_size)
    bare = time.perf_counter() - start

    start = time.perf_counter()
    foh.compute_embeddings(
        view,
        embeddings_field="bench",
        image_size=args.image_size,
        batch_size=args.batch_size,
        progress=lambda f, m="": None,
    )
    ours = time.perf_counter() - start

    n = len(filepaths)
    print(
        "efficientnet_lite0, %d px, %d images, batch %d, %s, %d threads"
        % (
            args.image_size,
            n,
            args.batch_size,
            embedder.device,
            torch.get_num_threads(),
        )
    )
    print(
        "bare model forward (PIL + model, no DB): %7.1f images/s" % (n / bare)
    )
    print(
        "compute_embeddings (read, embed, write): %7.1f images/s" % (n / ours)
    )
    print("ratio ours / bare (throughput):          %7.2f" % (bare / ours))
    fo.delete_dataset(dataset.name)


if __name__ == "__main__":
    main()
