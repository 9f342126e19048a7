"""GEDI's own checks (paper 21): the invariance term alone collapses to one cluster and the
prior term prevents it (over seeds); the full objective clusters the moons far better than
its generative-free ablation would need to; the enumerated cluster gives the same objective
as its closed form; the model's own bad inputs."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import zoo
from inference.data import DataError, full_batch
from inference.svi import fit

#: a small, fast version of the recipe's setting (seconds on one core)
SMALL = {"rows": 600, "hidden": (32, 32), "batch_size": 128, "sgld_steps": 5}


def train(seed: int, steps: int, **overrides):
    model = zoo.create("gedi", **{**SMALL, **overrides})
    data = model.default_data(seed)
    torch.manual_seed(seed)
    fit(model, model.guide, data, config=model.config, steps=steps, seed=seed, progress=False)
    test = zoo.create("gedi", **{**SMALL, **overrides}).default_data(seed + 100)
    return model, model.evaluate(model.guide, test)


@pytest.mark.parametrize("seed", [0, 1])
def test_invariance_alone_collapses_and_the_prior_term_prevents_it(seed):
    _, alone = train(seed, 400, gen_weight=0.0, prior_weight=0.0)
    _, with_prior = train(seed, 400, gen_weight=0.0)
    assert alone["num_clusters"] == 1 and alone["nmi"] < 0.01
    assert with_prior["num_clusters"] == 2 and with_prior["nmi"] > 0.1


def test_gedi_clusters_the_moons():
    scores = [train(seed, 1000)[1] for seed in (0, 1)]
    nmi = [s["nmi"] for s in scores]
    assert min(nmi) > 0.7, nmi


def test_enumerated_cluster_gives_the_closed_form_objective():
    model = zoo.create("gedi", **SMALL, variant="enum", gen_weight=0.0)
    batch = full_batch({k: v[:64] for k, v in model.default_data(0).items()})
    losses = []
    model.guide(batch)  # the autoguide built outside the enumeration (y is no guide site)
    for elbo in (Trace_ELBO(), TraceEnum_ELBO(max_plate_nesting=1)):
        pyro.set_rng_seed(3)  # the same jitter draws
        losses.append(float(elbo.differentiable_loss(model.model, model.guide, batch)))
    assert math.isfinite(losses[0]) and losses[1] == pytest.approx(losses[0], rel=1e-5)
    # and it is the tempered agreement, not the paper's cross-entropy
    factor = zoo.create("gedi", **SMALL, gen_weight=0.0)
    factor.load_state_dict(model.state_dict())
    pyro.set_rng_seed(3)
    other = float(Trace_ELBO().differentiable_loss(factor.model, factor.guide, batch))
    assert abs(other - losses[0]) > 1e-3


def test_sgld_samples_follow_the_learned_energy():
    model, _ = train(0, 1000)
    x = model.sample_new_rows(400, data=model.default_data(0), seed=1)["x"]
    data = model.default_data(0)["x"]
    nearest = torch.cdist(x, data).min(1).values
    box = model.buffer.uniform(400)
    assert nearest.median() < 0.5 * torch.cdist(box, data).min(1).values.median()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dataset": "spirals"}, "dataset must be one of"),
        ({"variant": "mcmc"}, "variant must be one of"),
        ({"clusters": 1}, "clusters must be >= 2"),
        ({"tau": 0.0}, "tau must be positive"),
        ({"gen_weight": -1.0}, "gen_weight must be a finite number >= 0"),
        ({"gen_weight": 0.0, "inv_weight": 0.0, "prior_weight": 0.0}, "all 0"),
        ({"reinit": 2.0}, "reinit must be in"),
    ],
)
def test_bad_config_is_refused_with_one_line(overrides, message):
    with pytest.raises(zoo.ConfigError, match=message) as info:
        zoo.create("gedi", **overrides)
    assert "\n" not in str(info.value)


def test_bad_data_is_refused_with_one_line():
    model = zoo.create("gedi", **SMALL)
    with pytest.raises(DataError, match="'x'"):
        model.validate({"x": np.zeros((5, 3))})
    with pytest.raises(DataError, match="'x'"):
        model.validate({"x": np.array([[0.0, np.nan]])})
    with pytest.raises(DataError, match="'label'"):
        model.validate({"x": np.zeros((2, 2)), "label": np.array([0, -5])})
    assert set(model.validate({"x": np.zeros((2, 2))})) == {"x"}
