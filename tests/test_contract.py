"""The contract every registered zoo model keeps (runs on each model in the registry)."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

import guides
import zoo
from inference.data import DataError, full_batch
from inference.svi import fit

MODELS = zoo.list_models()


def _sites(trace, observed):
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not isinstance(site["fn"], _Subsample)
        and not site["infer"].get("_deterministic")
        and not site["infer"].get("is_auxiliary")
        and site["is_observed"] == observed
    }


@pytest.mark.parametrize("name", MODELS)
def test_model_declares_its_contract(name):
    cls = zoo.get(name)
    assert cls.name == name
    assert cls.__doc__ and len(cls.__doc__.strip()) > 20
    model = cls()
    assert model.data_spec(), "a model must describe its data"
    assert set(model.observed_sites) <= set(model.data_spec())


@pytest.mark.parametrize("name", MODELS)
def test_model_and_default_guide_sites_match(name):
    model = zoo.create(name)
    data = model.default_data(seed=0)
    batch = full_batch({k: v[:16] for k, v in data.items()})
    guide = model.guide
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    assert _sites(guide_trace, observed=False) == _sites(model_trace, observed=False)
    assert _sites(model_trace, observed=True) == set(model.observed_sites)
    model_trace.compute_log_prob()
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and "log_prob" in site:
            assert torch.isfinite(site["log_prob"]).all()


@pytest.mark.parametrize("name", MODELS)
def test_default_data_is_seeded_and_valid(name):
    model = zoo.create(name)
    first, second = model.default_data(seed=0), model.default_data(seed=0)
    assert first.keys() == model.data_spec().keys()
    for key in first:
        assert torch.equal(first[key], second[key])
    assert model.validate({k: v.numpy() for k, v in first.items()}).keys() == first.keys()


@pytest.mark.parametrize("name", MODELS)
def test_short_fit_gives_finite_decreasing_loss(name):
    model = zoo.create(name)
    data = model.default_data(seed=0)
    result = fit(model, model.guide, data, steps=60, batch_size=64, lr=5e-3, progress=False)
    assert len(result.losses) == 60
    assert all(math.isfinite(v) for v in result.losses)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_registry_lookup_and_unknown_name():
    assert {"eight_schools", "vae_digits"} <= set(zoo.list())
    with pytest.raises(KeyError, match="unknown model 'nope'.*eight_schools"):
        zoo.get("nope")


def test_config_overrides_and_unknown_key():
    model = zoo.create("eight_schools", centered=True)
    assert model.config.centered is True
    with pytest.raises(zoo.ConfigError, match=r"unknown config key\(s\) \['centred'\]"):
        zoo.create("eight_schools", centred=True)
    with pytest.raises(zoo.ConfigError, match="likelihood must be one of"):
        zoo.create("vae_digits", likelihood="gaussian")


def test_prior_override_is_used_in_the_model(eight_schools_data):
    model = zoo.create("eight_schools", priors={"tau": dist.HalfNormal(1.0)})
    trace = poutine.trace(model).get_trace(full_batch(eight_schools_data))
    assert isinstance(trace.nodes["tau"]["fn"], dist.HalfNormal)
    # supports that map to the same unconstrained space are accepted (positive vs nonnegative)
    zoo.create("eight_schools", priors={"tau": dist.Gamma(2.0, 0.5)})


@pytest.mark.parametrize(
    "site, prior, message",
    [
        ("sigma_y", dist.Normal(0.0, 1.0), "unknown prior site 'sigma_y'.*declared prior sites"),
        ("tau", dist.Normal(0.0, 1.0), "site 'tau' must have support positive; Normal has"),
        ("mu", dist.Normal(torch.zeros(3), 1.0), "batch shape"),
        ("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1), "event shape"),
        ("mu", 3.0, "must be a pyro.distributions Distribution"),
    ],
)
def test_bad_prior_overrides_are_refused(site, prior, message):
    with pytest.raises(zoo.PriorError, match=message):
        zoo.create("eight_schools", priors={site: prior})


def test_parse_prior_accepts_literals_only():
    site, prior = zoo.parse_prior("tau=HalfNormal(2.5)")
    assert site == "tau" and isinstance(prior, dist.HalfNormal)
    assert float(prior.scale) == 2.5
    _, prior = zoo.parse_prior("mu = dist.Normal(loc=1, scale=[2.0])")
    assert float(prior.loc) == 1.0
    for text, message in [
        ("tau=__import__('os').system('true')", "not a distribution"),
        ("tau=HalfNormal(abs(-1))", "literal numbers"),
        ("tau=Tensor(1)", "not a distribution"),
        ("tau", "SITE=Dist"),
        ("tau=HalfNormal(-1.0)", "rejects these arguments"),
        ("tau=HalfNormal('a')", "not a number"),
    ]:
        with pytest.raises(zoo.PriorError, match=message):
            zoo.parse_prior(text)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"y": [1.0, np.nan], "sigma": [1.0, 1.0]}, "field 'y' has 1 NaN"),
        ({"y": [1.0, 2.0], "sigma": [1.0, -1.0]}, "field 'sigma' has values outside"),
        ({"y": [[1.0, 2.0]], "sigma": [1.0]}, r"field 'y' has shape \(1, 2\); expected"),
        ({"y": ["a", "b"], "sigma": [1.0, 1.0]}, "field 'y' must be numeric"),
        ({"y": [], "sigma": []}, "field 'y' is empty"),
        ({"y": [1.0, 2.0]}, r"missing field\(s\) \['sigma'\]"),
        ({"y": [1.0], "sigma": [1.0], "z": [1.0]}, r"unknown field\(s\) \['z'\]"),
        ({"y": [1.0, 2.0], "sigma": [1.0]}, "field 'sigma' has 1 rows but other fields have 2"),
    ],
)
def test_bad_data_gets_a_clear_error(data, message):
    with pytest.raises(DataError, match=message):
        zoo.create("eight_schools").validate(data)


def test_vae_data_support_follows_the_likelihood():
    grey = np.full((4, 64), 0.5)
    with pytest.raises(DataError, match="outside its support"):
        zoo.create("vae_digits").validate({"x": grey})
    assert zoo.create("vae_digits", likelihood="continuous_bernoulli").validate({"x": grey})


def test_unknown_guide_kind_lists_the_valid_ones():
    with pytest.raises(guides.GuideError, match="unknown guide kind 'laplace'.*delta"):
        guides.build("laplace", zoo.create("eight_schools"))


def test_guides_keep_separate_parameters():
    # module-local parameters: two guides of one family never share values by name
    model = zoo.create("eight_schools")
    data = model.default_data()
    first = guides.build("normal", model)
    fit(model, first, data, steps=200, lr=0.05, progress=False)
    second = guides.build("normal", model)
    with torch.no_grad():
        second(full_batch(data))
    loc_first = first.global_guide.locs.mu.detach()
    loc_second = second.global_guide.locs.mu.detach()
    assert not torch.allclose(loc_first, loc_second)
    assert len(pyro.get_param_store()) == 0
