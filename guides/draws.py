"""Posterior draws (NUTS's) as a guide, so that what takes a guide (``evaluate``,
``posterior``, ``draw_latents``) takes MCMC draws too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import nn
from torch.distributions import biject_to

from inference.data import full_batch

__all__ = ["DrawsGuide", "from_draws"]


class DrawsGuide(nn.Module):
    """A guide whose posterior is a set of draws: each call replays one draw, picked at
    random; :meth:`resample` gives many at once (what :func:`inference.posterior.draw_latents`
    asks for) and :meth:`median` their median. It has no parameters to train.

    ``supports`` (site -> constraint) makes the median the elementwise median in each
    site's unconstrained space, mapped back (as an autoguide's median is): an elementwise
    median of simplex draws does not sum to one. A site without one is taken as real."""

    def __init__(
        self,
        draws: Mapping[str, torch.Tensor],
        event_dims: Mapping[str, int],
        supports: Mapping[str, constraints.Constraint] | None = None,
    ):
        super().__init__()
        sizes = {len(v) for v in draws.values()}
        if len(sizes) != 1:
            raise ValueError(f"every site needs the same number of draws, got {sorted(sizes)}")
        self.draws = {k: v.detach() for k, v in draws.items()}
        self.event_dims = dict(event_dims)
        self.supports = dict(supports or {})
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
        out = {}
        for name, value in self.draws.items():
            support = self.supports.get(name, constraints.real)
            if not value.is_floating_point() or support is constraints.real:
                out[name] = value.median(0).values
                continue
            to_support = biject_to(support)
            out[name] = to_support(to_support.inv(value).median(0).values)
        return out


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
    supports = {k: trace.nodes[k]["fn"].support for k in draws}
    return DrawsGuide(draws, event_dims, supports)
