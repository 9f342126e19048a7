"""Neural snowflakes (paper 24): the spec's two small checks.

(a) Embedding a graph metric in d = 2. For the shortest-path metric of the 31-node balanced
binary tree and of the 21-node cycle-plus-star graph, the latent-space network model
(:class:`~zoo.models.snowflake.Snowflake`) is fitted with the snowflake geometry and with the
Euclidean one (a learned scale times ||z_i - z_j||, the baseline geometry), the same guide
(mean-field Normal on the positions and sigma), steps and learning rate; the figures are the
embedding MSE, the maximum distortion max(rho/d) max(d/rho) and the mean relative error at
the posterior median of the positions. The seed sets the SVI initialisation (the data are
the graphs themselves).

(b) Latent graph inference on ``load_digits`` (n = 1797, no graph given): per seed a random
``train_labels`` labelled nodes, ``val_labels`` for model selection (the epoch of best
validation accuracy), the rest for test. Arms, each with the same split, epochs, optimizer,
learning rate and weight decay: the snowflake DGM and the Euclidean DGM (encoder d = 8,
Gumbel top-7, two-layer GCN; :class:`~zoo.models.snowflake.SnowflakeDGM`), the MLP of the
same widths without a graph, and logistic regression on the raw pixels
(:func:`inference.representation.linear_probe`: standardised, its penalty by
cross-validation on the labelled nodes; the simplest strong baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

import zoo
from inference.representation import linear_probe
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.models.snowflake import train_dgm

GRAPHS = ("tree", "cycle_star")
GEOMETRIES = ("snowflake", "euclidean")


def _embedding(graph: str, geometry: str, steps: int, seed: int) -> dict[str, float]:
    model = zoo.create("snowflake", graph=graph, geometry=geometry, steps=steps)
    data = model.default_data()
    fit(model, model.guide, data, config=model.config, seed=seed, progress=False)
    return model.evaluate(model.guide, data)


@recipe(
    "snowflake",
    headline=[
        Figure("tree/snowflake/max_distortion", "tree, d=2: snowflake max distortion", 2),
        Figure("tree/euclidean/max_distortion", "tree, d=2: Euclidean max distortion", 2),
        Figure("tree/snowflake/mse", "tree, d=2: snowflake MSE", 3),
        Figure("tree/euclidean/mse", "tree, d=2: Euclidean MSE", 3),
        Figure("cycle_star/snowflake/max_distortion", "cycle+star: snowflake max distortion", 2),
        Figure("cycle_star/euclidean/max_distortion", "cycle+star: Euclidean max distortion", 2),
        Figure("cycle_star/snowflake/mse", "cycle+star: snowflake MSE", 3),
        Figure("cycle_star/euclidean/mse", "cycle+star: Euclidean MSE", 3),
        Figure("digits/snowflake/test_accuracy", "digits: snowflake DGM accuracy", 3),
        Figure("digits/euclidean/test_accuracy", "digits: Euclidean DGM accuracy", 3),
        Figure("digits/none/test_accuracy", "digits: MLP (no graph) accuracy", 3),
        Figure("digits/logistic/test_accuracy", "digits: logistic regression on pixels", 3),
    ],
    settings={
        "embed_steps": 3000,
        "dgm_epochs": 200,
        "train_labels": 100,
        "val_labels": 200,
        "lr": 0.01,
        "weight_decay": 5e-4,
    },
    quick={
        "embed_steps": 40,
        "dgm_epochs": 5,
        "train_labels": 100,
        "val_labels": 200,
        "lr": 0.01,
        "weight_decay": 5e-4,
    },
    paper="Sáez de Ocáriz Borde & Kratsios, ICLR 2024",
    data="shortest-path metrics of a 31-node binary tree and a 21-node cycle+star; "
    "sklearn load_digits (1797 nodes, no graph)",
    claim="A trainable snowflake geometry embeds graph metrics in d = 2 with far less "
    "distortion than Euclidean space, and as the latent geometry of differentiable graph "
    "inference matches or beats the Euclidean one.",
)
def snowflake(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    figures: dict[str, float] = {}
    for graph in GRAPHS:
        for geometry in GEOMETRIES:
            scores = _embedding(graph, geometry, s["embed_steps"], seed)
            figures.update({f"{graph}/{geometry}/{k}": v for k, v in scores.items()})
        for key in ("mse", "max_distortion"):
            snow, euc = figures[f"{graph}/snowflake/{key}"], figures[f"{graph}/euclidean/{key}"]
            figures[f"{graph}/snowflake_over_euclidean/{key}"] = snow / euc

    digits = load_digits()
    x_np, y_np = (digits.data / 16.0).astype("float32"), digits.target
    perm = np.random.default_rng(seed).permutation(len(x_np))
    n_train, n_val = s["train_labels"], s["val_labels"]
    train, val, test = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    split = [torch.from_numpy(a) for a in (train, val, test)]
    for geometry in ("snowflake", "euclidean", "none"):
        scores = train_dgm(
            x,
            y,
            *split,
            geometry=geometry,
            epochs=s["dgm_epochs"],
            lr=s["lr"],
            weight_decay=s["weight_decay"],
            seed=seed,
        )
        figures.update({f"digits/{geometry}/{k}": v for k, v in scores.items()})
    probe = linear_probe(x_np[train], y_np[train], x_np[test], y_np[test], seed=seed)
    figures["digits/logistic/test_accuracy"] = probe["accuracy"]
    figures["digits/snowflake_minus_euclidean/test_accuracy"] = (
        figures["digits/snowflake/test_accuracy"] - figures["digits/euclidean/test_accuracy"]
    )
    return figures
