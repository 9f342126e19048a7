"""Scores of inferred latents and forecasts against known truth, built on scikit-learn and
SciPy: affine R^2, accuracy of unlabelled clusters or states after matching, the mean
correlation coefficient (identifiability up to permutation), trajectory displacement errors
and interval coverage."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from sklearn.linear_model import LinearRegression
from sklearn.metrics import confusion_matrix, r2_score

__all__ = [
    "affine_r2",
    "match_classes",
    "hungarian_accuracy",
    "mean_corr_coef",
    "displacement_errors",
    "interval_coverage",
]


def _array(values) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _matrix(values) -> np.ndarray:
    values = _array(values).astype(np.float64)
    return values.reshape(len(values), -1)


def affine_r2(inferred, true) -> float:
    """R^2 of the least-squares affine regression of ``true`` (rows, b) on ``inferred``
    (rows, a), averaged over the b columns of ``true`` (``sklearn.metrics.r2_score``):
    1 when the inferred latents are the truth up to an affine map. Arrays or tensors; any
    trailing dimensions are flattened."""
    x, y = _matrix(inferred), _matrix(true)
    fitted = LinearRegression().fit(x, y).predict(x)
    return float(r2_score(y, fitted))


def match_classes(pred, labels, num_classes: int) -> np.ndarray:
    """Permutation ``perm`` with ``perm[predicted class] = true class`` maximizing
    agreement (Hungarian algorithm on the confusion table): unsupervised clusters, mixture
    components or hidden states carry arbitrary labels."""
    pred, labels = _array(pred).astype(np.int64), _array(labels).astype(np.int64)
    classes = np.arange(num_classes)
    table = confusion_matrix(pred, labels, labels=classes)  # rows: predicted, cols: true
    rows, cols = linear_sum_assignment(-table)
    perm = np.empty(num_classes, dtype=np.int64)
    perm[rows] = cols
    return perm


def hungarian_accuracy(pred, labels, num_classes: int) -> float:
    """Accuracy of ``pred`` after the best one-to-one relabelling of its classes."""
    pred, labels = _array(pred).astype(np.int64), _array(labels).astype(np.int64)
    perm = match_classes(pred, labels, num_classes)
    return float(np.mean(perm[pred] == labels))


def mean_corr_coef(inferred, true, method: str = "pearson") -> float:
    """Mean correlation coefficient (MCC): the absolute correlations between inferred and
    true factors (rows, d), each true factor matched to one inferred dimension by the
    Hungarian algorithm, averaged over the matched pairs. 1 when the latents recover the
    factors up to permutation and (``pearson``) affine or (``spearman``) monotone maps of
    each. The standard identifiability score of nonlinear-ICA style models."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    x, y = _matrix(inferred), _matrix(true)
    if len(x) != len(y):
        raise ValueError(f"inferred has {len(x)} rows but true has {len(y)}")
    if method == "spearman":
        x, y = rankdata(x, axis=0), rankdata(y, axis=0)
    corr = np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1] :]
    corr = np.nan_to_num(np.abs(corr))  # a constant column correlates with nothing
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def displacement_errors(predicted, true) -> tuple[float, float]:
    """``(ADE, FDE)`` of trajectories (rows, steps, 2): the Euclidean error averaged over
    every step, and at the final step, each averaged over rows."""
    p, t = _array(predicted).astype(np.float64), _array(true).astype(np.float64)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"expected two (rows, steps, dims) arrays of one shape, got "
                         f"{p.shape} and {t.shape}")  # fmt: skip
    dist = np.linalg.norm(p - t, axis=-1)
    return float(dist.mean()), float(dist[:, -1].mean())


def interval_coverage(draws, true, level: float = 0.9) -> float:
    """Fraction of ``true`` values inside the central ``level`` interval of ``draws``
    (samples first: (S, *true.shape)); close to ``level`` for calibrated forecasts."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d, t = _array(draws).astype(np.float64), _array(true).astype(np.float64)
    if d.shape[1:] != t.shape:
        raise ValueError(f"draws have shape {d.shape}; expected (S, *{t.shape})")
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(np.mean((t >= lo) & (t <= hi)))
