"""cdev (paper 26): the summed-out likelihood is the enumerated one, a trained model's bits
are read back by Q and CDEV finds a sparse map from bits to the codas' true factors with no
effect on the nuisance outcomes in the training support (over seeds), a decoder that ignores
a bit shows no effect, and bad configs, data and bits are refused."""

import numpy as np
import pyro
import pytest
import torch
from pyro import infer

import zoo
from inference.data import DataError, holdout_split
from inference.svi import fit
from zoo.base import ConfigError
from zoo.datasets.codas import codas, measure
from zoo.models.cdev import exploration_scores

SMALL = {"num_rows": 1500, "num_codes": 3, "hidden": (32, 128), "batch_size": 64}


def test_codas_measurements_read_the_true_factors():
    x, f = codas(400, seed=3)
    m = measure(x)
    assert (m[:, 0] == f[:, 0]).mean() > 0.97  # click count
    assert abs(m[f[:, 1] == 0, 1].mean()) < 0.02 and m[f[:, 1] == 1, 1].mean() < -0.18  # rhythm
    assert np.corrcoef(m[:, 2], f[:, 2])[0, 1] > 0.95  # spectral mean vs f0


def test_summed_likelihood_equals_the_enumerated_elbo():
    model = zoo.create("cdev", **SMALL)
    data = model.default_data(0)
    batch = {"x": data["x"][:32]}
    model.eval()  # no code-recovery term: the two ELBOs are the same bound
    guide = model.guide
    losses = []
    for elbo in (infer.Trace_ELBO(), infer.TraceEnum_ELBO(max_plate_nesting=1)):
        pyro.set_rng_seed(0)
        with torch.no_grad():
            losses.append(elbo.loss(model.model, guide, batch))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.fixture(scope="module")
def trained():
    out = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = zoo.create("cdev", steps=700, **SMALL)
        data = model.default_data(seed)
        train, test = holdout_split(data, 0.1, seed)
        fit(model, model.guide, train, config=model.config, seed=seed, progress=False)
        out[seed] = (model, test)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_trained_bits_are_recovered_and_map_sparsely_onto_true_factors(trained, seed):
    model, test = trained[seed]
    assert model.code_accuracy() > 0.9  # chance 0.5
    effects = [
        model.explore(j, num_draws=200, reference=test["x"]) for j in range(model.config.num_codes)
    ]
    scores = exploration_scores(effects)
    assert scores["factors_found"] >= 2, scores  # of the 3 true factors
    assert scores["max_bits_per_factor"] <= 2, scores
    assert scores["nuisance_flags_in_support"] == 0, scores
    assert scores["max_nuisance_effect"] < 0.5, scores


def test_an_ignored_bit_has_no_effect(trained):
    model, test = trained[0]
    with torch.no_grad():  # cut bit 0 out of the decoder's first layer
        model.decoder[0].weight[:, 0] = 0.0
    r = model.explore(0, num_draws=100, reference=test["x"])
    assert not r.flags.any()
    assert np.allclose(r.ate, 0.0)


def test_the_code_recovery_term_is_what_makes_bits_readable():
    """Without the InfoGAN term nothing forces the decoder to use the bits distinguishably;
    with it Q reads them back (same seed, same budget)."""
    acc = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = zoo.create("cdev", steps=150, info_weight=weight, **{**SMALL, "num_rows": 500})
        fit(model, model.guide, model.default_data(0), config=model.config, seed=0, progress=False)
        acc[weight] = model.code_accuracy()
    assert acc[1.0] > 0.9
    assert acc[1.0] - acc[0.0] > 0.1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_codes": 9}, "num_codes"),
        ({"num_codes": 0}, "num_codes"),
        ({"p_code": 1.0}, "p_code"),
        ({"info_weight": -1.0}, "info_weight"),
        ({"obs_scale": 0.0}, "obs_scale"),
        ({"hidden": ()}, "hidden"),
        ({"colour": 1}, "unknown config key"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        zoo.create("cdev", **overrides)


def test_bad_data_and_bits_are_refused():
    model = zoo.create("cdev", **zoo.get("cdev").tiny)
    x = model.default_data(0)["x"]
    with pytest.raises(DataError):
        model.validate({"x": x[:, :100]})
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError):
        model.validate({"x": bad})
    with pytest.raises(ValueError, match="bit must be"):
        model.explore(5)
