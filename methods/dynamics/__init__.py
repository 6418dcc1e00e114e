"""
Training dynamics: one seeded training run with a **recorder**, from which
every H-CAT hardness method (:mod:`fiftyone_hardness.methods.dynamics.scores`)
computes its score.

The recorder collects, without changing the model that is trained:

- per minibatch update, the margin ``z_y~ - max_{j != y~} z_j`` of each
  sample in the training forward pass (AUM) (``"margins"``, always),
- per epoch, one eval-mode pass over the unshuffled data: the logits
  (``"logits"``, always), and what the chosen methods declare they need:
  penultimate features after the last epoch (``"features"``), per-sample
  parameter-gradient norms at an early epoch (``"grand"``, ``torch.func``),
  input gradients at a few checkpoints (``"vog"``, ``torch.func``), Monte
  Carlo dropout passes (``"mc_dropout"``) and augmented passes
  (``"augment"``) after the last epoch,
- out-of-sample probabilities of K-fold models trained with the same setup
  (``"cv_probs"``, for confident learning), and the probability
  trajectories of a calibration run in which a clean-looking subset was
  flipped on purpose (``"calibration"``, for the Detector).

Every source of randomness has its own ``torch.Generator``: the training
shuffles and dropout masks draw from the training generators only, and the
extra passes never consume them, so the trained weights are identical with
the recorder on or off (tested).

Models: :class:`MLP` on an embeddings field (default) and
:class:`SmallCNN` on the images themselves (``on="images"``).

The ``run_*`` functions at the end are the registry adapters of
``"dynamics"`` (all 13 methods) and of each single method.
"""

import collections
import copy
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fiftyone_hardness.methods.base import (
    HardnessError,
    MethodOutput,
    class_means,
    select_device,
)
from fiftyone_hardness.methods.validation import check_labels

logger = logging.getLogger(__name__)

#: what the recorder can collect; ``logits`` and ``margins`` always are
NEEDS = (
    "logits",
    "margins",
    "features",
    "grand",
    "vog",
    "mc_dropout",
    "augment",
    "cv_probs",
    "calibration",
)

_ALWAYS = frozenset(("logits", "margins"))


class TrainingInterrupted(HardnessError):
    """Training stopped before its last epoch (an exception or a keyboard
    interrupt inside the loop); nothing was recorded or written."""


@dataclass
class TrainingConfig:
    """The training setup. Two runs with equal configs on equal data train
    identical models (on CPU).

    Attributes:
        model: ``"mlp"`` (on vectors) or ``"cnn"`` (on images)
        epochs: number of epochs (>= 2)
        batch_size: minibatch size
        lr: Adam learning rate
        weight_decay: Adam weight decay
        hidden: width of the penultimate layer
        dropout: dropout rate before the last layer (MC dropout uses it)
        seed: the seed of initialization, shuffling and dropout
        standardize: z-score each input dimension (vectors) or channel
            (images) before training
        early_epoch: the (1-based) epoch at which EL2N and GraNd are read;
            None for ``max(1, round(epochs / 5))``
        vog_checkpoints: number of evenly spaced epochs (the last included)
            at which VoG's input gradients are taken
        vog_target: what VoG differentiates: ``"log_prob"``, the observed
            class's log probability (default), or ``"logit"``, its raw
            logit ``z_y~`` as in the VoG paper. Logits are defined only up
            to a per-sample constant shared by all classes (softmax ignores
            it), and the gradient of that constant swamps the raw-logit
            version: on digits with 20% noise it ranks mislabeled samples
            *below* clean ones (AUROC ~0.3); ``log p`` removes the shared
            part (``d z_y~/dx - sum_k p_k d z_k/dx``)
        mc_passes: MC-dropout passes for Conf-Agree
        augment_passes: augmented passes for ALLSH
        augment_noise: std of ALLSH's Gaussian noise, in units of the
            standardized input
        augment_flip: whether ALLSH also flips images horizontally (every
            other pass); turn it off where a flip changes the class (digits,
            text)
        cv_folds: folds of the cross-validated probabilities for cleanlab
        detector_flip_rate: fraction of the samples flipped on purpose in
            the Detector's calibration run
        eval_batch_size: batch size of the recorder's eval passes
    """

    model: str = "mlp"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 256
    dropout: float = 0.2
    seed: int = 0
    standardize: bool = True
    early_epoch: Optional[int] = None
    vog_checkpoints: int = 5
    vog_target: str = "log_prob"
    mc_passes: int = 10
    augment_passes: int = 4
    augment_noise: float = 0.1
    augment_flip: bool = True
    cv_folds: int = 3
    detector_flip_rate: float = 0.1
    eval_batch_size: int = 1024

    def validate(self):
        """Raises :class:`HardnessError` for unusable values."""
        if self.model not in ("mlp", "cnn"):
            raise HardnessError(
                "Unknown model '%s'; use 'mlp' (embeddings) or 'cnn' "
                "(images)" % self.model
            )
        if int(self.epochs) < 2:
            raise HardnessError(
                "Training dynamics need at least 2 epochs (got %s): the "
                "methods compare the model across epochs" % self.epochs
            )
        if int(self.batch_size) < 1:
            raise HardnessError("batch_size must be >= 1")
        if self.early_epoch is not None and not (
            1 <= int(self.early_epoch) <= int(self.epochs)
        ):
            raise HardnessError(
                "early_epoch must be between 1 and epochs=%d, got %s"
                % (self.epochs, self.early_epoch)
            )
        if self.vog_target not in ("log_prob", "logit"):
            raise HardnessError("vog_target must be 'log_prob' or 'logit'")
        if int(self.cv_folds) < 2:
            raise HardnessError("cv_folds must be >= 2")
        if not 0 < float(self.detector_flip_rate) < 1:
            raise HardnessError("detector_flip_rate must be in (0, 1)")

    @property
    def early_index(self):
        """The 0-based epoch index of EL2N / GraNd."""
        epoch = self.early_epoch or max(1, int(round(self.epochs / 5.0)))
        return int(epoch) - 1

    @property
    def vog_indices(self):
        """The 0-based epoch indices of VoG's checkpoints."""
        count = max(2, min(int(self.vog_checkpoints), int(self.epochs)))
        return sorted(
            set(np.linspace(0, self.epochs - 1, count).round().astype(int))
        )


@dataclass
class TrainingRecord:
    """What the recorder collected during one training run.

    Attributes:
        labels: (N,) observed labels the model was trained on
        num_classes: K
        logits: (E, N, K) eval-mode logits after each epoch
        margins: (E, N) margin of each sample in its training minibatch
            forward pass (before that update), one per epoch
        early_index: the 0-based epoch of EL2N / GraNd
        features: (N, H) penultimate features after the last epoch
        grad_norms: (N,) per-sample gradient norms of the loss at
            ``early_index`` (GraNd)
        input_grad_var: (N,) VoG before class normalization: the variance
            over checkpoints of d z_y~ / d x, averaged over input dims
        mc_probs: (T, N, K) MC-dropout probabilities after the last epoch
        aug_probs: (A, N, K) probabilities of augmented inputs
        cv_probs: (N, K) out-of-sample probabilities of K-fold models
        calib_probs: (E, N) p_e(label) trajectories of the calibration run
            (labels with ``calib_flipped`` flipped on purpose)
        calib_flipped: (N,) bool, flipped on purpose in the calibration run
        calib_clean: (N,) bool, clean-looking and not flipped (the
            Detector's negatives)
        train_accuracy: per epoch, fraction of training forward passes
            whose argmax was the observed label
        eval_accuracy: per epoch, eval-mode accuracy against the observed
            labels
        needs: the needs recorded
        config: the :class:`TrainingConfig` as a dict
    """

    labels: np.ndarray
    num_classes: int
    logits: np.ndarray
    margins: np.ndarray
    early_index: int = 0
    features: Optional[np.ndarray] = None
    grad_norms: Optional[np.ndarray] = None
    input_grad_var: Optional[np.ndarray] = None
    mc_probs: Optional[np.ndarray] = None
    aug_probs: Optional[np.ndarray] = None
    cv_probs: Optional[np.ndarray] = None
    calib_probs: Optional[np.ndarray] = None
    calib_flipped: Optional[np.ndarray] = None
    calib_clean: Optional[np.ndarray] = None
    train_accuracy: list = field(default_factory=list)
    eval_accuracy: list = field(default_factory=list)
    needs: frozenset = frozenset()
    config: dict = field(default_factory=dict)

    @property
    def num_epochs(self):
        return self.logits.shape[0]

    @property
    def probs(self):
        """(E, N, K) softmax of :attr:`logits`."""
        return softmax(self.logits, axis=-1)

    @property
    def label_probs(self):
        """(E, N) eval-mode probability of the observed label per epoch."""
        n = len(self.labels)
        return self.probs[:, np.arange(n), self.labels]


def softmax(z, axis=-1):
    """A numerically stable softmax of a numpy array."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------- models


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
    the global random state."""
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


def _dropouts(model):
    return [m for m in model.modules() if isinstance(m, GeneratorDropout)]


def _generator(device, seed):
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


# -------------------------------------------------------------- training


def prepare_inputs(X, config):
    """Validates and standardizes the inputs.

    Args:
        X: (N, D) vectors for the MLP, or (N, C, H, W) images for the CNN
        config: a :class:`TrainingConfig`

    Returns:
        a float32 numpy array of the same shape

    Raises:
        HardnessError: non-finite values or a wrong number of dimensions
    """
    X = np.asarray(X, dtype=np.float32)
    if config.model == "cnn":
        if X.ndim != 4:
            raise HardnessError(
                "The CNN needs images as an (N, C, H, W) array, got shape %s"
                % (X.shape,)
            )
        axes = (0, 2, 3)
    else:
        if X.ndim != 2:
            raise HardnessError(
                "The MLP needs an (N, D) array of vectors, got shape %s"
                % (X.shape,)
            )
        axes = (0,)
    bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    if bad.any():
        raise HardnessError(
            "%d samples have NaN or inf input values (e.g. row %d); fix or "
            "exclude them" % (int(bad.sum()), int(np.flatnonzero(bad)[0]))
        )
    if config.standardize:
        mean = X.mean(axis=axes, keepdims=True)
        std = X.std(axis=axes, keepdims=True)
        std[std < 1e-6] = 1.0
        X = (X - mean) / std
    return np.ascontiguousarray(X, dtype=np.float32)


def train(
    X,
    labels,
    num_classes,
    config=None,
    needs=(),
    device=None,
    progress=None,
    record=True,
    progress_span=(0.0, 1.0),
):
    """Trains one model, recording what ``needs`` asks for.

    Args:
        X: inputs already passed through :func:`prepare_inputs`
        labels: (N,) int observed labels
        num_classes: K
        config (None): a :class:`TrainingConfig`
        needs (()): extra needs from :data:`NEEDS` (``logits`` and
            ``margins`` are always recorded when ``record`` is True);
            ``cv_probs`` and ``calibration`` are handled by
            :func:`record_training`
        device (None): torch device
        progress (None): a callable ``(fraction, message)``, called once
            per epoch
        record (True): False trains without any recording (the baseline)
        progress_span ((0, 1)): the fraction range this training covers

    Returns:
        a tuple ``(model, record)``; ``record`` is a
        :class:`TrainingRecord`, or None when ``record`` is False

    Raises:
        TrainingInterrupted: when the loop is interrupted or fails
    """
    config = config or TrainingConfig()
    config.validate()
    device = select_device(device)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    model = build_model(config, X.shape[1:], num_classes, device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=float(config.lr),
        weight_decay=float(config.weight_decay),
    )
    shuffle_gen = _generator("cpu", config.seed + 1)
    dropout_gen = _generator(device, config.seed + 2)
    for module in _dropouts(model):
        module.generator = dropout_gen

    X_t = torch.from_numpy(X).to(device)
    y_t = torch.from_numpy(labels).to(device)
    recorder = (
        _Recorder(model, X_t, y_t, num_classes, config, needs, device)
        if record
        else None
    )
    epochs = int(config.epochs)
    batch_size = int(config.batch_size)
    lo, hi = progress_span
    epoch = 0
    try:
        with _deterministic_cudnn():
            for epoch in range(epochs):
                model.train()
                order = torch.randperm(n, generator=shuffle_gen).to(device)
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    logits = model(X_t[idx])
                    loss = F.cross_entropy(logits, y_t[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if recorder is not None:
                        recorder.on_batch(epoch, idx, logits.detach())
                if recorder is not None:
                    recorder.on_epoch_end(epoch)
                if progress is not None:
                    progress(
                        lo + (hi - lo) * (epoch + 1) / epochs,
                        "epoch %d/%d" % (epoch + 1, epochs),
                    )
    except (KeyboardInterrupt, Exception) as e:
        if isinstance(e, HardnessError):
            raise
        what = (
            "interrupted"
            if isinstance(e, KeyboardInterrupt)
            else "failed (%s: %s)" % (type(e).__name__, e)
        )
        raise TrainingInterrupted(
            "Training %s at epoch %d of %d; nothing was recorded or "
            "written. Run it again to completion" % (what, epoch + 1, epochs)
        ) from e

    model.eval()
    return model, (recorder.finish() if recorder is not None else None)


def _deterministic_cudnn():
    # cuDNN's fastest convolution backward kernels are not deterministic
    return torch.backends.cudnn.flags(
        enabled=torch.backends.cudnn.enabled,
        benchmark=False,
        deterministic=True,
    )


class _Recorder(object):
    """Collects a :class:`TrainingRecord` from inside :func:`train`.

    It only reads the model: eval passes run under ``torch.no_grad`` or
    through ``torch.func`` on detached parameters, and every random draw
    comes from the recorder's own generators.
    """

    def __init__(self, model, X, y, num_classes, config, needs, device):
        self.model = model
        self.X = X
        self.y = y
        self.k = num_classes
        self.config = config
        self.needs = frozenset(needs) | _ALWAYS
        unknown = self.needs - set(NEEDS)
        if unknown:
            raise HardnessError("Unknown recorder needs %s" % sorted(unknown))
        self.device = device
        n = len(y)
        e = int(config.epochs)
        # (E, N, K) lives in host memory: one copy per epoch
        self.logits = np.empty((e, n, num_classes), dtype=np.float32)
        self.margins = torch.empty((e, n), device=device)
        self._batches = []
        self.features = None
        self.grad_norms = None
        self.vog = _RunningVariance() if "vog" in self.needs else None
        self.vog_epochs = set(config.vog_indices)
        self.mc_probs = None
        self.aug_probs = None

    def on_batch(self, epoch, idx, logits):
        # kept as is; the margins of the epoch are computed in one go at its
        # end (no extra kernels per minibatch)
        self._batches.append((idx, logits))

    def on_epoch_end(self, epoch):
        if self._batches:
            idx = torch.cat([b[0] for b in self._batches])
            logits = torch.cat([b[1] for b in self._batches])
            self.margins[epoch, idx] = margins_of(logits, self.y[idx])
            self._batches = []
        model = self.model
        model.eval()
        last = epoch == self.config.epochs - 1
        want_features = last and "features" in self.needs
        logits, features = _eval_pass(
            model, self.X, self.config.eval_batch_size, want_features
        )
        self.logits[epoch] = logits.float().cpu().numpy()
        if want_features:
            self.features = features
        if "grand" in self.needs and epoch == self.config.early_index:
            self.grad_norms = per_sample_grad_norms(
                model, self.X, self.y, self.config.eval_batch_size
            )
        if self.vog is not None and epoch in self.vog_epochs:
            self.vog.update(
                input_gradients(
                    model,
                    self.X,
                    self.y,
                    self.config.eval_batch_size,
                    self.config.vog_target,
                )
            )
        if last and "mc_dropout" in self.needs:
            self.mc_probs = _mc_dropout_probs(
                model,
                self.X,
                int(self.config.mc_passes),
                self.config.eval_batch_size,
                _generator(self.device, self.config.seed + 3),
            )
        if last and "augment" in self.needs:
            self.aug_probs = _augmented_probs(
                model,
                self.X,
                int(self.config.augment_passes),
                float(self.config.augment_noise),
                self.config.eval_batch_size,
                _generator(self.device, self.config.seed + 4),
                flip=self.config.model == "cnn" and self.config.augment_flip,
            )

    def finish(self):
        labels = self.y.cpu().numpy()
        eval_acc = (self.logits.argmax(-1) == labels[None]).mean(1)
        train_acc = (self.margins > 0).float().mean(1).cpu().numpy()
        to_np = _to_numpy
        return TrainingRecord(
            labels=labels,
            num_classes=self.k,
            logits=self.logits,
            margins=to_np(self.margins),
            early_index=self.config.early_index,
            features=to_np(self.features),
            grad_norms=to_np(self.grad_norms),
            input_grad_var=(
                self.vog.mean_variance() if self.vog is not None else None
            ),
            mc_probs=to_np(self.mc_probs),
            aug_probs=to_np(self.aug_probs),
            train_accuracy=[float(a) for a in train_acc],
            eval_accuracy=[float(a) for a in eval_acc],
            needs=self.needs,
            config=asdict(self.config),
        )


def _to_numpy(t):
    if t is None:
        return None
    return t.detach().float().cpu().numpy()


def margins_of(logits, y):
    """The margin ``z_y - max_{j != y} z_j`` of each row (torch)."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return own - others.max(1).values


@torch.no_grad()
def _eval_pass(model, X, batch_size, want_features=False):
    logits, features = [], []
    for start in range(0, len(X), batch_size):
        h = model.embed(X[start : start + batch_size])
        logits.append(model.head(h))
        if want_features:
            features.append(h)
    return (
        torch.cat(logits),
        torch.cat(features) if want_features else None,
    )


def _functional(model):
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    return params, buffers


def per_sample_grad_norms(model, X, y, batch_size=1024):
    """L2 norms of the per-sample gradients of the cross-entropy loss with
    respect to all parameters, vectorized with ``torch.func.vmap`` (eval
    mode; the model is not changed).

    Returns:
        an (N,) tensor
    """
    from torch.func import functional_call, grad, vmap

    was_training = model.training
    model.eval()
    params, buffers = _functional(model)
    num_params = sum(p.numel() for p in params.values())
    chunk = max(1, min(int(batch_size), int(2e7 // max(num_params, 1))))

    def loss(p, x, target):
        out = functional_call(model, (p, buffers), (x[None],))
        return F.cross_entropy(out, target[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    norms = []
    for start in range(0, len(X), chunk):
        grads = per_sample(
            params, X[start : start + chunk], y[start : start + chunk]
        )
        sq = sum(
            g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()
        )
        norms.append(sq.sqrt())
    model.train(was_training)
    return torch.cat(norms)


def input_gradients(model, X, y, batch_size=1024, target="log_prob"):
    """Per-sample gradients with respect to the input, vectorized with
    ``torch.func.vmap`` (eval mode), of the observed class's log
    probability ``log p(y~|x)`` (``target="log_prob"``) or logit ``z_y~``
    (``target="logit"``).

    Returns:
        a tensor shaped like ``X``
    """
    from torch.func import functional_call, grad, vmap

    was_training = model.training
    model.eval()
    params, buffers = _functional(model)

    def logit(x, onehot):
        out = functional_call(model, (params, buffers), (x[None],))[0]
        if target == "log_prob":
            out = out.log_softmax(-1)
        return (out * onehot).sum()

    per_sample = vmap(grad(logit))
    num_classes = model.head.out_features
    out = [
        per_sample(
            X[s : s + batch_size],
            F.one_hot(y[s : s + batch_size], num_classes).to(X.dtype),
        )
        for s in range(0, len(X), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)


class _RunningVariance(object):
    """Welford's running mean and variance over a sequence of equally
    shaped tensors (VoG's checkpoints), without keeping them."""

    def __init__(self):
        self.count = 0
        self.mean = None
        self.m2 = None

    def update(self, value):
        value = value.detach().double()
        self.count += 1
        if self.mean is None:
            self.mean = value.clone()
            self.m2 = torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def mean_variance(self):
        """(N,) population variance over the updates, averaged over all
        non-batch dimensions."""
        if self.mean is None:
            return None
        var = self.m2 / max(self.count, 1)
        return var.reshape(var.shape[0], -1).mean(1).cpu().numpy()


@torch.no_grad()
def _mc_dropout_probs(model, X, passes, batch_size, generator):
    dropouts = _dropouts(model)
    saved = [m.generator for m in dropouts]
    model.eval()
    for m in dropouts:
        m.generator = generator
        m.train()
    try:
        probs = torch.stack(
            [
                torch.cat(
                    [
                        model(X[s : s + batch_size]).softmax(-1)
                        for s in range(0, len(X), batch_size)
                    ]
                ).cpu()
                for _ in range(passes)
            ]
        )
    finally:
        for m, g in zip(dropouts, saved):
            m.generator = g
            m.eval()
    return probs


@torch.no_grad()
def _augmented_probs(model, X, passes, noise, batch_size, generator, flip):
    model.eval()
    out = []
    for a in range(passes):
        probs = []
        for s in range(0, len(X), batch_size):
            x = X[s : s + batch_size]
            if flip and a % 2 == 0:
                x = torch.flip(x, dims=(-1,))
            x = x + noise * torch.randn(
                x.shape, generator=generator, device=x.device
            )
            probs.append(model(x).softmax(-1))
        out.append(torch.cat(probs).cpu())
    return torch.stack(out)


@torch.no_grad()
def predict_probs(model, X, batch_size=1024):
    """Eval-mode softmax probabilities of ``model`` on ``X`` (numpy in,
    numpy out)."""
    device = next(model.parameters()).device
    model.eval()
    X_t = torch.from_numpy(np.ascontiguousarray(X)).to(device)
    logits, _ = _eval_pass(model, X_t, batch_size)
    return logits.softmax(-1).cpu().numpy()


def record_training(
    X, labels, num_classes, config=None, needs=(), device=None, progress=None
):
    """Trains once with the recorder, then adds the needs that take their
    own training runs (``cv_probs``: K-fold models; ``calibration``: the
    Detector's run with labels flipped on purpose).

    Args:
        X: inputs already passed through :func:`prepare_inputs`
        labels: (N,) int observed labels
        num_classes: K
        config (None): a :class:`TrainingConfig`
        needs (()): needs from :data:`NEEDS`
        device (None): torch device
        progress (None): a callable ``(fraction, message)``

    Returns:
        a :class:`TrainingRecord`
    """
    from sklearn.model_selection import StratifiedKFold

    from fiftyone_hardness.methods.label_noise import inject_label_noise

    config = config or TrainingConfig()
    config.validate()
    needs = frozenset(needs) | _ALWAYS
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    check_labels(
        labels, num_classes, min_per_class=2, what="Training dynamics"
    )
    if n < 4:
        raise HardnessError("Training dynamics need at least 4 samples")

    # progress units: main run 1, each fold (K-1)/K, calibration run 1
    folds = int(config.cv_folds)
    units = [("main run", 1.0)]
    if "cv_probs" in needs:
        units += [
            ("fold %d/%d" % (f + 1, folds), (folds - 1.0) / folds)
            for f in range(folds)
        ]
    if "calibration" in needs:
        units.append(("calibration run", 1.0))
    total = sum(u[1] for u in units)
    bounds = np.concatenate([[0.0], np.cumsum([u[1] for u in units])]) / total

    def span(i):
        return (float(bounds[i]), float(bounds[i + 1]))

    def reporter(i):
        if progress is None:
            return None
        name = units[i][0]
        return lambda f, m="": progress(f, "%s: %s" % (name, m))

    inner = needs - {"cv_probs", "calibration"}
    _, record = train(
        X,
        labels,
        num_classes,
        config,
        inner,
        device,
        reporter(0),
        progress_span=span(0),
    )
    unit = 1

    if "cv_probs" in needs:
        counts = np.bincount(labels, minlength=num_classes)
        splits = min(folds, int(counts[counts > 0].min()))
        splitter = StratifiedKFold(
            n_splits=max(2, splits), shuffle=True, random_state=config.seed
        )
        cv_probs = np.zeros((n, num_classes), dtype=np.float64)
        for train_idx, test_idx in splitter.split(np.zeros(n), labels):
            fold_config = copy.copy(config)
            model, _ = train(
                X[train_idx],
                labels[train_idx],
                num_classes,
                fold_config,
                device=device,
                progress=reporter(unit),
                record=False,
                progress_span=span(unit),
            )
            cv_probs[test_idx] = predict_probs(
                model, X[test_idx], config.eval_batch_size
            )
            unit += 1
        unit = 1 + folds
        record.cv_probs = cv_probs

    if "calibration" in needs:
        # clean-looking: the main run holds the observed label with mean
        # probability >= 1/2
        confidence = record.label_probs.mean(0)
        clean = confidence >= 0.5
        if clean.sum() < 10:
            clean = confidence >= np.median(confidence)
        candidates = np.flatnonzero(clean)
        count = int(round(float(config.detector_flip_rate) * n))
        count = max(2, min(count, len(candidates) // 2))
        flipped_sub, mask_sub = inject_label_noise(
            labels[candidates],
            num_classes,
            count / len(candidates),
            kind="symmetric",
            seed=config.seed + 5,
        )
        calib_labels = labels.copy()
        calib_labels[candidates] = flipped_sub
        flipped = np.zeros(n, dtype=bool)
        flipped[candidates[mask_sub]] = True
        calib_config = copy.copy(config)
        calib_config.seed = config.seed + 1000
        _, calib = train(
            X,
            calib_labels,
            num_classes,
            calib_config,
            (),
            device,
            reporter(unit),
            progress_span=span(unit),
        )
        record.calib_probs = calib.label_probs
        record.calib_flipped = flipped
        record.calib_clean = clean & ~flipped

    record.needs = needs
    return record


# ------------------------------------------------------------------ cache

_CACHE_SIZE = 4
_RECORD_CACHE = collections.OrderedDict()


def training_key(X, labels, num_classes, config, device):
    """A hash of the data and the training setup: equal keys train equal
    models."""
    h = hashlib.sha1()
    X = np.ascontiguousarray(X)
    h.update(str(X.shape).encode())
    h.update(X.tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(
        json.dumps(
            {
                "config": asdict(config),
                "k": int(num_classes),
                "device": str(device),
            },
            sort_keys=True,
        ).encode()
    )
    return h.hexdigest()


def get_record(
    X,
    labels,
    num_classes,
    config,
    needs,
    device=None,
    progress=None,
    use_cache=True,
):
    """Returns a :class:`TrainingRecord` with ``needs``, reusing the
    in-process cache when the same data were trained with the same setup
    (recording more needs retrains with the union of needs; the model is
    the same since recording never changes it).

    Args:
        X: inputs already passed through :func:`prepare_inputs`
        labels: (N,) int observed labels
        num_classes: K
        config: a :class:`TrainingConfig`
        needs: needs from :data:`NEEDS`
        device (None): torch device
        progress (None): a callable ``(fraction, message)``
        use_cache (True): whether to read and fill the cache

    Returns:
        a tuple ``(record, cached)``
    """
    device = select_device(device)
    needs = frozenset(needs) | _ALWAYS
    key = training_key(X, labels, num_classes, config, device)
    cached = _RECORD_CACHE.get(key) if use_cache else None
    if cached is not None and needs <= cached.needs:
        _RECORD_CACHE.move_to_end(key)
        if progress is not None:
            progress(1.0, "reusing the recorded training run")
        return cached, True
    if cached is not None:
        needs = needs | cached.needs
    record = record_training(
        X, labels, num_classes, config, needs, device, progress
    )
    if use_cache:
        _RECORD_CACHE[key] = record
        _RECORD_CACHE.move_to_end(key)
        while len(_RECORD_CACHE) > _CACHE_SIZE:
            _RECORD_CACHE.popitem(last=False)
    return record, False


def clear_cache():
    """Empties the in-process cache of training records."""
    _RECORD_CACHE.clear()


# ----------------------------------------------------------------- images


def load_images(filepaths, image_size=32, channels="auto"):
    """Loads images as an (N, C, S, S) float32 array in [0, 1].

    Args:
        filepaths: the image paths
        image_size (32): the side every image is resized to
        channels ("auto"): ``"gray"``, ``"rgb"``, or ``"auto"`` (gray when
            every image is single-channel)

    Raises:
        HardnessError: an unreadable image
    """
    from PIL import Image

    if channels not in ("auto", "gray", "rgb"):
        raise HardnessError("channels must be 'auto', 'gray' or 'rgb'")
    images = []
    modes = set()
    for path in filepaths:
        try:
            with Image.open(path) as image:
                modes.add(image.mode)
                image = image.convert("RGB").resize(
                    (image_size, image_size), Image.BILINEAR
                )
                images.append(np.asarray(image, dtype=np.float32) / 255.0)
        except Exception as e:
            raise HardnessError("Cannot read image %s: %s" % (path, e))
    if not images:
        raise HardnessError("No images to load")
    array = np.stack(images).transpose(0, 3, 1, 2)
    gray = channels == "gray" or (
        channels == "auto" and modes <= {"L", "1", "I", "I;16", "F"}
    )
    if gray:
        array = array.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(array)


# --------------------------------------------------------------- adapters

_CONFIG_FIELDS = set(TrainingConfig.__dataclass_fields__) - {"model"}


def compute_methods(record, methods=None, noise_rate=None):
    """Computes training-dynamics methods on a record.

    Args:
        record: a :class:`TrainingRecord`
        methods (None): method names (None for all 13)
        noise_rate (None): the noise rate of the top-fraction flags; None
            for the AUM-based estimate

    Returns:
        a dict mapping each name to a
        :class:`fiftyone_hardness.methods.dynamics.scores.MethodScore`
    """
    from fiftyone_hardness.methods.dynamics import scores as fhs

    return {
        m.name: m.compute(record, noise_rate=noise_rate)
        for m in fhs.get_methods(methods)
    }


def load_inputs(
    data,
    embeddings_field=None,
    on="embeddings",
    image_size=32,
    channels="auto",
):
    """Reads the training inputs of ``data``: its embeddings field, or its
    images (``on="images"``)."""
    if on == "images":
        return load_images(data.filepaths, image_size, channels)
    if on != "embeddings":
        raise HardnessError(
            "on must be 'embeddings' (an MLP on an embeddings field) or "
            "'images' (a small CNN on the pixels), got %r" % (on,)
        )
    if not embeddings_field:
        raise HardnessError(
            "Training dynamics need inputs: pass embeddings_field=... (a "
            "vector field, e.g. from fiftyone_hardness.compute_embeddings) "
            "or on='images' to train a small CNN on the images"
        )
    return data.embeddings(embeddings_field)


def _record_for(
    data,
    methods,
    embeddings_field,
    on,
    image_size,
    channels,
    device,
    use_cache,
    kwargs,
):
    from fiftyone_hardness.methods.dynamics import scores as fhs

    unknown = set(kwargs) - _CONFIG_FIELDS
    if unknown:
        raise HardnessError(
            "Unknown training-dynamics parameter(s) %s; known: %s"
            % (", ".join(sorted(unknown)), ", ".join(sorted(_CONFIG_FIELDS)))
        )
    config = TrainingConfig(model="cnn" if on == "images" else "mlp", **kwargs)
    config.validate()
    instances = fhs.get_methods(methods)
    check_labels(
        data.labels,
        data.num_classes,
        min_per_class=2,
        what="Training dynamics",
    )
    X = load_inputs(data, embeddings_field, on, image_size, channels)
    X = prepare_inputs(X, config)
    record, cached = get_record(
        X,
        data.labels,
        data.num_classes,
        config,
        fhs.needs_of(instances),
        device=device,
        progress=data.progress,
        use_cache=use_cache,
    )
    return record, [m.name for m in instances], config, cached


def _common_results(record, config, cached, on, embeddings_field):
    return {
        "train_accuracy": list(record.train_accuracy),
        "eval_accuracy": list(record.eval_accuracy),
        "training_config": dict(
            asdict(config), on=on, embeddings_field=embeddings_field
        ),
        "reused_record": bool(cached),
    }


def run_dynamics(
    data,
    embeddings_field=None,
    on="embeddings",
    methods=None,
    noise_rate=None,
    image_size=32,
    channels="auto",
    device=None,
    use_cache=True,
    **training,
):
    """Trains once with the recorder and computes the training-dynamics
    methods (all 13 by default).

    Writes, for each method ``m``, the suffixes ``{m}_score`` (higher =
    harder) and ``{m}_flag``, plus extras: ``aum_value``, ``data_iq_group``
    (easy / ambiguous / hard), ``data_iq_confidence``,
    ``data_iq_aleatoric``, ``data_maps_confidence``,
    ``data_maps_variability``, ``forgetting_count``,
    ``conf_agree_agreement``.

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData`
        embeddings_field (None): the vector field the MLP trains on
        on ("embeddings"): ``"embeddings"`` (MLP) or ``"images"`` (a small
            CNN on the images, resized to ``image_size``)
        methods (None): method names; None for all 13
        noise_rate (None): the noise rate of the top-fraction flags; None
            for the AUM-based estimate
        image_size (32): image side for ``on="images"``
        channels ("auto"): ``"gray"``, ``"rgb"`` or ``"auto"``
        device (None): torch device; cuda when available
        use_cache (True): reuse a record of the same data and setup
        **training: :class:`TrainingConfig` fields (``epochs``, ``lr``,
            ``batch_size``, ``hidden``, ``dropout``, ``seed``, ...)

    Returns:
        a :class:`fiftyone_hardness.methods.base.MethodOutput`
    """
    record, names, config, cached = _record_for(
        data,
        methods,
        embeddings_field,
        on,
        image_size,
        channels,
        device,
        use_cache,
        training,
    )
    computed = compute_methods(record, names, noise_rate)
    fields = {}
    per_method = {}
    for name, out in computed.items():
        fields["%s_score" % name] = out.score
        fields["%s_flag" % name] = out.flag
        for suffix, values in out.extras.items():
            fields["%s_%s" % (name, suffix)] = values
        per_method[name] = out.results
        per_method[name]["class_scores"] = class_means(
            out.score, data.labels, data.classes
        )
    flags = np.stack([out.flag for out in computed.values()])
    ranks = np.stack(
        [_rank_percentile(out.score) for out in computed.values()]
    ).mean(0)
    estimate = noise_rate
    if estimate is None:
        from fiftyone_hardness.methods.dynamics.scores import (
            estimate_noise_rate,
        )

        estimate = estimate_noise_rate(record)
    results = {
        "methods": per_method,
        "noise_rate": float(estimate),
        "threshold": None,
        "num_flagged": int((flags.mean(0) > 0.5).sum()),
        "class_scores": class_means(ranks, data.labels, data.classes),
    }
    results.update(
        _common_results(record, config, cached, on, embeddings_field)
    )
    return MethodOutput(fields=fields, results=results)


def _run_single(
    name,
    data,
    embeddings_field=None,
    on="embeddings",
    noise_rate=None,
    image_size=32,
    channels="auto",
    device=None,
    use_cache=True,
    **training,
):
    record, _, config, cached = _record_for(
        data,
        [name],
        embeddings_field,
        on,
        image_size,
        channels,
        device,
        use_cache,
        training,
    )
    out = compute_methods(record, [name], noise_rate)[name]
    fields = {"score": out.score, "flag": out.flag}
    fields.update(out.extras)
    results = dict(out.results)
    results.update(
        _common_results(record, config, cached, on, embeddings_field)
    )
    return MethodOutput(fields=fields, results=results)


def _single_runner(name):
    from fiftyone_hardness.methods.dynamics import scores as fhs

    method = fhs.METHODS[name]

    def run(data, **kwargs):
        return _run_single(name, data, **kwargs)

    run.__name__ = run.__qualname__ = "run_%s" % name
    run.__doc__ = (
        "Computes the '%s' training-dynamics method (%s) alone, writing "
        "``score``, ``flag`` and its extras; takes the parameters of "
        ":func:`run_dynamics` except ``methods``. Reuses a cached record "
        "of the same data and training setup." % (name, method.description)
    )
    return run


def _rank_percentile(scores):
    from scipy.stats import rankdata

    return (rankdata(scores) - 1) / max(len(scores) - 1, 1)


run_aum = _single_runner("aum")
run_data_iq = _single_runner("data_iq")
run_data_maps = _single_runner("data_maps")
run_el2n = _single_runner("el2n")
run_grand = _single_runner("grand")
run_forgetting = _single_runner("forgetting")
run_loss = _single_runner("loss")
run_prototypicality = _single_runner("prototypicality")
run_vog = _single_runner("vog")
run_allsh = _single_runner("allsh")
run_conf_agree = _single_runner("conf_agree")
run_detector = _single_runner("detector")
