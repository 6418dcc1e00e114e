"""
The entry points of RER: :func:`compute_rer` on arrays and
:func:`run_rer`, the registry's adapter from labelled data.

:func:`compute_rer` runs these steps, each a function below:

1. validate the labels and features
   (:mod:`fiftyone_hardness.methods.validation`);
2. choose the rows each class autoencoder is fit to (``fit_frac``,
   ``fit_samples_per_class``);
3. project the features on their principal components when asked
   (:mod:`~fiftyone_hardness.methods.rer.projection`), then min-max scale
   them on the fitted rows;
4. plan the training: steps, UMAP's ``(a, b)``, chunk sizes, threads;
5. train the class autoencoders one chunk of classes at a time and fold
   their reconstruction errors into per-sample statistics
   (:mod:`~fiftyone_hardness.methods.rer.autoencoders`); with many
   classes, train every chunk first, then evaluate each sample under the
   candidate classes its audit asks for
   (:mod:`~fiftyone_hardness.methods.rer.candidates`);
6. compute every output from the statistics
   (:mod:`~fiftyone_hardness.methods.rer.statistics`).

Memory: errors are never materialized as a K x N matrix for large K:
classes are trained and evaluated in chunks, and per-sample running
statistics (own error, smallest and second-smallest error with its class,
sum, and the error of a random wrong label) are updated chunk by chunk.
Peak memory is about ``N * D`` (features) + one chunk's models + ``chunk *
N`` errors; :func:`_chunk_sizes` sizes the chunks to ``memory_budget_mb``.
With candidate classes, add the trained models while they wait (at most
``memory_budget_mb``, the rest in an anonymous temporary file) and the
``(N, m + r + 2)`` candidate classes and errors.
"""

import collections
import contextlib
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from fiftyone_hardness.methods.base import (
    HardnessError,
    MethodOutput,
    no_progress,
    select_device,
)
from fiftyone_hardness.methods.rer import autoencoders
from fiftyone_hardness.methods.rer.candidates import (
    CandidateStatistics,
    ClassAudit,
    candidate_classes,
    class_centroids,
    use_candidates,
)
from fiftyone_hardness.methods.rer.config import RERConfig
from fiftyone_hardness.methods.rer.graph import find_ab_params
from fiftyone_hardness.methods.rer.projection import (
    pca_size,
    principal_components,
)
from fiftyone_hardness.methods.rer.statistics import (
    random_wrong_labels,
    rer_from_statistics,
)
from fiftyone_hardness.methods.validation import check_features, check_labels

logger = logging.getLogger(__name__)


@dataclass
class _Plan:
    """What a run derives from its config and data (stored, with the
    config, as ``results["model_config"]``)."""

    device: str
    steps: int
    ab: object
    input_dims: int
    feature_dims: int
    explained_variance: object
    class_chunk_size: int
    sample_chunk_size: int
    memory_budget_mb: float
    num_threads: object
    error_classes: object


def compute_rer(
    X,
    labels,
    num_classes=None,
    config=None,
    progress=None,
    keep_errors=False,
):
    """Reconstruction Error Ratios on a feature matrix.

    One small autoencoder per class is fit to the samples labelled with that
    class; a sample whose own class reconstructs it worse than another class
    is likely mislabeled. See ``docs/methods.md`` section 1.

    Args:
        X: (N, D) features (any vector field; CLIP embeddings in practice)
        labels: (N,) int class indices in ``[0, num_classes)``
        num_classes (None): the number of classes K; default
            ``labels.max() + 1``. Classes without samples get no
            autoencoder (they can never be predicted)
        config (None): an
            :class:`~fiftyone_hardness.methods.rer.config.RERConfig` (the
            objective, sizes, epochs, projection, calibration, chunking,
            seed, device, ...); None for the defaults. Its
            ``embeddings_field``, ``unsupervised`` and ``n_clusters`` are
            :func:`run_rer`'s business and ignored here
        progress (None): a callable ``(fraction, message)``
        keep_errors (False): also return the full (K, N) error matrix

    Returns:
        a :class:`~fiftyone_hardness.methods.rer.statistics.RERResult`;
        deterministic on CPU for a given seed and chunk size

    Raises:
        HardnessError: a config that is not an ``RERConfig``, labels or
            features that are not valid (fewer than 2 classes, a class with
            fewer than 2 samples, NaN/inf features, ...), or a training that
            diverges
    """
    config = _as_config(config)
    labels, num_classes, counts = check_labels(
        labels, num_classes, min_per_class=2, what="RER"
    )
    X = check_features(X, num_rows=len(labels))
    device = str(select_device(config.device))
    num_threads = _num_threads(config, X.shape[1], counts, device)
    with _torch_threads(num_threads):
        return _compute(
            X,
            labels,
            num_classes,
            counts,
            config,
            device,
            progress or no_progress,
            keep_errors,
        )


def _as_config(config):
    if config is None:
        return RERConfig()
    if not isinstance(config, RERConfig):
        raise HardnessError(
            "config must be an RERConfig, e.g. RERConfig(epochs=5), or None "
            "for the defaults; got %s" % type(config).__name__
        )
    return config


def _compute(
    X, labels, num_classes, counts, config, device, progress, keep_errors
):
    present = np.flatnonzero(counts)
    fit_rows = _fit_rows(labels, present, config)
    X, explained, input_dims = _project(X, fit_rows, config, progress)
    Xs = _scaled_tensor(X, fit_rows, device)
    plan = _make_plan(X, fit_rows, config, device, explained, input_dims)
    plan.error_classes = _error_classes(
        config, len(present), len(labels), keep_errors
    )
    stats, errors, losses, audit = _train_and_evaluate(
        Xs,
        labels,
        num_classes,
        present,
        fit_rows,
        config,
        plan,
        progress,
        keep_errors,
    )
    result = rer_from_statistics(
        stats,
        labels,
        calibration=config.calibration,
        difficulty_range=config.difficulty_range,
        estimate_probs=config.estimate_probs,
    )
    result.errors = errors
    result.losses = losses[:, present]
    result.results["model_config"] = _model_config(config, plan)
    # with candidate classes: how well they matched every class on a
    # random subset (methods/rer/candidates.py); None when exact
    result.results["candidate_audit"] = audit
    final = result.losses[-max(1, plan.steps // 10) :].mean(0)
    result.results["final_loss"] = float(final.mean())
    progress(1.0, "done")
    return result


# ---------------------------------------------------------------------------
# Step 2: the rows each class autoencoder is fit to
# ---------------------------------------------------------------------------


def _fit_rows(labels, present, config):
    rng = np.random.default_rng(config.seed)
    rows = []
    for c in present:
        idx = np.flatnonzero(labels == c)
        k = len(idx)
        if config.fit_frac < 1.0:
            k = max(min(len(idx), 2), int(round(config.fit_frac * len(idx))))
        if config.fit_samples_per_class:
            k = min(k, int(config.fit_samples_per_class))
        if k < len(idx):
            idx = np.sort(rng.choice(idx, size=k, replace=False))
        rows.append(idx)
    return rows


# ---------------------------------------------------------------------------
# Step 3: projection and scaling
# ---------------------------------------------------------------------------


def _project(X, fit_rows, config, progress):
    """Returns ``(X, explained variance or None, input dims)``: ``X``
    projected on its principal components when ``pca_components`` asks
    for it (label-free), else as it is."""
    input_dims = X.shape[1]
    class_size = np.median([len(r) for r in fit_rows])
    keep = pca_size(config.pca_components, input_dims, class_size)
    if keep is None:
        return X, None, input_dims
    progress(0.0, "principal components")
    X, explained = principal_components(X, keep)
    return X, explained, input_dims


def _scaled_tensor(X, fit_rows, device):
    """Min-max scales ``X`` on the fitted rows, clipped to ``[0, 1]`` (the
    sigmoid output's range), as a float32 tensor on ``device``."""
    import torch

    fitted = X[np.concatenate(fit_rows)]
    lo = fitted.min(axis=0).astype(np.float32)
    span = fitted.max(axis=0).astype(np.float32) - lo
    span[span <= 0] = 1.0
    inverse = (1.0 / span).astype(np.float32)
    # in place, in blocks: one (N, D) float32 array at the peak instead of
    # three temporaries (1 GB each at 1M x 512)
    out = np.empty(X.shape, dtype=np.float32)
    for s in range(0, len(X), 65536):
        block = out[s : s + 65536]
        np.subtract(X[s : s + 65536], lo, out=block, casting="unsafe")
        np.multiply(block, inverse, out=block)
        np.clip(block, 0.0, 1.0, out=block)
    return torch.from_numpy(out).to(device)


# ---------------------------------------------------------------------------
# Step 4: the plan
# ---------------------------------------------------------------------------


def _make_plan(X, fit_rows, config, device, explained, input_dims):
    import torch

    dim = X.shape[1]
    steps_per_epoch = max(
        1, int(math.ceil(_epoch_samples(fit_rows, config) / config.batch_size))
    )
    steps = int(max(config.epochs * steps_per_epoch, config.min_steps or 0))
    ab = None
    if config.objective == "umap":
        ab = list(find_ab_params(config.spread, config.min_dist))
    budget_mb, class_chunk, sample_chunk = _chunk_sizes(
        config, dim, len(fit_rows), device
    )
    return _Plan(
        device=device,
        steps=steps,
        ab=ab,
        input_dims=int(input_dims),
        feature_dims=int(dim),
        explained_variance=explained,
        class_chunk_size=class_chunk,
        sample_chunk_size=sample_chunk,
        memory_budget_mb=budget_mb,
        # called inside _torch_threads: the threads this run uses
        num_threads=torch.get_num_threads() if device == "cpu" else None,
        error_classes="all",
    )


def _epoch_samples(fit_rows, config):
    """The samples per class of one epoch: the mean fitted class size, at
    most ``samples_per_epoch``. The cap keeps the step count from growing
    with the class size: more steps on a large class let its autoencoder
    learn its mislabeled samples (``speed/rer_budget.py``)."""
    mean = float(np.mean([len(r) for r in fit_rows]))
    if config.samples_per_epoch:
        return min(mean, float(config.samples_per_epoch))
    return mean


def _error_classes(config, num_present, num_rows, keep_errors):
    """The classes each sample is evaluated under: ``"all"`` (exact), or
    ``"candidates"`` (:mod:`~fiftyone_hardness.methods.rer.candidates`;
    their number, or ``"all"``, is known once the models are trained)."""
    if keep_errors or not use_candidates(
        config.nearest_classes, config.sampled_classes, num_present, num_rows
    ):
        return "all"
    return "candidates"


def _chunk_sizes(config, dim, num_present, device):
    """Returns ``(memory budget in MB, classes per chunk, samples per
    evaluation block)``: as many classes as fit in the budget with their
    parameters, gradients, two Adam moments and training activations, and
    as many samples as fit with the chunk's activations."""
    hidden_dims = tuple(config.hidden_dims)
    budget_mb = config.memory_budget_mb
    if budget_mb is None:
        budget_mb = 8192 if device.startswith("cuda") else 1024
    budget = budget_mb * 2**20 / 4  # floats
    class_chunk = config.class_chunk_size
    if class_chunk is None:
        per_model = autoencoders.model_floats(
            dim, hidden_dims, config.n_components
        )
        train = 4 * per_model + 8 * config.batch_size * (
            dim + sum(hidden_dims)
        )
        class_chunk = int(max(1, min(num_present, budget // train)))
    sample_chunk = config.sample_chunk_size
    if sample_chunk is None:
        widest = max(hidden_dims + (config.n_components,))
        sample_chunk = int(
            max(64, budget // (class_chunk * (2 * dim + 2 * widest) + dim))
        )
    return float(budget_mb), int(class_chunk), int(sample_chunk)


def _num_threads(config, dim, counts, device):
    """The CPU threads for torch: ``config.num_threads``, else 1 for small
    problems (less than ``2e8`` multiply-adds per training step, e.g.
    digits: thread start-up costs more than it saves, and much more on a
    busy machine), else None (torch's setting)."""
    if config.num_threads is not None or device.startswith("cuda"):
        return config.num_threads
    classes = int(np.count_nonzero(counts))
    dims = (dim,) + tuple(config.hidden_dims) + (config.n_components,)
    macs = (
        classes
        * 2
        * config.batch_size
        * 2
        * sum(int(a) * int(b) for a, b in zip(dims[:-1], dims[1:]))
    )
    return 1 if macs < 2e8 else None


@contextlib.contextmanager
def _torch_threads(num_threads):
    import torch

    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------
# Step 5: training and evaluation, one chunk of classes at a time
# ---------------------------------------------------------------------------


def _train_and_evaluate(
    Xs,
    labels,
    num_classes,
    present,
    fit_rows,
    config,
    plan,
    progress,
    keep_errors,
):
    """Returns ``(statistics, (K, N) errors or None, (steps, K) losses,
    the candidate audit or None)``. Exact: each chunk's errors are folded
    into the running statistics as soon as it is trained. With candidate
    classes: every chunk is trained (and the audited rows evaluated under
    it) before the candidates are chosen and evaluated."""
    import torch

    n = len(labels)
    rand_labels = random_wrong_labels(
        labels, num_classes, seed=config.seed + 1, present=present
    )
    candidates = plan.error_classes == "candidates"
    if candidates:
        audit = ClassAudit(labels, present, seed=config.seed)
        trained = _TrainedChunks(plan.memory_budget_mb * 2**20 / 4)
    else:
        running = autoencoders.RunningStatistics(
            labels, rand_labels, plan.device
        )
    errors_full = np.zeros((num_classes, n)) if keep_errors else None
    all_losses = np.zeros((plan.steps, num_classes), dtype=np.float32)
    size = plan.class_chunk_size
    chunks = [present[i : i + size] for i in range(0, len(present), size)]
    # the share of the progress bar the training takes
    share = 0.8 if candidates else 1.0
    gen = torch.Generator(device=plan.device)
    for j, chunk in enumerate(chunks):
        gen.manual_seed(int(config.seed) * 7919 + j)
        rows = [fit_rows[np.searchsorted(present, c)] for c in chunk]
        model, losses = _train_chunk(
            Xs,
            chunk,
            rows,
            config,
            plan,
            gen,
            _chunk_progress(
                progress, j, len(chunks), chunk, num_classes, share
            ),
        )
        all_losses[:, chunk] = losses
        progress(share * (j + 0.9) / len(chunks), "reconstruction errors")
        if candidates:
            audit.evaluate(model, chunk, Xs, plan.sample_chunk_size)
            trained.add(chunk, model)
        else:
            errors = model.errors(Xs, plan.sample_chunk_size)
            running.update(chunk, errors)
            if keep_errors:
                errors_full[chunk] = errors.cpu().numpy()
            del errors
        del model
    if not candidates:
        return running.result(), errors_full, all_losses, None

    def evaluation_progress(fraction):
        progress(share + (1 - share) * fraction, "reconstruction errors")

    with trained:
        stats, nearest = _candidate_statistics(
            Xs,
            labels,
            rand_labels,
            fit_rows,
            present,
            config,
            plan,
            audit,
            trained,
            evaluation_progress,
        )
    plan.error_classes = (
        "all" if nearest is None else nearest + config.sampled_classes + 2
    )
    summary = audit.summary(stats, nearest, config.candidate_coverage)
    return stats, None, all_losses, summary


def _candidate_statistics(
    Xs,
    labels,
    rand_labels,
    fit_rows,
    present,
    config,
    plan,
    audit,
    trained,
    progress,
):
    """``(statistics, m)`` from the trained models: the errors under each
    sample's m nearest classes and the sampled ones, m chosen by the audit
    for ``candidate_coverage`` (``methods/rer/candidates.py``); under every
    class (m = None) when that m would leave too few classes out."""
    centroids = class_centroids(Xs, fit_rows)
    m = config.nearest_classes
    if config.candidate_coverage is not None:
        needed = audit.nearest_needed(Xs, centroids, config.candidate_coverage)
        m = None if needed is None else max(m, needed)
    if m is None or not use_candidates(
        m, config.sampled_classes, len(present), len(labels)
    ):
        running = autoencoders.RunningStatistics(
            labels, rand_labels, plan.device
        )
        for k, (chunk, model) in enumerate(trained):
            running.update(chunk, model.errors(Xs, plan.sample_chunk_size))
            progress((k + 1) / len(trained))
        return running.result(), None
    slots = candidate_classes(
        Xs,
        labels,
        rand_labels,
        centroids,
        present,
        m,
        config.sampled_classes,
        seed=config.seed,
    )
    collected = CandidateStatistics(slots, m, len(present), rand_labels)
    for k, (chunk, model) in enumerate(trained):
        collected.evaluate(model, chunk, Xs, plan.sample_chunk_size)
        progress((k + 1) / len(trained))
    return collected.result(), m


class _TrainedChunks:
    """The trained chunk models, kept until the candidate classes are
    known: in memory up to ``budget_floats`` parameters, beyond that in one
    anonymous temporary file, read back one chunk at a time. The file has
    no name on disk, so the system frees it when the run ends in any way,
    even killed (a named folder was left behind by a killed run). Iterates
    as ``(classes, model)``."""

    def __init__(self, budget_floats):
        self.budget = budget_floats
        self.kept = 0
        self.items = []
        self._file = None

    def add(self, chunk, model):
        for tensor in model.parameters():
            tensor.requires_grad_(False)
            tensor.grad = None
        size = sum(t.numel() for t in model.parameters())
        if self.kept + size <= self.budget:
            self.kept += size
            self.items.append((chunk, model))
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="rer-models-")
        self._file.seek(0, os.SEEK_END)
        where = _SpilledModel(
            self._file.tell(),
            len(model.weights),
            model.num_encoder_layers,
            model.weights[0].device,
        )
        for tensor in model.weights + model.biases:
            np.save(self._file, tensor.cpu().numpy(), allow_pickle=False)
        self.items.append((chunk, where))

    @property
    def num_spilled(self):
        """How many chunk models are in the file."""
        return sum(isinstance(m, _SpilledModel) for _, m in self.items)

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        for chunk, model in self.items:
            if isinstance(model, _SpilledModel):
                model = self._read(model)
            yield chunk, model

    def _read(self, where):
        import torch

        self._file.seek(where.offset)
        tensors = [
            torch.from_numpy(np.load(self._file, allow_pickle=False)).to(
                where.device
            )
            for _ in range(2 * where.num_layers)
        ]
        return autoencoders.BatchedAutoencoders.from_state(
            {
                "weights": tensors[: where.num_layers],
                "biases": tensors[where.num_layers :],
                "num_encoder_layers": where.num_encoder_layers,
            }
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.items = []
        if self._file is not None:
            self._file.close()


#: where :class:`_TrainedChunks` wrote a model in its file: the offset of
#: its first array, then its weights and as many biases
_SpilledModel = collections.namedtuple(
    "_SpilledModel", "offset num_layers num_encoder_layers device"
)


def _chunk_progress(progress, j, num_chunks, chunk, num_classes, share):
    def report(fraction):
        progress(
            share * (j + 0.9 * fraction) / num_chunks,
            "training autoencoders (classes %d-%d of %d)"
            % (chunk[0] + 1, chunk[-1] + 1, num_classes),
        )

    return report


def _train_chunk(Xs, chunk, rows, config, plan, gen, progress):
    """Trains the autoencoders of the classes ``chunk``; returns the model
    and its (steps, M) losses."""
    hidden_dims = tuple(config.hidden_dims)
    model = autoencoders.BatchedAutoencoders(
        len(chunk),
        plan.feature_dims,
        hidden_dims,
        config.n_components,
        seeds=[config.seed * 100003 + c for c in chunk],
        device=plan.device,
    )
    losses = autoencoders.train(
        model, Xs, rows, config, plan.steps, plan.ab, gen, progress
    )
    if not np.all(np.isfinite(losses)):
        raise TrainingDiverged(chunk[~np.isfinite(losses).all(0)].tolist())
    return model, losses


class TrainingDiverged(HardnessError):
    """The training of some class autoencoders diverged. ``classes`` holds
    their indices; the message names them (with ``names``, the class names
    that :func:`run_rer` knows and :func:`compute_rer` does not)."""

    def __init__(self, classes, names=None):
        self.classes = list(classes)
        shown = [names[c] for c in classes] if names else self.classes
        super().__init__(
            "The autoencoder training diverged (non-finite loss) for "
            "classes %s; try a smaller learning_rate" % shown
        )


# ---------------------------------------------------------------------------
# Step 6 (the formulas live in statistics.py): what the run records
# ---------------------------------------------------------------------------


def _model_config(config, plan):
    """The options as given plus what they resolved to (device, steps,
    chunk sizes, the projection's dimensions, ...), JSON-friendly."""
    model_config = config.model_options()
    model_config.update(asdict(plan))
    return model_config


# ---------------------------------------------------------------------------
# The registry adapter
# ---------------------------------------------------------------------------


def cluster_labels(X, n_clusters, seed=0):
    """k-means clusters of the min-max scaled features, the labels of the
    unsupervised variant (``docs/methods.md`` section 1, step 8)."""
    from sklearn.cluster import KMeans

    X = np.asarray(X, dtype=np.float32)
    lo = X.min(axis=0)
    span = X.max(axis=0) - lo
    span[span <= 0] = 1.0
    kmeans = KMeans(n_clusters=int(n_clusters), n_init=3, random_state=seed)
    return kmeans.fit_predict((X - lo) / span).astype(int)


def run_rer(data, config):
    """Computes Reconstruction Error Ratios on a vector field.

    Writes (as ``{run_key}_{suffix}``):

    - ``score``: the RER, ``E[y, i] / min_{c != y} E[c, i]`` (higher =
      more likely mislabeled; > 1 means another class's autoencoder
      reconstructs the sample better)
    - ``flag``: RER above the ansatz threshold
    - ``pred``: the class whose autoencoder reconstructs the sample best
    - ``prob`` (``estimate_probs=True``): the Appendix-D mistake probability
    - ``cluster`` (``unsupervised=True``, instead of ``pred``): the k-means
      cluster the scores refer to

    Results: ``chi_avg``, ``chi0``, ``chi_rand``, ``noise_rate``,
    ``threshold``, ``classification_difficulty``, ``class_chis`` (class ->
    mean RER), ``num_flagged`` and ``model_config`` (the options and what
    they resolved to: steps, device, dimensions, ...).

    Args:
        data: a :class:`fiftyone_hardness.methods.base.LabeledData`
        config: an :class:`~fiftyone_hardness.methods.rer.config.RERConfig`

    Returns:
        a :class:`fiftyone_hardness.methods.base.MethodOutput`
    """
    X = data.embeddings(config.embeddings_field)
    labels, names = _target_labels(data, X, config)
    try:
        result = compute_rer(
            X,
            labels,
            num_classes=len(names),
            config=config,
            progress=data.progress,
        )
    except TrainingDiverged as e:
        raise TrainingDiverged(e.classes, names) from None
    return _method_output(result, labels, names, config)


def _target_labels(data, X, config):
    """The labels RER scores against and their class names: the data's, or
    k-means clusters of the features in the unsupervised mode."""
    if not config.unsupervised:
        return data.labels, list(data.classes)
    k = int(config.n_clusters or data.num_classes)
    data.progress(0.0, "k-means (%d clusters)" % k)
    labels = cluster_labels(X, k, seed=config.seed)
    return labels, [str(c) for c in range(k)]


def _method_output(result, labels, names, config):
    fields = {"score": result.scores, "flag": result.flags}
    if config.unsupervised:
        fields["cluster"] = labels
    else:
        fields["pred"] = np.asarray(names, dtype=object)[result.preds]
    if config.estimate_probs:
        fields["prob"] = result.probs
    results = dict(result.results)
    results["class_chis"] = {
        names[c]: v for c, v in results["class_chis"].items()
    }
    if not config.unsupervised:
        results["class_scores"] = dict(results["class_chis"])
    results["unsupervised"] = bool(config.unsupervised)
    results["embeddings_field"] = config.embeddings_field
    return MethodOutput(fields=fields, results=results)
