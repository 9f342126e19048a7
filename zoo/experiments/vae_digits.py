"""The digits VAE against density models of the same binarized held-out digits, all in
nats per image of 64 binary pixels: the VAE's held-out ELBO and IWAE bound (lower bounds on
its log-likelihood) beside the exact held-out log-likelihood of

- independent pixels (each pixel's training frequency, add-one smoothed): the floor any
  model of the images must beat;
- a mixture of independent-pixel Bernoullis fitted by EM, with the number of components
  chosen on a validation part of the training images: the classical latent-variable model
  of binary images, simple and strong.

(A Gaussian PCA / probabilistic PCA likelihood is a density on R^64, not a probability of
binary images, so its nats are not comparable and it is left out.) Each seed draws its own
train/held-out split; every arm sees the same split. The mixture's one setting is tuned on
training images; the VAE runs at its defaults (latent 10, MLP 256x256, Adam 1e-3, batch
128, 300 epochs), untuned: a gap in the mixture's favour may partly be tuning."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp

import zoo
from inference.data import holdout_split
from inference.diagnostics.collapse import latent_activity
from inference.evaluation import elbo_per_row, iwae_per_row
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe


def _bernoulli_loglik(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``log p(x_n | component k)`` for independent pixels: shape (N, K)."""
    return x @ np.log(means).T + (1.0 - x) @ np.log1p(-means).T


def independent_pixels_loglik(train: np.ndarray, test: np.ndarray) -> float:
    """Held-out log-likelihood (nats per image) of independent pixels at their add-one
    smoothed training frequencies."""
    means = (train.sum(0, keepdims=True) + 1.0) / (len(train) + 2.0)
    return float(_bernoulli_loglik(test, means).mean())


def fit_bernoulli_mixture(
    x: np.ndarray, components: int, *, seed: int, iterations: int = 200, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """EM for a mixture of independent-pixel Bernoullis; ``(log weights, means)``. Each
    M-step adds one pseudo-count per pixel value (a Beta(2, 2) MAP), so no mean reaches
    0 or 1 and held-out images never get log 0."""
    rng = np.random.default_rng(seed)
    resp = rng.dirichlet(np.ones(components), size=len(x))
    previous = -np.inf
    for _ in range(iterations):
        counts = resp.sum(0)
        means = (resp.T @ x + 1.0) / (counts[:, None] + 2.0)
        log_weights = np.log((counts + 1.0) / (len(x) + components))
        joint = _bernoulli_loglik(x, means) + log_weights
        norm = logsumexp(joint, axis=1, keepdims=True)
        resp = np.exp(joint - norm)
        current = float(norm.mean())
        if current - previous < tol * abs(current):
            break
        previous = current
    return log_weights, means


def mixture_loglik(x: np.ndarray, log_weights: np.ndarray, means: np.ndarray) -> float:
    """Mean ``log p(x_n)`` (nats per image) under a fitted Bernoulli mixture."""
    return float(logsumexp(_bernoulli_loglik(x, means) + log_weights, axis=1).mean())


def _mixture_arm(train: np.ndarray, test: np.ndarray, s: dict, seed: int) -> dict[str, float]:
    """Choose the number of components on a validation part of ``train`` (never on
    ``test``), refit on all of ``train``, and score ``test``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    n_val = int(round(s["mixture_validation"] * len(train)))
    fit_rows, val_rows = train[order[n_val:]], train[order[:n_val]]
    scores = {
        k: mixture_loglik(val_rows, *fit_bernoulli_mixture(fit_rows, k, seed=seed))
        for k in s["mixture_components"]
    }
    best = max(scores, key=scores.get)
    chosen = fit_bernoulli_mixture(train, best, seed=seed)
    return {
        "heldout_loglik": mixture_loglik(test, *chosen),
        "components": float(best),
        "train_loglik": mixture_loglik(train, *chosen),
    }


def _vae_arm(train: dict, test: dict, s: dict, seed: int) -> dict[str, float]:
    """The VAE at its default architecture and optimizer, trained ``epochs`` epochs (300: the
    model's default)."""
    model = zoo.create("vae_digits", epochs=s["epochs"])
    fit(model, model.guide, train, config=model.config, seed=seed, progress=False)
    model.eval()
    torch.manual_seed(seed)
    activity = latent_activity(model, model.guide, test)["z"]
    return {
        "heldout_elbo": float(elbo_per_row(model, model.guide, test, num_particles=10).mean()),
        "heldout_iwae": float(
            iwae_per_row(model, model.guide, test, num_particles=s["iwae_particles"]).mean()
        ),
        "train_elbo": float(elbo_per_row(model, model.guide, train, num_particles=10).mean()),
        "active_units": float(activity["active_units"]),
        "informative_dims": float(activity["informative_dims"]),
        "latent_dim": float(model.config.latent_dim),
    }


@recipe(
    "vae_digits",
    headline=[
        Figure("vae/heldout_elbo", "VAE held-out ELBO (nats/image)", 2),
        Figure("vae/heldout_iwae", "VAE held-out IWAE", 2),
        Figure("bernoulli_mixture/heldout_loglik", "Bernoulli mixture held-out log p", 2),
        Figure("independent_pixels/heldout_loglik", "independent pixels held-out log p", 2),
        Figure("vae/informative_dims", "VAE informative dims, KL >= 0.1 nats (of 10)", 1),
        Figure("vae/active_units", "VAE active units, Var E[z|x] > 0.01 (of 10)", 1),
    ],
    settings={
        "holdout": 0.15,
        "epochs": 300,
        "iwae_particles": 1000,
        "mixture_components": [2, 5, 10, 20, 40, 80, 160],
        "mixture_validation": 0.2,
    },
    quick={"epochs": 2, "iwae_particles": 10, "mixture_components": [2, 5]},
    paper="reference (Kingma & Welling 2014)",
    data="load_digits binarized at half intensity (1797 images), 15% held out per seed",
    claim="Held-out ELBO and IWAE bound of the default VAE against the exact held-out "
    "log-likelihood of independent pixels and of a Bernoulli mixture (components chosen on "
    "training images), in nats per binarized image, on the same split; VAE active units.",
)
def vae_digits(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    data = zoo.create("vae_digits").default_data()
    train, test = holdout_split(data, s["holdout"], seed)
    x_train, x_test = train["x"].numpy().astype(float), test["x"].numpy().astype(float)
    figures = {"independent_pixels/heldout_loglik": independent_pixels_loglik(x_train, x_test)}
    mixture = _mixture_arm(x_train, x_test, s, seed)
    figures |= {f"bernoulli_mixture/{k}": v for k, v in mixture.items()}
    figures |= {f"vae/{k}": v for k, v in _vae_arm(train, test, s, seed).items()}
    return figures
