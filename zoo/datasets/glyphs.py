"""Synthetic glyphs: the zoo's offline stand-in for Omniglot (thousands of character classes).

Few-shot learning needs many base classes for learned features to transfer; ``load_digits``
has ten. Each glyph class is a handful of stroke-drawn curves (quadratic Bezier strokes whose
control points lie in the central square of the frame); an *instance* of a class jitters the
control points, changes the pen thickness and applies a small random affine map (rotation,
scale, shear, shift), then rasterises the strokes with an anti-aliased pen onto a
``side x side`` grid. Everything is numpy and vectorised over images, strokes and pixels.

Classes are made distinct by construction: candidates are drawn in batches and kept only if
their canonical render (no jitter, mean pen) is at least ``MIN_DISTANCE`` (root mean square
pixel difference) from every class kept so far, so no two classes coincide up to the
generator's noise. The generator is calibrated for at most :data:`MAX_CLASSES` classes; a
request above that (or one the rejection loop cannot fill) is refused with a one-line error
before anything is rendered.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["MAX_CLASSES", "MIN_DISTANCE", "GlyphError", "glyph_classes", "render", "glyph_set"]

#: the most classes the generator promises to make distinct
MAX_CLASSES = 5000
#: the smallest root-mean-square pixel difference between two classes' canonical renders
MIN_DISTANCE = 0.12
#: strokes per class (inclusive range) and points per stroke in the polyline approximation
STROKES = (2, 4)
POINTS_PER_STROKE = 24
#: the pen: Gaussian sd in frame units (the frame is the unit square), uniform in this range
PEN = (0.022, 0.036)


class GlyphError(ValueError):
    """A glyph request the generator cannot honour (too many classes, bad sizes)."""


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if not (isinstance(value, int | np.integer) and low <= value <= high):
        raise GlyphError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _candidate_strokes(rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` random classes: control points ``(num, S, 3, 2)`` in [0.15, 0.85]^2 and a mask
    ``(num, S)`` of the strokes in use (2-4 per class)."""
    smax = STROKES[1]
    ctrl = rng.uniform(0.15, 0.85, size=(num, smax, 3, 2))
    # the middle control point near the chord's midpoint keeps strokes gently curved
    mid = 0.5 * (ctrl[:, :, 0] + ctrl[:, :, 2])
    ctrl[:, :, 1] = mid + 0.6 * (ctrl[:, :, 1] - mid)
    count = rng.integers(STROKES[0], STROKES[1] + 1, size=num)
    mask = np.arange(smax)[None] < count[:, None]
    return ctrl, mask


def _polyline(ctrl: np.ndarray) -> np.ndarray:
    """Points along quadratic Bezier strokes: ``(..., 3, 2) -> (..., T, 2)``."""
    t = np.linspace(0.0, 1.0, POINTS_PER_STROKE)[:, None]
    p0, p1, p2 = ctrl[..., 0:1, :], ctrl[..., 1:2, :], ctrl[..., 2:3, :]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _rasterise(ctrl: np.ndarray, mask: np.ndarray, pen: np.ndarray, side: int) -> np.ndarray:
    """Renders ``(n, side * side)`` in [0, 1] of strokes ``(n, S, 3, 2)`` (masked by
    ``(n, S)``) with pen widths ``(n,)`` (frame units): ink is splatted bilinearly at dense
    points along each stroke (weighted by arc length, so a line carries one unit of ink per
    pixel of length), blurred by a Gaussian pen of sd ``pen * side`` pixels (separable, one
    kernel per image) and saturated, ``1 - exp(-3 x / peak)``, so a stroke's centre line
    reaches 0.95 whatever the pen. Cost is linear in pixels and points (no distance field)."""
    n, smax = mask.shape
    points = _polyline(ctrl) * side - 0.5  # pixel coordinates (n, S, T, 2)
    step = np.sqrt((np.diff(points, axis=2) ** 2).sum(-1))  # (n, S, T-1)
    weight = np.zeros(points.shape[:3])
    weight[:, :, :-1] += 0.5 * step
    weight[:, :, 1:] += 0.5 * step
    weight *= mask[:, :, None]
    x, y = points[..., 0].reshape(n, -1), points[..., 1].reshape(n, -1)
    weight = weight.reshape(n, -1)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    grid = np.zeros(n * side * side)
    rows = np.arange(n)[:, None] * side * side
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < side) & (yi >= 0) & (yi < side)
        index = (rows + yi.clip(0, side - 1) * side + xi.clip(0, side - 1)).astype(np.int64)
        grid += np.bincount(index.ravel(), (w * weight * inside).ravel(), n * side * side)
    density = grid.reshape(n, side, side)
    sd = pen * side  # (n,) pixels
    offsets = np.arange(side)[:, None] - np.arange(side)[None]
    kernel = np.exp(-0.5 * offsets[None] ** 2 / sd[:, None, None] ** 2)
    kernel /= np.sqrt(2 * np.pi) * sd[:, None, None]
    blurred = kernel @ density @ kernel.transpose(0, 2, 1)
    peak = 1.0 / (np.sqrt(2 * np.pi) * sd)  # a straight line's blurred centre value
    ink = 1.0 - np.exp(-3.0 * blurred / peak[:, None, None])
    return ink.reshape(n, side * side).astype(np.float32)


def _render_chunks(ctrl, mask, pen, side, chunk: int = 2048) -> np.ndarray:
    out = [_rasterise(ctrl[i : i + chunk], mask[i : i + chunk], pen[i : i + chunk], side)
           for i in range(0, len(ctrl), chunk)]  # fmt: skip
    return np.concatenate(out) if out else np.zeros((0, side * side), np.float32)


def glyph_classes(num_classes: int, seed: int = 0, side: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``num_classes`` distinct glyph classes: control points ``(C, S, 3, 2)`` and stroke
    mask ``(C, S)``. Deterministic given ``seed``. Candidates are accepted in order while
    their canonical render stays :data:`MIN_DISTANCE` away (RMS over pixels) from every class
    already accepted. Refuses (``GlyphError``, one line) more than :data:`MAX_CLASSES`."""
    _check_count("num_classes", num_classes, 1, MAX_CLASSES)
    _check_count("side", side, 8, 64)
    rng = np.random.default_rng(seed)
    kept_ctrl, kept_mask, kept_img = [], [], np.zeros((0, side * side), np.float32)
    budget = 20 * num_classes + 1000  # candidates; far more than the calibrated range needs
    drawn = 0
    while len(kept_ctrl) < num_classes:
        if drawn >= budget:
            raise GlyphError(
                f"num_classes={num_classes}: only {len(kept_ctrl)} distinct glyph classes "
                f"found in {budget} candidates; ask for at most {len(kept_ctrl)}"
            )
        ctrl, mask = _candidate_strokes(rng, 256)
        drawn += 256
        imgs = _rasterise(ctrl, mask, np.full(256, np.mean(PEN)), side)
        for i in range(256):
            img = imgs[i]
            if len(kept_img):
                rms = np.sqrt(((kept_img - img) ** 2).mean(-1)).min()
                if rms < MIN_DISTANCE:
                    continue
            kept_ctrl.append(ctrl[i])
            kept_mask.append(mask[i])
            kept_img = np.concatenate([kept_img, img[None]])
            if len(kept_ctrl) == num_classes:
                break
    return np.stack(kept_ctrl), np.stack(kept_mask)


def _affine(rng: np.random.Generator, n: int, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Small random affine maps about the frame centre: matrices ``(n, 2, 2)`` and shifts
    ``(n, 2)`` (rotation, log-scale, shear and shift, each scaled by ``strength``)."""
    angle = rng.normal(0, 0.15 * strength, n)
    scale = np.exp(rng.normal(0, 0.08 * strength, (n, 2)))
    shear = rng.normal(0, 0.1 * strength, n)
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shr = np.zeros((n, 2, 2))
    shr[:, 0, 0] = shr[:, 1, 1] = 1.0
    shr[:, 0, 1] = shear
    mat = rot @ shr * scale[:, None, :]
    shift = rng.normal(0, 0.04 * strength, (n, 2))
    return mat, shift


def render(
    ctrl: np.ndarray,
    mask: np.ndarray,
    per_class: int,
    *,
    side: int = 20,
    seed: int = 0,
    jitter: float = 0.025,
    affine: float = 1.0,
) -> np.ndarray:
    """``per_class`` instances of each class: images ``(C, per_class, side * side)`` in
    [0, 1]. Each instance moves every control point by ``N(0, jitter^2)``, draws its pen
    width uniformly in :data:`PEN` and applies a random affine map (``affine`` scales
    its strength; 0 gives the canonical pose). Deterministic given ``seed``."""
    _check_count("per_class", per_class, 1, 10_000)
    _check_count("side", side, 8, 64)
    rng = np.random.default_rng(seed)
    c = len(ctrl)
    n = c * per_class
    pts = np.repeat(ctrl, per_class, axis=0) + rng.normal(0, jitter, (n,) + ctrl.shape[1:])
    mat, shift = _affine(rng, n, affine)
    pts = (pts - 0.5) @ mat.transpose(0, 2, 1)[:, None] + 0.5 + shift[:, None, None]
    pen = rng.uniform(PEN[0], PEN[1], n)
    imgs = _render_chunks(pts, np.repeat(mask, per_class, axis=0), pen, side)
    return imgs.reshape(c, per_class, side * side)


@functools.lru_cache(maxsize=4)
def glyph_set(num_classes: int, per_class: int, side: int = 20, seed: int = 0) -> np.ndarray:
    """A fixed glyph data set (like Omniglot: the same for every experiment seed), cached:
    ``(num_classes, per_class, side * side)`` float32 images. Read-only; split its classes
    into base / validation / test blocks by index."""
    ctrl, mask = glyph_classes(num_classes, seed=seed, side=side)
    images = render(ctrl, mask, per_class, side=side, seed=seed + 1)
    images.setflags(write=False)
    return images
