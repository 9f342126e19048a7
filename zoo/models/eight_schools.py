"""Eight schools: the reference hierarchical model (not a paper model).

Generative story, for schools :math:`j = 1..8` with known standard errors
:math:`\\sigma_j`::

    mu      ~ Normal(0, 5)
    tau     ~ HalfCauchy(5)
    theta_j ~ Normal(mu, tau)                        (centered)
      or  theta_j = mu + tau * eta_j, eta_j ~ Normal(0, 1)   (non-centered)
    y_j     ~ Normal(theta_j, sigma_j)

The centered form has the funnel geometry that defeats mean-field VI and NUTS alike; the
non-centered form removes it. Data: Rubin (1981), "Estimation in parallel randomized
experiments", J. Educational Statistics 6(4); the effects as bundled with ArviZ and the
standard errors of Gelman et al., Bayesian Data Analysis (3rd ed.), Table 5.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from inference.data import Field
from inference.posterior import load_example, posterior
from zoo.base import TrainConfig, ZooModel
from zoo.registry import register

# standard errors of the eight effects (BDA3, Table 5.2); ArviZ bundles the effects only
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
SCHOOLS = [
    "Choate",
    "Deerfield",
    "Phillips Andover",
    "Phillips Exeter",
    "Hotchkiss",
    "Lawrenceville",
    "St. Paul's",
    "Mt. Hermon",
]


@register
class EightSchools(ZooModel):
    """Eight schools, centered or non-centered (``Config.centered``). See the module doc."""

    name = "eight_schools"
    summary = "Eight schools: hierarchical normal model, centered or non-centered"
    paper = None
    supports_nuts = True
    static_structure = True

    tiny = {"steps": 20}

    @dataclass
    class Config(TrainConfig):
        centered: bool = False

    def data_spec(self) -> dict[str, Field]:
        return {
            "y": Field(doc="estimated treatment effect per school"),
            "sigma": Field(support=constraints.positive, doc="standard error of the effect"),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y",)

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"mu": dist.Normal(0.0, 5.0), "tau": dist.HalfCauchy(5.0)}

    def model(self, batch) -> None:
        mu = pyro.sample("mu", self.prior("mu"))
        tau = pyro.sample("tau", self.prior("tau"))
        with self.data_plate(batch):
            if self.config.centered:
                theta = pyro.sample("theta", dist.Normal(mu, tau))
            else:
                eta = pyro.sample("eta", dist.Normal(torch.zeros_like(batch["y"]), 1.0))
                theta = pyro.deterministic("theta", mu + tau * eta)
            pyro.sample("y", dist.Normal(theta, batch["sigma"]), obs=batch["y"])

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        effects = load_example("centered_eight")["obs"]
        return self.validate({"y": effects, "sigma": SIGMA})

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """``(truth, data)``: (mu, tau, theta) from the prior (eta = (theta - mu) / tau too,
        in the non-centered form) and y given them, at the eight schools' standard errors."""
        generator = torch.Generator().manual_seed(seed)
        sigma = torch.as_tensor(SIGMA, dtype=torch.float32)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            mu = self.prior("mu").sample()
            tau = self.prior("tau").sample()
            theta = dist.Normal(mu, tau).sample(sigma.shape)
            y = dist.Normal(theta, sigma).sample()
        truth = {"mu": mu, "tau": tau, "theta": theta}
        if not self.config.centered:
            truth["eta"] = (theta - mu) / tau
        return truth, self.validate({"y": y, "sigma": sigma})

    def dims(self) -> dict[str, list[str]]:
        return {"theta": ["school"], "eta": ["school"], "y": ["school"], "sigma": ["school"]}

    def coords(self, data) -> dict:
        n = len(data["y"])
        return {"school": SCHOOLS if n == len(SCHOOLS) else list(range(n))}

    def evaluate(self, guide, data) -> dict:
        """Posterior means of mu and tau (the run report's diagnostics hold PSIS-LOO)."""
        idata = posterior(
            self, data, guide=guide, num_draws=1000, dims=self.dims(), coords=self.coords(data)
        )
        post = idata.posterior
        return {"mu_mean": float(post["mu"].mean()), "tau_mean": float(post["tau"].mean())}
