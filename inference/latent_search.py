"""Test-time search in latent space: a latent per instance climbed by gradient steps on an
objective computed through a network that stays fixed.

Two uses share it:

- **semi-amortized inference** (:func:`refine`): an encoder's mean refined by K gradient
  steps of the log joint before the guide samples around it (the latent program network).
  In training the steps are either differentiated through (``create_graph=True``: the
  encoder and decoder learn through the refinement, second order) or, by default, the update
  is added as a constant so the encoder learns to start where the steps end (first order);
- **posterior search over a frozen model** (:func:`search`): a latent per instance moved by
  Adam (or plain gradient steps) towards a higher objective (a log likelihood, or a reward
  under a proximity prior as in LatentSeek), each instance stopping once its own ``done``
  test holds.

Both take gradients with respect to the latent only (``torch.autograd.grad`` with the latent
as the sole input), so no network parameter receives a gradient, and :func:`search` also
switches the modules it is given out of autograd while it runs. The objective is a function
``z -> values`` with one value per instance (shape ``z.shape[:1]``); instances must not
interact through it, so that one instance's steps depend on its own value alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from inference.online import frozen

__all__ = ["OPTIMIZERS", "SearchResult", "refine", "search"]

Objective = Callable[[torch.Tensor], torch.Tensor]

#: the optimizers of :func:`search`: Adam (per coordinate) or plain gradient ascent
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def _values(objective: Objective, z: torch.Tensor) -> torch.Tensor:
    values = objective(z)
    if not isinstance(values, torch.Tensor) or values.shape != z.shape[:1]:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"the objective must return one value per instance, shape {tuple(z.shape[:1])}; "
            f"it returned {shape}"
        )
    return values


def _check(steps: int, lr: float) -> None:
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")


def refine(
    loc: torch.Tensor,
    objective: Objective,
    *,
    steps: int,
    lr: float,
    create_graph: bool = False,
) -> torch.Tensor:
    """``loc`` after ``steps`` plain gradient-ascent steps ``z <- z + lr * grad objective(z)``.

    With ``create_graph`` the result is a differentiable function of ``loc`` and of whatever
    the objective depends on, through every step. Without it the result is
    ``loc + (z_K - loc).detach()``: gradients reach ``loc`` as through the identity (the
    encoder learns to start where the steps end) and the steps cost no second-order graph.
    ``steps = 0`` returns ``loc`` itself.
    """
    _check(steps, lr)
    if steps == 0:
        return loc
    with torch.enable_grad():
        z = loc if create_graph else loc.detach().requires_grad_(True)
        for _ in range(steps):
            if not z.requires_grad:  # e.g. a loc made under no_grad at test time
                z = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_values(objective, z).sum(), z, create_graph=create_graph)
            z = z + lr * grad
            if not create_graph:
                z = z.detach()
    return z if create_graph else loc + (z - loc.detach()).detach()


@dataclass
class SearchResult:
    """What :func:`search` found, per instance (first dimension)."""

    latent: torch.Tensor  # the latent after the last step (or at its instance's stop)
    best: torch.Tensor  # the latent with the highest objective seen
    best_value: torch.Tensor  # that objective
    history: (
        torch.Tensor
    )  # (steps + 1, instances): the objective before each step and after the last
    stopped_at: torch.Tensor  # the step at which each instance's ``done`` first held (-1: never)


def search(
    objective: Objective,
    z0: torch.Tensor,
    *,
    steps: int,
    lr: float,
    modules: Iterable[nn.Module] = (),
    done: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    optimizer: str = "adam",
) -> SearchResult:
    """Maximise ``objective`` over a latent per instance, from ``z0``, by ``steps`` Adam steps
    (``optimizer="sgd"``: plain gradient ascent ``z <- z + lr * grad``, the update of
    :func:`refine`, with the best latent seen kept, as the latent program network's test-time
    search does).

    ``modules`` (the networks the objective runs through) are out of autograd for the call and
    come back as they were; nothing is trained. ``done(z, values)`` gives a boolean per
    instance; an instance for which it holds keeps its latent from then on (LatentSeek's stop
    once the reward is reached). Both optimizers act per coordinate, so instances move
    independently.
    """
    _check(steps, lr)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    z = z0.detach().clone().requires_grad_(True)
    optimizer = OPTIMIZERS[optimizer]([z], lr=lr, maximize=True)
    stopped_at = torch.full(z.shape[:1], -1, dtype=torch.long)
    history = []
    with contextlib.ExitStack() as stack, torch.enable_grad():
        for module in modules:
            stack.enter_context(frozen(module))
        best, best_value = z.detach().clone(), None
        for step in range(steps + 1):
            values = _values(objective, z)
            history.append(values.detach())
            improved = (
                torch.ones_like(values, dtype=torch.bool)
                if best_value is None
                else values.detach() > best_value
            )
            best_value = (
                values.detach()
                if best_value is None
                else torch.where(improved, values.detach(), best_value)
            )
            best[improved] = z.detach()[improved]
            if done is not None:
                newly = done(z.detach(), values.detach()) & (stopped_at < 0)
                stopped_at[newly] = step
            if step == steps or (done is not None and bool((stopped_at >= 0).all())):
                break
            keep = stopped_at >= 0
            before = z.detach()[keep].clone()
            optimizer.zero_grad()
            values.sum().backward(inputs=[z])
            optimizer.step()
            with torch.no_grad():
                z[keep] = before
    while len(history) < steps + 1:  # every instance stopped early: its value stays
        history.append(history[-1])
    return SearchResult(
        latent=z.detach(),
        best=best,
        best_value=best_value,
        history=torch.stack(history),
        stopped_at=stopped_at,
    )
