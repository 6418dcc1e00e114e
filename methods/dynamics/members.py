"""
The auxiliary models of the training-dynamics recorder, trained alongside
the main model as **one batched model**: the cross-validation folds of
cleanlab's out-of-sample probabilities and the Detector's calibration run
(labels flipped on purpose). See ``docs/methods.md`` section 3.

Each auxiliary model is a *member*: the same architecture and training
setup as the main model, its own seed, its own training rows and labels.
:class:`StackedMembers` holds the M members as stacked weights, a linear
layer's as ``(M, fan_in, fan_out)`` run with one ``torch.baddbmm``, a
convolution's as one grouped convolution (``groups=M``), the way
:mod:`fiftyone_hardness.methods.rer.autoencoders` batches its class
autoencoders. Each call of :meth:`StackedMembers.step` (once per main
minibatch) steps every member on its own minibatch: the loss is the sum of
the members' mean losses over their own rows, and the update is Adam's,
elementwise, so this is M independent trainings done at once. Each member
draws its shuffles and dropout masks from its own generators, seeded as
its sequential training would seed them, and keeps its own epoch
boundaries: a member equals, up to float rounding, the model that
:func:`fiftyone_hardness.methods.dynamics.recorder.train` trains with its
rows, labels and seed (tested). Members run for different numbers of steps
(a fold sees fewer rows); they are ordered so that the active ones are
always a prefix of the stack, and finished members cost nothing.

The main model stays its own module with its own optimizer and
generators: the members never touch them, so the main model is exactly
the one trained without them.
"""

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fiftyone_hardness.methods.dynamics.models import (
    build_model,
    seeded_generator,
)

logger = logging.getLogger(__name__)

# offsets of the members' generator seeds, as in recorder.train
_SHUFFLE_SEED = 1
_DROPOUT_SEED = 2

_BETA1 = 0.9
_BETA2 = 0.999
_EPS = 1e-8


class Unstackable(Exception):
    """The model has a layer :class:`StackedMembers` cannot stack."""


@dataclass
class MemberSpec:
    """One auxiliary training.

    Attributes:
        name: for messages (``"fold 1/3"``, ``"calibration run"``)
        seed: the seed of its initialization, shuffles and dropout
        labels: (N,) the labels it trains on
        train_rows: the rows it trains on (None: all N)
        eval_rows: the rows whose final eval-mode probabilities it returns
            (None: none)
        trajectory: whether it records, after each epoch, the eval-mode
            probability of its own label for all N rows
    """

    name: str
    seed: int
    labels: np.ndarray
    train_rows: Optional[np.ndarray] = None
    eval_rows: Optional[np.ndarray] = None
    trajectory: bool = False


@dataclass
class MemberOutputs:
    """What the members return.

    Attributes:
        probs: (N, K) float32, each member's final probabilities at its
            ``eval_rows`` (zeros elsewhere), or None if no member has
            eval rows
        trajectories: name -> (E, N) float32 p_e(own label) per epoch
    """

    probs: Optional[np.ndarray]
    trajectories: dict


# ----------------------------------------------------------- the layers


@dataclass
class _Layer:
    kind: str
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    #: rows of weight / bias per member (linear: 1, conv: out channels)
    per_member: int = 1
    module: Optional[nn.Module] = None


def _stack_layers(models):
    """The layers of ``models`` (same architecture) with stacked weights:
    returns ``(body, head)``."""
    template = models[0]
    body = [
        _stack_layer(name, module, models)
        for name, module in template.body.named_children()
    ]
    head = _stack_layer("head", template.head, models, prefix="")
    return body, head


def _stack_layer(name, module, models, prefix="body."):
    def weights(attr):
        return [
            getattr(m.get_submodule(prefix + name), attr).detach()
            for m in models
        ]

    if isinstance(module, nn.Linear):
        weight = torch.stack([w.t() for w in weights("weight")])
        bias = torch.stack([b[None] for b in weights("bias")])
        return _Layer("linear", weight.contiguous(), bias.contiguous())
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise Unstackable("conv padding %r" % (module.padding,))
        return _Layer(
            "conv",
            torch.cat(weights("weight")).contiguous(),
            torch.cat(weights("bias")).contiguous(),
            per_member=module.out_channels,
            module=module,
        )
    if isinstance(module, (nn.ReLU, nn.MaxPool2d, nn.Flatten)):
        if isinstance(module, nn.Flatten) and module.start_dim != 1:
            raise Unstackable("Flatten(start_dim=%d)" % module.start_dim)
        if list(module.parameters()):
            raise Unstackable(type(module).__name__)
        return _Layer(type(module).__name__.lower(), module=module)
    raise Unstackable(type(module).__name__)


def _apply(layer, x, lo, hi, grouped, params):
    """One layer on the activations of members ``lo:hi``.

    ``x`` is member-major ``(k, B, ...)``, or batch-major with the
    members' channels side by side, ``(B, k * C, H, W)``, when
    ``grouped`` (between the convolutions and the flatten)."""
    k = hi - lo
    if layer.kind == "linear":
        weight, bias = params
        return torch.baddbmm(bias, x, weight), False
    if layer.kind == "conv":
        weight, bias = params
        if not grouped:
            x = x.transpose(0, 1).reshape(
                x.shape[1], k * x.shape[2], *x.shape[3:]
            )
        m = layer.module
        x = F.conv2d(
            x, weight, bias, m.stride, m.padding, m.dilation, groups=k
        )
        return x, True
    if layer.kind == "relu":
        return torch.relu(x), grouped
    if layer.kind == "maxpool2d":
        if not grouped:
            shape = x.shape
            x = layer.module(x.reshape(-1, *shape[2:]))
            return x.reshape(shape[0], shape[1], *x.shape[1:]), False
        return layer.module(x), True
    if layer.kind == "flatten":
        if grouped:
            return x.reshape(x.shape[0], k, -1).transpose(0, 1), False
        return x.reshape(x.shape[0], x.shape[1], -1), False
    raise Unstackable(layer.kind)


# ------------------------------------------------------------ members


class _Member(object):
    """The schedule of one member: its rows, its shuffles, its epochs."""

    def __init__(self, spec, num_rows, batch_size, epochs, device):
        self.spec = spec
        rows = (
            np.arange(num_rows)
            if spec.train_rows is None
            else np.asarray(spec.train_rows)
        )
        self.rows = torch.from_numpy(rows.astype(np.int64)).to(device)
        self.batch_size = batch_size
        self.epochs = epochs
        self.steps_per_epoch = math.ceil(len(rows) / batch_size)
        self.total_steps = self.steps_per_epoch * epochs
        self.shuffle_gen = seeded_generator("cpu", spec.seed + _SHUFFLE_SEED)
        self.dropout_gen = seeded_generator(device, spec.seed + _DROPOUT_SEED)
        self.epoch = 0
        self.position = 0
        self.order = None

    def next_batch(self):
        """The global row indices of this member's next minibatch."""
        if self.order is None:
            perm = torch.randperm(len(self.rows), generator=self.shuffle_gen)
            self.order = self.rows[perm.to(self.rows.device)]
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def end_of_epoch(self):
        """Whether the last batch ended an epoch (then starts the next)."""
        if self.position < len(self.rows):
            return False
        self.epoch += 1
        self.position = 0
        self.order = None
        return True


class StackedMembers(object):
    """The auxiliary members as one batched model, trained with Adam.

    Args:
        specs: the :class:`MemberSpec` of each member
        X: the (N, ...) input tensor (shared with the main model)
        num_classes: K
        config: the main model's
            :class:`fiftyone_hardness.methods.dynamics.config.SingleDynamicsConfig`
            (each member replaces only its seed)
        device: the torch device
        store: a :class:`fiftyone_hardness.methods.dynamics.storage.ArrayStore`
            for the outputs

    Raises:
        Unstackable: a layer that cannot be stacked (the caller trains the
            members one after another instead)
    """

    def __init__(self, specs, X, num_classes, config, device, store):
        self.X = X
        self.k = num_classes
        self.config = config
        self.device = device
        self.store = store
        self.dropout = float(config.dropout)
        self.members = self._schedule(specs)
        self.labels = torch.from_numpy(
            np.stack(
                [np.asarray(m.spec.labels, np.int64) for m in self.members]
            )
        ).to(device)
        self._stack_weights()
        self.steps = 0
        self._outputs = self._allocate_outputs(len(X), int(config.epochs))

    def _schedule(self, specs):
        """The members, longest training first: the active members are
        then always a prefix of the stack."""
        members = [
            _Member(
                s,
                len(self.X),
                int(self.config.batch_size),
                int(self.config.epochs),
                self.device,
            )
            for s in specs
        ]
        return sorted(members, key=lambda m: -m.total_steps)

    def _stack_weights(self):
        """Builds each member's model with its seed (the initial weights of
        its sequential training), stacks their layers, and zeroes Adam's
        state."""
        models = [
            build_model(
                dataclasses.replace(self.config, seed=m.spec.seed),
                self.X.shape[1:],
                self.k,
                self.device,
            )
            for m in self.members
        ]
        self.body, self.head = _stack_layers(models)
        layers = self.body + [self.head]
        self.params = [
            t
            for layer in layers
            for t in (layer.weight, layer.bias)
            if t is not None
        ]
        self._per_member = [
            layer.per_member
            for layer in layers
            for t in (layer.weight, layer.bias)
            if t is not None
        ]
        self._exp_avg = [torch.zeros_like(p) for p in self.params]
        self._exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @property
    def active(self):
        """The number of members still training (a prefix)."""
        return sum(m.epoch < m.epochs for m in self.members)

    # --------------------------------------------------------- outputs

    def _allocate_outputs(self, n, epochs):
        probs = None
        if any(m.spec.eval_rows is not None for m in self.members):
            probs = self.store.zeros((n, self.k), np.float32, "cv_probs")
        trajectories = {
            m.spec.name: self.store.empty(
                (epochs, n), np.float32, "calib_probs"
            )
            for m in self.members
            if m.spec.trajectory
        }
        return MemberOutputs(probs, trajectories)

    def outputs(self):
        """The :class:`MemberOutputs`, once every member has finished."""
        while self.active:
            self.step()
        return self._outputs

    # -------------------------------------------------------- training

    def step(self):
        """One minibatch update of every active member."""
        k = self.active
        if not k:
            return
        batches = [m.next_batch() for m in self.members[:k]]
        leaves = [
            self._slice(i, 0, k).detach().requires_grad_(True)
            for i in range(len(self.params))
        ]
        loss = self._loss(batches, leaves, k)
        grads = torch.autograd.grad(loss, leaves)
        self.steps += 1
        with torch.no_grad():
            self._adam(grads, k)
        for i, member in enumerate(self.members[:k]):
            if member.end_of_epoch():
                self._on_member_epoch_end(i, member)

    def _slice(self, i, lo, hi):
        r = self._per_member[i]
        return self.params[i][lo * r : hi * r]

    def _loss(self, batches, leaves, k):
        size = max(len(b) for b in batches)
        # the last batch of a member's epoch may be short: padded, masked
        full = all(len(b) == size for b in batches)
        idx = torch.stack(
            [
                (
                    b
                    if len(b) == size
                    else torch.cat([b, b.new_zeros(size - len(b))])
                )
                for b in batches
            ]
        )
        x = self.X.index_select(0, idx.reshape(-1))
        logits = self._forward(
            x.reshape(k, size, *self.X.shape[1:]),
            0,
            k,
            leaves,
            self._dropout_masks(batches, size),
        )
        y = self.labels[:k].gather(1, idx)
        ce = F.cross_entropy(
            logits.reshape(k * size, -1), y.reshape(-1), reduction="none"
        ).reshape(k, size)
        if full:
            return ce.mean(1).sum()
        counts = torch.tensor(
            [len(b) for b in batches], device=ce.device, dtype=ce.dtype
        )
        valid = torch.arange(size, device=ce.device)[None] < counts[:, None]
        return ((ce * valid).sum(1) / counts).sum()

    def _dropout_masks(self, batches, size):
        # drawn per member, (its batch, hidden) as GeneratorDropout draws
        # them, so each member's masks are those of its sequential training
        if self.dropout <= 0:
            return None
        width = self.head.weight.shape[1]
        draws = []
        for member, batch in zip(self.members, batches):
            u = torch.rand(
                (len(batch), width),
                generator=member.dropout_gen,
                device=self.device,
            )
            if len(batch) < size:
                # padding rows are masked out of the loss: keep them all
                u = torch.cat([u, u.new_ones((size - len(batch), width))])
            draws.append(u)
        return torch.stack(draws) >= self.dropout

    def _forward(self, x, lo, hi, params, keep=None):
        """Logits ``(k, B, K)`` of members ``lo:hi`` on their inputs ``x``
        ``(k, B, ...)``; ``keep``: dropout masks, None for eval mode."""
        grouped = False
        it = iter(params)
        for layer in self.body:
            own = (next(it), next(it)) if layer.weight is not None else None
            x, grouped = _apply(layer, x, lo, hi, grouped, own)
        if keep is not None:
            x = x * keep / (1.0 - self.dropout)
        weight, bias = next(it), next(it)
        return torch.baddbmm(bias, x, weight)

    def _adam(self, grads, k):
        """Adam's update (as ``torch.optim.Adam``, L2 weight decay) of the
        first ``k`` members; all of them have taken ``self.steps`` steps."""
        lr = float(self.config.lr)
        decay = float(self.config.weight_decay)
        t = self.steps
        bias1 = 1 - _BETA1**t
        bias2_sqrt = math.sqrt(1 - _BETA2**t)
        # sqrt(v) / c + eps = (sqrt(v) + eps c) / c: one pass fewer
        step_size = -lr * bias2_sqrt / bias1
        params = [self._slice(i, 0, k) for i in range(len(self.params))]
        exp_avg = [self._state(self._exp_avg, i, k) for i in range(len(grads))]
        exp_avg_sq = [
            self._state(self._exp_avg_sq, i, k) for i in range(len(grads))
        ]
        grads = list(grads)
        if decay:
            grads = torch._foreach_add(grads, params, alpha=decay)
        # multi-tensor kernels (one launch per op for all the tensors on a
        # GPU), the way torch.optim.Adam's foreach implementation runs
        torch._foreach_lerp_(exp_avg, grads, 1 - _BETA1)
        torch._foreach_mul_(exp_avg_sq, _BETA2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - _BETA2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, _EPS * bias2_sqrt)
        torch._foreach_addcdiv_(params, exp_avg, denom, step_size)

    def _state(self, state, i, k):
        r = self._per_member[i]
        return state[i][: k * r]

    # ------------------------------------------------------ evaluation

    def _on_member_epoch_end(self, i, member):
        spec = member.spec
        if spec.trajectory:
            self._outputs.trajectories[spec.name][member.epoch - 1] = (
                self._label_probs(i, self.labels[i])
            )
        if member.epoch == member.epochs and spec.eval_rows is not None:
            rows = np.asarray(spec.eval_rows)
            self._outputs.probs[rows] = self.predict_probs(i, rows)

    @torch.no_grad()
    def _eval_logits(self, i, rows=None):
        """Eval-mode logits of member ``i`` on ``rows`` (a tensor; None:
        every row), in chunks; yields ``(start, logits)``."""
        params = [self._slice(j, i, i + 1) for j in range(len(self.params))]
        size = int(self.config.eval_batch_size)
        count = len(self.X) if rows is None else len(rows)
        for start in range(0, count, size):
            if rows is None:
                x = self.X[start : start + size]
            else:
                x = self.X.index_select(0, rows[start : start + size])
            yield start, self._forward(x[None], i, i + 1, params)[0]

    def _label_probs(self, i, labels):
        """(N,) eval-mode p(labels) of member ``i`` on every row."""
        out = np.empty(len(self.X), dtype=np.float32)
        for start, logits in self._eval_logits(i):
            y = labels[start : start + len(logits)]
            p = logits.softmax(-1).gather(1, y[:, None])[:, 0]
            out[start : start + len(p)] = p.float().cpu().numpy()
        return out

    def predict_probs(self, i, rows):
        """(len(rows), K) eval-mode probabilities of member ``i``."""
        out = np.empty((len(rows), self.k), dtype=np.float32)
        rows_t = torch.from_numpy(np.asarray(rows, np.int64)).to(self.X.device)
        for start, logits in self._eval_logits(i, rows_t):
            out[start : start + len(logits)] = (
                logits.softmax(-1).float().cpu().numpy()
            )
        return out
