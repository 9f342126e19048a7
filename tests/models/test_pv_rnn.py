"""PV-RNN (paper 3): the meta-prior in model and guide, the adaptive vectors, error
regression with a frozen network, the primitives' check, and its bad inputs."""

import numpy as np
import pytest
import torch
from pyro import poutine

import guides
import zoo
from inference.data import Batch, DataError, full_batch
from inference.svi import fit
from zoo.models.pv_rnn.primitives import (
    TRANSITIONS,
    classify_segments,
    make_sequences,
    templates,
    transition_kl,
)

TINY = dict(zoo.get("pv_rnn").tiny)


def tiny(**overrides):
    return zoo.create("pv_rnn", **{**TINY, **overrides})


_TRAINED = {}


def trained(steps: int, seed: int = 0, **overrides):
    """A tiny PV-RNN fitted for ``steps`` on its default data (cached per arguments)."""
    key = (steps, seed, tuple(sorted(overrides.items())))
    if key not in _TRAINED:
        _TRAINED[key] = _train(steps, seed, **overrides)
    return _TRAINED[key]


def _train(steps: int, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = tiny(**overrides)
    data = model.default_data(seed)
    guide = guides.build("default", model)
    fit(model, guide, data, steps=steps, lr=0.02, seed=seed, progress=False)
    return model, guide, data


def test_the_meta_prior_scales_the_kl_in_model_and_guide():
    model = tiny(w=0.03, w1=0.5)
    batch = full_batch(model.default_data(0))
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    latent_units = model.config.latent  # the implementations' KL / Z
    for trace in (model_trace, guide_trace):
        assert trace.nodes["z"]["scale"] == pytest.approx(0.03 / latent_units)
        assert trace.nodes["z1"]["scale"] == pytest.approx(0.5 / latent_units)
    assert model_trace.nodes["x"]["scale"] == 1.0
    # so the latent part of the ELBO is (w/Z)(log p - log q): the scaled KL, not w log p - log q
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    latent = sum(
        model_trace.nodes[s]["log_prob_sum"] - guide_trace.nodes[s]["log_prob_sum"]
        for s in ("z1", "z")
    )
    unscaled = sum(
        model_trace.nodes[s]["fn"].log_prob(model_trace.nodes[s]["value"]).sum()
        - guide_trace.nodes[s]["fn"].log_prob(guide_trace.nodes[s]["value"]).sum()
        for s in ("z",)
    )
    z1 = (
        model_trace.nodes["z1"]["fn"].log_prob(model_trace.nodes["z1"]["value"]).sum()
        - guide_trace.nodes["z1"]["fn"].log_prob(guide_trace.nodes["z1"]["value"]).sum()
    )
    expected = (0.03 * unscaled + 0.5 * z1) / latent_units
    assert float(latent.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)


def test_adaptive_vectors_start_at_the_prior_and_follow_the_subsample():
    model = tiny()
    data = model.default_data(0)
    size = len(data["x"])
    with torch.no_grad():
        model.guide(full_batch(data))
    pre_mu, pre_sigma = model._prior_init(TINY["length"])
    assert model.vectors.mu.shape == (size, TINY["length"], TINY.get("latent", 2))
    assert torch.allclose(model.vectors.mu, pre_mu.expand_as(model.vectors.mu))
    assert torch.allclose(model.vectors.sigma, pre_sigma.expand_as(model.vectors.sigma))
    # the first step starts at the prior N(0, I): pre-activations zero from h_0 = 0
    assert not pre_mu[0].any() and not pre_sigma[0].any()
    with torch.no_grad():
        model.vectors.mu[3] += 1.0
    index = torch.tensor([3, 5])
    batch = Batch({"x": data["x"][index]}, index=index, size=size)
    loc, _ = model.posterior_params(batch)
    assert torch.allclose(loc[0], torch.tanh(model.vectors.mu[3]))
    assert torch.allclose(loc[1], torch.tanh(model.vectors.mu[5]))
    with pytest.raises(ValueError, match="error_regression"):
        model.posterior_params(full_batch({"x": data["x"][:4]}))


def test_the_kl_per_step_falls_as_w_grows():
    # a broken scale (w ignored in the guide or the model) leaves the KL at one level
    kls = [trained(300, w=w)[0].kl_per_step(tiny().default_data(0)) for w in (1e-3, 1.0)]
    assert kls[0] > 2 * kls[1], kls


def test_error_regression_freezes_the_network_and_beats_open_loop_prediction():
    model, _, data = trained(300, w=1e-3)
    held = make_sequences(3, TINY["length"], seed=7)[0]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.zero_grad(set_to_none=True)
    pred = model.error_regression(torch.as_tensor(held), steps=15)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the network moved"
    assert all(p.grad is None and p.requires_grad for p in model.parameters()), "no gradient"
    window = model.config.er_window
    assert torch.isnan(pred[:, :window]).all() and torch.isfinite(pred[:, window:]).all()
    x = torch.as_tensor(held)
    er = float(((pred[:, window:] - x[:, window:]) ** 2).mean())
    with torch.no_grad():
        _, h = model.net.generate(model.net.zero_state((3,)), TINY["length"], mean=True)
        open_loop = model.net.predict(h)
    baseline = float(((open_loop[:, window:] - x[:, window:]) ** 2).mean())
    assert er < 0.7 * baseline, (er, baseline)


def test_the_vrnn_encoder_predicts_causally():
    model, guide, data = trained(5, posterior="encoder")
    x = data["x"][:2].clone()
    pred = model.filtering_predictions(x)
    x[:, 12] += 5.0
    moved = model.filtering_predictions(x)
    assert torch.allclose(pred[:, 1:13], moved[:, 1:13]), "x_t leaked into its own prediction"
    assert not torch.allclose(pred[:, 13:], moved[:, 13:])
    assert set(model.evaluate(guide, data)) == {"one_step_mse", "transition_kl", "segment_rmse"}


def test_the_primitives_check_reads_true_sequences_right():
    x, states = make_sequences(40, 250, seed=1)
    found, err = classify_segments(x)
    assert np.array_equal(found, states) and err.max() < 0.05
    assert transition_kl(states) < 0.05
    uniform = np.random.default_rng(0).integers(0, 3, size=(40, 10))
    assert transition_kl(uniform) > 0.3
    assert templates().shape == (3, 25, 2) and np.allclose(TRANSITIONS.sum(1), 1)
    # every primitive starts and ends near the origin: sequences are continuous
    assert np.abs(templates()[:, 0]).max() < 1e-9 and np.abs(templates()[:, -1]).max() < 0.25


def test_bad_inputs_are_refused_before_training():
    model = tiny()
    with pytest.raises(DataError, match=r"field 'x'.*set length=T"):
        model.validate({"x": np.zeros((4, TINY["length"] + 5, 2))})
    with pytest.raises(DataError, match="field 'x'"):
        model.validate({"x": np.full((4, TINY["length"], 2), np.nan)})
    for overrides, message in [
        ({"posterior": "gru"}, "posterior must be one of"),
        ({"er_window": TINY["length"]}, "er_window must be in"),
        ({"w": 0.0}, "w must be a positive number"),
        ({"w1": -1.0}, "w1 must be positive"),
        ({"tau": (0.5, 2.0)}, "tau must be two time constants"),
        ({"length": 1}, "length must be >= 2"),
    ]:
        with pytest.raises(zoo.ConfigError, match=message):
            tiny(**overrides)
    with pytest.raises(ValueError, match="window must be in"):
        model.error_regression(torch.zeros(2, 5, 2), window=5)
