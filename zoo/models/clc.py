"""Conditional latent coding (CLC, paper 29): a rate-distortion VAE whose entropy model for
the latent is conditioned on a reference image retrieved from a dictionary shared by the
encoder and the decoder.

Chen et al. (2025), "Conditional Latent Coding with Learnable Synthesized Reference for Deep
Image Compression", AAAI 2025 (code: github.com/ydchen0806/CLC). The paper is a learned
image codec (CompressAI transforms, a hyperprior, channel-conditional slices, a ResNet-50
feature dictionary). This is the spec's probabilistic analogue at zoo scale, said plainly:
the rate-distortion loss as the negative ELBO of a VAE with a unit-uniform posterior
(Ballé et al. 2017/2018), on 8x8 images (``load_digits``, or 8x8 patches of a photo), with
MLP transforms, no hyperprior and no channel slices. What it keeps: the latent's prior
``N(mu, sigma^2) * U(-1/2, 1/2)`` with ``(mu, sigma)`` computed from a reference retrieved
from a dictionary (the nearest item in PCA features: the released code's nearest-neighbour
retrieval, with PCA in place of ResNet-50 features, which need weights not available
offline), the reference also given to the synthesis transform (the paper's latent residual
prediction takes it too), and the index of the reference charged as side information,
``log2 |dictionary|`` bits per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from guides.encoders import mlp
from inference.data import Field
from inference.rate import (
    LN2,
    NoisyDiscretizedGaussian,
    UnitUniform,
    bits,
    discretized_gaussian_bits,
    index_bits,
    psnr,
)
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.registry import register

PIXELS = 64


class Dictionary:
    """A fixed set of reference images and its retrieval: the nearest item to a query in
    the first ``components`` principal components of the items (deterministic
    preprocessing, held identically by the encoder and the decoder)."""

    def __init__(self, items, components: int = 16):
        items = np.asarray(items, dtype=np.float64)
        if items.ndim != 2 or len(items) < 2:
            raise ValueError(f"dictionary items must be (K >= 2, D), got shape {items.shape}")
        if not np.isfinite(items).all():
            raise ValueError("dictionary items contain NaN or infinite values")
        self.items = items.astype(np.float32)
        self.mean = items.mean(0)
        _, _, vt = np.linalg.svd(items - self.mean, full_matrices=False)
        self.basis = vt[: min(components, len(vt))].T
        self.features = (items - self.mean) @ self.basis

    def __len__(self) -> int:
        return len(self.items)

    def index_bits(self) -> float:
        """The side information per image: ``log2 K`` bits (:func:`inference.rate.index_bits`)."""
        return index_bits(len(self))

    def nearest(self, queries) -> np.ndarray:
        """The index of each query's nearest item in PCA features."""
        q = (np.asarray(queries, dtype=np.float64) - self.mean) @ self.basis
        distances = ((q[:, None, :] - self.features[None]) ** 2).sum(-1)
        return distances.argmin(1)

    def references(self, queries) -> np.ndarray:
        """The nearest item of each query, ``(N, D)``."""
        return self.items[self.nearest(queries)]


def digits_split(seed: int = 0, dictionary_size: int = 256):
    """``load_digits`` in [0, 1]: a seeded random ``dictionary_size`` images as the
    dictionary and the rest as data. Returns ``(Dictionary, x)``."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    return Dictionary(x[order[:dictionary_size]]), x[order[dictionary_size:]]


def photo_patches(image: int, size: int = 8, stride: int = 8) -> np.ndarray:
    """Greyscale ``size x size`` patches in [0, 1] of one of the two photos shipped with
    scikit-learn (``load_sample_images``: 0 china, 1 flower), on a ``stride`` grid."""
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[image].astype("float32").mean(-1) / 255.0
    h, w = photo.shape
    patches = [
        photo[i : i + size, j : j + size].reshape(-1)
        for i in range(0, h - size + 1, stride)
        for j in range(0, w - size + 1, stride)
    ]
    return np.stack(patches)


@register
class CLC(ZooModel):
    """Rate-distortion VAE with a reference-conditioned entropy model (see the module doc).

    Generative story for an image :math:`x_n \\in [0, 1]^{64}` and its reference
    :math:`r_n` (the dictionary item nearest to :math:`x_n`, an input), latent size
    :math:`d`, distortion weight :math:`\\lambda`::

        (mu_n, sigma_n) = h_psi(r_n)           (reference=True; else learned constants)
        y~_n ~ N(mu_n, sigma_n^2) * U(-1/2, 1/2)           elementwise, d dimensions
        x_n ~ Normal(g_theta(y~_n, r_n), sigma_x^2 I),   1 / (2 sigma_x^2) = lambda

    and the posterior :math:`q(\\tilde y_n | x_n) = U(g_\\phi(x_n) - 1/2, g_\\phi(x_n) + 1/2)`
    (fixed unit width, entropy 0). The negative ELBO is then rate plus distortion:
    :math:`-\\log p(\\tilde y | r)` (nats; at integers the bits of the quantised latent
    :math:`\\hat y = \\mathrm{round}(g_\\phi(x))` under the discretised Gaussian) plus
    :math:`\\lambda \\|x - g_\\theta(\\tilde y, r)\\|^2` and a constant. Encoder, decoder
    and entropy model are point estimates (networks). A declared prior for ``y`` replaces
    the learned entropy model (a fixed prior; the default is the learned one).

    :meth:`rate_distortion` measures the codec: bits of :math:`\\hat y` by
    :func:`inference.rate.discretized_gaussian_bits`, plus the reference's index,
    ``log2 K`` bits (:func:`inference.rate.index_bits`) when ``reference=True``; distortion
    as pixel MSE and PSNR of :math:`g_\\theta(\\hat y, r)`.
    """

    name = "clc"
    summary = "Rate-distortion VAE with a reference-conditioned entropy model (bits)"
    paper = 29
    local_sites = ("y",)
    static_structure = True
    fixed_local_guide = (
        "a unit-width uniform posterior (its entropy is 0, so the negative ELBO is rate "
        "plus distortion)"
    )

    tiny = {"latent_dim": 4, "hidden": (16,), "steps": 20}

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.15
        latent_dim: int = 16
        hidden: tuple[int, ...] = (128,)
        reference: bool = True  # condition the entropy model (and decoder) on r
        lam: float = 200.0  # distortion weight per unit squared error, 1 / (2 sigma_x^2)
        dictionary_size: int = 256
        batch_size: int = 128
        lr: float = 2e-3
        epochs: float = 150.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        d = c.latent_dim
        self.encoder = mlp([PIXELS, *hidden, d])
        self.decoder = mlp([d + (PIXELS if c.reference else 0), *hidden, PIXELS])
        if c.reference:
            self.entropy = mlp([PIXELS, *hidden, 2 * d])
        else:
            self.entropy_loc = nn.Parameter(torch.zeros(d))
            self.entropy_log_scale = nn.Parameter(torch.full((d,), math.log(3.0)))

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "latent_dim")
        require_positive_sizes(c, "hidden", allow_empty=True)
        if not isinstance(c.reference, bool):
            raise ConfigError(f"reference must be true or false, got {c.reference!r}")
        require_positive_numbers(c, "lam")
        if not isinstance(c.dictionary_size, int) or not 2 <= c.dictionary_size <= 1000:
            raise ConfigError(
                f"dictionary_size must be an integer in 2..1000, got {c.dictionary_size!r}"
            )

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(shape=(PIXELS,), support=constraints.unit_interval, image=(8, 8),
                       doc="8x8 image, pixels in [0, 1]"),
            "ref": Field(shape=(PIXELS,), support=constraints.unit_interval, image=(8, 8),
                         doc="the reference: the dictionary item nearest to x (an input)"),
        }  # fmt: skip

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """``load_digits`` less a fixed dictionary of ``dictionary_size`` images (split with
        seed 0, so that the dictionary does not move with ``seed``), each image with its
        nearest dictionary item."""
        dictionary, x = digits_split(0, self.config.dictionary_size)
        return self.validate({"x": x, "ref": dictionary.references(x)})

    def dims(self) -> dict[str, list[str]]:
        return {"y": ["image", "latent"], "x": ["image", "pixel"]}

    # ----- model ----------------------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        d = self.config.latent_dim
        return {"y": NoisyDiscretizedGaussian(torch.zeros(d), torch.full((d,), 3.0)).to_event(1)}

    def entropy_params(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` of the entropy model, one row per reference."""
        if self.config.reference:
            out = self.entropy(ref)
            loc, raw = out.chunk(2, dim=-1)
        else:
            shape = (len(ref), self.config.latent_dim)
            loc, raw = self.entropy_loc.expand(shape), self.entropy_log_scale.expand(shape)
        scale = nn.functional.softplus(raw) + 0.11  # sigma >= 0.11, as CompressAI's bound
        return loc, scale

    def latent_prior(self, ref: torch.Tensor) -> dist.Distribution:
        if "y" in self.priors:
            return self.prior("y")
        return NoisyDiscretizedGaussian(*self.entropy_params(ref)).to_event(1)

    def decode(self, y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The pixel means ``g_theta(y, r)`` in (0, 1)."""
        if not self.config.reference:
            return torch.sigmoid(self.decoder(y))
        shape = torch.broadcast_shapes(y.shape[:-1], ref.shape[:-1])
        inputs = torch.cat([y.expand(*shape, -1), ref.expand(*shape, -1)], -1)
        return torch.sigmoid(self.decoder(inputs))

    def model(self, batch) -> None:
        sigma_x = (2.0 * self.config.lam) ** -0.5
        with self.data_plate(batch):
            ref = batch["ref"]
            y = pyro.sample("y", self.latent_prior(ref))
            pyro.sample("x", dist.Normal(self.decode(y, ref), sigma_x).to_event(1), obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            center = self.encoder(batch["x"])
            pyro.sample("y", UnitUniform(center).to_event(1))

    # ----- the codec ------------------------------------------------------------------------

    @torch.no_grad()
    def rate_distortion(self, x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        """The codec on images ``x`` with references ``ref``: ``y_hat = round(g_phi(x))``,
        ``latent_bits`` (per image) under the entropy model by
        :func:`~inference.rate.discretized_gaussian_bits`, ``index_bits`` (``log2 K``,
        0 without a reference), ``bits`` their sum, ``mse`` per pixel and ``psnr`` (dB)
        of the reconstruction ``g_theta(y_hat, r)``."""
        x, ref = x.to(self.device), ref.to(self.device)
        y_hat = torch.round(self.encoder(x))
        if "y" in self.priors:  # a declared prior: its density at y_hat stands for the bin mass
            latent = float(bits(self.prior("y").log_prob(y_hat)).mean())
        else:
            loc, scale = self.entropy_params(ref)
            latent = float(discretized_gaussian_bits(y_hat, loc, scale).sum(-1).mean())
        side = index_bits(self.config.dictionary_size) if self.config.reference else 0.0
        mse = float((self.decode(y_hat, ref) - x).pow(2).mean())
        return {
            "latent_bits": latent,
            "index_bits": side,
            "bits": latent + side,
            "mse": mse,
            "psnr": psnr(mse),
        }

    def evaluate(self, guide, data) -> dict:
        """The codec's rate (bits per image, index included) and distortion (MSE, PSNR), and
        the negative ELBO per image in bits (rate plus scaled distortion, noisy latents)."""
        from inference.evaluation import elbo_per_row

        out = self.rate_distortion(data["x"], data["ref"])
        out["neg_elbo_bits_per_image"] = float(-elbo_per_row(self, guide, data).mean() / LN2)
        return out
