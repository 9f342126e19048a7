"""Membership inference: can an attacker tell rows a classifier was trained on from rows it
never saw, from the classifier's outputs alone? Used by unlearning checks (a forgotten set
should look like unseen data: attack accuracy near 50%) and by any privacy check.

The attack is the usual loss/confidence threshold attack made a little stronger: an sklearn
logistic regression on standardised per-example features (cross-entropy loss, the
probability of the true class, the top probability and the entropy of the prediction),
fitted and scored by stratified cross-validation on a balanced sample of members and
non-members (the larger group subsampled, seeded). 0.5 is chance; its spread over folds is
reported too.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["output_features", "membership_attack"]


def output_features(logits, labels) -> np.ndarray:
    """Per-example attack features ``(rows, 4)`` from a classifier's ``logits`` ``(rows,
    classes)`` and integer ``labels``: cross-entropy loss, probability of the true class, top
    probability, entropy of the predicted distribution."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    labels = torch.as_tensor(labels)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (rows, classes), got shape {tuple(logits.shape)}")
    if labels.shape != (len(logits),):
        raise ValueError(f"labels must be ({len(logits)},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or (labels < 0).any() or (labels >= logits.shape[1]).any():
        raise ValueError(f"labels must be integers in 0..{logits.shape[1] - 1}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits have NaN or infinite values")
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    true = logp.gather(1, labels.long()[:, None])[:, 0]
    entropy = -(p * logp).sum(-1)
    feats = torch.stack([-true, true.exp(), p.max(-1).values, entropy], -1)
    return feats.numpy().astype("float64")


def _rows(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be (rows,) or (rows, features), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return array


def membership_attack(members, nonmembers, *, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Accuracy of a logistic-regression attack that tells ``members`` from ``nonmembers``
    (per-example features, ``(rows,)`` or ``(rows, features)``, e.g. from
    :func:`output_features`), on a balanced sample by stratified ``folds``-fold
    cross-validation. Returns ``accuracy`` (mean held-out accuracy; 0.5 is chance),
    ``accuracy_sd`` (over folds), ``member_rate`` (fraction of held-out members called
    members) and ``rows`` (per group)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = _rows(members, "members"), _rows(nonmembers, "nonmembers")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"members have {a.shape[1]} features but nonmembers {b.shape[1]}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    n = min(len(a), len(b))
    if n < folds:
        raise ValueError(f"need at least {folds} rows in each group, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    a = a[rng.choice(len(a), n, replace=False)]
    b = b[rng.choice(len(b), n, replace=False)]
    x = np.concatenate([a, b])
    y = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    scores, rates = [], []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y):
        attack = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        attack.fit(x[train], y[train])
        pred = attack.predict(x[test])
        scores.append(float((pred == y[test]).mean()))
        rates.append(float(pred[y[test] == 1].mean()))
    return {
        "accuracy": float(np.mean(scores)),
        "accuracy_sd": float(np.std(scores)),
        "member_rate": float(np.mean(rates)),
        "rows": float(n),
    }
