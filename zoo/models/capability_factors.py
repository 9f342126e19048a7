"""LM capability factors: a multi-domain linear SEM factor model (paper 14).

Jin, Syrgkanis, Kakade & Zhang, "Discovering Hierarchical Latent Capabilities of Language
Models via Causal Representation Learning" (2025). Benchmark scores are a shared linear
mix of a few latent capabilities; the capabilities follow a linear causal DAG whose
parameters differ by base model (the domain), the confounder the paper controls for.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from inference.data import Field
from zoo.base import ConfigError, TrainConfig, ZooModel, require_positive_ints
from zoo.registry import register

__all__ = [
    "CapabilityFactors",
    "BENCHMARKS",
    "simulate_capabilities",
    "normalize_truth",
    "hierarchical_r2",
    "pooled_fa_factors",
    "best_order_r2",
    "mix_descendants",
    "true_site_values",
]

BENCHMARKS = ("MMLU-Pro", "BBH", "IFEval", "GPQA", "MUSR", "MATH-hard")
LAPLACE_SCALE = 1.0 / np.sqrt(2.0)  # Laplace(0, 1/sqrt 2) has unit variance


def _edge_index(d0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the strictly lower-triangular entries (the edges z_j -> z_i,
    j < i) in the order of the ``edge`` site."""
    rows, cols = torch.tril_indices(d0, d0, offset=-1)
    return rows, cols


def _free_loading_mask(d: int, d0: int) -> torch.Tensor:
    """Entries of G that are free: all but the top block's diagonal (fixed to 1) and its
    strictly lower triangle (fixed to 0). Every G with an invertible top block is
    equivalent to one of this form (a UL factorisation), so it fixes the paper's
    ambiguity (z_j mixed with its ancestors) and the scale and sign of each z_j."""
    mask = torch.ones(d, d0, dtype=torch.bool)
    mask[:d0] = torch.triu(torch.ones(d0, d0, dtype=torch.bool), diagonal=1)
    return mask


def _assemble(free: torch.Tensor, d: int, d0: int) -> torch.Tensor:
    """G (..., d, d0) from its free entries (..., n_free)."""
    mask = _free_loading_mask(d, d0).to(free.device)
    loading = free.new_zeros(free.shape[:-1] + (d, d0))
    loading[..., mask] = free
    eye = torch.eye(d0, dtype=free.dtype, device=free.device)
    loading[..., :d0, :] = loading[..., :d0, :] + eye
    return loading


def _unmixing(edge: torch.Tensor, d0: int) -> torch.Tensor:
    """I - B (..., d0, d0) from the edge weights (..., n_edges): unit lower triangular."""
    rows, cols = _edge_index(d0)
    b = edge.new_zeros(edge.shape[:-1] + (d0, d0))
    b[..., rows, cols] = edge
    return torch.eye(d0, dtype=edge.dtype, device=edge.device) - b


def _mixing(edge: torch.Tensor, d0: int) -> torch.Tensor:
    """(I - B)^{-1} (..., d0, d0) from the edge weights (..., n_edges)."""
    unmixing = _unmixing(edge, d0)
    eye = torch.eye(d0, dtype=edge.dtype, device=edge.device)
    return torch.linalg.solve_triangular(unmixing, eye.expand_as(unmixing), upper=False)


def _from_anchor_noise(loading, edge, mu, log_omega, x, domain, noise):
    """``(z, eps)`` (..., N, d0) of rows whose anchor benchmarks (the first d0) carry the
    noise ``noise``: z = U^{-1} (x_top - noise), U the unit upper-triangular top block of G,
    and eps = W_k^{-1} ((I - B_k) z - mu_k). Globals may carry leading batch dims."""
    d0 = noise.shape[-1]
    top = loading[..., :d0, :].unsqueeze(-3)  # (..., 1, d0, d0): one U for every row
    z = torch.linalg.solve_triangular(
        top, (x[..., :d0] - noise).unsqueeze(-1), upper=True, unitriangular=True
    ).squeeze(-1)
    unmixed = (_unmixing(edge, d0)[..., domain, :, :] @ z.unsqueeze(-1)).squeeze(-1)
    return z, (unmixed - mu[..., domain, :]) / log_omega.exp()[..., domain, :]


def mix_descendants(
    params: Mapping[str, torch.Tensor], upper: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The parameters of z' = N z for a unit upper-triangular ``upper`` = N (z_j mixed with
    its descendants): G' = G N^{-1} keeps the normalised form, and each domain's
    N A_k W_k^2 A_k^T N^T is refactored as A'_k W'_k^2 A'_k^T (its LDL^T decomposition).
    Under the Gaussian marginal the scores have exactly the same distribution, so the
    data cannot tell the two apart: the ridge of the Gaussian variant's posterior."""
    p = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}
    upper = torch.as_tensor(upper, dtype=torch.float64)
    d0 = upper.shape[-1]
    if not torch.equal(torch.triu(upper), upper) or not torch.all(upper.diagonal() == 1):
        raise ValueError("upper must be unit upper triangular (ones on the diagonal)")
    d = (p["loading_free"].shape[-1] + d0 * (d0 + 1) // 2) // d0
    loading = _assemble(p["loading_free"], d, d0) @ torch.linalg.inv(upper)
    mixing = _mixing(p["edge"], d0)
    root = upper @ mixing * p["log_omega"].exp().unsqueeze(-2)  # N A_k W_k
    chol = torch.linalg.cholesky(root @ root.transpose(-1, -2))
    scale = chol.diagonal(dim1=-2, dim2=-1)
    unit = chol / scale.unsqueeze(-2)  # A'_k, unit lower triangular
    eye = torch.eye(d0, dtype=unit.dtype)
    rows, cols = _edge_index(d0)
    edge = (eye - torch.linalg.inv(unit))[..., rows, cols]
    mean_z = (upper @ mixing @ p["mu"].unsqueeze(-1)).squeeze(-1)
    mu = torch.linalg.solve(unit, mean_z.unsqueeze(-1)).squeeze(-1)
    return {
        "loading_free": loading[..., _free_loading_mask(d, d0)],
        "edge": edge,
        "mu": mu,
        "log_omega": scale.log(),
        "sigma": p["sigma"],
    }


def _moments(loading, mixing, mu, log_omega, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """Each domain's mean (..., K, d) and covariance (..., K, d, d) of x; the globals'
    batch shape has a trailing 1 where the domains' has K."""
    g_mix = loading @ mixing  # (..., K, d, d0)
    mean = (g_mix @ mu.unsqueeze(-1)).squeeze(-1)
    factor = g_mix * log_omega.exp().unsqueeze(-2)  # G A_k W_k
    eye = torch.eye(loading.shape[-2], dtype=factor.dtype, device=factor.device)
    return mean, factor @ factor.transpose(-1, -2) + sigma[..., None, None] ** 2 * eye


def _ul(top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``top = U L`` with U unit upper-triangular and L lower-triangular (no pivoting)."""
    n = len(top)
    j = np.eye(n)[::-1]
    flipped = j @ top @ j  # LU of the flipped matrix, Doolittle (unit lower L)
    lower = np.eye(n)
    upper = flipped.astype(float).copy()
    for col in range(n):
        for row in range(col + 1, n):
            factor = upper[row, col] / upper[col, col]
            lower[row, col] = factor
            upper[row] -= factor * upper[col]
    return j @ lower @ j, j @ upper @ j


def normalize_truth(truth: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The true parameters in the model's normalised form (G's top block unit upper
    triangular): z' = L z with G = G' L. Edges, means and scales change with it; the
    hierarchical R^2 does not."""
    loading = np.asarray(truth["loading"], dtype=float)
    d0 = loading.shape[1]
    _, lower = _ul(loading[:d0])
    loading_n = loading @ np.linalg.inv(lower)
    out = {"loading": loading_n, "z": np.asarray(truth["z"]) @ lower.T}
    rows, cols = np.tril_indices(d0, -1)
    edges, mus, omegas = [], [], []
    for b, mu, omega in zip(truth["B"], truth["mu"], truth["omega"], strict=True):
        mix = lower @ np.linalg.inv(np.eye(d0) - b)  # L (I - B)^{-1} = A' D
        diag = np.diag(mix)
        a_new = mix / diag  # unit lower triangular (columns scaled)
        b_new = np.eye(d0) - np.linalg.inv(a_new)
        edges.append(b_new[rows, cols])
        mus.append(diag * mu)
        omegas.append(np.abs(diag) * omega)
    out.update(edge=np.array(edges), mu=np.array(mus), omega=np.array(omegas))
    return out


def true_site_values(truth: Mapping[str, np.ndarray], noise: float = 0.05) -> dict:
    """The simulation's truth as values of the model's sites (normalised form, float64);
    ``noise`` is the benchmark noise sd it was simulated with."""
    norm = normalize_truth(truth)
    d, d0 = norm["loading"].shape
    return {
        "loading_free": torch.as_tensor(norm["loading"][_free_loading_mask(d, d0).numpy()]),
        "edge": torch.as_tensor(norm["edge"]),
        "mu": torch.as_tensor(norm["mu"]),
        "log_omega": torch.as_tensor(np.log(norm["omega"])),
        "sigma": torch.tensor(float(noise), dtype=torch.float64),
    }


def simulate_capabilities(
    *,
    num_domains: int = 4,
    per_domain: int = 150,
    num_benchmarks: int = 6,
    num_factors: int = 3,
    noise: float = 0.05,
    anchored: bool = True,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """The spec's synthetic leaderboard: ``(truth, data)``.

    Chain DAG z1 -> z2 -> z3 with edge weights U[0.5, 2] per domain, Omega_k^{1/2} entries
    U[0.5, 2], means mu_k ~ N(0, 1), Laplace noise of unit variance, G ~ N(0, 1) shared by
    all domains, benchmark noise sd ``noise``.

    ``anchored=True`` (default) draws G in the model's normalised form (the first d0
    benchmarks anchor the factors: top block unit upper triangular, N(0, 1) elsewhere),
    so the true chain edges are the model's own parameters. A generic G (``False``)
    equals such a G times a lower-triangular matrix: the same data up to the paper's
    ambiguity, with the same hierarchical R^2, but its normalised form can be badly
    conditioned (huge loadings), far outside the priors.
    """
    rng = np.random.default_rng(seed)
    d0 = num_factors
    loading = rng.normal(size=(num_benchmarks, d0))
    if anchored:
        loading[:d0] = np.triu(loading[:d0], 1) + np.eye(d0)
    bs, mus, omegas, zs, xs, doms = [], [], [], [], [], []
    for k in range(num_domains):
        b = np.zeros((d0, d0))
        for i in range(1, d0):
            b[i, i - 1] = rng.uniform(0.5, 2.0)
        mu = rng.normal(size=d0)
        omega = rng.uniform(0.5, 2.0, size=d0)
        eps = rng.laplace(scale=LAPLACE_SCALE, size=(per_domain, d0))
        z = (mu + omega * eps) @ np.linalg.inv(np.eye(d0) - b).T
        x = z @ loading.T + noise * rng.normal(size=(per_domain, num_benchmarks))
        bs.append(b), mus.append(mu), omegas.append(omega), zs.append(z), xs.append(x)
        doms.append(np.full(per_domain, k))
    truth = {
        "loading": loading,
        "B": np.array(bs),
        "mu": np.array(mus),
        "omega": np.array(omegas),
        "z": np.concatenate(zs),
    }
    data = {
        "x": torch.as_tensor(np.concatenate(xs), dtype=torch.float32),
        "domain": torch.as_tensor(np.concatenate(doms)),
    }
    return truth, data


def hierarchical_r2(z_true: np.ndarray, z_hat: np.ndarray) -> np.ndarray:
    """R^2 of each true z_j regressed (with intercept) on the estimates z_hat_1..z_hat_j:
    the recovery the paper's identification promises (z_j up to its ancestors)."""
    z_true, z_hat = np.asarray(z_true, float), np.asarray(z_hat, float)
    out = []
    for j in range(z_true.shape[1]):
        design = np.column_stack([np.ones(len(z_hat)), z_hat[:, : j + 1]])
        coef, *_ = np.linalg.lstsq(design, z_true[:, j], rcond=None)
        resid = z_true[:, j] - design @ coef
        out.append(1.0 - resid.var() / z_true[:, j].var())
    return np.array(out)


def pooled_fa_factors(x: np.ndarray, num_factors: int, seed: int = 0) -> np.ndarray:
    """The baseline: factor analysis on all domains pooled (sklearn), factor scores."""
    from sklearn.decomposition import FactorAnalysis

    fa = FactorAnalysis(n_components=num_factors, random_state=seed)
    return fa.fit_transform(np.asarray(x, float))


def best_order_r2(z_true: np.ndarray, z_hat: np.ndarray) -> np.ndarray:
    """Hierarchical R^2 under the most favourable ordering of the estimated factors (a
    pooled baseline has no order of its own)."""
    best = None
    for perm in itertools.permutations(range(z_hat.shape[1])):
        r2 = hierarchical_r2(z_true, z_hat[:, perm])
        if best is None or r2.mean() > best.mean():
            best = r2
    return best


@register
class CapabilityFactors(ZooModel):
    """Multi-domain linear SEM factor model of benchmark scores (paper 14).

    For LM i of base model (domain) k_i, with d benchmarks and d0 latent capabilities::

        G       (d x d0), shared; top d0 x d0 block unit upper triangular (normalisation)
        G_free  ~ Normal(0, 1)                       its free entries
        b_k     ~ Normal(0, 1)   strictly lower entries of B_k (edges z_j -> z_i, j < i)
        mu_k    ~ Normal(0, 2)^d0
        log w_k ~ Normal(0, 1)^d0                    Omega_k^{1/2} = diag(w_k)
        sigma   ~ HalfNormal(0.1)
        z_i = (I - B_k)^{-1} (mu_k + w_k * eps_i),   eps_i ~ Laplace(0, 1/sqrt 2)^d0
        x_i ~ Normal(G z_i, sigma^2 I)

    The default (``marginal=False``) keeps eps as per-row latents: the paper's
    identification. Per domain the scores are a linear mix of independent non-Gaussian
    sources (ICA), which fixes the capabilities up to the paper's ambiguity (z_j mixed
    with its ancestors), and the normalisation of G removes that ambiguity and the scale
    and sign of each z_j. Its guide for eps (:meth:`local_guide`) is the Gaussian
    conditional of eps given x and the global draws, with no per-row parameters. The
    identification is weak at the spec's size (a few nats per leaderboard), and SVI
    misses it on some simulated leaderboards: the recipe reports every seed. NUTS mixes
    slowly in eps; :meth:`anchored_model` is the same posterior in coordinates it samples
    well (the reference posterior uses it).

    ``marginal=True`` (the Gaussian variant, fast under NUTS as it is) integrates eps out
    as a Gaussian of the same variance: x_i ~ MVN(G A_k mu_k, G A_k W_k^2 A_k^T G^T +
    sigma^2 I), A_k = (I - B_k)^{-1}: about 50 parameters. It is identified only up to
    mixing each capability with its descendants: a Gaussian pins down only each domain's
    mean and covariance of x, and every covariance has an A_k W_k^2 A_k^T form, so z' = N
    z with N unit upper triangular (:func:`mix_descendants`) fits every domain exactly as
    well. Its posterior has a ridge of d0 (d0 - 1) / 2 directions shaped only by the
    prior; what the data identify are the deterministic sites ``domain_mean``,
    ``domain_cov`` and sigma.

    Jin, Syrgkanis, Kakade & Zhang, "Discovering Hierarchical Latent Capabilities of
    Language Models via Causal Representation Learning" (2025).
    """

    name = "capability_factors"
    summary = "Multi-domain linear SEM factor model of LM benchmark scores"
    paper = 14
    supports_nuts = True
    static_structure = True
    fixed_local_guide = "eps given x and the globals in closed form (a Gaussian conditional)"

    tiny = {"steps": 20}

    @dataclass
    class Config(TrainConfig):
        #: number of base models (domains); the domain field holds 0..num_domains-1
        num_domains: int = 4
        #: number of benchmarks d (columns of x)
        num_benchmarks: int = 6
        #: number of latent capabilities d0
        num_factors: int = 3
        #: integrate the latent noise out as a Gaussian (fast, not identified: see the
        #: class docstring) instead of keeping the Laplace noise as per-row latents
        marginal: bool = False
        #: LMs per domain in ``default_data`` and ``simulate``
        per_domain: int = 150

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # instance attribute: the noise is a local site only when it is not integrated out
        self.local_sites = () if self.config.marginal else ("eps",)

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "num_domains", "num_benchmarks", "num_factors", "per_domain")
        if c.num_factors > c.num_benchmarks:
            raise ConfigError(
                f"num_factors ({c.num_factors}) must not exceed num_benchmarks ({c.num_benchmarks})"
            )
        if not isinstance(c.marginal, bool):
            raise ConfigError(f"marginal must be true or false, got {c.marginal!r}")

    @property
    def num_free(self) -> int:
        return int(_free_loading_mask(self.config.num_benchmarks, self.config.num_factors).sum())

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "x": Field(shape=(c.num_benchmarks,), doc="benchmark scores (standardised or logit)"),
            "domain": Field(
                dtype="int",
                support=constraints.integer_interval(0, c.num_domains - 1),
                doc="base model (domain) index of the LM",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {
            "loading_free": dist.Normal(0.0, 1.0),
            "edge": dist.Normal(0.0, 1.0),
            "mu": dist.Normal(0.0, 2.0),
            "log_omega": dist.Normal(0.0, 1.0),
            "sigma": dist.HalfNormal(0.1),
        }

    def _globals(self):
        c = self.config
        d0 = c.num_factors
        free = pyro.sample(
            "loading_free", self.prior("loading_free").expand([self.num_free]).to_event(1)
        )
        loading = pyro.deterministic("loading", _assemble(free, c.num_benchmarks, d0), event_dim=2)
        sigma = pyro.sample("sigma", self.prior("sigma"))
        domains = pyro.plate("dom", c.num_domains, dim=-1)
        with domains:
            edge = pyro.sample("edge", self.prior("edge").expand([d0 * (d0 - 1) // 2]).to_event(1))
            mu = pyro.sample("mu", self.prior("mu").expand([d0]).to_event(1))
            log_omega = pyro.sample("log_omega", self.prior("log_omega").expand([d0]).to_event(1))
        return loading, sigma, edge, mu, log_omega, domains

    def model(self, batch) -> None:
        c = self.config
        loading, sigma, edge, mu, log_omega, domains = self._globals()
        mixing = _mixing(edge, c.num_factors)  # (..., K, d0, d0)
        domain = batch["domain"]
        # the moments of x per domain: what the data identify (see the class docstring)
        mean, cov = _moments(loading, mixing, mu, log_omega, sigma)
        with domains:
            pyro.deterministic("domain_mean", mean, event_dim=1)
            pyro.deterministic("domain_cov", cov, event_dim=2)
        if c.marginal:
            scale_tril = torch.linalg.cholesky(cov)
            with self.data_plate(batch):
                pyro.sample(
                    "x",
                    dist.MultivariateNormal(
                        mean[..., domain, :], scale_tril=scale_tril[..., domain, :, :]
                    ),
                    obs=batch["x"],
                )
        else:
            with self.data_plate(batch):
                eps = pyro.sample(
                    "eps",
                    # one joint density over the d0 sources (identity transform), like the
                    # guide's correlated q: diagnostics then compare q and p as wholes
                    dist.TransformedDistribution(
                        dist.Laplace(loading.new_zeros(c.num_factors), LAPLACE_SCALE).to_event(1),
                        [],
                    ),
                )
                inner = mu[..., domain, :] + log_omega.exp()[..., domain, :] * eps
                z = (mixing[..., domain, :, :] @ inner.unsqueeze(-1)).squeeze(-1)
                mean = (loading @ z.unsqueeze(-1)).squeeze(-1)
                pyro.sample("x", dist.Normal(mean, sigma[..., None]).to_event(1), obs=batch["x"])

    def anchored_model(self, batch) -> None:
        """The default's posterior in coordinates NUTS can sample: each row's local latent
        is the noise n_i of its anchor benchmarks (the first d0, whose loadings are the
        unit upper-triangular block U) in place of eps_i, so z_i = U^{-1} (x_top,i - n_i)
        and eps_i follows from z_i (:func:`_from_anchor_noise`).

        For fixed data this is a change of variables, eps_i -> n_i, with |d eps / d n| =
        1 / prod_j w_kj: the density below (prior, n_i ~ Normal(0, sigma) as the anchors'
        likelihood, the Laplace density of eps_i with that Jacobian, the other benchmarks'
        likelihood) is the default's joint density, so the globals' posterior is the same.
        It is not a generative model of x (the anchors' scores are held fixed). Why: in
        eps (or z) coordinates, the weakly identified directions of U and the SEM move
        every row's latent at once, and NUTS mixes slowly (2 chains of 200 + 200 at d0 = 2,
        50 LMs a domain: R-hat 2.3 sampling z, 1.03 sampling n)."""
        c = self.config
        if c.marginal:
            raise ConfigError("anchored_model is the per-row form: set marginal=false")
        d0 = c.num_factors
        loading, sigma, edge, mu, log_omega, _ = self._globals()
        x, domain = batch["x"], batch["domain"]
        with self.data_plate(batch):
            noise = pyro.sample(
                "anchor_noise",
                dist.Normal(x.new_zeros(()), sigma[..., None, None])
                .expand(x.shape[:-1] + (d0,))
                .to_event(1),
            )
            z, eps = _from_anchor_noise(loading, edge, mu, log_omega, x, domain, noise)
            jacobian = log_omega[..., domain, :].sum(-1)
            laplace = dist.Laplace(eps.new_zeros(()), LAPLACE_SCALE)
            pyro.factor("eps_density", laplace.log_prob(eps).sum(-1) - jacobian)
            rest = (loading[..., d0:, :].unsqueeze(-3) @ z.unsqueeze(-1)).squeeze(-1)
            pyro.sample(
                "x_rest", dist.Normal(rest, sigma[..., None, None]).to_event(1), obs=x[..., d0:]
            )

    def nuts_target(self):
        """NUTS samples :meth:`anchored_model` (the per-row form mixes slowly in eps), and
        the Gaussian variant (no per-row latents) as it is."""
        return self if self.config.marginal else self.anchored_model

    def from_nuts_draws(self, draws, data):
        """:meth:`anchored_model`'s draws as the model's own (``eps`` for ``anchor_noise``)."""
        return self.eps_from_anchor_noise(draws, data) if "anchor_noise" in draws else draws

    def eps_from_anchor_noise(
        self, draws: Mapping[str, np.ndarray], data: Mapping[str, torch.Tensor]
    ) -> dict[str, np.ndarray]:
        """Draws of :meth:`anchored_model` (arrays with leading dims, e.g. (chain, draw))
        as draws of the model's own sites: ``anchor_noise`` replaced by ``eps``."""
        c = self.config
        lead = draws["sigma"].shape
        flat = {
            k: torch.as_tensor(v).reshape((-1,) + v.shape[len(lead) :]) for k, v in draws.items()
        }
        with torch.no_grad():
            loading = _assemble(flat["loading_free"], c.num_benchmarks, c.num_factors)
            _, eps = _from_anchor_noise(
                loading, flat["edge"], flat["mu"], flat["log_omega"],
                data["x"], data["domain"], flat["anchor_noise"],
            )  # fmt: skip
        out = {k: v for k, v in draws.items() if k != "anchor_noise"}
        out["eps"] = eps.reshape(lead + eps.shape[1:]).numpy()
        return out

    def local_guide(self, batch, global_values=None) -> None:
        """q(eps_i | x_i, globals): the exact conditional of eps_i under a unit Gaussian
        prior (a Gaussian with precision M^T M / sigma^2 + I, M = G A_k W_k), a function of
        the global draws with no parameters of its own. The benchmark noise is small, so
        the Laplace prior barely moves this conditional; a per-row diagonal guide instead
        ignores the correlations of eps_i, and its ELBO then prefers mixed capabilities
        whose eps happen to decorrelate over the true ones (measured on the spec data)."""
        c = self.config
        g = dict(global_values or {})
        loading = _assemble(g["loading_free"], c.num_benchmarks, c.num_factors)
        mixing = _mixing(g["edge"], c.num_factors)
        mean, _ = _moments(loading, mixing, g["mu"], g["log_omega"], g["sigma"])
        factor = loading @ mixing * g["log_omega"].exp().unsqueeze(-2)  # (..., K, d, d0)
        noise_precision = g["sigma"][..., None, None] ** -2  # sigma's plate slot is K's
        eye = torch.eye(c.num_factors, dtype=factor.dtype, device=factor.device)
        precision = factor.transpose(-1, -2) @ factor * noise_precision + eye
        domain = batch["domain"]
        resid = batch["x"] - mean[..., domain, :]
        rhs = (factor[..., domain, :, :].transpose(-1, -2) @ resid.unsqueeze(-1)).squeeze(-1)
        chol = torch.linalg.cholesky(precision)[..., domain, :, :]
        loc = torch.cholesky_solve((rhs * g["sigma"][..., None] ** -2).unsqueeze(-1), chol)
        with self.data_plate(batch):
            pyro.sample(
                "eps", dist.MultivariateNormal(loc.squeeze(-1), precision_matrix=chol @ chol.mT)
            )

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """The spec's synthetic set: ``num_domains`` x ``per_domain`` LMs, chain DAG (see
        :func:`simulate_capabilities`)."""
        c = self.config
        _, data = simulate_capabilities(
            num_domains=c.num_domains,
            per_domain=c.per_domain,
            num_benchmarks=c.num_benchmarks,
            num_factors=c.num_factors,
            seed=seed,
        )
        return self.validate(data)

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """``(truth, data)`` for SBC: every global drawn from its prior, then scores x for
        ``per_domain`` LMs of each domain from the model itself (Gaussian eps when
        ``marginal``, else Laplace eps, then a site of ``truth``). ``truth`` also holds the
        deterministic sites ``loading``, ``domain_mean`` and ``domain_cov``."""
        c = self.config
        d0 = c.num_factors
        domain = torch.arange(c.num_domains).repeat_interleave(c.per_domain)
        generator = torch.Generator().manual_seed(int(seed))
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            k = c.num_domains
            truth = {
                "loading_free": self.prior("loading_free").expand([self.num_free]).sample(),
                "edge": self.prior("edge").expand([k, d0 * (d0 - 1) // 2]).sample(),
                "mu": self.prior("mu").expand([k, d0]).sample(),
                "log_omega": self.prior("log_omega").expand([k, d0]).sample(),
                "sigma": self.prior("sigma").sample(),
            }
            loading = _assemble(truth["loading_free"], c.num_benchmarks, d0)
            mixing = _mixing(truth["edge"], d0)[domain]
            if c.marginal:
                eps = torch.randn(len(domain), d0)
            else:
                eps = dist.Laplace(0.0, LAPLACE_SCALE).sample((len(domain), d0))
            inner = truth["mu"][domain] + truth["log_omega"].exp()[domain] * eps
            z = (mixing @ inner.unsqueeze(-1)).squeeze(-1)
            x = z @ loading.T + truth["sigma"] * torch.randn(len(domain), c.num_benchmarks)
        moments = self.domain_moments({k: v.unsqueeze(0) for k, v in truth.items()})
        truth.update({k: v[0] for k, v in moments.items()}, loading=loading)
        if not c.marginal:
            truth["eps"] = eps
        return truth, self.validate({"x": x, "domain": domain})

    def domain_moments(self, draws: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``domain_mean`` (S, K, d) and ``domain_cov`` (S, K, d, d) for S draws of the
        sites (leading dim S, e.g. ``mcmc.get_samples()`` or a simulated truth with S = 1)."""
        c = self.config
        with torch.no_grad():
            loading = _assemble(draws["loading_free"], c.num_benchmarks, c.num_factors)
            mixing = _mixing(draws["edge"], c.num_factors)
            mean, cov = _moments(
                loading.unsqueeze(-3),
                mixing,
                draws["mu"],
                draws["log_omega"],
                draws["sigma"].unsqueeze(-1),
            )
        return {"domain_mean": mean, "domain_cov": cov}

    def factor_scores(
        self, params: Mapping[str, torch.Tensor], data: Mapping[str, torch.Tensor]
    ) -> np.ndarray:
        """E[z | x, params] per row (Gaussian conditional of the marginal model; the
        benchmark noise is small, so it is close to the default's too), in the
        model's normalised coordinates; ``params`` hold one value per site (e.g. posterior
        means of ``loading_free``, ``edge``, ``mu``, ``log_omega``, ``sigma``)."""
        c = self.config
        with torch.no_grad():
            p = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in params.items()}
            loading = _assemble(p["loading_free"], c.num_benchmarks, c.num_factors)
            mixing = _mixing(p["edge"], c.num_factors)
            mean_z = (mixing @ p["mu"].unsqueeze(-1)).squeeze(-1)  # (K, d0)
            root = mixing * p["log_omega"].exp().unsqueeze(-2)
            cov_z = root @ root.transpose(-1, -2)  # (K, d0, d0)
            eye = torch.eye(c.num_benchmarks)
            cov_x = loading @ cov_z @ loading.T + p["sigma"] ** 2 * eye
            gain = cov_z @ loading.T @ torch.linalg.inv(cov_x)  # (K, d0, d)
            dom = data["domain"]
            resid = data["x"] - (loading @ mean_z.unsqueeze(-1)).squeeze(-1)[dom]
            z = mean_z[dom] + (gain[dom] @ resid.unsqueeze(-1)).squeeze(-1)
        return z.numpy()

    def dims(self) -> dict[str, list[str]]:
        return {
            "loading_free": ["free_entry"],
            "loading": ["benchmark", "factor"],
            "edge": ["domain", "edge_ij"],
            "mu": ["domain", "factor"],
            "log_omega": ["domain", "factor"],
            "domain_mean": ["domain", "benchmark"],
            "domain_cov": ["domain", "benchmark", "benchmark_col"],
        }

    def coords(self, data) -> dict:
        c = self.config
        rows, cols = _edge_index(c.num_factors)
        names = BENCHMARKS if c.num_benchmarks == len(BENCHMARKS) else range(c.num_benchmarks)
        return {
            "benchmark": list(names),
            "benchmark_col": list(names),
            "factor": [f"z{j + 1}" for j in range(c.num_factors)],
            "edge_ij": [f"z{int(j) + 1}->z{int(i) + 1}" for i, j in zip(rows, cols, strict=True)],
            "domain": list(range(c.num_domains)),
        }

    def evaluate(self, guide, data) -> dict:
        """Fit quality without the truth: the posterior-median noise sd and the factor
        scores' share of the score variance (truth-based recovery is in the tests and
        the tutorial: :func:`hierarchical_r2`)."""
        from inference.posterior import posterior

        idata = posterior(self, data, guide=guide, num_draws=500)
        post = {
            k: torch.as_tensor(idata.posterior[k].values.mean((0, 1)))
            for k in ("loading_free", "edge", "mu", "log_omega", "sigma")
        }
        z = self.factor_scores(post, data)
        loading = _assemble(
            post["loading_free"].float(), self.config.num_benchmarks, self.config.num_factors
        ).numpy()
        resid = data["x"].numpy() - z @ loading.T
        return {
            "sigma": float(post["sigma"]),
            "explained_variance": float(1 - resid.var(0).sum() / data["x"].numpy().var(0).sum()),
        }
