"""The PV-RNN's network: a multiple-timescale RNN layer driven by stochastic units, and the
joint prior it puts on a whole latent sequence.

One MTRNN layer with two timescales (the public implementation doubles tau for half the
units; here the first half of the units has ``tau[0]``, the second half ``tau[1]``)::

    p(z_t | d_{t-1}) = N(tanh(W_mu d_{t-1}), exp(W_sigma d_{t-1})^2)
    h_t = (1 - 1/tau) h_{t-1} + (1/tau) (W_dd d_{t-1} + W_zd z_t + b),   d_t = tanh(h_t)
    x_hat_t = tanh(W_o d_t + b_o)

``W_mu`` and ``W_sigma`` have no bias, so from the zero state (``d_0 = 0``) the first step's
prior is ``N(0, I)``, the paper's ``p(z_1)``.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Normal, kl_divergence, register_kl

from guides.encoders import as_pyro_module

__all__ = ["MTRNN", "SequencePrior"]


class MTRNN(PyroModule):
    """The deterministic part of the PV-RNN: states, the prior's parameters and the output.

    :param input_dim: size of an observation x_t.
    :param hidden: number of context units d.
    :param latent: number of stochastic units z.
    :param tau: the two time constants (fast half, slow half of the units).
    """

    def __init__(self, input_dim: int, hidden: int, latent: int, tau: tuple[float, float]):
        super().__init__()
        self.hidden, self.latent, self.input_dim = hidden, latent, input_dim
        fast = hidden - hidden // 2
        inv = torch.cat(
            [torch.full((fast,), 1.0 / tau[0]), torch.full((hidden - fast,), 1.0 / tau[1])]
        )
        self.register_buffer("inv_tau", inv)
        self.recurrent = as_pyro_module(nn.Linear(hidden, hidden))  # W_dd, b
        self.from_z = as_pyro_module(nn.Linear(latent, hidden, bias=False))  # W_zd
        self.prior_head = as_pyro_module(nn.Linear(hidden, 2 * latent, bias=False))  # W_mu, W_sigma
        self.output = as_pyro_module(nn.Linear(hidden, input_dim))  # W_o, b_o

    def zero_state(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The initial internal state h_0 = 0 for ``shape`` rows."""
        return torch.zeros((*shape, self.hidden), device=self.inv_tau.device)

    def step(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h_t from h_{t-1} and z_t."""
        drive = self.recurrent(torch.tanh(h)) + self.from_z(z)
        return h + self.inv_tau * (drive - h)

    def prior_params(self, d_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pre_mu, pre_sigma)``: the pre-activations of p(z_t | d_{t-1}) (the adaptive
        vectors are initialised to these); the prior is N(tanh(pre_mu), exp(pre_sigma)^2)."""
        pre_mu, pre_sigma = self.prior_head(d_prev).split(self.latent, dim=-1)
        return pre_mu, pre_sigma.clamp(-8.0, 4.0)

    def roll(self, z: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced run over ``z`` (..., T, Z) from ``h0`` (..., H): ``(h, d_prev)``,
        the states h_1..h_T and d_0..d_{T-1} (..., T, H)."""
        drive_z = self.from_z(z)
        w, b = self.recurrent.weight, self.recurrent.bias
        inv = self.inv_tau
        h = h0.expand(*z.shape[:-2], self.hidden)
        states = []
        d_prev = []
        for t in range(z.shape[-2]):
            d = torch.tanh(h)
            d_prev.append(d)
            recurrent = torch.addmm(b, d.reshape(-1, self.hidden), w.t()).reshape(d.shape)
            h = h + inv * (recurrent + drive_z[..., t, :] - h)
            states.append(h)
        return torch.stack(states, -2), torch.stack(d_prev, -2)

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        """x_hat = tanh(W_o d + b_o) from internal states h."""
        return torch.tanh(self.output(torch.tanh(h)))

    @torch.no_grad()
    def generate(
        self, h0: torch.Tensor, steps: int, *, mean: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral draws z_1..z_T from the prior (its means with ``mean``) from ``h0``:
        ``(z, h)``, (..., T, Z) and (..., T, H)."""
        h, zs, hs = h0, [], []
        for _ in range(steps):
            pre_mu, pre_sigma = self.prior_params(torch.tanh(h))
            z = torch.tanh(pre_mu)
            if not mean:
                z = z + pre_sigma.exp() * torch.randn_like(z)
            h = self.step(h, z)
            zs.append(z)
            hs.append(h)
        return torch.stack(zs, -2), torch.stack(hs, -2)


class SequencePrior(TorchDistribution):
    """The joint prior p(z_1..z_T | h_0) = prod_t N(z_t; tanh(W_mu d_{t-1}), exp(W_sigma
    d_{t-1})^2) of a whole latent sequence, event shape (T, Z).

    ``log_prob`` runs the network teacher-forced on the value; the model reads the same run
    back through :meth:`states` (one pass of the RNN per ELBO evaluation, not two).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(self, net: MTRNN, h0: torch.Tensor, steps: int, validate_args=None):
        self.net, self.h0, self.steps = net, h0, int(steps)
        # shared with expanded copies (Pyro's plates expand every site's distribution)
        self._cache: list = []
        batch_shape = h0.shape[:-1]
        super().__init__(batch_shape, torch.Size((self.steps, net.latent)), validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        new = SequencePrior(self.net, self.h0.expand(*batch_shape, self.net.hidden), self.steps)
        new._cache = self._cache
        return new

    def states(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, d_prev)`` of the network run on ``z`` (cached for the same tensor)."""
        if not self._cache or self._cache[0] is not z:
            self._cache[:] = [z, self.net.roll(z, self.h0)]
        return self._cache[1]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        _, d_prev = self.states(value)
        pre_mu, pre_sigma = self.net.prior_params(d_prev)
        scale = pre_sigma.exp()
        lp = -0.5 * ((value - torch.tanh(pre_mu)) / scale) ** 2 - pre_sigma
        return (lp - 0.5 * math.log(2 * math.pi)).sum((-1, -2))

    def sample(self, sample_shape=()):
        h0 = self.h0.expand(*torch.Size(sample_shape), *self.h0.shape)
        z, _ = self.net.generate(h0, self.steps)
        return z


@register_kl(Normal, SequencePrior)
def _kl_normal_sequence(q: Normal, p: SequencePrior) -> torch.Tensor:
    """Per step and unit KL(q(z_t) || p(z_t | d_{t-1})), the history z_<t drawn once from
    ``q`` (a per-element q, batch shape (..., T, Z)): what per-dimension diagnostics read."""
    z = q.rsample()
    _, d_prev = p.net.roll(z, p.h0)
    pre_mu, pre_sigma = p.net.prior_params(d_prev)
    return kl_divergence(q, Normal(torch.tanh(pre_mu), pre_sigma.exp()))
