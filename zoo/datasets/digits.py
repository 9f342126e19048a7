"""The 8x8 ``load_digits`` images as VAE data: one field, one loader, one likelihood, shared
by the models that decode digits pixel by pixel (Bernoulli or continuous Bernoulli)."""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import torch
from sklearn.datasets import load_digits
from torch.distributions import constraints

from inference.data import DataError, Field, SupportError

__all__ = ["LIKELIHOODS", "image_field", "digit_images", "pixel_likelihood", "greyscale_hint"]

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
