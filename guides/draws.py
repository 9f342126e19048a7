"""Posterior draws (NUTS's) as a guide, so that what takes a guide (``evaluate``,
``posterior``, ``draw_latents``) takes MCMC draws too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from inference.data import full_batch

__all__ = ["DrawsGuide", "from_draws"]


class DrawsGuide(nn.Module):
    """A guide whose posterior is a set of draws: each call replays one draw, picked at
    random; :meth:`resample` gives many at once (what :func:`inference.posterior.draw_latents`
    asks for) and :meth:`median` their elementwise median. It has no parameters to train."""

    def __init__(self, draws: Mapping[str, torch.Tensor], event_dims: Mapping[str, int]):
        super().__init__()
        sizes = {len(v) for v in draws.values()}
        if len(sizes) != 1:
            raise ValueError(f"every site needs the same number of draws, got {sorted(sizes)}")
        self.draws = {k: v.detach() for k, v in draws.items()}
        self.event_dims = dict(event_dims)
        self.num_draws = sizes.pop()

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        i = int(torch.randint(self.num_draws, ()))
        return {
            name: pyro.sample(name, dist.Delta(value[i], event_dim=self.event_dims[name]))
            for name, value in self.draws.items()
        }

    def resample(self, num: int) -> dict[str, torch.Tensor]:
        """``num`` draws, shaped ``(num, *site)``: all of them in order when ``num`` is their
        count, else a random choice with replacement."""
        if num == self.num_draws:
            return dict(self.draws)
        index = torch.randint(self.num_draws, (num,))
        return {name: value[index] for name, value in self.draws.items()}

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {name: value.median(0).values for name, value in self.draws.items()}


def from_draws(
    model: Any, draws: Mapping[str, torch.Tensor], data: Mapping[str, torch.Tensor]
) -> DrawsGuide:
    """A :class:`DrawsGuide` for ``model``'s latent sites from ``draws`` (``site -> (S,
    *shape)``, e.g. ``mcmc.get_samples()``); each site's event dimension is read from one
    trace of the model on ``data``."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(full_batch(data))
    missing = [k for k in draws if k not in trace.nodes]
    if missing:
        raise ValueError(f"draws of {missing} are not sites of model '{model.name}'")
    event_dims = {k: int(trace.nodes[k]["fn"].event_dim) for k in draws}
    return DrawsGuide(draws, event_dims)
