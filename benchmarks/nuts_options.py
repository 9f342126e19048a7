"""What each of Pyro's NUTS options buys on ``pac_invariance``, whose tutorial NUTS dominates.

The model on the subset {X1, X2} of its default 8 x 400-row SEM (the tutorial's slowest
fit: a non-invariant subset, so the environments' coefficients spread), one chain per run,
the same warmup and draws, against the zoo's default (``inference.mcmc.nuts``: JIT-compiled
potential, non-centered, diagonal mass matrix, chains started at the prior median):

- without the JIT (``jit_compile=False``);
- the centered parameterisation (``centered=True``);
- a dense mass matrix (``dense_mass=True``);
- chains started at an SVI point estimate (``model.svi_point_estimate``; its fit is counted
  in the run's time).

Parallel chains are measured against NumPyro in ``benchmarks.nuts_peers``. The figure is
min bulk ESS (ArviZ, over beta, tau and sigma) per CPU-second of the run (``process_time``,
compilation included), mean ± sd over seeds, and its ratio to the default paired by seed.

Each finished (variant, seed) run is kept in ``runs/benchmarks/nuts_options/``; a stopped run
resumes. Run alone with ``python -m benchmarks.nuts_options [--quick]``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

import zoo
from inference.diagnostics.summary import min_ess_bulk
from inference.mcmc import quiet_nuts

FEATURES = (0, 1)
#: finished (variant, seed) runs, per warmup + draws, so an interrupted run resumes
CACHE = Path(__file__).resolve().parents[1] / "runs" / "benchmarks" / "nuts_options"
#: variant -> (model overrides, nuts options, start at the SVI point estimate)
VARIANTS = {
    "default (JIT, non-centered, diagonal mass)": ({}, {}, False),
    "no JIT": ({}, {"jit_compile": False}, False),
    "centered": ({"centered": True}, {}, False),
    "dense mass matrix": ({}, {"dense_mass": True}, False),
    "SVI initialisation": ({}, {}, True),
}


def _one(variant: str, warmup: int, draws: int, seed: int) -> dict:
    """One variant's run at one seed, kept in :data:`CACHE` once done (a stopped run
    resumes at the next one)."""
    slug = "".join(c if c.isalnum() else "_" for c in variant.split(" (")[0])
    cache = CACHE / f"{warmup}+{draws}" / f"{slug}-{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    result = _measure(*VARIANTS[variant], warmup, draws, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return result


def _measure(
    overrides: dict, options: dict, svi_init: bool, warmup: int, draws: int, seed: int
) -> dict:
    model = zoo.create("pac_invariance", features=FEATURES, **overrides)
    data = model.default_data()
    start, cpu = time.perf_counter(), time.process_time()
    init = model.svi_point_estimate(data, steps=500, lr=0.03) if svi_init else None
    mcmc = quiet_nuts(model, data, chains=1, warmup=warmup, draws=draws, seed=seed,
                      progress=False, init_values=init, **options)  # fmt: skip
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    samples = mcmc.get_samples(group_by_chain=True)
    ess = min_ess_bulk({k: samples[k].numpy() for k in ("beta", "tau", "sigma")})
    divergent = sum(len(steps) for steps in mcmc.diagnostics()["divergences"].values())
    return {
        "per cpu": float(ess / cpu),
        "seconds": float(seconds),
        "ess": float(ess),
        "divergent": int(divergent),
    }


def _mean_sd(values, digits: int = 1) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    warmup, draws = (20, 20) if quick else (200, 200)
    seeds = range(2 if quick else 3)
    runs = {name: [_one(name, warmup, draws, seed) for seed in seeds] for name in VARIANTS}
    base = runs[next(iter(VARIANTS))]
    rows = []
    for name, results in runs.items():
        ratios = [r["per cpu"] / b["per cpu"] for r, b in zip(results, base, strict=True)]
        rows.append({
            "variant": name,
            "min ESS": _mean_sd([r["ess"] for r in results], 0),
            "min ESS per CPU-s": _mean_sd([r["per cpu"] for r in results], 2),
            "wall s": _mean_sd([r["seconds"] for r in results]),
            "divergences": _mean_sd([r["divergent"] for r in results]),
            "ratio to default": _mean_sd(ratios, 2),
        })  # fmt: skip
    return {
        "title": "pac_invariance NUTS: what each Pyro option buys (1 chain, 1 thread)",
        "notes": (
            f"Subset {{X1, X2}}, default data (8 x 400 rows); {warmup} warmup + {draws} draws, "
            f"mean ± sd over {len(seeds)} seeds; ESS over beta, tau, sigma; CPU seconds "
            "include compilation and, for the SVI start, its 500-step fit; ratio paired by seed."
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
