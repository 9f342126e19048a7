"""Baselines for the latent program network's check, on the same tasks and budget.

- :class:`InContext`: the paper's in-context learner at the size of the LPN's networks, an
  MLP from the demonstration pairs and the query input straight to the query output (no
  latent, no search); trained, as the LPN's leave-one-out loss is, to predict each pair of a
  training task from the others.
- :func:`sample_search`: best-of-N programs drawn from the prior N(0, I), scored by a trained
  LPN decoder's likelihood of the demonstrations (the paper's stochastic-search baseline:
  the same decoder, search without gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from guides.encoders import mlp
from zoo.models.lpn.tasks import COLOURS

__all__ = ["InContext", "train_in_context", "sample_search"]


def _one_hot(grid: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(grid.long(), COLOURS).float().flatten(-3)


class InContext(nn.Module):
    """(demonstration pairs, query input) -> logits of the query output."""

    def __init__(self, demos: int, grid: int, hidden: Sequence[int]):
        super().__init__()
        cells = grid * grid * COLOURS
        self.grid = grid
        self.net = mlp([(2 * demos + 1) * cells, *hidden, cells])

    def forward(self, x_demo, y_demo, x_query) -> torch.Tensor:
        demos = torch.cat([_one_hot(x_demo), _one_hot(y_demo)], -1).flatten(-2)
        h = torch.cat([demos, _one_hot(x_query)], -1)
        return self.net(h).unflatten(-1, (self.grid, self.grid, COLOURS))

    def predict(self, x_demo, y_demo, x_query) -> torch.Tensor:
        with torch.no_grad():
            return self(x_demo, y_demo, x_query).argmax(-1)


def _leave_one_out(x: torch.Tensor, y: torch.Tensor, query: torch.Tensor):
    """Each task's pair ``query`` as the query, the others (in order) as demonstrations."""
    pairs = x.shape[1]
    order = torch.arange(pairs)
    rest = torch.stack([order[order != i] for i in range(pairs)])[query]  # (B, P - 1)
    rows = torch.arange(len(x))[:, None]
    return x[rows, rest], y[rows, rest], x[rows[:, 0], query], y[rows[:, 0], query]


def train_in_context(
    net: InContext,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> list[float]:
    """Adam on the cross-entropy of a random pair of each sampled task given the others."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        rows = torch.randint(len(x), (batch_size,), generator=generator)
        query = torch.randint(x.shape[1], (batch_size,), generator=generator)
        xd, yd, xq, yq = _leave_one_out(x[rows], y[rows], query)
        logits = net(xd, yd, xq)
        loss = nn.functional.cross_entropy(logits.reshape(-1, COLOURS), yq.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def sample_search(model, x_demo, y_demo, num: int, *, seed: int = 0, chunk: int = 256):
    """For each task, the best of ``num`` latents drawn from N(0, I) under ``model``'s
    decoder likelihood of the demonstrations; (B, dz)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num, model.config.latent_dim, generator=generator).to(model.device)
    best = []
    with torch.no_grad():
        for start in range(0, len(x_demo), chunk):
            xd, yd = x_demo[start : start + chunk], y_demo[start : start + chunk]
            # (B, N, P) log likelihoods of every demonstration at every candidate
            values = model.pair_loglik(xd[:, None], yd[:, None], z[None, :, None, :]).sum(-1)
            best.append(z[values.argmax(-1)])
    return torch.cat(best)
