"""Latent program network (LPN): a latent space of programs, searched by gradient ascent.

Macfarlane & Bonnet (2024), "Searching Latent Program Spaces", NeurIPS 2025
(arXiv:2411.08706); code github.com/clement-bonnet/lpn (JAX, ported). A task m is a set of
input-output pairs (x_mi, y_mi) made by one program; the program is a latent vector::

    z_m ~ N(0, I_dz)                                       the program (dz = 2)
    y_mi | x_mi, z_m ~ prod_pixels Categorical(softmax(dec(x_mi, z_m)))    i = 1..P

The encoder reads one pair, q(z | x_i, y_i) = N(mu_i, diag sigma_i^2). Inference is
semi-amortised: a starting latent from the encoder is refined by K gradient-ascent steps
on the decoder's log likelihood of the pairs, ``z <- z + alpha grad_z sum_j log p(y_j | x_j,
z)`` (:func:`inference.latent_search.refine`; first order, the paper's stop-gradient, by
default). At test time z^0 is the mean of the demonstration pairs' encoder means and N
plain ascent steps (:func:`inference.latent_search.search`, ``optimizer="sgd"``) keep the
best-likelihood latent, which decodes the query input.

Two training objectives (``objective``):

- ``loo`` (default), the paper's leave-one-out loss (Eq. 6), implemented faithfully. Each pair has
  its own latent z_mj ~ q(z | x_mj, y_mj) (reparameterised); pair i is reconstructed from
  z'_mi = R_K(mean_{j != i} z_mj), the mean of the *other* pairs' latents refined by K steps
  on the *other* pairs' likelihood (pair i never reconstructs itself)::

      L = sum_i -log p(y_mi | x_mi, z'_mi) + beta sum_i KL(q(z | x_mi, y_mi) || N(0, I))

  In Pyro this is an ELBO-shaped loss of a pseudo-likelihood, not of a joint density: the
  model draws the per-pair latents z_mj ~ N(0, I) under ``poutine.scale(beta)``, and the
  observed site ``y`` has the leave-one-out likelihood above (each y_mi given z'_mi, a
  function of the other pairs' latents and outputs); the guide is the per-pair encoder,
  scaled by beta too. Trace_ELBO then gives L with a one-draw KL estimate,
  TraceMeanField_ELBO (``elbo="meanfield"``) with the paper's analytic KL. It is *not*
  a lower bound on the evidence of the generative story above.
- ``elbo``, the analogue: the generative story above with one z_m per task, and the
  beta-ELBO ``E_q[sum_i log p(y_mi | x_mi, z_m)] - beta KL(q(z_m | task) || N(0, I))`` with
  the semi-amortised guide q(z_m | task) = N(R_K(mean_i mu_mi), mean_i sigma_mi), the
  refinement on the likelihood of all the task's pairs (the guide may read every pair; the
  likelihood then sees pair i through z_m, which the leave-one-out loss forbids).

Data: the spec's pattern tasks (:mod:`zoo.models.lpn.tasks`): 4 x 4 grids, a marker pixel, a
2 x 2 pattern pasted at the marker, 4 pairs per task. One change for the zoo's budget: the
patterns draw from colours 1-3 by default (81 programs), not 1-9 (6561), with which the
2-D latent space was barely learnt in 2000 steps (exact match near 0 at every test step
count); ``pattern_colours=9`` restores the spec's tasks. ``evaluate`` predicts each task's
last pair from the others (their encoder means, then 0/10/100 ascent steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from guides import local
from guides.encoders import NormalEncoder, mlp
from guides.local import LocalOnlyGuide
from inference.data import Field
from inference.latent_search import refine, search
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    check_positive_int,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.models.lpn.tasks import COLOURS, pattern_tasks
from zoo.registry import register

__all__ = ["LPN", "LPNGuide", "OBJECTIVES"]

#: the decoder's activations
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "softplus": nn.Softplus}
#: training objectives: the paper's leave-one-out loss, the beta-ELBO analogue
OBJECTIVES = ("loo", "elbo")


def one_hot(grid: torch.Tensor) -> torch.Tensor:
    """(..., H, W) colours -> (..., H * W * 10) one-hot features."""
    return nn.functional.one_hot(grid.long(), COLOURS).float().flatten(-3)


class LPNGuide(LocalOnlyGuide):
    """The model's own guide: its amortised (and, for ``objective="elbo"``, refined) q(z) and
    nothing else (the model has no global latents)."""


@register
class LPN(ZooModel):
    """Latent program network, paper 18 (Macfarlane & Bonnet, NeurIPS 2025), trained with
    the paper's leave-one-out loss (``objective="loo"``; see the module doc for the story,
    the loss, and why it is a pseudo-likelihood). ``refine_steps`` is K, the gradient steps
    on the latent inside training; ``test_steps`` the ascent steps ``evaluate`` reports.
    The KL weight beta (``beta``, the paper's ``prior_kl_coeff``) scales the prior site and
    the guide's site alike.
    """

    name = "lpn"
    summary = "Latent program network: pairs -> program latent, leave-one-out loss, test search"
    paper = 18
    local_sites = ("z",)
    static_structure = False  # the refinement takes autograd steps inside the loss

    tiny = {"tasks": 200, "hidden": (32,), "steps": 20, "batch_size": 32}

    @dataclass
    class Config(TrainConfig):
        objective: str = "loo"  # one of OBJECTIVES
        latent_dim: int = 2
        hidden: tuple[int, ...] = (128, 128)
        activation: str = "softplus"  # the decoder's: one of ACTIVATIONS (smooth in z)
        refine_steps: int = 1  # K, gradient steps on the latent in training
        refine_lr: float = 0.1  # alpha, their step size
        second_order: bool = False  # differentiate through the steps (paper: stop-gradient)
        beta: float = 1e-3  # weight of the KL to the prior (prior_kl_coeff)
        test_steps: tuple[int, ...] = (0, 10, 100)  # ascent steps evaluate reports
        test_lr: float = 0.1
        test_optimizer: str = "sgd"  # plain ascent, the best latent kept; or "adam"
        tasks: int = 10000  # default data: tasks
        pairs: int = 4  # pairs per task
        grid: int = 4
        pattern: int = 2
        pattern_colours: int = 3  # patterns draw colours 1..pattern_colours (spec: 9)
        holdout: float = 0.1
        batch_size: int = 128
        lr: float = 3e-3
        steps: int | None = 3000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        cells = c.grid * c.grid * COLOURS
        self.encoder = NormalEncoder(2 * cells, c.latent_dim, list(c.hidden))
        self.decoder = mlp([cells + c.latent_dim, *c.hidden, cells], ACTIVATIONS[c.activation])
        if priors:
            self.set_priors(priors)

    def check_config(self) -> None:
        c = self.config
        if c.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {list(OBJECTIVES)}, got {c.objective!r}")
        require_positive_ints(c, "latent_dim", "tasks", "grid", "pattern")
        if isinstance(c.pairs, bool) or not isinstance(c.pairs, int) or c.pairs < 2:
            raise ConfigError(f"pairs must be an integer >= 2 (one left out), got {c.pairs!r}")
        if c.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {list(ACTIVATIONS)}, got {c.activation!r}"
            )
        if not (isinstance(c.pattern_colours, int) and 1 <= c.pattern_colours <= COLOURS - 1):
            raise ConfigError(f"pattern_colours must be in 1..9, got {c.pattern_colours!r}")
        if c.pattern > c.grid:
            raise ConfigError(f"pattern ({c.pattern}) must fit in the grid ({c.grid})")
        require_positive_sizes(c, "hidden")
        require_non_negative_ints(c, "refine_steps")
        require_positive_numbers(c, "refine_lr", "test_lr", "beta")
        if not c.test_steps or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in c.test_steps
        ):
            raise ConfigError(f"test_steps must be integers >= 0, got {c.test_steps}")
        if c.test_optimizer not in ("sgd", "adam"):
            raise ConfigError(f"test_optimizer must be 'sgd' or 'adam', got {c.test_optimizer!r}")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        shape = (c.pairs, c.grid, c.grid)
        colours = constraints.integer_interval(0, COLOURS - 1)
        return {
            "x": Field(shape, "int", colours, doc="input grids, one per pair (colours 0-9)"),
            "y": Field(shape, "int", colours, doc="output grids, one per pair (colours 0-9)"),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y",)

    def tasks(self, num: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """``num`` seeded pattern tasks at this config's sizes (default :attr:`Config.tasks`),
        with the true ``pattern`` of each beside ``x`` and ``y``."""
        c = self.config
        return pattern_tasks(
            c.tasks if num is None else num,
            pairs=c.pairs,
            grid=c.grid,
            size=c.pattern,
            colours=c.pattern_colours,
            seed=seed,
        )

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        raw = self.tasks(seed=seed)
        return self.validate({"x": raw["x"], "y": raw["y"]})

    # ----- the decoder and its likelihood ------------------------------------------------------

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """dec(x, z): (..., H, W) inputs and (..., dz) latents -> (..., H, W, 10) logits."""
        features = one_hot(x)
        lead = torch.broadcast_shapes(features.shape[:-1], z.shape[:-1])
        h = torch.cat([features.expand(*lead, -1), z.expand(*lead, -1)], -1)
        return self.decoder(h).unflatten(-1, (*x.shape[-2:], COLOURS))

    def pair_loglik(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(y | x, z) summed over pixels, broadcast over the leading dimensions."""
        logp = self.logits(x, z).log_softmax(-1)
        lead = logp.shape[:-1]
        return logp.gather(-1, y.expand(lead).unsqueeze(-1)).squeeze(-1).sum((-2, -1))

    def _refine(self, z0: torch.Tensor, loglik) -> torch.Tensor:
        """K steps of :func:`refine` on ``z0`` (..., dz) for the objective ``loglik(z)``
        (one value per latent), over the leading dimensions flattened."""
        c = self.config
        if c.refine_steps == 0:
            return z0
        lead = z0.shape[:-1]

        def objective(flat: torch.Tensor) -> torch.Tensor:
            return loglik(flat.reshape(z0.shape)).reshape(-1)

        flat = refine(
            z0.reshape(-1, z0.shape[-1]),
            objective,
            steps=c.refine_steps,
            lr=c.refine_lr,
            create_graph=c.second_order,
        )
        return flat.reshape(*lead, -1)

    def loo_latents(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z'_i: the mean of the other pairs' latents, refined on the other pairs'
        likelihood. ``z`` (..., B, P, dz) per-pair latents; ``x``, ``y`` (B, P, H, W)."""
        pairs = z.shape[-2]
        start = (z.sum(-2, keepdim=True) - z) / (pairs - 1)  # (..., B, P_i, dz)
        others = 1.0 - torch.eye(pairs, device=z.device)  # [i, j]: pair j helps predict i

        def loglik(zi: torch.Tensor) -> torch.Tensor:
            # every pair j at every candidate z_i: (..., B, P_i, P_j)
            values = self.pair_loglik(x.unsqueeze(-4), y.unsqueeze(-4), zi.unsqueeze(-2))
            return (values * others).sum(-1)

        return self._refine(start, loglik)

    # ----- priors and the model ------------------------------------------------------------------

    def _z_shape(self) -> tuple[int, ...]:
        c = self.config
        return (c.pairs, c.latent_dim) if c.objective == "loo" else (c.latent_dim,)

    def default_priors(self) -> dict[str, dist.Distribution]:
        shape = self._z_shape()
        return {"z": dist.Normal(torch.zeros(shape), 1.0).to_event(len(shape))}

    def model(self, batch) -> None:
        c = self.config
        x, y = batch["x"], batch["y"]
        with self.data_plate(batch):
            with poutine.scale(scale=c.beta):
                z = pyro.sample("z", self.prior("z"))
            if c.objective == "loo":
                logits = self.logits(x, self.loo_latents(z, x, y))
            else:
                logits = self.logits(x, z.unsqueeze(-2))
            pyro.sample("y", dist.Categorical(logits=logits).to_event(3), obs=y)

    # ----- guide ------------------------------------------------------------------------------

    def pair_features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([one_hot(x), one_hot(y)], -1)

    def local_guide(self, batch, global_values=None) -> None:
        c = self.config
        x, y = batch["x"], batch["y"]
        with self.data_plate(batch):
            loc, scale, hidden = local.encode(self, self.pair_features(x, y))
            if c.objective == "loo":  # one latent per pair, the encoder's own
                with poutine.scale(scale=c.beta):
                    local.sample("z", loc, scale, context=hidden.flatten(-2), event_dim=2)
                return
            loc = self._refine(
                loc.mean(-2), lambda z: self.pair_loglik(x, y, z[..., None, :]).sum(-1)
            )
            with poutine.scale(scale=c.beta):
                local.sample("z", loc, scale.mean(-2), context=hidden.mean(-2))

    def default_guide(self) -> torch.nn.Module:
        return LPNGuide(self)

    # ----- test-time search and scores -----------------------------------------------------------

    def encode_mean(self, guide, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z^0 of each task: the mean over its pairs of the encoder's means, (B, dz)."""
        with torch.no_grad(), local.using(guide):
            loc = local.encode(self, self.pair_features(x, y))[0]
        return loc.mean(-2)

    def infer(
        self,
        guide,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        *,
        lr: float | None = None,
        optimizer: str | None = None,
        z0: torch.Tensor | None = None,
    ):
        """The test-time search: from ``z0`` (default the encoder's mean over the pairs),
        ``steps`` ascent steps on ``sum_j log p(y_j | x_j, z)`` over the given pairs (x, y:
        (B, P, H, W)); a :class:`~inference.latent_search.SearchResult` (``.best``: the
        best-likelihood latent seen)."""
        c = self.config
        x, y = self._tensor(x), self._tensor(y)
        if z0 is None:
            z0 = self.encode_mean(guide, x, y)
        return search(
            lambda z: self.pair_loglik(x, y, z[:, None, :]).sum(-1),
            z0,
            steps=steps,
            lr=c.test_lr if lr is None else lr,
            optimizer=c.test_optimizer if optimizer is None else optimizer,
            modules=[self.decoder],
        )

    def _tensor(self, value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.long, device=self.device)

    def predict(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """argmax dec(x, z): the output grids of inputs ``x`` (B, H, W) under programs z."""
        with torch.no_grad():
            return self.logits(self._tensor(x), z).argmax(-1)

    def exact_match(self, guide, data, steps: Sequence[int] | None = None, **search_options):
        """Exact match of each task's last pair predicted from the others, after each number
        of ascent ``steps`` (default :attr:`Config.test_steps`): ``{n: fraction}``."""
        x, y = self._tensor(data["x"]), self._tensor(data["y"])
        z0 = self.encode_mean(guide, x[:, :-1], y[:, :-1])
        out = {}
        for n in self.config.test_steps if steps is None else steps:
            result = self.infer(guide, x[:, :-1], y[:, :-1], n, z0=z0, **search_options)
            pred = self.predict(result.best, x[:, -1])
            out[n] = float((pred == y[:, -1]).flatten(1).all(-1).float().mean())
        return out

    def evaluate(self, guide, data) -> dict:
        """Exact match (the paper's metric) of each task's last output, predicted from its
        other pairs after 0, 10 and 100 test-time ascent steps (``exact_match_N``)."""
        return {f"exact_match_{n}": v for n, v in self.exact_match(guide, data).items()}

    # ----- new rows, names, figures ----------------------------------------------------------

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """New tasks from the generative story: inputs of ``num`` resampled tasks, one
        program z ~ N(0, I) per task (the prior, whatever the objective), each pair's output
        drawn from dec(x_i, z) (``mean``: its most likely colours)."""
        check_positive_int("num", num)
        generator = torch.Generator().manual_seed(int(seed))
        x = torch.as_tensor(data["x"])
        rows = torch.randint(len(x), (num,), generator=generator)
        x = x[rows].to(self.device)
        z = torch.randn(num, 1, self.config.latent_dim, generator=generator).to(self.device)
        with self.inference_mode():
            logits = self.logits(x, z)
            if mean:
                y = logits.argmax(-1)
            else:
                u = torch.rand(logits.shape, generator=generator).to(self.device)
                y = (logits - (-u.clamp_min(1e-20).log()).log()).argmax(-1)  # Gumbel-max
        return {"x": x.cpu(), "y": y.cpu()}

    def dims(self) -> dict[str, list[str]]:
        z = ["task", "pair", "z_dim"] if self.config.objective == "loo" else ["task", "z_dim"]
        return {"z": z, "y": ["task", "pair", "row", "col"]}

    def figures(self, guide, data, *, idata=None) -> dict:
        """Tasks with their predictions after 0 and 100 ascent steps; the latent means of
        the tasks."""
        if guide is None:
            return {}
        return {
            "predictions": lambda: prediction_figure(self, guide, data),
            "latents": lambda: latent_figure(self, guide, data),
        }


# ----- figures -------------------------------------------------------------------------------

PALETTE = (
    np.array(
        [
            [0, 0, 0],
            [0, 116, 217],
            [255, 65, 54],
            [46, 204, 64],
            [255, 220, 0],
            [170, 170, 170],
            [240, 18, 190],
            [255, 133, 27],
            [127, 219, 255],
            [135, 12, 37],
        ]
    )
    / 255.0
)


def show_grid(ax, grid, title: str = "") -> None:
    """One grid in the ARC palette."""
    ax.imshow(PALETTE[np.asarray(grid)], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def prediction_figure(model: LPN, guide, data, rows: int = 4, steps: Sequence[int] = (0, 100)):
    """Each row a task: its demonstration pairs, the query input, the true output and the
    predictions after each number of ascent ``steps``."""
    import matplotlib.pyplot as plt

    x, y = model._tensor(data["x"][:rows]), model._tensor(data["y"][:rows])
    preds = [
        model.predict(model.infer(guide, x[:, :-1], y[:, :-1], n).best, x[:, -1]) for n in steps
    ]
    demos = x.shape[1] - 1
    cols = 2 * demos + 2 + len(steps)
    fig, axes = plt.subplots(len(x), cols, figsize=(0.9 * cols, 1.0 * len(x)), squeeze=False)
    for r in range(len(x)):
        panels = []
        for j in range(demos):
            panels += [(x[r, j], f"in {j + 1}"), (y[r, j], f"out {j + 1}")]
        panels += [(x[r, -1], "query"), (y[r, -1], "truth")]
        panels += [(p[r], f"{n} steps") for p, n in zip(preds, steps, strict=True)]
        for ax, (grid, title) in zip(axes[r], panels, strict=True):
            show_grid(ax, grid.cpu(), title if r == 0 else "")
    fig.tight_layout()
    return fig


def latent_figure(model: LPN, guide, data, num: int = 500):
    """The encoder's mean program latent of ``num`` tasks (first two dimensions), coloured by
    the pattern's top-left colour."""
    import matplotlib.pyplot as plt

    x, y = model._tensor(data["x"][:num]), model._tensor(data["y"][:num])
    z = model.encode_mean(guide, x, y).cpu().numpy()
    marker = (x == 1).float()
    colour = (y * marker).flatten(-3).sum(-1) / marker.flatten(-3).sum(-1)  # top-left colour
    fig, ax = plt.subplots(figsize=(4, 4))
    cols = PALETTE[colour.round().long().clamp(0, COLOURS - 1).cpu().numpy()]
    ax.scatter(z[:, 0], z[:, 1] if z.shape[1] > 1 else np.zeros(len(z)), c=cols, s=6)
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    ax.set_title("mean program latent per task (colour: pattern's top-left)")
    fig.tight_layout()
    return fig
