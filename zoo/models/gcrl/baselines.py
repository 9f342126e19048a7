"""Baselines of the GCRL check: an ERM MLP forecaster (past -> future, squared error) and
constant-velocity extrapolation, the simplest strong forecaster."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from guides.encoders import mlp

__all__ = ["constant_velocity", "erm_forecaster", "train_forecaster"]


def constant_velocity(past: torch.Tensor, future_steps: int) -> torch.Tensor:
    """The last observed step's displacement repeated: (N, P, 2) -> (N, F, 2)."""
    past = torch.as_tensor(past, dtype=torch.float32)
    velocity = past[:, -1] - past[:, -2]
    ahead = torch.arange(1, future_steps + 1, dtype=past.dtype)
    return past[:, -1, None] + ahead[:, None] * velocity[:, None]


def erm_forecaster(past_steps: int, future_steps: int, hidden: Sequence[int]) -> nn.Sequential:
    """An MLP from the flattened past to the flattened future (the encoder-decoder sizes of
    the GCRL model it is compared with)."""
    return mlp([2 * past_steps, *hidden, 2 * future_steps])


def predict(net: nn.Module, past: torch.Tensor, future_steps: int) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.as_tensor(past, dtype=torch.float32).flatten(-2)).unflatten(
            -1, (future_steps, 2)
        )


def train_forecaster(
    net: nn.Module,
    past: torch.Tensor,
    future: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    callback: Callable[[int], None] | None = None,
) -> list[float]:
    """Adam on the mean squared error of every future coordinate, minibatches of
    ``batch_size`` rows drawn per epoch without replacement (as ``inference.svi.fit``
    does); ``callback(step)`` after each step. Returns the losses."""
    x = torch.as_tensor(past, dtype=torch.float32).flatten(-2)
    y = torch.as_tensor(future, dtype=torch.float32).flatten(-2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order, position, losses = torch.randperm(len(x), generator=generator), 0, []
    batch_size = min(batch_size, len(x))
    for step in range(1, steps + 1):
        if position + batch_size > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        rows = order[position : position + batch_size]
        position += batch_size
        loss = (net(x[rows]) - y[rows]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step)
    return losses
