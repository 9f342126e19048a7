"""Scores of inferred latents against known truth, built on scikit-learn."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

__all__ = ["affine_r2"]


def _matrix(values) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), -1)


def affine_r2(inferred, true) -> float:
    """R^2 of the least-squares affine regression of ``true`` (rows, b) on ``inferred``
    (rows, a), averaged over the b columns of ``true`` (``sklearn.metrics.r2_score``):
    1 when the inferred latents are the truth up to an affine map. Arrays or tensors; any
    trailing dimensions are flattened."""
    x, y = _matrix(inferred), _matrix(true)
    fitted = LinearRegression().fit(x, y).predict(x)
    return float(r2_score(y, fitted))
