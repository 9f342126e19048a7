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
(``niw_meta_digits``); the global sites, the episode plate and the guide both models use are
:mod:`zoo.models.niw_meta.common`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from guides import local
from guides.encoders import NormalEncoder
from inference.data import DataError, Field, full_batch
from zoo.base import (
    ConfigError,
    TrainConfig,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.models.niw_meta.common import COVARIANCES, NIWBase
from zoo.models.niw_meta.distributions import PrecisionTrilNormal, tril_to_vec
from zoo.registry import register

LOCAL_STEPS = ("closed_form", "amortized")
FIELDS = ("x_support", "y_support", "x_query", "y_query")


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
class NIWMeta(NIWBase):
    """NIW-Meta (Kim & Hospedales, ICLR 2024): Normal-Inverse-Wishart (or diagonal
    Normal-Inverse-Gamma) prior over per-episode linear heads on shared features, with the
    paper's closed-form one-time-iterate local step as the default guide. See the module doc.
    """

    name = "niw_meta"
    summary = (
        "NIW-Meta few-shot regression: NIW prior over per-episode heads, closed-form local step"
    )
    paper = 7

    tiny = {"num_tasks": 40, "steps": 10}

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.2
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

    def check_config(self) -> None:
        c = self.config
        dim = c.num_rbf + 2
        if c.covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {COVARIANCES}, got '{c.covariance}'")
        if c.local_step not in LOCAL_STEPS:
            raise ConfigError(f"local_step must be one of {LOCAL_STEPS}, got '{c.local_step}'")
        require_non_negative_ints(c, "num_rbf")
        self.check_nu0(dim, "num_rbf + 2")
        require_positive_numbers(c, "kappa0", "psi0", "noise", "rbf_width")
        require_positive_ints(c, "shots", "queries", "num_tasks")

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

    def simulate(self, seed: int = 0, *, mu=None, sigma=None) -> tuple[dict, dict]:
        """``num_tasks`` episodes drawn from the model: ``(mu, Sigma)`` from the prior (or the
        given ``mu`` and ``sigma``, a covariance matrix: diagonal for ``covariance="diag"``),
        ``theta_i ~ N(mu, Sigma)``, ``x ~ U[-5, 5]`` and ``y = Phi(x) theta_i + noise``.
        Returns ``(truth, data)``; ``truth`` holds the global site (``precision_chol`` or
        ``precision``), ``mu`` and ``theta``."""
        c, d = self.config, self.dim
        if (mu is None) != (sigma is None):
            raise ValueError("give both mu and sigma, or neither (both drawn from the prior)")
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            if mu is None:
                value = self.prior(self.global_site).sample()
                precision = self.precision_matrix(value)
                sigma = torch.linalg.inv(precision)
                sigma = 0.5 * (sigma + sigma.mT)  # symmetric to the bit, as an MVN checks
                mu = dist.MultivariateNormal(
                    torch.full((d,), float(c.mu0)), precision_matrix=c.kappa0 * precision
                ).sample()
            else:
                value = self._global_value(torch.as_tensor(sigma, dtype=torch.float32))
            mu, sigma = torch.as_tensor(mu, dtype=torch.float32), torch.as_tensor(sigma)
            theta = dist.MultivariateNormal(mu, sigma.float()).sample((c.num_tasks,))
            x = torch.rand(c.num_tasks, c.shots + c.queries) * 10.0 - 5.0
            y = (self.features(x) @ theta.unsqueeze(-1)).squeeze(-1)
            y = y + c.noise * torch.randn_like(y)
        data = {
            "x_support": x[:, : c.shots],
            "y_support": y[:, : c.shots],
            "x_query": x[:, c.shots :],
            "y_query": y[:, c.shots :],
        }
        truth = {self.global_site: value, "mu": mu, "theta": theta}
        return truth, self.validate(data)

    def _global_value(self, sigma: torch.Tensor) -> torch.Tensor:
        """The global site's value for a given covariance ``sigma`` of the heads."""
        if self.config.covariance == "full":
            return tril_to_vec(torch.linalg.cholesky(torch.linalg.inv(sigma)))
        if not torch.equal(sigma, torch.diag_embed(torch.diagonal(sigma))):
            raise ValueError('covariance="diag" needs a diagonal sigma')
        return torch.diagonal(sigma).reciprocal()

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
