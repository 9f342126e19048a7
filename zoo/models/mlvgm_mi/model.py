"""A multi-latent (ladder) VAE on the 8x8 digits: the zoo's analogue of an MLVGM (paper 1).

Serez, D., Cristani, M., Del Bue, A., Murino, V. & Morerio, P., "A Mutual Information
Perspective on Multiple Latent Variable Generative Models for Positive View Generation",
TMLR 2025 (code: github.com/SerezD/mi_ml_gen).

**Adaptation.** The paper studies pretrained GANs (BigBiGAN, StyleGAN2) and cites NVAE; none
is trainable here on 2 CPU cores. This multi-latent VAE stands in for them: like BigBiGAN's
z chunks and StyleGAN's W+ groups, each latent group enters the generator at a successive
layer, the first group at the first (coarsest) layer. Its per-group mutual information with
the output is measured by :func:`inference.diagnostics.latent_mi` (any zoo model with several
local latent sites), and :mod:`zoo.models.mlvgm_mi.positive_views` uses it to generate
positive views for contrastive learning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from guides import local
from guides.encoders import NormalEncoder, as_pyro_module
from inference.data import DataError, Field
from inference.diagnostics import latent_activity
from inference.evaluation import elbo_per_row
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

__all__ = ["MLVGM", "LadderDecoder", "INJECTIONS", "LIKELIHOODS"]

INJECTIONS = ("concat", "film")


class LadderDecoder(PyroModule):
    """``(z_1, ..., z_L) -> logits``: z_1 feeds the first layer, z_l the l-th layer.

    ``concat``: ``h_l = act(W_l h_{l-1} + U_l z_l + b_l)`` (a linear layer on the
    concatenation ``[h_{l-1}, z_l]``); ``film``: ``h_l = act((1 + gamma_l(z_l)) * W_l h_{l-1}
    + beta_l(z_l))``. ``mask[l] = 0`` zeroes group l's input weights (a dead group).
    """

    def __init__(
        self,
        levels: int,
        latent_dim: int,
        hidden: int,
        out_dim: int,
        injection: str,
        dead_levels: Sequence[int] = (),
        level_dropout: float = 0.0,
    ):
        super().__init__()
        self.injection = injection
        self.level_dropout = float(level_dropout)
        width = hidden if injection == "concat" else 2 * hidden
        self.first = nn.Linear(latent_dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(levels - 1))
        self.inject = nn.ModuleList(nn.Linear(latent_dim, width) for _ in range(levels - 1))
        self.out = nn.Linear(hidden, out_dim)
        self.act = nn.Softplus()
        mask = torch.ones(levels)
        mask[[level - 1 for level in dead_levels]] = 0.0
        self.register_buffer("mask", mask)
        as_pyro_module(self.first)
        as_pyro_module(self.blocks)
        as_pyro_module(self.inject)
        as_pyro_module(self.out)

    def _keep(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """(..., L) 0/1 weights of the groups: in training, with probability
        ``level_dropout`` an image keeps only groups 1..k (k uniform in 1..L-1)."""
        levels = len(zs)
        batch = zs[0].shape[:-1]
        keep = self.mask.expand(batch + (levels,))
        if self.training and self.level_dropout > 0:
            cut = torch.randint(1, levels, batch, device=zs[0].device)
            cut = torch.where(
                torch.rand(batch, device=zs[0].device) < self.level_dropout,
                cut,
                torch.full_like(cut, levels),
            )
            order = torch.arange(levels, device=zs[0].device)
            keep = keep * (order < cut.unsqueeze(-1)).to(keep.dtype)
        return keep

    def forward(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        keep = self._keep(zs)
        h = self.act(self.first(zs[0] * keep[..., :1]))
        for i, (block, inject) in enumerate(zip(self.blocks, self.inject, strict=True)):
            code = inject(zs[i + 1] * keep[..., i + 1 : i + 2])
            if self.injection == "concat":
                h = self.act(block(h) + code)
            else:
                gamma, beta = code.chunk(2, dim=-1)
                h = self.act((1.0 + gamma) * block(h) + beta)
        return self.out(h)


@register
class MLVGM(ZooModel):
    """Multi-latent ladder VAE (paper 1's MLVGM, adapted). For image n and group l = 1..L::

        z_{n,l} ~ Normal(0, I_d)                                   (L groups of d dims)
        h_{n,1} = act(A z_{n,1} + a)
        h_{n,l} = act(W_l h_{n,l-1} + U_l z_{n,l} + b_l)           (injection="concat")
               or act((1 + gamma_l(z_{n,l})) W_l h_{n,l-1} + beta_l(z_{n,l}))  ("film")
        x_n ~ Bernoulli(sigmoid(C h_{n,L} + c))                      (64 binarized pixels)

    The decoder weights are point estimates; the guide is an amortized diagonal Normal per
    group, ``q(z_{n,l} | x_n)``, from one shared MLP encoder. ``dead_levels`` zeroes the input
    weights of the listed groups (1-based): the paper's "artificially unused chunk", used to
    check that the mutual-information diagnostic flags it.

    Serez et al., "A Mutual Information Perspective on Multiple Latent Variable Generative
    Models for Positive View Generation", TMLR 2025. The paper's generators are pretrained
    GANs (StyleGAN2, BigBiGAN; NVAE is its VAE example); this VAE is a stand-in that keeps
    their key mechanism, latent groups injected at successive generator layers.
    """

    name = "mlvgm_mi"
    summary = "Multi-latent ladder VAE; mutual information per latent group, positive views"
    paper = 1
    local_sites = ("z_1", "z_2", "z_3")
    static_structure = True

    tiny = {"hidden": 8, "encoder_hidden": (16,), "steps": 20}

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.15
        levels: int = 3
        latent_dim: int = 2
        hidden: int = 32
        encoder_hidden: tuple[int, ...] = (128,)
        injection: str = "concat"
        dead_levels: tuple[int, ...] = ()
        level_dropout: float = 0.5
        likelihood: str = "bernoulli"
        batch_size: int = 128
        lr: float = 1e-3
        epochs: float = 300.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.local_sites = tuple(f"z_{level}" for level in range(1, c.levels + 1))
        self.decoder = LadderDecoder(
            c.levels,
            c.latent_dim,
            c.hidden,
            64,
            c.injection,
            tuple(c.dead_levels),
            c.level_dropout,
        )
        self.encoder = NormalEncoder(64, c.levels * c.latent_dim, tuple(c.encoder_hidden))

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "levels", "latent_dim", "hidden", "batch_size")
        if c.levels < 2:
            raise ConfigError(f"levels must be >= 2 for a multi-latent model, got {c.levels}")
        if c.injection not in INJECTIONS:
            raise ConfigError(f"injection must be one of {INJECTIONS}, got {c.injection!r}")
        if c.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {c.likelihood!r}")
        require_positive_sizes(c, "encoder_hidden", allow_empty=True)
        bad = [lv for lv in c.dead_levels if not isinstance(lv, int) or not 1 <= lv <= c.levels]
        if bad:
            raise ConfigError(
                f"dead_levels must hold group numbers in 1..{c.levels} (levels), got {bad}"
            )
        if len(set(c.dead_levels)) == c.levels:
            raise ConfigError("dead_levels may not switch off every latent group")
        if not 0.0 <= c.level_dropout < 1.0:
            raise ConfigError(f"level_dropout must be in [0, 1), got {c.level_dropout!r}")

    def data_error_hint(self, error: DataError) -> str | None:
        return greyscale_hint(error, self.config.likelihood)

    def data_spec(self) -> dict[str, Field]:
        return {"x": image_field(self.config.likelihood)}

    def default_priors(self) -> dict[str, dist.Distribution]:
        d = self.config.latent_dim
        return {site: dist.Normal(0.0, 1.0).expand([d]).to_event(1) for site in self.local_sites}

    def likelihood(self, logits: torch.Tensor) -> dist.Distribution:
        return pixel_likelihood(logits, self.config.likelihood)

    def model(self, batch) -> None:
        with self.data_plate(batch):
            zs = [pyro.sample(site, self.prior(site)) for site in self.local_sites]
            logits = self.decoder(zs)
            pyro.sample("x", self.likelihood(logits), obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            d = self.config.latent_dim
            for i, site in enumerate(self.local_sites):
                part = slice(i * d, (i + 1) * d)
                local.sample(site, loc[..., part], scale[..., part], context=context)

    def generate(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean image (pixel probabilities) for the latent groups ``zs``: the generator g(z)
        (level dropout applies only in training mode: call ``.eval()`` first)."""
        return self.likelihood(self.decoder(list(zs))).mean

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.validate({"x": digit_images(self.config.likelihood)})

    def dims(self) -> dict[str, list[str]]:
        dims = {site: ["image", f"{site}_dim"] for site in self.local_sites}
        dims["x"] = ["image", "pixel"]
        return dims

    def figures(self, guide, data, *, idata=None) -> dict:
        """New digits and reconstructions (the default image figures) and, per latent
        group, a traversal of its dimensions over -2.5..2.5 from the first image's code
        (the other groups held at theirs): which layer of the generator each group moves."""
        from zoo.figures import traversal_figure

        out = super().figures(guide, data, idata=idata)
        if guide is not None:
            grid = torch.linspace(-2.5, 2.5, 7)
            for site in self.local_sites:
                out[f"traversal_{site}"] = lambda site=site: traversal_figure(
                    self, guide, data, site, grid
                )
        return out

    def evaluate(self, guide, data) -> dict:
        """ELBO per image (nats) and KL per latent group: a group with KL ~ 0 is unused.
        Measured with every group on (evaluation mode: no level dropout)."""
        was_training = self.training
        self.eval()
        try:
            activity = latent_activity(self, guide, data)
            elbo = float(elbo_per_row(self, guide, data, num_particles=10).mean())
        finally:
            self.train(was_training)
        return {
            "elbo_per_image": elbo,
            **{f"kl_{site}": activity[site]["total_kl"] for site in self.local_sites},
        }
