"""
The parameters of RER (:class:`RERConfig`): the one source of their
defaults, their validation, the App form and the stored run config.

Imports no torch, so that building a form stays cheap.
"""

from dataclasses import dataclass

from fiftyone_hardness.methods.config import MethodConfig, param

OBJECTIVES = [
    ("umap", "Parametric UMAP + reconstruction (default)"),
    ("reconstruction", "Reconstruction only"),
]

#: ``pca_components`` choices offered in the App; Python also takes any
#: int >= 1 or fraction in (0, 1]
PCA_CHOICES = [
    ("auto", "Automatic: 90% of the variance when dims > samples per class"),
    (None, "Off: the features as they are"),
    (0.9, "Principal components explaining 90% of the variance"),
    (0.95, "Principal components explaining 95% of the variance"),
    (0.99, "Principal components explaining 99% of the variance"),
]

CALIBRATION_CHOICES = [
    ("fitted", "Fitted to our autoencoders (default)"),
    ("reference", "Reference constants (RER paper)"),
]

#: (lo, hi) of ``chi_avg`` for known feature models, from the RER paper (on
#: the reference autoencoders); ``classification_difficulty`` maps
#: ``chi_avg`` linearly from ``[lo, hi]`` to ``[0, 1]``
REFERENCE_DIFFICULTY_RANGES = {
    "ViT-L-14": (0.76, 1.04),
    "ViT-B-32": (0.84, 1.01),
}

DIFFICULTY_CHOICES = [
    (None, "From the data (labels as good as possible .. random)"),
    ("ViT-L-14", "CLIP ViT-L/14 reference range (0.76, 1.04)"),
    ("ViT-B-32", "CLIP ViT-B/32 reference range (0.84, 1.01)"),
]


def _check_pca(value):
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "expected 'auto', None, an int >= 1 or a fraction in (0, 1]"
    if isinstance(value, float) and not value.is_integer():
        if not 0 < value <= 1:
            return "a fraction of the variance must be in (0, 1]"
        return None
    if value < 1:
        return "expected 'auto', None, an int >= 1 or a fraction in (0, 1]"
    return None


def _check_difficulty_range(value):
    if isinstance(value, str):
        if value in REFERENCE_DIFFICULTY_RANGES:
            return None
        return "expected one of %s, or (lo, hi) with lo < hi" % ", ".join(
            REFERENCE_DIFFICULTY_RANGES
        )
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return "expected a model name or (lo, hi) with lo < hi"
    if not lo < hi:
        return "expected (lo, hi) with lo < hi"
    return None


def _check_calibration(value):
    if isinstance(value, dict) or value in ("fitted", "reference"):
        return None
    return "expected 'fitted', 'reference' or a dict of constants"


def _check_hidden_dims(value):
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1
        for v in value
    ):
        return "expected a list of layer sizes >= 1, e.g. [256]"
    return None


@dataclass
class RERConfig(MethodConfig):
    """Reconstruction Error Ratios: one small autoencoder per class on an
    embeddings field; see ``docs/methods.md`` section 1."""

    embeddings_field: str = param(
        None,
        "The vector field holding the features (e.g. CLIP embeddings)",
        kind="str",
        label="Embeddings field",
    )
    objective: str = param(
        "umap",
        "'umap' (parametric UMAP + 20 x MSE) or 'reconstruction' (MSE only)",
        choices=OBJECTIVES,
        label="Training objective",
    )
    epochs: int = param(
        10,
        "Passes over the average fitted class (at most "
        "fit_samples_per_class samples); longer training memorizes "
        "mislabeled samples (the thresholds are fitted for 10)",
        minimum=1,
        label="Epochs",
    )
    fit_frac: float = param(
        1.0,
        "Fraction of each class used to fit its autoencoder (every sample "
        "is scored)",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1.0,
        label="Fraction of each class used to fit",
    )
    fit_samples_per_class: int = param(
        1000,
        "At most this many samples per class (a random subset) are used to "
        "fit; every sample is scored. The cap keeps the training steps and "
        "the kNN graph from growing with the class size: on larger classes "
        "the autoencoders learned their mislabeled samples (1000 was chosen "
        "on classes of 1k-50k samples, speed/rer_budget.py); empty for all",
        kind="int",
        minimum=2,
        optional=True,
        label="At most this many samples per class to fit",
    )
    samples_per_epoch: int = param(
        None,
        "The samples per class that make one epoch: training runs "
        "epochs * ceil(min(mean fitted class size, this) / batch_size) "
        "steps. A cap on the steps that fits every sample (with "
        "fit_samples_per_class=None); measured below the default's "
        "subsampling in speed/rer_budget.py. Empty for the mean fitted "
        "class size",
        kind="int",
        minimum=1,
        form=False,
    )
    pca_components: object = param(
        "auto",
        "Project the features on their principal components first "
        "(label-free): 'auto' keeps 90% of the variance when the features "
        "have more dimensions than a class has samples; None keeps the "
        "features; an int keeps that many components, a fraction in (0, 1] "
        "the fewest explaining that much variance",
        kind="any",
        optional=True,
        check=_check_pca,
        form_choices=PCA_CHOICES,
        label="Reduce dimensions first",
    )
    estimate_probs: bool = param(
        False,
        "Also write the mistake probability {run_key}_prob",
        label="Estimate mistake probabilities",
    )
    unsupervised: bool = param(
        False,
        "Score against k-means clusters of the features instead of the "
        "labels (dataset difficulty without labels)",
        label="Unsupervised (k-means clusters instead of labels)",
    )
    n_clusters: int = param(
        None,
        "Clusters of the unsupervised mode; empty for the number of classes",
        kind="int",
        minimum=2,
        label="Clusters",
    )
    difficulty_range: object = param(
        None,
        "How chi_avg maps to the 0 (easy) .. 1 (hard) difficulty: None from "
        "the data, a feature model's reference range ('ViT-L-14', "
        "'ViT-B-32'), or (lo, hi)",
        kind="any",
        optional=True,
        check=_check_difficulty_range,
        form_choices=DIFFICULTY_CHOICES,
        label="Difficulty normalization",
    )
    calibration: object = param(
        "fitted",
        "The noise-rate and threshold constants: 'fitted' (to our "
        "autoencoders), 'reference' (the RER paper's) or a dict of them",
        kind="any",
        check=_check_calibration,
        form_choices=CALIBRATION_CHOICES,
        label="Threshold constants",
    )
    hidden_dims: list = param(
        [256],
        "Hidden layer sizes of the encoder (mirrored in the decoder)",
        kind="any",
        check=_check_hidden_dims,
        form=False,
    )
    n_components: int = param(10, "The code size", minimum=1, form=False)
    batch_size: int = param(
        64,
        "Samples (or graph edges) per class per step",
        minimum=1,
        form=False,
    )
    learning_rate: float = param(
        1e-3,
        "Adam's learning rate",
        minimum=0,
        exclusive_minimum=True,
        form=False,
    )
    l2: float = param(1e-6, "L2 penalty on the weights", minimum=0, form=False)
    dropout: float = param(
        0.01,
        "Dropout on the hidden layers during training",
        minimum=0,
        maximum=1,
        exclusive_maximum=True,
        form=False,
    )
    n_neighbors: int = param(
        40,
        "Neighbours of the fuzzy kNN graph ('umap')",
        minimum=2,
        form=False,
    )
    graph_neighbors: str = param(
        "auto",
        "How the neighbours of the fuzzy kNN graph are found ('umap'): "
        "'exact', 'ivf' (approximate, bounded memory at any class size) or "
        "'auto' (exact on a GPU and for classes of up to 20k fitted "
        "samples, approximate above)",
        choices=[
            ("auto", "Exact up to 20k samples per class, else approximate"),
            ("exact", "Exact (chunked)"),
            ("ivf", "Approximate (inverted file, re-ranked)"),
        ],
        form=False,
    )
    negative_sample_rate: int = param(
        5, "Negative samples per edge ('umap')", minimum=1, form=False
    )
    reconstruction_weight: float = param(
        20.0, "Weight of the MSE in 'umap'", minimum=0, form=False
    )
    min_dist: float = param(
        0.1,
        "UMAP's min_dist (gives the curve's a, b)",
        minimum=0,
        form=False,
    )
    spread: float = param(
        1.0,
        "UMAP's spread (gives the curve's a, b)",
        minimum=0,
        exclusive_minimum=True,
        form=False,
    )
    min_steps: int = param(
        None,
        "At least this many optimizer steps",
        kind="int",
        minimum=1,
        form=False,
    )
    nearest_classes: int = param(
        10,
        "Each sample's error is computed under its own class, its random "
        "wrong label, at least this many classes with the nearest "
        "centroids (more when candidate_coverage needs them) and "
        "sampled_classes random others, instead of under every class; "
        "None for every class (exact, O(N x K)). Used when it is fewer "
        "classes than there are",
        kind="int",
        minimum=1,
        optional=True,
        form=False,
    )
    candidate_coverage: float = param(
        0.999,
        "With nearest_classes: the share of samples whose best other "
        "class must be among their nearest classes, measured on 1000 "
        "samples evaluated under every class; the number of nearest "
        "classes grows until it holds (up to every class, the exact "
        "computation). None: exactly nearest_classes",
        kind="float",
        minimum=0,
        exclusive_minimum=True,
        maximum=0.999,
        optional=True,
        form=False,
    )
    sampled_classes: int = param(
        4,
        "Random other classes per sample whose mean error estimates the "
        "far classes' sum (with nearest_classes)",
        minimum=1,
        form=False,
    )
    class_chunk_size: int = param(
        None,
        "Classes trained and evaluated together; default: as many as fit "
        "in memory_budget_mb",
        kind="int",
        minimum=1,
        form=False,
    )
    sample_chunk_size: int = param(
        None,
        "Samples evaluated together; default: as many as fit in "
        "memory_budget_mb",
        kind="int",
        minimum=1,
        form=False,
    )
    memory_budget_mb: float = param(
        None,
        "Working memory one chunk may use; default 1024 on CPU, 8192 on a "
        "GPU",
        kind="float",
        minimum=1,
        form=False,
    )
    seed: int = param(0, "Random seed", minimum=0, label="Seed")
    device: str = param(
        None, "torch device; 'cuda' when available", kind="str", form=False
    )
    num_threads: int = param(
        None,
        "CPU threads for torch during the call; default 1 for small "
        "problems, else torch's setting",
        kind="int",
        minimum=1,
        form=False,
    )

    def check(self):
        if self.n_clusters is not None and not self.unsupervised:
            return (
                "n_clusters",
                "Invalid n_clusters=%r: it only applies with "
                "unsupervised=True" % self.n_clusters,
            )
        return None

    def model_options(self):
        """The options :func:`fiftyone_hardness.methods.rer.compute_rer`
        reads, as a dict (everything but where the features come from and
        the unsupervised mode, which are
        :func:`~fiftyone_hardness.methods.rer.run_rer`'s): the start of the
        ``model_config`` a run records."""
        options = self.to_dict()
        for name in ("embeddings_field", "unsupervised", "n_clusters"):
            options.pop(name)
        return options
