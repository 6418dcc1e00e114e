"""
Speed of the embedding pipeline on this machine, against the pipeline it
replaced and against the bare model forward, measured in the same run on
the same images.

- ``forward``: the model alone on batches already preprocessed (the bound
  any pipeline can reach),
- ``new``: :func:`~fiftyone_hardness.methods.embeddings.embed_files` as it
  runs by default: batched decoding with torchvision, the model's own
  preprocessing as tensor operations, the next batches loaded by a
  background thread while the model runs,
- ``old``: the pipeline before issue 16: ``embed_files(preprocess="pil",
  prefetch=0)``, PIL decoding and the transform per image in the caller's
  thread,
- ``database`` (``--database``): ``compute_embeddings`` end to end on a
  FiftyOne dataset of the same files (reading filepaths, embedding,
  writing the vectors from the background writer).

Images: ``--n`` JPEGs of random smooth content, 320x240 and 240x320
alternately, generated into a temporary folder. Models: random weights for
open_clip (speed does not depend on the weights). Each figure is the median
over ``--repeats`` interleaved rounds (the order rotates); the load average
is printed, since the machine may be shared, and so is the process's CPU
time per image, which a shared machine disturbs less than the wall time.
For the GPU figures of issue 16, run ``speed/gpu_check.py`` on a GPU
machine. Run::

    .venv/bin/python speed/embeddings.py [--n 256] [--repeats 3] \\
        [--models efficientnet_lite0,ViT-B-32] [--batch-size 32] [--database]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from fiftyone_hardness.methods import embeddings as fhe


def make_jpegs(folder, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        width, height = (320, 240) if i % 2 else (240, 320)
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        array = np.asarray(image, np.int16) + rng.integers(
            -12, 13, (height, width, 3), np.int16
        )
        path = os.path.join(folder, "%05d.jpg" % i)
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(
            path, quality=90
        )
        paths.append(path)
    return paths


def forward_only(embedder, batches):
    for batch in batches:
        embedder.embed(batch)


def pipeline(embedder, paths, batch_size, **kwargs):
    for _ in fhe.embed_files(paths, embedder, batch_size=batch_size, **kwargs):
        pass


def timed(run):
    """Returns ``(wall seconds, CPU seconds of this process)``; the CPU
    time includes the loader threads' (and not worker processes')."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def through_database(model, paths, batch_size):
    import fiftyone as fo

    import fiftyone_hardness as foh

    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    try:
        foh.compute_embeddings(
            dataset,
            model=model,
            embeddings_field="bench",
            batch_size=batch_size,
            device="cpu",
            progress=lambda f, m="": None,
        )
    finally:
        dataset.delete()


def bench(model, paths, args):
    torch.manual_seed(0)
    embedder = fhe.load_embedder(model, device=args.device)
    decoded = [fhe.decode_image(open(p, "rb").read(), p) for p in paths]
    batches = [
        embedder.preprocessor(decoded[i : i + args.batch_size])
        for i in range(0, len(decoded), args.batch_size)
    ]
    del decoded
    # warm-up: oneDNN primitives, the loader's first imports
    pipeline(embedder, paths[: args.batch_size], args.batch_size)
    forward_only(embedder, batches[:1])

    modes = {
        "forward": lambda: forward_only(embedder, batches),
        "new": lambda: pipeline(embedder, paths, args.batch_size),
        "old": lambda: pipeline(
            embedder, paths, args.batch_size, preprocess="pil", prefetch=0
        ),
    }
    if args.database:
        modes["database"] = lambda: through_database(
            model, paths, args.batch_size
        )
    times = {name: [] for name in modes}
    load_before = os.getloadavg()
    names = list(modes)
    for r in range(args.repeats):
        # rotated, so that no mode always runs first (or last) in a round
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(modes[name]))
    load_after = os.getloadavg()
    report(model, embedder, paths, args, times, load_before, load_after)


def report(model, embedder, paths, args, times, load_before, load_after):
    n = len(paths)
    wall = {k: float(np.median([w for w, _ in v])) for k, v in times.items()}
    cpu = {k: float(np.median([c for _, c in v])) for k, v in times.items()}
    size = embedder.info.get("image_size") or 224
    print(
        "\n%s (%d px input), %d JPEGs 320x240, batch %d, %s, %d torch "
        "threads, %d CPUs; load average %.1f before, %.1f after; medians "
        "of %d rounds"
        % (
            model,
            size,
            n,
            args.batch_size,
            embedder.device,
            torch.get_num_threads(),
            os.cpu_count(),
            load_before[0],
            load_after[0],
            args.repeats,
        )
    )
    labels = {
        "forward": "forward only (preprocessed tensors)",
        "new": "new pipeline (embed_files default)",
        "old": "old pipeline (PIL per image)",
        "database": "compute_embeddings (new, + MongoDB)",
    }
    print(
        "  %-38s %9s %10s %12s %10s"
        % ("", "images/s", "/ forward", "CPU s/image", "/ forward")
    )
    for name in times:
        print(
            "  %-38s %9.1f %10.2f %12.4f %10.2f"
            % (
                labels[name],
                n / wall[name],
                wall["forward"] / wall[name],
                cpu[name] / n,
                cpu[name] / cpu["forward"],
            )
        )
    print(
        "  new / old: %.2f (throughput), %.2f (CPU time)"
        % (wall["old"] / wall["new"], cpu["new"] / cpu["old"])
    )
    print(
        "  runs (wall s / CPU s): "
        + " | ".join(
            "%s %s" % (k, ", ".join("%.1f/%.1f" % t for t in v))
            for k, v in times.items()
        )
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="efficientnet_lite0,ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--database", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.database:
        import uuid

        os.environ.setdefault(
            "FIFTYONE_DATABASE_NAME",
            "hardness_bench_%s" % uuid.uuid4().hex[:6],
        )
        os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = make_jpegs(folder, args.n)
        print(
            "%d JPEGs generated in %.1f s"
            % (len(paths), time.perf_counter() - start)
        )
        for model in args.models.split(","):
            bench(model, paths, args)


if __name__ == "__main__":
    main()
