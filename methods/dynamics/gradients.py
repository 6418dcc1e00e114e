"""
Per-sample gradients of the training-dynamics recorder, each in its
cheapest exact form; see ``docs/methods.md`` section 3.

- GraNd's norm of the per-sample gradient of the cross-entropy with
  respect to **all** parameters (:func:`per_sample_grad_norms`) comes from
  one ordinary forward and backward pass per chunk of samples: the
  per-sample gradient of a linear layer's weight is the outer product
  ``delta x a`` of the gradient at its output and its input, whose norm is
  ``||delta|| ||a||`` (plus ``||delta||`` for the bias); a convolution's is
  ``delta_b @ unfold(a_b)^T`` per sample, a small batched matmul. Summed
  over the layers this is the exact norm, with no per-sample weight copies
  (``torch.func.vmap`` would materialize an N x P gradient per chunk). A
  model with other parametrized layers falls back to ``torch.func.vmap``
  in large chunks.
- VoG's input gradients (:func:`input_gradients`) are one backward pass of
  the summed objective to the inputs: in eval mode the samples of a batch
  do not interact (no batch norm), so the gradient of the sum with respect
  to sample i's input is the gradient of sample i's own objective.
- :func:`vog_variance` takes the input gradients at the checkpoints a chunk
  of samples at a time, from copies of the model saved at each checkpoint,
  so no N x D state is kept during training.

Every function reads the model only: parameters are used as they are,
gradients go to activations or inputs (never into ``.grad``), and the
model's train/eval mode is restored.
"""

import logging

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: the largest number of floats a chunk's per-sample intermediates may hold
#: (unfolded convolution inputs; vmap's per-sample gradients)
_CHUNK_FLOATS = 1 << 24


class _EvalMode(object):
    """Puts ``model`` in eval mode and restores its mode on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *args):
        self.model.train(self.was_training)


# ---------------------------------------------------------------- GraNd


def per_sample_grad_norms(model, X, y, batch_size=1024):
    """L2 norms of the per-sample gradients of the cross-entropy loss with
    respect to all parameters (eval mode; the model is not changed).

    Exact: closed form per layer for models made of ``nn.Linear`` and
    ``nn.Conv2d`` layers (both models of
    :mod:`fiftyone_hardness.methods.dynamics.models`), ``torch.func.vmap``
    otherwise.

    Args:
        model: a classifier (``model(x)`` -> logits)
        X: (N, ...) input tensor
        y: (N,) long tensor of labels
        batch_size (1024): the chunk size

    Returns:
        an (N,) tensor
    """
    with _EvalMode(model):
        if not _closed_form_layers(model):
            return _vmap_grad_norms(model, X, y, batch_size)
        chunk = _closed_form_chunk(model, X, batch_size)
        return torch.cat(
            [
                _closed_form_grad_norms(
                    model, X[s : s + chunk], y[s : s + chunk]
                )
                for s in range(0, len(X), chunk)
            ]
        )


def _closed_form_layers(model):
    """The layers of ``model`` holding parameters, if all are plain
    ``nn.Linear`` / ungrouped ``nn.Conv2d`` (else None)."""
    layers = []
    owned = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            layers.append(module)
            owned += len(own)
        else:
            return None
    if owned != len(list(model.parameters())):
        return None
    return layers


def _closed_form_chunk(model, X, batch_size):
    """A chunk size whose unfolded convolution inputs stay within
    :data:`_CHUNK_FLOATS`."""
    per_sample = 1
    size = X.shape[2:] if X.dim() == 4 else None
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and size is not None:
            k = module.in_channels * int(np.prod(module.kernel_size))
            # the input size of the first stage bounds the later ones
            per_sample = max(per_sample, k * int(np.prod(size)))
    return max(1, min(int(batch_size), _CHUNK_FLOATS // per_sample))


def _closed_form_grad_norms(model, x, y):
    layers = _closed_form_layers(model)
    inputs, outputs, calls = {}, {}, []

    def capture(module, args, output):
        inputs[module] = args[0].detach()
        outputs[module] = output
        calls.append(module)

    handles = [m.register_forward_hook(capture) for m in layers]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if len(calls) != len(layers):
        # a layer applied twice (shared weights): no per-layer closed form
        return _vmap_grad_norms(model, x, y, len(x))
    loss = F.cross_entropy(logits, y, reduction="sum")
    deltas = torch.autograd.grad(loss, [outputs[m] for m in layers])
    sq = torch.zeros(len(x), dtype=torch.float32, device=x.device)
    for module, delta in zip(layers, deltas):
        sq += _layer_sq_norm(module, inputs[module], delta.detach())
    return sq.sqrt()


def _layer_sq_norm(module, a, delta):
    """The squared norm of one layer's per-sample parameter gradient, from
    its input ``a`` and the gradient ``delta`` at its output."""
    if isinstance(module, nn.Linear):
        a = a.reshape(len(a), -1, a.shape[-1])
        delta = delta.reshape(len(delta), -1, delta.shape[-1])
        if a.shape[1] == 1:
            # the usual case: ||delta a^T||^2 = ||delta||^2 ||a||^2
            d2 = delta.square().sum((1, 2))
            sq = d2 * a.square().sum((1, 2))
        else:
            grad = torch.bmm(delta.transpose(1, 2), a)
            sq = grad.square().sum((1, 2))
            d2 = delta.sum(1).square().sum(1)
        return sq + d2 if module.bias is not None else sq
    # Conv2d: grad_W[b] = delta[b] (Cout, L) @ unfold(a[b])^T (L, Cin k k)
    cols = F.unfold(
        a,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )
    delta = delta.reshape(len(delta), delta.shape[1], -1)
    sq = torch.bmm(delta, cols.transpose(1, 2)).square().sum((1, 2))
    if module.bias is not None:
        sq = sq + delta.sum(2).square().sum(1)
    return sq


def _vmap_grad_norms(model, X, y, batch_size):
    """The generic form: ``torch.func.vmap`` of ``grad``, in chunks as large
    as :data:`_CHUNK_FLOATS` allows."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    num_params = sum(p.numel() for p in params.values())
    chunk = max(1, min(int(batch_size), _CHUNK_FLOATS // max(num_params, 1)))

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
    return torch.cat(norms)


# ------------------------------------------------------ input gradients


def input_gradients(model, X, y, batch_size=1024, target="log_prob"):
    """Per-sample gradients with respect to the input (eval mode) of the
    observed class's log probability ``log p(y~|x)``
    (``target="log_prob"``) or logit ``z_y~`` (``target="logit"``).

    One backward pass per chunk: in eval mode the samples of a chunk do
    not interact, so the gradient of the summed objective with respect to
    each input is that sample's own gradient.

    Returns:
        a tensor shaped like ``X``
    """
    with _EvalMode(model):
        return torch.cat(
            [
                _input_gradient_chunk(
                    model, X[s : s + batch_size], y[s : s + batch_size], target
                )
                for s in range(0, len(X), int(batch_size))
            ]
        )


def _input_gradient_chunk(model, x, y, target):
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        out = model(x)
        if target == "log_prob":
            out = out.log_softmax(-1)
        objective = out.gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(objective, x)
    return grad


def vog_variance(checkpoints, X, y, batch_size=1024, target="log_prob"):
    """VoG before class normalization: for each sample, the variance over
    ``checkpoints`` of its input gradient (population variance, float64),
    averaged over the input dimensions.

    Args:
        checkpoints: copies of the model at VoG's checkpoint epochs
        X: (N, ...) input tensor
        y: (N,) long tensor of labels
        batch_size (1024): the chunk size
        target ("log_prob"): see :func:`input_gradients`

    Returns:
        an (N,) float64 numpy array
    """
    out = np.empty(len(X), dtype=np.float64)
    for start in range(0, len(X), int(batch_size)):
        x, t = X[start : start + batch_size], y[start : start + batch_size]
        grads = torch.stack(
            [
                input_gradients(model, x, t, batch_size, target).double()
                for model in checkpoints
            ]
        )
        var = grads.var(0, unbiased=False)
        out[start : start + len(x)] = (
            var.reshape(len(x), -1).mean(1).cpu().numpy()
        )
    return out
