"""Rep4Ex: identifiable representations for intervention extrapolation (paper 20).

Saengkyongam, Rosenfeld, Ravikumar, Pfister, Peters, "Identifying Representations for
Intervention Extrapolation", ICLR 2024.

The paper's setting: exogenous actions ``A`` with bounded support shift a latent ``Z``
linearly, ``Z = M0 A + V``; features ``X = g0(Z)`` (``g0`` injective); outcome
``Y = l(Z) + U`` with ``(U, V)`` dependent (hidden confounding) and ``A`` independent of
``(U, V)``. The target is ``E[Y | do(A = a*)] = E_V l(M0 a* + V) + E U`` for ``a*`` *outside*
the training support of ``A``. The paper shows an encoder that reconstructs ``X`` and whose
output satisfies the linear invariance constraint ``E[phi(X) | A]`` affine in ``A``
identifies ``Z`` up to an affine map, and then extrapolates with a control function.

This module is the probabilistic *analogue* (an adaptation; the paper trains a
deterministic autoencoder with an MMR penalty): a conditional VAE whose latent has an
A-linear prior mean, as in an iVAE. The prior is the invariance constraint, and the
guide ``q(z | x)`` never sees ``A`` (seeing it would let the encoder bypass the constraint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import DataError, Field, full_batch, validate_data
from inference.metrics import affine_r2
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.registry import register

__all__ = [
    "Rep4Ex",
    "World",
    "make_world",
    "extrapolation_grid",
    "fit_control_function",
    "fit_direct_regression",
    "PRIOR_MEANS",
]

#: ``linear``: the A-linear prior mean (Rep4Ex); ``zero``: a plain VAE prior (baseline)
PRIOR_MEANS = ("linear", "zero")


# ----- the synthetic world of the paper's small check ------------------------------------------


@dataclass
class World:
    """The structural parameters of a synthetic Rep4Ex data set (the ground truth).

    ``Z = M0 A + V``, ``V ~ N(0, Sigma)``, ``X = g0(Z) + noise`` with
    ``g0(z) = W2 tanh(W1 z + c1) + c2``, ``Y = sin z_1 + mean_{j>1} z_j^2 / 2 + U`` with
    ``U = 0.8 V_1 + N(0, 0.2^2)``, ``A ~ U[-1, 1]^k``.
    """

    m0: torch.Tensor  # (d, k)
    sigma: torch.Tensor  # (d, d)
    w1: torch.Tensor
    c1: torch.Tensor
    w2: torch.Tensor
    c2: torch.Tensor
    x_noise: float = 0.02
    u_coef: float = 0.8
    u_noise: float = 0.2

    def g0(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.w1.T + self.c1) @ self.w2.T + self.c2

    def outcome(self, z: torch.Tensor) -> torch.Tensor:
        """``l(z) = sin z_1 + (1/2) mean_{j>1} z_j^2`` (``sin z_1 + z_2^2/2`` for d = 2)."""
        out = torch.sin(z[..., 0])
        if z.shape[-1] > 1:
            out = out + 0.5 * z[..., 1:].pow(2).mean(-1)
        return out

    def sample(self, n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(data, z)``: ``n`` rows ``{"a", "x", "y"}`` of this world and their true
        latents (``A ~ U[-1, 1]^k``, seeded)."""
        g = torch.Generator().manual_seed(seed)
        d, k = self.m0.shape
        a = 2 * torch.rand(n, k, generator=g) - 1
        v = torch.randn(n, d, generator=g) @ torch.linalg.cholesky(self.sigma).T
        z = a @ self.m0.T + v
        x = self.g0(z) + self.x_noise * torch.randn(n, self.w2.shape[0], generator=g)
        u = self.u_coef * v[:, 0] + self.u_noise * torch.randn(n, generator=g)
        y = self.outcome(z) + u
        return {"a": a, "x": x, "y": y}, z

    def true_effect(self, a_star: torch.Tensor) -> torch.Tensor:
        """Exact ``E[Y | do(A = a*)]`` (Gaussian V; E U = 0), shape ``(m,)``."""
        m = a_star.double() @ self.m0.double().T
        var = torch.diagonal(self.sigma.double())
        out = torch.sin(m[:, 0]) * torch.exp(-var[0] / 2)
        if m.shape[-1] > 1:
            out = out + 0.5 * (m[:, 1:].pow(2) + var[1:]).mean(-1)
        return out.float()


def make_world(action_dim: int, latent_dim: int, obs_dim: int, seed: int = 0) -> World:
    """A seeded world: a well-conditioned ``M0``, a correlated ``Sigma`` and a random
    2-layer tanh MLP ``g0`` (hidden width ``obs_dim``)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    d, k, p = latent_dim, action_dim, obs_dim
    m0 = torch.eye(d, k) + 0.3 * torch.randn(d, k, generator=g)
    corr = 0.4 * torch.ones(d, d) + 0.6 * torch.eye(d)
    sigma = corr  # unit variances, correlation 0.4
    w1 = 0.5 * torch.randn(p, d, generator=g)
    c1 = 0.3 * torch.randn(p, generator=g)
    w2 = torch.randn(p, p, generator=g) / math.sqrt(p) + torch.eye(p)
    c2 = 0.1 * torch.randn(p, generator=g)
    return World(m0=m0, sigma=sigma, w1=w1, c1=c1, w2=w2, c2=c2)


def extrapolation_grid(action_dim: int, half_width: float = 3.0, points: int = 13) -> torch.Tensor:
    """A regular grid of actions on ``[-half_width, half_width]^k`` (``points^k`` rows)."""
    t = torch.linspace(-half_width, half_width, points)
    mesh = torch.meshgrid(*([t] * action_dim), indexing="ij")
    return torch.stack(mesh, -1).reshape(-1, action_dim)


# ----- Stage 2 of the paper: control-function regression ---------------------------------------


class _Additive(nn.Module):
    """``nu(z) + psi(v)``: the additive outcome model that the control function needs."""

    def __init__(self, dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.nu = mlp([dim, *hidden, 1], nn.Tanh)
        self.psi = mlp([dim, *hidden, 1], nn.Tanh)

    def forward(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.nu(z).squeeze(-1) + self.psi(v).squeeze(-1)


def _ols(z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ``z ~ W a + b``: returns ``(W (d, k), b (d,))``."""
    design = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], -1)
    coef = torch.linalg.lstsq(design.double(), z.double()).solution.float()  # (k+1, d)
    return coef[:-1].T, coef[-1]


def _train_regression(net: nn.Module, inputs: tuple, y: torch.Tensor, steps: int, lr: float):
    """Full-batch Adam on the squared error, cosine learning-rate decay."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(*inputs).squeeze(-1) - y).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
    return net


def fit_control_function(
    z: torch.Tensor,
    a: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: tuple[int, ...] = (32, 32),
    steps: int = 800,
    lr: float = 1e-2,
    seed: int = 0,
):
    """The paper's Stage 2 on a representation ``z`` (learned, or the true Z for the oracle):
    ``M, b`` by least squares of ``z`` on ``a``, ``v = z - M a - b``, then
    ``y ~ nu(z) + psi(v)`` by full-batch Adam. Returns ``predict(a_star) -> (m,)`` with
    ``predict(a*) = mean_i nu(M a* + b + v_i) + mean_i psi(v_i)``.
    """
    torch.manual_seed(seed)
    z, a, y = z.detach().float(), a.detach().float(), y.detach().float()
    w, b = _ols(z, a)
    v = z - a @ w.T - b
    net = _train_regression(_Additive(z.shape[-1], hidden), (z, v), y, steps, lr)

    def predict(a_star: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _average_effect(net.nu, net.psi, w, b, v, a_star)

    return predict


def fit_direct_regression(
    a: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: tuple[int, ...] = (32, 32),
    steps: int = 800,
    lr: float = 1e-2,
    seed: int = 0,
):
    """The naive baseline: an MLP regression of Y on A (same network and budget as Stage 2).
    Under the exogeneity of A it is unbiased in the support, but it has no reason to
    extrapolate outside it. Returns ``predict(a_star) -> (m,)``."""
    torch.manual_seed(seed)
    net = _train_regression(mlp([a.shape[-1], *hidden, 1], nn.Tanh), (a.float(),), y, steps, lr)

    def predict(a_star: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(a_star).squeeze(-1)

    return predict


def _average_effect(nu, psi, w, b, v, a_star, chunk: int = 16) -> torch.Tensor:
    """``mean_i nu(W a* + b + v_i) + mean_i psi(v_i)`` for each row of ``a_star``."""
    out = []
    shift = psi(v).squeeze(-1).mean()
    for start in range(0, len(a_star), chunk):
        loc = a_star[start : start + chunk] @ w.T + b  # (c, d)
        zs = loc[:, None, :] + v[None, :, :]  # (c, n, d)
        out.append(nu(zs).squeeze(-1).mean(-1) + shift)
    return torch.cat(out)


# ----- the zoo model ---------------------------------------------------------------------------


@register
class Rep4Ex(ZooModel):
    """Rep4Ex as a conditional VAE with an A-linear latent prior (an adaptation of
    Saengkyongam et al., "Identifying Representations for Intervention Extrapolation",
    ICLR 2024).

    Generative story, per row n (``a_n`` in R^k observed, exogenous)::

        W ~ Normal(0, 2)^{d x k},  b ~ Normal(0, 2)^d                  (globals)
        s ~ HalfNormal(2)^d,  sigma_x ~ HalfNormal(1),  sigma_y ~ HalfNormal(1)
        z_n ~ Normal(W a_n + b, diag s^2)           (the linear invariance constraint)
        x_n ~ Normal(eta(z_n), sigma_x^2 I_p)       (decoder: an MLP)
        y_n ~ Normal(nu(z_n) + psi(z_n - W a_n - b), sigma_y^2)   (control function)

    with the guide ``q(z_n | x_n) = Normal(phi(x_n), tau(x_n)^2)``: it never sees ``a_n``.
    ``prior_mean="zero"`` replaces the prior mean by 0 (a plain VAE, the baseline without
    the constraint). ``mmr_weight > 0`` adds the paper's exact penalty as
    ``pyro.factor("mmr", -lambda N MMR)`` with ``MMR = (1/B^2) sum_ij R_i^T R_j k(a_i, a_j)``,
    ``R`` the residual of the batch's least-squares fit of z on a, ``k`` a Gaussian kernel.

    The intervention effect is ``E[y | do(a*)] = mean_n nu(W a* + b + v_n) + mean_n psi(v_n)``
    with ``v_n = phi(x_n) - W a_n - b`` (:meth:`intervention_effect`). Differences from the
    paper: V is Gaussian here (the paper only needs full support), and the encoder is
    stochastic. ``nu``, ``psi``, ``eta``, ``phi`` are point estimates.
    """

    name = "rep4ex"
    summary = "Conditional VAE with an action-linear latent prior for intervention extrapolation"
    paper = 20
    local_sites = ("z",)
    static_structure = True

    tiny = {"num_rows": 300, "hidden": (16,), "outcome_hidden": (8,), "steps": 20}

    @dataclass
    class Config(TrainConfig):
        # holdout stays 0: V-hat is computed on the training rows, as in the paper's Stage 2
        action_dim: int = 2
        latent_dim: int = 2
        obs_dim: int = 10
        hidden: tuple[int, ...] = (64, 64)
        outcome_hidden: tuple[int, ...] = (32, 32)
        prior_mean: str = "linear"
        mmr_weight: float = 0.0
        mmr_bandwidth: float = 0.5
        num_rows: int = 5000
        world_seed: int = 0
        batch_size: int = 256
        lr: float = 3e-3
        epochs: float = 60.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.decoder = mlp([c.latent_dim, *c.hidden, c.obs_dim])
        self.encoder = NormalEncoder(c.obs_dim, c.latent_dim, c.hidden)
        self.nu = mlp([c.latent_dim, *c.outcome_hidden, 1], nn.Tanh)
        self.psi = mlp([c.latent_dim, *c.outcome_hidden, 1], nn.Tanh)

    def check_config(self) -> None:
        c = self.config
        if c.prior_mean not in PRIOR_MEANS:
            raise ConfigError(f"prior_mean must be one of {PRIOR_MEANS}, got '{c.prior_mean}'")
        require_positive_ints(c, "action_dim", "latent_dim", "obs_dim", "num_rows", "batch_size")
        if c.obs_dim < c.latent_dim:
            raise ConfigError(
                f"obs_dim ({c.obs_dim}) must be >= latent_dim ({c.latent_dim}): g0 is injective"
            )
        require_positive_sizes(c, "hidden", "outcome_hidden", allow_empty=True)
        require_non_negative_numbers(c, "mmr_weight")
        require_positive_numbers(c, "mmr_bandwidth", "epochs")

    # ----- data ---------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "a": Field(shape=(c.action_dim,), doc="exogenous actions A (training support)"),
            "x": Field(shape=(c.obs_dim,), doc="observed features X = g0(Z)"),
            "y": Field(shape=(), doc="outcome Y"),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x", "y")  # the actions are exogenous covariates, not modelled

    def validate(self, data) -> dict[str, torch.Tensor]:
        """The generic checks, plus: the actions must vary in every direction (else the
        linear effect of A on Z, and the extrapolation, are not identified)."""
        out = validate_data(data, self.data_spec())
        a = out["a"].double()
        if len(a) <= self.config.action_dim:
            raise DataError(
                f"field 'a' has {len(a)} rows; need more than action_dim="
                f"{self.config.action_dim} to fit the linear effect of A"
            )
        rank = int(torch.linalg.matrix_rank(a - a.mean(0)))
        if rank < self.config.action_dim:
            raise DataError(
                f"field 'a' varies in only {rank} of its {self.config.action_dim} directions; "
                "the actions must span R^k for the linear invariance constraint"
            )
        return out

    def world(self) -> World:
        c = self.config
        return make_world(c.action_dim, c.latent_dim, c.obs_dim, seed=c.world_seed)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """``num_rows`` rows of the paper's small check (k = d = 2, p = 10 by default)."""
        data, _ = self.world().sample(self.config.num_rows, seed=seed)
        return self.validate(data)

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """``(truth, data)``: :meth:`default_data` with the world's truth as values of the
        model's sites: ``W = M0``, ``b = 0``, ``v_scale`` the sd of V (the world's V is
        correlated, the model's prior diagonal), ``sigma_x`` and ``sigma_y`` the noise sds
        of X and of Y given Z and V, and the rows' latents ``z``. The networks' truth is the
        world's ``g0`` (decoder) and ``l`` (outcome), which are not sites."""
        world = self.world()
        data, z = world.sample(self.config.num_rows, seed=seed)
        truth = {
            "W": world.m0.clone(),
            "b": torch.zeros(self.config.latent_dim),
            "v_scale": torch.diagonal(world.sigma).sqrt(),
            "sigma_x": torch.tensor(world.x_noise),
            "sigma_y": torch.tensor(world.u_noise),
            "z": z,
        }
        return truth, self.validate(data)

    # ----- model and guide ----------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        d, k = self.config.latent_dim, self.config.action_dim
        return {
            "W": dist.Normal(0.0, 2.0).expand([d, k]).to_event(2),
            "b": dist.Normal(0.0, 2.0).expand([d]).to_event(1),
            "v_scale": dist.HalfNormal(2.0).expand([d]).to_event(1),
            "sigma_x": dist.HalfNormal(1.0),
            "sigma_y": dist.HalfNormal(1.0),
        }

    def model(self, batch) -> None:
        a = batch["a"]
        w = pyro.sample("W", self.prior("W"))
        b = pyro.sample("b", self.prior("b"))
        v_scale = pyro.sample("v_scale", self.prior("v_scale"))
        sigma_x = pyro.sample("sigma_x", self.prior("sigma_x"))
        sigma_y = pyro.sample("sigma_y", self.prior("sigma_y"))
        linear = torch.matmul(w, a.unsqueeze(-1)).squeeze(-1) + b  # (..., B, d)
        with self.data_plate(batch):
            loc = linear if self.config.prior_mean == "linear" else torch.zeros_like(linear)
            z = pyro.sample("z", dist.Normal(loc, v_scale).to_event(1))
            x_loc = self.decoder(z)
            pyro.sample("x", dist.Normal(x_loc, sigma_x[..., None]).to_event(1), obs=batch["x"])
            y_loc = self.nu(z).squeeze(-1) + self.psi(z - linear).squeeze(-1)
            pyro.sample("y", dist.Normal(y_loc, sigma_y), obs=batch["y"])
        if self.config.mmr_weight > 0:
            mmr = self._mmr(z, a)
            pyro.factor("mmr", -self.config.mmr_weight * batch.size * mmr)

    def _mmr(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The paper's MMR statistic of the batch, per particle (shape ``z.shape[:-2]``,
        with a trailing 1 under a particle plate)."""
        design = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], -1)
        hat = design @ torch.linalg.pinv(design)  # (B, B) projection onto [a, 1]
        resid = z - hat @ z
        kernel = torch.exp(-torch.cdist(a, a).pow(2) / (2 * self.config.mmr_bandwidth**2))
        mmr = torch.einsum("...id,ij,...jd->...", resid, kernel, resid) / len(a) ** 2
        return mmr.unsqueeze(-1) if mmr.dim() > 0 else mmr

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            # x only: the guide must not see A
            loc, scale, context = local.encode(self, batch["x"])
            local.sample("z", loc, scale, context=context)

    # ----- prediction and evaluation -------------------------------------------------------

    def representation(self, data) -> torch.Tensor:
        """The encoder means ``phi(x)`` (the learned representation), shape ``(N, d)``
        (the running guide's encoder, see :func:`guides.local.using`)."""
        with torch.no_grad():
            return local.encoder(self)(data["x"])[0]

    def _globals(self, guide, data) -> dict[str, torch.Tensor]:
        batch = full_batch({k: v[:2] for k, v in data.items()})
        with torch.no_grad():
            if hasattr(guide, "median"):
                return guide.median(batch)
            return guide(batch)

    def intervention_effect(self, guide, data, a_star) -> torch.Tensor:
        """``E[y | do(a*)]`` for each row of ``a_star`` (shape ``(m, k)``), from the model's
        own heads: ``mean_n nu(W a* + b + v_n) + mean_n psi(v_n)``, ``v_n = phi(x_n) - W a_n
        - b`` over the training rows ``data``, W and b at the guide's median."""
        a_star = torch.as_tensor(a_star, dtype=torch.float32)
        k = self.config.action_dim
        if a_star.dim() != 2 or a_star.shape[1] != k:
            raise DataError(f"a_star has shape {tuple(a_star.shape)}; expected (m, {k})")
        if not torch.isfinite(a_star).all():
            raise DataError("a_star has NaN or infinite value(s)")
        values = self._globals(guide, data)
        w, b = values["W"], values["b"]
        with local.using(guide):
            z = self.representation(data)
        v = z - data["a"] @ w.T - b
        with torch.no_grad():
            return _average_effect(self.nu, self.psi, w, b, v, a_star)

    def evaluate(self, guide, data, *, truth=None, baselines: bool = True, seed: int = 0):
        """The paper's two checks on the training rows ``data``:

        - ``affine_r2``: R^2 of the best affine map from phi(x) to the true Z, given as
          ``truth["z"]`` (``simulate(seed)[0]`` indexed like ``data``);
        - ``extrap_mse_*``: mean squared error of E[Y | do(a*)] against the exact truth on
          the grid ``[-3, 3]^k`` outside the training box ``[-1, 1]^k`` (``insupport_*``
          inside it): ``rep4ex`` (the model's heads), ``rep4ex_stage2`` (the paper's
          Stage 2 refit on phi(x)), ``oracle`` (Stage 2 on the true Z) and ``mlp_a`` (an MLP
          regression of Y on A). The true effect is the world's; the oracle needs the truth.
        """
        z_true = None if truth is None else truth["z"]
        metrics: dict[str, float] = {}
        with local.using(guide):
            z_hat = self.representation(data)
        if z_true is not None:
            metrics["affine_r2"] = affine_r2(z_hat, z_true)
        world = self.world()
        grid = extrapolation_grid(self.config.action_dim)
        outside = grid.abs().amax(-1) > 1.0
        truth = world.true_effect(grid)

        def score(name: str, pred: torch.Tensor) -> None:
            err = (pred - truth).pow(2)
            metrics[f"extrap_mse_{name}"] = float(err[outside].mean())
            metrics[f"insupport_mse_{name}"] = float(err[~outside].mean())

        score("rep4ex", self.intervention_effect(guide, data, grid))
        if baselines:
            a, y = data["a"], data["y"]
            score("rep4ex_stage2", fit_control_function(z_hat, a, y, seed=seed)(grid))
            if z_true is not None:
                score("oracle", fit_control_function(z_true, a, y, seed=seed)(grid))
            score("mlp_a", fit_direct_regression(a, y, seed=seed)(grid))
        return metrics

    def dims(self) -> dict[str, list[str]]:
        return {
            "W": ["latent", "action"],
            "b": ["latent"],
            "v_scale": ["latent"],
            "z": ["row", "latent"],
            "x": ["row", "feature"],
            "y": ["row"],
        }
