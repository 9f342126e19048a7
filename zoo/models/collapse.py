r"""Posterior collapse in conditional and hierarchical VAEs (paper 17).

Dang, Tran, Nguyen & Ho (ICLR 2024), "Beyond Vanilla Variational Autoencoders: Detecting
Posterior Collapse in Conditional and Hierarchical Variational Autoencoders"
(arXiv:2306.05023). Two models, linear by default (``hidden=()``) as in the paper's theory,
with MLP encoders/decoders for its non-linear checks:

``collapse_cvae`` (conditional VAE, condition :math:`x`, target :math:`y`)::

    z_n ~ Normal(0, eta_enc^2 I_{d1})                          (KL weighted by beta)
    y_n ~ Normal(U1 z_n + U2 x_n, eta_dec^2 I_{d2})
    q(z_n | x_n, y_n) = Normal(W1 x_n + W2 y_n, Sigma)         (Sigma learnable or fixed)

Linear theory: with :math:`\theta_i` the singular values of the residual covariance of
:math:`y` after linear regression on :math:`x` (:math:`\Sigma_{yy} - \Sigma_{yx}
\Sigma_{xx}^{-1} \Sigma_{xy}`)\ :sup:`1/2`, latent direction i collapses iff
:math:`\theta_i^2 \le \beta \eta_{dec}^2` (for a fixed :math:`\Sigma = \sigma^2 I` the
threshold is :math:`\beta \eta_{dec}^2 \sigma^2 / \eta_{enc}^2`). A stronger x-y correlation
leaves less residual variance, hence more collapse: :func:`cvae_predicted_collapse`.

``collapse_hvae`` (two-level Markovian hierarchical VAE)::

    z2_n ~ Normal(0, I_{d2})                                   (KL weighted by beta2)
    z1_n ~ Normal(U2 z2_n, eta_dec^2 I_{d1})                   (KL weighted by beta1)
    x_n  ~ Normal(U1 z1_n, eta_dec^2 I_{d0})
    q(z1_n | x_n) = Normal(W1 x_n, Sigma1),  q(z2_n | z1_n) = Normal(W2 z1_n, Sigma2)

Linear theory, per eigen-direction of the data covariance with variance :math:`\lambda`
(our derivation in the paper's setting; :func:`hvae_predicted_active`): with a *learnable*
:math:`\Sigma_1`, z1 is active iff :math:`\lambda > \beta_1 \eta_{dec}^2` and z2 collapses
entirely whenever :math:`\beta_2 > \beta_1`, whatever the data (the learnable encoder variance
absorbs the scale z2 would model; for :math:`\beta_2 < \beta_1` the objective has no minimum).
With a *fixed* :math:`\Sigma_1 = \sigma_1^2 I` (:math:`\sigma_1^2 \le \beta_2\eta_{dec}^2/
\beta_1`), z2 stays active on the directions with :math:`\lambda > \beta_2^2 \eta_{dec}^4 /
(\beta_1 \sigma_1^2)`.

Decoder and encoder weights are point estimates (network parameters); the KL weights scale
the latent sites in both the model and the guide (``poutine.scale``). Train the CVAE with
``elbo="meanfield"`` for the analytic KL that makes the collapse threshold sharp; the HVAE's
guide is not mean-field (z2's encoder reads z1), so it trains with the sampled ELBO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from sklearn.datasets import load_digits

from guides import local
from guides.encoders import SCALE_MODES, GaussianEncoder, mlp
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

__all__ = [
    "CollapseCVAE",
    "CollapseHVAE",
    "correlated_pairs",
    "spectrum_data",
    "residual_singular_values",
    "cvae_predicted_collapse",
    "hvae_predicted_active",
]

DATASETS = ("linear", "digits")

#: residual variances of y (before the (1 - rho^2) factor): geometric, none near the
#: default threshold beta * eta_dec^2 = 0.25 for rho in {0, .3, .6, .9}
CVAE_RESIDUAL_SPECTRUM = (4.0, 2.2, 1.2, 0.66, 0.36, 0.2, 0.11, 0.06)
#: data variances of the HVAE's linear default data
HVAE_SPECTRUM = (6.0, 3.0, 1.6, 0.6, 0.4, 0.12, 0.05, 0.02)


# ----- synthetic data and the linear theory ---------------------------------------------------


def _orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def correlated_pairs(
    n: int,
    rho: float,
    *,
    x_dim: int = 8,
    y_dim: int = 8,
    seed: int = 0,
    return_coef: bool = False,
):
    """``y = rho A x + sqrt(1 - rho^2) B eps`` with ``x, eps ~ N(0, I)``, ``A`` orthogonal
    (padded) and ``B`` with the singular values ``sqrt(CVAE_RESIDUAL_SPECTRUM)``: the
    correlation ``rho`` shrinks the residual variance of y given x by ``1 - rho^2``.
    With ``return_coef`` also the true regression coefficient ``rho A`` (``y_dim x x_dim``)."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must be in [0, 1), got {rho}")
    rng = np.random.default_rng(seed)
    spectrum = np.resize(np.array(CVAE_RESIDUAL_SPECTRUM), y_dim)
    a = _orthogonal(max(x_dim, y_dim), rng)[:y_dim, :x_dim]
    b = _orthogonal(y_dim, rng) * np.sqrt(spectrum)
    x = rng.standard_normal((n, x_dim))
    eps = rng.standard_normal((n, y_dim))
    y = rho * x @ a.T + np.sqrt(1 - rho**2) * eps @ b.T
    data = {"x": x.astype("float32"), "y": y.astype("float32")}
    return (data, rho * a) if return_coef else data


def spectrum_data(n: int, spectrum=HVAE_SPECTRUM, *, seed: int = 0) -> dict[str, np.ndarray]:
    """``x = Q diag(sqrt(lambda)) s`` with ``s ~ N(0, I)``, Q a random rotation: Gaussian
    data whose covariance has the eigenvalues ``spectrum``."""
    rng = np.random.default_rng(seed)
    lam = np.asarray(spectrum, dtype=float)
    q = _orthogonal(len(lam), rng)
    x = rng.standard_normal((n, len(lam))) * np.sqrt(lam) @ q.T
    return {"x": x.astype("float32")}


def residual_singular_values(x, y) -> np.ndarray:
    """theta_i: square roots of the eigenvalues (descending) of the residual covariance
    ``S_yy - S_yx S_xx^-1 S_xy`` of y after linear regression on x."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x = x - x.mean(0)
    y = y - y.mean(0)
    n = len(x)
    sxx, sxy, syy = x.T @ x / n, x.T @ y / n, y.T @ y / n
    residual = syy - sxy.T @ np.linalg.solve(sxx, sxy)
    eig = np.clip(np.linalg.eigvalsh(residual)[::-1], 0.0, None)
    return np.sqrt(eig)


def cvae_predicted_collapse(
    x,
    y,
    *,
    latent_dim: int,
    beta: float = 1.0,
    eta_dec: float = 0.5,
    eta_enc: float = 1.0,
    fixed_scale: float | None = None,
) -> int:
    """Collapsed latent dimensions of the linear CVAE at its optimum: ``latent_dim`` minus
    the number of ``theta_i^2 > beta * eta_dec^2`` (times ``sigma^2 / eta_enc^2`` for a fixed
    encoder scale ``sigma``)."""
    theta2 = residual_singular_values(x, y) ** 2
    threshold = beta * eta_dec**2
    if fixed_scale is not None:
        threshold *= fixed_scale**2 / eta_enc**2
    return int(latent_dim - min(latent_dim, int((theta2 > threshold).sum())))


def hvae_predicted_active(
    x,
    *,
    z1_dim: int,
    z2_dim: int,
    beta1: float = 1.0,
    beta2: float = 2.0,
    eta_dec: float = 0.5,
    sigma1: str = "learnable",
    sigma1_scale: float = 0.5,
) -> dict[str, int]:
    """Active directions of z1 and z2 of the linear two-level HVAE at its optimum, per
    eigen-direction ``lambda`` of the data covariance (see the module doc)::

        learnable Sigma1: z1 active iff lambda > beta1 eta^2; z2 none when beta2 > beta1
        fixed Sigma1 = s^2 I: z2 active iff lambda > beta2^2 eta^4 / (beta1 s^2);
                              z1 mean active iff its optimal second moment exceeds s^2
    """
    lam = np.linalg.eigvalsh(np.cov(np.asarray(x, dtype=float), rowvar=False))[::-1]
    eta2 = eta_dec**2
    if sigma1 == "learnable":
        if beta2 < beta1:
            raise ValueError("with a learnable Sigma1 and beta2 < beta1 the objective is unbounded")
        z1 = int((lam > beta1 * eta2).sum())
        z2 = 0 if beta2 > beta1 else None  # beta2 == beta1: indifferent
        return {"z1": min(z1_dim, z1), "z2": z2}
    s2 = sigma1_scale**2
    b = beta2 * eta2 / beta1
    if s2 > b:
        raise ValueError("the fixed-Sigma1 prediction assumes sigma1^2 <= beta2 eta^2 / beta1")
    z2_dirs = lam > beta2**2 * eta2**2 / (beta1 * s2)
    # second moment of z1 at the optimum: lower branch (z2 collapsed) or upper (z2 active)
    m = np.where(z2_dirs, lam * s2 / (beta2 * eta2), np.sqrt(s2 * lam / beta1))
    z1 = int((m > s2).sum())
    return {"z1": min(z1_dim, z1), "z2": min(z2_dim, int(z2_dirs.sum()))}


def _digits_halves() -> tuple[np.ndarray, np.ndarray]:
    images = load_digits().data.reshape(-1, 8, 8) / 16.0
    return images[:, :4].reshape(-1, 32), images[:, 4:].reshape(-1, 32)


def _check_common(config, names: tuple[str, ...]) -> None:
    require_positive_ints(config, *names)
    if config.dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {DATASETS}, got '{config.dataset}'")
    require_positive_sizes(config, "hidden", allow_empty=True)
    require_positive_numbers(config, "eta_dec", "init_scale")


def _activity_metrics(model, guide, data, predicted: dict[str, int | None]) -> dict:
    report = latent_activity(model, guide, data, num_particles=4)
    out: dict = {}
    for site, info in report.items():
        out[f"{site}_active_units"] = info["active_units"]
        out[f"{site}_active_directions"] = info["active_directions"]
        out[f"{site}_collapsed_dims"] = info["collapsed_dims"]
        out[f"{site}_total_kl"] = info["total_kl"]
        if site in predicted:
            out[f"{site}_predicted_active"] = predicted[site]
    out["elbo_per_row"] = float(elbo_per_row(model, guide, data, num_particles=10).mean())
    return out


# ----- conditional VAE ------------------------------------------------------------------------


@dataclass
class _CollapseConfig(TrainConfig):
    """The fields both collapse models share: the data and the training defaults."""

    dataset: str = "linear"
    num_rows: int = 5000
    hidden: tuple[int, ...] = ()
    batch_size: int = 500
    lr: float = 1e-2
    epochs: float = 200.0


#: the contract test's config for both collapse models
_TINY = {"num_rows": 300, "batch_size": 100, "steps": 20}


@register
class CollapseCVAE(ZooModel):
    r"""Linear (or MLP, ``hidden``) conditional VAE whose posterior collapse is driven by the
    input-output correlation (paper 17).

    Dang, Tran, Nguyen & Ho (ICLR 2024), "Beyond Vanilla Variational Autoencoders: Detecting
    Posterior Collapse in Conditional and Hierarchical Variational Autoencoders"
    (arXiv:2306.05023).

    Condition :math:`x \in R^{d_0}`, target :math:`y \in R^{d_2}`, latent :math:`z \in R^{d_1}`::

        z_n ~ Normal(0, eta_enc^2 I_{d1})                      (KL weighted by beta)
        y_n ~ Normal(U1 z_n + U2 x_n, eta_dec^2 I_{d2})
        q(z_n | x_n, y_n) = Normal(W1 x_n + W2 y_n, Sigma)     (Sigma learnable or fixed)

    Linear theory: latent direction i collapses iff :math:`\theta_i^2 \le \beta
    \eta_{dec}^2`, with :math:`\theta_i` the singular values of the residual covariance of
    y given x (:meth:`predicted_collapse`). Default data: :func:`correlated_pairs` with
    correlation ``rho``; ``dataset="digits"`` takes the top and bottom halves of the digits.
    """

    name = "collapse_cvae"
    summary = "Conditional VAE whose posterior collapse follows input-output correlation"
    paper = 17
    local_sites = ("z",)
    static_structure = True

    tiny = _TINY

    @dataclass
    class Config(_CollapseConfig):
        rho: float = 0.6
        x_dim: int = 8
        y_dim: int = 8
        latent_dim: int = 6
        beta: float = 1.0
        eta_enc: float = 1.0
        eta_dec: float = 0.5
        encoder_scale: str = "learnable"
        init_scale: float = 1.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.decoder = mlp([c.latent_dim + self.x_dim, *hidden, self.y_dim])
        self.encoder = GaussianEncoder(
            self.x_dim + self.y_dim,
            c.latent_dim,
            hidden,
            scale=c.encoder_scale,
            init_scale=c.init_scale,
        )

    @property
    def x_dim(self) -> int:
        return 32 if self.config.dataset == "digits" else self.config.x_dim

    @property
    def y_dim(self) -> int:
        return 32 if self.config.dataset == "digits" else self.config.y_dim

    def check_config(self) -> None:
        c = self.config
        _check_common(c, ("num_rows", "x_dim", "y_dim", "latent_dim"))
        if c.encoder_scale not in SCALE_MODES:
            raise ConfigError(
                f"encoder_scale must be one of {SCALE_MODES}, got '{c.encoder_scale}'"
            )
        if not 0.0 <= float(c.rho) < 1.0:
            raise ConfigError(f"rho must be in [0, 1), got {c.rho}")
        require_positive_numbers(c, "beta", "eta_enc")

    def data_spec(self) -> dict[str, Field]:
        half = (4, 8) if self.config.dataset == "digits" else None  # top / bottom halves
        return {
            "x": Field(shape=(self.x_dim,), doc="condition (input)", image=half),
            "y": Field(shape=(self.y_dim,), doc="target (output)", image=half),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y",)  # x is the condition, not modelled

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        return {"z": dist.Normal(0.0, float(c.eta_enc)).expand([c.latent_dim]).to_event(1)}

    def model(self, batch) -> None:
        with self.data_plate(batch):
            with poutine.scale(scale=float(self.config.beta)):
                z = pyro.sample("z", self.prior("z"))
            x = batch["x"].expand(z.shape[:-1] + batch["x"].shape[-1:])  # vectorized draws
            loc = self.decoder(torch.cat([z, x], -1))
            pyro.sample(
                "y", dist.Normal(loc, float(self.config.eta_dec)).to_event(1), obs=batch["y"]
            )

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch), poutine.scale(scale=float(self.config.beta)):
            loc, scale, context = local.encode(self, torch.cat([batch["x"], batch["y"]], -1))
            local.sample("z", loc, scale, context=context)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        c = self.config
        if c.dataset == "digits":
            x, y = _digits_halves()
            return self.validate({"x": x, "y": y})
        return self.validate(
            correlated_pairs(c.num_rows, float(c.rho), x_dim=c.x_dim, y_dim=c.y_dim, seed=seed)
        )

    def predicted_collapse(self, data) -> int | None:
        """The linear theory's collapsed dimensions on ``data`` (None for an MLP or an
        amortized encoder scale, where the theory does not apply exactly)."""
        c = self.config
        if c.hidden or c.encoder_scale == "amortized":
            return None
        fixed = float(c.init_scale) if c.encoder_scale == "fixed" else None
        return cvae_predicted_collapse(
            data["x"].cpu().numpy(),
            data["y"].cpu().numpy(),
            latent_dim=c.latent_dim,
            beta=float(c.beta),
            eta_dec=float(c.eta_dec),
            eta_enc=float(c.eta_enc),
            fixed_scale=fixed,
        )

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["row", "latent"], "x": ["row", "x_dim"], "y": ["row", "y_dim"]}

    def images(self, data) -> dict[str, torch.Tensor]:
        """On the digits: whole 8x8 digits, the condition ``x`` (top half) above the
        target ``y`` (bottom half, the generated part of new rows)."""
        halves = super().images(data)
        if set(halves) != {"x", "y"}:
            return halves
        return {"digit": torch.cat([halves["x"], halves["y"].to(halves["x"])], -2)}

    def evaluate(self, guide, data) -> dict:
        """Active units, collapsed dimensions (KL < 0.01) and, for the linear model, the
        theory's predicted collapsed dimensions; ELBO per row."""
        predicted = self.predicted_collapse(data)
        out = _activity_metrics(self, guide, data, {})
        if predicted is not None:
            out["z_predicted_collapsed"] = predicted
        return out


# ----- two-level hierarchical VAE -------------------------------------------------------------


@register
class CollapseHVAE(ZooModel):
    r"""Two-level Markovian hierarchical VAE (linear or MLP, ``hidden``) whose top level
    collapses under a learnable encoder variance (paper 17).

    Dang, Tran, Nguyen & Ho (ICLR 2024), "Beyond Vanilla Variational Autoencoders: Detecting
    Posterior Collapse in Conditional and Hierarchical Variational Autoencoders"
    (arXiv:2306.05023).

    Observation :math:`x \in R^{d_0}`, latents :math:`z_1 \in R^{d_1}`, :math:`z_2 \in R^{d_2}`::

        z2_n ~ Normal(0, I_{d2})                               (KL weighted by beta2)
        z1_n ~ Normal(U2 z2_n, eta_dec^2 I_{d1})               (KL weighted by beta1)
        x_n  ~ Normal(U1 z1_n, eta_dec^2 I_{d0})
        q(z1_n | x_n) = Normal(W1 x_n, Sigma1),  q(z2_n | z1_n) = Normal(W2 z1_n, Sigma2)

    Linear theory (:meth:`predicted_active`, :func:`hvae_predicted_active`): with a
    learnable Sigma1 and beta2 > beta1, z2 collapses entirely; with a fixed Sigma1 it stays
    active on the data directions of variance above beta2^2 eta_dec^4 / (beta1 sigma1^2).
    Default data: Gaussian with the eigenvalues ``HVAE_SPECTRUM``; or the digits.
    """

    name = "collapse_hvae"
    summary = "Two-level hierarchical VAE whose top level collapses with a learnable variance"
    paper = 17
    local_sites = ("z1", "z2")
    static_structure = True

    tiny = _TINY

    @dataclass
    class Config(_CollapseConfig):
        x_dim: int = 8
        z1_dim: int = 6
        z2_dim: int = 4
        beta1: float = 1.0
        beta2: float = 2.0
        eta_dec: float = 0.5
        sigma1: str = "learnable"
        sigma2: str = "learnable"
        init_scale: float = 0.5

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.decoder1 = mlp([c.z1_dim, *hidden, self.x_dim])
        self.decoder2 = mlp([c.z2_dim, *hidden, c.z1_dim])
        self.encoder = GaussianEncoder(
            self.x_dim, c.z1_dim, hidden, scale=c.sigma1, init_scale=c.init_scale
        )
        self.encoder2 = GaussianEncoder(
            c.z1_dim, c.z2_dim, hidden, scale=c.sigma2, init_scale=c.init_scale
        )

    @property
    def x_dim(self) -> int:
        return 64 if self.config.dataset == "digits" else self.config.x_dim

    def check_config(self) -> None:
        c = self.config
        _check_common(c, ("num_rows", "x_dim", "z1_dim", "z2_dim"))
        for name in ("sigma1", "sigma2"):
            if getattr(c, name) not in SCALE_MODES:
                raise ConfigError(f"{name} must be one of {SCALE_MODES}, got '{getattr(c, name)}'")
        require_positive_numbers(c, "beta1", "beta2")

    def data_spec(self) -> dict[str, Field]:
        image = (8, 8) if self.config.dataset == "digits" else None
        return {"x": Field(shape=(self.x_dim,), doc="observation", image=image)}

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z2": dist.Normal(0.0, 1.0).expand([self.config.z2_dim]).to_event(1)}

    def model(self, batch) -> None:
        c = self.config
        eta = float(c.eta_dec)
        with self.data_plate(batch):
            with poutine.scale(scale=float(c.beta2)):
                z2 = pyro.sample("z2", self.prior("z2"))
            with poutine.scale(scale=float(c.beta1)):
                z1 = pyro.sample("z1", dist.Normal(self.decoder2(z2), eta).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder1(z1), eta).to_event(1), obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        c = self.config
        with self.data_plate(batch):
            with poutine.scale(scale=float(c.beta1)):
                loc, scale, context = local.encode(self, batch["x"])
                z1 = local.sample("z1", loc, scale, context=context)
            with poutine.scale(scale=float(c.beta2)):
                loc2, scale2, context2 = local.encode(self, z1, name="encoder2")
                local.sample("z2", loc2, scale2, context=context2)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        c = self.config
        if c.dataset == "digits":
            return self.validate({"x": load_digits().data / 16.0})
        spectrum = np.resize(np.array(HVAE_SPECTRUM), c.x_dim)
        return self.validate(spectrum_data(c.num_rows, spectrum, seed=seed))

    def predicted_active(self, data) -> dict[str, int | None]:
        """The linear theory's active directions per level (empty for an MLP, an amortized
        encoder scale, a fixed Sigma2, or a regime the derivation does not cover)."""
        c = self.config
        if c.hidden or "amortized" in (c.sigma1, c.sigma2) or c.sigma2 == "fixed":
            return {}
        try:
            return hvae_predicted_active(
                data["x"].cpu().numpy(),
                z1_dim=c.z1_dim,
                z2_dim=c.z2_dim,
                beta1=float(c.beta1),
                beta2=float(c.beta2),
                eta_dec=float(c.eta_dec),
                sigma1=c.sigma1,
                sigma1_scale=float(c.init_scale),
            )
        except ValueError:
            return {}

    def dims(self) -> dict[str, list[str]]:
        return {"z1": ["row", "z1_dim"], "z2": ["row", "z2_dim"], "x": ["row", "x_dim"]}

    def evaluate(self, guide, data) -> dict:
        """Per level: active units and directions, collapsed dimensions (KL < 0.01), total
        KL, and for the linear model the theory's active directions; ELBO per row."""
        predicted = {k: v for k, v in self.predicted_active(data).items() if v is not None}
        return _activity_metrics(self, guide, data, predicted)
