"""PV-RNN (paper 3): a variational multiple-timescale RNN with no encoder.

Ahmadi & Tani (2019), "A Novel Predictive-Coding-Inspired Variational RNN Model for Online
Prediction and Recognition", Neural Computation 31(11). Structure checked against the
public implementation (h-idei/pvrnn_sa) as the spec describes it.

Generative story for a sequence n of T steps of x_t in R^D, with context units d_t = tanh(h_t)
of one MTRNN layer whose units have two time constants (tau_fast, tau_slow)::

    z_1 ~ N(0, I)                                                    (site z1, swappable)
    z_t | d_{t-1} ~ N(tanh(W_mu d_{t-1}), exp(W_sigma d_{t-1})^2),  t = 2..T   (site z)
    h_t = (1 - 1/tau) h_{t-1} + (1/tau)(W_dd d_{t-1} + W_zd z_t + b),   h_0 = 0
    x_t ~ N(tanh(W_o d_t + b_o), sigma_x^2)                           (site x)

The network's weights are point estimates. The posterior has no encoder: every training
sequence n has free *adaptive vectors* A_n in R^{T x 2Z},
q(z_t^(n)) = N(tanh(A^mu_{n,t}), exp(A^sigma_{n,t})^2), initialised to the prior's
pre-activations and indexed through the data plate's subsample. The meta-prior w weights
the KL: ``poutine.scale(w / Z)`` on z in the model *and* in the guide, so the ELBO's latent
part is -(w/Z) KL (w1/Z at t = 1). The loss is thus the implementations'
sum_t [||x_t - x_hat_t||^2 / (2 sigma_x^2) + w KL_t / Z], the KL divided by the number of
stochastic units Z; with the default sigma_x = 1/sqrt(2) the data term is the plain squared
error, so w means what it means in the paper.

New sequences have no adaptive vectors: *error regression* infers them online
(:meth:`PVRNN.error_regression`, by :func:`inference.online.sliding_window`): the network
frozen, fresh vectors for the last ``er_window`` steps fitted for ``er_steps`` Adam steps at
``er_lr`` (the implementation's window of 10 and lr 0.09; 20 steps per window where the spec
says about 50, to fit the zoo's time budget), the window slid one step, and the next
observation predicted from the prior's mean given the inferred past.

``posterior="encoder"`` swaps the adaptive vectors for a standard VRNN's filtering encoder
q(z_t | x_1..x_t) (a GRU, :class:`guides.encoders.SequenceEncoder`): the same generative
model, the baseline of the paper's comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from guides import local
from guides.encoders import SequenceEncoder
from inference.data import DATA_PLATE, DataError, Field
from inference.online import sliding_window
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.models.pv_rnn.network import MTRNN, SequencePrior
from zoo.models.pv_rnn.primitives import classify_segments, make_sequences, transition_kl
from zoo.registry import register

__all__ = ["PVRNN", "AdaptiveVectors", "POSTERIORS"]

#: the posterior's form: the paper's adaptive vectors, or a VRNN's filtering encoder
POSTERIORS = ("adaptive", "encoder")


class AdaptiveVectors(PyroModule):
    """Free posterior parameters A = (A^mu, A^sigma), (N, T, Z) each, one per sequence and
    step: q(z_t^(n)) = N(tanh(A^mu_{n,t}), exp(A^sigma_{n,t})^2). Created on the first call
    for the data set's N sequences (as an AutoGuide creates its parameters), from ``init``
    (the prior's pre-activations, (T, Z) each)."""

    def __init__(self):
        super().__init__()
        self.size: int | None = None

    def forward(self, index: torch.Tensor, size: int, init) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size is None:
            pre_mu, pre_sigma = init()
            self.mu = nn.Parameter(pre_mu.expand(size, *pre_mu.shape).clone())
            self.sigma = nn.Parameter(pre_sigma.expand(size, *pre_sigma.shape).clone())
            self.size = size
        elif size != self.size:
            raise ValueError(
                f"the adaptive vectors belong to the {self.size} training sequences, not to a "
                f"data set of {size}: infer new sequences' latents by error_regression"
            )
        return torch.tanh(self.mu[index]), self.sigma[index].exp()


class _WindowModel(nn.Module):
    """The generative model of one error-regression window: W steps from the network state
    ``h0`` (a context field) with the KL weighted by w. (A plain module holding the zoo
    model, whose parameters :func:`inference.online.sliding_window` freezes.)"""

    def __init__(self, owner: PVRNN):
        super().__init__()
        self.owner = owner

    def forward(self, batch) -> None:
        zoo_model = self.owner
        x = batch["x"]
        with zoo_model.data_plate(batch):
            prior = SequencePrior(zoo_model.net, batch["h0"], x.shape[-2])
            with poutine.scale(scale=zoo_model.kl_scale):
                z = pyro.sample("z", prior)
            h, _ = prior.states(z)
            zoo_model.observe(h, x)


class _WindowGuide(PyroModule):
    """Fresh adaptive vectors for one window, (B, W, Z) each."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, w: float):
        super().__init__()
        self.mu = nn.Parameter(mu.detach().clone())
        self.sigma = nn.Parameter(sigma.detach().clone())
        self.w = w

    def forward(self, batch) -> None:
        with pyro.plate(DATA_PLATE, batch.size, subsample=batch.index, dim=-1):
            with poutine.scale(scale=self.w):
                mu, sigma = self.mu[batch.index], self.sigma[batch.index]
                pyro.sample("z", dist.Normal(torch.tanh(mu), sigma.exp()).to_event(2))


@register
class PVRNN(ZooModel):
    """PV-RNN: variational MTRNN with per-sequence adaptive vectors and a meta-prior w.
    See the module doc."""

    name = "pv_rnn"
    summary = "PV-RNN: variational multiple-timescale RNN, adaptive vectors, meta-prior w"
    paper = 3
    local_sites = ("z1", "z")
    fixed_local_guide = (
        "the paper's per-step Gaussian posterior: adaptive vectors per training sequence, or "
        "with posterior=encoder a VRNN's filtering encoder"
    )

    tiny = {"length": 30, "num_sequences": 10, "hidden": 8, "steps": 20, "er_steps": 3}

    @dataclass
    class Config(TrainConfig):
        #: steps per sequence (the data's T)
        length: int = 100
        #: sequences in the default data (held out: ``holdout`` of them)
        num_sequences: int = 25
        holdout: float = 0.2
        #: context units d of the MTRNN layer
        hidden: int = 24
        #: stochastic units z
        latent: int = 2
        #: time constants of the fast and the slow half of the units
        tau: tuple[float, float] = (2.0, 8.0)
        #: meta-prior: the KL's weight for t >= 2
        w: float = 0.01
        #: the KL's weight at t = 1 (None: w)
        w1: float | None = None
        #: sd of the observation noise: 1/sqrt(2) makes the data term the paper's plain
        #: squared error sum_t ||x_t - x_hat_t||^2
        sigma_x: float = 0.7071
        #: "adaptive" (the paper) or "encoder" (a VRNN's filtering encoder)
        posterior: str = "adaptive"
        #: GRU units of the encoder (posterior="encoder")
        encoder_hidden: int = 32
        #: error regression: window length, Adam steps per window, learning rate
        er_window: int = 10
        er_steps: int = 20
        er_lr: float = 0.09
        #: sd of the default data's observation noise
        noise: float = 0.02
        lr: float = 0.01
        steps: int | None = 500

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.net = MTRNN(2, c.hidden, c.latent, tuple(c.tau))
        if c.posterior == "encoder":
            self.encoder = SequenceEncoder(2, c.latent, c.encoder_hidden, per_step=True)
        else:
            self.vectors = AdaptiveVectors()

    # ----- configuration and data ----------------------------------------------------------

    def check_config(self) -> None:
        c = self.config
        if c.posterior not in POSTERIORS:
            raise ConfigError(f"posterior must be one of {POSTERIORS}, got {c.posterior!r}")
        require_positive_ints(c, "length", "num_sequences", "hidden", "latent", "encoder_hidden")
        if c.length < 2:
            raise ConfigError(f"length must be >= 2 (z_1 and z_2..z_T), got {c.length}")
        if c.num_sequences < 2:
            raise ConfigError(f"num_sequences must be >= 2, got {c.num_sequences}")
        if len(c.tau) != 2 or not all(t >= 1 for t in c.tau):
            raise ConfigError(f"tau must be two time constants >= 1, got {c.tau}")
        require_positive_numbers(c, "w", "sigma_x", "er_lr")
        if c.w1 is not None and not c.w1 > 0:
            raise ConfigError(f"w1 must be positive (or None for w), got {c.w1!r}")
        if not 1 <= c.er_window < c.length:
            raise ConfigError(
                f"er_window must be in 1..length-1 = {c.length - 1}, got {c.er_window}"
            )
        require_positive_ints(c, "er_steps")
        require_non_negative_numbers(c, "noise")

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(
                shape=(self.config.length, 2),
                doc="2-D sequences, one per row: (length, 2) points",
            )
        }

    def data_error_hint(self, error: DataError) -> str | None:
        if "shape" in str(error):
            return (
                f"PV-RNN reads rows of (length, 2) points with length={self.config.length}; "
                "set length=T (--set length=T) for sequences of T steps"
            )
        return None

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        c = self.config
        x, _ = make_sequences(c.num_sequences, c.length, seed, noise=c.noise)
        return self.validate({"x": x})

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z1": dist.Normal(0.0, 1.0).expand([self.config.latent]).to_event(1)}

    # ----- model and guide -----------------------------------------------------------------

    @property
    def kl_scale(self) -> float:
        """The scale of the z site in model and guide: w / Z."""
        return self.config.w / self.config.latent

    @property
    def kl_scale1(self) -> float:
        """The scale of the z1 site in model and guide: w1 / Z."""
        w1 = self.config.w if self.config.w1 is None else self.config.w1
        return w1 / self.config.latent

    def observe(self, h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The observation site x given internal states h (..., T, H)."""
        loc = self.net.predict(h)
        return pyro.sample("x", dist.Normal(loc, self.config.sigma_x).to_event(2), obs=x)

    def model(self, batch) -> None:
        x = batch["x"]
        steps = x.shape[-2]
        with self.data_plate(batch):
            with poutine.scale(scale=self.kl_scale1):
                z1 = pyro.sample("z1", self.prior("z1"))
            h1 = self.net.step(self.net.zero_state(z1.shape[:-1]), z1)
            prior = SequencePrior(self.net, h1, steps - 1)
            with poutine.scale(scale=self.kl_scale):
                z = pyro.sample("z", prior)
            h, _ = prior.states(z)
            self.observe(torch.cat([h1.unsqueeze(-2), h], -2), x)

    def _prior_init(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's pre-activations along its mean path from h_0 = 0, (T, Z) each."""
        with torch.no_grad():
            h0 = self.net.zero_state(())
            _, h = self.net.generate(h0, steps - 1, mean=True)
            h_prev = torch.cat([h0.unsqueeze(0), h], 0)
            return self.net.prior_params(torch.tanh(h_prev))

    def posterior_params(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z_t) for the batch's sequences, (B, T, Z) each."""
        x = batch["x"]
        if self.config.posterior == "encoder":
            loc, scale, _ = local.encode(self, x)
            return loc, scale
        return self.vectors(batch.index, batch.size, lambda: self._prior_init(x.shape[-2]))

    def local_guide(self, batch, global_values=None) -> None:
        loc, scale = self.posterior_params(batch)
        with self.data_plate(batch):
            with poutine.scale(scale=self.kl_scale1):
                local.sample("z1", loc[..., 0, :], scale[..., 0, :])
            with poutine.scale(scale=self.kl_scale):
                local.sample("z", loc[..., 1:, :], scale[..., 1:, :], event_dim=2)

    def dims(self) -> dict[str, list[str]]:
        return {
            "z1": ["sequence", "latent"],
            "z": ["sequence", "later_step", "latent"],
            "x": ["sequence", "step", "coord"],
        }

    # ----- the paper's checks --------------------------------------------------------------

    @torch.no_grad()
    def kl_per_step(self, data, num_samples: int = 8) -> float:
        """Mean KL(q(z_t) || p(z_t | d_{t-1})) per step (nats, summed over the Z units),
        over the sequences of ``data`` (the training rows: the posterior's own), the prior's
        history drawn from q (``num_samples`` draws)."""
        from inference.data import full_batch

        batch = full_batch({k: torch.as_tensor(v) for k, v in data.items()})
        loc, scale = self.posterior_params(batch)
        q = dist.Normal(loc, scale)
        z = q.sample((num_samples,))
        h0 = self.net.zero_state(z.shape[:-2])
        _, d_prev = self.net.roll(z, h0)
        pre_mu, pre_sigma = self.net.prior_params(d_prev)
        p = dist.Normal(torch.tanh(pre_mu), pre_sigma.exp())
        return float(torch.distributions.kl_divergence(q, p).sum(-1).mean())

    @torch.no_grad()
    def generated_transitions(self, num: int = 60, seed: int = 0) -> dict[str, float]:
        """The KL of the transition frequencies of ``num`` sequences generated from the prior
        against the machine's (each 25-step segment read as its nearest primitive), and the
        segments' mean RMS distance to their primitive (how primitive-like they are)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            h0 = self.net.zero_state((num,))
            _, h = self.net.generate(h0, self.config.length)
            x = self.net.predict(h).cpu().numpy()
        states, errors = classify_segments(x)
        return {"transition_kl": transition_kl(states), "segment_rmse": float(errors.mean())}

    def error_regression(
        self,
        x: torch.Tensor,
        *,
        window: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """One-step predictions of new sequences ``x`` (B, T, D) by error regression:
        ``pred[:, t]`` for t >= window is x_t predicted from x_0..x_{t-1} alone (NaN
        before). The network is frozen; only each window's adaptive vectors are fitted."""
        c = self.config
        window = c.er_window if window is None else window
        steps = c.er_steps if steps is None else steps
        lr = c.er_lr if lr is None else lr
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        rows, length = x.shape[0], x.shape[1]
        if not 1 <= window < length:
            raise ValueError(f"window must be in 1..{length - 1}, got {window}")
        net = self.net
        pred = torch.full_like(x, float("nan"))
        state = {"h": net.zero_state((rows,)), "next": None}
        pre_mu, pre_sigma = self._prior_init(window)
        first = (pre_mu.expand(rows, -1, -1), pre_sigma.expand(rows, -1, -1))

        def new_window(end, previous):
            if previous is None:
                return _WindowGuide(*first, self.kl_scale), {"h0": state["h"]}
            with torch.no_grad():
                # the oldest step leaves the window: the start state moves past it on its
                # posterior mean; the new step's vectors start at the prior's pre-activations
                state["h"] = net.step(state["h"], torch.tanh(previous.mu[:, 0]))
                mu = torch.cat([previous.mu[:, 1:], state["next"][0].unsqueeze(1)], 1)
                sigma = torch.cat([previous.sigma[:, 1:], state["next"][1].unsqueeze(1)], 1)
            return _WindowGuide(mu, sigma, self.kl_scale), {"h0": state["h"]}

        windows = sliding_window(
            _WindowModel(self),
            {"x": x},
            new_window,
            window=window,
            steps=steps,
            lr=lr,
            stop=length - 1,
            seed=seed,
        )
        for end, guide, _ in windows:
            with torch.no_grad():
                h, _ = net.roll(torch.tanh(guide.mu), state["h"])
                last = h[:, -1]
                nxt = net.prior_params(torch.tanh(last))
                state["next"] = nxt
                pred[:, end] = net.predict(net.step(last, torch.tanh(nxt[0])))
        return pred

    @torch.no_grad()
    def filtering_predictions(self, x: torch.Tensor) -> torch.Tensor:
        """One-step predictions of ``x`` (B, T, D) by the filtering encoder
        (``posterior="encoder"``): z_1..z_{t-1} at the encoder's means given x_1..x_{t-1},
        then the prior's mean z_t; ``pred[:, 0]`` is NaN."""
        if self.config.posterior != "encoder":
            raise ValueError("filtering_predictions needs posterior='encoder'")
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        loc, _ = self.encoder(x)
        h, _ = self.net.roll(loc, self.net.zero_state((x.shape[0],)))
        h_prev = h[:, :-1]
        pre_mu, _ = self.net.prior_params(torch.tanh(h_prev))
        pred = torch.full_like(x, float("nan"))
        pred[:, 1:] = self.net.predict(self.net.step(h_prev, torch.tanh(pre_mu)))
        return pred

    def one_step_predictions(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Error regression (adaptive vectors) or the filtering encoder (``encoder``)."""
        if self.config.posterior == "encoder":
            return self.filtering_predictions(x)
        return self.error_regression(x, seed=seed)

    def evaluate(self, guide, data) -> dict:
        """The paper's checks on new sequences ``data`` (the held-out rows): the one-step
        prediction MSE (per coordinate, over steps er_window..T-1) by error regression (by
        the filtering encoder for ``posterior="encoder"``), and the generated transition
        frequencies' KL against the machine's, with the segments' RMS distance to their
        primitive."""
        x = torch.as_tensor(data["x"], dtype=torch.float32, device=self.device)
        was = self.training
        self.eval()
        try:
            pred = self.one_step_predictions(x)
        finally:
            self.train(was)
        start = self.config.er_window
        mse = float(((pred[:, start:] - x[:, start:]) ** 2).mean())
        return {"one_step_mse": mse, **self.generated_transitions()}

    def figures(self, guide, data, *, idata=None) -> dict:
        """Training sequences beside sequences generated from the prior."""
        return {"trajectories": lambda: _trajectories(self, data)}


def _trajectories(model: PVRNN, data):
    import matplotlib.pyplot as plt

    x = np.asarray(data["x"].detach().cpu())[:3]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        _, h = model.net.generate(model.net.zero_state((3,)), model.config.length)
        gen = model.net.predict(h).cpu().numpy()
    fig, axes = plt.subplots(2, 3, figsize=(9, 6), sharex=True, sharey=True)
    for j in range(3):
        for row, (seqs, what) in enumerate(((x, "data"), (gen, "generated"))):
            ax = axes[row, j]
            ax.plot(seqs[j, :, 0], seqs[j, :, 1], lw=0.8)
            ax.set_title(f"{what} {j}")
            ax.set_aspect("equal")
    fig.tight_layout()
    return fig
