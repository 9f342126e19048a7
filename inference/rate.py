"""Rate in bits: what an entropy coder would spend on a latent under a model's prior.

- :func:`bits`: ``-log2 p`` from a log-probability in nats, summed over trailing dims;
- :func:`discretized_gaussian_bits`: the bits of an integer-quantised latent ``y`` under a
  Gaussian prior integrated over each integer's unit bin (Ballé et al. 2018's rate term),
  computed on the tail nearer the mean so that far-off values do not round to probability 0;
- :func:`index_bits`: the side information of naming one of ``entries`` dictionary items.
"""

from __future__ import annotations

import math

import torch

__all__ = ["bits", "discretized_gaussian_bits", "index_bits"]

LN2 = math.log(2.0)


def bits(log_prob: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
    """``-log_prob / ln 2``, summed over the last ``event_dims`` dimensions."""
    if not isinstance(event_dims, int) or event_dims < 0 or event_dims > log_prob.dim():
        raise ValueError(f"event_dims must be in 0..{log_prob.dim()}, got {event_dims!r}")
    value = -log_prob / LN2
    return value.flatten(-event_dims).sum(-1) if event_dims else value


def discretized_gaussian_bits(
    y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, *, min_prob: float = 1e-9
) -> torch.Tensor:
    """Bits of each element of ``y`` (integers, or integers plus uniform noise in training)
    under ``P(y) = Phi((y + 1/2 - mean) / scale) - Phi((y - 1/2 - mean) / scale)``,
    elementwise (broadcast). Probabilities are floored at ``min_prob`` (at most
    ``-log2(min_prob)`` bits, about 30 for the default) so a stray value costs a lot but
    not infinity."""
    if not (torch.as_tensor(scale) > 0).all():
        raise ValueError("scale must be positive everywhere")
    if not 0 < min_prob < 1:
        raise ValueError(f"min_prob must be in (0, 1), got {min_prob}")
    normal = torch.distributions.Normal(0.0, 1.0)
    # the bin's mass on the side of the mean, where the CDF is not near 1: no cancellation
    distance = -(y - mean).abs()
    upper = normal.cdf((distance + 0.5) / scale)
    lower = normal.cdf((distance - 0.5) / scale)
    return -torch.log2((upper - lower).clamp_min(min_prob))


def index_bits(entries: int) -> float:
    """``log2(entries)``: the bits to name one of ``entries`` equally likely items."""
    if not isinstance(entries, int) or entries < 1:
        raise ValueError(f"entries must be a positive integer, got {entries!r}")
    return math.log2(entries)
