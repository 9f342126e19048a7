"""mini-MorphoMNIST: load_digits upsampled to 16x16 with a causal thickness -> intensity SCM.

An offline stand-in for Morpho-MNIST (Castro et al. 2019) as used by CausalDiffAE (paper 28)::

    thickness t ~ U(0.5, 2.5)
    intensity i = clip(0.3 + 0.6 sigmoid(2 (t - 1.5)) + N(0, 0.05^2), 0, 1)
    image      = i * stroke(digit, radius = 1 + t)      (16x16, values in [0, 1])

The stroke is rendered at 32x32: the 8x8 digit is upsampled, its bright core (the pen path)
is kept, and every pixel within ``1 + t`` (32-px units) of the core is inked, with a one
pixel anti-aliased edge; 2x2 average pooling gives the 16x16 image. Thickness therefore
varies continuously, and the intensity multiplies the stroke.

``measure`` reads both factors back from any image (a generated one included): intensity as
the mean of the brightest stroke pixels, thickness as four times the mean distance to the
background inside the binarised stroke (a band of width w has mean inner distance w / 4),
mapped to label units by a linear calibration fitted once on seeded renders. Labels are in
[0, 1]: ``t_scaled = (t - 0.5) / 2`` and ``i_scaled = i``.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

__all__ = [
    "FACTOR_NAMES",
    "ADJACENCY",
    "SIZE",
    "intensity_mechanism",
    "render",
    "mini_morpho",
    "measure",
    "scale_thickness",
    "unscale_thickness",
    "counterfactual_truth",
]

FACTOR_NAMES = ("thickness", "intensity")
ADJACENCY = ((0, 1), (0, 0))  # thickness -> intensity
SIZE = 16
THICKNESS_RANGE = (0.5, 2.5)
INTENSITY_NOISE = 0.05


def scale_thickness(t: np.ndarray) -> np.ndarray:
    return (np.asarray(t) - THICKNESS_RANGE[0]) / (THICKNESS_RANGE[1] - THICKNESS_RANGE[0])


def unscale_thickness(s: np.ndarray) -> np.ndarray:
    return THICKNESS_RANGE[0] + np.asarray(s) * (THICKNESS_RANGE[1] - THICKNESS_RANGE[0])


def intensity_mechanism(t: np.ndarray) -> np.ndarray:
    """The noise-free structural equation E[i | t] (raw thickness units)."""
    return 0.3 + 0.6 / (1.0 + np.exp(-2.0 * (np.asarray(t) - 1.5)))


@functools.lru_cache(maxsize=1)
def _cores() -> tuple[np.ndarray, np.ndarray]:
    """Pen paths of the 1797 digits at 32x32 (boolean) and their classes."""
    digits = load_digits()
    cores = []
    for img in digits.images / 16.0:
        big = ndimage.zoom(img, 4, order=1)  # 8x8 -> 32x32
        core = big > 0.6 * big.max()
        core = ndimage.binary_erosion(core, iterations=1) | (big >= 0.95 * big.max())
        cores.append(core)
    return np.stack(cores), digits.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _core_distances() -> np.ndarray:
    cores, _ = _cores()
    return np.stack([ndimage.distance_transform_edt(~c) for c in cores]).astype(np.float32)


def render(index: np.ndarray, thickness: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Images (N, 1, 16, 16) of digits ``index`` at raw ``thickness`` and ``intensity``."""
    dist = _core_distances()[np.asarray(index)]
    radius = 1.0 + np.asarray(thickness, dtype=np.float32)[:, None, None]
    ink = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    small = ink.reshape(-1, SIZE, 2, SIZE, 2).mean(axis=(2, 4))
    return (small * np.asarray(intensity, dtype=np.float32)[:, None, None])[:, None].astype(
        np.float32
    )


def mini_morpho(n: int = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` seeded samples: ``x`` (n, 1, 16, 16), ``y`` (n, 2) scaled labels in [0, 1]
    (thickness, intensity), ``digit`` (n,) class, and the raw factors and exogenous noise
    (``thickness``, ``intensity``, ``noise_intensity``) for counterfactual ground truth."""
    rng = np.random.default_rng(seed)
    _, classes = _cores()
    index = rng.integers(0, len(classes), size=n)
    t = rng.uniform(*THICKNESS_RANGE, size=n)
    noise = rng.normal(0.0, INTENSITY_NOISE, size=n)
    i = np.clip(intensity_mechanism(t) + noise, 0.0, 1.0)
    x = render(index, t, i)
    y = np.stack([scale_thickness(t), i], axis=1).astype(np.float32)
    return {
        "x": x,
        "y": y,
        "digit": classes[index],
        "index": index,
        "thickness": t.astype(np.float32),
        "intensity": i.astype(np.float32),
        "noise_intensity": noise.astype(np.float32),
    }


def _raw_features(x: np.ndarray) -> np.ndarray:
    """(intensity estimate, stroke width estimate) per image, uncalibrated."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, SIZE, SIZE)
    feats = np.zeros((len(x), 2), dtype=np.float64)
    for n, img in enumerate(x):
        flat = np.sort(img.ravel())
        bright = float(flat[-8:].mean())
        feats[n, 0] = bright
        if bright <= 1e-3:
            continue
        big = ndimage.zoom(img, 2, order=1)
        mask = big > 0.5 * bright
        if mask.any():
            feats[n, 1] = 4.0 * float(ndimage.distance_transform_edt(mask)[mask].mean())
    return feats


@functools.lru_cache(maxsize=1)
def _calibration() -> tuple[np.ndarray, np.ndarray]:
    """Least-squares maps from raw features to scaled (thickness, intensity), fitted once on
    2000 seeded renders (seed 12345, disjoint from any data seed a user picks by chance)."""
    data = mini_morpho(2000, seed=12345)
    feats = _raw_features(data["x"])
    design = np.column_stack([feats, np.ones(len(feats))])
    coef, *_ = np.linalg.lstsq(design, data["y"], rcond=None)
    return coef, design


def measure(x: np.ndarray) -> np.ndarray:
    """Scaled (thickness, intensity) read from images ``x`` (N, 1, 16, 16) or (N, 256)."""
    coef, _ = _calibration()
    feats = _raw_features(np.asarray(x))
    return np.column_stack([feats, np.ones(len(feats))]) @ coef


def counterfactual_truth(raw: dict[str, np.ndarray], do: dict[str, float]) -> np.ndarray:
    """Ground-truth scaled (thickness, intensity) after ``do`` (scaled values), keeping each
    row's own intensity noise (abduction on the true SCM)."""
    t = raw["thickness"].astype(np.float64)
    i = raw["intensity"].astype(np.float64)
    if "thickness" in do:
        t = np.full_like(t, unscale_thickness(do["thickness"]))
        i = np.clip(intensity_mechanism(t) + raw["noise_intensity"], 0.0, 1.0)
    if "intensity" in do:
        i = np.full_like(i, float(do["intensity"]))
    return np.stack([scale_thickness(t), i], axis=1)
