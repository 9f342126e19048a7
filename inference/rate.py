"""Rate in bits: what an entropy coder would spend on a latent under a model's prior.

- :func:`bits`: ``-log2 p`` from a log-probability in nats, summed over trailing dims;
- :func:`discretized_gaussian_bits`: the bits of an integer-quantised latent ``y`` under a
  Gaussian prior integrated over each integer's unit bin (Ballé et al. 2018's rate term),
  computed on the tail nearer the mean so that far-off values do not round to probability 0;
- :func:`index_bits`: the side information of naming one of ``entries`` dictionary items;
- :class:`NoisyDiscretizedGaussian`: the training-time density of a latent with unit uniform
  noise under that prior (a Pyro distribution, for rate-distortion VAEs);
- :class:`UnitUniform`: ``U(center - 1/2, center + 1/2)``, the posterior of such a VAE;
- :func:`psnr` and :func:`rd_gain`: distortion in dB and the mean gap between two
  rate-distortion curves over the rates both cover (a BD-PSNR with linear interpolation).
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import constraints

__all__ = [
    "bits",
    "discretized_gaussian_bits",
    "index_bits",
    "NoisyDiscretizedGaussian",
    "UnitUniform",
    "psnr",
    "rd_gain",
]

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


class NoisyDiscretizedGaussian(dist.TorchDistribution):
    """``N(loc, scale^2)`` convolved with ``U(-1/2, 1/2)``, elementwise: the density of a
    latent plus unit uniform noise, ``p(y) = Phi((y + 1/2 - loc) / scale) -
    Phi((y - 1/2 - loc) / scale)`` (Ballé et al. 2018). At integers it is the probability
    of :func:`discretized_gaussian_bits`, so ``-log_prob / ln 2`` is the rate in bits of the
    quantised latent; between them it is the noisy relaxation used in training."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.loc.expand(batch_shape), self.scale.expand(batch_shape))

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        noise = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device) - 0.5
        normal = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * normal + noise

    def log_prob(self, value):
        return -discretized_gaussian_bits(value, self.loc, self.scale) * LN2

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self.scale.pow(2) + 1.0 / 12.0


class UnitUniform(dist.TorchDistribution):
    """``U(center - 1/2, center + 1/2)`` elementwise, with log density 0 on the box up to
    a rounding tolerance (torch's ``Uniform`` gives ``-inf`` to its own draws when
    ``center + 1/2`` rounds below a draw at large ``|center|``, and a -ELBO of ``-inf``)."""

    arg_constraints = {"center": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, center, validate_args=None):
        self.center = torch.as_tensor(center)
        super().__init__(self.center.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.center.expand(torch.Size(batch_shape)))

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        noise = torch.rand(shape, dtype=self.center.dtype, device=self.center.device)
        return self.center + noise - 0.5

    def log_prob(self, value):
        offset = (value - self.center).abs()
        tolerance = 0.5 + 1e-5 * (1.0 + self.center.abs())
        return torch.where(offset <= tolerance, 0.0, -math.inf).to(offset.dtype)

    @property
    def mean(self):
        return self.center

    @property
    def variance(self):
        return torch.full_like(self.center, 1.0 / 12.0)


def psnr(mse: float, peak: float = 1.0) -> float:
    """``10 log10(peak^2 / mse)`` in dB."""
    if not mse > 0:
        raise ValueError(f"mse must be positive, got {mse!r}")
    return 10.0 * math.log10(peak**2 / mse)


def rd_gain(rate, quality, base_rate, base_quality, *, points: int = 100) -> float:
    """The mean of ``quality - base_quality`` (e.g. PSNR in dB, higher is better) over the
    rates both curves cover, each curve linearly interpolated in rate: positive when the
    first curve lies above the baseline. NaN when the rate ranges do not overlap."""
    curves = [np.asarray(v, dtype=float) for v in (rate, quality, base_rate, base_quality)]
    if any(v.ndim != 1 or len(v) < 2 for v in curves):
        raise ValueError("each curve needs at least 2 points, given as 1-d sequences")
    if len(curves[0]) != len(curves[1]) or len(curves[2]) != len(curves[3]):
        raise ValueError("rate and quality of a curve must have the same length")
    if not all(np.isfinite(v).all() for v in curves):
        raise ValueError("rates and qualities must be finite")
    r, q, br, bq = curves
    lo, hi = max(r.min(), br.min()), min(r.max(), br.max())
    if not lo < hi:
        return float("nan")
    grid = np.linspace(lo, hi, points)
    a, b = np.argsort(r), np.argsort(br)
    return float(np.mean(np.interp(grid, r[a], q[a]) - np.interp(grid, br[b], bq[b])))
