r"""Householder projector (paper 35): a VAE decoder whose first projection is a low-rank
orthogonal matrix built from Householder reflections; see :class:`HouseholderVAE`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from guides import local
from guides.encoders import NormalEncoder, as_pyro_module, mlp
from inference.data import Field
from inference.diagnostics.traversal import closed_form_directions, traversal_purity
from inference.evaluation import elbo_per_row
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.datasets.sprites import FACTOR_NAMES, MEASUREMENTS, SIDE, sprites
from zoo.registry import register

__all__ = ["HouseholderProjector", "HouseholderVAE", "PROJECTORS"]

PROJECTORS = ("householder", "linear")
PIXELS = SIDE * SIDE


def _orthonormal(vectors: torch.Tensor) -> torch.Tensor:
    """The first ``r`` columns of ``H_1 ... H_r``, ``H_i = I - tau_i v_i v_i^T``, from the
    strictly lower part of ``vectors`` (n x r, LAPACK's ``geqrf`` layout: ``v_i`` has zeros
    above row i, a 1 at row i) and ``tau_i = 2 / |v_i|^2``: an n x r matrix with orthonormal
    columns for any parameter values."""
    low = torch.tril(vectors, -1)
    tau = 2.0 / (1.0 + low.pow(2).sum(0))
    return torch.linalg.householder_product(low, tau)


def _householder_vectors(columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vectors, signs)`` with ``_orthonormal(vectors) * signs == columns`` for an n x r
    matrix with orthonormal columns (its Householder QR: R is then diagonal +-1)."""
    a, _ = torch.geqrf(columns.double())
    q = _orthonormal(a)
    signs = torch.diagonal(q.T @ columns.double()).sign()
    signs[signs == 0] = 1.0
    return a.float(), signs.float()


class HouseholderProjector(nn.Module):
    """``h = A z + b`` with ``A = U_r diag(g s) V_r^T``: ``U_r`` (out x r) and ``V_r``
    (in x r) have orthonormal columns, each the product of r Householder reflections
    (:func:`_orthonormal`); the singular values are fixed and equal (``gain`` g > 0, signs
    s = +-1 fixed at initialisation), so ``A`` has rank r and ``A^T A = g^2 V_r V_r^T``.
    The traversal directions are the columns of ``V_r`` (:attr:`directions`): with equal
    singular values the eigenvectors of ``A^T A`` are not unique inside the subspace, and
    ``V_r`` is the basis the reflections learn (the paper's choice)."""

    def __init__(self, in_dim: int, out_dim: int, rank: int):
        super().__init__()
        self.u = nn.Parameter(torch.randn(out_dim, rank) / math.sqrt(out_dim))
        self.v = nn.Parameter(torch.randn(in_dim, rank) / math.sqrt(in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.register_buffer("signs", torch.ones(rank))
        self.register_buffer("gain", torch.ones(()))

    @property
    def weight(self) -> torch.Tensor:
        """``A`` (out x in), as a linear layer's weight."""
        return (_orthonormal(self.u) * (self.gain * self.signs)) @ _orthonormal(self.v).T

    @property
    def directions(self) -> torch.Tensor:
        """The r traversal directions in latent space, ``(r, in)`` (rows of ``V_r^T``)."""
        return _orthonormal(self.v).T.detach()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + self.bias

    @torch.no_grad()
    def init_from(self, layer: nn.Linear) -> None:
        """Initialise from a trained linear layer ``W = U S V^T``: the top r singular
        vectors by Householder QR (``geqrf``), the gain the mean of the top r singular
        values (the paper fixes them at 1; a common gain keeps the trained decoder's scale),
        the bias copied."""
        rank = len(self.signs)
        u, s, vh = torch.linalg.svd(layer.weight.double(), full_matrices=False)
        self.u.copy_(_householder_vectors(u[:, :rank])[0])
        vectors, v_signs = _householder_vectors(vh[:rank].T)
        self.v.copy_(vectors)
        self.signs.copy_(_householder_vectors(u[:, :rank])[1] * v_signs)
        self.gain.fill_(float(s[:rank].mean()))
        self.bias.copy_(layer.bias)


@register
class HouseholderVAE(ZooModel):
    r"""Householder-projector VAE (paper 35), a probabilistic adaptation.

    Song, Zhang, Sebe & Wang (ICCV 2023), "Householder Projector for Unsupervised Latent
    Semantics Discovery" (code: github.com/KingJamesSong/HouseholderGAN). The paper
    re-parameterises the first projection of a pre-trained StyleGAN (the style modulation)
    as a low-rank orthogonal matrix built from Householder reflections, fine-tunes the GAN
    for about 1% of its training steps, and reads interpretable directions off the
    projection. **Adaptation**: GAN training is replaced by a VAE (the spec's native
    analogue); kept are the Householder-parameterised projection with fixed equal singular
    values, the brief fine-tuning from a trained unconstrained model
    (:meth:`from_pretrained`) and directions read from the projection.

    Generative story, for 16x16 greyscale images :math:`x_n \in [0, 1]^{256}`::

        z_n ~ Normal(0, I_d)
        h_n = A z_n + b,   A = U_r diag(g s) V_r^T                       (rank r < d)
        x_n ~ Normal(sigmoid(f_theta(softplus(h_n))), obs_scale^2 I)

    with :math:`U_r = H(u_1) \cdots H(u_r) [I_r; 0]`, :math:`H(u) = I - 2 u u^T / |u|^2`
    (the same for :math:`V_r`), fixed gain :math:`g` and signs :math:`s \in \{\pm 1\}^r`,
    an MLP :math:`f_\theta` and an amortized Gaussian encoder :math:`q(z_n | x_n)`;
    ``Trace_ELBO``. The traversal directions are the r columns of :math:`V_r`; an image is
    edited by :math:`z' = z + \alpha v_k`. ``projector="linear"`` is the baseline: the same
    VAE with an unconstrained first layer :math:`W`, its directions the leading
    eigenvectors of :math:`W^T W` (closed-form factorisation, Shen & Zhou 2021).

    ``zoo train householder`` trains the constrained model from a random orthogonal
    start; the paper's protocol (train ``projector="linear"``, then
    :meth:`from_pretrained` and a short fine-tune) is the recipe's and the tutorial's.
    The default data are the continuous sprites of :mod:`zoo.datasets.sprites` (x, y,
    scale, brightness), whose ``factors`` field is carried for :meth:`evaluate` and not
    modelled. With an isotropic prior a rotation of ``z`` inside the r-dimensional
    subspace leaves the likelihood unchanged, so nothing but the encoder's diagonal
    posterior and the nonlinear decoder picks the basis: orthogonality alone does not
    promise disentangled directions (the spec's pitfall).
    """

    name = "householder"
    summary = "Householder projector: VAE whose first decoder layer is rank-r orthogonal"
    paper = 35
    local_sites = ("z",)
    #: images alone are enough to train; the ground-truth factors are checked when given
    optional_fields = ("factors",)
    static_structure = True

    tiny = {"num_rows": 256, "hidden": (16, 32), "steps": 20, "batch_size": 64}

    @dataclass
    class Config(TrainConfig):
        projector: str = "householder"
        num_rows: int = 4000
        latent_dim: int = 8
        rank: int = 4  # the number of factors of the sprites
        hidden: tuple[int, ...] = (64, 256)  # first: the projection's width C
        obs_scale: float = 0.05
        holdout: float = 0.1
        batch_size: int = 128
        lr: float = 1e-3
        steps: int | None = 4000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        width = c.hidden[0]
        if c.projector == "householder":
            self.projection = HouseholderProjector(c.latent_dim, width, c.rank)
        else:
            self.projection = nn.Linear(c.latent_dim, width)
        self.projection = as_pyro_module(self.projection)
        self.body = mlp([width, *c.hidden[1:], PIXELS])
        self.encoder = NormalEncoder(PIXELS, c.latent_dim, tuple(reversed(c.hidden)))

    def check_config(self) -> None:
        c = self.config
        if c.projector not in PROJECTORS:
            raise ConfigError(f"projector must be one of {PROJECTORS}, got '{c.projector}'")
        require_positive_ints(c, "num_rows", "latent_dim", "rank")
        require_positive_sizes(c, "hidden")
        if c.rank > min(c.latent_dim, c.hidden[0]):
            raise ConfigError(
                f"rank ({c.rank}) must not exceed latent_dim ({c.latent_dim}) or the "
                f"projection width hidden[0] ({c.hidden[0]})"
            )
        require_positive_numbers(c, "obs_scale")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(
                shape=(PIXELS,),
                support=constraints.unit_interval,
                doc="16x16 greyscale image in [0, 1]",
                image=(SIDE, SIDE),
            ),
            "factors": Field(
                shape=(len(FACTOR_NAMES),),
                doc=f"ground-truth factors {FACTOR_NAMES} (not modelled; optional)",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        images, factors = sprites(self.config.num_rows, seed=int(seed))
        return self.validate({"x": images, "factors": factors})

    # ----- model and guide ------------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z": dist.Normal(0.0, 1.0).expand([self.config.latent_dim]).to_event(1)}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image ``(..., 256)`` in [0, 1] for latents ``(..., latent_dim)``."""
        h = nn.functional.softplus(self.projection(z))
        return torch.sigmoid(self.body(h))

    def model(self, batch) -> None:
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            mean = self.decode(z)
            pyro.sample("x", dist.Normal(mean, self.config.obs_scale).to_event(1), obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            local.sample("z", loc, scale, context=context)

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["image", "latent"], "x": ["image", "pixel"]}

    # ----- the paper's protocol and check ---------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, trained: HouseholderVAE, *, priors=None, **overrides
    ) -> HouseholderVAE:
        """A Householder model initialised from a trained ``projector="linear"`` one: the
        encoder and the rest of the decoder copied, the projection from the top ``rank``
        singular vectors of the trained first layer (:meth:`HouseholderProjector.init_from`),
        ready for a short fine-tune (``priors`` and config ``overrides`` as for the
        constructor)."""
        if trained.config.projector != "linear":
            raise ValueError("from_pretrained needs a model with projector='linear'")
        config = {**trained.config_dict(), **overrides, "projector": "householder"}
        model = cls(config, priors=priors)
        model.encoder.load_state_dict(trained.encoder.state_dict())
        model.body.load_state_dict(trained.body.state_dict())
        model.projection.init_from(trained.projection)
        return model

    def directions(self) -> np.ndarray:
        """The model's ``rank`` traversal directions ``(rank, latent_dim)``: the columns of
        ``V_r`` (householder) or the leading eigenvectors of ``W^T W`` (linear)."""
        if self.config.projector == "householder":
            return self.projection.directions.cpu().numpy()
        return closed_form_directions(self.projection.weight.detach().cpu(), self.config.rank)

    @torch.no_grad()
    def codes(self, x: torch.Tensor, guide=None) -> torch.Tensor:
        """Encoder means ``E_q[z | x]`` (the guide's encoder when given)."""
        with local.using(guide):
            loc, _ = local.encoder(self)(x.to(self.device))
        return loc

    def purity(self, directions, data, *, rows: int = 200, guide=None):
        """:func:`~inference.diagnostics.traversal.traversal_purity` of ``directions``
        from the codes of the first ``rows`` images of ``data``, with the sprites'
        ground-truth measurements and ``data``'s images as the reference spread (a direction
        must move some factor by half a data sd over -3..3 to count)."""
        base = self.codes(data["x"][:rows], guide)
        with self.inference_mode():
            return traversal_purity(
                self.decode, directions, base, MEASUREMENTS, reference=data["x"]
            )

    def evaluate(self, guide, data) -> dict:
        """ELBO per image (nats, 10 particles) and the traversal purity of the model's own
        directions (:meth:`directions`) from 200 encoded images."""
        result = self.purity(self.directions(), data, guide=guide)
        elbo = elbo_per_row(self, guide, {"x": data["x"]}, num_particles=10)
        return {
            "elbo_per_image": float(elbo.mean()),
            "mean_purity": result.mean_purity,
            "active_directions": int(result.active.sum()),
            "min_factor_coverage": float(min(result.coverage.values())),
        }

    def figures(self, guide, data, *, idata=None) -> dict:
        """The default image figures and a traversal grid along each of the model's
        directions from the first image's code."""
        from inference.diagnostics.traversal import traversal_grid

        out = super().figures(guide, data, idata=idata)
        if guide is not None:

            def grid():
                base = self.codes(data["x"][:1], guide)[0]
                with self.inference_mode():
                    return traversal_grid(self.decode, self.directions(), base, (SIDE, SIDE))

            out["traversals"] = grid
        return out
