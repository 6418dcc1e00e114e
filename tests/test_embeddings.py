"""
The embedding pipeline (issue 16): batched decoding and the model's own
preprocessing as tensor operations give the embeddings of the PIL/transform
path within a tolerance, in the same order, with the same unreadable files
reported; the loader thread and the database writer stop cleanly; the GPU
check script runs end to end (``--smoke``).
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from fiftyone_hardness.methods import embeddings as fhe
from fiftyone_hardness.methods.base import HardnessError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smooth_image(rng, height, width, mode="RGB"):
    """A smooth random image (natural images are smooth; pure noise would
    make JPEG and resize rounding dominate)."""
    from PIL import Image, ImageFilter

    array = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(array).filter(ImageFilter.GaussianBlur(3))
    return image.convert(mode)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Digits demo PNGs, generated JPEGs (several sizes, gray, CMYK) and
    PNGs (RGBA, palette, 16-bit), an unreadable file and a missing one.

    Returns ``(filepaths, positions of the two bad files)``."""
    from fiftyone_hardness import demo

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    digits, _, _ = demo.write_digit_images()
    paths = list(digits[:14])
    for i, (h, w, mode) in enumerate(
        [
            (240, 320, "RGB"),
            (131, 97, "RGB"),
            (224, 224, "L"),
            (180, 260, "CMYK"),
            (500, 380, "RGB"),
        ]
    ):
        path = str(folder / ("photo%d.jpg" % i))
        _smooth_image(rng, h, w, mode).save(path, quality=90)
        paths.append(path)
    for i, mode in enumerate(["RGBA", "P"]):
        path = str(folder / ("graphic%d.png" % i))
        _smooth_image(rng, 150, 210, mode).save(path)
        paths.append(path)
    from PIL import Image

    path = str(folder / "deep.png")
    gray = np.asarray(_smooth_image(rng, 120, 160, "L"), np.uint16) * 257
    Image.fromarray(gray).save(path)  # 16-bit: decoded by PIL
    paths.append(path)
    broken = str(folder / "broken.jpg")
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8\xff not really a jpeg")
    paths.insert(3, broken)
    paths.insert(9, str(folder / "missing.png"))
    return paths, (3, 9)


def _embed(filepaths, embedder, **kwargs):
    indices, vectors, errors = [], [], {}
    for batch_indices, batch_vectors, batch_errors in fhe.embed_files(
        filepaths, embedder, **kwargs
    ):
        indices.extend(batch_indices)
        vectors.append(batch_vectors)
        errors.update(batch_errors)
    return indices, np.concatenate(vectors), errors


def _cosines(a, b):
    return (
        (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    )


def _assert_inputs_match(embedder, filepaths):
    """The preprocessed inputs of both paths differ by at most one
    intensity level (the rounding of PIL's and torch's resizes)."""
    import torch
    from PIL import Image

    with_pil = torch.stack(
        [embedder.transform(Image.open(p).convert("RGB")) for p in filepaths]
    )
    decoded = [fhe.decode_image(open(p, "rb").read(), p) for p in filepaths]
    with_tensors = embedder.preprocessor(decoded)
    std = min(embedder.transform.transforms[-1].std)
    level = 1.0 / 255.0 / std
    assert with_tensors.shape == with_pil.shape
    difference = (with_tensors - with_pil).abs()
    assert difference.max().item() <= level * 1.01
    assert difference.mean().item() <= 0.25 * level


@pytest.mark.parametrize(
    "model,kwargs,min_cosine",
    [
        # a real ImageNet backbone: one-level input differences move its
        # pooled features by up to ~1% (measured: same as 0.3 levels of
        # random noise)
        ("efficientnet_lite0", dict(image_size=160), 0.98),
        ("ViT-B-32", dict(pretrained=None), 0.999),
    ],
)
def test_tensor_path_gives_the_embeddings_of_the_pil_path(
    image_files, model, kwargs, min_cosine
):
    import torch

    filepaths, bad = image_files
    torch.manual_seed(0)
    embedder = fhe.load_embedder(model, device="cpu", **kwargs)
    assert embedder.preprocessor is not None

    readable = [p for i, p in enumerate(filepaths) if i not in bad]
    _assert_inputs_match(embedder, readable)

    ref_indices, ref, ref_errors = _embed(
        filepaths, embedder, batch_size=8, preprocess="pil", prefetch=0
    )
    indices, ours, errors = _embed(filepaths, embedder, batch_size=8)
    assert (
        indices
        == ref_indices
        == [i for i in range(len(filepaths)) if i not in bad]
    )
    assert errors == ref_errors and sorted(errors) == list(bad)
    assert "FileNotFoundError" in errors[bad[1]]
    cosines = _cosines(ours, ref)
    print(
        "%s: cosine to the PIL path min %.5f mean %.5f"
        % (model, cosines.min(), cosines.mean())
    )
    assert cosines.min() >= min_cosine
    assert cosines.mean() >= 1 - (1 - min_cosine) / 3


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", [64, (48, 80)])
def test_open_clip_resize_modes_translate(image_files, resize_mode, size):
    """Every eval resize mode of open_clip (keep-ratio resizes, crop or
    pad, squash) gives the transform's inputs within one level."""
    from open_clip.transform import image_transform

    transform = image_transform(
        size,
        is_train=False,
        resize_mode=resize_mode,
        interpolation="bilinear" if size == 64 else "bicubic",
    )
    embedder = fhe.ImageEmbedder(None, transform, "cpu", {}, None, False)
    assert embedder.preprocessor is not None
    filepaths, bad = image_files
    readable = [p for i, p in enumerate(filepaths) if i not in bad]
    _assert_inputs_match(embedder, readable)


def test_every_loader_gives_the_same_batches_in_order(image_files):
    filepaths, bad = image_files
    embedder = fhe.load_embedder(device="cpu", image_size=32)
    runs = [
        _embed(filepaths, embedder, batch_size=5, prefetch=0),
        _embed(filepaths, embedder, batch_size=5, prefetch=3),
        _embed(filepaths, embedder, batch_size=5, num_workers=2),
    ]
    for indices, vectors, errors in runs[1:]:
        assert indices == runs[0][0]
        assert errors == runs[0][2]
        np.testing.assert_array_equal(vectors, runs[0][1])


def test_the_device_decoding_path_on_the_cpu(image_files, monkeypatch):
    """The GPU path's steps (JPEG bytes carried to the caller's thread,
    decoded there in one batched call, the corrupt JPEG's batch decoded
    again file by file) run here with the CPU as the device: the same
    results as the default path, the corrupt file reported by position."""
    filepaths, bad = image_files
    embedder = fhe.load_embedder(device="cpu", image_size=32)
    expected = _embed(filepaths, embedder, batch_size=5)
    batched_calls = []
    decode = fhe._decode_jpegs

    def counting(datas, device):
        batched_calls.append(len(datas))
        return decode(datas, device)

    init = fhe._Plan.__init__

    def as_on_a_gpu(self, *args):
        init(self, *args)
        self.jpegs_on_device = True

    monkeypatch.setattr(fhe, "_decode_jpegs", counting)
    monkeypatch.setattr(fhe._Plan, "__init__", as_on_a_gpu)
    indices, vectors, errors = _embed(filepaths, embedder, batch_size=5)
    assert indices == expected[0] and errors == expected[2]
    np.testing.assert_allclose(vectors, expected[1], rtol=0, atol=1e-5)
    assert "cannot identify image" in errors[bad[0]]
    # one call per batch with JPEGs (the corrupt one's batch included)
    jpeg_batches = {
        i // 5 for i, p in enumerate(filepaths) if p.endswith(".jpg")
    }
    assert len(batched_calls) == len(jpeg_batches)


def test_a_transform_without_tensor_equivalent_uses_pil(image_files):
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.Resize((32, 32), interpolation=T.InterpolationMode.LANCZOS),
            T.ToTensor(),
        ]
    )
    assert fhe.TensorPreprocess.from_transform(transform) is None
    embedder = fhe.load_embedder(device="cpu", image_size=32)
    embedder.transform = transform
    embedder.preprocessor = None
    filepaths, bad = image_files
    indices, vectors, errors = _embed(filepaths, embedder, batch_size=8)
    ref = _embed(filepaths, embedder, batch_size=8, preprocess="pil")
    assert indices == ref[0] and errors == ref[2]
    np.testing.assert_array_equal(vectors, ref[1])


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "embeddings-loader"]


def test_the_loader_thread_stops_with_its_consumer(image_files):
    filepaths, _ = image_files
    embedder = fhe.load_embedder(device="cpu", image_size=32)
    batches = fhe.embed_files(filepaths * 4, embedder, batch_size=2)
    next(batches)
    assert _loader_threads()
    batches.close()  # what a break, an error or Ctrl-C in the loop does
    assert not _loader_threads()


def test_a_loader_error_is_raised_in_the_caller(image_files, monkeypatch):
    filepaths, _ = image_files
    embedder = fhe.load_embedder(device="cpu", image_size=32)
    load = fhe._BatchLoader.__getitem__

    def failing(self, b):
        if b == 2:
            raise MemoryError("no room for batch 2")
        return load(self, b)

    monkeypatch.setattr(fhe._BatchLoader, "__getitem__", failing)
    seen = []
    with pytest.raises(MemoryError, match="batch 2"):
        for indices, _, _ in fhe.embed_files(filepaths, embedder, 4):
            seen.append(indices)
    assert len(seen) <= 2
    assert not _loader_threads()


def test_bad_decode_settings_are_refused():
    from fiftyone_hardness.methods.embeddings import EmbeddingsConfig

    with pytest.raises(HardnessError, match="Invalid decode_device='gpu'"):
        EmbeddingsConfig.from_kwargs(decode_device="gpu")
    with pytest.raises(HardnessError, match="Invalid preprocess='opencv'"):
        EmbeddingsConfig.from_kwargs(preprocess="opencv")
    embedder = fhe.load_embedder(device="cpu", image_size=32)
    with pytest.raises(HardnessError, match="preprocess"):
        next(fhe.embed_files(["x.png"], embedder, preprocess="opencv"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(HardnessError, match="no CUDA device; use 'cpu'"):
            next(fhe.embed_files(["x.png"], embedder, decode_device="cuda"))


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a GPU"
)
def test_gpu_decoding_matches_the_cpu_path(image_files):
    filepaths, bad = image_files
    gpu = fhe.load_embedder(device="cuda", image_size=160)
    cpu = fhe.load_embedder(device="cpu", image_size=160)
    g_indices, g, g_errors = _embed(filepaths, gpu, batch_size=8)
    c_indices, c, c_errors = _embed(filepaths, cpu, batch_size=8)
    assert g_indices == c_indices and g_errors == c_errors
    # nvJPEG's IDCT and fp16 autocast add to the resize rounding
    assert _cosines(g, c).min() >= 0.97


# ------------------------------------------------------- database writes


def test_vectors_are_written_by_the_background_thread(digits, monkeypatch):
    import fiftyone_hardness as foh
    from fiftyone_hardness.dataset_io import embeddings as fhemb

    threads = []
    write = fhemb._write_vectors

    def recording(samples, field, vectors):
        threads.append(threading.current_thread().name)
        write(samples, field, vectors)

    monkeypatch.setattr(fhemb, "_write_vectors", recording)
    view = digits[:30]
    result = foh.compute_embeddings(
        view,
        embeddings_field="e",
        image_size=32,
        batch_size=4,
        write_every=8,
    )
    assert result["num_embedded"] == 30
    assert threads == ["embeddings-writer"] * 4  # 8 + 8 + 8 + 6
    assert len(digits.exists("e")) == 30


def test_a_failed_write_stops_the_run_with_whole_vectors(digits, monkeypatch):
    import fiftyone_hardness as foh
    from fiftyone_hardness.dataset_io import embeddings as fhemb

    write = fhemb._write_vectors
    calls = []

    def failing(samples, field, vectors):
        calls.append(len(vectors))
        if len(calls) == 2:
            raise ConnectionError("database went away")
        write(samples, field, vectors)

    monkeypatch.setattr(fhemb, "_write_vectors", failing)
    view = digits[:40]
    with pytest.raises(ConnectionError, match="went away"):
        foh.compute_embeddings(
            view,
            embeddings_field="e",
            image_size=32,
            batch_size=4,
            write_every=4,
        )
    vectors = [v for v in view.values("e") if v is not None]
    assert len(vectors) == 4
    assert all(np.asarray(v).shape == (1280,) for v in vectors)
    assert not [
        t for t in threading.enumerate() if t.name == "embeddings-writer"
    ]


def test_ctrl_c_flushes_the_queued_vectors(digits, monkeypatch):
    """A Ctrl-C while the writer lags: what was handed to it is written
    (whole vectors, attributed to the model), nothing after, no thread
    left behind."""
    import time

    import fiftyone_hardness as foh
    from fiftyone_hardness.dataset_io import embeddings as fhemb

    write = fhemb._write_vectors
    handed = []

    def slow(samples, field, vectors):
        time.sleep(0.3)
        write(samples, field, vectors)

    put = fhemb._BackgroundWriter.put

    def counting(self, vectors):
        handed.append(len(vectors))
        put(self, vectors)

    def interrupt(fraction, message=""):
        if fraction > 0.5:
            raise KeyboardInterrupt

    monkeypatch.setattr(fhemb, "_write_vectors", slow)
    monkeypatch.setattr(fhemb._BackgroundWriter, "put", counting)
    view = digits[:40]
    with pytest.raises(KeyboardInterrupt):
        foh.compute_embeddings(
            view,
            embeddings_field="e",
            image_size=32,
            batch_size=4,
            write_every=4,
            progress=interrupt,
        )
    assert 0 < sum(handed) < 40
    assert len(digits.exists("e")) == sum(handed)
    assert foh.api.get_embeddings_info(digits, "e")["model"] == (
        "efficientnet_lite0"
    )
    assert not [
        t for t in threading.enumerate() if t.name.startswith("embeddings-")
    ]


# ------------------------------------------------------------- GPU check


def test_gpu_check_smoke_runs_end_to_end(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "speed", "gpu_check.py"),
            "--smoke",
        ],
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    assert (tmp_path / "gpu_check.json").exists()
