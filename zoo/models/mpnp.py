"""MPNP: martingale posterior neural processes, with the NP and CNP beside it.

Lee, Yun, Nam, Fong & Lee (2023), "Martingale Posterior Neural Processes", ICLR 2023
(arXiv:2304.09431). A task is a context Z_c = {(x_i, y_i)}_{i <= n_c} and targets
{(x_t, y_t)}; a CNP encodes r_i = h(x_i, y_i), aggregates theta = mean_i r_i and decodes
p(y | x, theta) = Normal(mu(x, theta), sigma(x, theta)^2), sigma = 0.1 + 0.9 softplus(.).
The MPNP replaces a finite latent by a martingale posterior: a neural predictive makes
pseudo-contexts in representation space, and the spread of the theta they give is the
functional uncertainty. Per task (``variant="mpnp"``, the default)::

    eps_{1..m} ~ Normal(0, I)                        (m = n_c pseudo-contexts; the only latent)
    R'    = ISAB(R_c; eps)                           (eps as the inducing points of a set block)
    theta = mean(R_c U R')                           (context plus pseudo-context)
    y_t  ~ Normal(mu(x_t, theta), sigma(x_t, theta)^2)   (every point of the task observed)

and the loss is L_marg + L_amort + L_pseudo with K draws of eps (the three terms as the
spec reads the paper's objective; the authors' code was not available to check against)::

    L_marg   = -log (1/K) sum_k prod_t p(y_t | x_t, theta(Z_c U Z'_k))
    L_amort  = -sum_t log p(y_t | x_t, theta(Z_c))
    L_pseudo = -(1/K) sum_k sum_t log p(y_t | x_t, theta(Z'_k))

**In Pyro.** ``eps`` is the model's only sample site (``Normal(0, 1).expand([M, noise_dim])
.to_event(2)`` under the task plate; pseudo-contexts past n_c are masked out of the
attention, so m = n_c); the guide draws it from its own prior and has no parameters. Then
``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)`` (``elbo="iwae"``) is
exactly L_marg: with the prior as proposal, log p(eps) - log q(eps) = 0 and the
importance weights are the likelihoods. L_amort and L_pseudo are ``pyro.factor`` sites.
Pyro evaluates every site once per particle and RenyiELBO takes the log-mean-exp over
particles of each particle's sum, so a factor enters as log-mean-exp_k(a_k + c_k): a
factor that differs between particles would be mixed into the importance weights. The
pseudo factor is therefore the sum over the particle dimension divided by the particle
count, (1/K) sum_k c_k, given to every particle alike, which the log-mean-exp passes
through once, exactly (``tests/models/test_mpnp.py`` checks the loss against the three
terms computed by hand). :meth:`svi_options` gives the objective to
:func:`inference.svi.fit`: ``fit(model, model.guide, data, config=model.config,
**model.svi_options())``. Outside it (``zoo train``, whose engine runs one particle of
Trace_ELBO) the same model trains on the K = 1 case of the bound.

**Baselines (variants by config).** ``variant="cnp"``: the same encoder and decoder,
theta = mean(R_c), no latent, trained by maximum likelihood. ``variant="np"``: the NP of
Garnelo et al. (2018b) with a deterministic path and a latent path, in the non-centred form
z ~ Normal(0, I), latent = mu(Z_c) + s(Z_c) z (s = 0.1 + 0.9 sigmoid, the conditional prior
p(latent | Z_c)); its guide q(z | Z_c U Z_t) is the same latent encoder on every point,
mapped into z's coordinates, so the ELBO is the NP's (the KL term is invariant to the
affine map) and every local guide family applies. Predictions of all three condition on
the context only: the predictive is the mixture over ``eval_samples`` draws of eps (MPNP)
or z ~ p(z | Z_c) (NP).

Default data: 1-D tasks from a GP with GPyTorch's RBF kernel (:mod:`zoo.datasets.gp_tasks`;
``kernel`` and ``noise`` select Matern 5/2, periodic, Student-t noise), x ~ U[-2, 2],
n_c ~ U{3..47}, n_t ~ U{3..50 - n_c}, padded to 50 points; ``evaluate`` reports the
context and target log-likelihood per point (the paper's headline) and the coverage of
the predictive's central 90% interval on the targets.
"""

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
from guides.encoders import mlp
from guides.sets import ISAB, masked_mean
from inference.data import DataError, Field
from inference.metrics import interval_coverage
from zoo.base import ConfigError, TrainConfig, ZooModel, require_positive_ints
from zoo.datasets.gp_tasks import KERNELS, NOISES, gp_tasks
from zoo.registry import register

__all__ = ["MPNP", "VARIANTS"]

#: the model and its baselines, by ``Config.variant``
VARIANTS = ("mpnp", "np", "cnp")
#: the data fields of a task
FIELDS = ("x", "y", "num_context", "num_points")


def _particle_mean(value: torch.Tensor) -> torch.Tensor:
    """``value`` (*particles, tasks) averaged over its leading (particle) dimensions and
    given back to every particle: the sum over particles divided by their count."""
    lead = value.dim() - 1
    if lead <= 0:
        return value
    return value.mean(dim=tuple(range(lead)), keepdim=True).expand(value.shape)


class Decoder(nn.Module):
    """``(x, theta) -> (mu, raw sigma)``: an MLP on the concatenation [x, theta], its first
    layer split so that theta's part is computed once per task, not once per point."""

    def __init__(self, theta_dim: int, width: int, depth: int):
        super().__init__()
        self.x_in = nn.Linear(1, width)
        self.theta_in = nn.Linear(theta_dim, width, bias=False)
        self.out = mlp([width, *([width] * (depth - 2)), 2], nn.ReLU)

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        h = self.x_in(x[..., None]) + self.theta_in(theta)[..., None, :]
        return self.out(torch.relu(h))


class LatentEncoder(nn.Module):
    """The NP's latent path: a set of (x, y) -> (loc, scale) of a diagonal Normal, the
    mean of per-point features through an MLP (scale = 0.1 + 0.9 sigmoid)."""

    def __init__(self, width: int, depth: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.points = mlp([2, *([width] * depth)], nn.ReLU)
        self.head = mlp([width, width, 2 * latent_dim], nn.ReLU)

    def forward(self, x, y, mask):
        h = masked_mean(self.points(torch.stack([x, y], -1)), mask)
        loc, raw = self.head(h).split(self.latent_dim, -1)
        return loc, 0.1 + 0.9 * torch.sigmoid(raw)


@register
class MPNP(ZooModel):
    """Martingale posterior neural process (Lee et al., ICLR 2023), paper 19; with the NP
    and CNP baselines as ``variant="np"`` and ``variant="cnp"``. See the module doc for
    the generative story, the loss and its Pyro form."""

    name = "mpnp"
    summary = "Martingale posterior NP: pseudo-contexts as the only latent (CNP, NP variants)"
    paper = 19

    tiny = {"num_tasks": 64, "width": 16, "noise_dim": 8, "latent_dim": 4, "steps": 20,
            "batch_size": 16, "eval_samples": 4}  # fmt: skip

    @dataclass
    class Config(TrainConfig):
        variant: str = "mpnp"  # "mpnp", "np" (latent NP) or "cnp" (conditional NP)
        width: int = 64  # representation and hidden width
        depth: int = 3  # layers of the point encoder (the decoder has depth - 1 hidden)
        heads: int = 4  # attention heads of the pseudo-context generator (ISAB)
        noise_dim: int = 64  # size of each pseudo-context noise vector eps_j
        latent_dim: int = 32  # NP: size of the latent
        particles: int = 5  # K: particles of the objective (svi_options)
        eval_samples: int = 20  # draws of eps (or z) in the predictive mixture
        sigma_floor: float = 0.1  # sigma = floor + (1 - floor) softplus(.)
        max_points: int = 50  # points per task, padded
        kernel: str = "rbf"  # default data: GP kernel (rbf, matern, periodic)
        noise: str = "gaussian"  # default data: gaussian or student_t
        num_tasks: int = 10000  # default data: tasks
        holdout: float = 0.1
        batch_size: int = 50
        lr: float = 1e-3
        steps: int | None = 1000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        w = c.width
        self.encoder = mlp([2, *([w] * c.depth)], nn.ReLU)
        extra = c.latent_dim if c.variant == "np" else 0
        self.decoder = Decoder(w + extra, w, c.depth)
        if c.variant == "mpnp":
            self.embed = nn.Linear(c.noise_dim, w)
            self.generator = ISAB(w, c.heads)
        if c.variant == "np":
            self.latent_encoder = LatentEncoder(w, c.depth, c.latent_dim)
        if priors:
            self.set_priors(priors)

    def check_config(self) -> None:
        c = self.config
        if c.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {c.variant!r}")
        if c.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {sorted(KERNELS)}, got {c.kernel!r}")
        if c.noise not in NOISES:
            raise ConfigError(f"noise must be one of {NOISES}, got {c.noise!r}")
        require_positive_ints(c, "width", "depth", "heads", "noise_dim", "latent_dim",
                              "particles", "eval_samples", "num_tasks")  # fmt: skip
        if c.depth < 2:
            raise ConfigError(f"depth must be >= 2, got {c.depth}")
        if c.width % c.heads:
            raise ConfigError(f"width ({c.width}) must be a multiple of heads ({c.heads})")
        if not (isinstance(c.max_points, int) and c.max_points >= 6):
            raise ConfigError(f"max_points must be an integer >= 6, got {c.max_points!r}")
        if not 0 < c.sigma_floor < 1:
            raise ConfigError(f"sigma_floor must be in (0, 1), got {c.sigma_floor!r}")

    # ----- sites by variant ----------------------------------------------------------------

    @property
    def local_sites(self) -> tuple[str, ...]:
        return {"mpnp": ("eps",), "np": ("z",), "cnp": ()}[self.config.variant]

    @property
    def fixed_local_guide(self) -> str:
        if self.config.variant == "mpnp":
            return (
                "the proposal of eps is its prior, parameter-free: RenyiELBO(alpha=0) over it "
                "is the paper's marginal term"
            )
        return ""

    def svi_options(self) -> dict:
        """The variant's objective for :func:`inference.svi.fit`: the MPNP's IWAE bound
        over ``particles`` vectorized particles (RenyiELBO, alpha = 0), the NP's ELBO
        averaged over as many particles, the CNP's likelihood (one particle)."""
        c = self.config
        if c.variant == "mpnp":
            return {"elbo": "iwae", "num_particles": max(2, c.particles)}
        if c.variant == "np":
            return {"elbo": "trace", "num_particles": c.particles}
        return {"elbo": "trace", "num_particles": 1}

    # ----- data ----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        m = self.config.max_points
        return {
            "x": Field(shape=(m,), doc="inputs, context first, padded to max_points"),
            "y": Field(shape=(m,), doc="outputs at x (padding ignored)"),
            "num_context": Field(
                dtype="int",
                support=constraints.integer_interval(1, m - 1),
                doc="context points n_c (the first n_c of x, y)",
            ),
            "num_points": Field(
                dtype="int",
                support=constraints.integer_interval(2, m),
                doc="real points n_c + n_t (the rest is padding)",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y",)

    def validate(self, data):
        out = super().validate(data)
        bad = out["num_context"] >= out["num_points"]
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise DataError(
                f"field 'num_context' must be below 'num_points' (a task needs a target); "
                f"task {i} has num_context {int(out['num_context'][i])} and num_points "
                f"{int(out['num_points'][i])}"
            )
        return out

    def tasks(self, num_tasks: int, seed: int = 0, **options) -> dict[str, np.ndarray]:
        """Raw GP tasks (:func:`~zoo.datasets.gp_tasks.gp_tasks`) at this config's size,
        kernel and noise (``options`` override them), with the true functions and
        hyperparameters."""
        c = self.config
        kw = {"kernel": c.kernel, "noise": c.noise, "max_points": c.max_points, **options}
        return gp_tasks(num_tasks, seed=seed, **kw)

    def rows(self, raw: dict) -> dict[str, torch.Tensor]:
        """The model's fields of a :meth:`tasks` draw, validated."""
        return self.validate({k: raw[k] for k in FIELDS})

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.rows(self.tasks(self.config.num_tasks, seed))

    # ----- priors and networks -------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        if c.variant == "mpnp":
            return {"eps": dist.Normal(0.0, 1.0).expand([c.max_points, c.noise_dim]).to_event(2)}
        if c.variant == "np":
            return {"z": dist.Normal(0.0, 1.0).expand([c.latent_dim]).to_event(1)}
        return {}

    @staticmethod
    def masks(batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context, valid)`` boolean masks (tasks, max_points)."""
        pos = torch.arange(batch["x"].shape[-1], device=batch["x"].device)
        return pos < batch["num_context"][..., None], pos < batch["num_points"][..., None]

    def represent(self, x, y) -> torch.Tensor:
        """r_i = h(x_i, y_i): (tasks, points, width)."""
        return self.encoder(torch.stack([x, y], -1))

    def pseudo(self, r, ctx, eps) -> torch.Tensor:
        """R' = ISAB(R_c; eps): one pseudo-context representation per context point, from
        the noise eps (*particles, tasks, max_points, noise_dim) as inducing points (those
        past n_c masked)."""
        m = eps.shape[-2]  # noise tokens: max_points (a set may hold more points to predict)
        tokens = ctx[..., :m]
        if tokens.shape[-1] < m:
            tokens = nn.functional.pad(tokens, (0, m - tokens.shape[-1]), value=False)
        return self.generator(r, ctx, self.embed(eps), tokens)

    def decode(self, x, theta, latent=None) -> dist.Normal:
        """p(y | x, theta): theta (*lead, tasks, width) broadcast over the points of x."""
        if latent is not None:
            theta = torch.cat([theta.expand(latent.shape[:-1] + theta.shape[-1:]), latent], -1)
        mu, raw = self.decoder(x, theta).unbind(-1)
        floor = self.config.sigma_floor
        return dist.Normal(mu, floor + (1 - floor) * nn.functional.softplus(raw))

    def _np_prior(self, batch, ctx):
        return self.latent_encoder(batch["x"], batch["y"], ctx)

    # ----- the generative model -------------------------------------------------------------

    def model(self, batch) -> None:
        c = self.config
        x, y = batch["x"], batch["y"]
        ctx, valid = self.masks(batch)
        r = self.represent(x, y)
        theta_c = masked_mean(r, ctx)
        with self.data_plate(batch):
            if c.variant == "cnp":
                py = self.decode(x, theta_c)
            elif c.variant == "np":
                z = pyro.sample("z", self.prior("z"))
                loc, scale = self._np_prior(batch, ctx)
                py = self.decode(x, theta_c, loc + scale * z)
            else:
                eps = pyro.sample("eps", self.prior("eps"))
                r_pseudo = self.pseudo(r, ctx, eps)
                theta_p = masked_mean(r_pseudo, ctx)
                py = self.decode(x, 0.5 * (theta_c + theta_p))  # mean over R_c U R'
                amortized = self.decode(x, theta_c).log_prob(y).masked_fill(~valid, 0.0).sum(-1)
                pseudo = self.decode(x, theta_p).log_prob(y).masked_fill(~valid, 0.0).sum(-1)
                pyro.factor("amortized", amortized)
                pyro.factor("pseudo", _particle_mean(pseudo))
            pyro.sample("y", py.mask(valid).to_event(1), obs=y)

    def local_guide(self, batch, global_values=None) -> None:
        c = self.config
        if c.variant == "cnp":
            return
        with self.data_plate(batch):
            if c.variant == "mpnp":
                pyro.sample("eps", self.prior("eps"))  # the prior itself: no parameters
                return
            ctx, valid = self.masks(batch)
            loc_c, scale_c = self._np_prior(batch, ctx)
            loc, scale, _ = local.encode(self, batch["x"], batch["y"], valid,
                                         name="latent_encoder")  # fmt: skip
            local.sample("z", (loc - loc_c) / scale_c, scale / scale_c)

    # ----- the predictive and its scores ----------------------------------------------------

    @torch.no_grad()
    def predictive(self, data, samples: int | None = None, *, chunk: int = 100, seed: int = 0):
        """``(mu, sigma)`` (S, tasks, max_points) of p(y | x, Z_c) at every point of each
        task given its context only: S = ``samples`` (default ``eval_samples``) draws of
        eps (MPNP) or of z ~ p(z | Z_c) (NP); S = 1 for the CNP. Seeded; the global RNG is
        left as it was."""
        c = self.config
        s = 1 if c.variant == "cnp" else (samples or c.eval_samples)
        data = {k: torch.as_tensor(v).to(self.device) for k, v in data.items() if k in FIELDS}
        mus, sigmas = [], []
        was = self.training
        self.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(data["x"]), chunk):
                batch = {k: v[start : start + chunk] for k, v in data.items()}
                x, y = batch["x"], batch["y"]
                ctx, _ = self.masks(batch)
                r = self.represent(x, y)
                theta_c = masked_mean(r, ctx)
                if c.variant == "cnp":
                    py = self.decode(x, theta_c[None])
                elif c.variant == "np":
                    loc, scale = self._np_prior(batch, ctx)
                    z = loc + scale * torch.randn((s, *loc.shape), device=loc.device)
                    py = self.decode(x, theta_c, z)
                else:
                    eps = self.prior("eps").sample((s, len(x)))
                    theta_p = masked_mean(self.pseudo(r, ctx, eps), ctx)
                    py = self.decode(x, 0.5 * (theta_c + theta_p))
                mus.append(py.loc)
                sigmas.append(py.scale)
        self.train(was)
        return torch.cat(mus, 1), torch.cat(sigmas, 1)

    def scores(self, data, samples: int | None = None, *, draws: int = 200, seed: int = 0):
        """Per-point log-likelihood of the predictive mixture on the context and on the
        targets (averaged over a task's points, then over tasks; nats) and the coverage
        of its central 90% interval on the targets (from ``draws`` draws of the mixture,
        :func:`inference.metrics.interval_coverage`)."""
        mu, sigma = self.predictive(data, samples, seed=seed)
        data = {k: torch.as_tensor(v).to(mu.device) for k, v in data.items()}
        return predictive_scores(mu, sigma, data, draws=draws, seed=seed)

    def evaluate(self, guide, data) -> dict:
        """Context and target log-likelihood per point and 90% target coverage of the
        predictive given the context (the guide, which sees the targets, is not used)."""
        return self.scores(data)

    # ----- names and figures -----------------------------------------------------------------

    def dims(self) -> dict[str, list[str]]:
        return {
            "eps": ["task", "pseudo_point", "noise_dim"],
            "z": ["task", "latent_dim"],
            "y": ["task", "point"],
        }

    def figures(self, guide, data, *, idata=None) -> dict:
        """The predictive (mean and 90% band) on four tasks, context and targets marked."""
        return {"predictions": lambda: prediction_figure(self, data)}


def predictive_scores(mu, sigma, data, *, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Scores of a predictive mixture ``(mu, sigma)`` (S, tasks, points) on ``data``:
    ``ctx_ll``, ``tar_ll`` (per point, log of the mixture density, averaged over a task's
    points and then over tasks) and ``tar_coverage90``."""
    shape = (max(mu.shape[0], sigma.shape[0]), *data["y"].shape)
    mu, sigma = mu.expand(shape), sigma.expand(shape)  # (a per-point or shared predictive)
    pos = torch.arange(mu.shape[-1], device=mu.device)
    ctx = pos < data["num_context"][:, None]
    tar = (pos < data["num_points"][:, None]) & ~ctx
    y = data["y"]
    ll = torch.logsumexp(dist.Normal(mu, sigma).log_prob(y), 0) - math.log(mu.shape[0])

    def per_task(mask):
        m = mask.to(ll.dtype)
        return float(((ll * m).sum(-1) / m.sum(-1)).mean())

    gen = torch.Generator(device=mu.device).manual_seed(seed)
    pick = torch.randint(mu.shape[0], (draws, *mu.shape[1:]), generator=gen, device=mu.device)
    noise = torch.randn((draws, *mu.shape[1:]), generator=gen, device=mu.device)
    sample = mu.gather(0, pick) + sigma.gather(0, pick) * noise
    coverage = interval_coverage(sample[:, tar], y[tar], level=0.9)
    return {"ctx_ll": per_task(ctx), "tar_ll": per_task(tar), "tar_coverage90": coverage}


def prediction_figure(model: MPNP, data, tasks: int = 4, others: dict | None = None):
    """The predictive mean and 90% band of ``model`` (and of ``others``: label -> model)
    on the first ``tasks`` tasks of ``data``; context points black, targets hollow."""
    import matplotlib.pyplot as plt

    rows = {k: torch.as_tensor(v)[:tasks] for k, v in data.items() if k in FIELDS}
    models = {model.config.variant.upper(): model, **(others or {})}
    fig, axes = plt.subplots(1, tasks, figsize=(3.4 * tasks, 2.8), squeeze=False)
    grid = torch.linspace(-2.0, 2.0, 100)
    for i, ax in enumerate(axes[0]):
        n_c, n = int(rows["num_context"][i]), int(rows["num_points"][i])
        x, y = rows["x"][i], rows["y"][i]
        probe = {
            "x": torch.cat([x[:n_c], grid]),
            "y": torch.cat([y[:n_c], torch.zeros(100)]),
            "num_context": torch.tensor([n_c]),
            "num_points": torch.tensor([n_c + 100]),
        }
        probe["x"], probe["y"] = probe["x"][None], probe["y"][None]
        for label, m in models.items():
            mu, sigma = m.predictive(probe, seed=i)
            gen = torch.Generator().manual_seed(i)
            pick = torch.randint(mu.shape[0], (400, 1, mu.shape[-1]), generator=gen)
            sample = mu.gather(0, pick) + sigma.gather(0, pick) * torch.randn(
                (400, 1, mu.shape[-1]), generator=gen
            )
            sample = sample[:, 0, n_c:]
            lo, mid, hi = np.quantile(sample.numpy(), [0.05, 0.5, 0.95], axis=0)
            line = ax.plot(grid, mid, lw=1.2, label=label)[0]
            ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2)
        ax.plot(x[:n_c], y[:n_c], "k.", ms=6, label="context")
        ax.plot(x[n_c:n], y[n_c:n], "o", mfc="none", mec="0.4", ms=4, label="target")
        ax.set_title(f"task {i}: {n_c} context points", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
