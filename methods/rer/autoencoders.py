"""
The class autoencoders of RER, all trained at once, and the per-sample
statistics of their reconstruction errors.

- All M autoencoders of a chunk of classes are one batched torch model:
  every layer holds a ``(M, fan_in, fan_out)`` weight and runs as one
  batched matmul. The loss is the sum of the per-class losses and Adam is
  elementwise, so this is exactly M independent trainings done at once (on
  the GPU when present).
- Two objectives: ``"umap"`` (parametric UMAP: fuzzy-set cross-entropy on a
  per-class fuzzy kNN graph with negative sampling, plus
  ``reconstruction_weight`` x reconstruction MSE) and ``"reconstruction"``
  (MSE only). The UMAP similarity ``q = 1 / (1 + a d^(2b))`` is evaluated
  in logit form, ``logit(q) = -(log a + b log(d^2 + eps))``, so the
  cross-entropy is a binary cross-entropy with logits: finite for every
  distance.
- :class:`RunningStatistics` folds the errors of one chunk of classes at a
  time into per-sample statistics, so the K x N error matrix never exists.

torch is imported inside the functions that need it, so that importing the
package (e.g. to build an App form) stays cheap.
"""

import logging
import math

import numpy as np

from fiftyone_hardness.methods.rer.graph import ClassGraphs
from fiftyone_hardness.methods.rer.statistics import ErrorStatistics

logger = logging.getLogger(__name__)


def _torch():
    import torch

    return torch


def model_floats(dim, hidden_dims, n_components):
    """The number of parameters of one autoencoder ``dim -> hidden_dims ->
    n_components -> reversed(hidden_dims) -> dim``."""
    sizes = [dim] + list(hidden_dims) + [n_components]
    sizes = sizes + sizes[-2::-1]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


class BatchedAutoencoders:
    """M autoencoders ``D -> hidden -> C -> reversed(hidden) -> D`` as
    stacked ``(M, fan_in, fan_out)`` weights (ReLU hidden layers, linear
    code, sigmoid output), Glorot-uniform initialized per model.

    Args:
        num_models: M
        dim: the input dimension D
        hidden_dims: the hidden layer sizes of the encoder
        n_components: the code size C
        seeds: one seed per model (its initial weights depend only on it)
        device: the torch device
    """

    def __init__(
        self, num_models, dim, hidden_dims, n_components, seeds, device
    ):
        torch = _torch()
        enc = [dim] + list(hidden_dims) + [n_components]
        dec = [n_components] + list(reversed(hidden_dims)) + [dim]
        self.num_encoder_layers = len(enc) - 1
        self.weights = []
        self.biases = []
        for fan_in, fan_out in zip(enc[:-1] + dec[:-1], enc[1:] + dec[1:]):
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            w = torch.empty(num_models, fan_in, fan_out)
            for m, seed in enumerate(seeds):
                g = torch.Generator().manual_seed(
                    int(seed) * 1009
                    + fan_in
                    + 7 * fan_out
                    + 31 * len(self.weights)
                )
                w[m].uniform_(-limit, limit, generator=g)
            self.weights.append(w.to(device).requires_grad_())
            self.biases.append(
                torch.zeros(
                    num_models, 1, fan_out, device=device
                ).requires_grad_()
            )

    def parameters(self):
        return self.weights + self.biases

    @classmethod
    def from_state(cls, state):
        """The model of trained ``weights`` and ``biases`` (lists of
        tensors) and ``num_encoder_layers``, e.g. read back from a file (no
        initialization)."""
        model = cls.__new__(cls)
        model.weights = list(state["weights"])
        model.biases = list(state["biases"])
        model.num_encoder_layers = int(state["num_encoder_layers"])
        return model

    def _layers(self, x, layers, last_activation, dropout=0.0, gen=None):
        torch = _torch()
        for j in layers:
            x = torch.baddbmm(self.biases[j], x, self.weights[j])
            if j == layers[-1]:
                x = last_activation(x)
            else:
                x = torch.relu(x)
                if dropout > 0:
                    x = _dropout(x, dropout, gen)
        return x

    def encode(self, x, dropout=0.0, gen=None):
        """(M, B, D) inputs -> (M, B, C) codes."""
        layers = list(range(self.num_encoder_layers))
        return self._layers(x, layers, lambda v: v, dropout, gen)

    def decode(self, z, dropout=0.0, gen=None):
        """(M, B, C) codes -> (M, B, D) reconstructions."""
        torch = _torch()
        layers = list(range(self.num_encoder_layers, len(self.weights)))
        return self._layers(z, layers, torch.sigmoid, dropout, gen)

    def errors(self, x, block_rows=None):
        """``||x_i - AE_m(x_i)||_2`` for every model m and row i of the
        shared input ``x`` (B, D): returns (M, B), one model at a time
        (:meth:`errors_of`) on ``block_rows`` rows at a time (all at once
        when None), without gradients. Measured on 2 CPU cores (10k rows,
        100 models, 512 dims): 2.2 s, against 4.3 s for the batched layers
        (an ``(M, B, D)`` output per layer, beyond the caches, and the
        first layer as one ``(B, D) @ (D, M * H)`` product); the same
        values."""
        torch = _torch()
        out = torch.empty(
            (len(self.weights[0]), len(x)), dtype=x.dtype, device=x.device
        )
        step = int(block_rows or max(1, len(x)))
        with torch.no_grad():
            for index in range(len(out)):
                for s in range(0, len(x), step):
                    out[index, s : s + step] = self.errors_of(
                        index, x[s : s + step]
                    )
        return out

    def errors_of(self, index, x):
        """``||x_i - AE_index(x_i)||_2`` for the rows of ``x`` (B, D) under
        the one model ``index``: returns (B,). The layers of
        :meth:`errors`, one model's weights."""
        torch = _torch()
        last = len(self.weights) - 1
        h = x
        for j in range(len(self.weights)):
            h = torch.addmm(
                self.biases[j][index, 0], h, self.weights[j][index]
            )
            if j == last:
                h = torch.sigmoid(h)
            elif j != self.num_encoder_layers - 1:  # the code is linear
                h = torch.relu(h)
        return h.sub_(x).square_().sum(dim=1).sqrt_()


def _dropout(x, p, gen):
    """Inverted dropout: each entry of ``x`` zeroed independently with
    probability ``p``, the others scaled by ``1 / (1 - p)``.

    The zeroed positions are drawn as a Bernoulli process from its
    geometric gaps (``floor(log U / log(1 - p)) + 1``), about ``p * n``
    uniforms instead of one per entry: at RER's ``p = 0.01`` the mask of
    one uniform per entry (draw, compare, multiply, divide) took a quarter
    of the training time on the CPU (20k x 512, K = 100, torch profiler).
    """
    torch = _torch()
    n = x.numel()
    expected = p * n
    log_keep = math.log1p(-p)
    ends = []
    reached = 0
    while reached < n:  # almost always one draw
        size = int(expected + 6 * math.sqrt(expected) + 16)
        u = 1.0 - torch.rand(size, generator=gen, device=x.device)
        gaps = torch.floor(torch.log(u) / log_keep).long() + 1
        ends.append(torch.cumsum(gaps, 0) + reached)
        reached = int(ends[-1][-1])
    positions = torch.cat(ends) - 1
    positions = positions[positions < n]
    scaled = (x * (1.0 / (1.0 - p))).reshape(-1)
    return scaled.index_fill(0, positions, 0.0).view(x.shape)


def make_optimizer(model, learning_rate, l2):
    """Adam with Keras' defaults (betas 0.9 / 0.999, eps 1e-7) and an L2
    penalty ``l2 * sum(w^2)`` on the weights, not the biases: Adam's
    (coupled) ``weight_decay`` adds ``weight_decay * w`` to the gradient,
    which is the penalty's gradient ``2 * l2 * w``. Elementwise, so the
    stacked models stay independent.

    The fused kernel when the device has one (CUDA; CPU from torch 2.4),
    else the multi-tensor one.
    """
    # Public torch.optim rather than the private torch._fused_adam_ kernel
    # used before (same kernel, bitwise-equal results). Measured on 2 shared
    # CPU cores, torch 2.14, one thread: per run no difference (digits 1797
    # x 64, K=10: 0.49-0.60 s CPU vs 0.53-0.59 s before; 20k x 512, K=10:
    # 12.6 s vs 11.7-12.2 s, within the noise; per step +0.3-0.4 ms of
    # Python, 30 steps on digits, 320 on 20k x 512). Once per process, the
    # first torch.optim optimizer imports torch._dynamo: +1.2 s CPU and
    # +151 MB RSS, so a lone digits run in a fresh process takes ~1.6 s CPU
    # instead of ~0.55 s. Kept because the private kernel may change in any
    # torch release (and has no CPU version before torch 2.4, which
    # requirements.txt allows), and the import is shared with the other
    # methods (probes, dynamics), which use torch.optim anyway.
    torch = _torch()
    groups = [
        dict(params=list(model.weights), weight_decay=2.0 * l2),
        dict(params=list(model.biases), weight_decay=0.0),
    ]
    options = dict(lr=learning_rate, betas=(0.9, 0.999), eps=1e-7)
    try:
        return torch.optim.Adam(groups, fused=True, **options)
    except RuntimeError:  # no fused kernel for this device
        return torch.optim.Adam(groups, foreach=True, **options)


def umap_logits(sq_dist, a, b, eps=1e-4):
    """The logit of UMAP's similarity ``q = 1 / (1 + a d^(2b))``:
    ``-(log a + b log(d^2 + eps))``; finite and smooth for every distance
    (no ``sqrt`` at 0, no power of 0)."""
    torch = _torch()
    return -(math.log(a) + b * torch.log(sq_dist + eps))


class UmapObjective:
    """Parametric UMAP plus ``reconstruction_weight`` x MSE: a fuzzy-set
    cross-entropy on edges of each class's fuzzy kNN graph (positive
    pairs) and on shuffled pairs (``negative_sample_rate`` negatives per
    edge).

    Args:
        X: the (N, D) scaled features, a float32 tensor (for the graphs)
        class_rows: the rows each model is fit to
        config: the :class:`~fiftyone_hardness.methods.rer.config.RERConfig`
        ab: UMAP's ``(a, b)``
        device: the torch device
    """

    def __init__(self, X, class_rows, config, ab, device):
        self.graphs = ClassGraphs.build(
            X,
            class_rows,
            config.n_neighbors,
            device,
            method=config.graph_neighbors,
            seed=config.seed,
        )
        self.config = config
        self.a, self.b = ab

    def losses(self, model, X, gen):
        """The (M,) losses of one step on the (N, D) tensor ``X``."""
        torch = _torch()
        batch_size = self.config.batch_size
        negatives = self.config.negative_sample_rate
        dropout = self.config.dropout
        head, tail = self.graphs.sample_edges(batch_size, gen)
        x_head = X[head]
        z = model.encode(torch.cat([x_head, X[tail]], dim=1), dropout, gen)
        z_head, z_tail = z[:, :batch_size], z[:, batch_size:]
        pos = ((z_head - z_tail) ** 2).sum(-1)
        m = len(z)
        shuffle = torch.randint(
            0,
            batch_size,
            (m, batch_size * negatives),
            generator=gen,
            device=z.device,
        )
        z_neg = torch.gather(
            z_tail, 1, shuffle[..., None].expand(-1, -1, z.shape[-1])
        )
        neg = ((z_head.repeat(1, negatives, 1) - z_neg) ** 2).sum(-1)
        logits = umap_logits(torch.cat([pos, neg], dim=1), self.a, self.b)
        targets = torch.cat(
            [torch.ones_like(pos), torch.zeros_like(neg)], dim=1
        )
        ce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none"
        ).mean(1)
        rec = model.decode(z_head, dropout, gen)
        mse = ((rec - x_head) ** 2).mean(dim=(1, 2))
        return ce + self.config.reconstruction_weight * mse


class ReconstructionObjective:
    """The reconstruction MSE of uniformly drawn samples of each class.

    Args:
        class_rows: the rows each model is fit to
        config: the :class:`~fiftyone_hardness.methods.rer.config.RERConfig`
        device: the torch device
    """

    def __init__(self, class_rows, config, device):
        torch = _torch()
        sizes = [len(r) for r in class_rows]
        self.counts = torch.as_tensor(sizes, device=device)
        self.starts = torch.as_tensor(
            np.concatenate([[0], np.cumsum(sizes)[:-1]]), device=device
        )
        self.order = torch.as_tensor(np.concatenate(class_rows), device=device)
        self.config = config

    def losses(self, model, X, gen):
        """The (M,) losses of one step on the (N, D) tensor ``X``."""
        torch = _torch()
        counts = self.counts[:, None]
        u = torch.rand(
            len(self.counts),
            self.config.batch_size,
            generator=gen,
            device=X.device,
        )
        pos = (u * counts).long().clamp_max(counts - 1)
        x = X[self.order[self.starts[:, None] + pos]]
        dropout = self.config.dropout
        rec = model.decode(model.encode(x, dropout, gen), dropout, gen)
        return ((rec - x) ** 2).mean(dim=(1, 2))


def train(model, X, class_rows, config, steps, ab, gen, progress):
    """Trains the M autoencoders of ``model``, one per entry of
    ``class_rows`` (the rows of ``X`` of each class), for ``steps`` steps.

    Args:
        model: a :class:`BatchedAutoencoders` of M models
        X: the (N, D) scaled features, a float32 tensor on the model's
            device
        class_rows: M arrays of row indices
        config: the :class:`~fiftyone_hardness.methods.rer.config.RERConfig`
        steps: the number of optimizer steps
        ab: UMAP's ``(a, b)`` (``"umap"`` only)
        gen: the torch generator of the batches and dropout
        progress: a callable ``(fraction)``

    Returns:
        the (steps, M) per-class losses as a numpy array
    """
    torch = _torch()
    device = X.device
    if config.objective == "umap":
        objective = UmapObjective(X, class_rows, config, ab, device)
    else:
        objective = ReconstructionObjective(class_rows, config, device)
    optimizer = make_optimizer(model, config.learning_rate, config.l2)
    losses = torch.zeros(steps, len(class_rows), device=device)
    report_every = max(1, steps // 20)
    for step in range(steps):
        loss = objective.losses(model, X, gen)
        losses[step] = loss.detach()
        loss.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % report_every == 0:
            progress(step / steps)
    return losses.cpu().numpy()


class RunningStatistics:
    """Accumulates :class:`ErrorStatistics` over chunks of classes.

    Args:
        labels: (N,) the observed labels
        rand_labels: (N,) the random wrong labels
        device: the torch device of the statistics
    """

    def __init__(self, labels, rand_labels, device):
        torch = _torch()
        n = len(labels)
        self.labels = torch.as_tensor(labels, device=device)
        self.rand_labels = torch.as_tensor(rand_labels, device=device)
        inf = torch.full(
            (n,), float("inf"), dtype=torch.float64, device=device
        )
        self.own = torch.full_like(inf, float("nan"))
        self.rand_own = torch.full_like(inf, float("nan"))
        self.min1 = inf.clone()
        self.min2 = inf.clone()
        self.arg1 = torch.full((n,), -1, dtype=torch.long, device=device)
        self.total = torch.zeros_like(inf)
        self.num_classes = 0

    def update(self, class_ids, errors):
        """Adds the errors ``(M, N)`` of the classes ``class_ids``."""
        torch = _torch()
        errors = errors.double()
        class_ids = torch.as_tensor(class_ids, device=errors.device)
        self.num_classes += len(class_ids)
        self.total += errors.sum(0)
        self._update_own(class_ids, errors)
        self._update_smallest(class_ids, errors)

    def _update_own(self, class_ids, errors):
        # the error of each sample's label and random wrong label, for the
        # samples whose (random) label is one of class_ids
        torch = _torch()
        lookup = torch.full(
            (int(class_ids.max()) + 1,),
            -1,
            dtype=torch.long,
            device=errors.device,
        )
        lookup[class_ids] = torch.arange(len(class_ids), device=errors.device)
        for labels, target in (
            (self.labels, self.own),
            (self.rand_labels, self.rand_own),
        ):
            inside = labels <= class_ids.max()
            pos = torch.where(
                inside,
                lookup[labels.clamp_max(len(lookup) - 1)],
                torch.full_like(labels, -1),
            )
            cols = torch.nonzero(pos >= 0).squeeze(1)
            target[cols] = errors[pos[cols], cols]

    def _update_smallest(self, class_ids, errors):
        # the two smallest errors so far and the class of the smallest:
        # the best two of (previous two, this chunk's two)
        torch = _torch()
        k = min(2, len(class_ids))
        values, idx = torch.topk(errors, k, dim=0, largest=False)
        cand_v = [self.min1, self.min2, values[0]]
        cand_a = [self.arg1, self.arg1, class_ids[idx[0]]]
        if k == 2:
            cand_v.append(values[1])
            cand_a.append(class_ids[idx[1]])
        cand_v = torch.stack(cand_v)
        cand_a = torch.stack(cand_a)
        best_v, best_i = torch.topk(cand_v, 2, dim=0, largest=False)
        self.min1 = best_v[0]
        self.min2 = best_v[1]
        self.arg1 = torch.gather(cand_a, 0, best_i[:1]).squeeze(0)

    def result(self):
        """Returns the :class:`ErrorStatistics` of the classes so far."""
        return ErrorStatistics(
            own=self.own.cpu().numpy(),
            min1=self.min1.cpu().numpy(),
            arg1=self.arg1.cpu().numpy(),
            min2=self.min2.cpu().numpy(),
            total=self.total.cpu().numpy(),
            rand_own=self.rand_own.cpu().numpy(),
            rand_labels=self.rand_labels.cpu().numpy(),
            num_classes=self.num_classes,
        )
