"""mini-dSprites: a seeded 16x16 renderer of binary sprites with known generating factors.

A small offline stand-in for dSprites (Matthey et al. 2017) for disentanglement studies:
every image is drawn from four discrete factors,

    shape in {square, cross, ring}  x  scale (3 sizes)  x  x-position (6)  x  y-position (6),

i.e. 324 factor combinations, each rendered ``copies`` times with a small random sub-pixel
jitter of the centre (a nuisance the factors do not record). A pixel is on when more than
half of its 4x4 sub-pixel samples fall inside the shape, so images are binary and fit a
Bernoulli likelihood. ``factors`` are integer indices (0-based) per factor.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FACTOR_NAMES", "FACTOR_SIZES", "SHAPES", "render", "mini_dsprites"]

SHAPES = ("square", "cross", "ring")
SIZE = 16  # image side in pixels
SCALES = (2.5, 3.25, 4.0)  # half-widths in pixels
POSITIONS = tuple(np.linspace(4.5, 11.5, 6))  # centre coordinates in pixels
FACTOR_NAMES = ("shape", "scale", "x", "y")
FACTOR_SIZES = (len(SHAPES), len(SCALES), len(POSITIONS), len(POSITIONS))
_SUPERSAMPLE = 4


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample coordinates, shape (SIZE * S, SIZE * S) each (x: columns, y: rows)."""
    s = _SUPERSAMPLE
    t = (np.arange(SIZE * s) + 0.5) / s
    return np.meshgrid(t, t, indexing="xy")


def _inside(shape: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == 0:  # square
        return (ax <= r) & (ay <= r)
    if shape == 1:  # cross: two bars of width 2r/3
        bar = r / 3.0
        return ((ax <= r) & (ay <= bar)) | ((ay <= r) & (ax <= bar))
    radius = np.hypot(dx, dy)  # ring
    return (radius <= r) & (radius >= 0.5 * r)


def render(shape: int, scale: int, x: int, y: int, jitter: tuple[float, float] = (0.0, 0.0)):
    """One binary 16x16 image (float32) of the sprite with these factor indices."""
    for name, value, size in zip(FACTOR_NAMES, (shape, scale, x, y), FACTOR_SIZES, strict=True):
        if not 0 <= int(value) < size:
            raise ValueError(f"factor '{name}' must be an index in [0, {size}), got {value}")
    gx, gy = _grid()
    cx, cy = POSITIONS[x] + jitter[0], POSITIONS[y] + jitter[1]
    mask = _inside(int(shape), gx - cx, gy - cy, SCALES[scale]).astype(np.float32)
    s = _SUPERSAMPLE
    coverage = mask.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))
    return (coverage > 0.5).astype(np.float32)


def mini_dsprites(
    seed: int = 0, copies: int = 10, jitter: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """All 324 factor combinations, ``copies`` jittered renders each.

    :returns: ``(images, factors)``: images (N, 256) in {0, 1} (float32, row-major 16x16),
        factors (N, 4) int64 indices in the order of :data:`FACTOR_NAMES`; rows are shuffled.
    """
    if int(copies) < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if not 0.0 <= jitter <= 0.5:
        raise ValueError(f"jitter must be in [0, 0.5] pixels, got {jitter}")
    rng = np.random.default_rng(seed)
    combos = np.stack(np.meshgrid(*[np.arange(n) for n in FACTOR_SIZES], indexing="ij"), -1)
    combos = np.repeat(combos.reshape(-1, len(FACTOR_SIZES)), int(copies), axis=0)
    offsets = rng.uniform(-jitter, jitter, size=(len(combos), 2))
    rows = zip(combos, offsets, strict=True)
    images = np.stack([render(*row, jitter=tuple(off)).reshape(-1) for row, off in rows])
    order = rng.permutation(len(combos))
    return images[order], combos[order].astype(np.int64)
