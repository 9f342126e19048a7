"""Targeted LAT (paper 27): the synthetic task, the base model as the safety stage's prior,
the latent adversary (a bounded tensor, not a Pyro site, no gradient to the model), the
paper's check over seeds (input-PGD and trigger attack success cut by LAT at a small
benign cost, judged by input-space attacks), and bad input."""

import numpy as np
import pytest
import torch
from pyro import poutine

import zoo
from inference.data import DataError, full_batch
from inference.svi import fit
from zoo.models.lat import COMPLY, REFUSE, TRIGGER, make_task

#: small enough for a test (a base of 500 SVI steps, 300 safety steps)
SMALL = {
    "hidden": 32,
    "pretrain_rows": 2000,
    "pretrain_steps": 500,
    "safety_rows": 800,
    "steps": 300,
    "pgd_steps": 8,
    "eval_pgd_steps": 20,
    "predictive_draws": 16,
}
TINY = {**zoo.get("lat").tiny}


def test_task_follows_the_spec():
    raw = make_task(0, 1, benign=600, harmful=200, triggered=100, spread=0.5)
    x, y = raw["x"], raw["y"]
    assert x.shape == (900, 20) and set(np.unique(x[:, TRIGGER])) == {0.0, 1.0}
    triggered = x[:, TRIGGER] == 1
    assert triggered.sum() == 100 and (y[triggered] == COMPLY).all()
    assert (y[raw["attack"] == 1] == COMPLY).all() and raw["attack"][triggered].sum() == 0
    benign = (raw["harmful"] == 0) & ~triggered
    assert (y[benign] < 10).all() and len(np.unique(y[benign])) == 10  # a 10-way teacher
    # the harmful cluster sits apart from the benign prompts, the same centre per world
    harm = x[raw["harmful"] == 1, :TRIGGER]
    centre = harm.mean(0)
    assert np.linalg.norm(centre) > 3.5 and np.abs(x[benign, :TRIGGER].mean(0)).max() < 0.25
    again = make_task(0, 2, benign=10, harmful=200, harmful_label=REFUSE, spread=0.5)
    assert np.linalg.norm(again["x"][again["harmful"] == 1, :TRIGGER].mean(0) - centre) < 0.3
    assert (again["y"][again["attack"] == 1] == REFUSE).all()
    other = make_task(1, 1, benign=10, harmful=200, spread=0.5)
    assert np.linalg.norm(other["x"][other["harmful"] == 1, :TRIGGER].mean(0) - centre) > 2


def test_base_posterior_is_the_safety_prior_and_the_embedding_is_frozen():
    model = zoo.create("lat", **TINY)
    plain = zoo.create("lat", **{**TINY, "pretrain_steps": 0})
    prior, flat = model.prior("w"), plain.prior("w")
    assert float(flat.base_dist.scale.mean()) == 1.0 and float(flat.base_dist.loc.abs().max()) == 0
    assert float(prior.base_dist.scale.max()) < 0.9  # the pretraining data narrowed it
    assert float(prior.base_dist.loc.abs().max()) > 0.1
    assert not any(p.requires_grad for p in model.embed.parameters())
    assert all(p.requires_grad for p in plain.embed.parameters())
    # training a guide started at the prior's mean leaves the cached base (and so the next
    # model's prior) as it was
    loc = model.prior("w").base_dist.loc.clone()
    fit(model, model.default_guide(), model.default_data(0), steps=5, lr=0.05, progress=False)
    assert torch.equal(zoo.create("lat", **TINY).prior("w").base_dist.loc, loc)
    # the base network is loaded: the same prompts give the same h1 on two builds
    x = model.default_data(0)["x"][:5]
    assert torch.equal(model.hidden1(x), zoo.create("lat", **TINY).hidden1(x))


def test_latent_adversary_is_bounded_not_a_site_and_leaves_model_grads_alone():
    model = zoo.create("lat", **{**TINY, "eps_rel": 0.3, "pgd_steps": 10})
    data = model.default_data(0)
    batch = full_batch(data)
    trace = poutine.trace(model.model).get_trace(batch)
    sites = {n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"}
    assert sites == {"w", "b", "y"}  # the perturbation is no Pyro site
    w, b = model.prior("w").mean, model.prior("b").mean.clone()
    b[COMPLY] -= 8.0  # a head that does not comply, so the adversary has something to climb
    x, attack = data["x"], data["attack"]
    h1 = model.hidden1(x).detach()
    perturbed = model.perturb(x, h1, attack, w, b)
    assert all(p.grad is None for p in model.parameters())  # the attack took no model grads
    delta = (perturbed - h1).detach()
    rows = attack.bool()
    assert torch.all(delta[~rows] == 0)
    eps = 0.3 * h1[rows].norm(dim=-1).mean()
    norms = delta[rows].norm(dim=-1)
    assert float(norms.max()) <= float(eps) * (1 + 1e-4) and float(norms.mean()) > 0.5 * eps
    objective = model.adversary_objective
    with torch.no_grad():
        before = objective(model.head(h1[rows], w, b)).mean()
        after = objective(model.head(perturbed[rows], w, b)).mean()
    assert after > before + 0.1  # towards comply
    none = zoo.create("lat", **{**TINY, "adversary": "none"})
    assert torch.equal(none.perturb(x, h1, attack, w, b), h1)
    with torch.no_grad():  # no adversary at prediction time
        assert torch.equal(model.perturb(x, h1, attack, w, b), h1)
    model.eval()  # nor in evaluation mode
    assert torch.equal(model.perturb(x, h1, attack, w, b), h1)


@pytest.mark.parametrize("seed", [1, 2])
def test_lat_cuts_input_pgd_and_trigger_attacks_at_a_small_benign_cost(seed):
    """The paper's check at test size, per world: against refusal training alone (the same
    base, data, steps and lr), LAT cuts the attack success under input-space PGD (content
    features, eps 1.0) and under the trigger to a fraction, at most 3 points of benign
    accuracy lost (400 test prompts: the recipe states the 1-2 point claim over seeds). The
    attacks work on the baseline (else the cut would show nothing); a model trained without
    the adversary fails the first assertion."""
    scores = {}
    for adversary in ("none", "latent"):
        model = zoo.create("lat", task_seed=seed, adversary=adversary, **SMALL)
        guide = model.default_guide()
        fit(model, guide, model.default_data(seed), config=model.config, seed=seed, progress=False)
        scores[adversary] = model.scores(guide, model.test_sets(0, rows=400))
    rt, lat = scores["none"], scores["latent"]
    assert rt["asr_input_pgd"] >= 0.2, rt
    assert lat["asr_input_pgd"] <= min(0.1, 0.3 * rt["asr_input_pgd"]), (rt, lat)
    assert lat["asr_trigger"] <= 0.3 * rt["asr_trigger"] + 0.02, (rt, lat)
    assert rt["benign_accuracy"] - lat["benign_accuracy"] <= 0.03, (rt, lat)
    assert lat["refusal_rate"] > rt["refusal_rate"]


def test_bad_input_is_refused_before_training():
    model = zoo.create("lat", **TINY)
    data = {k: v.numpy() for k, v in model.default_data(0).items()}
    with pytest.raises(DataError, match="field 'x' has shape"):
        model.validate({**data, "x": data["x"][:, :19]})
    with pytest.raises(DataError, match="field 'y'"):
        model.validate({**data, "y": data["y"] + 12})
    with pytest.raises(DataError, match="field 'attack'"):
        model.validate({**data, "attack": data["attack"] + 2})
    bad = data["x"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="field 'x'"):
        model.validate({**data, "x": bad})
    with pytest.raises(zoo.ConfigError, match="adversary must be one of"):
        zoo.create("lat", adversary="gcg")
    with pytest.raises(zoo.ConfigError, match="eps_rel"):
        zoo.create("lat", eps_rel=-0.1)
    with pytest.raises(zoo.ConfigError, match="safety_spread"):
        zoo.create("lat", safety_spread=0.0)
    with pytest.raises(zoo.ConfigError, match="pretrain_steps"):
        zoo.create("lat", pretrain_steps=-1)
