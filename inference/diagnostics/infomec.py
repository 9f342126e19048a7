"""InfoMEC: modularity, explicitness and compactness of a latent code (paper 12's metrics).

Hsu, Dorrell, Whittington, Wu & Finn (NeurIPS 2023), "Disentanglement via Latent
Quantization", measure disentanglement against known discrete generating factors
("sources") s_1..s_S from the normalized mutual information between each source and each
latent dimension z_j,

    NMI_ij = I(s_i; z_j) / H(s_i)        (in [0, 1]),

computed exactly (plug-in) for discrete latents and with the k-nearest-neighbour estimator
(sklearn's ``mutual_info_classif``, k = 10) on standardized continuous latents. Latents whose
range is at most 1/20 of the largest range (any constant one, for discrete codes) are
inactive and dropped. With A active latents:

- InfoM (modularity: each latent captures at most one source)
  = (mean_j max_i NMI_ij / sum_i NMI_ij - 1/S) / (1 - 1/S);
- InfoC (compactness: each source lives in one latent)
  = (mean_i max_j NMI_ij / sum_j NMI_ij - 1/A) / (1 - 1/A);
- InfoE (explicitness: sources are linearly decodable)
  = mean_i (H_null - CE_i) / H_null, with CE_i the in-sample cross-entropy of an
  unregularized, class-balanced multinomial logistic regression z -> s_i (one-hot features
  for discrete latents, standardized ones otherwise) and H_null = log K_i, the cross-entropy
  of the balanced intercept-only fit (uniform over the K_i values of s_i).

All three are 1 for a code that is the sources themselves. InfoM and InfoC are ratios of
information, so they say nothing about a code that carries none: for such a code look at
InfoE and the NMI matrix, which are then near 0. Where the paper's ratio would be 0/0 (a
latent or source with zero NMI everywhere) it is taken as uniform here, contributing 0.

The diagnostic needs only the codes (N, n_latents) and the factors (N, n_sources), so any
zoo model with ground-truth factors can use it: encode the data, then call :func:`infomec`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InfoMEC", "infomec", "nmi_matrix", "explicitness"]

DISCRETE_OPTIONS = (True, False, "auto")
#: "auto" treats a code as discrete when no column has more distinct values than this
AUTO_DISCRETE_MAX_VALUES = 32


@dataclass
class InfoMEC:
    """Result of :func:`infomec`.

    :ivar infom: modularity in [0, 1] (nan when no latent is active).
    :ivar infoe: explicitness, at most 1 (about 0 for a code independent of the sources).
    :ivar infoc: compactness in [0, 1] (nan with fewer than 2 active latents).
    :ivar nmi: (n_sources, n_latents) normalized mutual information, all latents.
    :ivar active: (n_latents,) which latents entered InfoM and InfoC.
    :ivar infoe_per_source: the explicitness of each source.
    :ivar discrete_latents: which estimator was used.
    """

    infom: float
    infoe: float
    infoc: float
    nmi: np.ndarray
    active: np.ndarray
    infoe_per_source: np.ndarray
    discrete_latents: bool
    source_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        """The three headline numbers, for a metrics table."""
        return {"infom": self.infom, "infoe": self.infoe, "infoc": self.infoc}


def _as_2d(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-d (N rows, one column per {name[:-1]}), got shape {array.shape}"
        )
    if array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 rows and 1 column, got shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} has {bad} NaN or infinite value(s)")
    return array


def _check_inputs(latents, factors, discrete_latents, n_neighbors, prune_ratio):
    z = _as_2d("latents", latents).astype(np.float64)
    s = _as_2d("factors", factors)
    if z.shape[0] != s.shape[0]:
        raise ValueError(f"latents have {z.shape[0]} rows but factors have {s.shape[0]}")
    if s.dtype.kind == "f" and not np.all(s == np.round(s)):
        raise ValueError(
            "factors must be discrete labels (integers); bin a continuous factor first"
        )
    labels = np.stack([np.unique(col, return_inverse=True)[1] for col in s.T], axis=1)
    for i, col in enumerate(labels.T):
        if col.max() < 1:
            raise ValueError(f"factor column {i} is constant: a source needs >= 2 values")
    if not any(discrete_latents is option for option in DISCRETE_OPTIONS):
        raise ValueError(
            f"discrete_latents must be one of {DISCRETE_OPTIONS}, got {discrete_latents!r}"
        )
    if not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio!r}")
    if discrete_latents == "auto":
        discrete_latents = all(len(np.unique(col)) <= AUTO_DISCRETE_MAX_VALUES for col in z.T)
    return z, labels.astype(np.int64), bool(discrete_latents)


def _entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _nmi(z: np.ndarray, s: np.ndarray, discrete: bool, n_neighbors: int, seed: int):
    from sklearn.feature_selection import mutual_info_classif
    from sklearn.metrics import mutual_info_score

    nmi = np.zeros((s.shape[1], z.shape[1]))
    if discrete:
        codes = [np.unique(col, return_inverse=True)[1] for col in z.T]
    else:
        std = z.std(axis=0)
        standardized = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
    for i, source in enumerate(s.T):
        if discrete:
            mi = np.array([mutual_info_score(source, code) for code in codes])
        else:
            mi = mutual_info_classif(
                standardized,
                source,
                discrete_features=False,
                n_neighbors=n_neighbors,
                random_state=seed,
            )
        nmi[i] = np.clip(mi / _entropy(source), 0.0, 1.0)
    return nmi


def nmi_matrix(
    latents,
    factors,
    *,
    discrete_latents: bool | str = "auto",
    n_neighbors: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """(n_sources, n_latents) matrix of I(s_i; z_j) / H(s_i) (see the module doc)."""
    z, s, discrete = _check_inputs(latents, factors, discrete_latents, n_neighbors, 0.05)
    return _nmi(z, s, discrete, n_neighbors, seed)


def _concentration(nmi: np.ndarray, axis: int) -> float:
    """(mean of max/sum along ``axis`` - 1/n) / (1 - 1/n), n the length along ``axis``;
    a 0/0 ratio counts as uniform (1/n)."""
    n = nmi.shape[axis]
    if n < 2 or nmi.size == 0:
        return math.nan
    total = nmi.sum(axis=axis)
    ratio = np.where(total > 0, nmi.max(axis=axis) / np.where(total > 0, total, 1.0), 1.0 / n)
    return float((ratio.mean() - 1.0 / n) / (1.0 - 1.0 / n))


def _features(z: np.ndarray, discrete: bool) -> np.ndarray:
    if discrete:
        return np.concatenate(
            [np.eye(len(np.unique(c)))[np.unique(c, return_inverse=True)[1]] for c in z.T], axis=1
        )
    std = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)


def explicitness(
    latents, factors, *, discrete_latents: bool | str = "auto", max_iter: int = 200
) -> np.ndarray:
    """InfoE of each source: (log K - CE) / log K for a balanced logistic regression z -> s."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from threadpoolctl import threadpool_limits

    z, s, discrete = _check_inputs(latents, factors, discrete_latents, 10, 0.05)
    features = _features(z, discrete)
    out = []
    for source in s.T:
        classes = np.unique(source)
        regression = LogisticRegression(
            C=math.inf, class_weight="balanced", solver="lbfgs", max_iter=max_iter
        )  # C = inf: unregularized (``penalty=None`` is deprecated in sklearn >= 1.8)
        # one BLAS thread: small problems, and oversubscribed threads next to torch's are
        # up to 100x slower
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            regression.fit(features, source)
        cross_entropy = log_loss(source, regression.predict_proba(features), labels=classes)
        null = math.log(len(classes))
        out.append((null - cross_entropy) / null)
    return np.array(out)


def infomec(
    latents,
    factors,
    *,
    discrete_latents: bool | str = "auto",
    n_neighbors: int = 10,
    prune_ratio: float = 1.0 / 20.0,
    factor_names: list[str] | None = None,
    seed: int = 0,
) -> InfoMEC:
    """InfoM, InfoE and InfoC of a code against ground-truth discrete factors.

    :param latents: (N, n_latents) codes, e.g. encoder means or quantized codes.
    :param factors: (N, n_sources) discrete factor labels (any integer coding).
    :param discrete_latents: ``True`` (plug-in MI, one-hot InfoE features), ``False`` (k-NN
        MI on standardized latents) or ``"auto"`` (discrete when every latent column takes
        at most 32 distinct values).
    :param n_neighbors: k of the k-NN MI estimator.
    :param prune_ratio: continuous latents with range <= prune_ratio * max range are
        inactive (discrete: constant ones).
    :raises ValueError: wrong shape, NaN, non-integer or constant factors, unknown option.
    """
    z, s, discrete = _check_inputs(latents, factors, discrete_latents, n_neighbors, prune_ratio)
    if factor_names is not None and len(factor_names) != s.shape[1]:
        raise ValueError(f"factor_names has {len(factor_names)} names for {s.shape[1]} factors")
    nmi = _nmi(z, s, discrete, n_neighbors, seed)
    ranges = z.max(axis=0) - z.min(axis=0)
    active = ranges > 0 if discrete else ranges > prune_ratio * ranges.max()
    pruned = nmi[:, active]
    infom = _concentration(pruned, axis=0) if active.any() else math.nan
    # InfoC's chance level uses the number of active latents
    infoc = _concentration(pruned, axis=1) if active.sum() >= 2 else math.nan
    per_source = explicitness(z, s, discrete_latents=discrete)
    return InfoMEC(
        infom=infom,
        infoe=float(per_source.mean()),
        infoc=infoc,
        nmi=nmi,
        active=active,
        infoe_per_source=per_source,
        discrete_latents=discrete,
        source_names=list(factor_names) if factor_names is not None else [],
    )
