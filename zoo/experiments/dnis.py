"""DNIS (paper 5) as block-ARD Bayesian matrix factorisation on the spec's synthetic ratings.

Per seed s: a new simulation (500 users x 400 items, Zipf(1.1) popularity, true rank 8 for
the top 10% of users and items and 2 for the rest, 50k ratings, noise 0.5), split 70/10/20
into training, validation and test rows. Arms, all with the same rows and the same number
of embedding steps on the training rows (batch size, lr, optimiser alike):

- ``dnis``: d = 16, K = 5 frequency blocks, M = 4 dimension blocks; ``rounds`` bi-level
  rounds (embeddings on training rows, scales on validation rows), pruning at
  ``prune_threshold`` x the largest effective scale, then ``finetune_steps`` on the
  embeddings with the mask.
- ``uniform16``, ``uniform8``: MAP matrix factorisation with d = 16 and d = 8.

Every arm with embeddings takes its prior sd ``s`` from ``scales`` by validation RMSE (the
same tuning); the test rows are used only for the figures.
- ``bias``: global mean plus user and item biases (d = 0): the simplest baseline.

Figures: test RMSE, embedding parameters in use, the dimension blocks kept per feature block
(users and items) against the true need (2 blocks for the frequent block, 1 for the rest).
"""

from __future__ import annotations

import time

import torch

import guides
import zoo
from inference.svi import fit
from zoo.evidence import Check, Figure, RunContext, recipe
from zoo.models.dnis import three_way_split


def _fit_plain(model, data, steps, seed, s):
    guide = guides.build("normal", model)
    fit(model, guide, data, steps=steps, batch_size=s["batch_size"], lr=s["lr"], seed=seed,
        progress=False)  # fmt: skip
    return guide


@recipe(
    "dnis",
    headline=[
        Figure("dnis/rmse", "DNIS pruned: test RMSE", 3),
        Figure("uniform16/rmse", "uniform d=16: test RMSE", 3),
        Figure("uniform8/rmse", "uniform d=8: test RMSE", 3),
        Figure("bias/rmse", "biases only: test RMSE", 3),
        Figure("dnis/param_ratio", "DNIS parameters / uniform d=16", 2),
        Figure("dnis/kept_frequent", "dim blocks kept, most frequent block (mean of sides)", 2),
        Figure("dnis/kept_rare", "dim blocks kept, rarest block (mean of sides)", 2),
    ],
    settings={
        "n_users": 500,
        "n_items": 400,
        "n_ratings": 50_000,
        "rounds": 4,
        "steps": 150,
        "finetune_steps": 300,
        "batch_size": 2048,
        "lr": 0.05,
        "prune_threshold": 0.05,
        "scales": (0.3, 1.0),
    },
    quick={
        "n_users": 60,
        "n_items": 50,
        "n_ratings": 2000,
        "rounds": 2,
        "steps": 10,
        "finetune_steps": 10,
        "batch_size": 256,
        "scales": (1.0,),
    },
    paper="Cheng, Shen and Huang (2020), probabilistic analogue",
    data="synthetic (spec): Zipf(1.1) popularity, true rank 8 for the top 10% of users and "
    "items, 2 otherwise, noise 0.5; a new simulation per seed",
    claim="Frequent feature blocks keep more dimension blocks, and the pruned model with "
    "about half the embedding parameters reaches the test RMSE of uniform d = 16 MF or "
    "better; against uniform d = 16 and d = 8 MF and the biases-only predictor (same rows, "
    "embedding steps, and prior scale of every arm tuned on validation rows).",
    checks=[
        Check(
            "pruned DNIS reaches the test RMSE of uniform d = 16 MF or better",
            "dnis/rmse",
            "<=",
            "uniform16/rmse",
            why="DNIS is slightly worse on every seed once the uniform models' prior sd is "
            "tuned (s = 0.3); uniform d = 8 is better still; at the default s = 1 (the "
            "tutorial) pruned DNIS beats both by about 0.03",
        ),
        Check(
            "pruned DNIS uses at most about half the parameters of uniform d = 16",
            "dnis/param_ratio",
            "<=",
            0.6,
        ),
        Check(
            "the most frequent block keeps more dimension blocks than the rarest",
            "dnis/kept_frequent",
            ">=",
            "dnis/kept_rare",
            factor=1.5,
        ),
    ],  # fmt: skip
)
def dnis(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    shape = {k: s[k] for k in ("n_users", "n_items", "n_ratings")}
    train_keys = {k: s[k] for k in ("batch_size", "lr")}
    _, data = zoo.create("dnis", **shape).simulate(seed)
    train, val, test = three_way_split(data, seed)
    budget = s["rounds"] * s["steps"] + s["finetune_steps"]
    out: dict[str, float] = {}

    best = None
    for scale in s["scales"]:
        start = time.perf_counter()
        model = zoo.create("dnis", rounds=s["rounds"], steps=s["steps"], embedding_scale=scale,
                           prune_threshold=s["prune_threshold"], **shape, **train_keys)  # fmt: skip
        guide = guides.build("normal", model)
        model.fit_bilevel(guide, train, val, seed=seed)
        unpruned = model.rmse(guide, test)
        model.prune(guide, train)
        fit(model, guide, train, steps=s["finetune_steps"], trainable=["model."], seed=seed,
            progress=False, **train_keys)  # fmt: skip
        score = model.rmse(guide, val)
        if best is None or score < best[0]:
            best = (score, scale, unpruned, model, guide, time.perf_counter() - start)
    out["dnis/val_rmse"], out["dnis/scale"], out["dnis/rmse_unpruned"], model, guide, secs = best
    out["dnis/seconds"] = secs
    for key, value in model.evaluate(guide, test).items():
        out[f"dnis/{key}"] = float(value)
    full = (s["n_users"] + s["n_items"]) * 16
    out["dnis/param_ratio"] = out["dnis/embedding_params"] / full
    k = len(model.config.block_fractions) - 1
    out["dnis/kept_frequent"] = (
        out["dnis/kept_blocks_user_0"] + out["dnis/kept_blocks_item_0"]
    ) / 2
    out["dnis/kept_rare"] = (
        out[f"dnis/kept_blocks_user_{k}"] + out[f"dnis/kept_blocks_item_{k}"]
    ) / 2
    need_u, need_i = model.true_block_dims()
    kept = torch.cat([model.user_mask.sum(-1), model.item_mask.sum(-1)])
    out["dnis/blocks_vs_truth_mae"] = float((kept - torch.cat([need_u, need_i])).abs().mean())

    for arm, dim in (("uniform16", 16), ("uniform8", 8)):
        best = None
        for scale in s["scales"]:
            base = zoo.create("dnis", ard=False, dim=dim, embedding_scale=scale, **shape,
                              **train_keys)  # fmt: skip
            g = _fit_plain(base, train, budget, seed, s)
            score = base.rmse(g, val)
            if best is None or score < best[0]:
                best = (score, scale, base.rmse(g, test), base.embedding_params())
        out[f"{arm}/val_rmse"], out[f"{arm}/scale"], out[f"{arm}/rmse"], params = best
        out[f"{arm}/embedding_params"] = float(params)
    bias = zoo.create("dnis", ard=False, dim=0, **shape, **train_keys)
    out["bias/rmse"] = bias.rmse(_fit_plain(bias, train, budget, seed, s), test)
    return {k: float(v) for k, v in out.items()}
