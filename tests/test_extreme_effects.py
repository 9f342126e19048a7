"""extreme_effects: finds an effect a generator has, finds none where it has none, corrects
for multiplicity, pairs the draws, grows with extremity where the generator does, and refuses
bad input in one line."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from inference.diagnostics import ExtremeEffects, extreme_effects
from inference.diagnostics.extreme_effects import prior_generator


def toy(num):
    """Bit 0 moves the output's mean linearly, bit 1 moves it through a tanh (saturates),
    bit 2 does nothing; z is noise."""
    c = pyro.sample("c", dist.Bernoulli(torch.full((num, 3), 0.5)).to_event(1))
    z = pyro.sample("z", dist.Normal(torch.zeros(num, 4), 1.0).to_event(1))
    level = 0.8 * c[:, 0] + torch.tanh(c[:, 1]) * 0.6
    return z + level[:, None]


PLACEBO = np.random.default_rng(0)  # not reseeded per treatment value: a fresh draw each call

OUTCOMES = {
    "mean": lambda x: x.mean(-1),
    "spread": lambda x: x.std(-1),  # no bit moves the within-row spread
    "noise": lambda x: PLACEBO.normal(size=len(x)),  # a placebo outcome
}


def test_finds_the_effect_a_code_has_and_it_grows_with_extremity():
    r = extreme_effects(toy, "c", OUTCOMES, index=0, values=(1, 2, 3, 5), num_draws=300)
    assert isinstance(r, ExtremeEffects)
    assert r.flagged("mean") and r.flags[:, 0].all()
    # the paired design removes the noise z: ATE exactly 0.8 v, standardised by sd(mean | v=0)
    assert np.allclose(r.ate[:, 0], 0.8 * r.values, atol=1e-5)
    assert r.grows_with_extremity("mean")
    assert not r.flagged("spread") and not r.flagged("noise")
    summary = r.summary()
    assert summary["mean"]["at_value"] == 5.0 and summary["mean"]["flagged"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_no_effect_where_the_code_does_nothing(seed):
    r = extreme_effects(
        toy, "c", OUTCOMES, index=2, values=(-3, 1, 3, 10), num_draws=300, seed=seed
    )
    assert not r.flags.any()
    assert np.allclose(r.ate[:, :2], 0.0, atol=1e-6)
    assert (r.qvalues[:, :2] == 1.0).all()


def test_a_saturating_effect_does_not_grow():
    r = extreme_effects(toy, "c", OUTCOMES, index=1, values=(1, 2, 3, 5), num_draws=200)
    assert r.flagged("mean")
    # tanh(v) barely moves past v = 2: the sizes stall, and a strict slack says so
    assert not r.grows_with_extremity("mean", slack=-0.01)


def test_multiplicity_correction_keeps_placebo_discoveries_rare():
    """Over 20 seeds and 4 tests each, raw p < 0.05 fires on the placebo about 5% of
    the time; BH-corrected flags (min_effect 0) fire on far fewer seeds."""
    raw = flagged = 0
    for seed in range(20):
        r = extreme_effects(
            toy, "c", {"noise": OUTCOMES["noise"]}, index=2, num_draws=50, seed=seed, min_effect=0.0
        )
        raw += int((r.pvalues < 0.05).any())
        flagged += int(r.flags.any())
    assert raw >= 2
    assert flagged <= 2 and flagged < raw


def test_whole_site_intervention_and_reference_spread():
    ref = toy(1000)
    r = extreme_effects(toy, "c", {"mean": OUTCOMES["mean"]}, values=(1,), reference=ref)
    assert np.isclose(r.ate[0, 0], 0.8 + 0.6 * np.tanh(1.0), atol=1e-5)
    assert np.isclose(r.sd_ref[0], ref.mean(-1).std(unbiased=True).item(), rtol=1e-6)


def test_runs_on_a_zoo_model_through_its_prior():
    model = zoo.create("householder", **zoo.get("householder").tiny)
    data = model.default_data(0)
    generator = prior_generator(model, data, site="z")
    out = generator(7)
    assert out.shape == (7, 256)
    r = extreme_effects(
        generator, "z", {"ink": lambda x: x.sum(-1)}, index=0, values=(2, 4), num_draws=20
    )
    assert r.std_ate.shape == (2, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"site": "w"}, "no sample site 'w'"),
        ({"values": (0,)}, "at least one value other than the baseline"),
        ({"values": (1, float("nan"))}, "must be finite"),
        ({"num_draws": 2}, "num_draws"),
        ({"alpha": 1.5}, "alpha"),
        ({"correction": "holm"}, "correction"),
        ({"index": 7}, "out of range"),
        ({"outcomes": {"bad": lambda x: x}}, "one value per output"),
        ({"outcomes": {"nan": lambda x: x[:, 0] * np.nan}}, "NaN or inf"),
        ({"outcomes": {}}, "non-empty"),
    ],
)
def test_bad_input_is_refused_in_one_line(kwargs, message):
    args = {"site": "c", "outcomes": OUTCOMES, "index": 0, "num_draws": 10, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        extreme_effects(toy, **args)
    assert "\n" not in str(error.value)
