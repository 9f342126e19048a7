"""Posterior collapse (paper 17): the collapse detector's count on trained linear models
against the linear theory's closed-form count, over data seeds.

collapse_cvae: collapsed latent dimensions (per-dimension KL < 0.01) of a linear CVAE at
several input-output correlations rho, against the CVAE theory (residual spectrum of y
given x) and against the simplest alternative prediction, the plain-VAE theory that ignores
the condition (spectrum of y itself), which cannot see rho's effect.

collapse_hvae: active directions of z1 and z2 of a linear two-level HVAE with a learnable
and with a fixed encoder variance Sigma1, against the theory (z2 collapses entirely with a
learnable Sigma1 when beta2 > beta1, and stays active with a fixed one).
"""

from __future__ import annotations

import numpy as np
import pyro

import zoo
from inference.diagnostics.collapse import latent_activity
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe

CVAE_RHOS = (0.0, 0.3, 0.6, 0.9)


def _key(rho: float) -> str:
    return f"rho{rho:.1f}".replace(".", "")


def _train(model, data, *, steps: int, batch_size: int, lr: float, elbo: str, seed: int) -> None:
    pyro.set_rng_seed(seed)
    fit(
        model,
        model.guide,
        data,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        elbo=elbo,
        seed=seed,
        progress=False,
        validate=False,
    )


def vae_theory_collapse(y: np.ndarray, *, latent_dim: int, beta: float, eta_dec: float) -> int:
    """Collapsed dimensions a plain (unconditional) linear VAE of y would have: latent_dim
    minus the eigenvalues of Cov(y) above beta * eta_dec^2. The baseline prediction: the
    same rule without the condition x, so it misses the collapse that correlation causes."""
    eig = np.linalg.eigvalsh(np.cov(np.asarray(y, dtype=float), rowvar=False))
    return int(latent_dim - min(latent_dim, int((eig > beta * eta_dec**2).sum())))


@recipe(
    "collapse_cvae",
    headline=[
        Figure("cvae/abs_error", "collapsed dims off the theory, summed over rho", 2),
        Figure("cvae/collapsed_rho00", "collapsed dims at rho 0", 2),
        Figure("cvae/collapsed_rho09", "collapsed dims at rho 0.9", 2),
        Figure("theory/collapsed_rho09", "theory at rho 0.9", 2),
        Figure("baseline_vae_theory/abs_error", "plain-VAE theory's error, summed", 2),
    ],
    settings={
        "rhos": CVAE_RHOS,
        "num_rows": 2000,
        "steps": 500,
        "batch_size": 500,
        "lr": 2e-2,
    },
    quick={"rhos": (0.0, 0.9), "num_rows": 300, "steps": 20, "batch_size": 300},
    paper="Dang et al. (ICLR 2024)",
    data="correlated_pairs: y = rho A x + residual with a fixed spectrum (seeded per run)",
    claim="Linear CVAE trained by the mean-field ELBO at several input-output correlations "
    "rho: collapsed latent dimensions (KL < 0.01) against the CVAE theory's count "
    "(residual spectrum of y given x) and against the plain-VAE theory that ignores x.",
)
def collapse_cvae(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    figures: dict[str, float] = {}
    error = baseline_error = 0.0
    for rho in s["rhos"]:
        model = zoo.create("collapse_cvae", rho=float(rho), num_rows=s["num_rows"])
        data = model.default_data(seed)
        _train(
            model,
            data,
            steps=s["steps"],
            batch_size=s["batch_size"],
            lr=s["lr"],
            elbo="meanfield",
            seed=seed,
        )
        detected = latent_activity(model, model.guide, data)["z"]["collapsed_dims"]
        theory = model.predicted_collapse(data)
        c = model.config
        naive = vae_theory_collapse(
            data["y"].numpy(), latent_dim=c.latent_dim, beta=c.beta, eta_dec=c.eta_dec
        )
        key = _key(rho)
        figures[f"cvae/collapsed_{key}"] = float(detected)
        figures[f"theory/collapsed_{key}"] = float(theory)
        figures[f"baseline_vae_theory/collapsed_{key}"] = float(naive)
        error += abs(detected - theory)
        baseline_error += abs(naive - detected)
    figures["cvae/abs_error"] = float(error)
    figures["cvae/exact_match"] = float(error == 0)
    figures["baseline_vae_theory/abs_error"] = float(baseline_error)
    return figures


@recipe(
    "collapse_hvae",
    headline=[
        Figure("learnable/z2_active", "z2 active dirs, learnable Sigma1", 2),
        Figure("theory_learnable/z2_active", "theory, learnable", 2),
        Figure("fixed/z2_active", "z2 active dirs, fixed Sigma1", 2),
        Figure("theory_fixed/z2_active", "theory, fixed", 2),
        Figure("abs_error", "active dirs off the theory, summed", 2),
    ],
    settings={"num_rows": 2000, "steps": 500, "batch_size": 500, "lr": 2e-2},
    quick={"num_rows": 300, "steps": 20, "batch_size": 300},
    paper="Dang et al. (ICLR 2024)",
    data="spectrum_data: Gaussian with a fixed covariance spectrum (seeded per run)",
    claim="Linear two-level HVAE (beta2 > beta1) trained by the ELBO with a learnable and "
    "with a fixed encoder variance Sigma1: active directions of z1 and z2 against the "
    "linear theory (z2 collapses entirely only with the learnable variance).",
)
def collapse_hvae(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    figures: dict[str, float] = {}
    error = 0.0
    for sigma1 in ("learnable", "fixed"):
        model = zoo.create("collapse_hvae", sigma1=sigma1, num_rows=s["num_rows"])
        data = model.default_data(seed)
        _train(
            model,
            data,
            steps=s["steps"],
            batch_size=s["batch_size"],
            lr=s["lr"],
            elbo="trace",
            seed=seed,
        )
        report = latent_activity(model, model.guide, data, num_particles=4)
        theory = model.predicted_active(data)
        for site in ("z1", "z2"):
            detected = report[site]["active_directions"]
            figures[f"{sigma1}/{site}_active"] = float(detected)
            figures[f"{sigma1}/{site}_collapsed_dims"] = float(report[site]["collapsed_dims"])
            figures[f"theory_{sigma1}/{site}_active"] = float(theory[site])
            error += abs(detected - theory[site])
    figures["abs_error"] = float(error)
    figures["exact_match"] = float(error == 0)
    return figures
