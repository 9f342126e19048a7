"""MM-GPVAE: Fourier against time-domain GP prior, cost per epoch as the trial length T grows.

One SVI step (meanfield ELBO, analytic KL, forward and backward) on a batch of 32 simulated
trials, i.e. one epoch of 32 trials, for T = 40 ... 640, one thread, same process. The time
domain factors a T x T kernel matrix per latent (O(T^3)) and solves against it for each trial
(O(B T^2)); the Fourier form has a diagonal prior over F <= T kept frequencies, whose
variances are one FFT of the kernel's first row (O(T log T)), and maps between time and
frequency with a T x F basis (O(B T F)). The growth exponent is a least-squares slope of
log time against log T.

Run alone with ``python -m benchmarks.mm_gpvae_fourier [--quick]``.
"""

from __future__ import annotations

import numpy as np
import pyro
import torch

import zoo
from benchmarks import median_ms
from inference.data import full_batch

TRIALS = 32


def epoch_ms(parameterization: str, time_bins: int, repeats: int) -> tuple[float, int]:
    pyro.set_rng_seed(0)
    model = zoo.create(
        "mm_gpvae", parameterization=parameterization, time_bins=time_bins, trials=TRIALS
    )
    batch = full_batch(model.default_data(seed=0))
    guide = model.guide
    elbo = pyro.infer.TraceMeanField_ELBO()
    elbo.differentiable_loss(model.model, guide, batch)  # builds the guide's parameters
    params = list(model.parameters()) + list(guide.parameters())
    optim = torch.optim.Adam(params, lr=1e-3)

    def step():
        optim.zero_grad()
        elbo.differentiable_loss(model.model, guide, batch).backward()
        optim.step()

    width = model.basis.shape[1] if parameterization == "fourier" else time_bins
    return median_ms(step, repeats), width


def _slope(sizes, values) -> float:
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    sizes, repeats = ((40, 80), 2) if quick else ((40, 80, 160, 320, 640), 5)
    rows, fourier, timed = [], [], []
    for t in sizes:
        f_ms, width = epoch_ms("fourier", t, repeats)
        t_ms, _ = epoch_ms("time", t, repeats)
        fourier.append(f_ms)
        timed.append(t_ms)
        rows.append(
            {
                "T": t,
                "frequencies kept F": width,
                "Fourier ms/epoch": round(f_ms, 1),
                "time-domain ms/epoch": round(t_ms, 1),
                "time/Fourier": round(t_ms / f_ms, 2),
            }
        )
    slope_f, slope_t = _slope(sizes, fourier), _slope(sizes, timed)
    return {
        "title": "MM-GPVAE: Fourier vs time-domain GP prior, one epoch of 32 trials (1 thread)",
        "notes": (
            f"median of {repeats}; cost grows as T^{slope_f:.2f} (Fourier) and "
            f"T^{slope_t:.2f} (time domain) over T = {sizes[0]}..{sizes[-1]}."
        ),
        "rows": rows,
        "exponents": {"fourier": slope_f, "time": slope_t},
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
