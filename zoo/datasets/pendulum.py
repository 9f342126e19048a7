"""mini-Pendulum: a seeded renderer of a pendulum, a light and the pendulum's shadow.

An offline stand-in for the Pendulum data of CausalVAE (Yang et al. 2021) used by
CausalDiffAE (paper 28). Four factors on the DAG
(pendulum angle, light angle) -> (shadow length, shadow position)::

    theta ~ U(-40, 44) degrees          pendulum angle (0 = hanging straight down)
    phi   ~ U(60, 148) degrees          light angle, seen from the pivot
    the light is a point source at pivot + R (cos phi, sin phi) (R = 30, up is +y); the rod
    from the pivot to the bob casts a shadow on the ground line; its ends are the rays'
    intersections with the ground, plus N(0, 0.3^2) px of noise each:
    shadow length   = |x_end - x_start| + 2 b,  shadow position = (x_start + x_end) / 2
    (b: the half-width of the bob's shadow; the bar is clipped to the visible ground)

The image (default 24x24, values in [0, 1], 4x4 supersampled) shows the light as a bright
marker on the top rows (its x coordinate encodes phi), the rod (grey) and bob (white), and
the shadow as a grey bar on the bottom rows. ``measure`` reads the four factors back from any
image (less its median, a decoder's haze): the marker's centroid, the bob's centroid, and the
bar's extent. Labels are scaled to
[0, 1] by the factors' ranges (``RANGES``; shadow values are clipped to the visible ground).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FACTOR_NAMES",
    "ADJACENCY",
    "RANGES",
    "SIZE",
    "shadow",
    "render",
    "mini_pendulum",
    "measure",
    "counterfactual_truth",
]

FACTOR_NAMES = ("pendulum_angle", "light_angle", "shadow_length", "shadow_position")
ADJACENCY = ((0, 0, 1, 1), (0, 0, 1, 1), (0, 0, 0, 0), (0, 0, 0, 0))
SIZE = 24
THETA_RANGE = (-40.0, 44.0)
PHI_RANGE = (60.0, 148.0)
ROD = 0.3  # rod length, fraction of the image side
LIGHT_R = 30.0 / 24.0  # light distance from the pivot, fraction of the image side
SHADOW_NOISE = 0.3 / 24.0  # shadow end noise, fraction of the image side
BOB_SHADOW = 1.5 / 24.0  # half-width of the bob's shadow, fraction of the side
# factor ranges in raw units: degrees, degrees, and fractions of the image side
RANGES = (THETA_RANGE, PHI_RANGE, (0.0, 0.6), (0.0, 1.0))
_PIVOT = (0.5, 0.8)  # (x, y) with y up, fractions of the side
_GROUND = 0.1  # y of the ground line
_SS = 4


def shadow(theta, phi, noise_start=0.0, noise_end=0.0) -> tuple[np.ndarray, np.ndarray]:
    """The structural equations: (length, position) of the shadow, fractions of the side."""
    th, ph = np.radians(theta), np.radians(phi)
    px, py = _PIVOT
    bx, by = px + ROD * np.sin(th), py - ROD * np.cos(th)
    lx, ly = px + LIGHT_R * np.cos(ph), py + LIGHT_R * np.sin(ph)

    def hit(qx, qy):
        return lx + (qx - lx) * (ly - _GROUND) / (ly - qy)

    a, b = hit(px, py) + noise_start, hit(bx, by) + noise_end
    # the bob's own shadow widens the bar by BOB_SHADOW on each side; clipped to the ground
    lo = np.clip(np.minimum(a, b) - BOB_SHADOW, 0.0, 1.0)
    hi = np.clip(np.maximum(a, b) + BOB_SHADOW, 0.0, 1.0)
    return hi - lo, (lo + hi) / 2.0


def _scale(values: np.ndarray) -> np.ndarray:
    lo = np.array([r[0] for r in RANGES])
    hi = np.array([r[1] for r in RANGES])
    return (values - lo) / (hi - lo)


def _unscale(values: np.ndarray) -> np.ndarray:
    lo = np.array([r[0] for r in RANGES])
    hi = np.array([r[1] for r in RANGES])
    return lo + np.asarray(values) * (hi - lo)


def render(theta, phi, length, position, size: int = SIZE) -> np.ndarray:
    """Images (N, 1, size, size) of the given raw factors."""
    theta, phi = np.atleast_1d(theta), np.atleast_1d(phi)
    length, position = np.atleast_1d(length), np.atleast_1d(position)
    m = size * _SS
    grid = (np.arange(m) + 0.5) / m
    gx, gy = np.meshgrid(grid, 1.0 - grid, indexing="xy")  # gy: up is +y
    out = np.zeros((len(theta), size, size), dtype=np.float32)
    px, py = _PIVOT
    for n in range(len(theta)):
        th = np.radians(theta[n])
        bx, by = px + ROD * np.sin(th), py - ROD * np.cos(th)
        img = np.zeros((m, m), dtype=np.float32)
        # rod: distance to the segment pivot -> bob
        dx, dy = bx - px, by - py
        s = np.clip(((gx - px) * dx + (gy - py) * dy) / (dx * dx + dy * dy), 0, 1)
        rod = np.hypot(gx - px - s * dx, gy - py - s * dy) < 0.6 / size
        img[rod] = 0.5
        img[np.hypot(gx - bx, gy - by) < 2.2 / size] = 1.0  # bob
        # light marker on the top band: x encodes phi linearly
        lx = 0.1 + 0.8 * (phi[n] - PHI_RANGE[0]) / (PHI_RANGE[1] - PHI_RANGE[0])
        img[(np.abs(gx - lx) < 1.2 / size) & (gy > 1.0 - 2.5 / size)] = 0.9
        # shadow bar on the ground band
        a, b = position[n] - length[n] / 2, position[n] + length[n] / 2
        img[(gx >= a) & (gx <= b) & (gy < _GROUND) & (gy > _GROUND - 2.0 / size)] = 0.6
        out[n] = img.reshape(size, _SS, size, _SS).mean(axis=(1, 3))
    return out[:, None]


def mini_pendulum(n: int = 5000, seed: int = 0, size: int = SIZE) -> dict[str, np.ndarray]:
    """``n`` seeded samples: ``x`` (n, 1, size, size), ``y`` (n, 4) scaled labels, the raw
    factors ``raw`` (n, 4) and the shadow noise ``noise`` (n, 2) for counterfactual truth."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(*THETA_RANGE, size=n)
    phi = rng.uniform(*PHI_RANGE, size=n)
    noise = rng.normal(0.0, SHADOW_NOISE, size=(n, 2))
    length, position = shadow(theta, phi, noise[:, 0], noise[:, 1])
    raw = np.stack([theta, phi, length, position], axis=1)
    return {
        "x": render(theta, phi, length, position, size),
        "y": np.clip(_scale(raw), 0.0, 1.0).astype(np.float32),
        "raw": raw.astype(np.float32),
        "noise": noise.astype(np.float32),
    }


def measure(x: np.ndarray) -> np.ndarray:
    """Scaled factors (N, 4) read from images (N, 1, S, S): the light marker's x centroid,
    the bob's centroid (brightest pixels below the marker band), the shadow bar's extent."""
    x = np.asarray(x, dtype=np.float64)
    size = x.shape[-1]
    x = x.reshape(len(x), size, size)
    # a decoded image may carry a uniform haze: subtract each image's median (0 for a render,
    # whose drawing covers far less than half of it)
    x = np.clip(x - np.median(x.reshape(len(x), -1), axis=1)[:, None, None], 0.0, None)
    cols = (np.arange(size) + 0.5) / size
    rows_up = 1.0 - (np.arange(size) + 0.5) / size
    out = np.zeros((len(x), 4))
    top = int(np.ceil(2.5 * size / 24))
    ground_rows = slice(int(np.floor((1 - _GROUND) * size)), size)
    px, py = _PIVOT
    for n, img in enumerate(x):
        band = np.clip(img[:top] - 0.3, 0, None).sum(0)
        lx = (band * cols).sum() / max(band.sum(), 1e-8)
        phi = PHI_RANGE[0] + (lx - 0.1) / 0.8 * (PHI_RANGE[1] - PHI_RANGE[0])
        body = img[top : ground_rows.start]
        weight = np.clip(body - 0.75, 0, None)
        if weight.sum() > 1e-8:
            rr = rows_up[top : ground_rows.start]
            bx = (weight.sum(0) * cols).sum() / weight.sum()
            by = (weight.sum(1) * rr).sum() / weight.sum()
            theta = np.degrees(np.arctan2(bx - px, py - by))
        else:
            theta = 0.0
        ground = img[ground_rows].mean(0)
        on = np.flatnonzero(ground > 0.15)
        if len(on):
            # sub-pixel ends from the partial coverage of the end pixels
            frac = np.clip(ground / max(ground.max(), 1e-8), 0, 1)
            a = (on[0] + 1 - frac[on[0]]) / size
            b = (on[-1] + frac[on[-1]]) / size
            length, position = b - a, (a + b) / 2
        else:
            length, position = 0.0, 0.5
        out[n] = [theta, phi, length, position]
    return _scale(out)


def counterfactual_truth(raw: dict[str, np.ndarray], do: dict[str, float]) -> np.ndarray:
    """Scaled factors after ``do`` (scaled values), keeping each row's shadow noise."""
    values = raw["raw"].astype(np.float64).copy()
    for i, name in enumerate(FACTOR_NAMES[:2]):
        if name in do:
            values[:, i] = _unscale(np.full(4, float(do[name])))[i]
    length, position = shadow(values[:, 0], values[:, 1], raw["noise"][:, 0], raw["noise"][:, 1])
    values[:, 2], values[:, 3] = length, position
    for i, name in enumerate(FACTOR_NAMES[2:], start=2):
        if name in do:
            values[:, i] = _unscale(np.full(4, float(do[name])))[i]
    return np.clip(_scale(values), 0.0, 1.0)
