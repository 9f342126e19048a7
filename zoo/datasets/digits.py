"""The 8x8 ``load_digits`` images as VAE data: one field, one loader, one likelihood, shared
by the models that decode digits pixel by pixel (Bernoulli or continuous Bernoulli)."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.distributions import constraints

from inference.data import DataError, Field, SupportError

__all__ = [
    "LIKELIHOODS",
    "NUM_DIGIT_CLASSES",
    "digits_with_labels",
    "digit_label_field",
    "TRANSFORMS",
    "image_field",
    "digit_images",
    "pixel_likelihood",
    "greyscale_hint",
    "transform_image",
    "transform_schedule",
    "transformed_digit_pairs",
    "rotate_digits",
    "rotated_digit_pairs",
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


#: the digit classes 0..9
NUM_DIGIT_CLASSES = 10


def digits_with_labels(likelihood: str = "continuous_bernoulli") -> dict[str, np.ndarray]:
    """The 1797 images (as :func:`digit_images`) and their class labels 0..9."""
    return {"x": digit_images(likelihood), "label": load_digits().target.astype("int64")}


def digit_label_field(doc: str) -> Field:
    """The data field of a digit's class, 0..9 (``doc`` says what the model does with it)."""
    return Field(
        dtype="int", support=constraints.integer_interval(0, NUM_DIGIT_CLASSES - 1), doc=doc
    )


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


def rotate_digits(images, degrees) -> torch.Tensor:
    """8x8 images (N, 64) rotated about their centre by ``degrees`` (N,), counter-clockwise,
    bilinear, zeros outside; (N, 64) float32."""
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8)
    theta = torch.as_tensor(degrees, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros_like(theta)
    affine = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(affine, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(-1, 64)


def rotated_digit_pairs(
    seed: int = 0,
    *,
    pairs_per_digit: int = 1,
    max_degrees: float = 45.0,
    brightness: tuple[float, float] = (0.6, 1.4),
) -> dict[str, np.ndarray]:
    """Two views of each load_digits image (pixels / 16, in [0, 1]) under a known group
    element each: view v is the image rotated by theta_v ~ U[-max_degrees, max_degrees] and
    multiplied by b_v ~ U[brightness] (pixels then in [0, max(brightness)]).

    :returns: ``x1``, ``x2`` (N, 64) float32, ``theta1``, ``theta2`` (degrees), ``b1``, ``b2``,
        ``label`` (the digit class) and ``digit`` (the row of load_digits), with
        ``N = 1797 * pairs_per_digit``, the pairs of one image consecutive.
    """
    if pairs_per_digit < 1:
        raise ValueError(f"pairs_per_digit must be >= 1, got {pairs_per_digit}")
    if not 0 <= max_degrees <= 180:
        raise ValueError(f"max_degrees must be in [0, 180], got {max_degrees}")
    low, high = brightness
    if not 0 < low <= high:
        raise ValueError(f"brightness must be (low, high) with 0 < low <= high, got {brightness}")
    digits = load_digits()
    digit = np.repeat(np.arange(len(digits.data)), pairs_per_digit)
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-max_degrees, max_degrees, size=(2, len(digit)))
    b = rng.uniform(low, high, size=(2, len(digit)))
    base = digits.data[digit] / 16.0
    views = [(rotate_digits(base, theta[v]).numpy() * b[v][:, None]) for v in (0, 1)]
    return {
        "x1": views[0].astype("float32"),
        "x2": views[1].astype("float32"),
        "theta1": theta[0],
        "theta2": theta[1],
        "b1": b[0],
        "b2": b[1],
        "label": digits.target[digit].astype("int64"),
        "digit": digit,
    }
