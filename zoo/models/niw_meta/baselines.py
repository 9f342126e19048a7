"""Few-shot baselines tuned on validation episodes, for a fair calibration comparison.

A softmax over distances of features of norm 8 (ProtoNet's logits reach 256) is
over-confident by construction; an ECE advantage over it says little. So every baseline gets
the post-hoc fix a practitioner would apply: a temperature (Guo et al. 2017) fitted by
negative log-likelihood on *validation* episodes (drawn from the meta-training classes, never
the test episodes), and the simplest strong baselines on raw pixels of the support set
(nearest centroid with a fitted temperature; per-episode logistic regression with its
regularisation chosen on the same validation episodes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar

__all__ = [
    "nll",
    "fit_temperature",
    "tune_on_validation",
    "centroid_logits",
    "logistic_probs",
]


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of labels ``(N, Q)`` under logits ``(N, Q, ways)``."""
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()))


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on validation
    episodes (a bounded search over ``log T`` in ``[-5, 7]``)."""
    logits = logits.double()

    def loss(log_t: float) -> float:
        return nll(logits / math.exp(log_t), y)

    best = minimize_scalar(loss, bounds=(-5.0, 7.0), method="bounded")
    return float(math.exp(best.x))


def tune_on_validation(
    logits_for: Callable[[float], torch.Tensor], grid: Sequence[float], y_val: torch.Tensor
) -> tuple[float, float, float]:
    """Choose a setting from ``grid`` and a temperature for it by validation NLL.
    ``logits_for(setting)`` returns validation logits. Returns ``(setting, temperature,
    validation NLL)``."""
    best = None
    for setting in grid:
        logits = logits_for(setting)
        temperature = fit_temperature(logits, y_val)
        score = nll(logits / temperature, y_val)
        if best is None or score < best[2]:
            best = (setting, temperature, score)
    return best


def centroid_logits(episodes, ways: int) -> torch.Tensor:
    """Nearest centroid on raw pixels: negative squared distances of query images to the
    class means of the support images, ``(N, Q, ways)`` (temperature 1)."""
    xs = torch.as_tensor(episodes["x_support"])
    onehot = torch.nn.functional.one_hot(torch.as_tensor(episodes["y_support"]), ways).to(xs)
    centroids = onehot.mT @ xs / onehot.sum(-2).unsqueeze(-1)
    return -(torch.cdist(torch.as_tensor(episodes["x_query"]), centroids) ** 2)


def logistic_probs(episodes, ways: int, c: float) -> torch.Tensor:
    """Per-episode multinomial logistic regression (scikit-learn, L2 penalty ``C = c``) on
    the raw pixels of the support images; query probabilities ``(N, Q, ways)``."""
    from sklearn.linear_model import LogisticRegression

    xs, ys = np.asarray(episodes["x_support"]), np.asarray(episodes["y_support"])
    xq = np.asarray(episodes["x_query"])
    out = np.zeros(xq.shape[:2] + (ways,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs on 4-20 separable points may not "converge"
        for i in range(len(xs)):
            fitted = LogisticRegression(C=c, max_iter=200).fit(xs[i], ys[i])
            out[i][:, fitted.classes_] = fitted.predict_proba(xq[i])
    return torch.as_tensor(out, dtype=torch.float32)
