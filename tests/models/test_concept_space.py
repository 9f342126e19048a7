"""concept_space's own checks: the renderer's concepts and signals, the fixed probe reading
ground truth, and the paper's claims on short trajectories over seeds: the stronger concept
reaches 80% on the held-out prompt first (and the order flips with the signals), and
checkpoints exist where over-prompting elicits the held-out class while naive prompting
fails; bad settings refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.base import ConfigError
from zoo.datasets.blobs import blobs, colours, concept_signals, radii
from zoo.models.concept_space import (
    ConceptProbe,
    hidden_checkpoints,
    steps_to,
    trajectory,
)

SMALL: dict = {}  # the default config (the recipe's model)
STEPS, EVERY = 500, 20


def test_renderer_matches_the_papers_colours_and_radii():
    assert np.allclose(colours([0, 1], 0.137), [[0.5685, 0.4315, 0.4315], [0.4315, 0.4315, 0.5685]])
    assert np.allclose(radii([0, 1], 0.4) / 6, [0.65, 0.25])


def test_concept_signals_grow_with_their_strength_only():
    weak, strong = concept_signals(0.2, 0.1), concept_signals(0.6, 0.1)
    assert strong["colour"] > 2.5 * weak["colour"]
    assert abs(strong["size"] - weak["size"]) < 0.3 * weak["size"]
    assert concept_signals(0.3, 0.3)["size"] > 1.5 * concept_signals(0.3, 0.1)["size"]


def test_probe_reads_ground_truth_and_not_noise():
    probe = ConceptProbe(0.6, 0.1)
    test = blobs(("00", "10", "01", "11"), 100, m_c=0.6, m_s=0.1, seed=7)
    p = probe.probs(test["x"])
    assert ((p > 0.5) == (test["h"] > 0.5)).mean() > 0.97
    noise = np.random.default_rng(0).uniform(0, 0.5, size=(400, 432)).astype(np.float32)
    assert probe.scores(noise)["accuracy"] < 0.6  # not "blue and small" for everything


def test_over_prompt_is_the_embedding_of_amplified_values():
    torch.manual_seed(0)
    model = zoo.create("concept_space", kappa=0.5)
    with torch.no_grad():
        over = model.prompt_embedding("over")
        assert torch.allclose(over, model.embed(torch.tensor([1.5, 1.5])))
        # a linear embedding: the latent intervention coincides with over-prompting
        assert torch.allclose(model.prompt_embedding("intervene"), over, atol=1e-5)


def _run(m_c: float, seed: int):
    torch.manual_seed(seed)
    model = zoo.create("concept_space", m_c=m_c, m_s=0.1, **SMALL)
    data = model.default_data(seed)
    return trajectory(model, data, steps=STEPS, every=EVERY, seed=seed, num=60)


@pytest.fixture(scope="module")
def runs():
    return {(m_c, seed): _run(m_c, seed) for m_c in (0.2, 0.6) for seed in (0, 1)}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_stronger_concept_is_learned_first(runs, seed):
    strong = runs[(0.6, seed)]  # colour signal ~3.8 against size ~1.9
    assert steps_to(strong, "naive/p_blue") < steps_to(strong, "naive/p_small")
    weak = runs[(0.2, seed)]  # colour ~1.3 against size ~1.9: the order flips
    assert steps_to(weak, "naive/p_small") < steps_to(weak, "naive/p_blue")
    # and colour is learned faster with the stronger colour signal
    assert steps_to(strong, "naive/p_blue") < steps_to(weak, "naive/p_blue")


def test_over_prompting_elicits_the_held_out_class_before_naive_prompting(runs):
    found = [hidden_checkpoints(rows, "over") for rows in runs.values()]
    assert sum(n > 0 for n in found) >= 3, found
    for rows in runs.values():  # and the model ends up composing the held-out class
        assert rows["naive/accuracy"][-1] > 0.8
        assert rows["train_accuracy"][-1] > 0.9


@pytest.mark.parametrize(
    "override",
    [{"m_c": 1.5}, {"m_s": -0.1}, {"kappa": -1.0}, {"obs_scale": 0.0}, {"embed_hidden": (0,)}],
)
def test_bad_settings_are_refused(override):
    with pytest.raises(ConfigError):
        zoo.create("concept_space", **override)


def test_bad_prompts_and_renderer_inputs_are_refused():
    model = zoo.create("concept_space", **zoo.create("concept_space").tiny)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(prompt="loud")
    with pytest.raises(ValueError, match="h must be"):
        model.generate((1.0, float("nan")))
    with pytest.raises(ValueError, match="classes"):
        blobs(("12",), 4)
    with pytest.raises(ValueError, match="m_c"):
        blobs(("00",), 4, m_c=2.0)


def test_hidden_checkpoints_count_only_naive_failures_with_over_prompt_success():
    rows = {
        "naive/accuracy": [0.0, 0.2, 0.6, 0.1],
        "over/accuracy": [0.5, 0.9, 0.9, 0.95],
        "train_accuracy": [0.3, 0.5, 1.0, 0.9],
    }
    assert hidden_checkpoints(rows) == 2  # steps 2 and 4
    assert hidden_checkpoints(rows, trained=0.8) == 1  # only step 4 has the trained classes
