"""sage's own checks: the stable failure log-probability, the prior term of the failure
posterior (lambda = 0 gives back the prior), and the failure search on a small fitted
generator finding far more ensemble failures than prior sampling, over seeds."""

from __future__ import annotations

import pytest
import torch

import zoo
from inference.svi import fit
from zoo.base import ConfigError
from zoo.models.sage import NUM_CLASSES, Judges

SMALL = {
    "latent_dim": 4,
    "hidden": (64,),
    "judge_steps": 300,
    "search_chains": 4,
    "search_warmup": 40,
    "search_draws": 15,
    "search_tree_depth": 5,
}


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = zoo.create("sage", **SMALL)
    data = model.default_data()
    fit(model, model.guide, data, epochs=25.0, batch_size=128, lr=3e-3, seed=0, progress=False)
    judges = Judges(data["x"], data["label"], steps=SMALL["judge_steps"])
    return model, judges


def test_log_fail_is_the_log_of_one_minus_the_ensemble_probability(fitted):
    model, judges = fitted
    x = torch.rand(20, 64)
    c = torch.arange(20) % NUM_CLASSES
    probs = torch.stack([net(x).softmax(-1) for net in judges.ensemble]).mean(0)
    expected = torch.log1p(-probs[torch.arange(20), c])
    assert torch.allclose(judges.log_fail(x, c), expected, atol=1e-4)


@pytest.mark.parametrize("seed", [0])
def test_without_the_failure_factor_nuts_samples_the_prior(fitted, seed):
    model, judges = fitted
    classes = torch.arange(NUM_CLASSES).repeat(4)
    z, _, _ = model.nuts_search(judges, classes, warmup=40, draws=15, fail_weight=0.0, seed=seed)
    norm = float(z.pow(2).sum(-1).mean() / z.shape[-1])
    assert 0.75 < norm < 1.25, norm


@pytest.mark.parametrize("seed", [0, 1])
def test_failure_search_finds_far_more_failures_than_the_prior(fitted, seed):
    model, judges = fitted
    report = model.failure_report(judges, seed=seed)
    assert report["prior/fail_rate"] < 0.3, report  # a small, briefly fitted generator
    assert report["nuts/fail_rate"] > report["prior/fail_rate"] + 0.2, report
    # the prior term holds the latents nearer the typical set than plain ascent does
    assert report["nuts/z_norm2_per_dim"] < report["ascent/z_norm2_per_dim"], report


@pytest.mark.parametrize(
    "override", [{"fail_weight": -1.0}, {"search_chains": 0}, {"search_warmup": -1}]
)
def test_bad_search_settings_are_refused(override):
    with pytest.raises(ConfigError):
        zoo.create("sage", **override)
