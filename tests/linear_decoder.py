"""Binary images from a known linear decoder with a 2-d latent, and their exact
log-likelihood: the truth the VAE recovery tests (vae_digits, mlvgm_mi) score against."""

import math

import torch


def simulate_images(n: int, seed: int):
    """``(weight, bias, x)``: 64 Bernoulli pixels with logits ``z @ weight.T + bias``,
    ``z ~ N(0, I_2)``."""
    g = torch.Generator().manual_seed(seed)
    weight = 1.5 * torch.randn(64, 2, generator=g)
    bias = torch.randn(64, generator=g)
    z = torch.randn(n, 2, generator=g)
    x = torch.bernoulli(torch.sigmoid(z @ weight.T + bias), generator=g)
    return weight, bias, x


def true_log_likelihood(weight, bias, x, half_width: float = 6.0, points: int = 301):
    """log p(x_n) under the true model by quadrature on a 2-d grid over z (the posterior
    sd is ~0.2, the grid spacing 0.04, so the sum is exact to well under 0.01 nats)."""
    t = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits = z @ weight.double().T + bias.double()
    x = x.double()
    log_lik = x @ torch.nn.functional.logsigmoid(logits).T
    log_lik = log_lik + (1 - x) @ torch.nn.functional.logsigmoid(-logits).T  # (N, G)
    cell = float((t[1] - t[0]) ** 2)
    return torch.logsumexp(log_lik + log_prior, dim=-1) + math.log(cell)
