"""Unsupervised pretraining, then regression: the factor-model and Gaussian-mixture
instances of Ge, Tang, Fan & Jin (2024), "On the Provable Advantage of Unsupervised
Pretraining", ICLR 2024 (arXiv:2303.01566).

The paper fits a latent-variable model by maximum likelihood on ``m`` unlabeled inputs,
then a predictor by ERM on ``n`` labeled ones, on features the fitted model gives, and
proves an excess risk of about sqrt(C_Phi / m) + sqrt(C_Psi / n) against sqrt(C_{Phi o Psi}
/ n) for supervised learning on the raw inputs. Here the two latent-variable models are zoo
models (MAP/VI or NUTS over their globals, with the exact marginal likelihood), the
downstream predictor is a small Bayesian linear regression (NUTS) or least squares (ERM),
and the baseline is ridge regression on the raw inputs.

Data rows carry a ``role``: 0 unlabeled (pretraining only), 1 labeled training row, 2
labeled test row; ``y`` of an unlabeled row is ignored. Pretraining sees every row's ``x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate, infer_discrete
from torch import nn
from torch.distributions import constraints

from guides import local
from inference.data import Field, full_batch
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.registry import register

__all__ = [
    "FactorPretraining",
    "MixturePretraining",
    "BayesianRegression",
    "ppca_mle",
    "principal_angles",
    "ridge_baseline",
    "least_squares",
    "downstream_check",
    "factor_features",
    "mixture_features",
]

ROLE_UNLABELED, ROLE_TRAIN, ROLE_TEST = 0, 1, 2


def _role_fields(input_dim: int) -> dict[str, Field]:
    return {
        "x": Field(shape=(input_dim,), doc="input (pretraining sees every row's x)"),
        "y": Field(doc="downstream target (ignored on unlabeled rows)"),
        "role": Field(
            dtype="int",
            support=constraints.integer_interval(0, 2),
            doc="0 unlabeled, 1 labeled training row, 2 labeled test row",
        ),
    }


def _unlabeled(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """New inputs ``x`` carry no target: mark them unlabeled (role 0, y 0, ignored)."""
    rows["role"] = torch.full_like(rows["role"], ROLE_UNLABELED)
    rows["y"] = torch.zeros_like(rows["y"])
    return rows


def _check_common(c) -> None:
    require_positive_ints(c, "input_dim", "batch_size")
    require_positive_numbers(c, "noise_scale")


# ----- downstream: ERM, the ridge baseline and a Bayesian linear regression ------------------


def least_squares(features: np.ndarray, y: np.ndarray, ridge: float = 1e-6):
    """ERM for squared loss with an intercept: returns ``predict(features) -> y_hat``."""
    design = np.column_stack([features, np.ones(len(features))])
    gram = design.T @ design + ridge * np.eye(design.shape[1])
    coef = np.linalg.solve(gram, design.T @ y)
    return lambda f: np.column_stack([f, np.ones(len(f))]) @ coef


def ridge_baseline(x: np.ndarray, y: np.ndarray):
    """Supervised learning on raw inputs: ridge regression, penalty by leave-one-out CV."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=np.logspace(-3, 4, 30)).fit(x, y)
    return model.predict


class BayesianRegression(ZooModel):
    """Downstream Bayesian linear regression on pretrained features (not registered: its
    input dimension is the pretrained model's feature dimension)::

        beta ~ Normal(0, 1)^k,  b ~ Normal(0, 5),  tau ~ HalfNormal(1)
        y_i  ~ Normal(f_i . beta + b, tau)
    """

    name = "pretraining_downstream"
    paper = 8
    supports_nuts = True
    static_structure = True

    @dataclass
    class Config(TrainConfig):
        num_features: int = 3

    def data_spec(self) -> dict[str, Field]:
        return {"f": Field(shape=(self.config.num_features,)), "y": Field()}

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y",)

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {
            "beta": dist.Normal(0.0, 1.0),
            "bias": dist.Normal(0.0, 5.0),
            "tau": dist.HalfNormal(1.0),
        }

    def model(self, batch) -> None:
        k = self.config.num_features
        beta = pyro.sample("beta", self.prior("beta").expand([k]).to_event(1))
        bias = pyro.sample("bias", self.prior("bias"))
        tau = pyro.sample("tau", self.prior("tau"))
        with self.data_plate(batch):
            mean = (batch["f"] * beta.unsqueeze(-2)).sum(-1) + bias
            pyro.sample("y", dist.Normal(mean, tau), obs=batch["y"])


# ----- factor model --------------------------------------------------------------------------


def ppca_mle(x: np.ndarray, latent_dim: int) -> tuple[np.ndarray, float]:
    """Closed-form PPCA maximum likelihood (Tipping & Bishop 1999) of zero-mean data:
    ``(W, sigma)`` with ``W`` (d, r) up to rotation."""
    cov = x.T @ x / len(x)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    sigma2 = float(values[latent_dim:].mean())
    w = vectors[:, :latent_dim] * np.sqrt(np.maximum(values[:latent_dim] - sigma2, 0.0))
    return w, math.sqrt(sigma2)


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians) between the column spans of ``a`` and ``b``."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    cosines = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0)
    return np.arccos(cosines)


def factor_features(x: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Posterior means E[z | x] = (W'W + sigma^2 I)^-1 W' x of the factor model."""
    r = w.shape[1]
    m = w.T @ w + sigma**2 * np.eye(r)
    return np.linalg.solve(m, w.T @ x.T).T


class LinearEncoder(nn.Module):
    """x -> (loc, scale): a linear map and a learned scale per latent dimension. The exact
    posterior of the factor model has this form, so the family holds it."""

    def __init__(self, input_dim: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, latent_dim)
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), -1.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = nn.functional.softplus(self.raw_scale) + 1e-4
        return self.linear(x), scale.expand(x.shape[:-1] + scale.shape)


@dataclass
class _PretrainingConfig(TrainConfig):
    """The fields both pretraining models share: data sizes and the training defaults."""

    noise_scale: float = 0.5  # tau of y | z (or c) in default_data
    num_unlabeled: int = 5000
    num_labeled: int = 20
    num_test: int = 1000
    batch_size: int = 500
    lr: float = 0.02


class _Pretraining(ZooModel):
    """What both pretraining models share: the data fields (x, y and each row's role), the
    observed site, the tiny config and new rows as unlabeled inputs."""

    paper = 8
    supports_nuts = True
    static_structure = True
    tiny = {"num_unlabeled": 200, "num_test": 100, "batch_size": 100, "steps": 20}

    def data_spec(self) -> dict[str, Field]:
        return _role_fields(self.config.input_dim)

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """New inputs ``x`` from the fitted pretraining model (the default), as unlabeled
        rows: the model does not generate the downstream target."""
        rows = super().sample_new_rows(
            num, data=data, guide=guide, draws=draws, seed=seed, mean=mean
        )
        return _unlabeled(rows)


@register
class FactorPretraining(_Pretraining):
    """Factor model (probabilistic PCA) for unsupervised pretraining, paper 8: Ge, Tang, Fan
    & Jin, "On the Provable Advantage of Unsupervised Pretraining", ICLR 2024
    (arXiv:2303.01566). Generative story, d inputs, r factors::

        W = [[L], [F]]: L (r x r) lower triangular with diag(L) ~ LogNormal(-1, 0.5) and
            free entries (below L's diagonal, and all of F) ~ Normal(0, 0.3)
        sigma ~ LogNormal(0, 0.25)
        z_i ~ Normal(0, I_r);  x_i | z_i ~ Normal(W z_i, sigma^2 I_d)
        (marginally x_i ~ Normal(0, W W' + sigma^2 I_d): LowRankMultivariateNormal)

    The triangular-positive form fixes W's rotation (Geweke & Zhou 1996), so NUTS chains
    and SBC see one mode. ``marginalize=True`` (default) integrates z out exactly;
    ``False`` keeps z as a site with an amortized linear encoder (SVI). Downstream: features
    E[z | x], then Bayesian regression (NUTS) or least squares on the labeled rows.
    """

    name = "pretraining_factor"
    summary = "Unsupervised pretraining with a factor model (PPCA), then Bayesian regression"

    @dataclass
    class Config(_PretrainingConfig):
        input_dim: int = 50
        latent_dim: int = 3
        marginalize: bool = True

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        d, r = self.config.input_dim, self.config.latent_dim
        rows, cols = torch.tril_indices(d, r, offset=-1)
        free = torch.zeros(len(rows), d * r)
        free[torch.arange(len(rows)), rows * r + cols] = 1.0
        diag = torch.zeros(r, d * r)
        diag[torch.arange(r), torch.arange(r) * r + torch.arange(r)] = 1.0
        self.register_buffer("free_to_w", free)
        self.register_buffer("diag_to_w", diag)
        # instance attribute: z is a local site only when it is not integrated out
        self.local_sites = () if self.config.marginalize else ("z",)
        # the loadings' posterior is strongly correlated: with a diagonal mass matrix 2 x
        # (300 + 300) NUTS draws leave R-hat 1.55, with a dense one 1.02 (d r + 1 = 151
        # dimensions; the z-as-a-site variant is far too large for one)
        self.nuts_options = {"dense_mass": True} if self.config.marginalize else {}
        if not self.config.marginalize:
            self.encoder = LinearEncoder(d, r)

    def check_config(self) -> None:
        c = self.config
        _check_common(c)
        require_positive_ints(c, "latent_dim", "num_unlabeled", "num_labeled", "num_test")
        if c.latent_dim >= c.input_dim:
            raise ConfigError(
                f"latent_dim must be below input_dim, got {c.latent_dim} >= {c.input_dim}"
            )

    @property
    def num_free(self) -> int:
        d, r = self.config.input_dim, self.config.latent_dim
        return d * r - r * (r + 1) // 2

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {
            "W_free": dist.Normal(0.0, 0.3),
            "W_diag": dist.LogNormal(-1.0, 0.5),
            "sigma": dist.LogNormal(0.0, 0.25),
        }

    def loadings(self, w_free: torch.Tensor, w_diag: torch.Tensor) -> torch.Tensor:
        """W (..., d, r) from its free entries and positive diagonal."""
        flat = w_free @ self.free_to_w + w_diag @ self.diag_to_w
        return flat.reshape(flat.shape[:-1] + (self.config.input_dim, self.config.latent_dim))

    def model(self, batch) -> None:
        d, r = self.config.input_dim, self.config.latent_dim
        w_free = pyro.sample("W_free", self.prior("W_free").expand([self.num_free]).to_event(1))
        w_diag = pyro.sample("W_diag", self.prior("W_diag").expand([r]).to_event(1))
        sigma = pyro.sample("sigma", self.prior("sigma"))
        w = pyro.deterministic("W", self.loadings(w_free, w_diag))
        with self.data_plate(batch):
            if self.config.marginalize:
                cov_diag = (sigma**2).unsqueeze(-1).expand(sigma.shape + (d,))
                x_dist = dist.LowRankMultivariateNormal(torch.zeros_like(cov_diag), w, cov_diag)
            else:
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([r]).to_event(1))
                loc = (w @ z.unsqueeze(-1)).squeeze(-1)
                x_dist = dist.Normal(loc, sigma.unsqueeze(-1)).to_event(1)
            pyro.sample("x", x_dist, obs=batch["x"])

    def nuts_init(self, data) -> dict[str, torch.Tensor] | None:
        """Start the chains at a short SVI fit of the exact-marginal model: from the prior
        median (W near 0) the warmup spends itself on the transient to a posterior only
        a few hundredths wide."""
        if not self.config.marginalize:
            return None
        return self.svi_point_estimate(data, steps=1000, lr=self.config.lr)

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            local.sample("z", loc, scale, context=context)

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """Globals from the prior, then ``num_unlabeled + num_labeled + num_test`` rows:
        ``(truth, data)``. ``truth`` holds W_free, W_diag, sigma, W (and the rows' z when it
        is a site, ``marginalize=False``); :meth:`simulate_with_extras` adds the downstream
        truth."""
        truth, data, _ = self.simulate_with_extras(seed)
        return truth, data

    def simulate_with_extras(self, seed: int = 0) -> tuple[dict, dict, dict]:
        """:meth:`simulate` plus ``extras``, what made ``y`` but is not a site of the model:
        the regression weights ``beta`` (``y = z . beta + noise``) and the rows' ``z``."""
        c = self.config
        m, n = c.num_unlabeled, c.num_labeled
        total = m + n + c.num_test
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            w_free = self.prior("W_free").expand([self.num_free]).sample()
            w_diag = self.prior("W_diag").expand([c.latent_dim]).sample()
            sigma = self.prior("sigma").sample()
            w = self.loadings(w_free, w_diag)
            z = torch.randn(total, c.latent_dim)
            x = z @ w.T + sigma * torch.randn(total, c.input_dim)
            beta = torch.randn(c.latent_dim)
            y = z @ beta + c.noise_scale * torch.randn(total)
        role = _roles(m, n, total)
        truth = {"W_free": w_free, "W_diag": w_diag, "sigma": sigma, "W": w}
        if not c.marginalize:
            truth["z"] = z
        return truth, self.validate({"x": x, "y": y, "role": role}), {"beta": beta, "z": z}

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.simulate(seed)[1]

    def dims(self) -> dict[str, list[str]]:
        return {
            "W_free": ["free_loading"],
            "W_diag": ["factor"],
            "W": ["input", "factor"],
            "z": ["row", "factor"],
            "x": ["row", "input"],
        }

    def point_estimate(self, guide, data) -> tuple[np.ndarray, float]:
        """(W, sigma) at the guide's median."""
        with torch.no_grad():
            median = guide.median(full_batch(data))
            w = self.loadings(median["W_free"], median["W_diag"])
        return w.cpu().numpy().astype(float), float(median["sigma"])

    def features(self, x: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
        return factor_features(x, w, sigma)

    def evaluate(self, guide, data) -> dict:
        """Test MSE of least squares on pretrained features E[z | x] (fitted on the labeled
        training rows) against ridge on the raw x; the subspace agreement with the
        closed-form PPCA MLE (largest principal angle, degrees)."""
        w, sigma = self.point_estimate(guide, data)
        x = data["x"].cpu().numpy().astype(float)
        out = downstream_check(x, data["y"].cpu().numpy(), data["role"].cpu().numpy(), w, sigma)
        w_mle, sigma_mle = ppca_mle(x, self.config.latent_dim)
        out["max_angle_to_mle_deg"] = float(np.degrees(principal_angles(w, w_mle).max()))
        out["sigma"], out["sigma_mle"] = sigma, sigma_mle
        return out


def downstream_check(x, y, role, w, sigma, features=factor_features) -> dict:
    """Least squares on ``features(x, w, sigma)`` vs ridge on raw x, fitted on role 1,
    scored (MSE) on role 2."""
    train, test = role == ROLE_TRAIN, role == ROLE_TEST
    if not train.any() or not test.any():
        return {"note": "no labeled training or test rows (role 1 and 2)"}
    f = features(x, w, sigma)
    pre = least_squares(f[train], y[train])
    sup = ridge_baseline(x[train], y[train])
    return {
        "pretrained_test_mse": float(np.mean((pre(f[test]) - y[test]) ** 2)),
        "supervised_test_mse": float(np.mean((sup(x[test]) - y[test]) ** 2)),
        "num_labeled": int(train.sum()),
        "num_test": int(test.sum()),
    }


# ----- Gaussian mixture ----------------------------------------------------------------------


def mixture_features(x: np.ndarray, locs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Responsibilities p(c | x) of an isotropic unit-variance Gaussian mixture."""
    sq = ((x[:, None, :] - locs[None, :, :]) ** 2).sum(-1)
    logits = np.log(weights)[None, :] - 0.5 * sq
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


@register
class MixturePretraining(_Pretraining):
    """Gaussian-mixture instance of unsupervised pretraining, paper 8: Ge, Tang, Fan & Jin,
    "On the Provable Advantage of Unsupervised Pretraining", ICLR 2024 (arXiv:2303.01566).
    Generative story, K components in d dimensions::

        weights ~ Dirichlet(2 * 1_K)
        loc_first ~ ordered: loc_first_1 ~ Normal(0, 3), loc_first_k = loc_first_{k-1}
                    + exp(g_k), g_k ~ Normal(1, 0.5)          (first coordinate, sorted)
        loc_rest_k ~ Normal(0, 3)^(d - 1)
        c_i ~ Categorical(weights);  x_i | c_i ~ Normal(loc_{c_i}, I_d)
        y_i | c_i ~ Normal(theta_{c_i}, tau)                   (downstream target)

    ``model`` sums c out exactly (MixtureSameFamily); :meth:`enumerated_model` keeps c as a
    site marked for parallel enumeration, for TraceEnum_ELBO and ``infer_discrete``. Sorting
    the first coordinate of the means removes label switching for NUTS and SBC. Downstream
    features are the responsibilities p(c | x).
    """

    name = "pretraining_mixture"
    summary = "Unsupervised pretraining with a Gaussian mixture, then Bayesian regression"

    @dataclass
    class Config(_PretrainingConfig):
        input_dim: int = 20
        num_components: int = 4

    def check_config(self) -> None:
        c = self.config
        _check_common(c)
        require_positive_ints(c, "num_unlabeled", "num_labeled", "num_test")
        if isinstance(c.num_components, bool) or not isinstance(c.num_components, int):
            raise ConfigError(f"num_components must be an integer, got {c.num_components!r}")
        if c.num_components < 2:
            raise ConfigError(f"num_components must be >= 2, got {c.num_components}")
        if c.input_dim < 2:
            raise ConfigError(f"input_dim must be >= 2, got {c.input_dim}")

    def default_priors(self) -> dict[str, dist.Distribution]:
        k = self.config.num_components
        return {
            "weights": dist.Dirichlet(torch.full((k,), 2.0)),
            "loc_first": _ordered_prior(k),
            "loc_rest": dist.Normal(0.0, 3.0),
        }

    def _globals(self):
        k, d = self.config.num_components, self.config.input_dim
        weights = pyro.sample("weights", self.prior("weights"))
        first = pyro.sample("loc_first", self.prior("loc_first"))
        rest = pyro.sample("loc_rest", self.prior("loc_rest").expand([k, d - 1]).to_event(2))
        locs = pyro.deterministic("locs", torch.cat([first.unsqueeze(-1), rest], -1))
        return weights, locs

    def model(self, batch) -> None:
        weights, locs = self._globals()
        with self.data_plate(batch):
            components = dist.Normal(locs, 1.0).to_event(1)
            mixture = dist.MixtureSameFamily(dist.Categorical(weights), components)
            pyro.sample("x", mixture, obs=batch["x"])

    @config_enumerate
    def enumerated_model(self, batch) -> None:
        """The same joint with the assignment ``c`` as a site (enumerated in parallel)."""
        weights, locs = self._globals()
        with self.data_plate(batch):
            c = pyro.sample("c", dist.Categorical(weights))
            loc = locs.index_select(-2, c.reshape(-1)).reshape(c.shape + locs.shape[-1:])
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=batch["x"])

    def assignments(self, guide, data, temperature: int = 0) -> torch.Tensor:
        """Per-row assignments by ``infer_discrete`` on the enumerated model, globals from
        ``guide`` (temperature 0: the MAP assignment; 1: a posterior draw)."""
        batch = full_batch(data)
        with torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(batch)
            conditioned = poutine.replay(self.enumerated_model, trace=guide_trace)
            decoded = infer_discrete(conditioned, first_available_dim=-2, temperature=temperature)
            trace = poutine.trace(decoded).get_trace(batch)
        return trace.nodes["c"]["value"]

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """Globals from the prior, then ``num_unlabeled + num_labeled + num_test`` rows:
        ``(truth, data)``; ``truth`` holds weights, loc_first, loc_rest and locs.
        :meth:`simulate_with_extras` adds the rows' components and the downstream truth."""
        truth, data, _ = self.simulate_with_extras(seed)
        return truth, data

    def simulate_with_extras(self, seed: int = 0) -> tuple[dict, dict, dict]:
        """:meth:`simulate` plus ``extras``, what is not a site of :meth:`model`: the rows'
        components ``c`` (a site of :meth:`enumerated_model` only) and the per-component
        means ``theta`` of the downstream target (``y = theta_c + noise``)."""
        c = self.config
        m, n = c.num_unlabeled, c.num_labeled
        total = m + n + c.num_test
        k, d = c.num_components, c.input_dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            weights = self.prior("weights").sample()
            first = self.prior("loc_first").sample()
            rest = self.prior("loc_rest").expand([k, d - 1]).sample()
            locs = torch.cat([first.unsqueeze(-1), rest], -1)
            comp = dist.Categorical(weights).sample([total])
            x = locs[comp] + torch.randn(total, d)
            theta = 2.0 * torch.randn(k)
            y = theta[comp] + c.noise_scale * torch.randn(total)
        role = _roles(m, n, total)
        truth = {"weights": weights, "loc_first": first, "loc_rest": rest, "locs": locs}
        data = self.validate({"x": x, "y": y, "role": role})
        return truth, data, {"c": comp, "theta": theta}

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.simulate(seed)[1]

    def dims(self) -> dict[str, list[str]]:
        return {
            "weights": ["component"],
            "loc_first": ["component"],
            "loc_rest": ["component", "rest_dim"],
            "locs": ["component", "input"],
            "x": ["row", "input"],
        }

    def point_estimate(self, guide, data) -> tuple[np.ndarray, np.ndarray]:
        """(locs, weights) at the guide's median."""
        with torch.no_grad():
            median = guide.median(full_batch(data))
        locs = torch.cat([median["loc_first"].unsqueeze(-1), median["loc_rest"]], -1)
        return locs.cpu().numpy().astype(float), median["weights"].cpu().numpy().astype(float)

    def evaluate(self, guide, data) -> dict:
        """Test MSE of least squares on responsibilities against ridge on raw x."""
        locs, weights = self.point_estimate(guide, data)
        x = data["x"].cpu().numpy().astype(float)
        return downstream_check(
            x,
            data["y"].cpu().numpy(),
            data["role"].cpu().numpy(),
            locs,
            weights,
            features=mixture_features,
        )


def _roles(num_unlabeled: int, num_labeled: int, total: int) -> torch.Tensor:
    """The ``role`` field: unlabeled rows first, then labeled training rows, then test rows."""
    role = torch.zeros(total, dtype=torch.int64)
    role[num_unlabeled : num_unlabeled + num_labeled] = ROLE_TRAIN
    role[num_unlabeled + num_labeled :] = ROLE_TEST
    return role


def _ordered_prior(k: int) -> dist.Distribution:
    """Ordered first coordinates: a Normal(0, 3) start and log-normal increments
    (pyro's OrderedTransform: y_1 = a, y_k = y_{k-1} + exp(g_k))."""
    loc = torch.cat([torch.zeros(1), torch.ones(k - 1)])
    scale = torch.cat([torch.full((1,), 3.0), torch.full((k - 1,), 0.5)])
    base = dist.Normal(loc, scale).to_event(1)
    return dist.TransformedDistribution(base, [dist.transforms.OrderedTransform()])
