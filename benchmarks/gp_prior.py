"""GP-prior cost against problem size: one exact marginal-likelihood gradient step.

GPyTorch's ``ExactMarginalLogLikelihood`` (its default solver: preconditioned CG and
Lanczos, Cholesky below its size threshold) against Pyro's ``contrib.gp`` GPRegression
(Cholesky), RBF kernel with learnable lengthscale, variance and noise, same data, same
process, one thread. Zoo models take their GP kernels from GPyTorch; this table is why.

Run alone with ``python -m benchmarks.gp_prior [--quick]``.
"""

from __future__ import annotations

import math

import gpytorch
import pyro
import pyro.contrib.gp as gp
import torch

from benchmarks import median_ms


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood):
        super().__init__(x, y, likelihood)
        self.mean = gpytorch.means.ZeroMean()
        self.kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean(x), self.kernel(x))


def _data(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=generator) * 10
    y = torch.sin(x) + 0.3 * torch.randn(n, generator=generator)
    return x, y


def gpytorch_ms(n: int, repeats: int) -> float:
    x, y = _data(n)
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    model = _ExactGP(x, y, likelihood)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()
    likelihood.train()

    def step():
        model.zero_grad()
        (-mll(model(x), y)).backward()

    return median_ms(step, repeats)


def pyro_ms(n: int, repeats: int) -> float:
    x, y = _data(n)
    kernel = gp.kernels.RBF(input_dim=1)
    model = gp.models.GPRegression(x, y, kernel, noise=torch.tensor(0.1))
    loss_fn = pyro.infer.Trace_ELBO().differentiable_loss

    def step():
        model.zero_grad()
        loss_fn(model.model, model.guide).backward()

    return median_ms(step, repeats)


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    sizes, repeats = ((250, 500), 3) if quick else ((250, 500, 1000, 2000), 5)
    rows = []
    for n in sizes:
        ours, theirs = gpytorch_ms(n, repeats), pyro_ms(n, repeats)
        rows.append(
            {
                "n": n,
                "GPyTorch ms/step": round(ours, 2),
                "Pyro contrib.gp ms/step": round(theirs, 2),
                "Pyro/GPyTorch": round(theirs / ours, 2),
            }
        )
    growth = [math.log(r["GPyTorch ms/step"]) for r in rows]
    slope = (growth[-1] - growth[0]) / math.log(sizes[-1] / sizes[0])
    return {
        "title": "GP prior: exact marginal-likelihood step against n (1 thread)",
        "notes": f"median of {repeats}; GPyTorch time grows about as n^{slope:.2f} here.",
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
