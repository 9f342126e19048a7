"""What the two NIW-Meta models share (Kim & Hospedales, ICLR 2024): the global
Normal-Inverse-Wishart (or diagonal Normal-Inverse-Gamma) prior and its sites, the
per-episode head ``theta``, the closed-form Gaussian step and the paper's conjugate-shaped
guide :class:`NIWGuide`. :class:`NIWBase` is not registered: ``niw_meta``
(:mod:`~zoo.models.niw_meta.regression`) and ``niw_meta_digits``
(:mod:`~zoo.models.niw_meta.digits`) each subclass it."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

from guides import local
from zoo.base import ConfigError, ZooModel
from zoo.models.niw_meta.distributions import (
    PrecisionTrilNormal,
    WishartLogCholesky,
    tril_to_vec,
    vec_to_tril,
)

__all__ = ["COVARIANCES", "NIWBase", "NIWGuide"]

COVARIANCES = ("full", "diag")


class NIWBase(ZooModel):
    """The hierarchical skeleton of NIW-Meta (not a registered model)::

        covariance="full":  Lambda = Sigma^-1 ~ Wishart(nu0, Psi0^-1),  mu | Lambda ~
                            Normal(mu0, (kappa0 Lambda)^-1)     (site ``precision_chol``)
        covariance="diag":  lambda_k ~ Gamma(nu0 / 2, psi0 / 2),  mu_k | lambda_k ~
                            Normal(mu0, (kappa0 lambda_k)^-1)   (site ``precision``)
        theta_i | mu, Sigma ~ Normal(mu, Sigma)                 (episode plate, subsampled)

    with ``Psi0 = psi0 I``. A subclass gives the head's size :attr:`dim`, the episode
    likelihood :meth:`likelihood` and the local step :meth:`local_guide`; its ``Config``
    holds ``covariance``, ``mu0``, ``kappa0``, ``nu0`` and ``psi0``.
    """

    local_sites = ("theta",)
    supports_nuts = False
    static_structure = False  # Wishart sampling retries on a singular draw

    @property
    def dim(self) -> int:
        """The size ``D`` of each episode's head ``theta_i``."""
        raise NotImplementedError

    @property
    def global_site(self) -> str:
        return "precision_chol" if self.config.covariance == "full" else "precision"

    def check_nu0(self, dim: int, dim_formula: str) -> None:
        """The Wishart (full) or Gamma (diag) degrees of freedom must be proper for ``dim``."""
        c = self.config
        if c.covariance == "full" and not c.nu0 > dim - 1:
            raise ConfigError(
                f"nu0 must be > dim - 1 = {dim - 1} for the full NIW (dim = {dim_formula} = "
                f"{dim}); valid range ({dim - 1}, inf), got {c.nu0}"
            )
        if c.covariance == "diag" and not c.nu0 > 0:
            raise ConfigError(
                f"nu0 must be > 0 for the diagonal NIG; valid range (0, inf), got {c.nu0}"
            )

    @property
    def fixed_local_guide(self) -> str:
        """Why ``local=`` families do not apply: theta's guide comes from the globals (the
        closed-form step or the SGLD quadratic) unless ``local_step="amortized"``."""
        step = self.config.local_step
        if step == "amortized":
            return ""
        how = "in closed form" if step == "closed_form" else "by the SGLD quadratic step"
        return (
            f"local_step='{step}' gives theta's guide {how} from the globals; "
            "local families apply to local_step='amortized'"
        )

    def default_priors(self) -> dict[str, dist.Distribution]:
        c, d = self.config, self.dim
        if c.covariance == "full":
            scale_tril = torch.eye(d) / math.sqrt(c.psi0)  # chol(Psi0^-1)
            return {"precision_chol": WishartLogCholesky(torch.tensor(float(c.nu0)), scale_tril)}
        return {"precision": dist.Gamma(c.nu0 / 2.0, c.psi0 / 2.0).expand([d]).to_event(1)}

    # ----- generative model --------------------------------------------------------------

    def precision_matrix(self, value: torch.Tensor) -> torch.Tensor:
        """The precision ``Lambda`` from the global site's value (matrix, both variants)."""
        if self.config.covariance == "full":
            tril = vec_to_tril(value, self.dim)
            return tril @ tril.transpose(-1, -2)
        return torch.diag_embed(value)

    def _theta_prior(self, mu, precision_value) -> dist.Distribution:
        if self.config.covariance == "full":
            return PrecisionTrilNormal(mu, vec_to_tril(precision_value, self.dim))
        return dist.Normal(mu, precision_value.rsqrt()).to_event(1)

    def sample_globals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The global NIW (or NIG) sites: returns ``(mu, precision site value)``."""
        c, d = self.config, self.dim
        site = self.global_site
        # global sites carry an explicit batch dim of 1, so that vectorized draws (a plate
        # at dim -2) line up with it rather than with the event dim
        prior = self.prior(site)
        if prior.batch_shape != (1,):
            prior = prior.expand(torch.broadcast_shapes(prior.batch_shape, (1,)))
        value = pyro.sample(site, prior)
        mu0 = torch.full((d,), float(c.mu0), device=value.device)
        if c.covariance == "full":
            tril = vec_to_tril(value, d)
            mu = pyro.sample("mu", PrecisionTrilNormal(mu0, math.sqrt(c.kappa0) * tril))
        else:
            mu = pyro.sample("mu", dist.Normal(mu0, (c.kappa0 * value).rsqrt()).to_event(1))
        return mu, value

    def model(self, batch) -> None:
        mu, value = self.sample_globals()
        with self.data_plate(batch):
            theta = pyro.sample("theta", self._theta_prior(mu, value))
            self.likelihood(batch, theta)

    def likelihood(self, batch, theta: torch.Tensor) -> None:
        """The observed sites of the episodes in ``batch`` given their heads (inside the
        plate)."""
        raise NotImplementedError

    @staticmethod
    def closed_form(a, b, prior_precision, prior_mean):
        """``V = (A + P)^-1``, ``m = V (b + P m0)``: returns ``(m, chol(A + P))``."""
        post = a + prior_precision
        chol = torch.linalg.cholesky(post)
        rhs = b + (prior_precision @ prior_mean.unsqueeze(-1)).squeeze(-1)
        mean = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        return mean, chol

    def default_guide(self):
        return NIWGuide(self)


class NIWGuide(local.LocalDriver):
    """The paper's guide: a conjugate-shaped global ``q(phi)`` (Wishart(n0, W) times
    Normal(m0, (l0 Lambda)^-1); Gamma(a, b) times Normal for the diagonal) and the closed-form
    one-time-iterate local step built from its parameters (``E_q[Lambda]``, ``m0``)."""

    def __init__(self, model: NIWBase):
        super().__init__(model)
        d, c = model.dim, model.config
        self.m0 = PyroParam(torch.zeros(d))
        self.l0 = PyroParam(torch.tensor(10.0), constraint=constraints.positive)
        prec0 = 1.0  # initial E[Lambda] = I
        if c.covariance == "full":
            n0 = float(d + 2)
            self.n0_excess = PyroParam(torch.tensor(3.0), constraint=constraints.positive)
            self.w_offdiag = PyroParam(torch.zeros(d, d))
            self.w_logdiag = PyroParam(torch.full((d,), 0.5 * math.log(prec0 / n0)))
        else:
            self.shape = PyroParam(torch.full((d,), 3.0), constraint=constraints.positive)
            self.rate = PyroParam(torch.full((d,), 3.0 / prec0), constraint=constraints.positive)

    def n0(self) -> torch.Tensor:
        return self._zoo_model.dim - 1 + self.n0_excess

    def w_tril(self) -> torch.Tensor:
        return torch.tril(self.w_offdiag, -1) + torch.diag_embed(self.w_logdiag.exp())

    def expected_precision(self) -> torch.Tensor:
        """``E_q[Lambda]`` (a matrix for both variants)."""
        if self._zoo_model.config.covariance == "full":
            tril = self.w_tril()
            return self.n0() * tril @ tril.T
        return torch.diag_embed(self.shape / self.rate)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        model = self._zoo_model
        if model.config.covariance == "full":
            q_precision = WishartLogCholesky(self.n0(), self.w_tril()).expand([1])
            value = pyro.sample("precision_chol", q_precision)
            tril = vec_to_tril(value, model.dim)
            mu = pyro.sample("mu", PrecisionTrilNormal(self.m0, self.l0.sqrt() * tril))
        else:
            q_precision = dist.Gamma(self.shape, self.rate).to_event(1).expand([1])
            value = pyro.sample("precision", q_precision)
            mu = pyro.sample("mu", dist.Normal(self.m0, (self.l0 * value).rsqrt()).to_event(1))
        values = {model.global_site: value, "mu": mu}
        self.run_local(batch, values, prior_precision=self.expected_precision(), prior_mean=self.m0)
        return values

    def expected_covariance(self) -> torch.Tensor:
        """``E_q[Sigma]``: ``W^-1 / (n0 - D - 1)`` (full), ``diag(b / (a - 1))`` (diag)."""
        model = self._zoo_model
        with torch.no_grad():
            if model.config.covariance == "full":
                tril = self.w_tril()
                return torch.cholesky_inverse(tril) / (self.n0() - model.dim - 1)
            return torch.diag_embed(self.rate / (self.shape - 1))

    def median(self, batch=None) -> dict[str, torch.Tensor]:
        model = self._zoo_model
        if model.config.covariance == "full":
            mean_prec = self.expected_precision()
            value = tril_to_vec(torch.linalg.cholesky(mean_prec))
        else:
            value = self.shape / self.rate
        return {model.global_site: value.detach()[None], "mu": self.m0.detach()[None]}
