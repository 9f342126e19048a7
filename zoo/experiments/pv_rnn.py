"""PV-RNN (paper 3): the meta-prior sweep on the spec's probabilistic finite-state machine,
against a standard VRNN with a filtering encoder on the same data and steps.

Per seed: sequences of three 2-D primitives (circle, figure-8, line; 25 steps each,
transitions 0.7/0.3), ``train`` of them to train on and ``held_out`` new ones. For each w of
the sweep a PV-RNN (adaptive vectors, KL weighted by w in model and guide) is trained for
``steps`` Adam steps; then (a) the mean KL per step of its posterior on the training
sequences, (b) the KL of the transition frequencies of sequences it generates from the
prior against the machine's, and (c) the one-step prediction MSE on the held-out sequences
by error regression (network frozen, a window's adaptive vectors re-inferred online). The
VRNN is the same generative network trained with the standard ELBO (w = 1) and a GRU
filtering encoder q(z_t | x_1..x_t) in place of the adaptive vectors, same steps and lr;
its held-out one-step predictions come from the encoder. The ``check/*`` figures are per
seed indicators (1 where the pattern held), so their mean is the fraction of seeds.
"""

from __future__ import annotations

import numpy as np
import torch

import guides
import zoo
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.models.pv_rnn.primitives import make_sequences

SWEEP = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _key(w: float) -> str:
    return f"w={w:g}"


def _train(seed: int, s: dict, data: dict, **config) -> object:
    torch.manual_seed(seed)
    model = zoo.create("pv_rnn", length=s["length"], hidden=s["hidden"], **config)
    guide = guides.build("default", model)
    fit(model, guide, data, steps=s["steps"], lr=s["lr"], seed=seed, progress=False)
    return model, guide


def _checks(kl: list[float], trans: list[float], mse: list[float]) -> dict[str, float]:
    inner = slice(1, len(SWEEP) - 1)
    falls = all(b < a for a, b in zip(kl[:-1], kl[1:], strict=False))
    t_best = int(np.argmin(trans))
    m_best = int(np.argmin(mse))
    u_shape = 0 < m_best < len(SWEEP) - 1 and mse[m_best] < min(mse[0], mse[-1])
    return {
        "check/kl_falls_with_w": float(falls),
        "check/transitions_best_inside": float(0 < t_best < len(SWEEP) - 1),
        "check/er_mse_u_shaped": float(u_shape),
        "check/best_w_er_mse": float(SWEEP[m_best]),
        "check/best_w_transitions": float(SWEEP[t_best]),
        "check/inner_er_mse_min": float(min(mse[inner])),
    }


@recipe(
    "pv_rnn",
    headline=[
        Figure("check/kl_falls_with_w", "fraction of seeds where the KL per step falls with w", 2),
        Figure(
            "check/transitions_best_inside",
            "fraction of seeds where generated transitions are best at an inner w",
            2,
        ),
        Figure("check/er_mse_u_shaped", "fraction of seeds where the ER MSE is U-shaped in w", 2),
        Figure("w=0.0001/er_mse", "PV-RNN w=1e-4 held-out one-step MSE (error regression)", 4),
        Figure("w=0.01/er_mse", "PV-RNN w=1e-2 held-out one-step MSE (error regression)", 4),
        Figure("w=1/er_mse", "PV-RNN w=1 held-out one-step MSE (error regression)", 4),
        Figure("vrnn/er_mse", "VRNN (filtering encoder) held-out one-step MSE", 4),
    ],
    settings={
        "train": 20,
        "held_out": 5,
        "length": 100,
        "hidden": 24,
        "steps": 500,
        "lr": 0.01,
        "er_steps": 20,
    },
    quick={"train": 4, "held_out": 2, "length": 30, "hidden": 6, "steps": 3, "er_steps": 1},
    paper="Ahmadi & Tani (Neural Computation 2019)",
    data="probabilistic finite-state machine of 3 2-D primitives (circle, figure-8, line; "
    "25 steps, transitions 0.7/0.3), per seed",
    claim="Meta-prior sweep w in {1e-4, 1e-3, 1e-2, 0.1, 1}: mean KL per step on the "
    "training sequences, KL of generated against true transition frequencies, and the "
    "held-out one-step MSE by error regression; against a VRNN with a GRU filtering encoder "
    "(same network, data, steps and lr, standard ELBO).",
)
def pv_rnn(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    x, _ = make_sequences(s["train"] + s["held_out"], s["length"], seed)
    train = {"x": torch.as_tensor(x[: s["train"]])}
    test = {"x": torch.as_tensor(x[s["train"] :])}
    out: dict[str, float] = {}
    kl, trans, mse = [], [], []
    for w in SWEEP:
        model, guide = _train(seed, s, train, w=w, er_steps=s["er_steps"])
        scores = model.evaluate(guide, test)
        kl.append(model.kl_per_step(train))
        trans.append(scores["transition_kl"])
        mse.append(scores["one_step_mse"])
        out[f"{_key(w)}/kl_per_step"] = kl[-1]
        out[f"{_key(w)}/transition_kl"] = trans[-1]
        out[f"{_key(w)}/segment_rmse"] = scores["segment_rmse"]
        out[f"{_key(w)}/er_mse"] = mse[-1]
    model, guide = _train(seed, s, train, w=1.0, posterior="encoder")
    scores = model.evaluate(guide, test)
    out["vrnn/er_mse"] = scores["one_step_mse"]
    out["vrnn/transition_kl"] = scores["transition_kl"]
    out["vrnn/segment_rmse"] = scores["segment_rmse"]
    out["vrnn/kl_per_step"] = model.kl_per_step(train)
    out.update(_checks(kl, trans, mse))
    return out
