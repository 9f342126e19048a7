"""Forward modelling of action-free videos as a hidden Markov model, paper 22: Misra, Saran,
Xie, Lamb & Langford, "Towards Principled Representation Learning from Videos for
Reinforcement Learning", ICLR 2024 (arXiv:2403.13765).

An adaptation: the paper trains a state decoder phi: X -> [N] with a vector-quantized
bottleneck and a decoder that predicts x_{t+k} from phi(x_t) (forward modelling), or with a
temporal contrastive loss. Here forward modelling is the probabilistic model it stands for,
a discrete-state HMM with S = grid^2 states (the bottleneck), a learned transition matrix
(the forward model of the latent state) and a per-state mean image (the decoder); phi(x)
is the MAP state path of ``infer_discrete``. What it keeps: a discrete latent state learned
from video alone, decoded per frame, scored against the agent's true cell. The exogenous
distractors are not in the model (it is misspecified under them, as forward modelling of
the endogenous state is in the paper).
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
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from inference.data import DataError, Field, full_batch
from inference.metrics import match_classes
from zoo.base import ConfigError, TrainConfig, ZooModel, require_positive_numbers
from zoo.datasets.markov import empirical_transitions
from zoo.models.video_rl.gridworld import NOISES, render_gridworld
from zoo.registry import register

__all__ = ["VideoRL", "IsoNormal", "StateHMM"]


def _cross(value: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Inner products of frames ``value`` (V..., D) with states ``loc`` (L..., S, D), shaped
    (broadcast(V, L)..., S), as one batched matrix product over the dimensions where ``loc``
    varies (particles, draws), the others flattened into rows: never (..., S, D)."""
    n = max(value.dim() - 1, loc.dim() - 2)
    v = value.reshape((1,) * (n - value.dim() + 1) + value.shape)
    m = loc.reshape((1,) * (n - loc.dim() + 2) + loc.shape)
    outer = [i for i in range(n) if m.shape[i] > 1]
    inner = [i for i in range(n) if m.shape[i] == 1]
    v = v.expand(tuple(m.shape[i] if i in outer else v.shape[i] for i in range(n)) + v.shape[-1:])
    groups = math.prod(m.shape[i] for i in outer)
    rows = v.permute(outer + inner + [n]).reshape(groups, -1, v.shape[-1])
    table = m.permute(outer + inner + [n, n + 1]).reshape(groups, *m.shape[-2:])
    cross = torch.bmm(rows, table.transpose(1, 2))
    cross = cross.reshape([m.shape[i] for i in outer] + [v.shape[i] for i in inner] + [-1])
    order = outer + inner
    return cross.permute([order.index(i) for i in range(n)] + [n])


class IsoNormal(dist.TorchDistribution):
    """``Normal(loc, scale I)`` over the last dimension (event_dim 1, one scale per batch
    element). Its log density is computed as ``|x|^2 - 2 x.mu + |mu|^2`` with one matrix
    product when ``value`` is ``(..., 1, D)`` against ``loc`` ``(..., S, D)``, the way a
    hidden Markov model scores every frame under every state, so that the ``(..., S, D)``
    residuals are never formed."""

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        batch = torch.broadcast_shapes(loc.shape[:-1], scale.shape)
        self.loc = loc.expand(batch + loc.shape[-1:])
        self.scale = scale.expand(batch)
        super().__init__(batch, loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return IsoNormal(
            self.loc.expand(batch_shape + self.event_shape), self.scale.expand(batch_shape)
        )

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self.scale.unsqueeze(-1).pow(2).expand(self.loc.shape)

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale.unsqueeze(-1) * eps

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        dim = self.loc.shape[-1]
        var = self.scale.pow(2)
        if value.dim() >= 2 and value.shape[-2] == 1 and self.loc.dim() >= 2:
            # every frame against every state: batched (frames, D) x (D, S) products
            cross = _cross(value.squeeze(-2), self.loc)
            square = value.pow(2).sum(-1) - 2 * cross + self.loc.pow(2).sum(-1)
        else:
            square = (value - self.loc).pow(2).sum(-1)
        return -0.5 * square / var - dim * (self.scale.log() + 0.5 * math.log(2 * math.pi))


class StateHMM(dist.DiscreteHMM):
    """``DiscreteHMM`` whose ``log_prob`` runs the forward algorithm in rescaled linear
    space, one ``(S,) x (S, S)`` product per step (Pyro's parallel-scan form builds
    ``(..., H / 2, S, S, S)`` tensors in log space: slow for S = 25 on a CPU). Same value,
    same sampling."""

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StateHMM, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        value = value.unsqueeze(-1 - self.observation_dist.event_dim)
        emission = self.observation_dist.log_prob(value)  # (..., H, S)
        steps = emission.shape[-2]
        trans = self.transition_logits.expand(self.transition_logits.shape[:-3] + (steps, -1, -1))
        log_alpha = self.initial_logits.unsqueeze(-2)  # (..., 1, S)
        for t in range(steps):
            top = log_alpha.amax(-1, keepdim=True)
            alpha = torch.matmul((log_alpha - top).exp(), trans[..., t, :, :].exp())
            log_alpha = alpha.log() + top + emission[..., t, :].unsqueeze(-2)
        return log_alpha.logsumexp(-1).squeeze(-1)


@register
class VideoRL(ZooModel):
    """Forward modelling of action-free videos as an HMM, paper 22 (Misra et al., ICLR 2024).
    S = grid^2 latent states, D pixels per frame, episodes n of H frames::

        T_s   ~ Dirichlet(alpha 1_S)            row s of the transition matrix
        mu_s  ~ Normal(0, mean_scale^2 I_D)     mean image of state s (the emission)
        sigma ~ HalfNormal(1)                   pixel noise
        s_n0  ~ Categorical(1/S),  s_nt ~ Categorical(T_{s_n,t-1})
        x_nt  ~ Normal(mu_{s_nt}, sigma^2 I_D)

    ``model`` sums the states out exactly (``DiscreteHMM``, the forward algorithm);
    ``enumerated_model`` keeps each s_nt as a site, ``pyro.markov`` over time inside the
    plate over episodes, for ``TraceEnum_ELBO`` and ``infer_discrete`` (the state decoder
    phi(x): the MAP path given the globals). An adaptation of the paper's forward model (a
    VQ bottleneck and a pixel decoder): see the module doc. States are found up to
    permutation; scores use Hungarian matching.
    """

    name = "video_rl"
    summary = "HMM forward model of gridworld videos: enumerated states decode the agent"
    paper = 22
    max_plate_nesting = 1
    static_structure = True
    idata_rows = 20  # episodes of 2,000 pixels: the run's idata holds 20 of them

    tiny = {"grid": 2, "horizon": 6, "episodes": 40, "steps": 20}

    @dataclass
    class Config(TrainConfig):
        grid: int = 5  # S = grid^2 states; frames are (2 grid) x (2 grid)
        horizon: int = 20  # frames per episode
        episodes: int = 500  # default data
        noise: str = "iid"  # default data: one of gridworld.NOISES
        pixel_noise: float = 0.3  # default data: Gaussian pixel noise sd
        distractors: int = 3  # default data: blobs for the exogenous/iid_blobs noise
        distractor_value: float = -0.5  # default data: added on each blob's 2 x 2 square
        alpha: float = 1.0  # Dirichlet concentration of each transition row
        mean_scale: float = 1.0  # prior sd of the mean images
        holdout: float = 0.2
        lr: float = 0.05
        steps: int | None = 300

    def check_config(self) -> None:
        c = self.config
        for name, low in (("grid", 2), ("horizon", 2), ("episodes", 2), ("distractors", 0)):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if c.noise not in NOISES:
            raise ConfigError(f"noise must be one of {list(NOISES)}, got {c.noise!r}")
        if not math.isfinite(c.distractor_value):
            raise ConfigError(f"distractor_value must be finite, got {c.distractor_value!r}")
        require_positive_numbers(c, "pixel_noise", "alpha", "mean_scale")

    # ----- data -----------------------------------------------------------------------------

    @property
    def num_states(self) -> int:
        return self.config.grid**2

    @property
    def side(self) -> int:
        return 2 * self.config.grid

    def data_spec(self) -> dict[str, Field]:
        c, side = self.config, self.side
        return {
            "x": Field(
                shape=(c.horizon, side * side),
                image=(side, side),
                doc=f"episodes of {c.horizon} frames, each {side}x{side} pixels flattened",
            ),
            "state": Field(
                shape=(c.horizon,),
                dtype="int",
                support=constraints.integer_interval(-1, self.num_states - 1),
                doc="the agent's true cell per frame, for scoring only (-1: unknown)",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def data_error_hint(self, error: DataError) -> str | None:
        c = self.config
        if "shape" in str(error):
            return (
                f"each row is one episode of horizon={c.horizon} frames of "
                f"(2 grid)^2={self.side**2} pixels (grid={c.grid}); set horizon/grid to match"
            )
        return None

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """The spec's gridworld videos (:func:`~zoo.models.video_rl.gridworld.render_gridworld`)
        with the config's noise."""
        c = self.config
        raw = render_gridworld(
            seed,
            episodes=c.episodes,
            horizon=c.horizon,
            grid=c.grid,
            noise=c.noise,
            pixel_noise=c.pixel_noise,
            distractors=c.distractors,
            distractor_value=c.distractor_value,
        )
        return self.validate({"x": raw["x"], "state": raw["state"]})

    # ----- the model --------------------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        return {
            "trans": dist.Dirichlet(torch.full((self.num_states,), float(c.alpha))),
            "means": dist.Normal(0.0, float(c.mean_scale)),
            "sigma": dist.HalfNormal(1.0),
        }

    def _globals(self, frames: torch.Tensor):
        s, d = self.num_states, self.side**2
        trans = pyro.sample("trans", self.prior("trans").expand([s]).to_event(1))
        # the frames ride along in the site's infer dict, for the default guide's data start
        means = pyro.sample("means", self.prior("means").expand([s, d]).to_event(2),
                            infer={"frames": frames.detach().reshape(-1, d)})  # fmt: skip
        sigma = pyro.sample("sigma", self.prior("sigma"))
        return trans, means, sigma

    def hmm(self, trans, means, sigma, horizon: int) -> dist.DiscreteHMM:
        """The episode distribution with the states summed out. The first step's transition
        rows are all uniform, so s_0 ~ Categorical(1/S) whatever came before."""
        s = self.num_states
        logits = trans.clamp(min=1e-30).log().unsqueeze(-3)
        first = torch.full_like(logits, -math.log(s))
        logits = torch.cat([first, logits.expand(logits.shape[:-3] + (horizon - 1, s, s))], -3)
        emission = IsoNormal(means.unsqueeze(-3), sigma[..., None, None])
        initial = torch.zeros(s, device=means.device)
        return StateHMM(initial, logits, emission)

    def model(self, batch) -> None:
        x = batch["x"]
        trans, means, sigma = self._globals(x)
        with self.data_plate(batch):
            pyro.sample("x", self.hmm(trans, means, sigma, x.shape[-2]), obs=x)

    @config_enumerate
    def enumerated_model(self, batch) -> None:
        """The same joint with each state s_t a site, enumerated in parallel by
        ``TraceEnum_ELBO`` (``pyro.markov``: s_t depends on s_{t-1} only)."""
        x = batch["x"]
        trans, means, sigma = self._globals(x)
        uniform = torch.full((self.num_states,), 1.0 / self.num_states, device=x.device)
        with self.data_plate(batch):
            state = None
            for t in pyro.markov(range(x.shape[-2])):
                probs = uniform if state is None else Vindex(trans)[..., state, :]
                state = pyro.sample(f"s_{t}", dist.Categorical(probs))
                pyro.sample(
                    f"x_{t}", IsoNormal(Vindex(means)[..., state, :], sigma), obs=x[..., t, :]
                )

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """``(truth, data)``: the globals from the priors, then ``episodes`` episodes of
        ``horizon`` states and frames; the states are the data's ``state`` field."""
        c = self.config
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            trans, means, sigma = poutine.block(self._globals)(torch.zeros(0, self.side**2))
            state = torch.empty(c.episodes, c.horizon, dtype=torch.long)
            state[:, 0] = torch.randint(self.num_states, (c.episodes,))
            for t in range(1, c.horizon):
                state[:, t] = dist.Categorical(trans[state[:, t - 1]]).sample()
            x = means[state] + sigma * torch.randn(c.episodes, c.horizon, self.side**2)
        truth = {"trans": trans, "means": means, "sigma": sigma}
        return truth, self.validate({"x": x, "state": state})

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """New episodes from the fitted HMM; ``state`` is -1 (a new episode's states carry
        no names shared with the data)."""
        rows = super().sample_new_rows(
            num, data=data, guide=guide, draws=draws, seed=seed, mean=mean
        )
        rows["state"] = torch.full((num, self.config.horizon), -1, dtype=torch.long)
        return rows

    def dims(self) -> dict[str, list[str]]:
        return {
            "trans": ["state", "next_state"],
            "means": ["state", "pixel"],
            "x": ["episode", "time", "pixel"],
        }

    # ----- initialisation, decoding, scores -------------------------------------------------

    def init_values(self, data, seed: int = 0) -> dict[str, torch.Tensor]:
        """A start for the globals from the data: the mean images at S distinct random
        frames (seeded; EM-style restarts differ by ``seed``), uniform transitions and the
        pixel sd of the frames. Pass to ``guides.build("delta", model,
        init_loc_fn=init_to_value(values=...))``."""
        x = torch.as_tensor(data["x"]).reshape(-1, self.side**2)
        generator = torch.Generator().manual_seed(int(seed))
        pick = torch.randperm(len(x), generator=generator)[: self.num_states]
        s = self.num_states
        return {
            "means": x[pick].clone(),
            "trans": torch.full((s, s), 1.0 / s),
            "sigma": x.std().reshape(()),
        }

    def decode(self, globals_: dict, data, temperature: int = 0) -> torch.Tensor:
        """phi(x): the states of every frame, (episodes, horizon), by ``infer_discrete`` on
        the enumerated model with the globals fixed (temperature 0: the MAP path)."""
        batch = full_batch({"x": torch.as_tensor(data["x"])})
        values = {k: globals_[k] for k in ("trans", "means", "sigma")}
        fixed = poutine.condition(self.enumerated_model, data=values)
        decoded = infer_discrete(fixed, first_available_dim=-2, temperature=temperature)
        with torch.no_grad():
            trace = poutine.trace(decoded).get_trace(batch)
        steps = batch["x"].shape[-2]
        return torch.stack([trace.nodes[f"s_{t}"]["value"] for t in range(steps)], -1)

    def scores(self, globals_: dict, data) -> dict:
        """Hungarian-matched accuracy of the decoded states, and the mean L1 error of the
        transition rows (relabelled by the same matching) against the empirical transitions
        of the true states (frames with a known state)."""
        pred = self.decode(globals_, data).cpu().numpy()
        labels = torch.as_tensor(data["state"]).cpu().numpy()
        known = labels >= 0
        if not known.any():
            return {"note": "no states to score against (state = -1 everywhere)"}
        s = self.num_states
        perm = match_classes(pred[known], labels[known], s)
        out = {"accuracy": float(np.mean(perm[pred[known]] == labels[known]))}
        if known.all():
            truth = empirical_transitions(labels, s, smoothing=0.0)
            trans = globals_["trans"].detach().cpu().numpy()
            matched = np.empty_like(trans)
            matched[np.ix_(perm, perm)] = trans
            out["trans_l1"] = float(np.abs(matched - truth).sum(1).mean())
        return out

    def evaluate(self, guide, data) -> dict:
        """State-decoding accuracy (Hungarian) and transition error at the guide's median."""
        with torch.no_grad():
            median = guide.median(full_batch(data))
        return self.scores(median, data)

    def default_guide(self) -> torch.nn.Module:
        """MAP (AutoDelta) on the globals; the states are summed out or enumerated, never
        guided. The means start at S distinct random frames of the first batch (as
        :meth:`init_values` does for the whole data; random, hence seeded by the fit's
        seed): a start from the prior's draws lands in far worse optima."""
        from pyro.infer.autoguide import init_to_median

        import guides

        def init(site):
            if site["name"] != "means":
                return init_to_median(site)
            frames = site["infer"]["frames"]
            pick = torch.randperm(len(frames), device=frames.device)[: self.num_states]
            if len(pick) < self.num_states:
                raise DataError(
                    f"video_rl needs at least {self.num_states} frames in a batch "
                    f"to start its {self.num_states} state means, got {len(pick)}"
                )
            return frames[pick].clone()

        return guides.build("delta", self, init_loc_fn=init)
