"""PSIS k-hat of a guide against its model (Yao et al. 2018, "Yes, but did it work?").

``k < 0.5``: the guide is a good importance proposal for the posterior; ``0.5 <= k < 0.7``:
usable with care; ``k >= 0.7``: the importance weights have a heavy tail and the guide's
posterior should not be trusted (Vehtari et al., "Pareto smoothed importance sampling").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import pyro
import torch
from pyro.infer.importance import psis_diagnostic
from torch import nn

from inference.data import full_batch
from inference.evaluation import log_weights_per_row
from inference.posterior import az

__all__ = ["guide_khat", "pointwise_khat", "khat_verdict"]

#: thresholds of the verdicts (Yao et al. 2018, section 3)
GOOD, USABLE = 0.5, 0.7


def khat_verdict(k: float) -> str:
    """``"good"`` if ``k < 0.5``, ``"usable"`` if ``k < 0.7``, else ``"do not trust"``
    (a NaN k, an estimate that failed, is not trusted either)."""
    k = float(k)
    if k < GOOD:
        return "good"
    if k < USABLE:
        return "usable"
    return "do not trust"


def guide_khat(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    num_particles: int = 1000,
    seed: int = 0,
) -> dict:
    """PSIS k-hat of ``guide`` as a proposal for the joint posterior of all of ``model``'s
    latents given all of ``data`` (one batch), from ``num_particles`` importance weights.

    :returns: ``{"khat": float, "verdict": str}`` (verdict from :func:`khat_verdict`).
    """
    if not isinstance(num_particles, int) or num_particles < 10:
        raise ValueError(f"num_particles must be an integer >= 10, got {num_particles!r}")
    pyro.set_rng_seed(seed)
    batch = full_batch(data)
    mpn = int(getattr(model, "max_plate_nesting", 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few tail samples: k = inf says it
        k = psis_diagnostic(model, guide, batch, num_particles=num_particles, max_plate_nesting=mpn)
    k = float(k)
    if math.isnan(k):
        k = math.inf
    return {"khat": k, "verdict": khat_verdict(k)}


def pointwise_khat(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    num_particles: int = 200,
) -> np.ndarray:
    """Per-row PSIS k-hat of an amortized guide: for each data point n, the Pareto tail
    index of the weights ``p(x_n, z_n) / q(z_n | x_n)`` of its local latents (see
    :func:`inference.evaluation.log_weights_per_row`). Shape ``(N,)``.
    """
    if not isinstance(num_particles, int) or num_particles < 10:
        raise ValueError(f"num_particles must be an integer >= 10, got {num_particles!r}")
    log_w = log_weights_per_row(model, guide, data, num_particles)  # (K, N)
    log_w = log_w.detach().double().cpu().numpy().T  # (N, K): samples on the last axis
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns on k > 0.7; the values say it
        _, k = az.psislw(log_w)
    return np.asarray(k, dtype=float).reshape(-1)
