"""
Out-of-sample class probabilities from feature vectors (embeddings), for
confident learning and the other label-noise methods.

Three sources, all out-of-sample (a sample's probabilities never come from a
model that saw its label):

- :func:`cross_val_probs` with ``model="logreg"``: K-fold cross-validated
  multinomial logistic regression. All K folds are trained *together* as one
  stacked model (weights of shape ``(folds, D, classes)``) by full-batch
  L-BFGS on standardized features, so the whole cross-validation is a handful
  of large matrix products per iteration; on ``cuda`` when available.
- :func:`cross_val_probs` with ``model="mlp"``: the same with a small MLP
  (``D -> hidden -> classes``, ReLU) trained by Adam on mini-batches, folds
  stacked with batched matrix products.
- :func:`knn_vote_probs`: the leave-one-out vote of the ``k`` nearest
  neighbours by cosine similarity (what cleanlab's Datalab does with
  features only; SimiFeat's vote), from the neighbour index of
  :mod:`fiftyone_hardness.methods.neighbors` (exact up to 20k samples on a
  CPU and on a GPU, approximate above: near-linear instead of O(N^2)).

Every computation is seeded and deterministic for a given device. Inputs
are checked once, at each function's entry, by
:mod:`fiftyone_hardness.methods.validation`. See ``docs/methods.md``
section 2.
"""

import logging
import math

import numpy as np

from fiftyone_hardness.methods.base import (
    HardnessError,
    no_progress,
    select_device,
)
from fiftyone_hardness.methods.validation import (
    check_features,
    check_labels,
)

logger = logging.getLogger(__name__)

PROBE_MODELS = ("logreg", "mlp")

#: the training options of :func:`cross_val_probs` and
#: :func:`fit_predict_probs` (what ``probe_kwargs`` may set)
PROBE_OPTIONS = (
    "standardize_features",
    "l2",
    "max_iter",
    "tol",
    "hidden_dim",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
)


def stratified_folds(labels, n_folds=5, seed=0):
    """Assigns each sample to one of ``n_folds`` folds, stratified by label.

    Samples are shuffled (seeded), grouped by class and dealt round-robin, so
    every class is spread evenly over the folds and the folds have equal
    sizes up to one sample.

    Args:
        labels: (N,) int array of class indices
        n_folds (5): the number of folds (>= 2)
        seed (0): the random seed

    Returns:
        an (N,) int array of fold indices in ``0..n_folds-1``

    Raises:
        HardnessError: if ``n_folds < 2`` or a class has fewer samples than
            folds
    """
    labels = np.asarray(labels, dtype=int)
    n_folds = int(n_folds)
    if n_folds < 2:
        raise HardnessError("Cross-validation needs n_folds >= 2")
    counts = np.bincount(labels)
    small = np.flatnonzero((counts > 0) & (counts < n_folds))
    if len(small):
        raise HardnessError(
            "Cross-validation with %d folds needs at least %d samples per "
            "class, but class index %d has only %d; use fewer folds "
            "(n_folds=...), merge or drop the rare class, or provide "
            "out-of-sample predictions instead"
            % (n_folds, n_folds, small[0], counts[small[0]])
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    folds = np.empty(len(labels), dtype=int)
    folds[order] = np.arange(len(labels)) % n_folds
    return folds


#: rows of one block of :func:`standardize` (32 MB of float64 at 512 dims)
_BLOCK_ROWS = 8192


def standardize(X, eps=1e-6):
    """Returns ``(X - mean) / std`` per feature as float32; constant features
    become 0. The statistics use no labels, so fitting them on all rows leaks
    nothing into the out-of-sample probabilities."""
    X = np.asarray(X, dtype=np.float32)
    mean, std = column_statistics(X)
    std[std < eps * max(float(std.max()), 1.0)] = 1.0
    # in blocks: whole-array float64 temporaries peaked at 5x the float32
    # array (+9.9 GB for 1M x 512, speed/scale.py); now one output array
    # and one float64 block
    out = np.empty(X.shape, dtype=np.float32)
    for s in range(0, len(X), _BLOCK_ROWS):
        out[s : s + _BLOCK_ROWS] = (X[s : s + _BLOCK_ROWS] - mean) / std
    return out


def column_statistics(X):
    """The float64 mean and standard deviation of each column of ``X``,
    computed :data:`_BLOCK_ROWS` rows at a time (one float64 block at the
    peak, not a float64 copy of ``X``)."""
    n = len(X)
    blocks = [slice(s, s + _BLOCK_ROWS) for s in range(0, n, _BLOCK_ROWS)]
    mean = sum(X[b].sum(axis=0, dtype=np.float64) for b in blocks) / n
    var = sum(np.square(X[b] - mean).sum(axis=0) for b in blocks) / n
    return mean, np.sqrt(var)


class ProbeResult(object):
    """Out-of-sample probabilities and how they were made.

    Attributes:
        pred_probs: (N, K) float64 array; row i sums to one
        cv_accuracy: accuracy of ``pred_probs.argmax(1)`` against the labels
            the probe was trained on
        folds: (N,) fold index of each sample (None for the k-NN vote)
        info: dict describing the probe (JSON-serializable)
        neighbors: the k-NN vote's
            :class:`~fiftyone_hardness.methods.neighbors.Neighbors` (for
            reuse by another step on the same features, e.g. a review
            queue's neighbour graph); None for the other probes
    """

    def __init__(
        self, pred_probs, cv_accuracy, folds=None, info=None, neighbors=None
    ):
        self.pred_probs = pred_probs
        self.cv_accuracy = cv_accuracy
        self.folds = folds
        self.info = info or {}
        self.neighbors = neighbors


def cross_val_probs(
    X,
    labels,
    num_classes=None,
    model="logreg",
    n_folds=5,
    seed=0,
    device=None,
    standardize_features=True,
    l2=3e-2,
    max_iter=300,
    tol=1e-4,
    hidden_dim=256,
    epochs=None,
    batch_size=512,
    lr=1e-3,
    weight_decay=1e-4,
    progress=None,
):
    """Cross-validated out-of-sample class probabilities from features.

    Args:
        X: (N, D) feature array
        labels: (N,) int array of class indices in ``0..num_classes-1``
        num_classes (None): K; defaults to ``labels.max() + 1``
        model ("logreg"): ``"logreg"`` (multinomial logistic regression,
            L-BFGS) or ``"mlp"`` (one hidden layer, Adam)
        n_folds (5): the number of cross-validation folds
        seed (0): seed of the folds and of the MLP's initialization and
            batches
        device (None): torch device; ``cuda`` when available by default
        standardize_features (True): standardize each feature first
        l2 (3e-2): L2 penalty ``l2 / 2 * ||W||^2`` added to the mean
            cross-entropy of ``logreg`` (on standardized features; chosen on
            digits and synthetic sets, and smoother probabilities rank
            label errors better)
        max_iter (300): maximum L-BFGS iterations for ``logreg``
        tol (1e-4): L-BFGS stops when the loss or the weights change by
            less than this
        hidden_dim (256): hidden units of the MLP
        epochs (None): MLP epochs; None picks
            :func:`default_mlp_epochs`
        batch_size (512): MLP mini-batch size
        lr (1e-3): MLP Adam learning rate
        weight_decay (1e-4): MLP decoupled weight decay (AdamW)
        progress (None): a callable ``(fraction, message)``

    Returns:
        a :class:`ProbeResult`

    Raises:
        HardnessError: unknown model, bad shapes, fewer than two classes, or
            a class with fewer samples than folds
    """
    import torch

    progress = progress or no_progress
    if model not in PROBE_MODELS:
        raise HardnessError(
            "Unknown probe model '%s'; choose one of %s"
            % (model, ", ".join(PROBE_MODELS))
        )
    labels, num_classes, _ = check_labels(
        labels, num_classes, what="A cross-validated probe"
    )
    X = check_features(X, num_rows=len(labels))
    folds = stratified_folds(labels, n_folds=n_folds, seed=seed)
    if standardize_features:
        X = standardize(X)

    device = select_device(device)
    Xt = torch.as_tensor(X, device=device)
    yt = torch.as_tensor(labels, device=device)
    ft = torch.as_tensor(folds, device=device)
    train_mask = (
        ft[None, :] != torch.arange(n_folds, device=device)[:, None]
    ).to(Xt.dtype)

    info = {
        "model": model,
        "n_folds": int(n_folds),
        "seed": int(seed),
        "device": str(device),
        "standardized": bool(standardize_features),
    }
    if model == "logreg":
        params, (num_iter, num_evals) = _fit_logreg(
            Xt, yt, train_mask, num_classes, l2, max_iter, tol, progress
        )
        info.update(
            l2=float(l2),
            iterations=int(num_iter),
            function_evals=int(num_evals),
        )
        forward = _logreg_forward
    else:
        if epochs is None:
            epochs = default_mlp_epochs(len(labels), batch_size)
        params = _fit_mlp(
            Xt,
            yt,
            train_mask,
            num_classes,
            hidden_dim,
            epochs,
            batch_size,
            lr,
            weight_decay,
            seed,
            progress,
        )
        info.update(
            hidden_dim=int(hidden_dim),
            epochs=int(epochs),
            batch_size=int(batch_size),
            lr=float(lr),
            weight_decay=float(weight_decay),
        )
        forward = _mlp_forward

    with torch.no_grad():
        probs = torch.empty(
            (len(labels), num_classes), dtype=torch.float64, device=device
        )
        for f in range(n_folds):
            rows = torch.nonzero(ft == f).squeeze(1)
            logits = forward(params, Xt[rows], fold=f)[0]
            probs[rows] = torch.softmax(logits.double(), dim=-1)
    pred_probs = probs.cpu().numpy()
    cv_accuracy = float(np.mean(pred_probs.argmax(1) == labels))
    info["cv_accuracy"] = cv_accuracy
    progress(1.0, "cross-validated %s: accuracy %.3f" % (model, cv_accuracy))
    return ProbeResult(pred_probs, cv_accuracy, folds=folds, info=info)


def fit_predict_probs(
    X_train,
    y_train,
    X_test,
    num_classes,
    model="logreg",
    seed=0,
    device=None,
    **kwargs,
):
    """Trains one probe on ``(X_train, y_train)`` and returns its class
    probabilities on ``X_test`` (no cross-validation).

    Features are standardized with the statistics of ``X_train``. Keyword
    arguments are the :data:`PROBE_OPTIONS` of :func:`cross_val_probs`
    (``l2``, ``max_iter``, ``hidden_dim``, ``epochs``, ...) and
    ``progress``.

    Returns:
        an (M, K) float64 array

    Raises:
        HardnessError: bad labels or features, an unknown model or option
    """
    import torch

    unknown = sorted(set(kwargs) - set(PROBE_OPTIONS) - {"progress"})
    if unknown:
        raise HardnessError(
            "Unknown probe option(s) %s; valid options: %s"
            % (", ".join(unknown), ", ".join(PROBE_OPTIONS))
        )
    y_train, num_classes, _ = check_labels(
        y_train, num_classes, min_classes=1, what="A probe"
    )
    X_train = check_features(X_train, num_rows=len(y_train))
    X_test = check_features(X_test, what="test features")
    if X_test.shape[1] != X_train.shape[1]:
        raise HardnessError(
            "The test features have %d dimensions, the training features %d"
            % (X_test.shape[1], X_train.shape[1])
        )
    if kwargs.pop("standardize_features", True):
        mean = X_train.mean(0, dtype=np.float64)
        std = X_train.std(0, dtype=np.float64)
        std[std < 1e-6 * max(float(std.max()), 1.0)] = 1.0
        X_train = ((X_train - mean) / std).astype(np.float32)
        X_test = ((X_test - mean) / std).astype(np.float32)
    device = select_device(device)
    Xt = torch.as_tensor(X_train, device=device)
    yt = torch.as_tensor(y_train, device=device)
    mask = torch.ones((1, len(y_train)), device=device)
    progress = kwargs.pop("progress", None) or no_progress
    if model == "logreg":
        l2 = kwargs.get("l2", 3e-2)
        params, _ = _fit_logreg(
            Xt,
            yt,
            mask,
            num_classes,
            l2,
            kwargs.get("max_iter", 300),
            kwargs.get("tol", 1e-4),
            progress,
        )
        forward = _logreg_forward
    elif model == "mlp":
        batch_size = kwargs.get("batch_size", 512)
        epochs = kwargs.get("epochs")
        if epochs is None:
            epochs = default_mlp_epochs(len(y_train), batch_size)
        params = _fit_mlp(
            Xt,
            yt,
            mask,
            num_classes,
            kwargs.get("hidden_dim", 256),
            epochs,
            batch_size,
            kwargs.get("lr", 1e-3),
            kwargs.get("weight_decay", 1e-4),
            seed,
            progress,
        )
        forward = _mlp_forward
    else:
        raise HardnessError(
            "Unknown probe model '%s'; choose one of %s"
            % (model, ", ".join(PROBE_MODELS))
        )
    with torch.no_grad():
        Xs = torch.as_tensor(X_test, device=device)
        logits = forward(params, Xs, fold=0)[0]
        return torch.softmax(logits.double(), dim=-1).cpu().numpy()


def knn_vote_probs(
    X,
    labels,
    num_classes=None,
    k=10,
    device=None,
    chunk_size=None,
    progress=None,
    method="auto",
):
    """Leave-one-out k-nearest-neighbour vote by cosine similarity.

    Row i is the fraction of the ``k`` most cosine-similar *other* samples
    that carry each label (ties in similarity are broken by index); a
    sample whose class has ``n_c <= k`` samples uses its ``n_c - 1`` nearest
    (at least 1), so that small classes are not called mislabeled. A
    sample's own label never enters its own row, so the probabilities are
    out-of-sample.

    The neighbours come from the package's one neighbour index,
    :func:`fiftyone_hardness.methods.neighbors.nearest_neighbors`: exact
    (chunked) on a GPU and up to
    :data:`~fiftyone_hardness.methods.neighbors.EXACT_MAX_ROWS` samples on
    a CPU, approximate above (an inverted file re-ranked exactly; about
    8 s at 100k x 512 on 2 CPU cores instead of 70-85 s, within 0.005
    AUROC of the exact vote; ``speed/knn.py``).

    Peak memory beyond ``X``: the neighbour search's (see
    :mod:`~fiftyone_hardness.methods.neighbors`: never N x N) plus the
    (N, K) float64 probabilities, which cleanlab needs dense (8 bytes x N x
    K: 800 MB at 1M samples and 100 classes).

    Args:
        X: (N, D) feature array
        labels: (N,) int array of class indices
        num_classes (None): K; defaults to ``labels.max() + 1``
        k (10): the number of neighbours (``1 <= k < N``)
        device (None): torch device; ``cuda`` when available by default
        chunk_size (None): rows of the exact similarity matrix computed at
            once; None keeps each block near 64M entries
        progress (None): a callable ``(fraction, message)``
        method ("auto"): the neighbour search: ``"exact"``, ``"ivf"``
            (approximate) or ``"auto"``

    Returns:
        a :class:`ProbeResult` (``cv_accuracy`` is the leave-one-out
        accuracy of the vote's argmax)
    """

    from fiftyone_hardness.methods.neighbors import nearest_neighbors

    progress = progress or no_progress
    labels, num_classes, _ = check_labels(
        labels, num_classes, what="The k-NN vote"
    )
    X = check_features(X, num_rows=len(labels))
    n = len(labels)
    k = int(k)
    if not 1 <= k < n:
        raise HardnessError(
            "The k-NN vote needs 1 <= k < N; got k=%d for %d samples" % (k, n)
        )
    device = select_device(device)
    found = nearest_neighbors(
        X,
        k,
        metric="cosine",
        method=method,
        device=device,
        chunk_floats=(1 << 26) if chunk_size is None else chunk_size * n,
        progress=lambda f, m="": progress(0.95 * f, m),
    )
    votes = _vote(found.indices, labels, num_classes, k, device)
    pred_probs = votes.cpu().numpy()
    accuracy = float(np.mean(pred_probs.argmax(1) == labels))
    info = {
        "model": "knn",
        "k": k,
        "metric": "cosine",
        "device": str(device),
        "neighbors": found.info,
    }
    info["cv_accuracy"] = accuracy
    progress(1.0, "k-NN vote: accuracy %.3f" % accuracy)
    return ProbeResult(
        pred_probs, accuracy, folds=None, info=info, neighbors=found
    )


def _vote(neighbours, labels, num_classes, k, device):
    """The (N, K) float64 vote of the (N, k) neighbours (nearest first)."""
    import torch

    n = len(labels)
    yt = torch.as_tensor(labels, device=device)
    # A sample of a class with n_c <= k samples can have at most n_c - 1
    # neighbours of its own class among k, so a plain k-vote calls clean
    # samples of small classes mislabeled (500 classes of 4 samples, k=10:
    # 31% of clean data flagged). Such a sample votes with its n_c - 1
    # nearest neighbours instead; with every class larger than k (the usual
    # case) each row uses k.
    counts = torch.as_tensor(
        np.bincount(labels, minlength=num_classes), device=device
    )
    k_per_row = (counts[yt] - 1).clamp(1, k).to(torch.float64)
    ranks = torch.arange(k, device=device, dtype=torch.float64)[None, :]
    votes = torch.zeros((n, num_classes), dtype=torch.float64, device=device)
    step = 1 << 16
    for s in range(0, n, step):
        nbrs = torch.as_tensor(neighbours[s : s + step], device=device)
        weights = (ranks < k_per_row[s : s + step, None]).to(torch.float64)
        votes[s : s + step].scatter_add_(1, yt[nbrs], weights)
    return votes.div_(k_per_row[:, None])


def default_mlp_epochs(num_samples, batch_size=512):
    """Epochs of the MLP probe when not given: about 150 optimizer steps,
    between 5 and 20 epochs."""
    steps_per_epoch = math.ceil(num_samples / float(batch_size))
    return int(min(20, max(5, math.ceil(150.0 / steps_per_epoch))))


def _logreg_forward(params, X, fold=None):
    """Logits of the stacked logistic regressions: ``(folds, N, K)``, or
    ``(1, N, K)`` for one ``fold``. ``X`` is (N, D)."""
    W, b = params
    if fold is not None:
        return (X @ W[:, fold] + b[fold])[None]
    num_folds, num_classes = b.shape
    logits = X @ W.reshape(W.shape[0], -1) + b.reshape(-1)
    return logits.view(len(X), num_folds, num_classes).transpose(0, 1)


#: the most logits (rows x folds x K) of one block of the logistic
#: regression's objective (64 MB of float32, about 3x that with autograd)
LOGIT_BLOCK_FLOATS = 1 << 24


def _fit_logreg(
    X,
    y,
    train_mask,
    num_classes,
    l2,
    max_iter,
    tol,
    progress,
    block_floats=LOGIT_BLOCK_FLOATS,
):
    """Fits one multinomial logistic regression per row of ``train_mask``
    (all together, by L-BFGS on the sum of their objectives). Each objective
    is the mean cross-entropy over its training rows plus
    ``l2 / 2 * ||W||^2``. The folds' weights are stored side by side so that
    every evaluation is a (rows, D) x (D, folds * K) matrix product.

    The objective and its gradient are sums over rows: they are
    accumulated over blocks of at most ``block_floats`` logits, so memory
    does not grow with N x folds x K (the full batch took about 3 x 4 N F K
    bytes with autograd: 6 GB at 1M samples, 5 folds, 100 classes).

    Returns ``((W, b), (iterations, loss evaluations))`` with ``W`` of
    shape (D, folds, K)."""
    import torch

    num_folds, dim = train_mask.shape[0], X.shape[1]
    W = torch.zeros(
        (dim, num_folds * num_classes), device=X.device, requires_grad=True
    )
    b = torch.zeros(
        num_folds * num_classes, device=X.device, requires_grad=True
    )
    weights = (train_mask / train_mask.sum(1, keepdim=True)).T  # (N, folds)
    targets = y[:, None, None].expand(-1, num_folds, 1)
    optimizer = torch.optim.LBFGS(
        [W, b],
        lr=1,
        max_iter=int(max_iter),
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=float(tol),
        line_search_fn="strong_wolfe",
    )
    calls = [0]
    rows = int(max(1, block_floats // (num_folds * num_classes)))

    def closure():
        optimizer.zero_grad()
        loss = 0.5 * l2 * (W * W).sum()
        loss.backward()
        loss = loss.detach()
        for s in range(0, len(X), rows):
            logits = (X[s : s + rows] @ W + b).view(-1, num_folds, num_classes)
            nll = torch.logsumexp(logits, -1) - logits.gather(
                -1, targets[s : s + rows]
            ).squeeze(-1)
            part = (nll * weights[s : s + rows]).sum()
            part.backward()
            loss = loss + part.detach()
        calls[0] += 1
        if calls[0] % 10 == 0:
            progress(
                min(0.95, calls[0] / float(max_iter)),
                "logistic regression, iteration %d" % calls[0],
            )
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    num_iter = state.get("n_iter", calls[0])
    W = W.detach().view(dim, num_folds, num_classes)
    b = b.detach().view(num_folds, num_classes)
    return (W, b), (num_iter, calls[0])


def _mlp_forward(params, X, fold=None):
    """Logits of the stacked MLPs: ``(folds, N, K)``, or ``(1, N, K)`` for
    one ``fold``. ``X`` is (N, D); ``W1`` is (D, folds, hidden) so the first
    layer of every fold is one matrix product."""
    import torch

    W1, b1, W2, b2 = params
    if fold is not None:
        hidden = torch.relu(X @ W1[:, fold] + b1[fold])
        return (hidden @ W2[fold] + b2[fold])[None]
    dim, num_folds, hidden_dim = W1.shape
    hidden = torch.relu(X @ W1.reshape(dim, -1) + b1.reshape(-1))
    hidden = hidden.view(len(X), num_folds, hidden_dim).transpose(0, 1)
    return torch.baddbmm(b2[:, None, :], hidden, W2)


def _fit_mlp(
    X,
    y,
    train_mask,
    num_classes,
    hidden_dim,
    epochs,
    batch_size,
    lr,
    weight_decay,
    seed,
    progress,
):
    """Trains one MLP per row of ``train_mask`` together (stacked weights,
    batched matrix products), each on its own training rows of every
    shuffled mini-batch. Returns the parameters."""
    import torch

    num_folds, dim = train_mask.shape[0], X.shape[1]
    generator = torch.Generator().manual_seed(int(seed))

    def init(fan_in, shape):
        bound = 1.0 / math.sqrt(fan_in)
        values = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        return values.to(X.device).requires_grad_(True)

    params = [
        init(dim, (dim, num_folds, hidden_dim)),
        init(dim, (num_folds, hidden_dim)),
        init(hidden_dim, (num_folds, hidden_dim, num_classes)),
        init(hidden_dim, (num_folds, num_classes)),
    ]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = len(y)
    for epoch in range(int(epochs)):
        order = torch.randperm(n, generator=generator).to(X.device)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            mask = train_mask[:, rows]
            logits = _mlp_forward(params, X[rows])
            logp = torch.log_softmax(logits, -1)
            nll = -logp.gather(
                -1, y[rows][None, :, None].expand(num_folds, -1, 1)
            )[..., 0]
            loss = ((nll * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        progress(
            0.95 * (epoch + 1) / epochs,
            "MLP epoch %d/%d" % (epoch + 1, epochs),
        )
    return [p.detach() for p in params]
