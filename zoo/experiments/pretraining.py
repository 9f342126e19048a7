"""Unsupervised pretraining, then regression (Ge, Tang, Fan & Jin 2024): the zoo's Pyro
models fitted by SVI on the unlabeled rows, their features fed to least squares on a few
labeled rows, against ridge on the raw inputs; the factor model's closed-form MLE beside
its SVI fit as a check, and the mixture's assignments against k-means."""

from __future__ import annotations

import numpy as np
import pyro
import torch
from sklearn.cluster import KMeans

import guides
import zoo
from inference.metrics import hungarian_accuracy
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.models.pretraining import (
    ROLE_TEST,
    ROLE_TRAIN,
    ROLE_UNLABELED,
    factor_features,
    least_squares,
    mixture_features,
    ppca_mle,
    principal_angles,
    ridge_baseline,
)


def _split(data: dict[str, torch.Tensor]) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """The unlabeled rows (what pretraining sees), and x, y, role as NumPy arrays."""
    role = data["role"].numpy()
    unlabeled = {k: v[data["role"] == ROLE_UNLABELED] for k, v in data.items()}
    return unlabeled, data["x"].numpy().astype(float), data["y"].numpy().astype(float), role


def _pretrain(model, unlabeled: dict, s: dict, seed: int):
    """SVI of the Pyro model on the unlabeled rows only (the labeled ones never reach it),
    ``s["restarts"]`` times from different seeds, keeping the fit of the lowest final loss
    (the negative ELBO averaged over its last steps): a mixture's likelihood has local
    optima, so the model gets as many restarts as k-means does."""
    best, best_loss = None, float("inf")
    for restart in range(s["restarts"]):
        run_seed = 1000 * seed + restart
        pyro.set_rng_seed(run_seed)
        guide = guides.build(s["guide"], model)
        result = fit(
            model,
            guide,
            unlabeled,
            steps=s["svi_steps"],
            lr=s["lr"],
            batch_size=s["batch_size"],
            progress=False,
            seed=run_seed,
        )
        if result.final_loss < best_loss:
            best, best_loss = guide, result.final_loss
    return best


def _test_mse(features: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Least squares on ``features`` of the training rows, MSE on the test rows."""
    predict = least_squares(features[train], y[train])
    return float(np.mean((predict(features[test]) - y[test]) ** 2))


def _ridge_mse(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    predict = ridge_baseline(x[train], y[train])
    return float(np.mean((predict(x[test]) - y[test]) ** 2))


def _first_labeled(role: np.ndarray, n: int) -> np.ndarray:
    """A mask of the first ``n`` labeled training rows: the designs at smaller n are nested
    in the larger ones, so the curves over n share their rows."""
    train = np.flatnonzero(role == ROLE_TRAIN)[:n]
    mask = np.zeros(len(role), dtype=bool)
    mask[train] = True
    return mask


# ----- factor model --------------------------------------------------------------------------


@recipe(
    "pretraining_factor",
    headline=[
        Figure("svi/excess_n20", "pretrain (SVI) + LS, excess MSE, n=20", 3),
        Figure("mle/excess_n20", "pretrain (closed-form MLE) + LS, n=20", 3),
        Figure("ridge/excess_n20", "ridge on raw x, excess MSE, n=20", 3),
        Figure("svi/excess_n100", "pretrain (SVI) + LS, excess MSE, n=100", 3),
        Figure("ridge/excess_n100", "ridge on raw x, excess MSE, n=100", 3),
        Figure("svi/max_angle_to_mle_deg", "SVI vs MLE loadings, largest angle (deg)", 2),
    ],
    settings={
        "input_dim": 50,
        "latent_dim": 3,
        "num_unlabeled": 5000,
        "labeled": [10, 20, 50, 100],
        "num_test": 2000,
        "svi_steps": 1500,
        "lr": 0.02,
        "batch_size": 500,
        "guide": "delta",
        "restarts": 1,
    },
    quick={"num_unlabeled": 300, "labeled": [10, 20, 100], "num_test": 200, "svi_steps": 20},
    paper="Ge, Tang, Fan & Jin 2024 (ICLR), paper 8",
    data="simulated factor model from the prior (d = 50, r = 3, y = z.beta + N(0, 0.5^2)), "
    "m = 5000 unlabeled rows, a new draw per seed",
    claim="Excess test MSE (over the Bayes MSE of the true features and weights) of least "
    "squares on the features E[z | x] of the Pyro factor model pretrained by SVI (MAP, delta "
    "guide) on the unlabeled rows, against ridge (leave-one-out penalty) on the raw x, at "
    "n labeled rows; the closed-form PPCA MLE's features through the same least squares as "
    "a check of the SVI fit, and the largest principal angle between their loadings.",
    seeds=5,
)
def pretraining_factor(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    torch.set_num_threads(1)
    model = zoo.create(
        "pretraining_factor",
        input_dim=s["input_dim"],
        latent_dim=s["latent_dim"],
        num_unlabeled=s["num_unlabeled"],
        num_labeled=max(s["labeled"]),
        num_test=s["num_test"],
    )
    truth, data, extras = model.simulate_with_extras(seed)
    unlabeled, x, y, role = _split(data)
    test = role == ROLE_TEST
    oracle = factor_features(x[test], truth["W"].numpy(), float(truth["sigma"]))
    bayes = float(np.mean((oracle @ extras["beta"].numpy() - y[test]) ** 2))

    guide = _pretrain(model, unlabeled, s, seed)
    w_svi, sigma_svi = model.point_estimate(guide, unlabeled)
    w_mle, sigma_mle = ppca_mle(x[role == ROLE_UNLABELED], s["latent_dim"])
    features = {
        "svi": factor_features(x, w_svi, sigma_svi),
        "mle": factor_features(x, w_mle, sigma_mle),
    }
    figures = {
        "bayes_mse": bayes,
        "svi/sigma": sigma_svi,
        "mle/sigma": sigma_mle,
        "true/sigma": float(truth["sigma"]),
        "svi/max_angle_to_mle_deg": float(np.degrees(principal_angles(w_svi, w_mle).max())),
        "svi/max_angle_to_truth_deg": float(
            np.degrees(principal_angles(w_svi, truth["W"].numpy()).max())
        ),
    }
    for n in s["labeled"]:
        train = _first_labeled(role, n)
        for name, f in features.items():
            figures[f"{name}/excess_n{n}"] = _test_mse(f, y, train, test) - bayes
        figures[f"ridge/excess_n{n}"] = _ridge_mse(x, y, train, test) - bayes
    return figures


# ----- Gaussian mixture ----------------------------------------------------------------------


def _mixture_params(model, guide, unlabeled) -> tuple[np.ndarray, np.ndarray]:
    locs, weights = model.point_estimate(guide, unlabeled)
    return locs, weights / weights.sum()


@recipe(
    "pretraining_mixture",
    headline=[
        Figure("svi/test_mse_n20", "pretrain (SVI) + LS, test MSE, n=20", 3),
        Figure("ridge/test_mse_n20", "ridge on raw x, test MSE, n=20", 3),
        Figure("true_params/test_mse_n20", "true mixture + LS, test MSE, n=20", 3),
        Figure("svi/assignment_accuracy", "SVI assignment accuracy (matched)", 3),
        Figure("kmeans/assignment_accuracy", "k-means accuracy (matched)", 3),
        Figure("bayes/assignment_accuracy", "Bayes-rule accuracy (true mixture)", 3),
    ],
    settings={
        "input_dim": 20,
        "num_components": 4,
        "num_unlabeled": 5000,
        "labeled": [10, 20, 50],
        "num_test": 1000,
        "svi_steps": 1500,
        "lr": 0.02,
        "batch_size": 500,
        "guide": "normal",
        "restarts": 3,
    },
    quick={
        "num_unlabeled": 300,
        "labeled": [10, 20],
        "num_test": 200,
        "svi_steps": 20,
        "restarts": 2,
    },
    paper="Ge, Tang, Fan & Jin 2024 (ICLR), paper 8",
    data="simulated Gaussian mixture from the prior (d = 20, K = 4, y = theta_c + "
    "N(0, 0.5^2)), m = 5000 unlabeled rows, a new draw per seed",
    claim="Test MSE of least squares on the responsibilities p(c | x) of the Pyro mixture "
    "pretrained by SVI (mean-field guide, its median; the best of a few restarts by final "
    "ELBO) on the unlabeled rows, against ridge (leave-one-out penalty) on the raw x and "
    "against the true mixture's responsibilities, at n labeled rows; accuracy of the model's "
    "infer_discrete MAP assignments on the test rows (best relabeling) against k-means with "
    "the same number of restarts and the Bayes rule of the true mixture.",
    seeds=5,
)
def pretraining_mixture(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    torch.set_num_threads(1)
    k = s["num_components"]
    model = zoo.create(
        "pretraining_mixture",
        input_dim=s["input_dim"],
        num_components=k,
        num_unlabeled=s["num_unlabeled"],
        num_labeled=max(s["labeled"]),
        num_test=s["num_test"],
    )
    truth, data, extras = model.simulate_with_extras(seed)
    unlabeled, x, y, role = _split(data)
    test = role == ROLE_TEST
    components = extras["c"].numpy()

    guide = _pretrain(model, unlabeled, s, seed)
    locs, weights = _mixture_params(model, guide, unlabeled)
    features = {
        "svi": mixture_features(x, locs, weights),
        "true_params": mixture_features(x, truth["locs"].numpy(), truth["weights"].numpy()),
    }
    test_rows = {key: value[data["role"] == ROLE_TEST] for key, value in data.items()}
    assigned = model.assignments(guide, test_rows).numpy()
    kmeans = KMeans(k, n_init=s["restarts"], random_state=seed).fit(x[role == ROLE_UNLABELED])
    figures = {
        "svi/assignment_accuracy": hungarian_accuracy(assigned, components[test], k),
        "kmeans/assignment_accuracy": hungarian_accuracy(
            kmeans.predict(x[test]), components[test], k
        ),
        "bayes/assignment_accuracy": float(
            np.mean(features["true_params"][test].argmax(1) == components[test])
        ),
    }
    for n in s["labeled"]:
        train = _first_labeled(role, n)
        for name, f in features.items():
            figures[f"{name}/test_mse_n{n}"] = _test_mse(f, y, train, test)
        figures[f"ridge/test_mse_n{n}"] = _ridge_mse(x, y, train, test)
    return figures
