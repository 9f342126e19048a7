"""The simplest strong baselines of the forecast: persistence (repeat the last frame) and
a local linear forecaster (ridge regression of each pixel's future on the past frames of
every variable in its neighbourhood, the same weights at every pixel)."""

from __future__ import annotations

import torch

__all__ = ["persistence", "LocalLinear"]


def persistence(past: torch.Tensor, horizon: int) -> torch.Tensor:
    """The last past frame repeated ``horizon`` times: ``(N, W, C, G, G)`` ->
    ``(N, horizon, C, G, G)``."""
    return past[:, -1:].expand(-1, horizon, -1, -1, -1)


def _patches(past: torch.Tensor, radius: int) -> torch.Tensor:
    """``(N, G, G, F)`` features per pixel: every variable's past frames over the
    ``(2 radius + 1)^2`` periodic neighbourhood."""
    n, w, c, g, _ = past.shape
    x = past.reshape(n, w * c, g, g)
    shifts = [x.roll((dy, dx), (-2, -1)) for dy in range(-radius, radius + 1)
              for dx in range(-radius, radius + 1)]  # fmt: skip
    return torch.cat(shifts, 1).permute(0, 2, 3, 1)


class LocalLinear:
    """Ridge regression per pixel, shared across pixels: the future ``(H, C)`` values of
    a pixel from its neighbourhood's past. ``fit`` chooses the ridge penalty among
    ``penalties`` on a validation fifth of the training rows (never the test rows)."""

    def __init__(self, radius: int = 2, penalties=(1e-3, 1e-1, 10.0), max_pixels=40_000):
        self.radius, self.penalties, self.max_pixels = radius, penalties, max_pixels

    def _design(self, past):
        feats = _patches(past.double(), self.radius)
        return torch.cat([feats, torch.ones_like(feats[..., :1])], -1)

    def _solve(self, x, y, penalty):
        gram = x.T @ x + penalty * torch.eye(x.shape[1], dtype=x.dtype)
        return torch.linalg.solve(gram, x.T @ y)

    def fit(self, past: torch.Tensor, future: torch.Tensor, seed: int = 0) -> LocalLinear:
        n, h, c, g, _ = future.shape
        gen = torch.Generator().manual_seed(int(seed))
        rows = torch.randperm(n, generator=gen)
        per = max(1, self.max_pixels // (g * g))  # rows whose pixels enter a solve

        def xy(which):
            x = self._design(past[which])
            y = future[which].double().permute(0, 3, 4, 1, 2)
            return x.reshape(-1, x.shape[-1]), y.reshape(-1, h * c)

        val_rows, fit_rows = rows[: max(1, n // 5)], rows[max(1, n // 5) :]
        x_fit, y_fit = xy(fit_rows[:per])
        x_val, y_val = xy(val_rows[:per])
        scores = []
        for penalty in self.penalties:
            w = self._solve(x_fit, y_fit, penalty)
            scores.append(float((x_val @ w - y_val).square().mean()))
        self.penalty = self.penalties[min(range(len(scores)), key=scores.__getitem__)]
        self.weights = self._solve(*xy(rows[:per]), self.penalty)
        self.shape = (h, c)
        return self

    def predict(self, past: torch.Tensor) -> torch.Tensor:
        n, _, _, g, _ = past.shape
        h, c = self.shape
        out = (self._design(past) @ self.weights).reshape(n, g, g, h, c)
        return out.permute(0, 3, 4, 1, 2).float()
