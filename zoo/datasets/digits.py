"""The 8x8 ``load_digits`` images as VAE data: one field, one loader, one likelihood, shared
by the models that decode digits pixel by pixel (Bernoulli or continuous Bernoulli)."""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import torch
from sklearn.datasets import load_digits
from torch.distributions import constraints

from inference.data import DataError, Field, SupportError

__all__ = [
    "LIKELIHOODS",
    "TRANSFORMS",
    "image_field",
    "digit_images",
    "pixel_likelihood",
    "greyscale_hint",
    "transform_image",
    "transform_schedule",
    "transformed_digit_pairs",
]

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")


def image_field(likelihood: str) -> Field:
    """The data field ``x``: 64 pixels, binary for the Bernoulli, in [0, 1] otherwise."""
    support = constraints.boolean if likelihood == "bernoulli" else constraints.unit_interval
    doc = "8x8 image: binary pixels, or in [0, 1] for the continuous Bernoulli"
    return Field(shape=(64,), support=support, doc=doc, image=(8, 8))


def digit_images(likelihood: str) -> np.ndarray:
    """All 1797 images scaled to [0, 1], binarized at half intensity for the Bernoulli."""
    x = load_digits().data / 16.0
    return (x > 0.5).astype("float32") if likelihood == "bernoulli" else x


def pixel_likelihood(logits: torch.Tensor, likelihood: str) -> dist.Distribution:
    """Independent pixels given decoder logits, one event of 64 pixels."""
    if likelihood == "bernoulli":
        return dist.Bernoulli(logits=logits).to_event(1)
    return dist.ContinuousBernoulli(logits=logits).to_event(1)


def greyscale_hint(error: DataError, likelihood: str) -> str | None:
    """The setting that takes greyscale pixels, when a Bernoulli model refused them."""
    if isinstance(error, SupportError) and error.greyscale and likelihood == "bernoulli":
        return (
            "train with `--set likelihood=continuous_bernoulli` for pixels in [0, 1], or "
            "binarise them (e.g. x > 0.5)"
        )
    return None


#: the known transforms of :func:`transformed_digit_pairs`, in label order
TRANSFORMS = ("rotation", "zoom", "intensity")


def transform_image(image: np.ndarray, kind: str, value: float) -> np.ndarray:
    """One 8x8 image in [0, 1] rotated by ``value`` degrees, zoomed by ``value`` about its
    centre (bilinear, cropped to 8x8) or its intensity scaled by ``value`` (clipped to 1)."""
    from scipy import ndimage

    if kind == "rotation":
        out = ndimage.rotate(image, value, reshape=False, order=1, mode="constant")
    elif kind == "zoom":
        centre = (np.array(image.shape) - 1) / 2.0
        matrix = np.eye(2) / value
        out = ndimage.affine_transform(
            image, matrix, offset=centre - matrix @ centre, order=1, mode="constant"
        )
    elif kind == "intensity":
        out = image * value
    else:
        raise ValueError(f"unknown transform '{kind}'; known: {TRANSFORMS}")
    return np.clip(out, 0.0, 1.0)


def transform_schedule(steps: int = 5) -> dict[str, np.ndarray]:
    """The value of each transform at stages ``0..steps``: rotation 0..40 degrees, zoom
    1.0..1.4, intensity 0.6..1.4 (the potential-flow paper's small check), evenly spaced."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return {
        "rotation": np.linspace(0.0, 40.0, steps + 1),
        "zoom": np.linspace(1.0, 1.4, steps + 1),
        "intensity": np.linspace(0.6, 1.4, steps + 1),
    }


def transformed_digit_pairs(
    seed: int = 0, *, steps: int = 5, copies: int = 1, transforms: tuple[str, ...] = TRANSFORMS
) -> dict[str, np.ndarray]:
    """Pairs of greyscale digits one step apart along a known transform (``scipy.ndimage``).

    Each of the 1797 ``load_digits`` images (in [0, 1]) gives ``copies`` rows; a row draws a
    transform ``k`` (index into ``transforms``) and a stage ``t`` in ``0..steps-1`` (seeded),
    and holds ``x`` = the digit at stage ``t`` and ``x_next`` = the same digit at stage
    ``t + 1`` (:func:`transform_schedule`). Returns ``x``, ``x_next`` (N, 64) float32,
    ``k``, ``t`` and ``digit`` (the class label) (N,) int64."""
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown or not transforms:
        raise ValueError(f"transforms must be a non-empty subset of {TRANSFORMS}, got {transforms}")
    schedule = transform_schedule(steps)
    digits = load_digits()
    images = (digits.data / 16.0).reshape(-1, 8, 8)
    rng = np.random.default_rng(seed)
    rows = np.tile(np.arange(len(images)), copies)
    k = rng.integers(len(transforms), size=len(rows))
    t = rng.integers(steps, size=len(rows))
    x = np.empty((len(rows), 64), dtype="float32")
    x_next = np.empty_like(x)
    for i, (row, kind, stage) in enumerate(zip(rows, k, t, strict=True)):
        values = schedule[transforms[kind]]
        x[i] = transform_image(images[row], transforms[kind], values[stage]).reshape(-1)
        x_next[i] = transform_image(images[row], transforms[kind], values[stage + 1]).reshape(-1)
    return {
        "x": x,
        "x_next": x_next,
        "k": k.astype("int64"),
        "t": t.astype("int64"),
        "digit": digits.target[rows].astype("int64"),
    }
