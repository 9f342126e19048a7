"""mlvgm_mi (paper 1): shapes, site match, guide/encoder and prior swaps, bad input, the
mutual-information diagnostic (ranking and dead-group flag), a recovery test against a known
decoder, and the positive-view SimCLR experiment at toy size."""

import math

import numpy as np
import pyro
import pytest
import torch

import guides
import zoo
from inference.data import DataError, full_batch
from inference.diagnostics import latent_mi
from inference.svi import fit
from tests.linear_decoder import simulate_images, true_log_likelihood
from tests.sites import latent_sites, traces
from zoo.models.mlvgm_mi.positive_views import (
    ViewSpec,
    generated_views,
    nt_xent,
    positive_view_experiment,
)

SITES = {"z_1", "z_2", "z_3"}


@pytest.fixture(scope="module")
def digits():
    return zoo.create("mlvgm_mi").default_data()


@pytest.fixture(scope="module")
def trained(digits):
    """The default model fitted briefly (1200 steps) on the digits."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    model = zoo.create("mlvgm_mi")
    fit(model, model.guide, digits, steps=1200, batch_size=128, lr=2e-3, progress=False, seed=0)
    return model


def test_trace_shapes(digits):
    model = zoo.create("mlvgm_mi", levels=3, latent_dim=2, hidden=16)
    batch = full_batch({"x": digits["x"][:16]})
    model_trace, guide_trace = traces(model, model.guide, batch)
    for site in SITES:
        assert guide_trace.nodes[site]["value"].shape == (16, 2)
        assert torch.equal(model_trace.nodes[site]["value"], guide_trace.nodes[site]["value"])
    assert model_trace.nodes["x"]["value"].shape == (16, 64)
    assert model_trace.nodes["x"]["is_observed"]
    model.eval()
    assert model.generate([torch.zeros(5, 2)] * 3).shape == (5, 64)


def test_sites_match_and_follow_levels(digits):
    model = zoo.create("mlvgm_mi", levels=4, hidden=16)
    model_trace, guide_trace = traces(model, model.guide, full_batch({"x": digits["x"][:8]}))
    expected = {f"z_{level}" for level in range(1, 5)}
    assert latent_sites(guide_trace) == latent_sites(model_trace) == expected
    assert set(model.local_sites) == expected


@pytest.mark.parametrize("kind", ["normal", "delta"])
def test_guide_and_encoder_swap_train(kind, digits):
    model = zoo.create("mlvgm_mi", latent_dim=2, hidden=16)
    encoder = guides.NormalEncoder(64, 3 * 2, (16,))
    guide = guides.build(kind, model, encoder=encoder)
    result = fit(model, guide, {"x": digits["x"][:256]}, steps=5, batch_size=64, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    trained = {id(p) for p in result.loss_fn.parameters()}
    assert all(id(p) in trained for p in encoder.parameters())
    model_trace, guide_trace = traces(model, guide, full_batch({"x": digits["x"][:4]}))
    assert latent_sites(guide_trace) == latent_sites(model_trace) == SITES


def test_dead_level_ignores_its_group():
    model = zoo.create("mlvgm_mi", dead_levels=(2,), hidden=16).eval()
    z = [torch.randn(8, 2) for _ in range(3)]
    moved = [z[0], z[1] + 5.0, z[2]]
    assert torch.equal(model.generate(z), model.generate(moved))
    moved = [z[0] + 1.0, z[1], z[2]]
    assert not torch.allclose(model.generate(z), model.generate(moved))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"levels": 1}, "levels must be >= 2"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"injection": "sum"}, "injection must be one of"),
        ({"likelihood": "gaussian"}, "likelihood must be one of"),
        ({"dead_levels": (4,)}, r"dead_levels must hold group numbers in 1..3"),
        ({"dead_levels": (1, 2, 3)}, "every latent group"),
        ({"level_dropout": 1.5}, r"level_dropout must be in \[0, 1\)"),
        ({"levles": 3}, r"unknown config key\(s\) \['levles'\]"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create("mlvgm_mi", **overrides)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((4, 63)), r"field 'x' has shape \(4, 63\); expected \('N', 64\)"),
        (np.full((4, 64), np.nan), "field 'x' has 256 NaN"),
        (np.full((4, 64), 0.5), "field 'x' has values outside its support"),
    ],
)
def test_bad_data_is_refused(x, message):
    with pytest.raises(DataError, match=message):
        zoo.create("mlvgm_mi").validate({"x": x})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sigmas": (0.5, -1.0)}, "sigmas must be a non-empty list of positive"),
        ({"sigmas": ()}, "sigmas must be a non-empty list"),
        ({"sites": ["z_9"]}, r"site\(s\) \['z_9'\] are not local latent sites"),
        ({"source": "data"}, "source must be one of"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"eval_batches": 0}, "eval_batches must be a positive integer"),
        ({"temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_latent_mi_refuses_bad_options(options, message, digits):
    model = zoo.create("mlvgm_mi", hidden=16)
    with pytest.raises(ValueError, match=message):
        latent_mi(model, model.guide, {"x": digits["x"][:32]}, steps=1, **options)


def test_view_spec_errors():
    model = zoo.create("mlvgm_mi", hidden=16)
    with pytest.raises(ValueError, match="one value per level"):
        generated_views(model, ViewSpec(sigmas=(0.5, 0.5)))
    with pytest.raises(ValueError, match=r"resample levels must be in 1..3"):
        generated_views(model, ViewSpec(resample=(0,)))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        positive_view_experiment(model, steps=0)


# ----- the paper's checks on the MI diagnostic ----------------------------------------------
# The fixture trains with level_dropout (the zoo's coarse-to-fine training, not the paper's),
# which builds a z_1-first ranking in: these tests check the diagnostic, not that ranking.
# `zoo reproduce mlvgm_mi` reports the ranking with and without level_dropout over seeds.
# Measured (1200 steps, the options below; seeds 0 / 1 of the fit): drop at sigma = 2 of
# z_1 2.7-3.2 nats, far above the other groups (0.9 and 0.02 / 0.2 and 0.4); which lower
# group keeps the leftover information varies with the seed, and the MI order then follows the
# KL order.
MI_OPTIONS = dict(sigmas=(0.5, 2.0), batch_size=128, steps=100, eval_batches=4)
DEAD_TOL = 0.1  # nats of drop at the largest sigma: latent_mi's default dead_tol


@pytest.fixture(scope="module")
def trained_mi(trained, digits):
    return latent_mi(trained, trained.guide, digits, dead_tol=DEAD_TOL, **MI_OPTIONS)


def test_mi_ranks_top_group_first_and_agrees_with_kl(trained, trained_mi, digits):
    result = trained_mi
    assert result.reference > 0.7 * math.log(128)  # identical pairs: near the ceiling log B
    # (b) the top group's curve falls fastest
    assert result.ranking[0] == "z_1", result.score
    assert result.drop["z_1"][-1] > 3 * max(result.drop["z_2"][-1], result.drop["z_3"][-1])
    # (a) I_hat decreases with sigma for the top group
    assert result.mi["z_1"][1] < result.mi["z_1"][0] - 0.5, result.mi
    # the MI ranking orders the groups as the KL of their posteriors does
    kl = trained.evaluate(trained.guide, digits)
    assert result.ranking == sorted(result.sites, key=lambda s: -kl[f"kl_{s}"]), (result, kl)
    assert trained.training, "the diagnostic restores the model's training mode"


def _with_group_1_scaled(trained, factor: float):
    """A copy of the trained model whose group-1 input weights are multiplied by factor."""
    copy = zoo.create("mlvgm_mi")
    copy.load_state_dict(trained.state_dict())
    with torch.no_grad():
        copy.decoder.first.weight.mul_(factor)
    return copy


# Measured (seed 0 fit): z_1's drop at sigma 2 is 2.7 nats as trained; scaled after training
# by 0.1 / 0.03 / 0.01 it is 0.50 / 0.34 / -0.03 nats (output change 0.30 / 0.09 / 0.03 against
# 2.0 as trained): the detector flags a group once its effect is ~1% of a live one's.
def test_mi_dead_flag_separates_a_live_group_from_one_killed_after_training(
    trained, trained_mi, digits
):
    """(c) The same detector (drop at the largest sigma < DEAD_TOL) must not flag z_1 as
    trained, and must flag it once its input weights are zeroed or shrunk to 1% after
    training. The shrunk copy still changes the image, so its estimate is not the reference
    by construction: the critic has to find that the views carry (almost) all of the anchor."""
    assert "z_1" not in trained_mi.dead and "z_1" not in trained_mi.underused
    assert trained_mi.drop["z_1"][-1] > 10 * DEAD_TOL, trained_mi.drop

    shrunk = _with_group_1_scaled(trained, 0.01)
    result = latent_mi(shrunk, trained.guide, digits, sites=["z_1"], dead_tol=DEAD_TOL,
                       **MI_OPTIONS)  # fmt: skip
    assert result.output_change["z_1"][-1] > 0.01, result.output_change
    assert "z_1" in result.dead, result.drop

    zeroed = _with_group_1_scaled(trained, 0.0)
    result = latent_mi(zeroed, trained.guide, digits, sites=["z_1"], dead_tol=DEAD_TOL,
                       **MI_OPTIONS)  # fmt: skip
    assert result.output_change["z_1"] == [0.0, 0.0]
    assert "z_1" in result.dead, result.drop


# ----- recovery: data from a known decoder that uses group 1 only ---------------------------


# Measured (fit seeds 0 and 1, 500 steps): true held-out log p(x) -33.14 nats/image, fitted
# ELBO -33.47 and -33.48 (gap 0.33); KL of the unused group 0.012 and 0.007 nats, of the used
# one 2.7-2.8. Tolerances: 1 nat for the ELBO (an untrained model is > 5 nats off), 0.1 nat of
# KL for the unused group.
ELBO_TOLERANCE = 1.0
UNUSED_KL = 0.1


def test_recovers_likelihood_and_the_unused_group():
    weight, bias, x = simulate_images(2000, seed=0)
    train, test = {"x": x[:1700]}, {"x": x[1700:]}
    truth = float(true_log_likelihood(weight, bias, test["x"]).mean())
    model = zoo.create("mlvgm_mi", levels=2, latent_dim=2, encoder_hidden=(64,))
    pyro.set_rng_seed(0)
    untrained = model.evaluate(model.guide, test)
    assert untrained["elbo_per_image"] < truth - 5 * ELBO_TOLERANCE
    fit(model, model.guide, train, steps=500, batch_size=128, lr=1e-2, progress=False, seed=0)
    pyro.set_rng_seed(0)
    metrics = model.evaluate(model.guide, test)
    assert abs(metrics["elbo_per_image"] - truth) < ELBO_TOLERANCE, (metrics, truth)
    assert metrics["kl_z_2"] < UNUSED_KL < metrics["kl_z_1"], metrics


# ----- positive views (SimCLR at toy size) ---------------------------------------------------


def test_nt_xent_prefers_matching_pairs():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1)
    assert nt_xent(a, a, 0.2) < nt_xent(a, other, 0.2)


def test_generated_views_follow_the_spec(trained):
    torch.manual_seed(0)
    x, x_view = generated_views(trained, ViewSpec(sigmas=(0.0, 0.0, 0.0), resample=()))(16)
    assert x.shape == x_view.shape == (16, 64)
    assert torch.equal(x, x_view)  # nothing perturbed: the view is the anchor
    x, x_view = generated_views(trained)(16)
    assert ((x >= 0) & (x <= 1)).all() and not torch.equal(x, x_view)
    assert trained.training, "views are drawn in eval mode and the mode is restored"


# Measured (the fixture; 150 SimCLR steps of 128; split and SimCLR seeds 0 / 1 / 2): probe
# accuracy generated 0.937 / 0.917 / 0.930, untrained 0.930 / 0.906 / 0.920 (gain 0.007 /
# 0.011 / 0.010), augmented 0.950 / 0.963 / 0.948, independent generated pairs 0.935 / 0.948 /
# 0.922. The negative control gains as much as the generated views: training on generated
# digits alone moves the probe, so the first check shows the pipeline learns from generated
# digits, not that the views' pairing helps (zoo reproduce mlvgm_mi reports both). The
# second check shows the probe can tell real positive views from unrelated ones.
VIEW_SEEDS = (0, 1, 2)
GAIN_FLOOR = 0.005


@pytest.fixture(scope="module")
def views(trained):
    return positive_view_experiment(trained, steps=150, batch_size=128, seeds=VIEW_SEEDS)


def test_generated_views_beat_an_untrained_encoder(views):
    assert set(views) == {"generated", "independent_pairs", "augmented", "random_init",
                          "raw_pixels"}  # fmt: skip
    gain = np.subtract(views["generated"], views["random_init"])
    assert (gain > 0).all() and gain.mean() > GAIN_FLOOR, views


def test_real_positive_views_beat_unrelated_pairs(views):
    margin = np.subtract(views["augmented"], views["independent_pairs"])
    assert (margin > GAIN_FLOOR).all(), views


def test_mi_from_prior_anchors_on_an_untrained_model(digits):
    model = zoo.create("mlvgm_mi", hidden=16, dead_levels=(3,))
    result = latent_mi(
        model,
        model.guide,
        {"x": digits["x"][:64]},
        source="prior",
        sigmas=(1.0,),
        batch_size=32,
        steps=5,
        eval_batches=1,
    )
    assert "z_3" in result.dead and result.drop["z_3"] == [0.0]
    assert result.output_change["z_1"][0] > 0.0
