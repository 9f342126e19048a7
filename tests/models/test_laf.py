"""LAF (paper 33): the paper's check on load_digits class removal, over two seeds: the
label-free unlearning drives forget-set accuracy far down while the remaining data and the
other classes' test rows keep their accuracy; the two VAEs tell the sets apart; the
paper's tiny learning rates (a broken setting here) forget nothing, so the check can fail."""

import pytest
import torch

import zoo
from inference.classifiers import accuracy
from inference.svi import fit
from zoo.base import ConfigError

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def fitted():
    out = {}
    for seed in SEEDS:
        torch.manual_seed(seed)  # the VAEs' initial weights
        model = zoo.create("laf", steps=600)
        data = model.default_data(seed)
        torch.manual_seed(seed)
        fit(model, model.guide, data, config=model.config, seed=seed, progress=False)
        out[seed] = (model, data, model.task(seed))
    return out


def _accuracies(net, t, forget_class=3):
    other = t.y_test != forget_class
    return {
        "remain": accuracy(net, t.x[t.remain], t.y[t.remain]),
        "forget": accuracy(net, t.x[t.forget], t.y[t.forget]),
        "test": accuracy(net, t.x_test[other], t.y_test[other]),
    }


def test_the_two_vaes_tell_forget_from_remaining_rows(fitted):
    for seed in SEEDS:
        model, data, _ = fitted[seed]
        scores = model.evaluate(model.guide, data)
        assert scores["separation"] > 0.9, (seed, scores)
        assert scores["rho_u_forget"] < scores["rho_s_forget"], (seed, scores)
        assert scores["rho_s_remain"] < scores["rho_u_remain"], (seed, scores)


def test_class_removal_forgets_the_class_and_keeps_the_rest(fitted):
    for seed in SEEDS:
        model, _, t = fitted[seed]
        before = _accuracies(t.original, t)
        assert before["forget"] > 0.95
        net = model.unlearn(t.original, t.x[t.remain], t.x[t.forget], seed=seed)
        after = _accuracies(net, t)
        assert after["forget"] < 0.45, (seed, after)
        assert after["remain"] > 0.97, (seed, after)
        assert after["test"] > before["test"] - 0.04, (seed, before, after)
        # the original is left as it was
        assert _accuracies(t.original, t) == before


def test_the_papers_tiny_rates_forget_nothing_here(fitted):
    model, _, t = fitted[0]
    model.config.lr_ue, model.config.lr_ra, model.config.unlearn_epochs = 5e-5, 1e-4, 20
    try:
        net = model.unlearn(t.original, t.x[t.remain], t.x[t.forget], seed=0)
    finally:
        model.config = zoo.create("laf", steps=600).config
    assert _accuracies(net, t)["forget"] > 0.9


def test_elbo_rho_runs_and_keeps_the_remaining_data(fitted):
    # the spec's principled rho (per-row negative ELBO) saturates exp(rho / (rho + 1)):
    # it forgets less than the squared error at the same rates (D_f 0.7-0.9 in our runs)
    model, _, t = fitted[0]
    model.config.rho = "elbo"
    try:
        net = model.unlearn(t.original, t.x[t.remain], t.x[t.forget], seed=0)
    finally:
        model.config.rho = "mse"
    after = _accuracies(net, t)
    assert after["forget"] < 0.98 and after["remain"] > 0.97, after


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"task": "noisy"}, "task must be one of"),
        ({"rho": "kl"}, "rho must be one of"),
        ({"beta": 0.0}, "beta must be a positive number"),
        ({"forget_class": 10}, "forget_class must be a digit"),
        ({"forget_fraction": 1.5}, "forget_fraction must be in"),
        ({"tau": 0.0}, "tau must be a positive number"),
        ({"lr_ue": -1.0}, "lr_ue must be a finite number >= 0"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        zoo.create("laf", **overrides)


def test_bad_unlearning_input_is_refused(fitted):
    model, _, t = fitted[0]
    bad = t.x[:8].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x_forget has NaN"):
        model.unlearn(t.original, t.x[:8], bad)
    with pytest.raises(ValueError, match="x_remain must be"):
        model.unlearn(t.original, t.x[:8, :10], t.x[:8])
