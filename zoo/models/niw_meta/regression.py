"""NIW-Meta: a hierarchical Bayesian few-shot meta-learner with a one-time-iterate local step.

Kim & Hospedales (2024), "A Hierarchical Bayesian Model for Deep Few-Shot Meta Learning",
ICLR 2024 (arXiv 2306.09702). Episodes (tasks) :math:`i = 1..N` each get their own head
:math:`\\theta_i \\in R^D`, governed by one global Normal-Inverse-Wishart variable
:math:`\\phi = (\\mu, \\Sigma)`; the data of episode ``i`` depend on :math:`\\theta_i`
through a shared feature map :math:`\\Phi(x) = [1, x, \\mathrm{rbf}_1(x), ..,
\\mathrm{rbf}_K(x)]` (``D = K + 2``; fixed RBFs, a head-only simplification of the paper,
whose :math:`\\theta` is the whole network)::

    covariance="full" (Normal-Inverse-Wishart, the paper's model):
        Lambda = Sigma^-1 ~ Wishart(nu0, Psi0^-1)        <=>  Sigma ~ InvWishart(Psi0, nu0)
        mu | Lambda       ~ Normal(mu0, (kappa0 Lambda)^-1)
    covariance="diag" (Normal-Inverse-Gamma, for wide heads):
        lambda_k          ~ Gamma(nu0 / 2, rate = psi0 / 2)   <=>  sigma_k^2 ~ InvGamma
        mu_k | lambda_k   ~ Normal(mu0, (kappa0 lambda_k)^-1)
    theta_i | mu, Sigma   ~ Normal(mu, Sigma)                       (episode plate, subsampled)
    y_i^s | x_i^s, theta_i ~ Normal(Phi(x_i^s) theta_i, s^2 I)      (support, S shots)
    y_i^q | x_i^q, theta_i ~ Normal(Phi(x_i^q) theta_i, s^2 I)      (query, Q points)

with ``Psi0 = psi0 I`` and a known noise scale ``s``. Pyro has no InverseWishart, so the full
model puts a Wishart on the *precision* ``Lambda``; the sample site ``precision_chol`` holds
``Lambda``'s Cholesky factor as a real vector (lower triangle, log diagonal), with the
Wishart density times the Jacobian of that map (:class:`WishartLogCholesky`), so every
generic guide family (AutoNormal, AutoMultivariateNormal, IAF) applies unchanged.

**Default guide: the paper's one-time-iterate local step.** The global posterior is
conjugate-shaped, ``q(Lambda) = Wishart(n0, W)``, ``q(mu | Lambda) = Normal(m0, (l0
Lambda)^-1)`` (``q(lambda_k) = Gamma(a_k, b_k)`` for the diagonal), and each episode's
``q_i(theta_i) = Normal(m_i, V_i)`` is the closed-form maximiser of the ELBO given the global
variational *parameters*, never a stored per-episode state::

    Abar_i = Phi_iᵀ Phi_i / s^2,   Abar_i mbar_i = Phi_iᵀ y_i / s^2      (exact: linear head)
    V_i = (Abar_i + E_q[Lambda])^-1,  m_i = V_i (Abar_i mbar_i + E_q[Lambda] m0)

with ``E_q[Lambda] = n0 W``. For a Gaussian likelihood on a linear head the paper's
quadratic surrogate of ``-log p(D_i | theta)`` is exact, so no SGLD run is needed here; no
inner-loop graph is built (unlike MAML), so the cost per episode does not grow with inner
steps. ``local_step="amortized"`` swaps in a generic amortized encoder (an MLP from the
episode's sufficient statistics to a diagonal Normal). Under a generic global guide
(``guides.build("normal", model)`` etc.) the closed-form step conditions on the guide's draw
of ``(mu, Lambda)`` instead, i.e. ``q_i = p(theta_i | D_i, mu, Sigma)`` exactly.

Data (default): SineLine (Finn et al. 2018, PLATIPUS): each task is ``A sin(x + phase)``
(``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``) or ``a x + b`` (``a, b ~ U[-3, 3]``) with
probability 1/2; ``x ~ U[-5, 5]``; noise sd 0.3; 5 support shots and 50 query points per
episode, one episode per row. ``evaluate`` reports held-out query MSE and 90% predictive
coverage given the supports, for NIW-Meta, per-task Bayesian ridge (no sharing) and a pooled
head; :func:`maml` is a second-order MAML baseline on the same head.

The softmax head (the paper's quadratic surrogate from a detached SGLD run, curvature
clipped) and the digits few-shot episodes are :mod:`zoo.models.niw_meta.digits`
(``niw_meta_digits``), which reuses this model's global sites and guide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroParam
from torch.distributions import constraints

from guides import local
from guides.encoders import NormalEncoder
from inference.data import DataError, Field, full_batch
from zoo.base import ConfigError, ZooModel
from zoo.registry import register

COVARIANCES = ("full", "diag")
LOCAL_STEPS = ("closed_form", "amortized")
FIELDS = ("x_support", "y_support", "x_query", "y_query")


# ----- the Wishart on a log-Cholesky vector -----------------------------------------------


def _tril_index(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.tril_indices(dim, dim))  # type: ignore[return-value]


def vec_to_tril(vec: torch.Tensor, dim: int) -> torch.Tensor:
    """Real vector (lower triangle row by row, log diagonal) -> Cholesky factor."""
    rows, cols = _tril_index(dim)
    tril = vec.new_zeros(vec.shape[:-1] + (dim, dim))
    tril[..., rows, cols] = vec
    diag = torch.diagonal(tril, dim1=-2, dim2=-1)
    return tril - torch.diag_embed(diag) + torch.diag_embed(diag.exp())


def tril_to_vec(tril: torch.Tensor) -> torch.Tensor:
    dim = tril.shape[-1]
    rows, cols = _tril_index(dim)
    fixed = tril - torch.diag_embed(torch.diagonal(tril, dim1=-2, dim2=-1))
    fixed = fixed + torch.diag_embed(torch.diagonal(tril, dim1=-2, dim2=-1).log())
    return fixed[..., rows, cols]


class WishartLogCholesky(dist.TorchDistribution):
    """``Lambda ~ Wishart(df, scale_tril)`` represented by ``v``, the lower triangle of
    ``chol(Lambda)`` with its diagonal on the log scale (a real vector of ``D (D + 1) / 2``).
    ``log p(v) = log Wishart(L Lᵀ) + D log 2 + sum_k (D - k + 2) log L_kk`` (k = 1..D)."""

    arg_constraints = {"df": constraints.positive, "scale_tril": constraints.lower_cholesky}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, df, scale_tril, validate_args=None):
        self.df = torch.as_tensor(df, dtype=scale_tril.dtype, device=scale_tril.device)
        self.scale_tril = scale_tril
        self.dim = scale_tril.shape[-1]
        batch_shape = torch.broadcast_shapes(self.df.shape, scale_tril.shape[:-2])
        event_shape = torch.Size([self.dim * (self.dim + 1) // 2])
        super().__init__(batch_shape, event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return WishartLogCholesky(
            self.df.expand(batch_shape),
            self.scale_tril.expand(batch_shape + (self.dim, self.dim)),
        )

    def rsample(self, sample_shape=()):
        # Bartlett: Lambda = (S A)(S A)ᵀ with A lower triangular, A_kk^2 ~ Chi2(df - k),
        # A_jk ~ N(0, 1): S A is already chol(Lambda), so no factorisation is needed
        shape = torch.Size(sample_shape) + self.batch_shape
        d = self.dim
        offsets = torch.arange(d, dtype=self.df.dtype, device=self.df.device)
        chi2 = dist.Chi2(self.df.expand(shape).unsqueeze(-1) - offsets).rsample()
        noise = torch.randn(shape + (d, d), dtype=self.df.dtype, device=self.df.device)
        bartlett = torch.tril(noise, -1) + torch.diag_embed(chi2.sqrt())
        return tril_to_vec(self.scale_tril @ bartlett)

    def log_prob(self, value):
        d = self.dim
        tril = vec_to_tril(value, d)
        log_diag = torch.diagonal(tril, dim1=-2, dim2=-1).log()
        half = torch.linalg.solve_triangular(self.scale_tril, tril, upper=False)
        log_det_scale = 2 * torch.diagonal(self.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        df = self.df
        log_wishart = (
            (df - d - 1) * log_diag.sum(-1)  # (df - D - 1) / 2 log|Lambda|
            - 0.5 * (half**2).sum((-1, -2))  # tr(S^-1 Lambda) / 2
            - 0.5 * df * d * math.log(2.0)
            - 0.5 * df * log_det_scale
            - torch.mvlgamma(df / 2, d)
        )
        powers = torch.arange(d + 1, 1, -1, dtype=value.dtype, device=value.device)
        return log_wishart + d * math.log(2.0) + (powers * log_diag).sum(-1)

    @property
    def mean(self):  # of the precision matrix, for reference (not of ``v``)
        return self.df[..., None, None] * self.scale_tril @ self.scale_tril.mT


class PrecisionTrilNormal(dist.TorchDistribution):
    """``Normal(loc, (L Lᵀ)^-1)`` given the Cholesky factor ``L`` of the *precision*: no
    inversion or re-factorisation (float32-safe where ``MultivariateNormal(precision_matrix=)``
    would re-factorise an ill-conditioned matrix)."""

    arg_constraints = {"loc": constraints.real_vector, "precision_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, precision_tril, validate_args=None):
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], precision_tril.shape[:-2])
        d = loc.shape[-1]
        self.loc = loc.expand(batch_shape + (d,))
        self.precision_tril = precision_tril.expand(batch_shape + (d, d))
        super().__init__(batch_shape, torch.Size([d]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        return PrecisionTrilNormal(
            self.loc.expand(batch_shape + (d,)), self.precision_tril.expand(batch_shape + (d, d))
        )

    def rsample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        z = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        tril = self.precision_tril.expand(shape + self.event_shape)
        x = torch.linalg.solve_triangular(tril.mT, z.unsqueeze(-1), upper=True).squeeze(-1)
        return self.loc + x

    def log_prob(self, value):
        d = self.event_shape[0]
        white = (self.precision_tril.mT @ (value - self.loc).unsqueeze(-1)).squeeze(-1)
        log_det = torch.diagonal(self.precision_tril, dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * (white**2).sum(-1) + log_det - 0.5 * d * math.log(2 * math.pi)


# ----- data --------------------------------------------------------------------------------


def sineline(num_tasks: int, shots: int = 5, queries: int = 50, noise: float = 0.3, seed: int = 0):
    """SineLine episodes: returns ``(data, kinds)`` with kinds 0 = sine, 1 = line."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5.0, 5.0, size=(num_tasks, shots + queries))
    is_line = rng.random(num_tasks) < 0.5
    amp = rng.uniform(0.1, 5.0, num_tasks)[:, None]
    phase = rng.uniform(0.0, math.pi, num_tasks)[:, None]
    slope = rng.uniform(-3.0, 3.0, num_tasks)[:, None]
    intercept = rng.uniform(-3.0, 3.0, num_tasks)[:, None]
    f = np.where(is_line[:, None], slope * x + intercept, amp * np.sin(x + phase))
    y = f + noise * rng.standard_normal(f.shape)
    data = {
        "x_support": x[:, :shots],
        "y_support": y[:, :shots],
        "x_query": x[:, shots:],
        "y_query": y[:, shots:],
    }
    return data, is_line.astype(np.int64)


# ----- the model ---------------------------------------------------------------------------


@register
class NIWMeta(ZooModel):
    """NIW-Meta (Kim & Hospedales, ICLR 2024): Normal-Inverse-Wishart (or diagonal
    Normal-Inverse-Gamma) prior over per-episode linear heads on shared features, with the
    paper's closed-form one-time-iterate local step as the default guide. See the module doc.
    """

    name = "niw_meta"
    paper = 7
    local_sites = ("theta",)
    holdout = 0.2
    supports_nuts = False
    static_structure = False  # Wishart sampling retries on a singular draw

    @dataclass
    class Config:
        covariance: str = "full"  # "full" (NIW, Wishart precision) or "diag" (NIG)
        local_step: str = "closed_form"  # or "amortized" (generic encoder)
        num_rbf: int = 10  # D = num_rbf + 2 (bias and slope)
        rbf_width: float = 1.0
        shots: int = 5
        queries: int = 50
        noise: float = 0.3  # known observation noise sd
        mu0: float = 0.0
        kappa0: float = 1.0
        nu0: float = 16.0  # > D - 1 (full) or > 0 (diag)
        psi0: float = 10.0  # Psi0 = psi0 I; E[Sigma] = Psi0 / (nu0 - D - 1)
        num_tasks: int = 1000  # default data: SineLine episodes
        batch_size: int = 64
        lr: float = 0.02
        epochs: float = 150.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.register_buffer("centres", torch.linspace(-5.0, 5.0, c.num_rbf))
        self.encoder = NormalEncoder(2 * self.dim, self.dim, (64,))

    @property
    def dim(self) -> int:
        return self.config.num_rbf + 2

    @property
    def global_site(self) -> str:
        return "precision_chol" if self.config.covariance == "full" else "precision"

    @property
    def fixed_local_guide(self) -> str:
        step = self.config.local_step
        if step == "amortized":
            return ""
        return (
            f"local_step='{step}' gives theta's guide in closed form from the globals; "
            "local families apply to local_step='amortized'"
        )

    def check_config(self) -> None:
        c = self.config
        dim = c.num_rbf + 2
        if c.covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {COVARIANCES}, got '{c.covariance}'")
        if c.local_step not in LOCAL_STEPS:
            raise ConfigError(f"local_step must be one of {LOCAL_STEPS}, got '{c.local_step}'")
        if c.num_rbf < 0:
            raise ConfigError(f"num_rbf must be >= 0, got {c.num_rbf}")
        if c.covariance == "full" and not c.nu0 > dim - 1:
            raise ConfigError(
                f"nu0 must be > dim - 1 = {dim - 1} for the full NIW (dim = num_rbf + 2 = "
                f"{dim}); valid range ({dim - 1}, inf), got {c.nu0}"
            )
        if c.covariance == "diag" and not c.nu0 > 0:
            raise ConfigError(
                f"nu0 must be > 0 for the diagonal NIG; valid range (0, inf), got {c.nu0}"
            )
        for key in ("kappa0", "psi0", "noise", "rbf_width"):
            value = getattr(c, key)
            if not value > 0:
                raise ConfigError(f"{key} must be > 0; valid range (0, inf), got {value}")
        for key in ("shots", "queries", "num_tasks"):
            if getattr(c, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(c, key)}")

    # ----- features and data -------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``Phi(x)``: ``(..., n) -> (..., n, D)``: bias, x, and K Gaussian bumps."""
        bumps = torch.exp(-0.5 * ((x[..., None] - self.centres) / self.config.rbf_width) ** 2)
        return torch.cat([torch.ones_like(x)[..., None], x[..., None], bumps], -1)

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "x_support": Field(shape=(c.shots,), doc="support inputs, one episode per row"),
            "y_support": Field(shape=(c.shots,), doc="support targets"),
            "x_query": Field(shape=(c.queries,), doc="query inputs"),
            "y_query": Field(shape=(c.queries,), doc="query targets"),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y_support", "y_query")

    def validate(self, data):
        """Episode-aware checks first (naming the episode and field), then the generic ones."""
        if isinstance(data, dict) and all(k in data for k in FIELDS):
            arrays = {}
            for key in FIELDS:
                value = data[key]
                arr = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
                if arr.dtype.kind in "biuf":
                    arrays[key] = arr
            c = self.config
            for part, want in (("support", c.shots), ("query", c.queries)):
                xk, yk = f"x_{part}", f"y_{part}"
                if xk not in arrays or yk not in arrays:
                    continue
                xa, ya = arrays[xk], arrays[yk]
                if xa.ndim != 2 or ya.ndim != 2:
                    raise DataError(
                        f"fields '{xk}' and '{yk}' must be (episodes, points) arrays, got "
                        f"shapes {xa.shape} and {ya.shape}"
                    )
                if xa.shape != ya.shape:
                    raise DataError(
                        f"field '{yk}' has shape {ya.shape} but '{xk}' has {xa.shape}: "
                        f"every episode needs one target per {part} input"
                    )
                if xa.shape[1] < want:
                    raise DataError(
                        f"field '{xk}' has {xa.shape[1]} {part} points per episode; the config "
                        f"asks for {want} ({'shots' if part == 'support' else 'queries'}={want})"
                    )
                for key, arr in ((xk, xa), (yk, ya)):
                    if arr.dtype.kind == "f":
                        bad = np.where(~np.isfinite(arr).all(axis=1))[0]
                        if len(bad):
                            raise DataError(
                                f"field '{key}' has NaN or infinite values in episode(s) "
                                f"{bad[:10].tolist()}"
                            )
        return super().validate(data)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        c = self.config
        data, _ = sineline(c.num_tasks, c.shots, c.queries, c.noise, seed)
        return self.validate(data)

    def simulate(self, seed: int, num_tasks: int, mu=None, sigma=None):
        """Episodes drawn from the model: ``theta_i ~ N(mu, sigma)``, ``x ~ U[-5, 5]``, and
        ``y = Phi(x) theta_i + noise``; ``(mu, sigma)`` default to a draw from the prior.
        Returns ``(truth, data)``."""
        c, d = self.config, self.dim
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            if mu is None or sigma is None:
                value = self.prior(self.global_site).sample()
                precision = self.precision_matrix(value)
                sigma = torch.linalg.inv(precision)
                mu = dist.MultivariateNormal(
                    torch.full((d,), float(c.mu0)), precision_matrix=c.kappa0 * precision
                ).sample()
            mu, sigma = torch.as_tensor(mu, dtype=torch.float32), torch.as_tensor(sigma)
            theta = dist.MultivariateNormal(mu, sigma.float()).sample((num_tasks,))
            x = torch.rand(num_tasks, c.shots + c.queries) * 10.0 - 5.0
            y = (self.features(x) @ theta.unsqueeze(-1)).squeeze(-1)
            y = y + c.noise * torch.randn_like(y)
        data = {
            "x_support": x[:, : c.shots],
            "y_support": y[:, : c.shots],
            "x_query": x[:, c.shots :],
            "y_query": y[:, c.shots :],
        }
        return {"mu": mu, "sigma": sigma, "theta": theta}, self.validate(data)

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
        """``y ~ Normal(Phi(x) theta_i, s^2)`` for support and query (inside the plate)."""
        for part in ("support", "query"):
            phi = self.features(batch[f"x_{part}"])
            mean = (phi @ theta.unsqueeze(-1)).squeeze(-1)
            pyro.sample(
                f"y_{part}",
                dist.Normal(mean, self.config.noise).to_event(1),
                obs=batch[f"y_{part}"],
            )

    def stats(self, batch, parts=("support", "query")) -> tuple[torch.Tensor, torch.Tensor]:
        """Per episode ``Abar = Phiᵀ Phi / s^2`` (B, D, D) and ``b = Phiᵀ y / s^2`` (B, D)."""
        s2 = self.config.noise**2
        a = b = 0.0
        for part in parts:
            phi = self.features(batch[f"x_{part}"])
            a = a + phi.transpose(-1, -2) @ phi / s2
            b = b + (phi.transpose(-1, -2) @ batch[f"y_{part}"].unsqueeze(-1)).squeeze(-1) / s2
        return a, b

    @staticmethod
    def closed_form(a, b, prior_precision, prior_mean):
        """``V = (A + P)^-1``, ``m = V (b + P m0)``: returns ``(m, chol(A + P))``."""
        post = a + prior_precision
        chol = torch.linalg.cholesky(post)
        rhs = b + (prior_precision @ prior_mean.unsqueeze(-1)).squeeze(-1)
        mean = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        return mean, chol

    def local_guide(self, batch, global_values=None, *, prior_precision=None, prior_mean=None):
        """The local step. Closed form from ``(prior_precision, prior_mean)`` (the default
        guide passes ``E_q[Lambda]`` and ``m0``), else from the global draws in
        ``global_values``; or the amortized encoder (``local_step="amortized"``)."""
        a, b = self.stats(batch)
        with self.data_plate(batch):
            if self.config.local_step == "amortized":
                diag = torch.diagonal(a, dim1=-2, dim2=-1)
                scale = diag.mean(-1, keepdim=True).clamp_min(1e-6)
                features = torch.cat([b / scale.sqrt(), (diag / scale).log1p()], -1)
                loc, sd, context = local.encode(self, features)
                local.sample("theta", loc, sd, context=context)
                return
            if prior_precision is None:
                prior_precision = self.precision_matrix(global_values[self.global_site])
                prior_mean = global_values["mu"]
            mean, chol = self.closed_form(a, b, prior_precision, prior_mean)
            pyro.sample("theta", PrecisionTrilNormal(mean, chol))

    def default_guide(self):
        return NIWGuide(self)

    # ----- prediction and evaluation -----------------------------------------------------

    def global_draws(self, guide, data, num_draws: int = 50, seed: int = 0):
        """``num_draws`` draws of ``(mu, Lambda)`` from any guide of this model."""
        small = {k: v[:1] for k, v in data.items()}
        batch = full_batch(small)
        mus, precisions = [], []
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            for _ in range(num_draws):
                trace = poutine.trace(guide).get_trace(batch)
                mus.append(trace.nodes["mu"]["value"].reshape(self.dim))
                value = trace.nodes[self.global_site]["value"]
                precisions.append(self.precision_matrix(value.reshape(value.shape[-1])))
        return torch.stack(mus), torch.stack(precisions)

    def predict(self, guide, data, num_draws: int = 50, seed: int = 0):
        """Query predictive given each episode's support only: per global draw ``s`` the
        exact conditional ``theta | support, mu_s, Sigma_s``; returns mixture component
        means and variances, each ``(S, N, Q)``."""
        mus, precisions = self.global_draws(guide, data, num_draws, seed)
        batch = full_batch(data)
        with torch.no_grad():
            a, b = self.stats(batch, parts=("support",))
            phi_q = self.features(batch["x_query"])  # (N, Q, D)
            means, variances = [], []
            for mu, prec in zip(mus, precisions, strict=True):
                m, chol = self.closed_form(a, b, prec, mu)
                means.append((phi_q @ m.unsqueeze(-1)).squeeze(-1))
                half = torch.linalg.solve_triangular(chol, phi_q.mT, upper=False)  # L^-1 Phiᵀ
                variances.append((half**2).sum(-2) + self.config.noise**2)
        return torch.stack(means), torch.stack(variances)

    def evaluate(self, guide, data) -> dict:
        """Query MSE and 90% predictive-interval coverage given 5-shot supports, for NIW-Meta
        and two baselines on the same features: per-task Bayesian ridge (no sharing, prior
        precision chosen per task by evidence) and a pooled model (one head for all tasks)."""
        means, variances = self.predict(guide, data)
        y = data["y_query"]
        out = _scores("niw", means, variances, y)
        out.update(_scores("ridge", *self.ridge_baseline(data), y))
        out.update(_scores("pooled", *self.pooled_baseline(data), y))
        return out

    def ridge_baseline(self, data):
        """Per-task Bayesian ridge: ``theta_i ~ N(0, alpha_i^-1 I)``, ``alpha_i`` maximising
        that task's own evidence over a grid (known noise); no sharing across tasks."""
        batch = full_batch(data)
        s2 = self.config.noise**2
        with torch.no_grad():
            a, b = self.stats(batch, parts=("support",))
            phi_s = self.features(batch["x_support"])
            phi_q = self.features(batch["x_query"])
            eye = torch.eye(self.dim)
            best, best_ev = None, None
            for alpha in torch.logspace(-4, 2, 25):
                cov = phi_s @ phi_s.mT / alpha + s2 * torch.eye(phi_s.shape[-2])
                ev = dist.MultivariateNormal(torch.zeros_like(batch["y_support"]), cov).log_prob(
                    batch["y_support"]
                )
                m, chol = self.closed_form(a, b, alpha * eye, torch.zeros(self.dim))
                mean = (phi_q @ m.unsqueeze(-1)).squeeze(-1)
                half = torch.linalg.solve_triangular(chol, phi_q.mT, upper=False)
                var = (half**2).sum(-2) + s2
                if best is None:
                    best, best_ev = (mean, var), ev
                else:
                    take = (ev > best_ev)[:, None]
                    best = (torch.where(take, mean, best[0]), torch.where(take, var, best[1]))
                    best_ev = torch.maximum(ev, best_ev)
        return best[0][None], best[1][None]

    def pooled_baseline(self, data):
        """One head for every task, fitted to all supports; residual variance as noise."""
        with torch.no_grad():
            phi_s = self.features(data["x_support"]).reshape(-1, self.dim)
            y_s = data["y_support"].reshape(-1)
            gram = phi_s.T @ phi_s + 1e-3 * torch.eye(self.dim)
            w = torch.linalg.solve(gram, phi_s.T @ y_s)
            resid = float(((phi_s @ w - y_s) ** 2).mean())
            mean = self.features(data["x_query"]) @ w
        return mean[None], torch.full_like(mean, resid)[None]

    def dims(self) -> dict[str, list[str]]:
        return {
            "mu": ["feature"],
            "theta": ["episode", "feature"],
            "y_support": ["episode", "shot"],
            "y_query": ["episode", "query_point"],
            "x_support": ["episode", "shot"],
            "x_query": ["episode", "query_point"],
        }

    def coords(self, data) -> dict:
        names = ["bias", "slope"] + [f"rbf{k}" for k in range(self.config.num_rbf)]
        return {"feature": names}


def maml(
    model: NIWMeta,
    train,
    test,
    *,
    inner_steps: int = 5,
    inner_lr: float = 0.02,
    outer_steps: int = 1000,
    outer_lr: float = 0.02,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Second-order MAML (Finn et al. 2017) on the same network (the linear head on the
    model's features): a learned initial head adapted by ``inner_steps`` gradient steps on
    each episode's support MSE, the outer loss the query MSE after adaptation,
    differentiated through the inner loop (``create_graph=True``). Returns the held-out
    query MSE given 5-shot supports (MAML gives no predictive intervals)."""
    generator = torch.Generator().manual_seed(seed)
    phi_s, phi_q = model.features(train["x_support"]), model.features(train["x_query"])
    init = torch.zeros(model.dim, requires_grad=True)
    log_lr = torch.tensor(math.log(inner_lr), requires_grad=True)  # meta-learned (Meta-SGD-lite)
    opt = torch.optim.Adam([init, log_lr], lr=outer_lr)
    n = phi_s.shape[0]
    for _ in range(outer_steps):
        idx = torch.randperm(n, generator=generator)[:batch_size]
        loss = maml_query_loss(init, log_lr.exp(), phi_s[idx], train["y_support"][idx],
                               phi_q[idx], train["y_query"][idx], inner_steps)  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.enable_grad():
        loss = maml_query_loss(init.detach(), log_lr.exp().detach(),
                               model.features(test["x_support"]), test["y_support"],
                               model.features(test["x_query"]), test["y_query"],
                               inner_steps, create_graph=False)  # fmt: skip
    return {"maml_query_mse": float(loss), "maml_inner_lr": float(log_lr.detach().exp())}


def maml_query_loss(init, lr, phi_s, y_s, phi_q, y_q, inner_steps, create_graph=True):
    """Mean query MSE after ``inner_steps`` support-MSE gradient steps from ``init``."""
    theta = init.expand(phi_s.shape[0], -1)
    if not create_graph:
        theta = theta.detach().requires_grad_()
    for _ in range(inner_steps):
        support = ((phi_s @ theta.unsqueeze(-1)).squeeze(-1) - y_s).pow(2).mean(-1).sum()
        (grad,) = torch.autograd.grad(support, theta, create_graph=create_graph)
        theta = theta - lr * grad
    query = ((phi_q @ theta.unsqueeze(-1)).squeeze(-1) - y_q).pow(2).mean()
    return query if create_graph else query.detach()


def _scores(label, means, variances, y) -> dict:
    """MSE of the mixture mean and the coverage of its central 90% interval (PIT in
    [0.05, 0.95]) over all query points."""
    mixture_mean = means.mean(0)
    pit = dist.Normal(means, variances.sqrt()).cdf(y.expand_as(means)).mean(0)
    return {
        f"{label}_query_mse": float(((mixture_mean - y) ** 2).mean()),
        f"{label}_coverage90": float(((pit > 0.05) & (pit < 0.95)).float().mean()),
    }


class NIWGuide(local.LocalDriver):
    """The paper's guide: a conjugate-shaped global ``q(phi)`` (Wishart(n0, W) times
    Normal(m0, (l0 Lambda)^-1); Gamma(a, b) times Normal for the diagonal) and the closed-form
    one-time-iterate local step built from its parameters (``E_q[Lambda]``, ``m0``)."""

    def __init__(self, model: NIWMeta):
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
