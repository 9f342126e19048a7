"""ard_vae (paper 4): shapes, site match, finite ELBO, the closed-form q(alpha) and its
running variance estimate, guide and prior swaps, recovery of the number of relevant
dimensions of a 3-dimensional manifold at two latent sizes (the paper's check), the s^2
separation that a standard N(0, I) VAE on the same fit does not show, and bad input."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.linear_model import RidgeCV

import guides
import zoo
from inference.data import DataError, full_batch
from inference.svi import fit
from tests.sites import latent_sites, traces
from zoo.models.ard_vae import manifold_data

SMALL = {"hidden": (16,), "num_rows": 300}


@pytest.fixture(scope="module")
def small():
    model = zoo.create("ard_vae", latent_dim=5, **SMALL)
    return model, model.default_data()


def test_trace_shapes_and_site_match(small):
    model, data = small
    batch = full_batch({"x": data["x"][:16]})
    model_trace, guide_trace = traces(model, model.guide, batch)
    assert latent_sites(model_trace) == latent_sites(guide_trace) == {"alpha", "z"}
    assert model_trace.nodes["alpha"]["value"].shape == (5,)
    assert model_trace.nodes["z"]["value"].shape == (16, 5)
    assert model_trace.nodes["x"]["value"].shape == (16, 20)
    # z's prior scale is alpha^(-1/2), and both z sites carry the KL weight
    scale = model_trace.nodes["z"]["fn"].base_dist.scale
    assert torch.allclose(scale, model_trace.nodes["alpha"]["value"].rsqrt())
    weighted = zoo.create("ard_vae", kl_weight=0.5, latent_dim=5, **SMALL)
    model_trace, guide_trace = traces(weighted, weighted.guide, batch)
    assert model_trace.nodes["z"]["scale"] == guide_trace.nodes["z"]["scale"] == 0.5


def test_alpha_posterior_is_the_conjugate_closed_form_of_the_running_estimate():
    model = zoo.create("ard_vae", latent_dim=3, a0=0.5, b0=0.25, **SMALL)
    model.s2.copy_(torch.tensor([4.0, 1.0, 0.01]))
    q = model.alpha_posterior(100).base_dist
    assert torch.allclose(q.concentration, torch.full((3,), 50.5))
    assert torch.allclose(q.rate, 0.25 + 50 * torch.tensor([4.0, 1.0, 0.01]))
    # the estimate moves only in training steps, towards mean(mu^2 + sigma^2) of the batch
    data = model.default_data()
    batch = full_batch({"x": data["x"][:64]})
    before = model.s2.clone()
    with torch.no_grad():
        model.guide(batch)
    assert torch.equal(model.s2, before)
    model.guide(batch)
    loc, scale = model.encoder(batch["x"])
    target = (loc**2 + scale**2).mean(0).detach()
    m = model.config.s2_momentum
    assert torch.allclose(model.s2, (1 - m) * before + m * target, atol=1e-6)
    assert int(model.rows) == 64  # the data size N the batch came from


@pytest.mark.parametrize("kind", ["normal", "delta", "lowrank"])
def test_guide_swap_learns_alpha_by_svi(kind, small):
    model, data = small
    guide = guides.build(kind, model)
    result = fit(model, guide, data, steps=5, batch_size=64, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    model_trace, guide_trace = traces(model, guide, full_batch({"x": data["x"][:4]}))
    assert latent_sites(guide_trace) == latent_sites(model_trace) == {"alpha", "z"}


def test_prior_swap_and_the_standard_vae():
    model = zoo.create(
        "ard_vae",
        latent_dim=4,
        priors={"alpha": dist.Gamma(2.0, 2.0).expand([4]).to_event(1)},
        **SMALL,
    )
    batch = full_batch({"x": model.default_data()["x"][:4]})
    model_trace, _ = traces(model, model.guide, batch)
    assert torch.allclose(model_trace.nodes["alpha"]["fn"].base_dist.rate, torch.tensor(2.0))
    standard = zoo.create("ard_vae", prior="standard", latent_dim=4, **SMALL)
    model_trace, guide_trace = traces(standard, standard.guide, batch)
    assert latent_sites(model_trace) == latent_sites(guide_trace) == {"z"}
    assert torch.allclose(model_trace.nodes["z"]["fn"].base_dist.scale, torch.tensor(1.0))
    with pytest.raises(zoo.PriorError, match="unknown prior site 'alpha'"):
        zoo.create("ard_vae", prior="standard", priors={"alpha": dist.Gamma(1.0, 1.0)})
    with pytest.raises(zoo.PriorError, match="support"):
        zoo.create("ard_vae", priors={"alpha": dist.Normal(0.0, 1.0).expand([10]).to_event(1)})


def _fit_on_manifold(latent_dim: int, prior: str = "ard"):
    """The paper's check's fit: 1000 full steps on 2000 rows of the 3-d manifold; returns
    the model (in eval mode), its data and ``relevance`` on them."""
    model = zoo.create(
        "ard_vae",
        prior=prior,
        latent_dim=latent_dim,
        num_rows=2000,
        hidden=(32, 32),
        batch_size=500,
        lr=1e-2,
    )
    data = model.default_data(seed=0)
    pyro.set_rng_seed(0)
    fit(
        model,
        model.guide,
        data,
        steps=1000,
        batch_size=500,
        lr=1e-2,
        progress=False,
        validate=False,
    )
    model.eval()
    return model, data, model.relevance(data)


def _s2_separation(rel: dict) -> float:
    """Smallest active axis' s^2 over the largest inactive one's."""
    s2, active = np.array(rel["s2"]), np.array(rel["active"])
    return float(s2[active].min() / s2[~active].max())


@pytest.mark.parametrize("latent_dim", [8, 24])
def test_recovers_the_number_of_relevant_dimensions(latent_dim):
    """The paper's check: on a 3-dimensional curved manifold in R^20, the ARD-VAE leaves
    exactly 3 active units (Var_x mu_l > 0.01) at two latent sizes, their prior variances
    s^2 exceed every switched-off axis' by 5x or more, and the active axes linearly encode
    the true coordinates (ridge R^2 >= 0.85)."""
    model, data, rel = _fit_on_manifold(latent_dim)
    assert rel["relevant_dims"] == 3, rel["mean_variance"]
    assert _s2_separation(rel) > 5, rel["s2"]
    with torch.no_grad():
        loc, _ = model.encoder(data["x"])
    codes = loc[:, torch.as_tensor(rel["active"])].numpy()
    truth = model.true_latents(seed=0).numpy()
    assert RidgeCV().fit(codes, truth).score(codes, truth) >= 0.85


def test_the_s2_separation_is_the_ard_priors_doing():
    """The same fit with the N(0, I) prior (``prior="standard"``, everything else equal):
    a standard VAE also switches axes off on this manifold, so the active-unit count alone
    does not show the ARD prior at work (zoo reproduce ard_vae compares them at latent sizes
    8/32/64). What the ARD prior adds is the learned prior variance: the standard VAE's s^2
    stays near 1 on every axis (measured: 1.09x separation, against the ARD-VAE's 13x at
    this size), so the 5x separation asserted above fails for a VAE whose prior does not
    adapt."""
    _, _, rel = _fit_on_manifold(8, prior="standard")
    s2 = np.array(rel["s2"])
    assert _s2_separation(rel) < 2, rel["s2"]
    assert np.all(np.abs(s2 - 1) < 0.3), s2  # the N(0, I) prior holds every axis near 1


def test_manifold_data_is_seeded_and_low_dimensional():
    x, z = manifold_data(500, seed=3)
    x2, _ = manifold_data(500, seed=3)
    assert x.shape == (500, 20) and z.shape == (500, 3) and np.array_equal(x, x2)
    eig = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    assert eig[2] > 10 * eig[6]  # three dominant directions, a curved tail, then noise


@pytest.mark.parametrize(
    "data, message",
    [
        ({"x": np.zeros((4, 19))}, r"field 'x' has shape \(4, 19\)"),
        ({"x": np.full((4, 20), np.nan)}, "field 'x' has"),
        ({"x": [["a"] * 20]}, "field 'x' must be numeric"),
        ({"x": np.zeros((0, 20))}, "field 'x' is empty"),
        ({"y": np.zeros((4, 20))}, r"missing field\(s\) \['x'\]"),
    ],
)
def test_bad_data_is_refused(data, message):
    with pytest.raises(DataError, match=message):
        zoo.create("ard_vae").validate(data)


def test_digits_need_64_features():
    model = zoo.create("ard_vae", dataset="digits", **SMALL)
    assert model.default_data()["x"].shape == (1797, 64)
    with pytest.raises(DataError, match="expected"):
        model.validate({"x": np.zeros((3, 20))})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prior": "laplace"}, "prior must be one of"),
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"true_dim": 30}, r"true_dim \(30\) must not exceed data_dim"),
        ({"obs_scale": 0.0}, "obs_scale must be a positive number"),
        ({"s2_momentum": 1.5}, r"s2_momentum must be in \(0, 1\]"),
        ({"kl_weigth": 1.0}, r"unknown config key\(s\) \['kl_weigth'\]"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create("ard_vae", **overrides)
