"""Eight schools NUTS: minimum bulk ESS per second, non-centered against centered.

ESS from ArviZ (``inference.diagnostics.summary``) over the draws of ``inference.mcmc.nuts``;
seconds are the wall time of the whole run (warmup included, JIT compilation included).
The centered form, whose funnel slows NUTS down, is the baseline measured in the same run.

Run alone with ``python -m benchmarks.nuts_ess [--quick]``.
"""

from __future__ import annotations

import time

import torch

import zoo
from inference.diagnostics import divergences, summary
from inference.mcmc import nuts
from inference.posterior import posterior


def _one(centered: bool, warmup: int, draws: int, seed: int = 0) -> dict:
    model = zoo.create("eight_schools", centered=centered)
    data = model.default_data()
    start = time.perf_counter()
    mcmc = nuts(model, data, chains=1, warmup=warmup, draws=draws, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    idata = posterior(model, data, mcmc=mcmc, dims=model.dims(), coords=model.coords(data))
    table = summary(idata, var_names=["mu", "tau", "theta"])
    min_ess = float(table["ess_bulk"].min())
    return {
        "form": "centered" if centered else "non-centered",
        "seconds": round(seconds, 2),
        "min ESS bulk": round(min_ess, 1),
        "min ESS/s": round(min_ess / seconds, 1),
        "divergences": divergences(idata),
        "tau mean": round(float(idata.posterior["tau"].mean()), 2),
    }


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    warmup, draws = (100, 100) if quick else (500, 1000)
    rows = [_one(True, warmup, draws), _one(False, warmup, draws)]
    base = rows[0]["min ESS/s"]
    for row in rows:
        row["ratio to centered"] = round(row["min ESS/s"] / base, 2) if base > 0 else "n/a"
    return {
        "title": "eight_schools NUTS min-ESS per second (1 chain, 1 thread)",
        "notes": f"{warmup} warmup + {draws} draws, seed 0; ESS over mu, tau and theta.",
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
