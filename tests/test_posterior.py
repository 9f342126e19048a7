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
