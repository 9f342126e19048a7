"""Per-row ELBO and importance-weighted bounds of a fitted (model, guide) pair."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import torch
from pyro import poutine
from torch import nn

from inference.data import DATA_PLATE, Batch

__all__ = ["log_weights_per_row", "elbo_per_row", "iwae_per_row"]


def log_weights_per_row(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    num_particles: int,
    *,
    chunk: int = 512,
) -> torch.Tensor:
    """``log p(x_n, z_n) - log q(z_n | x_n)`` for each row n and particle: shape (K, N).

    Each row is treated as a one-row data set (plate size 1), so a row's weight holds its
    local latents and observations only; a model's global sites are not part of it.
    """
    size = len(next(iter(data.values())))
    device = next(iter(data.values())).device
    rows = []
    with torch.no_grad():
        for start in range(0, size, chunk):
            index = torch.arange(start, min(size, start + chunk), device=device)
            batch = Batch({k: v[index] for k, v in data.items()}, index=index, size=size)
            rows.append(_chunk_log_weights(model, guide, batch, num_particles))
    return torch.cat(rows, dim=-1)


def _chunk_log_weights(model, guide, batch: Batch, num_particles: int) -> torch.Tensor:
    mpn = int(getattr(model, "max_plate_nesting", 1))

    def vectorized(fn):
        def wrapped(*args):
            with pyro.plate("_particles", num_particles, dim=-(mpn + 1)):
                return fn(*args)

        return wrapped

    guide_trace = poutine.trace(vectorized(guide)).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(vectorized(model), trace=guide_trace)).get_trace(
        batch
    )
    total = torch.zeros(num_particles, batch.batch_size, device=batch.index.device)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            if not any(f.name == DATA_PLATE for f in site["cond_indep_stack"]):
                continue
            log_prob = site["fn"].log_prob(site["value"])
            log_prob = log_prob.expand(site["fn"].batch_shape)
            # (K, [inner plates...], B) -> (K, B); the data plate is dim -1
            log_prob = log_prob.reshape(num_particles, -1, batch.batch_size).sum(1)
            total = total + sign * log_prob
    return total


def elbo_per_row(model, guide, data, num_particles: int = 10) -> torch.Tensor:
    """Monte Carlo ELBO of each row's local part, averaged over particles: shape (N,)."""
    return log_weights_per_row(model, guide, data, num_particles).mean(0)


def iwae_per_row(model, guide, data, num_particles: int = 100) -> torch.Tensor:
    """Importance-weighted bound log mean_k w_nk of each row: shape (N,)."""
    log_w = log_weights_per_row(model, guide, data, num_particles)
    return torch.logsumexp(log_w, 0) - math.log(num_particles)
