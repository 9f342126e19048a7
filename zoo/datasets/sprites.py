"""Continuous sprites: seeded 16x16 greyscale discs with four independent continuous factors,
and ground-truth measurement functions that read each factor back from an image.

Every image is one anti-aliased disc on a black background, drawn from four independent
uniform factors (:data:`FACTOR_RANGES`)::

    x, y        ~ U(4, 12)     centre column and row, in pixels (pixel centres at i + 0.5)
    scale       ~ U(1.5, 3.5)  radius in pixels
    brightness  ~ U(0.35, 1)   intensity inside the disc

and a pixel's value is ``brightness * coverage``, with ``coverage = clip(r - d + 0.5, 0, 1)``
for the distance ``d`` from the pixel centre to the disc centre (a one-pixel linear edge).

The measurement functions (:data:`MEASUREMENTS`) read the factors back from any non-negative
16x16 image, a data row or a decoder's mean image: the intensity-weighted centroid (x, y),
the radius of a rendered disc with the participation-ratio area ``(sum I)^2 / sum I^2``
(scale) and the
mean intensity of the 4 brightest pixels (brightness). On clean sprites they
recover the factors to within a few hundredths of their ranges (see the tests); on blurred
decoder outputs they stay monotone in each factor, which is what a traversal's R^2 needs.
The functions are generic (centroid, area, mean intensity), so they also measure other
16x16 sprite data such as :mod:`zoo.datasets.dsprites`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "FACTOR_NAMES",
    "FACTOR_RANGES",
    "MEASUREMENTS",
    "SIDE",
    "measure",
    "measure_brightness",
    "measure_scale",
    "measure_x",
    "measure_y",
    "render",
    "sprites",
]

SIDE = 16
FACTOR_NAMES = ("x", "y", "scale", "brightness")
FACTOR_RANGES = {"x": (4.0, 12.0), "y": (4.0, 12.0), "scale": (1.5, 3.5), "brightness": (0.35, 1.0)}
_EPS = 1e-6


def render(factors: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images of sprites with the given factors.

    :param factors: ``(N, 4)`` (or ``(4,)``) values of ``x, y, scale, brightness`` in pixels
        and intensity (any finite values with ``scale > 0`` and ``brightness >= 0``).
    :returns: ``(N, 256)`` float32 images in ``[0, 1]``, row-major 16x16.
    """
    f = np.asarray(factors, dtype=np.float64)
    if f.ndim == 1:
        f = f[None]
    if f.ndim != 2 or f.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"factors must have shape (N, 4) for {FACTOR_NAMES}, got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("factors must be finite (found NaN or inf)")
    if (f[:, 2] <= 0).any() or (f[:, 3] < 0).any():
        raise ValueError("factors need scale > 0 and brightness >= 0")
    centre = np.arange(SIDE) + 0.5
    dx = centre[None, None, :] - f[:, 0, None, None]
    dy = centre[None, :, None] - f[:, 1, None, None]
    coverage = np.clip(f[:, 2, None, None] - np.hypot(dx, dy) + 0.5, 0.0, 1.0)
    images = f[:, 3, None, None] * coverage
    return images.reshape(len(f), SIDE * SIDE).astype(np.float32)


def sprites(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sprites with independent uniform factors (seeded).

    :returns: ``(images, factors)``: images ``(n, 256)`` float32 in ``[0, 1]``, factors
        ``(n, 4)`` float32 in the order of :data:`FACTOR_NAMES`.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    lows = np.array([FACTOR_RANGES[k][0] for k in FACTOR_NAMES])
    highs = np.array([FACTOR_RANGES[k][1] for k in FACTOR_NAMES])
    factors = rng.uniform(lows, highs, size=(int(n), len(FACTOR_NAMES)))
    return render(factors), factors.astype(np.float32)


def _images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(N, 16, 16)`` float64 from ``(N, 256)``, ``(N, 16, 16)``, one image, numpy or torch."""
    if torch.is_tensor(images):
        images = images.detach().cpu().numpy()
    a = np.asarray(images, dtype=np.float64)
    if a.shape[-2:] != (SIDE, SIDE):
        if a.shape[-1] != SIDE * SIDE:
            raise ValueError(f"images must be (N, 256) or (N, 16, 16), got shape {a.shape}")
        a = a.reshape(*a.shape[:-1], SIDE, SIDE)
    a = a.reshape(-1, SIDE, SIDE)
    if not np.isfinite(a).all():
        raise ValueError("images must be finite (found NaN or inf)")
    return np.clip(a, 0.0, None)


def measure_x(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Intensity-weighted centroid column, in pixels (the x factor)."""
    a = _images(images)
    col = np.arange(SIDE) + 0.5
    return (a.sum(1) * col).sum(1) / (a.sum((1, 2)) + _EPS)


def measure_y(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Intensity-weighted centroid row, in pixels (the y factor)."""
    a = _images(images)
    row = np.arange(SIDE) + 0.5
    return (a.sum(2) * row).sum(1) / (a.sum((1, 2)) + _EPS)


def _disc_area(radius: np.ndarray) -> np.ndarray:
    """The participation-ratio area ``(int I)^2 / int I^2`` of a continuous disc of this
    radius with the renderer's one-pixel linear edge (closed form, radius >= 0.5)."""
    core = np.pi * (radius - 0.5) ** 2
    first = core + 2 * np.pi * ((radius + 0.5) / 2 - 1 / 3)
    second = core + 2 * np.pi * ((radius + 0.5) / 3 - 1 / 4)
    return first**2 / second


_RADII = np.linspace(0.5, 12.0, 2000)
_AREAS = _disc_area(_RADII)


def measure_scale(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Radius (the scale factor) from the participation-ratio area ``(sum I)^2 / sum I^2``,
    which does not depend on the intensity, inverted through the area of a rendered disc
    (:func:`_disc_area`)."""
    a = _images(images)
    area = a.sum((1, 2)) ** 2 / ((a**2).sum((1, 2)) + _EPS)
    return np.interp(area, _AREAS, _RADII, left=None, right=None)


def measure_brightness(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean intensity of the 4 brightest pixels (the brightness factor): a disc of radius
    >= 1.5 covers at least 4 pixels nearly fully wherever its centre lies, so the reading
    does not move with the scale (a mean over the whole disc would, through its edge)."""
    a = _images(images).reshape(-1, SIDE * SIDE)
    return np.sort(a, axis=1)[:, -4:].mean(1)


#: factor name -> function from images ``(N, 256)`` to measured values ``(N,)``
MEASUREMENTS: dict[str, Callable[[np.ndarray | torch.Tensor], np.ndarray]] = {
    "x": measure_x,
    "y": measure_y,
    "scale": measure_scale,
    "brightness": measure_brightness,
}


def measure(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """All four measurements, ``(N, 4)`` in the order of :data:`FACTOR_NAMES`."""
    return np.stack([MEASUREMENTS[k](images) for k in FACTOR_NAMES], axis=1)
