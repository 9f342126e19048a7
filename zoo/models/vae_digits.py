"""A variational autoencoder on the 8x8 handwritten digits (reference model, not a paper).

Generative story, for images :math:`x_n \\in \\{0, 1\\}^{64}` (or :math:`[0, 1]^{64}`)::

    z_n ~ Normal(0, I_d)
    x_n ~ Bernoulli(sigmoid(f_theta(z_n)))          (likelihood="bernoulli")
      or ContinuousBernoulli(sigmoid(f_theta(z_n))) (likelihood="continuous_bernoulli")

with an MLP decoder :math:`f_\\theta` (a point estimate) and an amortized Gaussian encoder
:math:`q_\\phi(z_n | x_n)`. Kingma & Welling (2014), "Auto-Encoding Variational Bayes";
Loaiza-Ganem & Cunningham (2019), "The continuous Bernoulli". Data: the 1797 real digits of
``sklearn.datasets.load_digits`` (UCI), binarized at half intensity for the Bernoulli.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import DataError, Field
from inference.evaluation import elbo_per_row, iwae_per_row
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_positive_ints,
    require_positive_sizes,
)
from zoo.datasets.digits import (
    LIKELIHOODS,
    digit_images,
    greyscale_hint,
    image_field,
    pixel_likelihood,
)
from zoo.registry import register


class DigitImageVAE(ZooModel):
    """What every VAE on the digit images shares (not registered): the image site, the
    N(0, I) prior of z, the model p(z) p(x | decoder(z)), the local guide from
    ``self.encoder``, the data and the ELBO/IWAE evaluation. A subclass sets its Config
    (with ``latent_dim``, ``hidden``, ``likelihood``) and builds ``encoder`` and ``decoder``."""

    local_sites = ("z",)
    static_structure = True

    def check_config(self) -> None:
        c = self.config
        if c.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got '{c.likelihood}'")
        require_positive_ints(c, "latent_dim")
        require_positive_sizes(c, "hidden", allow_empty=True)

    def data_error_hint(self, error: DataError) -> str | None:
        return greyscale_hint(error, self.config.likelihood)

    def data_spec(self) -> dict[str, Field]:
        return {"x": image_field(self.config.likelihood)}

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z": dist.Normal(0.0, 1.0).expand([self.config.latent_dim]).to_event(1)}

    def model(self, batch) -> None:
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            likelihood = pixel_likelihood(self.decoder(z), self.config.likelihood)
            pyro.sample("x", likelihood, obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            local.sample("z", loc, scale, context=context)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.validate({"x": digit_images(self.config.likelihood)})

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["image", "latent"], "x": ["image", "pixel"]}

    def evaluate(self, guide, data) -> dict:
        """ELBO and 100-sample IWAE bound per image (nats) on ``data``."""
        return {
            "elbo_per_image": float(elbo_per_row(self, guide, data, num_particles=10).mean()),
            "iwae100_per_image": float(iwae_per_row(self, guide, data, num_particles=100).mean()),
        }


@register
class VAEDigits(DigitImageVAE):
    """VAE with an MLP encoder and decoder on load_digits. See the module doc."""

    name = "vae_digits"
    summary = "VAE with MLP encoder and decoder on the 8x8 digits"
    paper = None

    tiny = {"latent_dim": 2, "hidden": (16,), "steps": 20}

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.15
        latent_dim: int = 10
        hidden: tuple[int, ...] = (256, 256)
        likelihood: str = "bernoulli"
        batch_size: int = 128
        lr: float = 1e-3
        epochs: float = 300.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        hidden = list(self.config.hidden)
        self.decoder = mlp([self.config.latent_dim, *hidden, 64])
        self.encoder = NormalEncoder(64, self.config.latent_dim, hidden)

    def figures(self, guide, data, *, idata=None) -> dict:
        """New digits and reconstructions (the default image figures), and a traversal of
        each latent dimension over the prior's -2.5..2.5 from the first image's code."""
        from zoo.figures import traversal_figure

        out = super().figures(guide, data, idata=idata)
        if guide is not None:
            grid = torch.linspace(-2.5, 2.5, 7)
            out["traversal"] = lambda: traversal_figure(self, guide, data, "z", grid)
        return out
