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
  parameter-gradient norms at an early epoch (``"grand"``), input gradients
  at a few checkpoints (``"vog"``), both in their cheapest exact form
  (:mod:`fiftyone_hardness.methods.dynamics.gradients`), Monte Carlo
  dropout passes (``"mc_dropout"``) and augmented passes (``"augment"``)
  after the last epoch,
- out-of-sample probabilities of K-fold models trained with the same setup
  (``"cv_probs"``, for confident learning), and the probability
  trajectories of a calibration run with labels flipped on purpose
  (``"calibration"``, for the Detector).

The K-fold models and the calibration run train **alongside** the main
model, as one batched model stepped once per main minibatch
(:mod:`fiftyone_hardness.methods.dynamics.members`), so all 13 methods cost
little more than one training; ``batched_members=False`` trains them one
after another instead (same results up to float rounding).

Every source of randomness has its own ``torch.Generator``: the training
shuffles and dropout masks draw from the training generators only, and the
extra passes and the auxiliary members never consume them, so the trained
weights are identical with the recorder on or off (tested).

Memory. The per-sample arrays of a record are allocated by an
:class:`~fiftyone_hardness.methods.dynamics.storage.ArrayStore`: in memory
up to ``memory_budget_mb``, disk-backed (``np.memmap``) beyond it, float32
either way. With N samples, inputs of D_in floats each, K classes, E
epochs, H hidden units, T MC-dropout and A augmented passes, F folds and a
chunk of C = ``eval_batch_size`` rows, the peak host memory of a recorded
training is about::

    4 N D_in                                   the float32 inputs (shared
                                               by the main model and every
                                               member; prepare_inputs holds
                                               up to 2 more copies briefly)
  + min(R, memory_budget_mb), R = 4 N (E K + E + H + (T + A) K + E + K)
                                               logits, margins, features,
                                               MC / augmented probabilities,
                                               calibration trajectories,
                                               cross-validated probabilities
  + 4 N E + 8 N (F + 1)                        the margins while training,
                                               the members' labels
  + 8 N (3 E + 8)                              scoring: p_e(y~|x) and the
                                               Detector's features of both
                                               runs (float64)
  + O(C (D_in + H + K) (T + 5))                one chunk of eval passes,
                                               per-sample gradients, VoG's
                                               checkpoints (float64)
  + O(F B (D_in + H + K))                      one batched member step
                                               (B = batch_size)

and the same inputs, the (E, N) margins and the parameters on the GPU when
training there. Nothing is N x N, no N x K x E array is ever float64, and
no N x D_in state is kept across epochs (VoG's input gradients are taken
after training, a chunk of samples at a time, from copies of the model
saved at its checkpoints).

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
from fiftyone_hardness.methods.dynamics.gradients import (  # noqa: F401
    input_gradients,
    per_sample_grad_norms,
    vog_variance,
)
from fiftyone_hardness.methods.dynamics.members import (
    MemberOutputs,
    MemberSpec,
    StackedMembers,
    Unstackable,
)
from fiftyone_hardness.methods.dynamics.models import (
    build_model,
    dropouts,
    seeded_generator,
)
from fiftyone_hardness.methods.dynamics.storage import (
    ArrayStore,
    in_memory_bytes,
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

#: the floats of training logits buffered before their margins are taken
_MARGIN_BUFFER = 1 << 20

#: the floats a chunk of a scoring pass over the logits may hold
_SCORE_CHUNK = 1 << 22

_CALIBRATION_RUN = "calibration run"


class TrainingInterrupted(HardnessError):
    """Training stopped before its last epoch (an exception or a keyboard
    interrupt inside the loop); nothing was recorded or written."""


@dataclass
class TrainingRecord:
    """What the recorder collected during one training run.

    The (E, N, K) and (T, N, K) arrays are float32, in memory or
    memory-mapped (:mod:`fiftyone_hardness.methods.dynamics.storage`);
    read them a chunk of samples at a time (:meth:`row_chunks`,
    :meth:`epoch_probs`), as the methods do.

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
            over checkpoints of d log p(y~|x) / d x (or of d z_y~ / d x),
            averaged over input dims
        mc_probs: (T, N, K) MC-dropout probabilities after the last epoch
        aug_probs: (A, N, K) probabilities of augmented inputs
        cv_probs: (N, K) out-of-sample probabilities of K-fold models
        calib_probs: (E, N) p_e(label) trajectories of the calibration run
            (labels flipped on purpose for a random subset)
        calib_flipped: (N,) bool, the Detector's positives: flipped on
            purpose in the calibration run and clean-looking in this run
        calib_clean: (N,) bool, the Detector's negatives: clean-looking
            and not flipped
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
    _label_probs: Optional[np.ndarray] = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def num_epochs(self):
        return self.logits.shape[0]

    @property
    def probs(self):
        """(E, N, K) float64 softmax of :attr:`logits`, all at once: for
        small records; the methods use :meth:`epoch_probs` and
        :attr:`label_probs`."""
        return softmax(self.logits, axis=-1)

    def row_chunks(self, floats_per_row=None):
        """Slices of rows, each a chunk whose (E, rows, K) logits hold
        about 4M floats at most."""
        n = len(self.labels)
        per_row = floats_per_row or self.num_epochs * self.num_classes
        size = max(1, _SCORE_CHUNK // max(int(per_row), 1))
        return [slice(s, min(s + size, n)) for s in range(0, n, size)]

    def epoch_probs(self, epoch, rows=slice(None)):
        """(rows, K) float64 softmax of the logits of epoch ``epoch``."""
        return softmax(self.logits[epoch, rows], axis=-1)

    @property
    def label_probs(self):
        """(E, N) float64 eval-mode probability of the observed label per
        epoch (computed once, a chunk of samples at a time)."""
        if self._label_probs is None:
            e, n = self.logits.shape[:2]
            out = np.empty((e, n), dtype=np.float64)
            for rows in self.row_chunks():
                z = np.asarray(self.logits[:, rows], dtype=np.float64)
                z = z - z.max(axis=-1, keepdims=True)
                ez = np.exp(z)
                own = np.take_along_axis(
                    ez, self.labels[rows][None, :, None], axis=-1
                )[..., 0]
                out[:, rows] = own / ez.sum(axis=-1)
            self._label_probs = out
        return self._label_probs

    def learned(self):
        """(E, N) bool: whether the eval argmax is the observed label."""
        out = np.empty(self.logits.shape[:2], dtype=bool)
        for rows in self.row_chunks():
            out[:, rows] = (
                np.asarray(self.logits[:, rows]).argmax(-1)
                == self.labels[rows][None]
            )
        return out

    def nbytes_in_memory(self):
        """The bytes of this record's arrays held in memory (not counting
        memory-mapped ones)."""
        return in_memory_bytes(
            self.logits,
            self.margins,
            self.features,
            self.mc_probs,
            self.aug_probs,
            self.cv_probs,
            self.calib_probs,
            self._label_probs,
        )


def softmax(z, axis=-1):
    """A numerically stable softmax of a numpy array (float64)."""
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
        # a new array (the caller's is not changed), divided in place
        X = X - mean
        X /= std
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
    model, rec, _ = _fit(
        X,
        labels,
        num_classes,
        config,
        needs,
        select_device(device),
        progress,
        record,
        progress_span,
        ArrayStore(config.memory_budget_mb),
    )
    return model, rec


def _fit(
    X,
    labels,
    num_classes,
    config,
    needs,
    device,
    progress,
    record,
    progress_span,
    store,
    members_of=None,
):
    """:func:`train`, with the store of the record's arrays and
    ``members_of(X_t)``, a callable returning the
    :class:`~fiftyone_hardness.methods.dynamics.members.StackedMembers` to
    step along (None: no members). Returns ``(model, record, members)``.

    Raises:
        Unstackable: from ``members_of``, before the first step
    """
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
        _Recorder(model, X_t, y_t, num_classes, config, needs, device, store)
        if record
        else None
    )
    members = members_of(X_t) if members_of is not None else None
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
                    members,
                )
                if recorder is not None:
                    recorder.on_epoch_end(epoch)
                report(epoch)
            if members is not None:
                # members with more steps than the main model (none with
                # the built-in ones) finish here
                members.outputs()
    except (KeyboardInterrupt, Exception) as e:
        if isinstance(e, HardnessError):
            raise
        raise _interrupted(e, epoch, epochs) from e

    model.eval()
    rec = recorder.finish() if recorder is not None else None
    return model, rec, members


def _train_epoch(
    model, optimizer, X, y, batch_size, shuffle_gen, recorder, epoch, members
):
    """One pass of minibatch updates over the shuffled data; the recorder
    sees each minibatch's training logits (before its update), and each
    update of the main model is followed by one of every member."""
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
        if members is not None:
            members.step()


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

    It only reads the model: eval passes run under ``torch.no_grad``,
    gradients go to activations and inputs (never to ``.grad``), and every
    random draw comes from the recorder's own generators.
    """

    def __init__(self, model, X, y, num_classes, config, needs, device, store):
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
        self.store = store
        n = len(y)
        e = int(config.epochs)
        self.logits = store.empty((e, n, num_classes), np.float32, "logits")
        self.margins = torch.empty((e, n), device=device)
        self.correct = np.zeros(e, dtype=np.int64)
        self._batches = []
        self._buffered = 0
        self.features = None
        self.grad_norms = None
        self.vog_epochs = (
            set(config.vog_indices) if "vog" in self.needs else set()
        )
        self.checkpoints = []
        self.mc_probs = None
        self.aug_probs = None

    def on_batch(self, epoch, idx, logits):
        # kept as is; the margins are computed in one go at the end of the
        # epoch (no extra kernels per minibatch), or when the buffer is full
        self._batches.append((idx, logits))
        self._buffered += logits.numel()
        if self._buffered >= _MARGIN_BUFFER:
            self._record_margins(epoch)

    def on_epoch_end(self, epoch):
        last = epoch == self.config.epochs - 1
        self._record_margins(epoch)
        self.model.eval()
        self._record_eval_pass(epoch, last)
        if "grand" in self.needs and epoch == self.config.early_index:
            self._record_grad_norms()
        if epoch in self.vog_epochs:
            self._save_checkpoint()
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
            self._buffered = 0

    def _record_eval_pass(self, epoch, last):
        if last and "features" in self.needs:
            width = self.model.head.in_features
            self.features = self.store.empty(
                (len(self.y), width), np.float32, "features"
            )
        for start, h, logits in _eval_chunks(
            self.model, self.X, self.config.eval_batch_size
        ):
            rows = slice(start, start + len(logits))
            self.correct[epoch] += int(
                (logits.argmax(-1) == self.y[rows]).sum()
            )
            self.logits[epoch, rows] = logits.float().cpu().numpy()
            if last and self.features is not None:
                self.features[rows] = h.float().cpu().numpy()

    def _record_grad_norms(self):
        self.grad_norms = per_sample_grad_norms(
            self.model, self.X, self.y, self.config.eval_batch_size
        )

    def _save_checkpoint(self):
        self.checkpoints.append(
            {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        )

    def _record_mc_dropout(self):
        self.mc_probs = mc_dropout_probs(
            self.model,
            self.X,
            int(self.config.mc_passes),
            self.config.eval_batch_size,
            seeded_generator(self.device, self.config.seed + _MC_DROPOUT_SEED),
            out=self.store.empty(
                (int(self.config.mc_passes), len(self.y), self.k),
                np.float32,
                "mc_probs",
            ),
            features=self.features,
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
            out=self.store.empty(
                (int(self.config.augment_passes), len(self.y), self.k),
                np.float32,
                "aug_probs",
            ),
        )

    def _vog(self):
        """VoG's variances from the saved checkpoints, a chunk of samples
        at a time."""
        if not self.checkpoints:
            return None
        models = []
        for state in self.checkpoints:
            model = build_model(
                self.config, self.X.shape[1:], self.k, self.device
            )
            model.load_state_dict(state)
            models.append(model.eval())
        return vog_variance(
            models,
            self.X,
            self.y,
            self.config.eval_batch_size,
            self.config.vog_target,
        )

    def finish(self):
        """Returns the :class:`TrainingRecord` of the finished training."""
        labels = self.y.cpu().numpy()
        margins = self.store.empty(self.margins.shape, np.float32, "margins")
        margins[...] = self.margins.cpu().numpy()
        train_acc = (self.margins > 0).float().mean(1).cpu().numpy()
        return TrainingRecord(
            labels=labels,
            num_classes=self.k,
            logits=self.logits,
            margins=margins,
            early_index=self.config.early_index,
            features=self.features,
            grad_norms=_to_numpy(self.grad_norms),
            input_grad_var=self._vog(),
            mc_probs=self.mc_probs,
            aug_probs=self.aug_probs,
            train_accuracy=[float(a) for a in train_acc],
            eval_accuracy=[float(c) / len(labels) for c in self.correct],
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
def _eval_chunks(model, X, batch_size):
    """Eval-mode ``(start, features, logits)`` of each chunk of ``X``."""
    for start in range(0, len(X), int(batch_size)):
        h = model.embed(X[start : start + batch_size])
        yield start, h, model.head(h)


# ------------------------------------ MC-dropout and augmented passes


@torch.no_grad()
def mc_dropout_probs(
    model, X, passes, batch_size, generator, out=None, features=None
):
    """Softmax probabilities of ``passes`` forward passes with dropout on
    (everything else in eval mode), the masks drawn from ``generator``; the
    model's own dropout generators and modes are restored.

    Args:
        out (None): a (passes, N, K) float32 array to fill
        features (None): the eval-mode penultimate features of ``X``,
            (N, H), taken in chunks of ``batch_size``: dropout comes after
            them, so each pass then costs only the last layer (the masks
            are drawn in the same order, the result is the same)

    Returns:
        a (passes, N, K) float32 numpy array
    """
    if out is None:
        out = np.empty((passes, len(X), model.head.out_features), np.float32)
    modules = dropouts(model)
    saved = [m.generator for m in modules]
    model.eval()
    for m in modules:
        m.generator = generator
        m.train()
    try:
        for t in range(passes):
            for s in range(0, len(X), int(batch_size)):
                if features is None:
                    logits = model(X[s : s + batch_size])
                else:
                    h = torch.from_numpy(
                        np.asarray(features[s : s + batch_size])
                    ).to(X.device)
                    logits = model.head(model.dropout(h))
                probs = logits.softmax(-1)
                out[t, s : s + len(probs)] = probs.float().cpu().numpy()
    finally:
        for m, g in zip(modules, saved):
            m.generator = g
            m.eval()
    return out


@torch.no_grad()
def augmented_probs(
    model, X, passes, noise, batch_size, generator, flip, out=None
):
    """Eval-mode softmax probabilities of ``passes`` augmented copies of
    ``X``: Gaussian noise of std ``noise`` (drawn from ``generator``) and,
    with ``flip``, a horizontal flip every other pass.

    Args:
        out (None): a (passes, N, K) float32 array to fill

    Returns:
        a (passes, N, K) float32 numpy array
    """
    if out is None:
        out = np.empty((passes, len(X), model.head.out_features), np.float32)
    model.eval()
    for a in range(passes):
        for s in range(0, len(X), int(batch_size)):
            x = X[s : s + batch_size]
            if flip and a % 2 == 0:
                x = torch.flip(x, dims=(-1,))
            x = x + noise * torch.randn(
                x.shape, generator=generator, device=x.device
            )
            probs = model(x).softmax(-1)
            out[a, s : s + len(probs)] = probs.float().cpu().numpy()
    return out


@torch.no_grad()
def predict_probs(model, X, batch_size=1024):
    """Eval-mode softmax probabilities of ``model`` on ``X`` (numpy in,
    float32 numpy out)."""
    device = next(model.parameters()).device
    model.eval()
    X_t = torch.from_numpy(np.ascontiguousarray(X)).to(device)
    out = np.empty((len(X), model.head.out_features), dtype=np.float32)
    for start, _, logits in _eval_chunks(model, X_t, batch_size):
        probs = logits.softmax(-1)
        out[start : start + len(probs)] = probs.float().cpu().numpy()
    return out


# ------------------------------------------------ the whole recording


def record_training(
    X, labels, num_classes, config=None, needs=(), device=None, progress=None
):
    """Trains once with the recorder, with the models that the needs
    ``cv_probs`` (K-fold models) and ``calibration`` (the Detector's run
    with labels flipped on purpose) ask for trained alongside as one
    batched model (or one after another with
    ``config.batched_members=False``).

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
    device = select_device(device)
    store = ArrayStore(config.memory_budget_mb)
    specs, flipped = _member_specs(labels, num_classes, config, needs)

    args = (X, labels, num_classes, config, needs, device, progress, store)
    outputs = None
    if specs and config.batched_members:
        # None when the members cannot be stacked into one model
        record, outputs = _train_batched(*args, specs)
    if outputs is None:
        record, outputs = _train_sequential(*args, specs)
    _attach_member_outputs(record, outputs, flipped)
    record.needs = needs
    return record


def _train_batched(
    X, labels, num_classes, config, needs, device, progress, store, specs
):
    """The main run with the members stepped alongside; returns
    ``(record, outputs)``, or ``(None, None)`` when the model's layers
    cannot be stacked."""

    def members_of(X_t):
        return StackedMembers(specs, X_t, num_classes, config, device, store)

    try:
        _, record, members = _fit(
            X,
            labels,
            num_classes,
            config,
            needs - _EXTRA_RUNS,
            device,
            progress,
            True,
            (0.0, 1.0),
            store,
            members_of,
        )
    except Unstackable as e:
        # raised before the first step, when the members are built
        logger.info("Training the auxiliary models one after another: %s", e)
        return None, None
    return record, members.outputs()


def _train_sequential(
    X, labels, num_classes, config, needs, device, progress, store, specs
):
    """The main run, then each member's training one after another (the
    path before batching, kept for comparison and for models whose layers
    cannot be stacked); returns ``(record, outputs)``."""
    plan = _ProgressPlan(specs, progress)
    _, record, _ = _fit(
        X,
        labels,
        num_classes,
        config,
        needs - _EXTRA_RUNS,
        device,
        plan.reporter("main run"),
        True,
        plan.span("main run"),
        store,
    )
    return record, _sequential_members(
        specs, X, num_classes, config, device, plan, store
    )


def _member_specs(labels, num_classes, config, needs):
    """The auxiliary trainings the needs ask for: the K folds (``cv_probs``)
    and the calibration run (``calibration``), with the calibration run's
    flipped mask (or None)."""
    specs = []
    if "cv_probs" in needs:
        splits = _fold_splits(labels, num_classes, config)
        for fold, (train_idx, test_idx) in enumerate(splits):
            specs.append(
                MemberSpec(
                    _ProgressPlan.fold_name(fold, len(splits)),
                    int(config.seed),
                    labels,
                    train_rows=train_idx,
                    eval_rows=test_idx,
                )
            )
    flipped = None
    if "calibration" in needs:
        calib_labels, flipped = _calibration_labels(
            labels, num_classes, config
        )
        specs.append(
            MemberSpec(
                _CALIBRATION_RUN,
                int(config.seed) + _CALIBRATION_SEED,
                calib_labels,
                trajectory=True,
            )
        )
    return specs, flipped


def _fold_splits(labels, num_classes, config):
    """Stratified K-fold ``(train_idx, test_idx)`` pairs (fewer folds when
    a class has fewer samples than ``cv_folds``)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=num_classes)
    splits = min(int(config.cv_folds), int(counts[counts > 0].min()))
    splitter = StratifiedKFold(
        n_splits=max(2, splits), shuffle=True, random_state=config.seed
    )
    return list(splitter.split(np.zeros(len(labels)), labels))


def _calibration_labels(labels, num_classes, config):
    """The calibration run's labels: ``detector_flip_rate`` of the samples
    (at least 2), chosen at random, flipped to another class. Returns
    ``(calib_labels, flipped)``.

    The flips are chosen before training, so that the calibration run can
    train alongside the main run; which of them count (the clean-looking
    ones) is decided after it (:func:`_attach_member_outputs`)."""
    from fiftyone_hardness.methods.label_noise import inject_label_noise

    n = len(labels)
    count = min(n, max(2, int(round(float(config.detector_flip_rate) * n))))
    return inject_label_noise(
        labels,
        num_classes,
        count / n,
        kind="symmetric",
        seed=config.seed + _FLIP_SEED,
    )


def _attach_member_outputs(record, outputs, flipped):
    """Puts the members' outputs on the record: the cross-validated
    probabilities, and the calibration trajectories with the Detector's
    positives (flipped and clean-looking in the main run: it holds the
    observed label with mean probability >= 1/2) and negatives
    (clean-looking, not flipped)."""
    if outputs.probs is not None:
        record.cv_probs = outputs.probs
    if flipped is None:
        return
    confidence = record.label_probs.mean(0)
    clean = confidence >= 0.5
    if clean.sum() < 10:
        clean = confidence >= np.median(confidence)
    record.calib_probs = outputs.trajectories[_CALIBRATION_RUN]
    record.calib_flipped = flipped & clean
    record.calib_clean = clean & ~flipped


def _sequential_members(specs, X, num_classes, config, device, plan, store):
    """Trains each member alone with :func:`train`; returns the
    :class:`~fiftyone_hardness.methods.dynamics.members.MemberOutputs`."""
    n = len(X)
    probs = None
    if any(s.eval_rows is not None for s in specs):
        probs = store.zeros((n, num_classes), np.float32, "cv_probs")
    trajectories = {}
    for spec in specs:
        rows = np.arange(n) if spec.train_rows is None else spec.train_rows
        model, rec, _ = _fit(
            X if spec.train_rows is None else X[rows],
            spec.labels[rows],
            num_classes,
            dataclasses.replace(config, seed=spec.seed),
            (),
            device,
            plan.reporter(spec.name),
            spec.trajectory,
            plan.span(spec.name),
            store,
        )
        if spec.trajectory:
            trajectories[spec.name] = rec.label_probs.astype(np.float32)
        if spec.eval_rows is not None:
            probs[spec.eval_rows] = predict_probs(
                model, X[spec.eval_rows], config.eval_batch_size
            )
    return MemberOutputs(probs, trajectories)


class _ProgressPlan(object):
    """Splits the progress range over the training runs of the sequential
    path in proportion to their work: the main run 1, each member the
    fraction of the rows it trains on."""

    def __init__(self, specs, progress):
        units = [("main run", 1.0)] + [
            (
                s.name,
                (
                    1.0
                    if s.train_rows is None
                    else len(s.train_rows) / float(len(s.labels))
                ),
            )
            for s in specs
        ]
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
