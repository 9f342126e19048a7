"""Encoder networks for amortized local guides, shared by the zoo's models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn

__all__ = ["mlp", "NormalEncoder", "as_pyro_module"]


def as_pyro_module(module: nn.Module) -> nn.Module:
    """Convert a plain torch module (and its children) to a PyroModule in place."""
    if not isinstance(module, PyroModule):
        to_pyro_module_(module, recurse=True)
    return module


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.Softplus) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` (no final activation)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return as_pyro_module(nn.Sequential(*layers))


class NormalEncoder(PyroModule):
    """x -> (loc, scale) of a diagonal Normal over a ``latent_dim`` latent."""

    def __init__(self, input_dim: int, latent_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = mlp([input_dim, *hidden, 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4
