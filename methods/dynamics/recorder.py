"""
One seeded training run with a **recorder**, from which every H-CAT
hardness method (:mod:`fiftyone_hardness.methods.dynamics.scores`) computes
its score; see ``docs/methods.md`` section 3.

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

The training setup is a
:class:`fiftyone_hardness.methods.dynamics.config.SingleDynamicsConfig`.
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from fiftyone_hardness.methods.base import HardnessError, select_device
from fiftyone_hardness.methods.dynamics.config import SingleDynamicsConfig
from fiftyone_hardness.methods.dynamics.models import (
    build_model,
    dropouts,
    seeded_generator,
)
from fiftyone_hardness.methods.validation import check_features

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

#: the needs that take training runs of their own (:func:`record_training`)
_EXTRA_RUNS = frozenset(("cv_probs", "calibration"))

# offsets of the seeds of the generators, from the config's seed
_SHUFFLE_SEED = 1
_DROPOUT_SEED = 2
_MC_DROPOUT_SEED = 3
_AUGMENT_SEED = 4
_FLIP_SEED = 5
_CALIBRATION_SEED = 1000


class TrainingInterrupted(HardnessError):
    """Training stopped before its last epoch (an exception or a keyboard
    interrupt inside the loop); nothing was recorded or written."""


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
        config: the training setup
            (:meth:`SingleDynamicsConfig.training_dict`)
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


# ---------------------------------------------------------------- inputs


def prepare_inputs(X, config):
    """Validates and standardizes the inputs.

    Args:
        X: (N, D) vectors for the MLP, or (N, C, H, W) images for the CNN
        config: a :class:`SingleDynamicsConfig` (its ``model`` and
            ``standardize``)

    Returns:
        a float32 numpy array of the same shape

    Raises:
        HardnessError: non-finite values or a wrong number of dimensions
    """
    X = np.asarray(X)
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
    X = check_features(X.reshape(len(X), -1), what="inputs").reshape(X.shape)
    if config.standardize:
        mean = X.mean(axis=axes, keepdims=True)
        std = X.std(axis=axes, keepdims=True)
        std[std < 1e-6] = 1.0
        X = (X - mean) / std
    return np.ascontiguousarray(X, dtype=np.float32)


# -------------------------------------------------------------- training


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
        config (None): a :class:`SingleDynamicsConfig`; None for the
            defaults
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
    config = config or SingleDynamicsConfig()
    device = select_device(device)
    labels = np.asarray(labels, dtype=np.int64)
    model = build_model(config, X.shape[1:], num_classes, device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=float(config.lr),
        weight_decay=float(config.weight_decay),
    )
    shuffle_gen = seeded_generator("cpu", config.seed + _SHUFFLE_SEED)
    dropout_gen = seeded_generator(device, config.seed + _DROPOUT_SEED)
    for module in dropouts(model):
        module.generator = dropout_gen

    X_t = torch.from_numpy(X).to(device)
    y_t = torch.from_numpy(labels).to(device)
    recorder = (
        _Recorder(model, X_t, y_t, num_classes, config, needs, device)
        if record
        else None
    )
    epochs = int(config.epochs)
    report = _epoch_reporter(progress, progress_span, epochs)
    epoch = 0
    try:
        with _deterministic_cudnn():
            for epoch in range(epochs):
                _train_epoch(
                    model,
                    optimizer,
                    X_t,
                    y_t,
                    int(config.batch_size),
                    shuffle_gen,
                    recorder,
                    epoch,
                )
                if recorder is not None:
                    recorder.on_epoch_end(epoch)
                report(epoch)
    except (KeyboardInterrupt, Exception) as e:
        if isinstance(e, HardnessError):
            raise
        raise _interrupted(e, epoch, epochs) from e

    model.eval()
    return model, (recorder.finish() if recorder is not None else None)


def _train_epoch(
    model, optimizer, X, y, batch_size, shuffle_gen, recorder, epoch
):
    """One pass of minibatch updates over the shuffled data; the recorder
    sees each minibatch's training logits (before its update)."""
    model.train()
    n = len(y)
    order = torch.randperm(n, generator=shuffle_gen).to(X.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        logits = model(X[idx])
        loss = F.cross_entropy(logits, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if recorder is not None:
            recorder.on_batch(epoch, idx, logits.detach())


def _epoch_reporter(progress, progress_span, epochs):
    lo, hi = progress_span

    def report(epoch):
        if progress is not None:
            progress(
                lo + (hi - lo) * (epoch + 1) / epochs,
                "epoch %d/%d" % (epoch + 1, epochs),
            )

    return report


def _interrupted(error, epoch, epochs):
    what = (
        "interrupted"
        if isinstance(error, KeyboardInterrupt)
        else "failed (%s: %s)" % (type(error).__name__, error)
    )
    return TrainingInterrupted(
        "Training %s at epoch %d of %d; nothing was recorded or written. "
        "Run it again to completion" % (what, epoch + 1, epochs)
    )


def _deterministic_cudnn():
    # cuDNN's fastest convolution backward kernels are not deterministic
    return torch.backends.cudnn.flags(
        enabled=torch.backends.cudnn.enabled,
        benchmark=False,
        deterministic=True,
    )


# -------------------------------------------------------------- recorder


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
        last = epoch == self.config.epochs - 1
        self._record_margins(epoch)
        self.model.eval()
        self._record_eval_pass(epoch, last)
        if "grand" in self.needs and epoch == self.config.early_index:
            self._record_grad_norms()
        if self.vog is not None and epoch in self.vog_epochs:
            self._record_input_gradients()
        if last and "mc_dropout" in self.needs:
            self._record_mc_dropout()
        if last and "augment" in self.needs:
            self._record_augmented()

    def _record_margins(self, epoch):
        if self._batches:
            idx = torch.cat([b[0] for b in self._batches])
            logits = torch.cat([b[1] for b in self._batches])
            self.margins[epoch, idx] = margins_of(logits, self.y[idx])
            self._batches = []

    def _record_eval_pass(self, epoch, last):
        want_features = last and "features" in self.needs
        logits, features = _eval_pass(
            self.model, self.X, self.config.eval_batch_size, want_features
        )
        self.logits[epoch] = logits.float().cpu().numpy()
        if want_features:
            self.features = features

    def _record_grad_norms(self):
        self.grad_norms = per_sample_grad_norms(
            self.model, self.X, self.y, self.config.eval_batch_size
        )

    def _record_input_gradients(self):
        self.vog.update(
            input_gradients(
                self.model,
                self.X,
                self.y,
                self.config.eval_batch_size,
                self.config.vog_target,
            )
        )

    def _record_mc_dropout(self):
        self.mc_probs = mc_dropout_probs(
            self.model,
            self.X,
            int(self.config.mc_passes),
            self.config.eval_batch_size,
            seeded_generator(self.device, self.config.seed + _MC_DROPOUT_SEED),
        )

    def _record_augmented(self):
        self.aug_probs = augmented_probs(
            self.model,
            self.X,
            int(self.config.augment_passes),
            float(self.config.augment_noise),
            self.config.eval_batch_size,
            seeded_generator(self.device, self.config.seed + _AUGMENT_SEED),
            flip=self.config.model == "cnn" and self.config.augment_flip,
        )

    def finish(self):
        """Returns the :class:`TrainingRecord` of the finished training."""
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
            config=self.config.training_dict(),
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


# ------------------------------------------------ per-sample gradients


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


# ------------------------------------------------------ input gradients


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


# ------------------------------------ MC-dropout and augmented passes


@torch.no_grad()
def mc_dropout_probs(model, X, passes, batch_size, generator):
    """Softmax probabilities of ``passes`` forward passes with dropout on
    (everything else in eval mode), the masks drawn from ``generator``; the
    model's own dropout generators and modes are restored.

    Returns:
        a (passes, N, K) CPU tensor
    """
    modules = dropouts(model)
    saved = [m.generator for m in modules]
    model.eval()
    for m in modules:
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
        for m, g in zip(modules, saved):
            m.generator = g
            m.eval()
    return probs


@torch.no_grad()
def augmented_probs(model, X, passes, noise, batch_size, generator, flip):
    """Eval-mode softmax probabilities of ``passes`` augmented copies of
    ``X``: Gaussian noise of std ``noise`` (drawn from ``generator``) and,
    with ``flip``, a horizontal flip every other pass.

    Returns:
        a (passes, N, K) CPU tensor
    """
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


# ------------------------------------------------ the whole recording


def record_training(
    X, labels, num_classes, config=None, needs=(), device=None, progress=None
):
    """Trains once with the recorder, then adds the needs that take their
    own training runs (``cv_probs``: K-fold models; ``calibration``: the
    Detector's run with labels flipped on purpose).

    Args:
        X: inputs already passed through :func:`prepare_inputs`
        labels: (N,) int observed labels, already validated (at least 2
            samples per class:
            :func:`fiftyone_hardness.methods.validation.check_labels`)
        num_classes: K
        config (None): a :class:`SingleDynamicsConfig`; None for the
            defaults
        needs (()): needs from :data:`NEEDS`
        device (None): torch device
        progress (None): a callable ``(fraction, message)``

    Returns:
        a :class:`TrainingRecord`
    """
    config = config or SingleDynamicsConfig()
    needs = frozenset(needs) | _ALWAYS
    labels = np.asarray(labels, dtype=np.int64)
    plan = _ProgressPlan(config, needs, progress)

    _, record = train(
        X,
        labels,
        num_classes,
        config,
        needs - _EXTRA_RUNS,
        device,
        plan.reporter("main run"),
        progress_span=plan.span("main run"),
    )
    if "cv_probs" in needs:
        record.cv_probs = _cross_validated_probs(
            X, labels, num_classes, config, device, plan
        )
    if "calibration" in needs:
        _add_calibration_run(
            record, X, labels, num_classes, config, device, plan
        )
    record.needs = needs
    return record


class _ProgressPlan(object):
    """Splits the progress range over the training runs of
    :func:`record_training` in proportion to their work: the main run 1,
    each of the K folds (K-1)/K, the calibration run 1."""

    def __init__(self, config, needs, progress):
        folds = int(config.cv_folds)
        units = [("main run", 1.0)]
        if "cv_probs" in needs:
            units += [
                (self.fold_name(f, folds), (folds - 1.0) / folds)
                for f in range(folds)
            ]
        if "calibration" in needs:
            units.append(("calibration run", 1.0))
        weights = np.array([w for _, w in units])
        bounds = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
        self._spans = {
            name: (float(bounds[i]), float(bounds[i + 1]))
            for i, (name, _) in enumerate(units)
        }
        self._progress = progress

    @staticmethod
    def fold_name(fold, folds):
        return "fold %d/%d" % (fold + 1, folds)

    def span(self, name):
        """The fraction range of the run ``name``."""
        return self._spans[name]

    def reporter(self, name):
        """A progress callback that prefixes messages with ``name``."""
        if self._progress is None:
            return None
        progress = self._progress
        return lambda f, m="": progress(f, "%s: %s" % (name, m))


def _cross_validated_probs(X, labels, num_classes, config, device, plan):
    """Out-of-sample probabilities of stratified K-fold models trained with
    the same setup (without recording), for confident learning."""
    from sklearn.model_selection import StratifiedKFold

    n = len(labels)
    folds = int(config.cv_folds)
    counts = np.bincount(labels, minlength=num_classes)
    splits = min(folds, int(counts[counts > 0].min()))
    splitter = StratifiedKFold(
        n_splits=max(2, splits), shuffle=True, random_state=config.seed
    )
    cv_probs = np.zeros((n, num_classes), dtype=np.float64)
    for fold, (train_idx, test_idx) in enumerate(
        splitter.split(np.zeros(n), labels)
    ):
        name = plan.fold_name(fold, folds)
        model, _ = train(
            X[train_idx],
            labels[train_idx],
            num_classes,
            config,
            device=device,
            progress=plan.reporter(name),
            record=False,
            progress_span=plan.span(name),
        )
        cv_probs[test_idx] = predict_probs(
            model, X[test_idx], config.eval_batch_size
        )
    return cv_probs


def _add_calibration_run(record, X, labels, num_classes, config, device, plan):
    """The Detector's calibration run: flips a fraction of the
    clean-looking samples on purpose, trains again (another seed) and keeps
    the p_e(label) trajectories, which flipped and which clean."""
    from fiftyone_hardness.methods.label_noise import inject_label_noise

    n = len(labels)
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
        seed=config.seed + _FLIP_SEED,
    )
    calib_labels = labels.copy()
    calib_labels[candidates] = flipped_sub
    flipped = np.zeros(n, dtype=bool)
    flipped[candidates[mask_sub]] = True
    _, calib = train(
        X,
        calib_labels,
        num_classes,
        dataclasses.replace(config, seed=config.seed + _CALIBRATION_SEED),
        (),
        device,
        plan.reporter("calibration run"),
        progress_span=plan.span("calibration run"),
    )
    record.calib_probs = calib.label_probs
    record.calib_flipped = flipped
    record.calib_clean = clean & ~flipped
