"""collapse_cvae / collapse_hvae (paper 17): shapes, site match, guide and prior swaps,
recovery of the regression part of a linear CVAE, the paper's check (the collapse detector
agrees with the linear theory over a correlation sweep and over learnable vs fixed encoder
variance), the per-level collapse diagnostic on a non-linear model, and bad input."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import guides
import zoo
from guides.encoders import GaussianEncoder
from inference.data import DataError, full_batch
from inference.diagnostics.collapse import collapse_table, latent_activity
from inference.svi import fit
from tests.sites import latent_sites, traces
from zoo.models.collapse import (
    correlated_pairs,
    cvae_predicted_collapse,
    hvae_predicted_active,
    residual_singular_values,
)

N = 2000  # rows in the trained checks (the default is 5000)
STEPS = 500


def _fit(model, data, steps, elbo):
    pyro.set_rng_seed(0)
    return fit(
        model,
        model.guide,
        data,
        steps=steps,
        batch_size=500,
        lr=2e-2,
        elbo=elbo,
        progress=False,
        validate=False,
    )


@pytest.fixture(scope="module")
def cvae_fits():
    """Linear CVAEs trained on data with x-y correlation rho: {rho: (model, data)}."""
    fits = {}
    for rho in (0.0, 0.6, 0.9):
        model = zoo.create("collapse_cvae", rho=rho, num_rows=N)
        data = model.default_data()
        _fit(model, data, STEPS, "meanfield")
        fits[rho] = (model, data)
    return fits


def test_trace_shapes_and_site_match():
    cvae = zoo.create("collapse_cvae", latent_dim=3)
    batch = full_batch({k: v[:16] for k, v in cvae.default_data().items()})
    model_trace, guide_trace = traces(cvae, cvae.guide, batch)
    assert latent_sites(model_trace) == latent_sites(guide_trace) == {"z"}
    assert model_trace.nodes["z"]["value"].shape == (16, 3)
    assert model_trace.nodes["y"]["value"].shape == (16, 8) and "x" not in model_trace.nodes
    # the KL weight scales the latent site in the model and in the guide alike
    beta = zoo.create("collapse_cvae", beta=2.5)
    model_trace, guide_trace = traces(beta, beta.guide, batch)
    assert model_trace.nodes["z"]["scale"] == guide_trace.nodes["z"]["scale"] == 2.5

    hvae = zoo.create("collapse_hvae")
    batch = full_batch({"x": hvae.default_data()["x"][:16]})
    model_trace, guide_trace = traces(hvae, hvae.guide, batch)
    assert latent_sites(model_trace) == latent_sites(guide_trace) == {"z1", "z2"}
    assert model_trace.nodes["z1"]["value"].shape == (16, 6)
    assert model_trace.nodes["z2"]["value"].shape == (16, 4)
    assert guide_trace.nodes["z2"]["scale"] == 2.0 and guide_trace.nodes["z1"]["scale"] == 1.0


@pytest.mark.parametrize("kind", ["normal", "delta"])
def test_guide_and_encoder_swap(kind):
    model = zoo.create("collapse_cvae")
    data = {k: v[:256] for k, v in model.default_data().items()}
    encoder = GaussianEncoder(16, 6, (8,), scale="fixed", init_scale=0.7)
    guide = guides.build(kind, model, encoder=encoder)
    assert guide.encoder is encoder and model.encoder is not encoder  # the guide owns it
    result = fit(model, guide, data, steps=5, batch_size=64, elbo="trace", progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    _, guide_trace = traces(model, guide, full_batch({k: v[:4] for k, v in data.items()}))
    assert torch.allclose(guide_trace.nodes["z"]["fn"].base_dist.scale, torch.tensor(0.7))


def test_residual_singular_values_follow_rho():
    # theta^2 = (1 - rho^2) * the residual spectrum, up to sampling error
    data = correlated_pairs(20000, 0.6, seed=1)
    theta2 = residual_singular_values(data["x"], data["y"]) ** 2
    expected = 0.64 * np.array([4.0, 2.2, 1.2, 0.66, 0.36, 0.2, 0.11, 0.06])
    assert np.allclose(theta2, expected, rtol=0.08)
    assert cvae_predicted_collapse(data["x"], data["y"], latent_dim=6) == 2


def test_recovery_of_the_regression_coefficient(cvae_fits):
    """The linear CVAE's decoder weight on x recovers the true coefficient rho A (within 10%
    relative Frobenius error) while its latent carries the residual."""
    model, data = cvae_fits[0.6]
    raw, coef = correlated_pairs(N, 0.6, return_coef=True)
    assert np.array_equal(raw["x"], data["x"].numpy())  # the same seeded data
    u2 = model.decoder[0].weight.detach()[:, 6:].numpy()
    assert np.linalg.norm(u2 - coef) / np.linalg.norm(coef) < 0.10


def test_cvae_collapse_grows_with_correlation_as_predicted(cvae_fits):
    """The paper's check, linear CVAE: collapsed dims (per-dimension KL < 0.01) equal the
    closed-form count #(theta_i^2 <= beta eta_dec^2) exactly, and grow with rho."""
    counts = []
    for rho, (model, data) in cvae_fits.items():
        report = latent_activity(model, model.guide, data)["z"]
        predicted = model.predicted_collapse(data)
        assert report["collapsed_dims"] == predicted, (rho, report["kl_per_dim"])
        assert report["active_units"] == 6 - predicted
        counts.append(predicted)
    assert counts == [1, 2, 4]


def test_hvae_learnable_encoder_variance_collapses_z2():
    """The paper's check, linear HVAE (beta2 > beta1): with a learnable Sigma1 the top latent
    z2 collapses entirely; with a fixed Sigma1 it stays active on the predicted directions."""
    found = {}
    for sigma1 in ("learnable", "fixed"):
        model = zoo.create("collapse_hvae", sigma1=sigma1, num_rows=N)
        data = model.default_data()
        _fit(model, data, STEPS, "trace")
        report = latent_activity(model, model.guide, data, num_particles=4)
        found[sigma1] = {site: info["active_directions"] for site, info in report.items()}
        assert found[sigma1] == model.predicted_active(data), sigma1
    assert found["learnable"]["z2"] == 0 and found["fixed"]["z2"] == 3
    assert report["z2"]["level"] == 0 and report["z1"]["level"] == 1


def test_hvae_prediction_rules():
    x = np.random.default_rng(0).standard_normal((4000, 3)) * np.sqrt([4.0, 0.5, 0.1])
    learnable = hvae_predicted_active(x, z1_dim=3, z2_dim=3, beta1=1.0, beta2=2.0)
    assert learnable == {"z1": 2, "z2": 0}
    fixed = hvae_predicted_active(x, z1_dim=3, z2_dim=3, sigma1="fixed", sigma1_scale=0.5)
    assert fixed == {"z1": 2, "z2": 1}
    with pytest.raises(ValueError, match="unbounded"):
        hvae_predicted_active(x, z1_dim=3, z2_dim=3, beta1=2.0, beta2=1.0)


def test_collapse_detector_per_level_on_a_nonlinear_hvae():
    """Every local site gets its own row, in generative order; an encoder forced to output
    the prior is flagged as collapsed on every dimension of that level only."""
    model = zoo.create("collapse_hvae", hidden=(16,), sigma2="fixed", init_scale=1.0)
    data = {"x": model.default_data()["x"][:300]}
    with torch.no_grad():  # q(z2 | z1) = N(0, 1) = p(z2): z2 collapsed by construction
        last = model.encoder2.net[-1]
        last.weight.zero_()
        last.bias.zero_()
    report = latent_activity(model, model.guide, data, num_particles=2)
    assert report["z2"]["collapsed_dims"] == 4 and report["z2"]["active_units"] == 0
    assert report["z2"]["total_kl"] == pytest.approx(0.0, abs=1e-6)
    assert report["z1"]["collapsed_dims"] < 6 and report["z1"]["kl_kind"] == "analytic"
    rows = collapse_table(report)
    assert [r["site"] for r in rows] == ["z2", "z1"]
    assert rows[0]["dims"] == 4 and rows[1]["dims"] == 6
    with pytest.raises(ValueError, match="num_particles"):
        latent_activity(model, model.guide, data, num_particles=0)
    with pytest.raises(ValueError, match="kl_threshold"):
        latent_activity(model, model.guide, data, kl_threshold=-1.0)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("collapse_cvae", {"x": np.zeros((4, 7)), "y": np.zeros((4, 8))}, r"field 'x' has shape"),
        ("collapse_cvae", {"x": np.zeros((4, 8)), "y": np.full((4, 8), np.nan)}, "field 'y' has"),
        ("collapse_cvae", {"x": np.zeros((4, 8))}, r"missing field\(s\) \['y'\]"),
        ("collapse_hvae", {"x": np.full((3, 8), np.inf)}, "field 'x' has"),
        ("collapse_hvae", {"x": np.zeros((3, 8)), "y": np.zeros((3, 8))}, "unknown field"),
    ],
)
def test_bad_data_is_refused(name, data, message):
    with pytest.raises(DataError, match=message):
        zoo.create(name).validate(data)


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("collapse_cvae", {"encoder_scale": "diagonal"}, "encoder_scale must be one of"),
        ("collapse_cvae", {"rho": 1.0}, r"rho must be in \[0, 1\)"),
        ("collapse_cvae", {"beta": 0.0}, "beta must be a positive number"),
        ("collapse_cvae", {"latent_dim": 0}, "latent_dim must be a positive integer"),
        ("collapse_cvae", {"dataset": "mnist"}, "dataset must be one of"),
        ("collapse_hvae", {"sigma1": "free"}, "sigma1 must be one of"),
        ("collapse_hvae", {"eta_dec": -1.0}, "eta_dec must be a positive number"),
        ("collapse_hvae", {"hidden": (0,)}, "hidden sizes"),
        ("collapse_hvae", {"beta_2": 1.0}, r"unknown config key\(s\) \['beta_2'\]"),
    ],
)
def test_bad_config_is_refused(name, overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create(name, **overrides)


def test_digits_variant_shapes():
    cvae = zoo.create("collapse_cvae", dataset="digits", hidden=(16,))
    data = cvae.default_data()
    assert data["x"].shape == (1797, 32) and data["y"].shape == (1797, 32)
    assert cvae.predicted_collapse(data) is None  # the linear theory does not apply
    hvae = zoo.create("collapse_hvae", dataset="digits", hidden=(16,))
    assert hvae.default_data()["x"].shape == (1797, 64)


def test_collapse_detector_on_a_point_mass_encoder():
    """A MAP (Delta) encoder has no KL: the detector still reports activity per dimension,
    counts inactive dimensions as collapsed and says how it measured them."""
    pyro.set_rng_seed(0)
    model = zoo.create("collapse_cvae", latent_dim=3)
    data = {k: v[:200] for k, v in model.default_data().items()}

    def map_guide(batch):
        with model.data_plate(batch):
            loc, _ = model.encoder(torch.cat([batch["x"], batch["y"]], -1))
            loc = loc * torch.tensor([1.0, 0.0, 1.0])  # the middle dimension is dead
            pyro.sample("z", dist.Delta(loc, event_dim=1))

    report = latent_activity(model, map_guide, data)["z"]
    assert report["kl_kind"] == "point_mass"
    assert report["active"] == [True, False, True]
    assert report["collapsed"] == [False, True, False] and report["collapsed_dims"] == 1
    assert all(math.isnan(v) for v in report["kl_per_dim"])
