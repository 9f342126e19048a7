"""QLAE: an autoencoder whose latents are quantized to learnable per-dimension scalar
codebooks, trained with strong weight decay (paper 12), with its AE and beta-VAE baselines.

Hsu, Dorrell, Whittington, Wu & Finn (NeurIPS 2023), "Disentanglement via Latent
Quantization" (code: github.com/kylehkhsu/latent_quantization, JAX; ported, not copied).
The default data is the seeded 16x16 mini-dSprites of :mod:`zoo.datasets.dsprites` (4 known
factors), so the paper's InfoMEC metrics (:func:`inference.diagnostics.infomec`) can be
measured.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from guides import local
from guides.encoders import NormalEncoder, mlp
from guides.quantize import nearest_code, straight_through_value
from inference.data import Field
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.datasets.dsprites import FACTOR_NAMES, mini_dsprites
from zoo.registry import register

VARIANTS = ("qlae", "ae", "beta_vae")
PIXELS = 256
SIDE = (16, 16)


@functools.lru_cache(maxsize=4)
def _dsprites(seed: int):
    return mini_dsprites(seed=seed)


class PenalizedLikelihood(dist.TorchDistribution):
    """A likelihood times a row-wise factor ``exp(log_factor)`` that depends on the latents
    only: draws come from ``base``; ``log_prob`` adds ``log_factor``. It carries the QLAE's
    codebook and commitment penalties on the one observed site (a separate ``pyro.factor``
    site would be a second observed site for every posterior and predictive tool)."""

    arg_constraints: dict = {}

    def __init__(self, base: dist.TorchDistribution, log_factor: torch.Tensor):
        self.base = base
        self.log_factor = log_factor
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return PenalizedLikelihood(
            self.base.expand(batch_shape), self.log_factor.expand(batch_shape)
        )

    def sample(self, sample_shape=()) -> torch.Tensor:
        return self.base.sample(torch.Size(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value) + self.log_factor


@register
class QLAE(ZooModel):
    """Quantized-latent autoencoder (QLAE), as a Pyro model. An adaptation: the paper's
    QLAE is a deterministic autoencoder; here it is the smallest probabilistic model whose
    objective is the paper's loss.

    Generative story for a binary image :math:`x_n \\in \\{0,1\\}^{256}`, with
    :math:`n_z` latent dimensions, each with its own learnable scalar codebook
    :math:`v_j \\in \\mathbb{R}^{K}` (initialised ``linspace(-0.5, 0.5, K)``)::

        z_n ~ Normal(0, I)                                  (declared prior, swappable)
        zhat_nj = z_nj + sg(Q_j(z_nj) - z_nj),  Q_j(u) = argmin_{v in v_j} |u - v|
        x_n ~ Bernoulli(sigmoid(f_theta(zhat_n)))

    ``zhat`` equals the quantized code in value and passes gradients straight through to
    ``z`` (the paper's straight-through estimator). The guide is a point mass at the
    encoder's output, ``q(z_n | x_n) = Delta(g_phi(x_n))``, and the prior term is masked out
    of the objective (the paper has none), so the negative ELBO is the paper's loss: the
    Bernoulli reconstruction error plus the codebook and commitment penalties
    ``D/n_z * (w_q |sg(z) - Q(z)|^2 + w_c |z - sg(Q(z))|^2)``, a factor ``exp(-penalty)``
    of the joint carried by the likelihood site (the paper's weights w = 0.01 are relative
    to the per-pixel mean cross-entropy, hence the D/n_z
    with D = 256 pixels). Training uses AdamW with weight decay 0.1 and gradient clipping at
    1 (:meth:`fit`), which the paper finds essential. Prior draws of ``z`` quantize to a
    code on the grid, so the model can also generate.

    Baselines as configs: ``variant="ae"`` drops the quantization (same Delta guide, plain
    autoencoder); ``variant="beta_vae"`` is Higgins et al. (2017): Normal encoder guide and
    the KL term weighted by ``beta`` (the model's ``z`` site and the guide's are both scaled).
    """

    name = "qlae"
    summary = "Quantized-latent autoencoder: per-dimension scalar codebooks, InfoMEC"
    paper = 12
    local_sites = ("z",)
    #: images alone are enough to train; the ground-truth factors are checked when given
    optional_fields = ("factors",)
    static_structure = True

    tiny = {"hidden": (16,), "batch_size": 64, "steps": 10}

    @dataclass
    class Config(TrainConfig):
        variant: str = "qlae"
        latent_dim: int = 8  # paper: 2 x number of sources
        num_values: int = 10  # scalar codebook size per latent dimension
        hidden: tuple[int, ...] = (256, 256)
        beta: float = 4.0  # KL weight, beta_vae only
        quantization_weight: float = 0.01
        commitment_weight: float = 0.01
        num_factors: int = 4  # columns of the (unobserved) ground-truth factors field
        batch_size: int = 128
        lr: float = 1e-3
        weight_decay: float = 0.1  # AdamW (optimizer ``auto`` with decay)
        clip_norm: float = 1.0
        epochs: float = 200.0  # ~5000 steps of 128 on the 3240 mini-dSprites images

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.encoder = NormalEncoder(PIXELS, c.latent_dim, hidden)
        self.decoder = mlp([c.latent_dim, *hidden, PIXELS])
        grid = torch.linspace(-0.5, 0.5, c.num_values)
        self.codebook = nn.Parameter(grid.repeat(c.latent_dim, 1))  # (n_z, K)

    def check_config(self) -> None:
        c = self.config
        if c.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got '{c.variant}'")
        require_positive_ints(c, "latent_dim", "num_factors", "batch_size")
        if not isinstance(c.num_values, int) or c.num_values < 2:
            raise ConfigError(f"num_values must be an integer >= 2, got {c.num_values!r}")
        require_positive_sizes(c, "hidden", allow_empty=True)
        require_positive_numbers(c, "beta")
        require_non_negative_numbers(c, "quantization_weight", "commitment_weight")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(
                shape=(PIXELS,), support=constraints.boolean, doc="16x16 binary image", image=SIDE
            ),
            "factors": Field(
                shape=(self.config.num_factors,),
                dtype="int",
                support=constraints.nonnegative_integer,
                doc="ground-truth factor labels (not modelled; for InfoMEC; optional)",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        if self.config.num_factors != len(FACTOR_NAMES):
            raise ConfigError(
                f"the default mini-dSprites data has {len(FACTOR_NAMES)} factors; "
                f"num_factors is {self.config.num_factors}"
            )
        images, factors = _dsprites(int(seed))
        return self.validate({"x": images.copy(), "factors": factors.copy()})

    # ----- model and guide ------------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z": dist.Normal(0.0, 1.0).expand([self.config.latent_dim]).to_event(1)}

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook value per dimension (no gradient to ``z``; to the codebook)."""
        return nearest_code(z, self.codebook)

    def model(self, batch) -> None:
        c = self.config
        with self.data_plate(batch):
            if c.variant == "beta_vae":
                with poutine.scale(scale=c.beta):
                    z = pyro.sample("z", self.prior("z"))
            else:  # a point-estimate autoencoder has no prior term in its objective
                with poutine.mask(mask=False):
                    z = pyro.sample("z", self.prior("z"))
            code = z
            if c.variant == "qlae":
                quantized = self.quantize(z)
                code = straight_through_value(z, quantized)
                codebook_term = (z.detach() - quantized).pow(2).sum(-1)
                commitment_term = (z - quantized.detach()).pow(2).sum(-1)
                penalty = (PIXELS / c.latent_dim) * (
                    c.quantization_weight * codebook_term + c.commitment_weight * commitment_term
                )
            likelihood = dist.Bernoulli(logits=self.decoder(code)).to_event(1)
            if c.variant == "qlae":
                likelihood = PenalizedLikelihood(likelihood, -penalty)
            pyro.sample("x", likelihood, obs=batch["x"])

    @property
    def fixed_local_guide(self) -> str:
        if self.config.variant == "beta_vae":
            return ""
        return (
            f"variant '{self.config.variant}' guides z by a point mass at the encoder's output; "
            "local families apply to variant='beta_vae'"
        )

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            if self.config.variant == "beta_vae":
                with poutine.scale(scale=self.config.beta):
                    local.sample("z", loc, scale, context=context)
            else:
                pyro.sample("z", dist.Delta(loc, event_dim=1))

    # ----- training and evaluation ----------------------------------------------------------

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: the quantized code (qlae) or the encoder mean (ae, beta_vae)."""
        loc, _ = local.encoder(self)(x.to(self.device))
        return self.quantize(loc) if self.config.variant == "qlae" else loc

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities decoded from :meth:`codes`."""
        return torch.sigmoid(self.decoder(self.codes(x)))

    def evaluate(self, guide, data) -> dict:
        """Reconstruction cross-entropy (nats per image, from :meth:`codes`) and, when the
        data has ``factors``, InfoM / InfoE / InfoC of the codes (discrete for qlae)."""
        from inference.diagnostics.infomec import infomec

        x = data["x"].to(self.device)
        with torch.no_grad(), local.using(guide):  # the guide's encoder, if it has one
            codes = self.codes(x)
            logits = self.decoder(codes)
            bce = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        out = {"reconstruction_bce_per_image": float(bce.sum(-1).mean())}
        if "factors" in data:
            result = infomec(
                codes.cpu().numpy(),
                data["factors"].cpu().numpy(),
                discrete_latents=self.config.variant == "qlae",
            )
            out.update(result.as_dict())
            out["active_latents"] = int(result.active.sum())
        return out

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["image", "latent"], "x": ["image", "pixel"]}

    # ----- new images and figures -----------------------------------------------------------

    def _code_sample(self, data, rows: int = 2048) -> torch.Tensor:
        """:meth:`codes` of (up to ``rows``) training images: ``(M, latent_dim)``."""
        return self.codes(data["x"][:rows])

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """New images. ``beta_vae`` draws ``z`` from its prior (the default). ``qlae`` and
        ``ae`` have no usable prior (their objective does not include it): each latent
        dimension is drawn independently from its empirical distribution over the training
        images' codes (for ``qlae``: codebook values, as often as the encoder uses them),
        then decoded; ``x ~ Bernoulli(sigmoid(decoder(code)))``. The ``factors`` field is
        dropped (the ground truth of training images, not of new ones)."""
        if self.config.variant == "beta_vae":
            rows = super().sample_new_rows(
                num, data=data, guide=guide, draws=draws, seed=seed, mean=mean
            )
        else:
            with self.inference_mode():
                codes = self._code_sample(data)
            generator = torch.Generator().manual_seed(int(seed))
            pick = torch.randint(
                len(codes), (max(int(num), 1), codes.shape[1]), generator=generator
            )
            z = torch.gather(codes, 0, pick.to(codes.device))
            inputs, trace = self._forward_rows(
                num, data=data, guide=guide, draws=draws, seed=seed, fixed={"z": z}
            )
            rows = self._rows_from_trace(inputs, trace, mean=mean)
        rows.pop("factors", None)
        return rows

    def figures(self, guide, data, *, idata=None) -> dict:
        """New images and reconstructions (the default image figures) and a latent
        traversal: each dimension through its codebook values (``qlae``), or through its
        5%..95% quantiles over the training codes (``ae``, ``beta_vae``), from the first
        image's code."""
        from zoo.figures import traversal_figure

        out = super().figures(guide, data, idata=idata)
        if guide is None:
            return out

        def traversal():
            with self.inference_mode():
                if self.config.variant == "qlae":
                    grid = self.codebook.detach().sort(-1).values
                    label = "its codebook values"
                else:
                    levels = torch.linspace(0.05, 0.95, 7, device=self.device)
                    grid = torch.quantile(self._code_sample(data), levels, dim=0).T
                    label = "5% to 95% quantiles of its codes"
            return traversal_figure(self, guide, data, "z", grid, label=label)

        out["traversal"] = traversal
        return out
