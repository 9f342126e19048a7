"""Measures of a learned representation, for any zoo model's latents or any feature matrix.

- :func:`linear_probe`: how much of a label a linear read-out of frozen features recovers
  (standardised features; the regularisation chosen by cross-validation on the training rows
  only, so the test rows never tune it), for classes (accuracy) or a number (R^2);
- :func:`bayesian_linear_probe`: the same read-out as a Bayesian model sampled by NUTS, for
  where a figure needs its uncertainty (posterior accuracy with its spread, R-hat, ESS);
- :func:`cluster_scores`: an unsupervised partition against labels (NMI, adjusted Rand,
  accuracy after the best one-to-one relabelling);
- :func:`embedding_spread` and :func:`effective_rank`: collapse checks. A representation that
  maps every input to one point has spread 0 and effective rank 1; one that uses a few
  directions only (dimensional collapse) keeps its spread but loses rank.
- :func:`representation_report`: all of the above for one matrix of embeddings, e.g.
  ``inference.relative.latent_means(model, guide, data)`` of any zoo model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from inference.metrics import hungarian_accuracy

__all__ = [
    "fit_linear_probe",
    "linear_probe",
    "bayesian_linear_probe",
    "cluster_scores",
    "embedding_spread",
    "effective_rank",
    "representation_report",
]

TASKS = ("classification", "regression")
PENALTIES = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def _features(values, name: str) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a (rows, features) matrix, got shape {array.shape}")
    if len(array) < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _targets(values, rows: int, name: str, task: str) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.shape != (rows,):
        raise ValueError(
            f"{name} must have shape ({rows},), one per feature row, got {array.shape}"
        )
    if task == "classification":
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.mod(array, 1) == 0):
                raise ValueError(f"{name} must be integer class labels for classification")
            array = array.astype(np.int64)
    elif not np.isfinite(array.astype(np.float64)).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _validated(train_x, train_y, test_x, test_y, task):
    _check_task(task)
    train_x, test_x = _features(train_x, "train_x"), _features(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train_x has {train_x.shape[1]} features and test_x {test_x.shape[1]}; they must match"
        )
    train_y = _targets(train_y, len(train_x), "train_y", task)
    test_y = _targets(test_y, len(test_x), "test_y", task)
    if task == "classification" and len(np.unique(train_y)) < 2:
        raise ValueError("train_y holds a single class; a probe needs at least 2")
    return train_x, train_y, test_x, test_y


def _split_inputs(train_x, train_y, test_x, test_y, task):
    """The validated inputs with the features standardised on the training rows."""
    train_x, train_y, test_x, test_y = _validated(train_x, train_y, test_x, test_y, task)
    scaler = StandardScaler().fit(train_x)
    return scaler.transform(train_x), train_y, scaler.transform(test_x), test_y


class _ProbeHead(nn.Module):
    """The Bayesian read-out of :func:`bayesian_linear_probe` as a zoo-style model of a batch
    ``{"x", "y"}``; ``classes = 0`` for a regression."""

    def __init__(self, classes: int, prior_scale: float):
        super().__init__()
        self.classes, self.prior_scale = classes, prior_scale

    def forward(self, batch) -> None:
        x, y = batch["x"], batch["y"]
        shape = (x.shape[1], self.classes) if self.classes else (x.shape[1],)
        w = pyro.sample("w", dist.Normal(0.0, self.prior_scale).expand(shape).to_event(len(shape)))
        b_shape = (self.classes,) if self.classes else ()
        b = pyro.sample("b", dist.Normal(0.0, 5.0).expand(b_shape).to_event(len(b_shape)))
        mean = x @ w + b
        with pyro.plate("rows", x.shape[0]):
            if self.classes:
                pyro.sample("y", dist.Categorical(logits=mean), obs=y)
            else:
                sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
                pyro.sample("y", dist.Normal(mean, sigma), obs=y)


def fit_linear_probe(
    train_x,
    train_y,
    *,
    task: str = "classification",
    penalties: Sequence[float] = PENALTIES,
    folds: int = 3,
    seed: int = 0,
) -> Pipeline:
    """A linear read-out of frozen features, fitted: standardisation on the training rows,
    then logistic regression (classification) or ridge (regression) with the L2 penalty
    chosen from ``penalties`` (inverse strength ``C``; ridge's ``alpha = 1 / C``) by
    ``folds``-fold cross-validation on the training rows; with one penalty there is nothing
    to choose and no cross-validation. The pipeline's ``predict_proba`` gives a fixed probe's
    probabilities (a probe that scores generations, say)."""
    _check_task(task)
    train_x = _features(train_x, "train_x")
    train_y = _targets(train_y, len(train_x), "train_y", task)
    penalties = [float(c) for c in penalties]
    if not penalties or min(penalties) <= 0:
        raise ValueError(f"penalties must be positive inverse strengths, got {penalties}")
    if task == "regression":
        head = (
            Ridge(alpha=1.0 / penalties[0])
            if len(penalties) == 1
            else RidgeCV(alphas=[1.0 / c for c in penalties], cv=folds)
        )
        return make_pipeline(StandardScaler(), head).fit(train_x, train_y)
    counts = np.unique(train_y, return_counts=True)[1]
    if len(counts) < 2:
        raise ValueError("train_y holds a single class; a probe needs at least 2")
    if len(penalties) == 1:
        head = LogisticRegression(C=penalties[0], max_iter=2000)
    elif counts.min() < 2:
        raise ValueError("every class in train_y needs at least 2 rows for the probe's CV")
    else:
        head = LogisticRegressionCV(
            Cs=penalties, cv=min(folds, int(counts.min())), max_iter=2000, random_state=seed
        )
    with warnings.catch_warnings():
        # scikit-learn >= 1.8 warns that LogisticRegressionCV's defaults (scoring, l1_ratios,
        # its fitted attributes) will change; the probe relies on today's, and the names to
        # pin them do not exist in the older versions pyproject.toml allows
        warnings.simplefilter("ignore", FutureWarning)
        return make_pipeline(StandardScaler(), head).fit(train_x, train_y)


def _chosen_penalty(probe: Pipeline) -> float:
    head = probe[-1]
    if isinstance(head, LogisticRegressionCV):
        return float(head.C_[0])
    if isinstance(head, RidgeCV):
        return float(1.0 / head.alpha_)
    return float(head.C) if isinstance(head, LogisticRegression) else float(1.0 / head.alpha)


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    task: str = "classification",
    penalties: Sequence[float] = PENALTIES,
    folds: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Test score of a linear read-out of frozen features (:func:`fit_linear_probe`:
    standardised on the training rows, the L2 penalty chosen by cross-validation on them).

    :returns: ``{"accuracy", "C"}`` for classification, ``{"r2", "C"}`` for regression.
    """
    train_x, train_y, test_x, test_y = _validated(train_x, train_y, test_x, test_y, task)
    probe = fit_linear_probe(
        train_x, train_y, task=task, penalties=penalties, folds=folds, seed=seed
    )
    metric = "accuracy" if task == "classification" else "r2"
    return {metric: float(probe.score(test_x, test_y)), "C": _chosen_penalty(probe)}


def bayesian_linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    task: str = "classification",
    prior_scale: float = 1.0,
    warmup: int = 300,
    draws: int = 300,
    chains: int = 2,
    seed: int = 0,
) -> dict[str, object]:
    """A linear read-out with a posterior, by NUTS: ``w ~ N(0, prior_scale^2)`` on
    standardised features, ``b ~ N(0, 5^2)``, then ``y ~ Categorical(softmax(x w + b))`` or
    ``y ~ N(x w + b, sigma^2)`` with ``sigma ~ HalfNormal(1)``.

    :returns: ``accuracy`` (or ``r2``) of the posterior-predictive mean on the test rows,
        its per-draw ``*_sd`` and 5-95% ``*_interval``, ``weights`` (draws, features[, classes]),
        and ``r_hat_max`` / ``ess_bulk_min`` over the weights (ArviZ).
    """
    from inference.diagnostics.summary import quiet_arviz
    from inference.mcmc import quiet_nuts

    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be positive, got {prior_scale}")
    train_x, train_y, test_x, test_y = _split_inputs(train_x, train_y, test_x, test_y, task)
    classes = int(max(train_y.max(), test_y.max())) + 1 if task == "classification" else 0
    data = {
        "x": torch.as_tensor(train_x, dtype=torch.get_default_dtype()),
        "y": torch.as_tensor(train_y, dtype=torch.long if classes else torch.get_default_dtype()),
    }
    mcmc = quiet_nuts(
        _ProbeHead(classes, prior_scale),
        data,
        chains=chains,
        warmup=warmup,
        draws=draws,
        seed=seed,
        progress=False,
    )
    samples = mcmc.get_samples(group_by_chain=True)
    w, b = samples["w"].flatten(0, 1), samples["b"].flatten(0, 1)
    mean = torch.as_tensor(test_x, dtype=w.dtype) @ w + b.unsqueeze(1)  # (S, N[, K])
    with quiet_arviz():
        import arviz as az

        idata = az.from_dict(posterior={"w": samples["w"].numpy()})
        r_hat = float(np.nanmax(az.rhat(idata)["w"].values))
        ess = float(np.nanmin(az.ess(idata, method="bulk")["w"].values))
    out: dict[str, object] = {"weights": w.numpy(), "r_hat_max": r_hat, "ess_bulk_min": ess}
    if classes:
        per_draw = (mean.argmax(-1).numpy() == test_y[None]).mean(1)
        predictive = torch.softmax(mean, -1).mean(0).argmax(-1).numpy()
        score, key = float((predictive == test_y).mean()), "accuracy"
    else:
        residual = mean.numpy() - test_y[None]
        total = ((test_y - test_y.mean()) ** 2).sum()
        per_draw = 1.0 - (residual**2).sum(1) / total
        score = float(1.0 - ((mean.mean(0).numpy() - test_y) ** 2).sum() / total)
        key = "r2"
    out[key] = score
    out[f"{key}_sd"] = float(per_draw.std())
    out[f"{key}_interval"] = (
        float(np.quantile(per_draw, 0.05)),
        float(np.quantile(per_draw, 0.95)),
    )
    return out


def cluster_scores(pred, labels) -> dict[str, float]:
    """A partition ``pred`` against true ``labels`` (both integer, one per row): normalised
    mutual information, adjusted Rand index, and accuracy after the best one-to-one
    relabelling of the clusters (Hungarian). ``num_clusters`` is the number of distinct
    predicted clusters (1 for a collapse)."""
    pred = _targets(pred, len(np.asarray(pred)), "pred", "classification")
    labels = _targets(labels, len(pred), "labels", "classification")
    if pred.min() < 0 or labels.min() < 0:
        raise ValueError("pred and labels must be non-negative integers")
    size = int(max(pred.max(), labels.max())) + 1
    return {
        "nmi": float(normalized_mutual_info_score(labels, pred)),
        "ari": float(adjusted_rand_score(labels, pred)),
        "hungarian_accuracy": hungarian_accuracy(pred, labels, size),
        "num_clusters": int(len(np.unique(pred))),
    }


def embedding_spread(z) -> float:
    """Spread of embeddings on the unit sphere: ``sqrt(d) * mean_j std_i(z_ij / ||z_i||)``
    over rows ``i`` and dimensions ``j`` (the collapse measure of Chen & He 2021, scaled by
    ``sqrt(d)``). About 1 for directions spread evenly over the sphere, 0 when every row
    points the same way (complete collapse), whatever noise of a smaller scale rides on it.
    Rows are not centred: a shared offset that dwarfs the differences is collapse."""
    z = _features(z, "z")
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise ValueError("z holds all-zero rows, whose direction is undefined")
    return float(np.sqrt(z.shape[1]) * (z / norms).std(0).mean())


def effective_rank(z) -> float:
    """Effective rank of the embeddings (Roy & Vetterli 2007, as RankMe of Garrido et al.
    2023 uses it): ``exp(H(p))`` with ``p`` the singular values of ``z`` (not centred)
    normalised to sum to 1. Between 1 (one direction carries everything, as when every row
    is nearly the same vector) and ``min(rows, d)`` (all directions alike)."""
    z = _features(z, "z")
    singular = np.linalg.svd(z, compute_uv=False)
    if singular.sum() < 1e-12:
        raise ValueError("z is all zeros; its rank is undefined")
    p = singular / singular.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def representation_report(
    z,
    labels=None,
    *,
    test_fraction: float = 0.3,
    num_clusters: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Collapse checks for embeddings ``z`` (rows, d), and with integer ``labels`` a linear
    probe on a stratified ``test_fraction`` split and k-means (k = the number of classes,
    or ``num_clusters``) scored by :func:`cluster_scores`."""
    z = _features(z, "z")
    report = {"spread": embedding_spread(z), "effective_rank": effective_rank(z), "dim": z.shape[1]}
    if labels is None:
        return report
    labels = _targets(labels, len(z), "labels", "classification")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train_x, test_x, train_y, test_y = train_test_split(
        z, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    report["probe_accuracy"] = linear_probe(train_x, train_y, test_x, test_y, seed=seed)["accuracy"]
    k = num_clusters or len(np.unique(labels))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(
        StandardScaler().fit_transform(z)
    )
    report.update({f"cluster_{k}": v for k, v in cluster_scores(clusters, labels).items()})
    return report
