"""
The models the training-dynamics recorder trains: :class:`MLP` on an
embeddings field (``on="embeddings"``) and :class:`SmallCNN` on the images
themselves (``on="images"``), both ending in a :class:`GeneratorDropout` and
a linear head, so that the recorder can read the penultimate features and
draw MC-dropout masks from its own generator. See ``docs/methods.md``
section 3.
"""

import logging

import numpy as np
import torch
import torch.nn as nn

from fiftyone_hardness.methods.base import HardnessError

logger = logging.getLogger(__name__)


class GeneratorDropout(nn.Module):
    """Dropout drawing its masks from :attr:`generator` (a
    ``torch.Generator``), so that other random draws never shift the
    training's dropout masks.

    Args:
        p: the drop probability
    """

    def __init__(self, p=0.2):
        super().__init__()
        self.p = float(p)
        self.generator = None

    def forward(self, x):
        if not self.training or self.p <= 0:
            return x
        keep = (
            torch.rand(x.shape, generator=self.generator, device=x.device)
            >= self.p
        )
        return x * keep / (1.0 - self.p)


class _Classifier(nn.Module):
    """``body`` (penultimate features) -> dropout -> linear ``head``: the
    logits have no activation on them."""

    def __init__(self, body, hidden, num_classes, dropout):
        super().__init__()
        self.body = body
        self.dropout = GeneratorDropout(dropout)
        self.head = nn.Linear(hidden, num_classes)

    def embed(self, x):
        """The penultimate features."""
        return self.body(x)

    def forward(self, x):
        return self.head(self.dropout(self.embed(x)))


class MLP(_Classifier):
    """A one-hidden-layer MLP probe: ``D -> hidden (ReLU) -> dropout -> K``.
    The logits are linear (no activation on them)."""

    def __init__(self, in_dim, num_classes, hidden=256, dropout=0.2):
        body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        super().__init__(body, hidden, num_classes, dropout)


class SmallCNN(_Classifier):
    """A small CNN: two 3x3 conv + 2x2 max-pool stages, ``hidden`` features
    (ReLU), dropout, linear logits. No batch norm, so eval-mode outputs of a
    sample do not depend on the rest of its batch, and no adaptive pooling,
    whose CUDA backward is not deterministic.

    Args:
        input_shape: ``(C, H, W)`` of the images (H, W >= 4)
        num_classes: K
        hidden (128): penultimate width
        dropout (0.2): dropout before the last layer
        width (16): channels of the first conv (the second has twice)
    """

    def __init__(
        self, input_shape, num_classes, hidden=128, dropout=0.2, width=16
    ):
        channels, height, width_px = input_shape
        if height < 4 or width_px < 4:
            raise HardnessError(
                "The CNN needs images of at least 4x4 pixels, got %dx%d"
                % (height, width_px)
            )
        flat = 2 * width * (height // 4) * (width_px // 4)
        body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(),
        )
        super().__init__(body, hidden, num_classes, dropout)


def build_model(config, input_shape, num_classes, device):
    """Builds the model of ``config`` with seeded weights, without touching
    the global random state.

    Args:
        config: a
            :class:`fiftyone_hardness.methods.dynamics.config.SingleDynamicsConfig`
            (its :attr:`model`, ``hidden``, ``dropout`` and ``seed``)
        input_shape: the shape of one input, ``(D,)`` or ``(C, H, W)``
        num_classes: K
        device: the torch device

    Returns:
        an :class:`MLP` or a :class:`SmallCNN` on ``device``
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        if config.model == "cnn":
            model = SmallCNN(
                tuple(input_shape),
                num_classes,
                hidden=int(config.hidden),
                dropout=float(config.dropout),
            )
        else:
            model = MLP(
                int(np.prod(input_shape)),
                num_classes,
                hidden=int(config.hidden),
                dropout=float(config.dropout),
            )
    return model.to(device)


def dropouts(model):
    """The :class:`GeneratorDropout` modules of ``model``."""
    return [m for m in model.modules() if isinstance(m, GeneratorDropout)]


def seeded_generator(device, seed):
    """A ``torch.Generator`` on ``device`` seeded with ``seed``: each source
    of randomness gets its own, so that none shifts another's draws."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
