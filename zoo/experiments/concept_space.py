"""concept_space (paper 6): the order and speed in which a conditional VAE learns two concepts
of a blob (colour, size) and the hidden capability of the held-out combination (blue, small)
that over-prompting elicits before naive prompting does.

Per seed, the CVAE (linear embedding of the raw concept values, the paper's setting) is
trained on classes 00, 10, 01 of the renderer at size signal ``m_s`` and each colour signal
of ``sweep`` (``main``, 0.6, for the headline), with the same data seed, steps, batch and
AdamW settings and the weights seeded alike. Every ``every`` steps a fixed
logistic-regression probe per concept, fitted to ground-truth renderer images of all four
classes, scores 100 generations of class 11 under the naive prompt ``h = (1, 1)`` and the
over-prompt ``h = (1 + kappa, 1 + kappa)``. Figures:

- ``mc<v>/colour_steps80``, ``size_steps80``: the first checkpoint at which the naive
  prompt's mean P(blue), P(small) reaches 0.8 (``steps + every`` if never: censored);
  ``colour_speed``: 1000 / colour_steps80;
- ``mc<v>/hidden_checkpoints``: checkpoints with naive class-11 accuracy < 50% while the
  over-prompt's is >= 80%; ``max_over_minus_naive``: the largest gap in accuracy;
- ``mc<v>/final_naive_accuracy`` and ``final_over_accuracy`` at the last step;
- ``mlp_embed/...``: the same model with an MLP embedding at the main colour signal, where
  the latent intervention (amplified sum of each concept's embedding direction) differs
  from over-prompting: ``hidden_checkpoints_intervene``;
- ``pixel_arithmetic/accuracy``: the simplest baseline, no learning at all: the probe's
  class-11 accuracy on ``x_10 + x_01 - x_00`` of random ground-truth images;
- ``mc<v>/hidden_checkpoints_trained``: those of them where the trained classes' own
  generations are also >= 80% right (the capability hidden in a model that already makes its
  training classes, not in an early, half-trained one);
- ``sweep/share_with_hidden_checkpoints`` (``_trained``): the share of the sweep's runs (one
  per colour signal) with at least one such checkpoint;
- ``signal/mc<v>/colour`` and ``signal/mc<v>/size``: the renderer's concept signals (L2 gap
  between the mean images of a concept's two values).
"""

from __future__ import annotations

import json

import numpy as np
import torch

import zoo
from zoo.datasets.blobs import blobs, concept_signals
from zoo.evidence import Check, Figure, RunContext, recipe
from zoo.models.concept_space import ConceptProbe, hidden_checkpoints, steps_to, trajectory


def _tag(m_c: float) -> str:
    return f"mc{m_c:g}"


def _run(s: dict, m_c: float, seed: int, embed_hidden=()) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    model = zoo.create(
        "concept_space",
        m_c=m_c,
        m_s=s["m_s"],
        per_class=s["per_class"],
        hidden=tuple(s["hidden"]),
        embed_hidden=tuple(embed_hidden),
        kappa=s["kappa"],
    )
    data = model.default_data(seed=s["data_seed"])
    probe = ConceptProbe(m_c, s["m_s"], seed=s["data_seed"])
    return trajectory(
        model, data, steps=s["steps"], every=s["every"], seed=seed, num=s["num"], probe=probe
    )


def _figures(rows: dict[str, list[float]], s: dict) -> dict[str, float]:
    never = float(s["steps"] + s["every"])
    colour = min(steps_to(rows, "naive/p_blue"), never)
    size = min(steps_to(rows, "naive/p_small"), never)
    gaps = np.asarray(rows["over/accuracy"]) - np.asarray(rows["naive/accuracy"])
    return {
        "colour_steps80": colour,
        "size_steps80": size,
        "colour_speed": 1000.0 / colour,
        "size_speed": 1000.0 / size,
        "hidden_checkpoints": float(hidden_checkpoints(rows, "over")),
        "hidden_checkpoints_intervene": float(hidden_checkpoints(rows, "intervene")),
        "hidden_checkpoints_trained": float(hidden_checkpoints(rows, "over", trained=0.8)),
        "max_over_minus_naive": float(gaps.max()),
        "final_naive_accuracy": rows["naive/accuracy"][-1],
        "final_over_accuracy": rows["over/accuracy"][-1],
        "final_train_accuracy": rows["train_accuracy"][-1],
    }


def _pixel_arithmetic(s: dict, m_c: float, seed: int) -> float:
    n = s["num"]
    parts = {
        k: blobs((k,), n, m_c=m_c, m_s=s["m_s"], seed=seed * 10 + i)["x"]
        for i, k in enumerate(("10", "01", "00"))
    }
    probe = ConceptProbe(m_c, s["m_s"], seed=s["data_seed"])
    return probe.scores(parts["10"] + parts["01"] - parts["00"])["accuracy"]


def _signals(s: dict) -> dict[str, float]:
    out = {}
    for m_c in s["sweep"]:
        sig = concept_signals(m_c, s["m_s"])
        out[f"signal/{_tag(m_c)}/colour"] = sig["colour"]
        out[f"signal/{_tag(m_c)}/size"] = sig["size"]  # the annulus's colour moves it a little
    return out


MAIN = "mc0.6"


@recipe(
    "concept_space",
    headline=[
        Figure(f"{MAIN}/colour_steps80", "steps to P(blue) >= 0.8, m_c 0.6", 0),
        Figure(f"{MAIN}/size_steps80", "steps to P(small) >= 0.8, m_c 0.6", 0),
        Figure("mc0.2/colour_steps80", "steps to P(blue) >= 0.8, m_c 0.2", 0),
        Figure("mc0.4/colour_steps80", "steps to P(blue) >= 0.8, m_c 0.4", 0),
        Figure(f"{MAIN}/hidden_checkpoints", "checkpoints naive < 50%, over-prompt >= 80%", 1),
        Figure(f"{MAIN}/max_over_minus_naive", "largest over-prompt minus naive accuracy", 2),
        Figure("sweep/share_with_hidden_checkpoints", "share of the 4 sweep runs with such", 2),
        Figure(
            "sweep/share_with_hidden_checkpoints_trained",
            "same, with the trained classes >= 80% right at the checkpoint",
            2,
        ),
        Figure("mlp_embed/hidden_checkpoints_intervene", "same, latent intervention (MLP)", 1),
        Figure(f"{MAIN}/final_naive_accuracy", "class-11 accuracy at the end, naive", 2),
        Figure("pixel_arithmetic/accuracy", "class-11 accuracy, pixel arithmetic", 2),
    ],
    settings={
        "m_s": 0.1,
        "main": 0.6,
        "sweep": [0.2, 0.4, 0.6, 0.8],
        "per_class": 512,
        "hidden": [128, 128],
        "kappa": 1.0,
        "steps": 800,
        "every": 10,
        "num": 100,
        "data_seed": 0,
    },
    quick={"per_class": 32, "hidden": [16], "steps": 20, "num": 20},
    seeds=5,
    paper="Park et al., NeurIPS 2024 (paper 6); a CVAE stands in for the diffusion model",
    data="12x12 RGB blobs (zoo.datasets.blobs), classes 00, 10, 01 x 512, size signal "
    "m_s 0.1, colour signal m_c 0.2 / 0.4 / 0.6 / 0.8 (data seed 0)",
    claim="Concept-space learning dynamics of a conditional VAE trained on 3 of 4 concept "
    "combinations: which concept a fixed ground-truth probe reads at 80% first on the "
    "held-out prompt, the learning speed against the colour signal, and checkpoints where "
    "over-prompting (h = 2, 2) elicits the held-out class while the naive prompt fails; "
    "pixel arithmetic of ground-truth images as the no-learning baseline.",
    checks=[
        Check(
            "the stronger concept (colour, m_c 0.6) reaches 80% before size",
            f"{MAIN}/size_steps80",
            ">=",
            f"{MAIN}/colour_steps80",
        ),
        Check(
            "with the colour signal below the size signal (m_c 0.2), size comes first",
            "mc0.2/colour_steps80",
            ">=",
            "mc0.2/size_steps80",
        ),
        Check(
            "colour learning speed grows with its signal (0.2 -> 0.4)",
            "mc0.4/colour_speed",
            ">=",
            "mc0.2/colour_speed",
        ),
        Check(
            "colour learning speed grows with its signal (0.4 -> 0.6)",
            f"{MAIN}/colour_speed",
            ">=",
            "mc0.4/colour_speed",
        ),
        Check(
            "colour learning speed grows with its signal (0.6 -> 0.8)",
            "mc0.8/colour_speed",
            ">=",
            f"{MAIN}/colour_speed",
            why="past m_c 0.6 the colour of the held-out prompt comes later, not sooner "
            "(m_c 0.8 and 1.0 in development runs): the speed is monotone in the signal only "
            "over 0.2-0.6 here; why is not established (the colour of the held-out class is "
            "an out-of-distribution generalisation, not only a fit to the training classes)",
        ),
        Check(
            "checkpoints exist where naive prompting fails and over-prompting succeeds",
            f"{MAIN}/hidden_checkpoints",
            ">=",
            1.0,
            why="in 4 of 5 seeds (3 to 5 checkpoints of 10 steps each); in seed 2 the "
            "over-prompt's accuracy never leads the naive prompt's by more than 0.11",
        ),
        Check(
            "over the colour-signal sweep, most runs have such checkpoints",
            "sweep/share_with_hidden_checkpoints",
            ">=",
            0.5,
        ),
        Check(
            "most sweep runs have such checkpoints with the trained classes already right",
            "sweep/share_with_hidden_checkpoints_trained",
            ">=",
            0.5,
            why="at the stronger colour signals (m_c 0.6, 0.8) over-prompting succeeds mostly "
            "while the trained classes are still half made (fewer than 80% of their "
            "generations right); with the trained classes right it happens at m_c 0.2 and "
            "0.4 (4 of 5 seeds each), rarely above",
        ),
    ],
)
def concept_space(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    out: dict[str, float] = {}
    trajectories = {}
    for m_c in s["sweep"]:
        rows = _run(s, m_c, seed)
        trajectories[_tag(m_c)] = rows
        out |= {f"{_tag(m_c)}/{k}": v for k, v in _figures(rows, s).items()}
    runs_with_hidden = [out[f"{_tag(m_c)}/hidden_checkpoints"] > 0 for m_c in s["sweep"]]
    out["sweep/share_with_hidden_checkpoints"] = float(np.mean(runs_with_hidden))
    strict = [out[f"{_tag(m_c)}/hidden_checkpoints_trained"] > 0 for m_c in s["sweep"]]
    out["sweep/share_with_hidden_checkpoints_trained"] = float(np.mean(strict))
    main = s["main"]
    rows = _run(s, main, seed, embed_hidden=(32,))
    trajectories["mlp_embed"] = rows
    out |= {f"mlp_embed/{k}": v for k, v in _figures(rows, s).items()}
    out["pixel_arithmetic/accuracy"] = _pixel_arithmetic(s, main, seed)
    (ctx.artifacts / f"trajectories_seed{seed}.json").write_text(json.dumps(trajectories))
    out |= ctx.once("signals", lambda: _signals(s))
    return {k: float(v) for k, v in out.items()}
