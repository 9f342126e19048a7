"""GCRL: invariant and variant latents of a trajectory, with the environment enumerated.

Bagi, Gharaee, Schulte & Crowley (2023), "Generative Causal Representation Learning for
Out-of-Distribution Motion Forecasting", ICML 2023 (arXiv:2302.08635); code
github.com/sshirahmad/GCRL. Past X (P x 2), future Y (F x 2), per trajectory n::

    z_n ~ T_z # Normal(0, I)                      invariant latent, flow prior (shared)
    e_n ~ Categorical(softmax(pi))               environment, pi learnable (init -1)
    s_n ~ T_s # Normal(e_n 1, (e_n + 1) I)        variant latent, environment mixture
    X_n ~ Normal(dec_past(z_n, s_n), sigma^2 I)
    Y_n ~ Normal(dec_fut(z_n, s_n), sigma^2 I)

T_z and T_s are stacks of Pyro affine coupling layers (split 1 for 2-D latents, a
permutation between layers); the guide is amortized over the past only, q(z | X) q(s | X).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import Permute, affine_coupling
from pyro.ops.indexing import Vindex
from torch import nn
from torch.distributions import constraints

from guides import local
from guides.encoders import NormalEncoder, mlp
from guides.local import LocalOnlyGuide
from inference.data import Field
from inference.elbos import enumerating
from inference.metrics import displacement_errors, hungarian_accuracy
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_ints,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.models.gcrl.agents import make_agents
from zoo.registry import register

__all__ = ["GCRL", "GCRLGuide", "INVARIANT_PARTS", "VARIANT_PARTS"]

#: the model's parts that are shared across environments (frozen when adapting)
INVARIANT_PARTS = ("encoder", "flow_z")
#: the parts a new environment adapts (the spec: variant encoder, decoders, s-flow, pi)
VARIANT_PARTS = ("style_encoder", "dec_past", "dec_future", "flow_s", "env_logits")


def _coupling_stack(dim: int, layers: int, hidden: int) -> nn.ModuleList:
    """``layers`` affine coupling layers on a ``dim`` vector (split ``dim // 2``, at least
    1), to be applied with a reversal between consecutive layers."""
    split = max(1, dim // 2)
    return nn.ModuleList(
        affine_coupling(dim, hidden_dims=[hidden], split_dim=split) for _ in range(layers)
    )


def _transforms(stack: nn.ModuleList, dim: int) -> list:
    reverse = Permute(torch.arange(dim - 1, -1, -1))
    out: list = []
    for i, layer in enumerate(stack):
        if i:
            out.append(reverse)
        out.append(layer)
    return out


class GCRLGuide(LocalOnlyGuide):
    """The model's own guide: the amortized q(z | X) q(s | X) and nothing else (the model
    has no global latents), so it never traces the model and runs under any ELBO."""


@register
class GCRL(ZooModel):
    """Generative causal representation learning for motion forecasting, paper 36 (Bagi
    et al., ICML 2023). See the module doc for the generative story.

    ``model`` sums the environment out exactly (the prior of s is the mixture
    sum_e p(e) T_s # N(e 1, (e + 1) I)); under an enumeration handler (``elbo="enum"``:
    TraceEnum_ELBO with max_plate_nesting 1) it runs :meth:`enumerated_model`, with ``e`` a
    site enumerated in parallel, which gives the same ELBO. p(e | s) is
    :meth:`env_posterior` (``infer_discrete`` replays the summed form: give it
    :meth:`enumerated_model`). An adaptation: the paper's decoupled loss adds a best-of-20
    L2 on Y; here Y has the Gaussian likelihood of the spec's Pyro mapping, and the style
    encoder sees the past itself (the paper's MLP mode feeds it an augmented view). Adapting
    to a new environment trains only :data:`VARIANT_PARTS` (:meth:`variant_prefixes`).
    Swapping the prior of ``z`` or ``s`` replaces the whole prior of that site, flow
    included.
    """

    name = "gcrl"
    summary = "Invariant and environment-variant trajectory latents (flow priors) for OOD forecasts"
    paper = 36
    local_sites = ("z", "s")
    # (no JIT: torch.jit.trace cannot walk the coupling layers, TransformModules)
    static_structure = False

    tiny = {"per_env": 40, "hidden": (16,), "flow_hidden": 8, "steps": 20}

    @dataclass
    class Config(TrainConfig):
        past_steps: int = 8
        future_steps: int = 12
        z_dim: int = 2
        s_dim: int = 2
        num_envs: int = 5
        flow_layers: int = 3  # 0: no flows, a learnable mean and scale per environment
        flow_hidden: int = 32
        hidden: tuple[int, ...] = (64, 64)
        obs_scale: float = 0.1  # sigma of the past and future likelihoods (metres)
        per_env: int = 300  # default data: agents per training environment
        train_envs: tuple[int, ...] = (0, 1, 2)
        noise: float = 0.02  # default data: position noise (metres)
        holdout: float = 0.15
        batch_size: int = 128
        lr: float = 3e-3
        steps: int | None = 3000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        past, future, latent = 2 * c.past_steps, 2 * c.future_steps, c.z_dim + c.s_dim
        hidden = list(c.hidden)
        self.encoder = NormalEncoder(past, c.z_dim, hidden)
        self.style_encoder = NormalEncoder(past, c.s_dim, hidden)
        self.dec_past = mlp([latent, *hidden, past])
        self.dec_future = mlp([latent, *hidden, future])
        self.flow_z = _coupling_stack(c.z_dim, c.flow_layers, c.flow_hidden)
        self.flow_s = _coupling_stack(c.s_dim, c.flow_layers, c.flow_hidden)
        self.env_logits = nn.Parameter(torch.full((c.num_envs,), -1.0))
        env = torch.arange(c.num_envs, dtype=torch.float32)[:, None].expand(c.num_envs, c.s_dim)
        loc, scale = env.clone(), (env + 1.0).sqrt()
        if c.flow_layers:  # the paper's fixed components in flow space
            self.register_buffer("s_loc", loc)
            self.register_buffer("s_log_scale", scale.log())
        else:
            self.s_loc = nn.Parameter(loc)
            self.s_log_scale = nn.Parameter(scale.log())
        if priors:
            self.set_priors(priors)

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(
            c, "past_steps", "future_steps", "z_dim", "s_dim", "num_envs", "per_env"
        )
        if c.past_steps < 2:
            raise ConfigError(f"past_steps must be >= 2, got {c.past_steps}")
        require_non_negative_ints(c, "flow_layers")
        require_positive_ints(c, "flow_hidden")
        if c.flow_layers and min(c.z_dim, c.s_dim) < 2:
            raise ConfigError(
                f"affine coupling flows need z_dim and s_dim >= 2 (got {c.z_dim}, {c.s_dim}); "
                "set flow_layers=0 for 1-D latents"
            )
        require_positive_sizes(c, "hidden")
        require_positive_numbers(c, "obs_scale")
        require_non_negative_numbers(c, "noise")
        if not c.train_envs or any(not 0 <= e < c.num_envs for e in c.train_envs):
            raise ConfigError(
                f"train_envs must be environments in 0..{c.num_envs - 1}, got {c.train_envs}"
            )

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "past": Field(shape=(c.past_steps, 2), doc="observed positions (m), the last at 0"),
            "future": Field(shape=(c.future_steps, 2), doc="positions to forecast (m)"),
            "env": Field(
                dtype="int",
                support=constraints.integer_interval(-1, c.num_envs - 1),
                doc="true environment for scoring only (-1: unknown); never used in training",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("past", "future")

    def agents(self, seed: int = 0, envs: tuple[int, ...] | None = None, per_env=None):
        """The raw synthetic agents (:func:`~zoo.models.gcrl.agents.make_agents`) at this
        config's lengths and noise, with their true invariant and variant factors."""
        c = self.config
        return make_agents(
            seed,
            c.train_envs if envs is None else envs,
            c.per_env if per_env is None else per_env,
            past_steps=c.past_steps,
            future_steps=c.future_steps,
            noise=c.noise,
        )

    def rows(self, raw: dict) -> dict[str, torch.Tensor]:
        """The model's data fields of a :meth:`agents` draw, validated."""
        return self.validate({k: raw[k] for k in ("past", "future", "env")})

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Agents of the training environments (:attr:`Config.train_envs`)."""
        return self.rows(self.agents(seed))

    # ----- priors and the generative model ---------------------------------------------------

    def _s_components(self, env=None) -> dist.Distribution:
        loc, scale = self.s_loc, self.s_log_scale.exp()
        if env is not None:
            loc, scale = Vindex(loc)[..., env, :], Vindex(scale)[..., env, :]
        return dist.Normal(loc, scale).to_event(1)

    def _push(self, base: dist.Distribution, stack: nn.ModuleList, dim: int) -> dist.Distribution:
        if not len(stack):
            return base
        return dist.TransformedDistribution(base, _transforms(stack, dim))

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        base_z = dist.Normal(torch.zeros(c.z_dim), 1.0).to_event(1)
        mixture = dist.MixtureSameFamily(
            dist.Categorical(logits=self.env_logits), self._s_components()
        )
        return {
            "z": self._push(base_z, self.flow_z, c.z_dim),
            "s": self._push(mixture, self.flow_s, c.s_dim),
        }

    def _observe(self, z, s, batch) -> None:
        c = self.config
        h = torch.cat([z, s], -1)
        past = self.dec_past(h).unflatten(-1, (c.past_steps, 2))
        future = self.dec_future(h).unflatten(-1, (c.future_steps, 2))
        pyro.sample("past", dist.Normal(past, c.obs_scale).to_event(2), obs=batch["past"])
        pyro.sample("future", dist.Normal(future, c.obs_scale).to_event(2), obs=batch["future"])

    def model(self, batch) -> None:
        if enumerating():
            return self.enumerated_model(batch)
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            s = pyro.sample("s", self.prior("s"))
            self._observe(z, s, batch)

    def enumerated_model(self, batch) -> None:
        """The same joint with each trajectory's environment ``e`` a site, enumerated in
        parallel (TraceEnum_ELBO with max_plate_nesting=1, ``infer_discrete``)."""
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            if "s" in self.priors:  # a swapped prior of s does not depend on e
                s = pyro.sample("s", self.prior("s"))
            else:
                e = pyro.sample(
                    "e",
                    dist.Categorical(logits=self.env_logits),
                    infer={"enumerate": "parallel"},
                )
                prior = self._push(self._s_components(e), self.flow_s, self.config.s_dim)
                s = pyro.sample("s", prior)
            self._observe(z, s, batch)

    # ----- guide ------------------------------------------------------------------------------

    def local_guide(self, batch, global_values=None) -> None:
        x = batch["past"].flatten(-2)
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, x)
            local.sample("z", loc, scale, context=context)
            loc, scale, context = local.encode(self, x, name="style_encoder")
            local.sample("s", loc, scale, context=context)

    def default_guide(self) -> torch.nn.Module:
        return GCRLGuide(self)

    def variant_prefixes(self, *, decoders: bool = True) -> list[str]:
        """``fit(..., trainable=...)`` prefixes of the parts a new environment adapts
        (the spec's: style encoder, decoders, s-flow, mixture logits; ``decoders=False``
        keeps the decoders fixed too). The invariant encoder and z-flow stay fixed."""
        parts = [p for p in VARIANT_PARTS if decoders or not p.startswith("dec_")]
        if not self.config.flow_layers:
            parts.remove("flow_s")
            parts += ["s_loc", "s_log_scale"]
        return [f"model.{p}" for p in parts]

    # ----- forecasts and scores ---------------------------------------------------------------

    def latents(self, guide, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoders' means of q(z | X) and q(s | X) (the guide's encoders)."""
        x = torch.as_tensor(past, dtype=torch.float32, device=self.device).flatten(-2)
        with torch.no_grad(), local.using(guide):
            z = local.encode(self, x)[0]
            s = local.encode(self, x, name="style_encoder")[0]
        return z, s

    def forecast(self, guide, past: torch.Tensor) -> torch.Tensor:
        """The future decoded at the means of q(z | X) and q(s | X), (N, F, 2)."""
        z, s = self.latents(guide, past)
        with torch.no_grad():
            out = self.dec_future(torch.cat([z, s], -1))
        return out.unflatten(-1, (self.config.future_steps, 2))

    def env_posterior(self, s: torch.Tensor) -> torch.Tensor:
        """p(e | s), (N, E), from the mixture prior of s."""
        with torch.no_grad():
            components = self._push(self._s_components(), self.flow_s, self.config.s_dim)
            log_joint = components.log_prob(s[:, None, :]) + self.env_logits.log_softmax(-1)
        return log_joint.softmax(-1)

    def evaluate(self, guide, data) -> dict:
        """ADE and FDE of the forecast at the latents' means (m); where ``env`` is known,
        the Hungarian-matched accuracy of argmax p(e | s) against it."""
        pred = self.forecast(guide, data["past"])
        ade, fde = displacement_errors(pred, data["future"])
        out = {"ade": ade, "fde": fde}
        env = data["env"].cpu().numpy()
        known = env >= 0
        if known.any():
            _, s = self.latents(guide, data["past"][torch.as_tensor(known)])
            pred_env = self.env_posterior(s).argmax(-1).cpu().numpy()
            out["env_accuracy"] = hungarian_accuracy(pred_env, env[known], self.config.num_envs)
        return out

    # ----- new rows, names, figures -----------------------------------------------------------

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """New trajectories from the prior of z and s; ``env`` is -1 (the environment is
        summed out, not drawn)."""
        rows = super().sample_new_rows(
            num, data=data, guide=guide, draws=draws, seed=seed, mean=mean
        )
        rows["env"] = torch.full_like(rows["env"], -1)
        return rows

    def dims(self) -> dict[str, list[str]]:
        return {
            "z": ["trajectory", "z_dim"],
            "s": ["trajectory", "s_dim"],
            "past": ["trajectory", "past_step", "xy"],
            "future": ["trajectory", "future_step", "xy"],
        }

    def figures(self, guide, data, *, idata=None) -> dict:
        """Forecasts of six trajectories (past, true future, the forecast at the means)."""
        if guide is None:
            return {}
        return {"forecasts": lambda: forecast_figure(self, guide, data)}


def forecast_figure(model: GCRL, guide, data, rows: int = 6, others: dict | None = None):
    """Past (grey), true future (black) and forecasts (the model's, and ``others``: name ->
    (N, F, 2) forecasts of the same rows) of the first ``rows`` trajectories."""
    import matplotlib.pyplot as plt

    past = data["past"][:rows].cpu().numpy()
    future = data["future"][:rows].cpu().numpy()
    pred = model.forecast(guide, data["past"][:rows]).cpu().numpy()
    cols = min(rows, 3)
    fig, axes = plt.subplots(
        math.ceil(rows / cols), cols, figsize=(3.2 * cols, 3.0 * math.ceil(rows / cols))
    )
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        if i >= len(past):
            ax.axis("off")
            continue
        ax.plot(past[i, :, 0], past[i, :, 1], ".-", color="0.6", label="past")
        ax.plot(future[i, :, 0], future[i, :, 1], ".-", color="k", label="future")
        ax.plot(pred[i, :, 0], pred[i, :, 1], "--", label="GCRL")
        for name, other in (others or {}).items():
            other = np.asarray(other)[: len(past)]
            ax.plot(other[i, :, 0], other[i, :, 1], ":", label=name)
        ax.set_aspect("equal", "datalim")
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
