"""Traversal purity: how cleanly each latent direction of a generator moves one known factor.

For a decoder ``decode: z -> image``, directions ``n_1..n_K`` in latent space, a base set of
latents ``z_1..z_B`` and measurement functions ``m_f`` that read factor ``f`` off an image,
every base latent is moved along every direction, ``z_b + alpha * n_k`` for ``alpha`` on a
grid (default ``-3..3``, the prior's range for a unit direction), the moved latents are
decoded and measured, and

    R2[k, f]  = corr(alpha, m_f(decode(z_b + alpha n_k)))^2   over all (b, alpha) pairs
    purity[k] = max_f R2[k, f] / sum_f R2[k, f]

R2 is the share of factor ``f``'s variance over the traversed images that a linear function of
the step explains; the spread of ``f`` over the base set stays in the denominator, so a
direction must move a factor a good part of its natural range to score, and moving it a
pixel scores little. ``purity`` is 1 when a direction moves one factor only and ``1/F`` when it
moves all ``F`` alike (the Householder projector paper's check, Song et al. ICCV 2023, with
factors read back by ground-truth functions). A direction that moves nothing has a purity of
noise: directions whose total effect ``sum_f R2`` is below ``min_effect`` are marked inactive
and left out of ``mean_purity``. R2 has no units, so a decoder that barely changes its output
(an untrained one) can still score high R2 with tiny, smooth changes; pass ``reference``
outputs (real data) and a direction is also inactive unless it moves some factor by at least
``min_size`` of that factor's standard deviation in the reference over the whole traversal
(``size[k, f] = |slope| * (max alpha - min alpha) / sd_ref(f)``).

Two ways to propose directions for any decoder sit beside it: the closed-form factorisation
of a first linear layer (:func:`closed_form_directions`, the eigenvectors of ``W^T W``;
Shen & Zhou, CVPR 2021) and the principal axes of encoded latents (:func:`pca_directions`).
:func:`model_decoder` turns a zoo model with a local latent site into a ``decode``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "TraversalPurity",
    "closed_form_directions",
    "model_decoder",
    "pca_directions",
    "traversal_grid",
    "traversal_purity",
]

Array = np.ndarray | torch.Tensor


@dataclass
class TraversalPurity:
    """The result of :func:`traversal_purity` (arrays indexed direction x factor)."""

    factors: tuple[str, ...]
    alphas: np.ndarray  # (A,)
    r2: np.ndarray  # (K, F): R^2 of each factor's measurement on the step along each direction
    purity: np.ndarray  # (K,): max_f R2 / sum_f R2 (NaN where inactive)
    effect: np.ndarray  # (K,): sum_f R2
    active: np.ndarray  # (K,) bool: effect >= min_effect (and max size >= min_size)
    slope: np.ndarray  # (K, F): change of each measured factor per unit step
    size: np.ndarray | None  # (K, F): |slope| * alpha range / reference sd (with reference)
    values: np.ndarray = field(repr=False)  # (K, B, A, F) measured factors

    @property
    def mean_purity(self) -> float:
        """Mean purity over active directions (NaN when none is active)."""
        return float(np.mean(self.purity[self.active])) if self.active.any() else math.nan

    @property
    def assignment(self) -> list[str]:
        """The factor each direction moves most."""
        return [self.factors[i] for i in np.argmax(self.r2, axis=1)]

    @property
    def coverage(self) -> dict[str, float]:
        """Each factor's best R^2 over the directions (a factor no direction moves: ~0)."""
        return {f: float(v) for f, v in zip(self.factors, self.r2.max(0), strict=True)}

    def summary(self) -> dict[str, Any]:
        """Plain numbers for a results file or a table."""
        return {
            "mean_purity": self.mean_purity,
            "active_directions": int(self.active.sum()),
            "purity": [float(p) for p in self.purity],
            "assignment": self.assignment,
            "coverage": self.coverage,
            "r2": self.r2.round(4).tolist(),
        }


def _matrix(value: Array, name: str) -> torch.Tensor:
    t = torch.as_tensor(value.detach() if torch.is_tensor(value) else value)
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (rows x latent_dim), got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return t


def traversal_purity(
    decode: Callable[[torch.Tensor], Array],
    directions: Array,
    base: Array,
    measurements: Mapping[str, Callable[[Array], Array]],
    *,
    alphas: Array | None = None,
    min_effect: float = 0.05,
    reference: Array | None = None,
    min_size: float = 0.5,
    chunk: int = 4096,
) -> TraversalPurity:
    """Per-direction R^2 of each measured factor on the traversal step, and purity.

    :param decode: latents ``(M, d)`` -> outputs ``(M, ...)`` (e.g. a decoder's mean image);
        called without gradients, on chunks of at most ``chunk`` rows.
    :param directions: ``(K, d)``; each row is scaled to unit length.
    :param base: ``(B, d)`` latents to start from (encoded data, or prior draws).
    :param measurements: factor name -> function from outputs ``(M, ...)`` to ``(M,)`` values.
    :param alphas: step sizes along each unit direction (default ``linspace(-3, 3, 13)``).
    :param min_effect: a direction whose ``sum_f R2`` is below this is inactive.
    :param reference: outputs ``(N, ...)`` (real data) whose measured spread sets the scale
        of ``size``; a direction moving no factor by ``min_size`` sds is then inactive.
    """
    z0 = _matrix(base, "base")
    dirs = _matrix(directions, "directions").to(z0.dtype)  # decode sees the base's dtype
    if dirs.shape[1] != z0.shape[1]:
        raise ValueError(
            f"directions have latent_dim {dirs.shape[1]} but base latents have {z0.shape[1]}"
        )
    if len(dirs) == 0 or len(z0) == 0:
        raise ValueError("directions and base need at least one row each")
    norms = dirs.norm(dim=1, keepdim=True)
    if (norms < 1e-12).any():
        raise ValueError("every direction must be non-zero")
    dirs = dirs / norms
    steps = torch.linspace(-3.0, 3.0, 13) if alphas is None else torch.as_tensor(alphas).float()
    if steps.ndim != 1 or not torch.isfinite(steps).all() or len(torch.unique(steps)) < 3:
        raise ValueError("alphas must be a 1-D finite array with at least 3 distinct values")
    if not isinstance(measurements, Mapping) or not measurements:
        raise ValueError("measurements must be a non-empty mapping factor name -> function")
    for name, fn in measurements.items():
        if not callable(fn):
            raise ValueError(f"measurement '{name}' is not callable")
    if not (isinstance(min_effect, int | float) and 0 <= min_effect < 1):
        raise ValueError(f"min_effect must be in [0, 1), got {min_effect!r}")
    if not (isinstance(min_size, int | float) and min_size >= 0):
        raise ValueError(f"min_size must be a number >= 0, got {min_size!r}")
    if not callable(decode):
        raise ValueError("decode must be callable: latents (M, d) -> outputs (M, ...)")

    steps = steps.to(z0.dtype)
    k, b, a = len(dirs), len(z0), len(steps)
    moved = z0[None, :, None, :] + steps[None, None, :, None] * dirs[:, None, None, :]
    flat = moved.reshape(-1, dirs.shape[1])
    names = tuple(measurements)
    columns: list[list[np.ndarray]] = [[] for _ in names]
    with torch.no_grad():
        for start in range(0, len(flat), int(chunk)):
            rows = flat[start : start + int(chunk)]
            out = decode(rows)
            if len(out) != len(rows):
                raise ValueError(f"decode returned {len(out)} rows for {len(rows)} latents")
            for j, name in enumerate(names):
                m = np.asarray(measurements[name](out), dtype=np.float64).reshape(-1)
                if m.shape != (len(rows),):
                    raise ValueError(
                        f"measurement '{name}' returned shape {m.shape} for {len(rows)} outputs"
                    )
                if not np.isfinite(m).all():
                    raise ValueError(f"measurement '{name}' returned NaN or inf")
                columns[j].append(m)
    values = np.stack([np.concatenate(c) for c in columns], axis=-1).reshape(k, b, a, len(names))

    step = np.broadcast_to(steps.double().numpy().astype(np.float64)[None, :], (b, a)).reshape(-1)
    step = step - step.mean()
    m = values.reshape(k, b * a, len(names))
    m = m - m.mean(axis=1, keepdims=True)
    cov = np.einsum("n,knf->kf", step, m)
    var_m = (m**2).sum(axis=1)
    var_s = (step**2).sum()
    r2 = np.where(var_m > 1e-12, cov**2 / (var_s * np.maximum(var_m, 1e-300)), 0.0)
    r2 = np.clip(r2, 0.0, 1.0)
    slope = cov / var_s
    effect = r2.sum(axis=1)
    active = effect >= min_effect
    size = None
    if reference is not None:
        spread = np.array([np.std(_measured(measurements[n], reference, n)) for n in names])
        if (spread <= 0).any():
            raise ValueError("reference outputs must vary in every measured factor")
        span = float(steps.max() - steps.min())
        size = np.abs(slope) * span / spread
        active &= size.max(axis=1) >= min_size
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(active, r2.max(axis=1) / np.where(effect > 0, effect, 1.0), np.nan)
    return TraversalPurity(
        names, steps.double().numpy(), r2, purity, effect, active, slope, size, values
    )


def _measured(fn: Callable[[Array], Array], outputs: Array, name: str) -> np.ndarray:
    with torch.no_grad():
        m = np.asarray(fn(outputs), dtype=np.float64).reshape(-1)
    if not np.isfinite(m).all():
        raise ValueError(f"measurement '{name}' returned NaN or inf on the reference")
    return m


def closed_form_directions(weight: Array, k: int) -> np.ndarray:
    """The ``k`` leading eigenvectors of ``W^T W`` for a first linear layer ``W`` of shape
    ``(out, latent_dim)`` (closed-form factorisation, Shen & Zhou 2021): ``(k, latent_dim)``,
    largest eigenvalue first."""
    w = _matrix(weight, "weight").double()
    if not isinstance(k, int) or not 1 <= k <= w.shape[1]:
        raise ValueError(f"k must be an integer in [1, {w.shape[1]}], got {k!r}")
    evals, evecs = torch.linalg.eigh(w.T @ w)
    order = torch.argsort(evals, descending=True)[:k]
    return evecs[:, order].T.numpy()


def pca_directions(codes: Array, k: int) -> np.ndarray:
    """The ``k`` principal axes of latent codes ``(N, latent_dim)`` (e.g. encoder means):
    ``(k, latent_dim)``, largest variance first."""
    c = _matrix(codes, "codes").double()
    if not isinstance(k, int) or not 1 <= k <= c.shape[1]:
        raise ValueError(f"k must be an integer in [1, {c.shape[1]}], got {k!r}")
    if len(c) < 2:
        raise ValueError("codes need at least 2 rows")
    centred = c - c.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:k].numpy()


def model_decoder(
    model: Any, data: Mapping[str, torch.Tensor], *, site: str = "z", field: str = "x"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``decode`` for a zoo model with a local latent ``site``: the mean of the observed
    ``field`` given the latents, from a forward run of the model (globals drawn from their
    prior; other inputs resampled from ``data``, as :meth:`~zoo.base.ZooModel.sample_new_rows`
    does)."""
    if site not in getattr(model, "local_sites", ()):
        raise ValueError(f"'{site}' is not a local latent site of {type(model).__name__}")
    if field not in model.observed_sites:
        raise ValueError(f"'{field}' is not an observed field of {type(model).__name__}")

    def decode(z: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(z, dtype=torch.float32, device=model.device)
        inputs, trace = model._forward_rows(len(z), data=data, fixed={site: z})
        return model._rows_from_trace(inputs, trace, mean=True)[field]

    return decode


def traversal_grid(
    decode: Callable[[torch.Tensor], Array],
    directions: Array,
    base: Array,
    image_shape: tuple[int, int],
    *,
    alphas: Array | None = None,
    labels: list[str] | None = None,
):
    """A matplotlib figure: one row of decoded images per direction, ``base + alpha * n_k``
    for ``alpha`` in ``alphas`` (default ``linspace(-3, 3, 7)``), one latent ``base (d,)``."""
    import matplotlib.pyplot as plt

    dirs = _matrix(directions, "directions")
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    z0 = torch.as_tensor(base.detach() if torch.is_tensor(base) else base).float().reshape(-1)
    if z0.shape[0] != dirs.shape[1]:
        raise ValueError(f"base has {z0.shape[0]} dims but directions have {dirs.shape[1]}")
    steps = torch.linspace(-3.0, 3.0, 7) if alphas is None else torch.as_tensor(alphas).float()
    z = z0 + steps[None, :, None] * dirs[:, None, :].to(z0.dtype)
    with torch.no_grad():
        images = torch.as_tensor(decode(z.reshape(-1, len(z0)))).detach().cpu()
    images = images.reshape(len(dirs), len(steps), *image_shape)
    fig, axes = plt.subplots(
        len(dirs), len(steps), figsize=(0.9 * len(steps), 0.9 * len(dirs) + 0.3), squeeze=False
    )
    for i in range(len(dirs)):
        for j in range(len(steps)):
            ax = axes[i, j]
            ax.imshow(images[i, j].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == len(dirs) - 1:
                ax.set_xlabel(f"{float(steps[j]):+.1f}", fontsize=7)
        axes[i, 0].set_ylabel(labels[i] if labels else f"n{i}", fontsize=7)
    fig.tight_layout()
    return fig
