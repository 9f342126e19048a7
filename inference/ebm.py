"""Sampling an energy-based model for contrastive divergence: stochastic-gradient Langevin
dynamics (SGLD) and a persistent replay buffer (JEM-style persistent CD).

An energy-based model p(x) = exp(-E(x)) / Z has the maximum-likelihood gradient
``-E_data grad E(x) + E_model grad E(x)``; the second expectation is taken over samples of
the model, here short SGLD chains started from a replay buffer of earlier chains' ends
(re-initialised uniformly in a box with a small probability, so the chains keep exploring)::

    x_{k+1} = clamp(x_k - step_size * grad_x E(x_k) + noise * eps_k),  eps_k ~ N(0, I)

Any model with an energy function (a callable ``x -> (N,)`` energies) uses it::

    buffer = ReplayBuffer(size=1000, shape=(2,), low=-3.0, high=3.0)
    negatives = persistent_sgld(energy, buffer, 256, steps=20, step_size=0.01, noise=0.01)
    loss = energy(x).mean() - energy(negatives).mean()   # contrastive divergence

Random numbers come from torch's global generator (seeded by ``pyro.set_rng_seed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["sgld", "ReplayBuffer", "persistent_sgld"]

Energy = Callable[[torch.Tensor], torch.Tensor]


def _check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def sgld(
    energy: Energy,
    x: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    noise: float,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    """``steps`` SGLD updates of the rows of ``x`` under ``energy`` (gradients with respect
    to ``x`` only: the energy's parameters receive none), clamped to ``[low, high]`` when
    given. Returns the chains' ends, detached. ``noise = sqrt(2 step_size)`` is Langevin
    dynamics at temperature 1; JEM uses a much smaller noise (a sharper, biased sampler)."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError("x must be a floating-point tensor with one row per chain")
    if not torch.isfinite(x).all():
        raise ValueError("x has non-finite values")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    _check_positive("step_size", step_size, allow_zero=True)
    _check_positive("noise", noise, allow_zero=True)
    if low is not None and high is not None and not low < high:
        raise ValueError(f"low must be below high, got {low} and {high}")
    x = x.detach().clone()
    with torch.enable_grad():
        for _ in range(steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(x).sum(), x)
            x = x.detach() - step_size * grad + noise * torch.randn_like(x)
            if low is not None or high is not None:
                x = x.clamp(low, high)
    return x.detach()


class ReplayBuffer(nn.Module):
    """``size`` stored chain states of shape ``shape``, started uniform in ``[low, high]``.
    A registered buffer (``samples``), so it is saved and restored with the model that
    holds it."""

    samples: torch.Tensor

    def __init__(self, size: int, shape: tuple[int, ...], *, low: float, high: float):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"shape must be positive integers, got {shape!r}")
        if not low < high:
            raise ValueError(f"low must be below high, got {low} and {high}")
        self.low, self.high = float(low), float(high)
        self.register_buffer("samples", self.uniform(size, tuple(shape)))

    def uniform(self, num: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """``num`` fresh states, uniform in the box."""
        shape = tuple(self.samples.shape[1:]) if shape is None else shape
        device = self.samples.device if hasattr(self, "samples") else None
        return self.low + (self.high - self.low) * torch.rand(num, *shape, device=device)

    def draw(self, num: int, reinit: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, start)``: ``num`` stored states (with replacement), each replaced by a
        fresh uniform one with probability ``reinit``."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        if not 0.0 <= reinit <= 1.0:
            raise ValueError(f"reinit must be a probability in [0, 1], got {reinit!r}")
        index = torch.randint(len(self.samples), (num,), device=self.samples.device)
        start = self.samples[index].clone()
        fresh = torch.rand(num, device=start.device) < reinit
        if fresh.any():
            start[fresh] = self.uniform(int(fresh.sum()))
        return index, start

    def update(self, index: torch.Tensor, states: torch.Tensor) -> None:
        """Store ``states`` at ``index`` (the chains' ends)."""
        self.samples[index] = states.detach().to(self.samples.dtype)


def persistent_sgld(
    energy: Energy,
    buffer: ReplayBuffer,
    num: int,
    *,
    steps: int,
    step_size: float,
    noise: float,
    reinit: float = 0.05,
    update: bool = True,
) -> torch.Tensor:
    """``num`` negative samples for contrastive divergence: chains drawn from ``buffer``
    (a fraction ``reinit`` restarted uniformly), run ``steps`` SGLD steps clamped to the
    buffer's box, and written back (unless ``update=False``)."""
    index, start = buffer.draw(num, reinit)
    out = sgld(
        energy,
        start,
        steps=steps,
        step_size=step_size,
        noise=noise,
        low=buffer.low,
        high=buffer.high,
    )
    if update:
        buffer.update(index, out)
    return out
