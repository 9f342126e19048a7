"""PAC invariance: a hierarchical invariance test over linear-SEM environments (paper 11).

Parulekar, Shanmugam & Shakkottai, "PAC Generalization via Invariant Representations",
ICML 2023 (arXiv:2205.15196). The paper is theoretical: a representation that is
epsilon-approximately invariant on ``k`` training interventions of a parameterised family of
linear SEMs stays invariant on most unseen members, with a failure probability that falls
with ``k``. This module is an *adaptation*: the smallest probabilistic version that keeps
the mechanism is a hierarchical regression that asks, per feature subset, how much the
regression of Y on that subset changes across environments.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from inference.data import Field
from inference.posterior import posterior
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.registry import register

__all__ = [
    "PACInvariance",
    "CORE_FEATURES",
    "INVARIANT_CORE",
    "simulate_sem",
    "sem_environments",
    "failure_rate",
]

#: names of the six core SEM features (X1 causes Y; X2, X5 are downstream of the
#: intervened node; X6 has the cancelling, unfaithful pair of edges)
CORE_FEATURES = ("X1", "X2", "X3", "X4", "X5", "X6")
#: core features whose regression on Y is invariant (no intervened node among them or
#: their ancestors through Y's children)
INVARIANT_CORE = (0, 2, 3, 5)
B_X1_Y = 1.0  # edge X1 -> Y
C_Y_X2 = 0.5  # edge Y -> X2
THETA_RANGE = (0.5, 2.0)  # the family of interventions: X2's noise scale ~ U(0.5, 2)


def _sem_weights(num_nuisance: int) -> torch.Tensor:
    """Weighted adjacency ``W`` (``W[i, j]``: edge i -> j) over (X1..X6, nuisance, Y)."""
    d = 6 + num_nuisance
    y = d
    w = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    w[0, y] = B_X1_Y  # X1 -> Y
    w[y, 1] = C_Y_X2  # Y -> X2 (X2's noise is intervened)
    w[0, 2] = 1.0  # X1 -> X3
    w[1, 4] = 1.0  # X2 -> X5: downstream of the intervention
    w[y, 5] = 1.0  # Y -> X6 and X1 -> X6 cancel: X6 is independent of X1 (unfaithful)
    w[0, 5] = -B_X1_Y
    for j in range(6, d):
        w[0, j] = 0.3  # nuisance: non-intervened children of X1
    return w


def simulate_sem(
    thetas: torch.Tensor,
    n_per_env: int,
    *,
    num_nuisance: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Rows ``x`` (features X1..X6 then the nuisance ones), ``y`` and ``env`` of a linear
    SEM ``V = W^T V + N`` per environment; in environment ``e`` the noise of X2 has scale
    ``thetas[e]`` (every other noise is standard normal)."""
    thetas = torch.as_tensor(thetas, dtype=torch.float64)
    num_envs = len(thetas)
    w = _sem_weights(num_nuisance)
    dim = w.shape[0]
    noise = torch.randn(num_envs, n_per_env, dim, generator=generator, dtype=torch.float64)
    noise[..., 1] = noise[..., 1] * thetas[:, None]
    # V = W^T V + N  <=>  V = N (I - W)^{-1} for row vectors
    values = noise @ torch.linalg.inv(torch.eye(dim, dtype=torch.float64) - w)
    values = values.reshape(num_envs * n_per_env, dim)
    env = torch.arange(num_envs).repeat_interleave(n_per_env)
    return {"x": values[:, :-1].float(), "y": values[:, -1].float(), "env": env}


def sem_environments(
    num_envs: int, *, seed: int = 0, theta_range: tuple[float, float] = THETA_RANGE
) -> torch.Tensor:
    """``num_envs`` intervention parameters drawn from U(theta_range), seeded."""
    generator = torch.Generator().manual_seed(int(seed))
    low, high = theta_range
    return low + (high - low) * torch.rand(num_envs, generator=generator, dtype=torch.float64)


def all_subsets(num_features: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``range(num_features)``."""
    return [
        s
        for r in range(1, num_features + 1)
        for s in itertools.combinations(range(num_features), r)
    ]


def _env_coefficients(
    stats_xx: torch.Tensor, stats_xy: torch.Tensor, subset: Sequence[int]
) -> torch.Tensor:
    """Per-environment least-squares coefficients of Y on the features ``subset`` from the
    sufficient statistics ``X^T X`` (E, D, D) and ``X^T y`` (E, D)."""
    index = torch.as_tensor(subset)
    xx = stats_xx[:, index][:, :, index]
    xy = stats_xy[:, index]
    return torch.linalg.solve(xx, xy)


def failure_rate(
    ks: Sequence[int],
    *,
    n_per_env: int = 2000,
    epsilon: float | None = None,
    num_trials: int = 400,
    num_nuisance: int = 0,
    pool_size: int = 600,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """The paper's question, estimated: how often does a representation that passes the
    epsilon-invariance test on ``k`` training environments fail it on a new one?

    Representations: every non-empty subset S of the six core features, extended by all
    ``num_nuisance`` nuisance features when there are any (Phi(x) = (x_S, x_nuisance)).
    A representation *passes* on environments ``e_1..e_k`` when each environment's
    least-squares coefficients lie within ``epsilon`` (sup norm) of their mean, and
    *fails* on a new environment when its coefficients do not. ``epsilon`` defaults to
    ``0.05 + 4 / sqrt(n_per_env)``: finite samples make even invariant sets' coefficients
    differ by a few standard errors (about ``1 / sqrt(n)`` here).

    Environments are drawn once into a pool (theta ~ U(0.5, 2), ``n_per_env`` rows each);
    each trial draws ``k + 1`` of them without replacement.

    :returns: per ``k``: ``rate`` = P(fail on new | pass on k) over (trial, subset) pairs,
        ``joint`` = P(pass and fail), ``passed`` = P(pass), ``false_pass`` = P(pass) over
        the non-invariant subsets only.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if max(ks) + 1 > pool_size:
        raise ValueError(f"pool_size {pool_size} must exceed the largest k + 1 = {max(ks) + 1}")
    if epsilon is None:
        epsilon = 0.05 + 4.0 / float(np.sqrt(n_per_env))
    generator = torch.Generator().manual_seed(int(seed))
    thetas = sem_environments(pool_size, seed=seed + 1)
    data = simulate_sem(thetas, n_per_env, num_nuisance=num_nuisance, generator=generator)
    x = data["x"].double().reshape(pool_size, n_per_env, -1)
    y = data["y"].double().reshape(pool_size, n_per_env)
    x = torch.cat([x, torch.ones_like(y)[..., None]], -1)  # intercept column (last)
    stats_xx = x.transpose(-1, -2) @ x
    stats_xy = (x.transpose(-1, -2) @ y[..., None])[..., 0]
    intercept = x.shape[-1] - 1
    nuisance = tuple(range(6, 6 + num_nuisance))
    subsets = all_subsets(6)
    invariant = torch.tensor([set(s) <= set(INVARIANT_CORE) for s in subsets])
    # coefficients of every representation in every pool environment (intercept dropped)
    coefs = [
        _env_coefficients(stats_xx, stats_xy, (*s, *nuisance, intercept))[:, :-1] for s in subsets
    ]
    rng = np.random.default_rng(seed)
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        passed = torch.zeros(len(subsets))
        failed = torch.zeros(len(subsets))
        for _ in range(num_trials):
            pick = torch.as_tensor(rng.choice(pool_size, size=k + 1, replace=False))
            train, new = pick[:k], pick[k]
            for i, c in enumerate(coefs):
                centre = c[train].mean(0)
                ok = (c[train] - centre).abs().amax() <= epsilon
                if ok:
                    passed[i] += 1
                    failed[i] += float((c[new] - centre).abs().amax() > epsilon)
        total = num_trials * len(subsets)
        out[k] = {
            "rate": float(failed.sum() / passed.sum().clamp(min=1)),
            "joint": float(failed.sum() / total),
            "passed": float(passed.sum() / total),
            "false_pass": float(passed[~invariant].sum() / (num_trials * int((~invariant).sum()))),
            "epsilon": float(epsilon),
        }
    return out


@register
class PACInvariance(ZooModel):
    """Hierarchical invariance test of a feature subset S across environments (paper 11).

    Data (``simulate_sem``; ``default_data``: 8 environments x 400 rows): environments
    ``e = 1..E`` of a linear SEM over (X1..X6, Y) with theta_e ~ U(0.5, 2)::

        X1 ~ N(0, 1),  Y = X1 + N_Y,  X2 = 0.5 Y + theta_e N_2  (the intervened child),
        X3 = X1 + N_3,  X4 = N_4,  X5 = X2 + N_5,  X6 = Y - X1 + N_6 (cancelling edges)

    Model for the subset S = ``Config.features`` (rows i with environment e_i)::

        beta   ~ Normal(0, 2)^|S|            shared coefficients
        tau    ~ HalfNormal(0.5)^|S|         per-feature spread of the environments' coefficients
        sigma  ~ HalfNormal(2)
        beta_e = beta + tau * eta_e,  eta_e ~ Normal(0, I)   (non-centered, elementwise; or
        beta_e ~ Normal(beta, diag(tau)^2) with ``centered=True``)
        y_i    ~ Normal(x_{i,S} . beta_{e_i}, sigma)

    The verdict (:meth:`invariance`) is taken on ``max_j tau_j`` per posterior draw: the
    paper's epsilon-approximate invariance bounds the coefficient deviations in sup norm, so
    a coefficient that moves a lot (X2's in {X1, X2}) must not be diluted by one that moves
    little (X1's), as a single tau shared by all of S would. A posterior ``max_j tau_j``
    near 0 says the regression of Y on X_S is invariant across the environments (S is an
    invariant representation); here {X1} (and any subset of {X1, X3, X4, X6}) is invariant
    and any subset with X2 or X5 is not.

    Adaptation of Parulekar, Shanmugam & Shakkottai, "PAC Generalization via Invariant
    Representations", ICML 2023 (arXiv:2205.15196): the paper gives PAC bounds on the
    invariance of least-squares regressors; the Bayesian hierarchical test and the
    Monte-Carlo failure rate (:func:`failure_rate`) are this zoo's probabilistic version.
    """

    name = "pac_invariance"
    summary = "Hierarchical test of a feature subset's invariance across SEM environments"
    paper = 11
    supports_nuts = True
    static_structure = True

    tiny = {"rows_per_env": 50, "steps": 20}

    @dataclass
    class Config(TrainConfig):
        #: number of environments (the env field holds 0..num_envs-1)
        num_envs: int = 8
        #: number of columns of x
        num_features: int = 6
        #: the feature subset S (column indices of x) whose invariance is tested
        features: tuple[int, ...] = (0,)
        #: centered (beta_e ~ N(beta, tau)) or non-centered parameterisation
        centered: bool = False
        #: max_j tau_j below this counts as invariant (in ``evaluate``)
        epsilon: float = 0.075
        #: rows per environment in ``default_data``: 400 makes the per-environment
        #: coefficient standard error (about 1/sqrt(rows)) 0.05, below epsilon; at 100 it
        #: is 0.1, and the data can neither certify nor refute a spread of epsilon
        rows_per_env: int = 400

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "num_envs", "num_features", "rows_per_env")
        if c.num_envs < 2:
            raise ConfigError(f"num_envs must be at least 2 to test invariance, got {c.num_envs}")
        features = tuple(c.features) if isinstance(c.features, list | tuple) else None
        if not features:
            raise ConfigError(
                f"features must be a non-empty tuple of column indices, got {c.features!r}"
            )
        for f in features:
            if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < c.num_features:
                raise ConfigError(
                    f"features must hold column indices in 0..{c.num_features - 1}, got {f!r}"
                )
        if len(set(features)) != len(features):
            raise ConfigError(f"features must not repeat a column, got {features}")
        if not isinstance(c.centered, bool):
            raise ConfigError(f"centered must be true or false, got {c.centered!r}")
        require_positive_numbers(c, "epsilon")
        self.config.features = features

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "x": Field(shape=(c.num_features,), doc="covariates X1..XD"),
            "y": Field(doc="the target Y"),
            "env": Field(
                dtype="int",
                support=constraints.integer_interval(0, c.num_envs - 1),
                doc="environment index of the row",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y",)

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {
            "beta": dist.Normal(0.0, 2.0),
            "tau": dist.HalfNormal(0.5),
            "sigma": dist.HalfNormal(2.0),
        }

    def model(self, batch) -> None:
        c = self.config
        p = len(c.features)
        beta = pyro.sample("beta", self.prior("beta").expand([p]).to_event(1))
        tau = pyro.sample("tau", self.prior("tau").expand([p]).to_event(1))
        sigma = pyro.sample("sigma", self.prior("sigma"))
        with pyro.plate("env", c.num_envs, dim=-1):
            if c.centered:
                # one spread per feature (tau has beta's shape)
                beta_env = pyro.sample("beta_env", dist.Normal(beta, tau).to_event(1))
            else:
                zeros = beta.new_zeros(p)
                eta = pyro.sample("eta", dist.Normal(zeros, 1.0).to_event(1))
                beta_env = pyro.deterministic("beta_env", beta + tau * eta, 1)
        x = batch["x"][:, list(c.features)]
        with self.data_plate(batch):
            mean = (x * beta_env[..., batch["env"], :]).sum(-1)
            pyro.sample("y", dist.Normal(mean, sigma), obs=batch["y"])

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """``num_envs`` environments x ``rows_per_env`` rows of the SEM (theta_e ~ U(0.5, 2));
        the features beyond the six core ones are non-intervened nuisance children of X1."""
        c = self.config
        if c.num_features < 6:
            raise ConfigError(
                f"the default SEM data has 6+ features; num_features={c.num_features}"
            )
        thetas = sem_environments(c.num_envs, seed=seed)
        generator = torch.Generator().manual_seed(int(seed) + 10_000)
        data = simulate_sem(
            thetas, c.rows_per_env, num_nuisance=c.num_features - 6, generator=generator
        )
        return self.validate(data)

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """``(truth, data)``: (beta, tau per feature, sigma, eta) from the prior and y given
        them, on the covariates and environments of ``default_data(seed)`` (x, env).
        ``truth`` also holds ``beta_env`` (and ``eta`` in the non-centered form)."""
        c = self.config
        design = self.default_data(seed)
        x, env = design["x"], design["env"]
        generator = torch.Generator().manual_seed(int(seed))
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            p = len(c.features)
            beta = self.prior("beta").expand([p]).sample()
            tau = self.prior("tau").expand([p]).sample()
            sigma = self.prior("sigma").sample()
            eta = torch.randn(c.num_envs, p)
            beta_env = beta + tau * eta
            mean = (x[:, list(c.features)] * beta_env[env]).sum(-1)
            y = mean + sigma * torch.randn(len(env))
        truth = {"beta": beta, "tau": tau, "sigma": sigma, "beta_env": beta_env}
        if not c.centered:
            truth["eta"] = eta
        return truth, self.validate({"x": x, "y": y, "env": env})

    def dims(self) -> dict[str, list[str]]:
        return {
            "beta": ["feature"],
            "tau": ["feature"],
            "eta": ["env", "feature"],
            "beta_env": ["env", "feature"],
        }

    def coords(self, data: Mapping[str, torch.Tensor]) -> dict:
        return {"feature": self.feature_names(), "env": list(range(self.config.num_envs))}

    def feature_names(self) -> list[str]:
        """Names of the features of S (X1..X6, then N1.. for nuisance columns)."""
        return [
            CORE_FEATURES[f] if f < len(CORE_FEATURES) else f"N{f - 5}"
            for f in self.config.features
        ]

    def invariance(self, draws: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Summary of the posterior of ``tau_max = max_j tau_j`` (the sup norm over the
        features of S, per draw): ``tau_max_median``, ``tau_max_q95``,
        ``p_max_below_eps`` = P(tau_max < epsilon), the verdict ``invariant`` (the posterior
        median of tau_max below epsilon) and the per-feature medians ``tau_median[<name>]``."""
        p = len(self.config.features)
        tau = np.asarray(draws["tau"]).reshape(-1, p)
        tau_max = tau.max(-1)
        median = float(np.median(tau_max))
        out = {
            "tau_max_median": median,
            "tau_max_q95": float(np.quantile(tau_max, 0.95)),
            "p_max_below_eps": float((tau_max < self.config.epsilon).mean()),
            "invariant": float(median < self.config.epsilon),
        }
        for name, column in zip(self.feature_names(), tau.T, strict=True):
            out[f"tau_median[{name}]"] = float(np.median(column))
        return out

    def evaluate(self, guide, data) -> dict:
        """The invariance verdict of the subset from the posterior of max_j tau_j."""
        idata = posterior(self, data, guide=guide, num_draws=1000, dims=self.dims())
        return self.invariance({"tau": idata.posterior["tau"].values})
