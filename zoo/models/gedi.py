"""GEDI: one network as an energy-based model and as a cluster model (paper 21).

Sansone & Manhaeve, "Unifying Self-Supervised Clustering and Energy-Based Models" (TMLR
2025; arXiv:2401.00873), code github.com/emsansone/GEDI. An adaptation, said plainly: GEDI
is a lower bound on a joint likelihood trained by gradient steps, not a posterior over
latents; here it is the smallest Pyro model whose objective is that bound, the terms as
row-wise log factors on the one observed site (the spec's "loss as factor" mapping), so SVI
with an empty guide maximises it. What it keeps: one network f: R^2 -> R^c whose logits are
both the energy and the cluster posterior, the three terms with their weights, the JEM
energy, SGLD with a replay buffer, two jittered views sharing a cluster.

The network f(x) in R^c defines (JEM)::

    p_theta(x, y)  propto  exp f(x)[y]          E(x) = -logsumexp_y f(x)[y]
    p(y | x) = softmax(f(x) / tau),              p(y) = pi,   pi ~ Dirichlet(a 1_c)

For each row x_n, two views x_n' = x_n + sigma eps, x_n'' = x_n + sigma eps'' (Gaussian
jitter) share the cluster y_n. The objective (maximised; the paper's L = L_GEN + L_INV +
L_PRIOR, minimised) is::

    log F = - w_gen   [ E_data E(x) - E_{x~ SGLD} E(x~) ]                  (CD, replay buffer)
            + w_inv   E_n 1/2 sum_y [ p(y|x'') log p(y|x') + p(y|x') log p(y|x'') ]
            - w_prior KL( pbar || pi ),    pbar = batch mean of p(y | x), both views

The SGLD samples x~ are detached, so the gradient of the first line is the contrastive
divergence estimate of the likelihood gradient of p_theta(x) = exp(-E(x)) / Z.

The cluster proportions pi are the model's one latent site (the paper fixes pi = U_c, the
uniform prior): with the default concentration a = ``prior_concentration`` = 2000 the
Dirichlet holds pi within about 0.01 of uniform, so the prior term is the paper's L_PRIOR
(its pull is about halved, pi meeting pbar half-way at N = 2000 rows). A weaker Dirichlet
lets pi follow pbar, so the prior term no longer has to hold the clusters balanced (the
tutorial's prior swap; at its budget the clusters stayed balanced all the same).

``variant="enum"`` (the native cluster model): the invariance term is the likelihood that
the two views share a cluster, with y_n ~ Categorical(1/c) a site enumerated by
``TraceEnum_ELBO``::

    y_n ~ Categorical(pi),   factor_n(y_n) = log p(y_n | x_n') + log p(y_n | x_n'')
    => w_inv log sum_y pi_y p(y | x') p(y | x'')      (y summed out)

Outside an enumeration handler the same sum is taken in closed form, so every ELBO gives
the same objective. Either invariance term alone is maximised by putting every row in one
cluster with certainty (collapse); the prior term rules that out and the generative term
shapes f by the data's density. Clusters are read as argmax_y f(x)[y].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.runtime import _PYRO_STACK
from sklearn.datasets import make_circles, make_moons
from torch.distributions import constraints

from guides.encoders import mlp
from inference.data import Field
from inference.ebm import ReplayBuffer, persistent_sgld, sgld
from inference.representation import cluster_scores
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    check_positive_int,
    require_non_negative_ints,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.registry import register

__all__ = ["GEDI", "EnergyFactor", "two_clusters"]

DATASETS = ("moons", "circles")
VARIANTS = ("factor", "enum")
MAX_LABEL = 99


def _enumerating() -> bool:
    """Whether an enumeration handler (TraceEnum_ELBO) runs the model."""
    return any(isinstance(handler, EnumMessenger) for handler in _PYRO_STACK)


def two_clusters(
    dataset: str, rows: int, noise: float, seed: int, factor: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, label)``: sklearn's ``make_moons`` or ``make_circles`` (``factor``: inner
    radius over outer) with ``rows`` points and Gaussian ``noise``, seeded."""
    if dataset == "moons":
        x, y = make_moons(n_samples=rows, noise=noise, random_state=seed)
    elif dataset == "circles":
        x, y = make_circles(n_samples=rows, noise=noise, factor=factor, random_state=seed)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return x.astype(np.float32), y.astype(np.int64)


class EnergyFactor(dist.TorchDistribution):
    """The observed site of a model whose likelihood is an unnormalised row-wise factor:
    ``log_prob`` is ``log_factor`` (computed by the model from the observed rows, its shape
    the batch shape, which may carry an enumeration dimension); draws come from ``sampler``
    (e.g. SGLD under the energy), given the number of rows."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, log_factor: torch.Tensor, event_shape, sampler=None):
        self.log_factor = log_factor
        self.sampler = sampler
        super().__init__(log_factor.shape, torch.Size(event_shape), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return EnergyFactor(self.log_factor.expand(batch_shape), self.event_shape, self.sampler)

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        if self.sampler is None:
            return torch.zeros(shape + self.event_shape)
        return self.sampler(math.prod(shape)).reshape(shape + self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.log_factor


@register
class GEDI(ZooModel):
    """GEDI, paper 21 (Sansone & Manhaeve, TMLR 2025): one MLP trained as an energy-based
    model (contrastive divergence with SGLD and a replay buffer) and as a cluster model
    (invariance and prior terms). See the module doc for the objective. An adaptation: the
    paper's loss as a log factor on the observed site, the uniform cluster prior made a
    latent pi with a concentrated Dirichlet prior (the one global site; the default guide is
    mean-field Normal on it), and in ``variant="enum"`` the cluster y a site summed out by
    TraceEnum_ELBO. The ablations of the paper's check are the same model with weights set
    to 0: ``inv_weight=prior_weight=0`` (generative term only), ``gen_weight=0`` (invariance
    and prior) and ``gen_weight=prior_weight=0`` (invariance alone, which collapses).
    """

    name = "gedi"
    summary = "One network as an EBM (SGLD, replay buffer) and a cluster model (GEDI)"
    paper = 21
    local_sites = ()
    #: a row's predictive draw is an SGLD chain of 200 steps: the run's idata covers 200 rows
    #: x 64 draws, not 2,000 x 500 (the report took 168 of a default run's 177 s)
    idata_rows = 200
    static_structure = False  # SGLD's input gradients cannot be traced by the JIT

    tiny = {"rows": 200, "hidden": (16, 16), "sgld_steps": 3, "buffer_size": 64, "steps": 20}

    @dataclass
    class Config(TrainConfig):
        dataset: str = "moons"  # default data: moons or circles
        rows: int = 2000
        noise: float = 0.05  # default data: Gaussian noise of make_moons / make_circles
        circle_factor: float = 0.5  # make_circles: inner radius / outer radius
        clusters: int = 2
        hidden: tuple[int, ...] = (64, 64)
        tau: float = 0.3  # temperature of p(y | x) (1.0 left the moons half-split)
        jitter: float = 0.1  # sigma of the Gaussian augmentation (both views)
        gen_weight: float = 1.0
        inv_weight: float = 1.0
        prior_weight: float = 1.0
        variant: str = "factor"  # factor (the paper's loss) or enum (y enumerated)
        sgld_steps: int = 5
        sgld_step: float = 0.01  # step size on grad E
        sgld_noise: float = 0.01
        buffer_size: int = 2000
        reinit: float = 0.05  # replay buffer: restart a chain uniformly with this probability
        box: float = 3.0  # SGLD and the buffer live in [-box, box]^2
        energy_reg: float = 0.0  # optional penalty on squared energies (stability)
        prior_concentration: float = 2000.0  # Dirichlet(a 1_c) prior of pi
        holdout: float = 0.0
        batch_size: int = 128
        lr: float = 3e-3
        steps: int | None = 1000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.net = mlp([2, *c.hidden, c.clusters], activation=torch.nn.SiLU)
        self.buffer = ReplayBuffer(c.buffer_size, (2,), low=-c.box, high=c.box)
        if priors:
            self.set_priors(priors)

    def check_config(self) -> None:
        c = self.config
        if c.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {DATASETS}, got {c.dataset!r}")
        if c.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {c.variant!r}")
        require_positive_ints(c, "rows", "clusters", "buffer_size")
        if c.clusters < 2:
            raise ConfigError(f"clusters must be >= 2, got {c.clusters}")
        require_non_negative_ints(c, "sgld_steps")
        require_positive_sizes(c, "hidden")
        require_positive_numbers(c, "tau", "box", "prior_concentration")
        require_non_negative_numbers(c, "noise", "jitter", "sgld_step", "sgld_noise", "energy_reg")
        require_non_negative_numbers(c, "gen_weight", "inv_weight", "prior_weight")
        if not 0 < c.circle_factor < 1:
            raise ConfigError(f"circle_factor must be in (0, 1), got {c.circle_factor}")
        if not 0 <= c.reinit <= 1:
            raise ConfigError(f"reinit must be in [0, 1], got {c.reinit}")
        if c.gen_weight == c.inv_weight == c.prior_weight == 0:
            raise ConfigError("gen_weight, inv_weight and prior_weight are all 0: no objective")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(shape=(2,), doc="2-D points"),
            "label": Field(
                dtype="int",
                support=constraints.integer_interval(-1, MAX_LABEL),
                doc="true cluster, for scoring only (-1: unknown; new rows: the model's "
                "cluster); never used in training",
            ),
        }

    optional_fields = ("label",)

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """``make_moons`` or ``make_circles`` (the config's ``dataset``), ``rows`` points."""
        c = self.config
        x, label = two_clusters(c.dataset, c.rows, c.noise, seed, c.circle_factor)
        return self.validate({"x": x, "label": label})

    # ----- the network's readings -----------------------------------------------------------

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), (N, c)."""
        return self.net(x)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = -logsumexp_y f(x)[y], (N,)."""
        return -self.net(x).logsumexp(-1)

    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        """p(y | x) = softmax(f(x) / tau), (N, c)."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            return (self.net(x) / self.config.tau).softmax(-1)

    def assign(self, x: torch.Tensor) -> np.ndarray:
        """The cluster of each row, argmax_y f(x)[y]."""
        return self.cluster_probs(x).argmax(-1).cpu().numpy()

    def negatives(self, num: int, *, update: bool = True) -> torch.Tensor:
        """``num`` SGLD samples of the energy from the replay buffer (chains written back)."""
        c = self.config
        return persistent_sgld(
            self.energy,
            self.buffer,
            num,
            steps=c.sgld_steps,
            step_size=c.sgld_step,
            noise=c.sgld_noise,
            reinit=c.reinit,
            update=update,
        )

    def sample_energy(self, num: int, *, steps: int = 200, seed: int | None = None):
        """``num`` fresh samples of p_theta(x): SGLD chains of ``steps`` steps from uniform
        starts in the box (the buffer is left as it is)."""
        c = self.config
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(int(seed))
            start = self.buffer.uniform(num)
            return sgld(
                self.energy,
                start,
                steps=steps,
                step_size=c.sgld_step,
                noise=c.sgld_noise,
                low=-c.box,
                high=c.box,
            )

    # ----- the objective ------------------------------------------------------------------------

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The objective's terms on a batch of rows ``x`` (B, 2), as log factors (higher is
        better): ``gen`` (B,), ``inv`` (B,) or, for ``variant="enum"``, ``pair`` (c, B) with
        log p(y | x') + log p(y | x'') per cluster, and ``pbar`` (c,), the batch-mean
        assignment (the prior term -KL(pbar || pi) is taken in :meth:`model`)."""
        c = self.config
        out: dict[str, torch.Tensor] = {}
        if c.gen_weight > 0:
            # negatives only while training (grad enabled); otherwise the buffer as it is
            if torch.is_grad_enabled():
                neg = self.negatives(min(len(x), c.buffer_size))
            else:
                neg = self.buffer.samples
            e_data, e_neg = self.energy(x), self.energy(neg)
            out["gen"] = -(e_data - e_neg.mean())
            if c.energy_reg > 0:
                out["gen"] = out["gen"] - c.energy_reg * (e_data**2 + (e_neg**2).mean())
        if c.inv_weight > 0 or c.prior_weight > 0:
            one = x + c.jitter * torch.randn_like(x)
            two = x + c.jitter * torch.randn_like(x)
            log_p1 = (self.net(one) / c.tau).log_softmax(-1)
            log_p2 = (self.net(two) / c.tau).log_softmax(-1)
            p1, p2 = log_p1.exp(), log_p2.exp()
            if c.variant == "enum":
                out["pair"] = (log_p1 + log_p2).T
            else:
                out["inv"] = 0.5 * ((p2 * log_p1).sum(-1) + (p1 * log_p2).sum(-1))
            pbar = torch.cat([p1, p2]).mean(0)
            out["pbar"] = pbar
        return out

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        return {"pi": dist.Dirichlet(torch.full((c.clusters,), float(c.prior_concentration)))}

    def model(self, batch) -> None:
        c = self.config
        x = batch["x"]
        pi = pyro.sample("pi", self.prior("pi"))
        log_pi = pi.clamp_min(1e-12).log()
        terms = self.terms(x)
        if "pbar" in terms:
            pbar = terms["pbar"]
            terms["prior"] = -(pbar * (pbar.clamp_min(1e-12).log() - log_pi)).sum(-1)
        log_factor = torch.zeros(len(x), device=x.device)
        if "gen" in terms:
            log_factor = log_factor + c.gen_weight * terms["gen"]
        if "inv" in terms and c.inv_weight > 0:
            log_factor = log_factor + c.inv_weight * terms["inv"]
        if "prior" in terms and c.prior_weight > 0:
            # a batch-level term spread over the rows: the plate scales the sum by N / B
            log_factor = log_factor + c.prior_weight * terms["prior"]
        with self.data_plate(batch):
            if "pair" in terms and c.inv_weight > 0:
                if _enumerating():
                    y = pyro.sample(
                        "y", dist.Categorical(probs=pi), infer={"enumerate": "parallel"}
                    )
                    pair = terms["pair"][y, torch.arange(len(x), device=x.device)]
                    # the weight tempers p(y | x') p(y | x''); 1 is the plain likelihood
                    log_factor = log_factor + c.inv_weight * pair
                else:
                    summed = (terms["pair"] + log_pi[..., None]).logsumexp(-2)
                    log_factor = log_factor + c.inv_weight * summed
            pyro.sample("x", EnergyFactor(log_factor, (2,), self.sample_energy), obs=x)

    # ----- scores -------------------------------------------------------------------------------

    def evaluate(self, guide, data) -> dict:
        """NMI, Hungarian accuracy and number of clusters used of argmax_y f(x)[y] against
        the true labels (rows with a label >= 0); the mean energy of the data and of the
        buffer's samples."""
        x = torch.as_tensor(data["x"], dtype=torch.float32, device=self.device)
        with torch.no_grad():
            out = {
                "energy_data": float(self.energy(x).mean()),
                "energy_buffer": float(self.energy(self.buffer.samples).mean()),
            }
        if "label" in data:
            label = torch.as_tensor(data["label"]).cpu().numpy()
            known = label >= 0
            if known.sum() > 1:
                scores = cluster_scores(self.assign(x[torch.as_tensor(known)]), label[known])
                out.update({k: scores[k] for k in ("nmi", "hungarian_accuracy", "num_clusters")})
        return out

    # ----- new rows, names, figures -------------------------------------------------------------

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """``num`` points drawn from p_theta(x) by SGLD (200 steps from uniform starts in the
        box), with their clusters argmax_y f(x)[y] as ``label``."""
        check_positive_int("num", num)
        x = self.sample_energy(num, seed=seed)
        return {"x": x, "label": torch.as_tensor(self.assign(x), dtype=torch.long)}

    def dims(self) -> dict[str, list[str]]:
        return {"x": ["point", "coordinate"]}

    def figures(self, guide, data, *, idata=None) -> dict:
        """The clusters and energy landscape over the data, and SGLD samples."""
        return {"clusters": lambda: cluster_figure(self, data)}


def cluster_figure(model: GEDI, data, *, ax=None, title: str = "GEDI", samples: int = 300):
    """The data coloured by cluster (argmax f) over the energy's contours, with SGLD
    samples of p_theta(x) (crosses)."""
    import matplotlib.pyplot as plt

    x = torch.as_tensor(data["x"], dtype=torch.float32).cpu()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
    low, high = x.min(0).values - 0.5, x.max(0).values + 0.5
    gx, gy = torch.meshgrid(
        torch.linspace(float(low[0]), float(high[0]), 80),
        torch.linspace(float(low[1]), float(high[1]), 80),
        indexing="xy",
    )
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1).to(model.device)
    with torch.no_grad():
        energy = model.energy(grid).cpu().reshape(gx.shape)
    ax.contourf(gx, gy, -energy, levels=20, cmap="Greys", alpha=0.6)
    ax.scatter(x[:, 0], x[:, 1], c=model.assign(x), s=4, cmap="coolwarm")
    if samples:
        new = model.sample_energy(samples, seed=0).cpu()
        ax.scatter(new[:, 0], new[:, 1], marker="x", s=8, c="g", alpha=0.6, label="SGLD")
        ax.legend(fontsize=7, loc="lower left")
    ax.set_xlim(float(low[0]), float(high[0]))
    ax.set_ylim(float(low[1]), float(high[1]))
    ax.set_title(title, fontsize=9)
    return fig if fig is not None else ax.figure
