"""Eight schools: NUTS on the non-centered form (the reference answer), the full-rank
Gaussian guide graded against it, and SBC of NUTS with its power."""

from __future__ import annotations

import numpy as np

import guides
import zoo
from inference.diagnostics import loo, summary
from inference.mcmc import quiet_nuts
from inference.posterior import posterior
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.evidence.calibration import sbc_figures, thinned_nuts_draws


@recipe(
    "eight_schools",
    headline=[
        Figure("nuts/mu_mean", "posterior mean of mu", 2),
        Figure("nuts/tau_median", "median of tau", 2),
        Figure("nuts/elpd_loo", "elpd_loo", 2),
        Figure("svi_mvn/mu_mean_error", "mvn-guide error in mu's mean (NUTS sds)", 3),
        Figure("sbc/min_pvalue", "SBC smallest p", 3),
        Figure("sbc/power/shifted", "SBC power (half-sd shift)", 2),
    ],
    settings={
        "chains": 4,
        "warmup": 1000,
        "draws": 1000,
        "svi_steps": 2000,
        "sbc_replicates": 100,
        "sbc_warmup": 100,
        "sbc_draws": 100,
        "sbc_thin": 5,
    },
    quick={
        "chains": 1,
        "warmup": 30,
        "draws": 30,
        "svi_steps": 20,
        "sbc_replicates": 3,
        "sbc_warmup": 10,
        "sbc_draws": 10,
        "sbc_thin": 2,
    },
    paper="reference (Rubin 1981)",
    data="ArviZ's bundled eight schools",
    claim="NUTS on the non-centered form; a full-rank Gaussian guide's error against it; "
    "SBC of NUTS on data simulated from the prior, with the test's power (one SBC run "
    "shared by all seeds).",
)
def eight_schools(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    model = zoo.create("eight_schools", centered=False)
    data = model.default_data()
    mcmc = quiet_nuts(
        model,
        data,
        chains=s["chains"],
        warmup=s["warmup"],
        draws=s["draws"],
        seed=seed,
        progress=False,
    )
    idata = posterior(model, data, mcmc=mcmc)
    table = summary(idata, var_names=["mu", "tau"])
    mu = idata.posterior["mu"].values.reshape(-1)
    figures = {
        "nuts/mu_mean": float(mu.mean()),
        "nuts/mu_sd": float(mu.std()),
        "nuts/tau_median": float(np.median(idata.posterior["tau"].values)),
        "nuts/elpd_loo": loo(idata)["elpd_loo"],
        "nuts/divergences": float(idata.sample_stats["diverging"].values.sum()),
        "nuts/rhat_max": float(table["r_hat"].max()),
        "nuts/ess_bulk_min": float(table["ess_bulk"].min()),
    }

    guide = guides.build("mvn", model)
    fit(
        model,
        guide,
        data,
        steps=s["svi_steps"],
        seed=seed,
        lr=0.03,
        num_particles=16,
        progress=False,
    )
    svi_mu = posterior(model, data, guide=guide, num_draws=4000, seed=seed).posterior["mu"].values
    figures["svi_mvn/mu_mean_error"] = float(abs(svi_mu.mean() - mu.mean()) / mu.std())
    figures["svi_mvn/mu_sd_ratio"] = float(svi_mu.std() / mu.std())

    def fit_draws(sim_data, replicate_seed):
        return thinned_nuts_draws(
            model,
            sim_data,
            seed=replicate_seed,
            warmup=s["sbc_warmup"],
            draws=s["sbc_draws"],
            thin=s["sbc_thin"],
        )

    # SBC checks the engine, not this seed's chains: one run (100 NUTS fits) serves all seeds
    sbc = ctx.once(
        "sbc",
        lambda: sbc_figures(
            model.simulate,
            fit_draws,
            num_replicates=s["sbc_replicates"],
            params=["mu", "tau"],
            seed=1000,
        )[0],
    )
    return figures | sbc
