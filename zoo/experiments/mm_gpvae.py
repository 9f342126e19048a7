"""MM-GPVAE on the paper's simulation: are the shared, neural-only and image-only latents
identified (each inferred group predicts its own true latent, not the others), and how well
are images and firing rates reconstructed, against factor analysis of the same data?"""

from __future__ import annotations

import numpy as np
import torch

import zoo
from inference.metrics import affine_r2
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe

GROUPS = ("s", "n", "b")
#: model settings the recipe passes through to the config
MODEL_KEYS = ("trials", "time_bins", "neurons", "hidden")


def _rows(x: torch.Tensor) -> np.ndarray:
    """(trials, T, features) -> (trials T, features)."""
    return x.reshape(-1, x.shape[-1]).cpu().numpy().astype(np.float64)


def _r2(fitted: np.ndarray, truth: np.ndarray) -> float:
    """The model's reconstruction R^2 (``MMGPVAE.evaluate``): 1 - SSE / SST around the
    per-feature mean, pooled over features."""
    return 1.0 - float(((fitted - truth) ** 2).sum()) / float(((truth - truth.mean(0)) ** 2).sum())


def _identification(inferred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict:
    """Matched R^2 per group (inferred g -> true g), the largest cross-assigned R^2 into
    each true group, and the R^2 from all inferred latents together (the figure a method
    without groups, factor analysis, is scored on too)."""
    out = {}
    everything = np.concatenate(list(inferred.values()), 1)
    for g in GROUPS:
        out[f"r2_{g}"] = affine_r2(inferred[g], truth[g])
        out[f"cross_r2_{g}"] = max(affine_r2(inferred[h], truth[g]) for h in GROUPS if h != g)
        out[f"r2_all_to_{g}"] = affine_r2(everything, truth[g])
    out["r2_matched_min"] = min(out[f"r2_{g}"] for g in GROUPS)
    out["cross_r2_max"] = max(out[f"cross_r2_{g}"] for g in GROUPS)
    return out


def _factor_analysis(train, test, test_rates, truth, components: int, seed: int) -> dict:
    """Factor analysis of each time bin's spikes and pixels together (no time, no groups):
    its factors scored by affine R^2 to each true latent, its reconstructions like the
    model's (the spike counts' reconstruction against the true rates)."""
    from sklearn.decomposition import FactorAnalysis

    def joint(data):
        return np.concatenate([_rows(data["spikes"]), _rows(data["images"])], 1)

    fa = FactorAnalysis(n_components=components, random_state=seed).fit(joint(train))
    factors = fa.transform(joint(test))
    recon = factors @ fa.components_ + fa.mean_
    neurons = train["spikes"].shape[-1]
    out = {f"r2_all_to_{g}": affine_r2(factors, truth[g]) for g in GROUPS}
    out["image_r2"] = _r2(recon[:, neurons:], _rows(test["images"]))
    out["rate_r2"] = _r2(recon[:, :neurons], _rows(test_rates))
    return out


@recipe(
    "mm_gpvae",
    headline=[
        Figure("mm_gpvae/r2_matched_min", "smallest matched latent R^2 (s, n, b)", 3),
        Figure("mm_gpvae/cross_r2_max", "largest cross-assigned R^2", 3),
        Figure("mm_gpvae/r2_all_to_s", "shared latent R^2, all latents", 3),
        Figure("fa/r2_all_to_s", "factor analysis: same", 3),
        Figure("mm_gpvae/image_r2", "image R^2", 3),
        Figure("fa/image_r2", "factor analysis: image R^2", 3),
        Figure("mm_gpvae/rate_r2", "rate R^2", 3),
    ],
    settings={
        "trials": 200,
        "time_bins": 40,
        "neurons": 50,
        "hidden": 64,
        "train_fraction": 0.8,
        "steps": 1500,
        "batch_size": 32,
        "lr": 5e-3,
    },
    quick={"trials": 20, "time_bins": 16, "neurons": 10, "hidden": 16, "steps": 10},
    paper="Gondur et al., ICLR 2024 (MM-GPVAE)",
    data="the paper's simulation: a load_digits 3 rotated by a shared GP and zoomed by an "
    "image-only GP; Poisson spikes from the shared and a neural-only GP",
    claim="On held-out trials: R^2 of affine fits from each inferred latent group (shared, "
    "neural-only, image-only; Fourier form, RBF, meanfield ELBO) to its true latent against "
    "the largest cross-assigned R^2; the true latents' R^2 from all inferred latents, and "
    "the image and firing-rate reconstruction R^2, against factor analysis (3 factors) of "
    "the same training bins (spikes and pixels together, no time structure).",
)
def mm_gpvae(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    torch.manual_seed(seed)
    model = zoo.create("mm_gpvae", **{k: s[k] for k in MODEL_KEYS})
    truth, data, extras = model.simulate_with_extras(seed=seed)
    n_train = int(s["train_fraction"] * s["trials"])
    train = {k: v[:n_train] for k, v in data.items()}
    test = {k: v[n_train:] for k, v in data.items()}
    test_truth = {g: _rows(truth[f"z_{g}"][n_train:].transpose(-1, -2)) for g in GROUPS}
    fit(
        model,
        model.guide,
        train,
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        elbo="meanfield",
        seed=seed,
        progress=False,
    )
    model.eval()
    with torch.no_grad():
        inferred = model.posterior_latents(model.guide, test)
    inferred = {g: _rows(z.transpose(-1, -2)) for g, z in inferred.items()}
    figures = _identification(inferred, test_truth)
    scores = model.evaluate(model.guide, test, rates=extras["rates"][n_train:])
    figures |= {"image_r2": scores["image_r2"], "rate_r2": scores["rate_r2"]}
    fa = _factor_analysis(
        train, test, extras["rates"][n_train:], test_truth, components=len(GROUPS), seed=seed
    )
    return {f"mm_gpvae/{k}": v for k, v in figures.items()} | {f"fa/{k}": v for k, v in fa.items()}
