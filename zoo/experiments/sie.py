"""SIE (paper 16): split invariant-equivariant representations of digit pairs under rotation
and brightness, against the same model without the split and raw pixels.

Per seed: two views of every load_digits image (``pairs_per_digit`` pairs each), rotated by
theta_v ~ U[-45, 45] degrees and brightened by b_v ~ U[0.6, 1.4]; the digits (not the pairs)
are split 70/30, so no test digit is seen in training. Arms, each trained on the same pairs
with the same steps, batch size and learning rate (no tuning for any arm):

- ``sie``: the model, c (16 invariant dimensions) and s (4 equivariant ones);
- ``sie_equi16``: the spec's 16 + 16 split (s then takes everything, c collapses);
- ``no_split``: the same model with every dimension equivariant (``inv_dim=0``, 20 in s);
- ``raw``: the pixels themselves (no training), the simplest baseline.

Linear probes (:func:`inference.representation.linear_probe`, regularisation by
cross-validation on the training digits only) are fitted on the training digits' pairs and
scored on the test digits': the digit class from view 1's part (accuracy); the relative
rotation dtheta and the log brightness ratio from both views' parts (R^2); the absolute
angle theta_1 from view 1's. The representation of an image is one draw of the encoder's
posterior (headline), and its mean (``_mean``: a dimension collapsed to the prior keeps a
faint, probe-readable trace of x in its mean). Equivariance error of the test pairs' means,
``||s_2 - H(g) s_1||^2 / spread of s_2`` (``identity_error``: the same for s_2 ~ s_1), and
effective ranks.
"""

from __future__ import annotations

import numpy as np
import torch

import zoo
from inference.representation import effective_rank, linear_probe
from inference.svi import fit
from zoo.evidence import Check, Figure, RunContext, recipe


def _rows(data: dict, index) -> dict:
    return {k: v[index] for k, v in data.items()}


def _fit(seed: int, s: dict, train: dict, inv_dim: int, equi_dim: int):
    model = zoo.create(
        "sie",
        inv_dim=inv_dim,
        equi_dim=equi_dim,
        hidden=tuple(s["hidden"]),
        pairs_per_digit=s["pairs_per_digit"],
    )
    torch.manual_seed(seed)
    fit(
        model,
        model.guide,
        train,
        steps=s["steps"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        seed=seed,
        progress=False,
    )
    return model


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _probe(features, targets, train, test, task, seed) -> float:
    f = _np(features)
    out = linear_probe(f[train], targets[train], f[test], targets[test], task=task, seed=seed)
    return out["accuracy" if task == "classification" else "r2"]


def _scores(model, data, targets, train, test, seed: int) -> dict[str, float]:
    """Every probe of one fitted model: class from view 1's parts, rotation, brightness
    ratio from both views' parts, theta_1 from view 1's; on one posterior draw per image
    (``_draw`` omitted) and on the means (``_mean``); equivariance error; effective ranks."""
    cls, reg = "classification", "regression"
    out: dict[str, float] = {}
    for how, draw in (("", True), ("_mean", False)):
        c1, s1 = model.represent(model.guide, data["x1"], draw=draw, seed=seed + 1)
        c2, s2 = model.represent(model.guide, data["x2"], draw=draw, seed=seed + 2)
        parts = {"s": (s1, s2)} | ({"c": (c1, c2)} if c1 is not None else {})
        for name, (a, b) in parts.items():
            both = torch.cat([a, b], -1)
            out[f"class_accuracy_{name}{how}"] = _probe(a, targets["label"], train, test, cls, seed)
            for key in ("angle", "brightness"):
                out[f"{key}_r2_{name}{how}"] = _probe(both, targets[key], train, test, reg, seed)
            out[f"theta1_r2_{name}{how}"] = _probe(a, targets["theta1"], train, test, reg, seed)
            if how == "_mean":
                out[f"effective_rank_{name}"] = effective_rank(_np(a))
    test_rows = {k: v[torch.as_tensor(test)] for k, v in data.items()}
    equi = model.equivariance_error(model.guide, test_rows)
    out["equivariance_error"] = equi["equivariance_error"]
    out["identity_error"] = equi["identity_error"]
    return out


@recipe(
    "sie",
    headline=[
        Figure("sie/class_accuracy_c", "SIE: digit class from c (linear probe, test digits)", 3),
        Figure("sie/class_accuracy_s", "SIE: digit class from s", 3),
        Figure("sie/angle_r2_s", "SIE: R^2 of the relative rotation from (s1, s2)", 3),
        Figure("sie/angle_r2_c", "SIE: R^2 of the relative rotation from (c1, c2)", 3),
        Figure("sie/equivariance_error", "SIE: ||s2 - H(g) s1||^2 / spread of s2", 3),
        Figure("sie_equi16/class_accuracy_c", "SIE with the spec's 16-dim s: class from c", 3),
        Figure("no_split/class_accuracy_s", "no split: digit class from z", 3),
        Figure("no_split/angle_r2_s", "no split: R^2 of the rotation from (z1, z2)", 3),
        Figure("raw/class_accuracy", "raw pixels: digit class", 3),
        Figure("raw/angle_r2", "raw pixels: R^2 of the rotation from (x1, x2)", 3),
    ],
    settings={
        "pairs_per_digit": 2,
        "train_fraction": 0.7,
        "steps": 3000,
        "batch_size": 128,
        "lr": 1e-3,
        "hidden": (128, 128),
        "inv_dim": 16,
        "equi_dim": 4,
    },
    quick={"pairs_per_digit": 1, "steps": 30, "hidden": (32,)},
    paper="Garrido, Najman & LeCun (ICML 2023)",
    data="load_digits pairs (per seed): each view rotated by U[-45, 45] degrees and "
    "brightened by U[0.6, 1.4]; digits split 70/30 into training and test",
    claim="Linear probes on frozen representations of held-out digits: the digit class "
    "from the invariant part c far better than from the equivariant part s, the relative "
    "rotation from (s1, s2) far better than from (c1, c2); equivariance error of s; against "
    "the same model without the split and raw pixels (same pairs, steps, batch, lr).",
    checks=[
        Check(
            "digit class far better from c than from s (at least 1.5x)",
            "sie/class_accuracy_c",
            ">=",
            "sie/class_accuracy_s",
            1.5,
        ),
        Check(
            "relative rotation far better from (s1, s2) than from (c1, c2) (at least 2x R^2)",
            "sie/angle_r2_s",
            ">=",
            "sie/angle_r2_c",
            2.0,
        ),
        Check(
            "s follows H(g): equivariance error under a fifth of s2 ~ s1's",
            "sie/equivariance_error",
            "<=",
            "sie/identity_error",
            0.2,
        ),
        Check(
            "the split keeps the class: c at least the unsplit z",
            "sie/class_accuracy_c",
            ">=",
            "no_split/class_accuracy_s",
            why="the split separates pose from class but adds no class information: the "
            "unsplit z (20 dimensions) holds the class as well as c, 2 of 3 seeds better",
        ),
        Check(
            "digit class from c at least the raw pixels'",
            "sie/class_accuracy_c",
            ">=",
            "raw/class_accuracy",
            why="rotations of up to 45 degrees leave 8x8 digits linearly separable enough "
            "that the 64 pixels beat a 16-dimensional c learned without labels",
        ),
    ],
)
def sie(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    base = zoo.create("sie", pairs_per_digit=s["pairs_per_digit"])
    raw = base.pairs(seed)
    data = base.rows(raw)
    digits = np.unique(raw["digit"])
    order = np.random.default_rng(seed).permutation(digits)
    train_digits = set(order[: int(s["train_fraction"] * len(order))].tolist())
    is_train = np.array([d in train_digits for d in raw["digit"]])
    train, test = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    train_rows = _rows(data, torch.as_tensor(train))

    targets = {
        "label": raw["label"],
        "angle": raw["theta2"] - raw["theta1"],
        "theta1": raw["theta1"],
        "brightness": np.log(raw["b2"] / raw["b1"]),
    }
    out: dict[str, float] = {}
    arms = {
        "sie": (s["inv_dim"], s["equi_dim"]),
        "sie_equi16": (s["inv_dim"], 16),
        "no_split": (0, s["inv_dim"] + s["equi_dim"]),
    }
    for arm, (inv_dim, equi_dim) in arms.items():
        model = _fit(seed, s, train_rows, inv_dim, equi_dim)
        for key, value in _scores(model, data, targets, train, test, seed).items():
            out[f"{arm}/{key}"] = value

    # ----- raw pixels -------------------------------------------------------------------------
    x1, x2 = _np(data["x1"]), _np(data["x2"])
    cls, reg = "classification", "regression"
    out["raw/class_accuracy"] = _probe(x1, targets["label"], train, test, cls, seed)
    pixels = np.concatenate([x1, x2], -1)
    out["raw/angle_r2"] = _probe(pixels, targets["angle"], train, test, reg, seed)
    out["raw/brightness_r2"] = _probe(pixels, targets["brightness"], train, test, reg, seed)
    out["raw/theta1_r2"] = _probe(x1, targets["theta1"], train, test, reg, seed)
    return {k: float(v) for k, v in out.items()}
