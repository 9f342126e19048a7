"""MM-GPVAE on the paper's simulation (``preset="paper"``): are the shared, neural-only and
image-only latents identified on held-out trials (each inferred group predicts its own true
latent, not the others), are the GP length-scales learned, does the Fourier form beat the
time-domain GP-VAE, and does using both modalities recover the shared latent better than
a GP-VAE of either modality alone? Factor analysis is the simplest baseline."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

import zoo
from inference.metrics import affine_r2
from inference.svi import fit
from zoo.evidence import Check, Figure, RunContext, recipe
from zoo.models.mm_gpvae import PRESETS, rbf_gram

GROUPS = ("s", "n", "b")
#: model settings the recipe passes through to the config
MODEL_KEYS = ("preset", "trials", "time_bins", "neurons", "hidden")
#: the arms: name -> config overrides (every arm gets the same data, steps, batch and lr)
ARMS = {
    "mm_gpvae": {},
    "gpvae_time": {"parameterization": "time"},
    "spikes_only": {"modalities": "spikes", "latent_image": 0},
    "images_only": {"modalities": "images", "latent_neural": 0},
    # the paper preset with one "3" throughout: is the digit changing from frame to frame
    # (white in time) what shortens the learned length-scales and limits z_b?
    "one_digit": {"digits": "one"},
}
#: the overrides that change the simulated data (the arm then gets its own simulation,
#: same seed: the same latents and spikes)
DATA_KEYS = ("digits",)
#: length-scale grid of the profile-likelihood estimate from latent paths
ELL_GRID = np.geomspace(1.0, 60.0, 160)
NUGGET_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _rows(x: torch.Tensor) -> np.ndarray:
    """(trials, T, features) -> (trials T, features)."""
    return x.reshape(-1, x.shape[-1]).cpu().numpy().astype(np.float64)


def _r2(fitted: np.ndarray, truth: np.ndarray) -> float:
    """The model's reconstruction R^2 (``MMGPVAE.evaluate``): 1 - SSE / SST around the
    per-feature mean, pooled over features."""
    return 1.0 - float(((fitted - truth) ** 2).sum()) / float(((truth - truth.mean(0)) ** 2).sum())


def path_lengthscale(paths: np.ndarray) -> float:
    """The RBF length-scale that maximises the Gaussian likelihood of ``paths`` (trials, T),
    covariance a^2 (R(ell) + nu I), with the amplitude a^2 profiled out and ell and the
    relative nugget nu over grids: the same kernel form as the model and the generator.
    On the true latents it checks the estimator (it recovers the truth; with a fixed nugget
    larger than the paths' real noise it would not: nu = 1e-2 gives about 8 for 10). On the
    posterior-mean paths it is a probe of their high-frequency content: a single RBF's
    spectrum falls as exp(-omega^2 ell^2 / 2), so a residual of a percent of the variance
    that is rough in time pulls the fit far below the truth, as it pulls the ELBO's ell."""
    x = paths - paths.mean()
    n, t = x.shape
    best, arg = -np.inf, float("nan")
    for nugget in NUGGET_GRID:
        for ell in ELL_GRID:
            chol = np.linalg.cholesky(rbf_gram(t, ell) + nugget * np.eye(t))
            white = np.linalg.solve(chol, x.T)  # (T, n)
            amp2 = float((white**2).sum()) / (n * t)
            loglik = -0.5 * n * t * math.log(amp2) - n * float(np.log(np.diag(chol)).sum())
            if loglik > best:
                best, arg = loglik, float(ell)
    return arg


def zoom_r2_ceiling(z_b: np.ndarray, variance: float) -> float:
    """The R^2 of E[z_b | zoom] for the paper's zoom |1 + z_b|: the best any per-frame
    function of the zoom can do, since z_b and -2 - z_b give the same zoom (z_b ~
    N(0, variance) at each bin; the floor at MIN_ZOOM is ignored). Only the temporal
    smoothness of the paths can take a model above it."""
    u = np.abs(1.0 + z_b)
    branches = np.stack([u - 1.0, -u - 1.0])
    weights = np.exp(-(branches**2) / (2.0 * variance))
    expected = (weights * branches).sum(0) / weights.sum(0)
    return 1.0 - float(((z_b - expected) ** 2).sum()) / float(((z_b - z_b.mean()) ** 2).sum())


def _identification(inferred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict:
    """Matched R^2 per group (inferred g -> true g), the largest cross-assigned R^2 into
    each true group, and the R^2 from all inferred latents together (the figure a method
    without groups, factor analysis, is scored on too)."""
    out = {}
    everything = np.concatenate(list(inferred.values()), 1)
    for g in GROUPS:
        if g in inferred:
            out[f"r2_{g}"] = affine_r2(inferred[g], truth[g])
            others = [affine_r2(inferred[h], truth[g]) for h in inferred if h != g]
            out[f"cross_r2_{g}"] = max(others)
        out[f"r2_all_to_{g}"] = affine_r2(everything, truth[g])
    if len(inferred) == len(GROUPS):
        out["r2_matched_min"] = min(out[f"r2_{g}"] for g in GROUPS)
        out["cross_r2_max"] = max(out[f"cross_r2_{g}"] for g in GROUPS)
    return out


def _lengthscales(model, train: dict, inferred_paths: dict, true_ell: float) -> dict:
    """The learned length-scale sites (posterior medians) against the truth, with their
    relative errors, and the profile-likelihood length-scale of the posterior-mean paths."""
    from inference.data import full_batch

    with torch.no_grad():
        median = model.guide.median(full_batch(train))
    out = {}
    for g, paths in inferred_paths.items():
        ell = float(median[f"lengthscale_{g}"])
        out[f"lengthscale_{g}"] = ell
        out[f"lengthscale_rel_error_{g}"] = ell / true_ell - 1.0
        out[f"path_lengthscale_{g}"] = path_lengthscale(paths)
    out["lengthscale_abs_rel_error_max"] = max(
        abs(out[f"lengthscale_rel_error_{g}"]) for g in inferred_paths
    )
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


def _arm(overrides: dict, s: dict, data: dict, truth: dict, rates, seed: int) -> dict:
    """Fit one arm on the training trials and score it on the held-out ones."""
    torch.manual_seed(seed)
    model = zoo.create("mm_gpvae", **{k: s[k] for k in MODEL_KEYS}, **overrides)
    if any(k in overrides for k in DATA_KEYS):
        truth, data, extras = model.simulate_with_extras(seed=seed)
        rates = extras["rates"]
    n_train = int(s["train_fraction"] * model.config.trials)
    data = {k: v for k, v in data.items() if model.observes(k)}
    train = {k: v[:n_train] for k, v in data.items()}
    test = {k: v[n_train:] for k, v in data.items()}
    start = time.perf_counter()
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
        latents = model.posterior_latents(model.guide, test)
    inferred = {g: _rows(z.transpose(-1, -2)) for g, z in latents.items()}
    test_truth = {g: _rows(truth[f"z_{g}"][n_train:].transpose(-1, -2)) for g in GROUPS}
    out = _identification(inferred, test_truth)
    if "b" in inferred:  # what the images identify: the zoom |1 + z_b|, not z_b's sign
        out["r2_b_to_zoom"] = affine_r2(inferred["b"], np.abs(1.0 + test_truth["b"]))
    paths = {g: z[:, 0, :].cpu().numpy().astype(np.float64) for g, z in latents.items()}
    out |= _lengthscales(model, train, paths, model.config.true_lengthscale)
    out |= model.evaluate(model.guide, test, rates=rates[n_train:] if rates is not None else None)
    out["seconds"] = time.perf_counter() - start
    return out


@recipe(
    "mm_gpvae",
    headline=[
        Figure("mm_gpvae/r2_matched_min", "smallest matched latent R^2 (s, n, b)", 3),
        Figure("mm_gpvae/cross_r2_max", "largest cross-assigned R^2", 3),
        Figure("mm_gpvae/lengthscale_abs_rel_error_max", "largest length-scale error (rel.)", 2),
        Figure("gpvae_time/r2_matched_min", "time-domain GP-VAE: smallest matched R^2", 3),
        Figure("mm_gpvae/r2_all_to_s", "shared latent R^2, all latents", 3),
        Figure("spikes_only/r2_all_to_s", "spikes-only GP-VAE: same", 3),
        Figure("images_only/r2_all_to_s", "images-only GP-VAE: same", 3),
    ],
    settings={
        "preset": "paper",
        "trials": 300,
        "time_bins": 60,
        "neurons": 100,
        "hidden": 64,
        "train_fraction": 0.8,
        "steps": 3000,
        "batch_size": 32,
        "lr": 5e-3,
    },
    quick={"trials": 20, "time_bins": 16, "neurons": 10, "hidden": 16, "steps": 10},
    paper="Gondur et al., ICLR 2024 (MM-GPVAE)",
    data="the paper's simulation (300 trials, T = 60, 100 neurons): load_digits 3s rotated "
    "by a shared GP and zoomed by an image-only GP; Poisson spikes from the shared and a "
    "neural-only GP",
    claim="On held-out trials: R^2 of affine fits from each inferred latent group (shared, "
    "neural-only, image-only; Fourier form, RBF, meanfield ELBO) to its true latent against "
    "the largest cross-assigned R^2; the learned length-scales against the truth; the same "
    "model in the time domain (the standard GP-VAE); the shared latent's R^2 from all "
    "latents against GP-VAEs of the spikes alone and of the images alone (same latents for "
    "that modality, data, steps and learning rate) and factor analysis (3 factors, spikes "
    "and pixels together, no time structure); z_b's R^2 against the zoom |1 + z_b| the "
    "images show and the per-frame ceiling of that non-injective zoom; the same model on "
    "the paper preset with one 3 throughout.",
    checks=[
        Check("shared latent z_s: matched R^2 at least 0.9", "mm_gpvae/r2_s", ">=", 0.9),
        Check("neural-only latent z_n: matched R^2 at least 0.9", "mm_gpvae/r2_n", ">=", 0.9),
        Check(
            "image-only latent z_b: matched R^2 at least 0.9",
            "mm_gpvae/r2_b",
            ">=",
            0.9,
            why="the images show z_b only through the zoom |1 + z_b|, which is not injective; "
            "the results file gives its R^2 against that zoom and the per-frame ceiling",
        ),
        Check("cross-assigned R^2 at most 0.2", "mm_gpvae/cross_r2_max", "<=", 0.2),
        Check(
            "learned length-scales within 25% of the truth",
            "mm_gpvae/lengthscale_abs_rel_error_max",
            "<=",
            0.25,
            why="they come out short of the truth. The spikes-only GP-VAE learns them close to "
            "it and the images-only one far shorter (results file), which points at the image "
            "likelihood, though z_n, which the images do not see, also comes out short, by "
            "less. Not the meanfield ELBO's Jacobian term: its fix left these figures unchanged",
        ),
        Check(
            "shared latent: recovered from both modalities at least as well as from spikes alone",
            "mm_gpvae/r2_all_to_s",
            ">=",
            "spikes_only/r2_all_to_s",
            why="the spikes-only GP-VAE recovers z_s better at the same budget; why the "
            "images do not help here is not established",
        ),
    ],
)
def mm_gpvae(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    start = time.perf_counter()
    model = zoo.create("mm_gpvae", **{k: s[k] for k in MODEL_KEYS})
    truth, data, extras = model.simulate_with_extras(seed=seed)
    rates = extras["rates"]
    figures: dict[str, float] = {}
    for name, overrides in ARMS.items():
        scores = _arm(overrides, s, data, truth, rates, seed)
        figures |= {f"{name}/{k}": float(v) for k, v in scores.items()}
    n_train = int(s["train_fraction"] * model.config.trials)
    train = {k: v[:n_train] for k, v in data.items()}
    test = {k: v[n_train:] for k, v in data.items()}
    test_truth = {g: _rows(truth[f"z_{g}"][n_train:].transpose(-1, -2)) for g in GROUPS}
    fa = _factor_analysis(train, test, rates[n_train:], test_truth, len(GROUPS), seed)
    figures |= {f"fa/{k}": v for k, v in fa.items()}
    # the estimator of path_lengthscale on the true held-out latents (its own check)
    for g in GROUPS:
        true_paths = truth[f"z_{g}"][n_train:, 0, :].numpy().astype(np.float64)
        figures[f"truth/path_lengthscale_{g}"] = path_lengthscale(true_paths)
    figures["truth/lengthscale"] = float(model.config.true_lengthscale)
    design = PRESETS[model.config.preset]
    if design.zoom == "paper":
        figures["truth/r2_b_ceiling_per_frame"] = zoom_r2_ceiling(
            test_truth["b"], design.variances[2]
        )
    figures["seconds_per_seed"] = time.perf_counter() - start
    return figures
