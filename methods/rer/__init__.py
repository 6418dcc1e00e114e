"""
Reconstruction Error Ratios (RER): class-wise autoencoders that score label
mistakes, class difficulty and dataset difficulty.

See ``docs/methods.md`` section 1 and Marks, Griffin & Corso (2024),
arXiv 2412.02596. One small autoencoder per class is fit to the samples
labelled with that class; a sample whose own class reconstructs it worse
than another class is likely mislabeled.

The package, along its seams:

- :mod:`~fiftyone_hardness.methods.rer.config`: :class:`RERConfig`, the one
  source of the parameters (defaults, validation, App form, stored config);
- :mod:`~fiftyone_hardness.methods.rer.core`: :func:`compute_rer` on arrays
  and :func:`run_rer`, the registry's adapter (with the peak-memory note);
- :mod:`~fiftyone_hardness.methods.rer.projection`: the optional principal
  components and the ``pca_components="auto"`` rule;
- :mod:`~fiftyone_hardness.methods.rer.graph`: UMAP's ``(a, b)`` and the
  fuzzy kNN graph of each class;
- :mod:`~fiftyone_hardness.methods.rer.autoencoders`: the batched class
  autoencoders, their training, and the running error statistics over
  chunks of classes;
- :mod:`~fiftyone_hardness.methods.rer.statistics`: the formulas on the
  error statistics (ratios, chi's, noise rate, threshold, difficulty,
  mistake probability) and their calibration constants. The dataset-level
  formulas are those of ``docs/methods.md``; because our autoencoders
  really train (the reference's are NaN-degenerate), the noise-rate
  estimate and the threshold constants were recalibrated by measurement
  (see :data:`CALIBRATIONS`); ``calibration="reference"`` selects the
  original constants.

Importing this package imports no torch; the functions that train import
it.
"""

from fiftyone_hardness.methods.rer.config import (
    REFERENCE_DIFFICULTY_RANGES,
    RERConfig,
)
from fiftyone_hardness.methods.rer.core import (
    cluster_labels,
    compute_rer,
    run_rer,
)
from fiftyone_hardness.methods.rer.graph import find_ab_params, fuzzy_knn_graph
from fiftyone_hardness.methods.rer.projection import (
    AUTO_PCA_VARIANCE,
    principal_components,
)
from fiftyone_hardness.methods.rer.statistics import (
    CALIBRATIONS,
    ErrorStatistics,
    RERResult,
    ansatz_threshold,
    chi_statistics,
    class_difficulties,
    classification_difficulty,
    error_ratios,
    get_calibration,
    mistake_probability,
    noise_rate_estimate,
    random_label_ratios,
    random_wrong_labels,
    rer_from_statistics,
    resolve_difficulty_range,
)

__all__ = [
    "AUTO_PCA_VARIANCE",
    "CALIBRATIONS",
    "REFERENCE_DIFFICULTY_RANGES",
    "ErrorStatistics",
    "RERConfig",
    "RERResult",
    "ansatz_threshold",
    "chi_statistics",
    "class_difficulties",
    "classification_difficulty",
    "cluster_labels",
    "compute_rer",
    "error_ratios",
    "find_ab_params",
    "fuzzy_knn_graph",
    "get_calibration",
    "mistake_probability",
    "noise_rate_estimate",
    "principal_components",
    "random_label_ratios",
    "random_wrong_labels",
    "rer_from_statistics",
    "resolve_difficulty_range",
    "run_rer",
]
