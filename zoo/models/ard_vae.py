r"""ARD-VAE (paper 4): a VAE whose prior learns which latent axes are relevant; see
:class:`ARDVAE`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from sklearn.datasets import load_digits

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import Field
from inference.diagnostics.collapse import latent_activity
from inference.evaluation import elbo_per_row
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.registry import register

__all__ = ["ARDVAE", "manifold_data", "PRIORS", "DATASETS"]

PRIORS = ("ard", "standard")
DATASETS = ("manifold", "digits")


def manifold_data(
    n: int, *, true_dim: int = 3, data_dim: int = 20, noise: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``x = tanh(A2 tanh(A1 z*)) + noise * eps`` with ``z* ~ N(0, I_true_dim)``: a curved
    ``true_dim``-dimensional manifold in ``R^data_dim``. Returns ``(x, z*)``."""
    rng = np.random.default_rng(seed)
    hidden = 2 * data_dim
    a1 = rng.standard_normal((hidden, true_dim)) / np.sqrt(true_dim)
    a2 = rng.standard_normal((data_dim, hidden)) * 1.5 / np.sqrt(hidden)
    z = rng.standard_normal((n, true_dim))
    x = np.tanh(np.tanh(z @ a1.T) @ a2.T) + noise * rng.standard_normal((n, data_dim))
    return x.astype("float32"), z.astype("float32")


class ARDGuide(local.LocalDriver):
    """The ARD-VAE's default guide: the closed-form Gamma posterior of the axis precisions
    given the running estimate ``model.s2``, then the amortized encoder for ``z`` (any
    local family, see :mod:`guides.local`)."""

    def __init__(self, model: ARDVAE):
        super().__init__(model)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        model = self._zoo_model
        values: dict[str, torch.Tensor] = {}
        if model.config.prior == "ard":
            training = torch.is_grad_enabled() and model.training
            rows = batch.size if training else max(int(model.rows), batch.size)
            values["alpha"] = pyro.sample("alpha", model.alpha_posterior(rows))
        self.run_local(batch, values)
        return values


@register
class ARDVAE(ZooModel):
    r"""ARD-VAE: a VAE whose prior learns which latent axes are relevant (paper 4).

    Saha, Joshi & Whitaker (2025), "ARD-VAE: A Statistical Formulation to Find the Relevant
    Latent Dimensions of Variational Autoencoders" (code: Surojit-Utah/ARD-VAE, TensorFlow).

    Generative story, for rows :math:`x_n \in \mathbb{R}^D` and :math:`L` latent axes::

        alpha_l ~ Gamma(a0, b0)                      l = 1..L   (precision of axis l)
        z_n     ~ Normal(0, diag(1 / alpha))                    (KL weighted by lambda)
        x_n     ~ Normal(f_theta(z_n), obs_scale^2 I)

    with an MLP decoder :math:`f_\theta` and an amortized Gaussian encoder :math:`q(z_n | x_n)`.
    An axis whose posterior precision grows large has prior variance
    :math:`s_l^2 = 1/\alpha_l \to` small and costs KL to use, so the axes the data do not need
    switch off: their encoder means stop moving with x (inactive units).

    The default guide for :math:`\alpha` is the conjugate closed form the paper's code uses,
    ``q(alpha_l) = Gamma(a0 + N/2, b0 + N/2 * s_l^2)`` with :math:`s_l^2` the mean of
    :math:`E_q[z_l^2] = \mu_l^2 + \sigma_l^2` over encoded rows. The code re-estimates
    :math:`s^2` once per epoch on 10,000 rows disjoint from that epoch's SGD batches; here
    :math:`s^2` is a buffer updated after each training step as a running mean over the rows
    encoded in *earlier* steps, so the estimate a step uses is never computed from its own
    batch (an adaptation to a streaming trainer; ``s2_momentum`` sets its memory). With any other
    guide kind (``--guide normal``) the Gamma posterior is learned by SVI instead: the
    fully Bayesian variant. ``prior="standard"`` gives the N(0, I) VAE to compare with.
    The paper's code takes the improper ``a0 = b0 = 0``; the default here is a weak proper
    ``Gamma(1, 1)`` (N/2 = 2500 pseudo-rows outweigh it) from whose median every guide family
    can start.
    """

    name = "ard_vae"
    summary = "ARD-VAE: a hierarchical prior learns which latent axes are relevant"
    paper = 4
    local_sites = ("z",)

    tiny = {"num_rows": 300, "latent_dim": 4, "hidden": (16,), "steps": 20}

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.1
        dataset: str = "manifold"
        num_rows: int = 5000
        true_dim: int = 3
        data_dim: int = 20
        latent_dim: int = 10
        prior: str = "ard"
        hidden: tuple[int, ...] = (64, 64)
        obs_scale: float = 0.1
        kl_weight: float = 1.0
        a0: float = 1.0
        b0: float = 1.0
        s2_momentum: float = 0.05
        s2_floor: float = 1e-4
        batch_size: int = 128
        lr: float = 2e-3
        epochs: float = 100.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.decoder = mlp([c.latent_dim, *hidden, self.x_dim])
        self.encoder = NormalEncoder(self.x_dim, c.latent_dim, hidden)
        # running estimate of E_q[z_l^2] over encoded rows (warm start 1: the N(0, I) prior)
        self.register_buffer("s2", torch.ones(c.latent_dim))
        # training rows N behind s2 (q(alpha) keeps it when one row is evaluated at a time)
        self.register_buffer("rows", torch.zeros((), dtype=torch.long))

    @property
    def x_dim(self) -> int:
        return 64 if self.config.dataset == "digits" else self.config.data_dim

    def check_config(self) -> None:
        c = self.config
        if c.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {DATASETS}, got '{c.dataset}'")
        if c.prior not in PRIORS:
            raise ConfigError(f"prior must be one of {PRIORS}, got '{c.prior}'")
        require_positive_ints(c, "num_rows", "true_dim", "data_dim", "latent_dim")
        if c.dataset == "manifold" and c.true_dim > c.data_dim:
            raise ConfigError(f"true_dim ({c.true_dim}) must not exceed data_dim ({c.data_dim})")
        require_positive_sizes(c, "hidden", allow_empty=True)
        require_positive_numbers(c, "obs_scale", "kl_weight", "a0", "b0", "s2_floor")
        if not 0.0 < float(c.s2_momentum) <= 1.0:
            raise ConfigError(f"s2_momentum must be in (0, 1], got {c.s2_momentum}")

    def data_spec(self) -> dict[str, Field]:
        image = (8, 8) if self.config.dataset == "digits" else None
        return {"x": Field(shape=(self.x_dim,), doc="observation (real-valued)", image=image)}

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        if c.prior == "standard":
            return {"z": dist.Normal(0.0, 1.0).expand([c.latent_dim]).to_event(1)}
        return {"alpha": dist.Gamma(float(c.a0), float(c.b0)).expand([c.latent_dim]).to_event(1)}

    def model(self, batch) -> None:
        c = self.config
        if c.prior == "ard":
            alpha = pyro.sample("alpha", self.prior("alpha"))
            z_prior = dist.Normal(0.0, alpha.rsqrt()).to_event(1)
        else:
            z_prior = self.prior("z")
        with self.data_plate(batch):
            with poutine.scale(scale=float(c.kl_weight)):
                z = pyro.sample("z", z_prior)
            loc = self.decoder(z)
            pyro.sample("x", dist.Normal(loc, float(c.obs_scale)).to_event(1), obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch), poutine.scale(scale=float(self.config.kl_weight)):
            loc, scale, context = local.encode(self, batch["x"])
            z = local.sample("z", loc, scale, context=context)
        if torch.is_grad_enabled() and self.training:
            # after this step's draw: the next step's q(alpha) uses rows encoded before it
            with torch.no_grad():
                if local.running_kind() == "normal":
                    second = (loc.detach() ** 2 + scale.detach() ** 2).mean(0)
                else:  # E_q[z^2] has no closed form under mvn or flow: the draws' mean
                    second = z.detach().pow(2).reshape(-1, z.shape[-1]).mean(0)
                m = float(self.config.s2_momentum)
                self.s2.mul_(1 - m).add_(m * second).clamp_(min=float(self.config.s2_floor))
                self.rows.fill_(batch.size)

    def alpha_posterior(self, num_rows: int) -> dist.Distribution:
        """Closed-form ``q(alpha) = Gamma(a0 + N/2, b0 + N/2 s^2)`` from the running ``s2``."""
        c = self.config
        s2 = self.s2.clone()
        concentration = torch.full_like(s2, float(c.a0) + num_rows / 2)
        rate = float(c.b0) + num_rows / 2 * s2
        return dist.Gamma(concentration, rate).to_event(1)

    def default_guide(self) -> torch.nn.Module:
        return ARDGuide(self)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        c = self.config
        if c.dataset == "digits":
            return self.validate({"x": load_digits().data / 16.0})
        x, _ = manifold_data(c.num_rows, true_dim=c.true_dim, data_dim=c.data_dim, seed=seed)
        return self.validate({"x": x})

    def true_latents(self, seed: int = 0) -> torch.Tensor:
        """The manifold coordinates ``z*`` behind :meth:`default_data` (same seed)."""
        c = self.config
        if c.dataset != "manifold":
            raise ValueError("true latents exist for dataset='manifold' only")
        _, z = manifold_data(c.num_rows, true_dim=c.true_dim, data_dim=c.data_dim, seed=seed)
        return torch.as_tensor(z)

    def dims(self) -> dict[str, list[str]]:
        return {"alpha": ["latent"], "z": ["row", "latent"], "x": ["row", "feature"]}

    @torch.no_grad()
    def relevance(self, data, threshold: float = 0.01) -> dict:
        """The relevant axes on ``data``: per axis the encoded second moment ``s_l^2 =
        mean_n(mu_l^2 + sigma_l^2)`` (the paper's variance estimate), the variance of the
        encoder mean and active units (``Var_x mu_l > threshold``), sorted by ``s^2``."""
        loc, scale = local.encoder(self)(data["x"])
        s2 = (loc**2 + scale**2).mean(0)
        activity = loc.var(0, unbiased=False)
        active = activity > threshold
        return {
            "s2": s2.tolist(),
            "mean_variance": activity.tolist(),
            "active": active.tolist(),
            "relevant_dims": int(active.sum()),
            "order": torch.argsort(s2, descending=True).tolist(),
        }

    def evaluate(self, guide, data) -> dict:
        """Relevant dimensions (active units), the prior variances ``s^2`` per axis, total
        KL and ELBO per row (nats)."""
        with local.using(guide):  # the guide's encoder, when it was built with one
            rel = self.relevance(data)
        act = latent_activity(self, guide, data)["z"]
        return {
            "relevant_dims": rel["relevant_dims"],
            "latent_dim": self.config.latent_dim,
            "s2_sorted": sorted(rel["s2"], reverse=True),
            "kl_collapsed_dims": act["collapsed_dims"],
            "total_kl": act["total_kl"],
            "elbo_per_row": float(elbo_per_row(self, guide, data, num_particles=10).mean()),
        }
