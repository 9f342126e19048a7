"""The known-truth contract: ``simulate(seed) -> (truth, data)`` on every model that has it."""

import math

import numpy as np
import pytest
import torch
from pyro import poutine

import zoo
from inference.data import full_batch

WITH_TRUTH = [name for name in zoo.list_models() if zoo.get(name).has_truth()]
#: configurations that change which sites exist (and so what the truth must name)
VARIANTS = {
    "eight_schools": {"centered": True},
    "pac_invariance": {"centered": True},
    "capability_factors": {"marginal": False},
    "pretraining_factor": {"marginalize": False},
    "niw_meta": {"covariance": "diag"},
    "mm_gpvae": {"parameterization": "time"},
}
#: a smaller design where the default one makes the simulation slow
SMALLER = {"mm_gpvae": dict(trials=20, time_bins=16, neurons=12, image_side=10, hidden=16)}
CASES = [(name, {}) for name in WITH_TRUTH] + [
    (name, options) for name, options in VARIANTS.items() if name in WITH_TRUTH
]


def _differs(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_models_with_known_truth_are_found():
    assert {"eight_schools", "niw_meta", "pretraining_mixture", "rep4ex"} <= set(WITH_TRUTH)
    assert not zoo.get("vae_digits").has_truth()
    with pytest.raises(NotImplementedError, match="model 'vae_digits' has no simulator"):
        zoo.create("vae_digits").simulate(0)


@pytest.mark.parametrize(
    "name, options",
    CASES,
    ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in CASES],
)
def test_simulate_is_seeded_valid_and_names_sites_of_the_model(name, options):
    model = zoo.create(name, **SMALLER.get(name, {}), **options)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    truth, data = model.simulate(0)
    # seeded, and the global random state is left alone
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    again_truth, again_data = model.simulate(0)
    assert set(again_truth) == set(truth) and set(again_data) == set(data)
    assert not _differs(truth, again_truth) and not _differs(data, again_data)
    other_truth, other_data = model.simulate(1)
    assert _differs(truth, other_truth) and _differs(data, other_data)
    # the data are valid for the model
    validated = model.validate(data)
    assert not _differs(data, validated)
    # the truth names sites of the model, and replaying the model with it is finite
    batch = full_batch(data)
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(batch)
        sites = {k for k, site in trace.nodes.items() if site["type"] == "sample"}
        assert truth and set(truth) <= sites, set(truth) - sites
        replay = poutine.trace(poutine.condition(model, data=truth)).get_trace(batch)
        log_density = float(replay.log_prob_sum())
    assert math.isfinite(log_density), log_density
    for site_name, value in truth.items():
        assert torch.equal(replay.nodes[site_name]["value"], value), site_name
