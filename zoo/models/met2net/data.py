"""Synthetic coupled weather fields (the spec's small check): temperature advected by a
slowly evolving, divergence-free wind (u, v) on a periodic grid, with diffusion and
observation noise. One row is one sequence of frames, ``(T, 3, G, G)``, variables in the
order :data:`VARIABLES`."""

from __future__ import annotations

import math

import torch

__all__ = ["VARIABLES", "coupled_fields", "advect"]

#: the variables of a frame, in channel order (temperature is the advected one)
VARIABLES = ("temperature", "u", "v")

#: the wind's streamfunction modes (kx, ky): large-scale, so the wind is smooth
_WIND_MODES = ((1, 0), (0, 1), (1, 1), (1, -1))


def _roll_grad(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (d/dx along the last axis, d/dy along the one before), periodic."""
    dx = (f.roll(-1, -1) - f.roll(1, -1)) / 2
    dy = (f.roll(-1, -2) - f.roll(1, -2)) / 2
    return dx, dy


def advect(field: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One semi-Lagrangian step: ``field`` at the departure points ``(x - u, y - v)``,
    bilinear interpolation on the periodic grid. ``field, u, v``: ``(N, G, G)``."""
    n, g, _ = field.shape
    ys, xs = torch.meshgrid(torch.arange(g, dtype=field.dtype), torch.arange(g, dtype=field.dtype),
                            indexing="ij")  # fmt: skip
    px, py = xs - u, ys - v
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    x0, y0 = x0.long() % g, y0.long() % g
    x1, y1 = (x0 + 1) % g, (y0 + 1) % g
    flat = field.reshape(n, -1)

    def at(yi, xi):
        return flat.gather(1, (yi * g + xi).reshape(n, -1)).reshape(n, g, g)

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1))
            + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1)))  # fmt: skip


def coupled_fields(
    num: int,
    *,
    grid: int = 16,
    frames: int = 12,
    wind: float = 0.8,
    diffusion: float = 0.1,
    noise: float = 0.05,
    burn_in: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """``num`` sequences of ``frames`` frames, ``(num, frames, 3, grid, grid)``.

    Wind: a streamfunction psi_t = sum_k A_k cos(omega_k t + phi_k) b_k(x, y) over the
    low Fourier modes b_k (each a sine and a cosine of :data:`_WIND_MODES`), with random
    amplitudes, phases and slow angular rates omega_k ~ U(0.05, 0.15) per frame; u = dpsi/dy,
    v = -dpsi/dx (divergence-free), scaled so the root-mean-square speed at t = 0 is
    ``wind`` cells per frame. Temperature: a smooth random field (Fourier modes up to
    wavenumber 3, unit variance), then per frame T <- advect(T, u, v) + diffusion *
    laplacian(T). Frames are observed with Normal(0, ``noise``) noise on every variable;
    ``burn_in`` frames are run before the first recorded one.
    """
    gen = torch.Generator().manual_seed(int(seed))
    coords = torch.arange(grid, dtype=torch.float64) * (2 * math.pi / grid)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    waves = [kx * xx + ky * yy for kx, ky in _WIND_MODES]
    basis = torch.stack([f(w) for w in waves for f in (torch.sin, torch.cos)])
    k = len(basis)
    amp, phase = randn(num, k), 2 * math.pi * rand(num, k)
    omega = 0.05 + 0.1 * rand(num, k)

    def velocity(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        coef = amp * torch.cos(omega * t + phase)
        psi = torch.einsum("nk,kyx->nyx", coef, basis)
        dx, dy = _roll_grad(psi)
        return dy, -dx

    u0, v0 = velocity(0)
    rms = (u0.square() + v0.square()).mean((-1, -2)).sqrt().clamp_min(1e-6)
    speed = (wind / rms)[:, None, None]

    temp = torch.zeros(num, grid, grid, dtype=torch.float64)
    for kx in range(-3, 4):
        for ky in range(0, 4):
            if (kx, ky) == (0, 0) or (ky == 0 and kx < 0):
                continue
            a, b = randn(num, 1, 1), randn(num, 1, 1)
            arg = kx * xx + ky * yy
            temp = temp + (a * torch.cos(arg) + b * torch.sin(arg)) / (kx * kx + ky * ky)
    temp = (temp - temp.mean((-1, -2), keepdim=True)) / temp.std((-1, -2), keepdim=True)

    out = []
    for t in range(burn_in + frames):
        u, v = velocity(t)
        u, v = u * speed, v * speed
        if t >= burn_in:
            out.append(torch.stack([temp, u, v], 1))
        temp = advect(temp, u, v)
        lap = temp.roll(1, -1) + temp.roll(-1, -1) + temp.roll(1, -2) + temp.roll(-1, -2) - 4 * temp
        temp = temp + diffusion * lap
    seq = torch.stack(out, 1)
    seq = seq + noise * randn(*seq.shape)
    return seq.float()
