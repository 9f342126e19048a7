"""Scalar latent quantisers with the straight-through estimator, shared by the zoo's
quantised-latent models (QLAE's learnable per-dimension codebooks, LQVI's fixed grid)."""

from __future__ import annotations

import torch

__all__ = ["straight_through_value", "nearest_code", "grid_round", "grid_quantize"]


def straight_through_value(z: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """``hard`` in value, with the gradient passed straight through to ``z``:
    ``z + sg(hard - z)`` (Bengio et al. 2013; van den Oord et al. 2017)."""
    if z.shape != hard.shape:
        raise ValueError(
            f"z and hard must have one shape, got {tuple(z.shape)} and {tuple(hard.shape)}"
        )
    return z + (hard - z).detach()


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The nearest value of each dimension's scalar codebook: ``z`` is ``(..., n_z)`` and
    ``codebook`` ``(n_z, K)``. No gradient reaches ``z``; the codebook gets one (as a
    codebook loss needs)."""
    if codebook.dim() != 2 or z.shape[-1] != codebook.shape[0]:
        raise ValueError(f"codebook must be (n_z={z.shape[-1]}, K), got {tuple(codebook.shape)}")
    distance = (z.detach().unsqueeze(-1) - codebook).abs()
    index = distance.argmin(-1, keepdim=True)
    book = codebook.expand(*z.shape, codebook.shape[-1])
    return torch.gather(book, -1, index).squeeze(-1)


def grid_round(z: torch.Tensor, spacing: float) -> torch.Tensor:
    """Each coordinate rounded to the nearest multiple of ``spacing`` (no gradient)."""
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    return spacing * torch.round(z.detach() / spacing)


def grid_quantize(z: torch.Tensor, spacing: float) -> torch.Tensor:
    """:func:`grid_round` in value, straight-through in gradient: the quantiser
    ``Q(z) = spacing * round(z / spacing)`` of a quantised-latent VAE's decoder input."""
    return straight_through_value(z, grid_round(z, spacing))
