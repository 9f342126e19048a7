"""Latent program network (paper 18): test-time gradient search in a learnt 2-D program
space, on the spec's pattern tasks.

Per seed: training tasks (4 pairs each) and 1000 test tasks drawn with another seed; each
test task's last pair is predicted from its first three. Arms, all with the same training
tasks, steps, batch size, learning rate and network widths:

- ``lpn_k0`` / ``lpn_k1``: the LPN trained with the paper's leave-one-out loss with K = 0
  and K = 1 gradient steps on the latent in training (the paper's Grad0 / Grad1 training);
  exact match at 0, 10 and 100 test-time ascent steps from the encoder's mean (plain
  gradient ascent at the model's ``test_lr``, the best-likelihood latent kept);
- ``lpn_elbo_k1``: the ELBO analogue (``objective="elbo"``: one latent per task, the guide's
  mean refined by one step), scored the same way;
- ``sampling``: best of 100 latents drawn from the prior N(0, I) under the K = 1 model's
  decoder likelihood of the demonstrations (as many decoder calls as 100 ascent steps,
  without gradients; the paper's stochastic search);
- ``in_context``: an MLP from the three demonstrations and the query input to the query
  output (no latent, no search), trained to predict each pair from the others.
"""

from __future__ import annotations

import pyro
import torch

import zoo
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.models.lpn.baselines import InContext, sample_search, train_in_context


def _model(objective: str, s: dict, k: int):
    return zoo.create(
        "lpn",
        objective=objective,
        refine_steps=k,
        tasks=s["tasks"],
        hidden=tuple(s["hidden"]),
        steps=s["steps"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        holdout=0.0,
        test_steps=tuple(s["test_steps"]),
    )


def _exact(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float((pred == truth).flatten(1).all(-1).float().mean())


@recipe(
    "lpn",
    headline=[
        Figure("lpn_k0/exact_0", "LOO K=0 trained: exact match, 0 test steps", 3),
        Figure("lpn_k0/exact_100", "LOO K=0 trained: exact match, 100 test steps", 3),
        Figure("lpn_k1/exact_0", "LOO K=1 trained: exact match, 0 test steps", 3),
        Figure("lpn_k1/exact_10", "LOO K=1 trained: exact match, 10 test steps", 3),
        Figure("lpn_k1/exact_100", "LOO K=1 trained: exact match, 100 test steps", 3),
        Figure("lpn_elbo_k1/exact_100", "ELBO analogue K=1: exact match, 100 test steps", 3),
        Figure("sampling/exact", "best of 100 prior draws (K=1 decoder)", 3),
        Figure("in_context/exact", "in-context MLP (no latent, no search)", 3),
    ],
    settings={
        "tasks": 10000,
        "test_tasks": 1000,
        "steps": 3000,
        "batch_size": 128,
        "lr": 3e-3,
        "hidden": (128, 128),
        "test_steps": (0, 10, 100),
        "samples": 100,
    },
    quick={"tasks": 300, "test_tasks": 64, "steps": 20, "hidden": (32,)},
    paper="Macfarlane & Bonnet (NeurIPS 2025)",
    data="spec's pattern tasks: 4x4 grids, a marker, a 2x2 pattern of colours 1-3 pasted "
    "at it, 4 pairs per task (seeded generator)",
    claim="Exact match of held-out tasks' query outputs after 0/10/100 test-time gradient "
    "steps in the 2-D latent, for LPNs trained by the paper's leave-one-out loss with 0 and 1 "
    "refinement steps (and the ELBO analogue), against best-of-100 prior samples with the "
    "same decoder and an in-context MLP, same tasks, steps, lr and widths.",
)
def lpn(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    out: dict[str, float] = {}
    reference = _model("loo", s, 1)
    train = reference.default_data(seed)
    test = reference.tasks(s["test_tasks"], seed=seed + 10_000)
    xd, yd, xq, yq = test["x"][:, :-1], test["y"][:, :-1], test["x"][:, -1], test["y"][:, -1]
    models = {}
    for arm, objective, k in (
        ("lpn_k0", "loo", 0),
        ("lpn_k1", "loo", 1),
        ("lpn_elbo_k1", "elbo", 1),
    ):
        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        model = _model(objective, s, k)
        fit(model, model.guide, train, config=model.config, seed=seed, progress=False)
        for n, value in model.exact_match(model.guide, test).items():
            out[f"{arm}/exact_{n}"] = value
        models[arm] = model

    k1 = models["lpn_k1"]
    z = sample_search(k1, xd, yd, s["samples"], seed=seed)
    out["sampling/exact"] = _exact(k1.predict(z, xq), yq)

    torch.manual_seed(seed)
    net = InContext(xd.shape[1], k1.config.grid, tuple(s["hidden"]))
    train_in_context(
        net,
        train["x"],
        train["y"],
        steps=s["steps"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        seed=seed,
    )
    out["in_context/exact"] = _exact(net.predict(xd, yd, xq), yq)
    return out
