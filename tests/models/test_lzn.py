"""Latent zoning network (paper 34): the spec's checks on a small fit, and bad input."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import zoo
from inference.data import DataError, full_batch
from inference.latent_flow import gaussian_moment_test
from inference.svi import fit

SMALL = {"hidden": (64,), "steps": 300}


@pytest.fixture(scope="module")
def fitted():
    """Small fits over two seeds on the same split: (models, train, test)."""
    model = zoo.create("lzn", **SMALL)
    train, test = model.split(model.default_data(), seed=0)
    models = []
    for seed in (0, 1):
        pyro.set_rng_seed(seed)  # the networks' initial weights: not the tests run before
        m = zoo.create("lzn", **SMALL)
        fit(m, m.guide, train, config=m.config, seed=seed, progress=False)
        models.append(m)
    return models, train, test


def test_reverse_flow_returns_latents_to_their_own_anchors_and_latents_are_gaussian(fitted):
    models, train, test = fitted
    x = train["x"][:256]
    for m in models:
        checks = m.flow_checks(x, steps=16)
        assert checks["own_anchor"] >= 0.95, checks
        assert checks["moment_mean_p"] > 0.01 and checks["moment_cov_p"] > 0.01, checks
        # the trained anchors themselves are far from N(0, I): the flow does the work
        assert not gaussian_moment_test(m.anchors(x).detach()).passed
        # the authors' Euler steps on the uniform grid, at the same 16 steps, miss
        m.config.solver, m.config.time_power = "euler", 1.0
        euler = m.flow_checks(x, steps=16)
        m.config.solver, m.config.time_power = "heun", 2.0
        assert euler["own_anchor"] < checks["own_anchor"] - 0.1, euler


def test_label_anchors_classify_held_out_digits_and_a_broken_model_does_not(fitted):
    models, train, test = fitted
    for m in models:
        pyro.set_rng_seed(0)  # evaluate draws latents
        accuracy = m.evaluate(m.guide, test, reference=train)["accuracy"]
        assert accuracy >= 0.6, accuracy
        # the same model with its label anchors permuted names the wrong classes
        saved = m.label_anchors.data.clone()
        m.label_anchors.data = saved.roll(1, 0)
        pyro.set_rng_seed(0)
        wrong = m.evaluate(m.guide, test, reference=train)["accuracy"]
        m.label_anchors.data = saved
        assert wrong <= 0.3, wrong


def test_prior_samples_decode_to_images_near_the_digits(fitted):
    models, train, _ = fitted
    x = train["x"]
    for m in models:
        z = torch.randn(200, m.config.latent_dim, generator=torch.Generator().manual_seed(0))
        with m.inference_mode():
            images = m.image_mean(z)
        # each sample is closer to some training digit than noise about the mean digit is
        nearest = torch.cdist(images, x).min(1).values.median()
        noise = (x.mean(0) + x.std(0) * torch.randn(200, 64)).clamp(0, 1)
        assert nearest < 0.7 * torch.cdist(noise, x).min(1).values.median()


def test_the_zone_guide_density_is_the_prior_times_the_number_of_anchors():
    model = zoo.create("lzn", hidden=(16,))
    batch = full_batch({k: v[:100] for k, v in model.default_data().items()})
    trace = poutine.trace(model.guide).get_trace(batch)
    site = trace.nodes["z"]
    z = site["value"]
    log_q = site["fn"].log_prob(z)
    log_p = model.prior("z").log_prob(z)
    assert torch.allclose(log_q - log_p, torch.full((100,), math.log(100)), atol=1e-3)


def test_the_normal_guide_swap_takes_every_local_family():
    import guides

    model = zoo.create("lzn", guide="normal", hidden=(16,))
    assert guides.local_kinds(model) == guides.LOCAL_KINDS
    assert guides.local_kinds(zoo.create("lzn", hidden=(16,))) == ("normal",)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"x": np.full((4, 64), 2.0), "y": np.zeros(4, int)}, "'x'"),
        ({"x": np.zeros((4, 64)), "y": np.full(4, 10)}, "'y'"),
        ({"x": np.zeros((4, 63)), "y": np.zeros(4, int)}, "'x'"),
    ],
)
def test_bad_data_is_refused_naming_the_field(data, message):
    with pytest.raises(DataError, match=message) as info:
        zoo.create("lzn").validate(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"guide": "delta"}, "guide must be one of"),
        ({"label_cutoff": 1.0}, "label_cutoff"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"solver": "rk4"}, "solver"),
        ({"time_power": 9.0}, "time_power"),
        ({"obs_scale": -1.0}, "obs_scale"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create("lzn", **overrides)
