"""
The optional projection of the features on their principal components
before RER trains (label-free), and the rule of ``pca_components="auto"``.

Features with more dimensions than a class has samples (e.g. 1280-d
embeddings of 180 images per class) are projected on the principal
components explaining 90% of their variance; measured, not assumed: see
:data:`AUTO_PCA_VARIANCE`. Numpy only.
"""

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: the variance fraction ``pca_components="auto"`` keeps, chosen on the
#: calibration settings (see the note at the end of
#: :mod:`fiftyone_hardness.methods.rer.statistics`): when the features have
#: more dimensions than a class has samples (the offline backbone's 1280-d
#: embeddings of 180 digits per class, 625-pixel faces at 100 per class),
#: each class autoencoder is fit to a handful of samples spread over many
#: near-empty directions, and their noise swamps the reconstruction errors.
#: Mean AUROC over the 38 calibration settings of
#: ``speed/rer_calibration.py``: 0.961 without projection, 0.973 / 0.974 /
#: 0.966 keeping 80% / 90% / 95% of the variance in the regime above;
#: 0.94-0.95 when projecting every feature set (low-dimensional tabular
#: features such as iris or wine lose real information)
AUTO_PCA_VARIANCE = 0.9


def pca_size(pca_components, dim, class_size):
    """The ``keep`` argument of :func:`principal_components` for a
    (validated) ``pca_components`` option, or None for no projection.

    Args:
        pca_components: ``"auto"``, None, an int >= 1 (that many
            components) or a fraction in ``(0, 1]`` (of the variance)
        dim: the feature dimension
        class_size: the samples a class autoencoder is fit to (the median
            over classes)
    """
    if pca_components is None:
        return None
    if pca_components == "auto":
        return AUTO_PCA_VARIANCE if dim > class_size else None
    if float(pca_components).is_integer() and (
        isinstance(pca_components, (int, np.integer)) or pca_components > 1
    ):
        return int(min(pca_components, dim))
    return float(pca_components)


def principal_components(X, keep, chunk_size=65536):
    """Projects ``X`` on its leading principal components.

    Args:
        X: (N, D) features
        keep: an int (that many components) or a float in ``(0, 1]`` (the
            fewest components explaining that fraction of the variance)
        chunk_size (65536): rows per block of the covariance and projection

    Returns:
        a tuple ``(Z, explained)``: the (N, k) float32 projections of the
        centered features, and the fraction of the variance they explain
    """
    X = np.asarray(X)
    n, d = X.shape
    mean = X.mean(axis=0, dtype=np.float64)
    centered = None
    if d <= n:
        # eigenvectors of the D x D covariance, accumulated in blocks
        cov = np.zeros((d, d))
        for s in range(0, n, chunk_size):
            block = (X[s : s + chunk_size] - mean).astype(np.float32)
            cov += block.T.astype(np.float64) @ block
        values, vectors = np.linalg.eigh(cov)
    else:
        # more dimensions than samples: through the N x N Gram matrix, whose
        # eigenvectors u give the components X^T u / sqrt(value)
        centered = (X - mean).astype(np.float32)
        values, vectors = np.linalg.eigh(
            (centered @ centered.T).astype(np.float64)
        )
    order = np.argsort(values)[::-1]
    values = np.maximum(values[order], 0.0)
    total = values.sum()
    k = _num_components(keep, values, d)
    top = order[:k]
    if centered is None:
        basis = vectors[:, top].astype(np.float32)
    else:
        basis = (centered.T @ vectors[:, top].astype(np.float32)) / np.sqrt(
            np.maximum(values[:k], 1e-30)
        ).astype(np.float32)
    mean32 = mean.astype(np.float32)
    if n:
        Z = np.concatenate(
            [
                (X[s : s + chunk_size].astype(np.float32) - mean32) @ basis
                for s in range(0, n, chunk_size)
            ]
        )
    else:
        Z = np.zeros((0, k), np.float32)
    explained = float(values[:k].sum() / total) if total > 0 else 1.0
    return Z, explained


def _num_components(keep, values, dim):
    # values: the eigenvalues, largest first
    total = values.sum()
    if isinstance(keep, float) and total > 0:
        cumulative = np.cumsum(values) / total
        k = int(np.searchsorted(cumulative, keep - 1e-12) + 1)
    else:
        k = 1 if isinstance(keep, float) else int(keep)
    return max(1, min(k, dim, int(np.count_nonzero(values > 0)) or 1))
