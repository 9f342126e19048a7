"""posterior() keeps every site's shape, whichever engine made the draws."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

from inference.mcmc import nuts
from inference.posterior import posterior
from inference.svi import fit

TRUE_W = torch.tensor([1.0, -2.0, 0.5])


class VectorRegression(torch.nn.Module):
    """y_n ~ Normal(x_n . w, 0.5), with w a global site with an event dimension."""

    max_plate_nesting = 1

    def forward(self, batch):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", batch.size, subsample=batch.index):
            pyro.sample("y", dist.Normal((batch["x"] * w).sum(-1), 0.5), obs=batch["y"])


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=generator)
    return {"x": x, "y": x @ TRUE_W + 0.5 * torch.randn(60, generator=generator)}


def test_vector_global_site_from_mcmc():
    model, data = VectorRegression(), _data()
    mcmc = nuts(model, data, chains=1, warmup=150, draws=150, progress=False)
    idata = posterior(model, data, mcmc=mcmc)
    assert idata.posterior["w"].shape == (1, 150, 3)
    assert idata.log_likelihood["y"].shape == (1, 150, 60)
    assert idata.posterior_predictive["y"].shape == (1, 150, 60)
    # recovered within 0.3 of the truth (posterior sd is about 0.07 here)
    assert torch.allclose(
        torch.tensor(idata.posterior["w"].mean(("chain", "draw")).values), TRUE_W, atol=0.3
    )


def test_vector_global_site_from_a_guide():
    model, data = VectorRegression(), _data()
    guide = AutoNormal(model)
    fit(model, guide, data, steps=600, lr=0.05, progress=False)
    idata = posterior(model, data, guide=guide, num_draws=200)
    assert idata.posterior["w"].shape == (1, 200, 3)
    assert idata.log_likelihood["y"].shape == (1, 200, 60)
    assert torch.allclose(
        torch.tensor(idata.posterior["w"].mean(("chain", "draw")).values), TRUE_W, atol=0.3
    )


class PenalizedRegression(VectorRegression):
    """VectorRegression plus two ``pyro.factor`` terms: one on the draws, one constant."""

    def forward(self, batch):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.factor("ridge", -0.5 * (w**2).sum(-1))
        pyro.factor("constant", torch.tensor(-2.0))
        with pyro.plate("data", batch.size, subsample=batch.index):
            pyro.sample("y", dist.Normal((batch["x"] * w).sum(-1), 0.5), obs=batch["y"])


def test_factor_sites_enter_the_density_but_are_not_data():
    model, data = PenalizedRegression(), _data()
    guide = AutoNormal(model)
    fit(model, guide, data, steps=50, lr=0.05, progress=False)
    pyro.set_rng_seed(0)
    idata = posterior(model, data, guide=guide, num_draws=50)
    assert set(idata.observed_data.data_vars) == {"y"}
    assert set(idata.log_likelihood.data_vars) == {"y"}
    assert set(idata.posterior_predictive.data_vars) == {"y"}
    # each draw's joint density includes both factors: compare with the unpenalized model
    pyro.set_rng_seed(0)
    plain = posterior(VectorRegression(), data, guide=guide, num_draws=50)
    w = torch.tensor(idata.posterior["w"].values[0])
    assert torch.equal(w, torch.tensor(plain.posterior["w"].values[0]))
    gap = torch.tensor(idata.sample_stats["lp"].values[0] - plain.sample_stats["lp"].values[0])
    assert torch.allclose(gap, -0.5 * (w**2).sum(-1) - 2.0, atol=1e-3)
