"""The distributions both NIW-Meta models use: a Wishart on a log-Cholesky vector (Pyro has
no InverseWishart) and a Normal given the Cholesky factor of its precision."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

__all__ = ["PrecisionTrilNormal", "WishartLogCholesky", "tril_to_vec", "vec_to_tril"]


def _tril_index(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.tril_indices(dim, dim))  # type: ignore[return-value]


def vec_to_tril(vec: torch.Tensor, dim: int) -> torch.Tensor:
    """Real vector (lower triangle row by row, log diagonal) -> Cholesky factor."""
    rows, cols = _tril_index(dim)
    tril = vec.new_zeros(vec.shape[:-1] + (dim, dim))
    tril[..., rows, cols] = vec
    diag = torch.diagonal(tril, dim1=-2, dim2=-1)
    return tril - torch.diag_embed(diag) + torch.diag_embed(diag.exp())


def tril_to_vec(tril: torch.Tensor) -> torch.Tensor:
    dim = tril.shape[-1]
    rows, cols = _tril_index(dim)
    fixed = tril - torch.diag_embed(torch.diagonal(tril, dim1=-2, dim2=-1))
    fixed = fixed + torch.diag_embed(torch.diagonal(tril, dim1=-2, dim2=-1).log())
    return fixed[..., rows, cols]


class WishartLogCholesky(dist.TorchDistribution):
    """``Lambda ~ Wishart(df, scale_tril)`` represented by ``v``, the lower triangle of
    ``chol(Lambda)`` with its diagonal on the log scale (a real vector of ``D (D + 1) / 2``).
    ``log p(v) = log Wishart(L Lᵀ) + D log 2 + sum_k (D - k + 2) log L_kk`` (k = 1..D)."""

    arg_constraints = {"df": constraints.positive, "scale_tril": constraints.lower_cholesky}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, df, scale_tril, validate_args=None):
        self.df = torch.as_tensor(df, dtype=scale_tril.dtype, device=scale_tril.device)
        self.scale_tril = scale_tril
        self.dim = scale_tril.shape[-1]
        batch_shape = torch.broadcast_shapes(self.df.shape, scale_tril.shape[:-2])
        event_shape = torch.Size([self.dim * (self.dim + 1) // 2])
        super().__init__(batch_shape, event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return WishartLogCholesky(
            self.df.expand(batch_shape),
            self.scale_tril.expand(batch_shape + (self.dim, self.dim)),
        )

    def rsample(self, sample_shape=()):
        # Bartlett: Lambda = (S A)(S A)ᵀ with A lower triangular, A_kk^2 ~ Chi2(df - k),
        # A_jk ~ N(0, 1): S A is already chol(Lambda), so no factorisation is needed
        shape = torch.Size(sample_shape) + self.batch_shape
        d = self.dim
        offsets = torch.arange(d, dtype=self.df.dtype, device=self.df.device)
        chi2 = dist.Chi2(self.df.expand(shape).unsqueeze(-1) - offsets).rsample()
        noise = torch.randn(shape + (d, d), dtype=self.df.dtype, device=self.df.device)
        bartlett = torch.tril(noise, -1) + torch.diag_embed(chi2.sqrt())
        return tril_to_vec(self.scale_tril @ bartlett)

    def log_prob(self, value):
        d = self.dim
        tril = vec_to_tril(value, d)
        log_diag = torch.diagonal(tril, dim1=-2, dim2=-1).log()
        half = torch.linalg.solve_triangular(self.scale_tril, tril, upper=False)
        log_det_scale = 2 * torch.diagonal(self.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        df = self.df
        log_wishart = (
            (df - d - 1) * log_diag.sum(-1)  # (df - D - 1) / 2 log|Lambda|
            - 0.5 * (half**2).sum((-1, -2))  # tr(S^-1 Lambda) / 2
            - 0.5 * df * d * math.log(2.0)
            - 0.5 * df * log_det_scale
            - torch.mvlgamma(df / 2, d)
        )
        powers = torch.arange(d + 1, 1, -1, dtype=value.dtype, device=value.device)
        return log_wishart + d * math.log(2.0) + (powers * log_diag).sum(-1)

    @property
    def mean(self):  # of the precision matrix, for reference (not of ``v``)
        return self.df[..., None, None] * self.scale_tril @ self.scale_tril.mT


class PrecisionTrilNormal(dist.TorchDistribution):
    """``Normal(loc, (L Lᵀ)^-1)`` given the Cholesky factor ``L`` of the *precision*: no
    inversion or re-factorisation (float32-safe where ``MultivariateNormal(precision_matrix=)``
    would re-factorise an ill-conditioned matrix)."""

    arg_constraints = {"loc": constraints.real_vector, "precision_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, precision_tril, validate_args=None):
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], precision_tril.shape[:-2])
        d = loc.shape[-1]
        self.loc = loc.expand(batch_shape + (d,))
        self.precision_tril = precision_tril.expand(batch_shape + (d, d))
        super().__init__(batch_shape, torch.Size([d]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        return PrecisionTrilNormal(
            self.loc.expand(batch_shape + (d,)), self.precision_tril.expand(batch_shape + (d, d))
        )

    def rsample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        z = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        tril = self.precision_tril.expand(shape + self.event_shape)
        x = torch.linalg.solve_triangular(tril.mT, z.unsqueeze(-1), upper=True).squeeze(-1)
        return self.loc + x

    def log_prob(self, value):
        d = self.event_shape[0]
        white = (self.precision_tril.mT @ (value - self.loc).unsqueeze(-1)).squeeze(-1)
        log_det = torch.diagonal(self.precision_tril, dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * (white**2).sum(-1) + log_det - 0.5 * d * math.log(2 * math.pi)
