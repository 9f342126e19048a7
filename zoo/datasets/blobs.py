"""Coloured blobs with two binary concepts of controllable signal: 12x12 RGB images of one
anti-aliased disc on a black background (after Park et al., NeurIPS 2024, whose renderer
draws 32x32 circles).

A blob has two concept values, each 0 or 1 (any real value renders, so the renderer also
draws between and beyond the two levels):

- **colour** ``c``: the channel ratio, ``(R, G, B) = (1/2 + m_c (1/2 - c), 1/2 - m_c / 2,
  1/2 + m_c (c - 1/2))``; ``c = 0`` is red, ``c = 1`` blue. The paper's colours,
  (0.5685, 0.4315, 0.4315) and (0.4315, 0.4315, 0.5685), are ``m_c = 0.137``.
- **size** ``s``: the radius, ``rho = 0.45 + m_s (1/2 - s)`` of the half-side (6 px);
  ``s = 0`` is large, ``s = 1`` small. The paper's radii 0.65 and 0.25 are ``m_s = 0.4``.

``m_c`` and ``m_s`` set how far apart the two levels of each concept are in pixel space: the
*concept signal* (:func:`concept_signals`, the RMS distance between the mean images of the
two levels, averaged over the other concept) that the paper shows sets the order and speed in
which a generative model learns the concepts. Nuisance: the centre is jittered uniformly by
up to ``jitter`` pixels in each direction, and every pixel gets Gaussian noise of sd
``noise``. Classes are named by their bits, colour first: ``"00"`` red-large, ``"10"``
blue-large, ``"01"`` red-small, ``"11"`` blue-small.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CHANNELS",
    "CLASSES",
    "SIDE",
    "blobs",
    "colours",
    "concept_signals",
    "radii",
    "render",
]

SIDE = 12
CHANNELS = 3
CLASSES = ("00", "10", "01", "11")


def _check_strengths(m_c: float, m_s: float) -> None:
    if not 0.0 <= float(m_c) <= 1.0:
        raise ValueError(f"m_c (colour signal) must be in [0, 1], got {m_c}")
    if not 0.0 <= float(m_s) <= 0.8:
        raise ValueError(f"m_s (size signal) must be in [0, 0.8], got {m_s}")


def colours(c, m_c: float) -> np.ndarray:
    """``(N, 3)`` RGB of colour values ``c`` (0 red, 1 blue) at colour signal ``m_c``."""
    c = np.asarray(c, dtype=np.float64)
    return np.stack(
        [0.5 + m_c * (0.5 - c), np.full_like(c, 0.5 - m_c / 2), 0.5 + m_c * (c - 0.5)], -1
    )


def radii(s, m_s: float) -> np.ndarray:
    """Radii in pixels of size values ``s`` (0 large, 1 small) at size signal ``m_s``."""
    rho = 0.45 + m_s * (0.5 - np.asarray(s, dtype=np.float64))
    return np.clip(rho, 0.05, None) * SIDE / 2


def render(c, s, *, m_c: float, m_s: float, centres=None) -> np.ndarray:
    """Noise-free images: ``(N, 3 * 12 * 12)`` float32, channel-major (C, H, W) rows.

    :param c: ``(N,)`` colour values; ``s``: ``(N,)`` size values (real values allowed).
    :param centres: ``(N, 2)`` blob centres in pixels (default: the image centre).
    """
    c = np.atleast_1d(np.asarray(c, dtype=np.float64))
    s = np.atleast_1d(np.asarray(s, dtype=np.float64))
    if c.shape != s.shape or c.ndim != 1:
        raise ValueError(f"c and s must be (N,) vectors of one length, got {c.shape} and {s.shape}")
    if not (np.isfinite(c).all() and np.isfinite(s).all()):
        raise ValueError("concept values hold NaN or infinite values")
    if centres is None:
        centres = np.full((len(c), 2), SIDE / 2)
    centres = np.asarray(centres, dtype=np.float64)
    grid = np.arange(SIDE) + 0.5
    dy = grid[None, :, None] - centres[:, 1, None, None]
    dx = grid[None, None, :] - centres[:, 0, None, None]
    distance = np.sqrt(dx**2 + dy**2)
    coverage = np.clip(radii(s, m_s)[:, None, None] - distance + 0.5, 0.0, 1.0)
    image = colours(c, m_c)[:, :, None, None] * coverage[:, None]
    return image.reshape(len(c), -1).astype(np.float32)


def blobs(
    classes,
    per_class: int,
    *,
    m_c: float = 0.3,
    m_s: float = 0.15,
    jitter: float = 1.0,
    noise: float = 0.02,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``per_class`` noisy blobs of each named class (``"00"``, ``"10"``, ``"01"``,
    ``"11"``): ``{"x": (N, 432) float32, "h": (N, 2) float32 (colour, size)}``, seeded."""
    _check_strengths(m_c, m_s)
    classes = list(classes)
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown or not classes:
        raise ValueError(f"classes must be among {CLASSES}, got {classes}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    h = np.repeat(
        np.array([[int(k[0]), int(k[1])] for k in classes], dtype=np.float32), per_class, 0
    )
    centres = SIDE / 2 + rng.uniform(-jitter, jitter, size=(len(h), 2))
    x = render(h[:, 0], h[:, 1], m_c=m_c, m_s=m_s, centres=centres)
    x = x + noise * rng.standard_normal(x.shape).astype(np.float32)
    return {"x": x.astype(np.float32), "h": h}


def concept_signals(m_c: float, m_s: float) -> dict[str, float]:
    """The RMS-over-images L2 distance between the two levels of each concept (centred
    blobs, no noise), averaged over the other concept's two levels: ``{"colour", "size"}``."""
    _check_strengths(m_c, m_s)
    out = {}
    for name, axis in (("colour", 0), ("size", 1)):
        gaps = []
        for other in (0.0, 1.0):
            lo, hi = np.zeros(2), np.zeros(2)
            lo[1 - axis] = hi[1 - axis] = other
            hi[axis] = 1.0
            a = render([lo[0]], [lo[1]], m_c=m_c, m_s=m_s)
            b = render([hi[0]], [hi[1]], m_c=m_c, m_s=m_s)
            gaps.append(float(np.linalg.norm(a - b)))
        out[name] = float(np.mean(gaps))
    return out
