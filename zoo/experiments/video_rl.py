"""Video representations for RL (paper 22): a state decoder learned from action-free
gridworld videos, scored by the Hungarian-matched accuracy of the decoded agent cell on
held-out episodes, under three kinds of noise: pixel noise only (``iid``), dark distractor
blobs on their own random walks (``exogenous``, temporally correlated), and the same blobs
redrawn at random every frame (``iid_blobs``, the control the spec names).

Arms, on the same training episodes with the same budget (``steps`` passes over the
training frames) and the same number of restarts, each restart chosen by its own training
objective, never by the labels: the HMM forward model (MAP by SVI, states summed out;
``infer_discrete`` decodes), the temporal contrastive decoder (InfoNCE over (x_t, x_{t+1})
pairs, plain torch), k-means on single frames. A supervised logistic regression on the
labelled training frames is reported as a decodability ceiling (it sees the labels).
"""

from __future__ import annotations

import math

import numpy as np
from pyro.infer.autoguide import init_to_value

import guides
import zoo
from inference.metrics import hungarian_accuracy
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.models.video_rl.baselines import contrastive_decoder, kmeans_decoder, supervised_decoder


def hmm_restarts(model, train, *, steps: int, restarts: int, seed: int):
    """MAP fits of the HMM from ``restarts`` data-based starts; the one with the lowest
    final training loss (negative log joint) is kept. Returns ``(guide, losses)``."""
    best, losses = None, []
    for restart in range(restarts):
        start = model.init_values(train, seed=1000 * seed + restart)
        guide = guides.build("delta", model, init_loc_fn=init_to_value(values=start))
        result = fit(
            model, guide, train, steps=steps, lr=model.config.lr, seed=seed, progress=False
        )
        losses.append(float(result.losses[-1]))
        if best is None or losses[-1] < min(losses[:-1]):
            best = guide
    return best, losses


def _accuracy(decode, test, states: int) -> float:
    pred = np.asarray(decode(test["x"])).reshape(-1)
    return hungarian_accuracy(pred, test["state"].reshape(-1), states)


NOISES = ("iid", "exogenous", "iid_blobs")


@recipe(
    "video_rl",
    headline=[
        Figure("iid/hmm/accuracy", "iid noise: HMM forward model accuracy", 3),
        Figure("iid/contrastive/accuracy", "iid noise: temporal contrastive accuracy", 3),
        Figure("iid/kmeans/accuracy", "iid noise: k-means on frames accuracy", 3),
        Figure("exogenous/hmm/accuracy", "exogenous blobs: HMM accuracy", 3),
        Figure("exogenous/contrastive/accuracy", "exogenous blobs: contrastive accuracy", 3),
        Figure("iid_blobs/hmm/accuracy", "iid blobs (control): HMM accuracy", 3),
        Figure("iid_blobs/contrastive/accuracy", "iid blobs (control): contrastive accuracy", 3),
    ],
    settings={"grid": 5, "episodes": 500, "horizon": 20, "steps": 200, "restarts": 3},
    quick={"grid": 2, "episodes": 30, "horizon": 6, "steps": 5, "restarts": 1},
    paper="Misra et al. (ICLR 2024)",
    data="5x5 gridworld random walk rendered to noisy 10x10 frames; iid, exogenous, iid blobs",
    claim="Hungarian-matched state-decoding accuracy on held-out episodes of the HMM forward "
    "model (an adaptation of the paper's forward modelling), the temporal contrastive decoder "
    "and k-means on frames, under pixel noise only and under temporally correlated "
    "(exogenous) or iid distractor blobs; the paper expects forward and contrastive learning "
    "to work under iid noise and degrade under exogenous noise.",
)
def video_rl(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    out: dict[str, float] = {}
    for noise in NOISES:
        model = zoo.create(
            "video_rl",
            grid=s["grid"],
            episodes=s["episodes"],
            horizon=s["horizon"],
            noise=noise,
        )
        states = model.num_states
        train, test = model.split(model.default_data(seed), seed)
        guide, losses = hmm_restarts(
            model, train, steps=s["steps"], restarts=s["restarts"], seed=seed
        )
        for key, value in model.evaluate(guide, test).items():
            out[f"{noise}/hmm/{key}"] = float(value)
        out[f"{noise}/hmm/restart_loss_spread"] = float(max(losses) - min(losses))
        # the same passes over the training frames: steps x (frames / batch) minibatches
        pairs = train["x"].shape[0] * (train["x"].shape[1] - 1)
        batch = min(512, pairs)
        decode, _ = contrastive_decoder(
            train["x"],
            states,
            steps=max(1, math.ceil(s["steps"] * pairs / batch)),
            batch_size=batch,
            restarts=s["restarts"],
            seed=seed,
        )
        out[f"{noise}/contrastive/accuracy"] = _accuracy(decode, test, states)
        decode = kmeans_decoder(train["x"], states, restarts=s["restarts"], seed=seed)
        out[f"{noise}/kmeans/accuracy"] = _accuracy(decode, test, states)
        decode = supervised_decoder(train["x"], train["state"], seed=seed)
        out[f"{noise}/supervised_ceiling/accuracy"] = _accuracy(decode, test, states)
    return out
