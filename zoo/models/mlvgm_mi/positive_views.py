"""Positive views from a multi-latent generator for contrastive learning (paper 1, part 2).

Serez et al. (TMLR 2025) train SimCLR-style encoders on pairs (g(z), g(z')) from a pretrained
multi-latent GAN, z'_l = z_l + eps_l on chosen chunks, drawing fresh z every batch
("continuous sampling"), and compare linear-probe accuracy with views made from real images.

**Adaptation.** This is not a probabilistic model: a small SimCLR (NT-Xent) on an MLP encoder,
a few hundred steps on 8x8 digits, with the zoo's multi-latent VAE
(:class:`zoo.models.mlvgm_mi.model.MLVGM`) standing in for StyleGAN/NVAE. Three encoders are
compared by a logistic-regression probe on real digits: trained on generated views (no real
image seen), trained on random augmentations of real digits (shifts, noise, pixel dropout),
and untrained (random init). A negative control trains the same SimCLR on generated pairs
drawn independently (every group resampled): it sees the same generated digits, but its
"positives" share nothing, so only what it lacks is credit to the views themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from inference.representation import linear_probe as probe

__all__ = [
    "SimCLREncoder",
    "ViewSpec",
    "generated_views",
    "augmented_views",
    "nt_xent",
    "train_simclr",
    "linear_probe",
    "positive_view_experiment",
]

PairFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ViewSpec:
    """How a positive view is made from an anchor's latent groups (1-based levels).

    :param sigmas: per-group noise scale of ``z'_l = z_l + sigma_l * eps`` (0: group kept).
    :param resample: groups drawn afresh from the prior instead (overrides ``sigmas``).
    :param truncation: anchors and fresh draws are Normal(0, 1) truncated at +-truncation.
    """

    sigmas: tuple[float, ...] = (0.5, 0.0, 0.0)
    resample: tuple[int, ...] = (2, 3)
    truncation: float = 2.0


class SimCLREncoder(nn.Module):
    """64 pixels -> representation (probed) -> projection (where the NT-Xent loss lives)."""

    def __init__(self, input_dim: int = 64, hidden: int = 128, rep_dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, rep_dim)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(rep_dim, rep_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.body(x)), dim=-1)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy over 2B unit-norm embeddings."""
    z = torch.cat([a, b])
    n = len(a)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return nn.functional.cross_entropy(logits, target)


def _trunc_normal(shape, truncation: float) -> torch.Tensor:
    return nn.init.trunc_normal_(torch.empty(shape), 0.0, 1.0, -truncation, truncation)


def generated_views(model, spec: ViewSpec = ViewSpec()) -> PairFn:
    """Pairs ``(g(z), g(z'))`` drawn fresh on each call from ``model.generate`` (an MLVGM)."""
    levels, d = model.config.levels, model.config.latent_dim
    if len(spec.sigmas) != levels:
        raise ValueError(f"sigmas must have one value per level ({levels}), got {spec.sigmas}")
    if any(not s >= 0 for s in spec.sigmas):
        raise ValueError(f"sigmas must be >= 0, got {spec.sigmas}")
    bad = [lv for lv in spec.resample if not 1 <= lv <= levels]
    if bad:
        raise ValueError(f"resample levels must be in 1..{levels}, got {bad}")
    if not spec.truncation > 0:
        raise ValueError(f"truncation must be > 0, got {spec.truncation}")

    def pairs(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = [_trunc_normal((batch_size, d), spec.truncation) for _ in range(levels)]
        moved = []
        for level, (z_l, sigma) in enumerate(zip(z, spec.sigmas, strict=True), start=1):
            if level in spec.resample:
                moved.append(_trunc_normal((batch_size, d), spec.truncation))
            else:
                moved.append(z_l + sigma * _trunc_normal((batch_size, d), spec.truncation))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            x, x_view = model.generate(z), model.generate(moved)
        model.train(was_training)
        return x, x_view

    return pairs


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Random shift of up to one pixel, pixel dropout (10%) and Gaussian noise (sd 0.1)."""
    n = len(x)
    img = nn.functional.pad(x.view(n, 1, 8, 8), (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2, n))
    crops = torch.stack([img[i, 0, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(n)])
    out = crops.reshape(n, 64) * (torch.rand(n, 64) > 0.1)
    return (out + 0.1 * torch.randn_like(out)).clamp(0.0, 1.0)


def augmented_views(x: torch.Tensor) -> PairFn:
    """Pairs of two random augmentations of the same real images ``x`` (N, 64) in [0, 1]."""

    def pairs(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x[torch.randint(len(x), (batch_size,))]
        return _augment(rows), _augment(rows)

    return pairs


def train_simclr(
    pairs: PairFn,
    *,
    steps: int = 300,
    batch_size: int = 256,
    temperature: float = 0.2,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[SimCLREncoder, list[float]]:
    """Train a fresh :class:`SimCLREncoder` on ``pairs(batch_size)`` drawn anew each step."""
    torch.manual_seed(seed)
    encoder = SimCLREncoder()
    optim = torch.optim.Adam(encoder.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x, x_view = pairs(batch_size)
        loss = nt_xent(encoder.project(x), encoder.project(x_view), temperature)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return encoder, losses


def linear_probe(
    features: Callable[[torch.Tensor], torch.Tensor] | None,
    x_train: torch.Tensor,
    y_train: np.ndarray,
    x_test: torch.Tensor,
    y_test: np.ndarray,
) -> float:
    """Test accuracy of a logistic regression (standardised, C = 1) on ``features(x)`` (raw
    pixels if ``None``): :func:`inference.representation.linear_probe` at one penalty."""
    with torch.no_grad():
        f_train = x_train if features is None else features(x_train)
        f_test = x_test if features is None else features(x_test)
    return probe(f_train, y_train, f_test, y_test, penalties=(1.0,))["accuracy"]


def positive_view_experiment(
    model,
    *,
    spec: ViewSpec = ViewSpec(),
    steps: int = 300,
    batch_size: int = 256,
    seeds: Sequence[int] = (0,),
    test_size: float = 0.3,
) -> dict[str, list[float]]:
    """Linear-probe accuracy on real digits (grey, pixels/16) of encoders trained on
    generated views, on independent generated pairs (the negative control), on augmented
    real digits, and untrained; plus raw pixels.

    :returns: ``{"generated": [...], "independent_pairs": [...], "augmented": [...],
        "random_init": [...], "raw_pixels": [...]}``, one accuracy per seed.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    digits = load_digits()
    x = torch.as_tensor(digits.data / 16.0, dtype=torch.float32)
    out: dict[str, list[float]] = {
        k: [] for k in ("generated", "independent_pairs", "augmented", "random_init", "raw_pixels")
    }
    independent = ViewSpec(  # the negative control: every group of the view drawn afresh
        sigmas=(0.0,) * model.config.levels,
        resample=tuple(range(1, model.config.levels + 1)),
        truncation=spec.truncation,
    )
    for seed in seeds:
        idx_train, idx_test = train_test_split(
            np.arange(len(x)), test_size=test_size, random_state=seed, stratify=digits.target
        )
        split = (x[idx_train], digits.target[idx_train], x[idx_test], digits.target[idx_test])
        options = dict(steps=steps, batch_size=batch_size, seed=seed)
        generated, _ = train_simclr(generated_views(model, spec), **options)
        control, _ = train_simclr(generated_views(model, independent), **options)
        augmented, _ = train_simclr(augmented_views(split[0]), **options)
        torch.manual_seed(seed)
        untrained = SimCLREncoder()
        out["generated"].append(linear_probe(generated, *split))
        out["independent_pairs"].append(linear_probe(control, *split))
        out["augmented"].append(linear_probe(augmented, *split))
        out["random_init"].append(linear_probe(untrained, *split))
        out["raw_pixels"].append(linear_probe(None, *split))
    return out
