"""LM capability factors (paper 14): sites, bad input, swaps, recovery (hierarchical R^2,
the paper's check against pooled factor analysis over seeds), the Gaussian variant's ridge,
NUTS vs SVI. SBC runs in the recipe (zoo/experiments/capability_factors.py, 80 replicates)."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import guides
import zoo
from inference.data import DataError, full_batch
from inference.diagnostics import summary
from inference.posterior import posterior
from inference.svi import fit
from tests.mcmc_helpers import quiet_nuts
from tests.sites import latent_sites, traces
from zoo.models.capability_factors import (
    best_order_r2,
    hierarchical_r2,
    mix_descendants,
    pooled_fa_factors,
    simulate_capabilities,
)

SITES = ("loading_free", "edge", "mu", "log_omega", "sigma")
SVI = dict(lr=0.03, lr_schedule="exponential", lr_final_factor=0.05, progress=False)


def _means(idata):
    return {k: idata.posterior[k].values.mean((0, 1)) for k in SITES}


@pytest.fixture(scope="module")
def spec_data():
    """The spec's set: 4 domains x 150 LMs x 6 benchmarks, chain z1 -> z2 -> z3."""
    return simulate_capabilities(seed=0)


@pytest.mark.parametrize("marginal", [True, False])
def test_shapes_sites_and_finite_log_density(spec_data, marginal):
    model = zoo.create("capability_factors", marginal=marginal)
    batch = full_batch(model.validate(spec_data[1]))
    model_trace, guide_trace = traces(model, model.guide, batch)
    expected = set(SITES) | (set() if marginal else {"eps"})
    assert model.local_sites == (() if marginal else ("eps",))
    assert latent_sites(model_trace) == latent_sites(guide_trace) == expected
    assert model_trace.nodes["loading"]["value"].shape == (6, 3)
    assert model_trace.nodes["edge"]["value"].shape == (4, 3)
    assert model_trace.nodes["x"]["value"].shape == (600, 6)
    assert torch.isfinite(model_trace.log_prob_sum())
    loading = model_trace.nodes["loading"]["value"]
    assert torch.equal(torch.tril(loading[:3]), torch.eye(3))  # the normalisation


def test_bad_input_is_refused_before_training(spec_data):
    model = zoo.create("capability_factors")
    data = spec_data[1]
    with pytest.raises(DataError, match=r"field 'x' has shape \(600, 5\); expected"):
        model.validate(dict(data, x=data["x"][:, :5]))
    nan = data["x"].clone()
    nan[0, 0] = float("inf")
    with pytest.raises(DataError, match="field 'x' has 1 NaN or infinite"):
        model.validate(dict(data, x=nan))
    with pytest.raises(DataError, match="field 'domain' has values outside"):
        model.validate(dict(data, domain=data["domain"] - 1))
    for options, message in [
        (dict(num_factors=7), r"num_factors \(7\) must not exceed num_benchmarks \(6\)"),
        (dict(num_domains=0), "num_domains must be a positive integer"),
        (dict(marginal="yes"), "marginal must be true or false"),
        (dict(factors=3), r"unknown config key\(s\) \['factors'\]"),
    ]:
        with pytest.raises(zoo.ConfigError, match=message):
            zoo.create("capability_factors", **options)
    with pytest.raises(zoo.PriorError, match="'sigma' must have support positive"):
        zoo.create("capability_factors", priors={"sigma": dist.Normal(0.0, 1.0)})


PAPER_STEPS = 1500


def _fit_default(data, steps=PAPER_STEPS):
    """The identifiable default (Laplace noise as per-row latents) by SVI."""
    model = zoo.create("capability_factors")
    guide = guides.build("normal", model)
    fit(model, guide, data, steps=steps, seed=0, **SVI)
    return model, guide


@pytest.fixture(scope="module")
def svi_fit(spec_data):
    return _fit_default(spec_data[1])


def test_recovers_each_domains_moments(spec_data, svi_fit):
    """Recovery of what the data identify: each domain's mean and covariance of the scores
    against the simulation's true ones, within 5 sampling sds of a 150-row estimate (Gaussian
    formula, widened by sqrt(5/2) for the Laplace noise's fourth moment)."""
    truth, data = spec_data
    model, guide = svi_fit
    post = posterior(model, data, guide=guide, num_draws=500).posterior
    mixing = np.linalg.inv(np.eye(3) - truth["B"])  # (K, d0, d0)
    g_mix = truth["loading"] @ mixing
    mean = (g_mix @ truth["mu"][..., None])[..., 0]
    root = g_mix * truth["omega"][:, None, :]
    cov = root @ root.transpose(0, 2, 1) + 0.05**2 * np.eye(6)
    var = np.diagonal(cov, axis1=1, axis2=2)
    mean_sd = np.sqrt(var / 150)
    cov_sd = np.sqrt(np.sqrt(5 / 2) ** 2 * (var[:, :, None] * var[:, None, :] + cov**2) / 150)
    est_mean = post["domain_mean"].values.mean((0, 1))
    est_cov = post["domain_cov"].values.mean((0, 1))
    assert (np.abs(est_mean - mean) < 5 * mean_sd).all(), np.abs(est_mean - mean) / mean_sd
    assert (np.abs(est_cov - cov) < 5 * cov_sd).all(), np.abs(est_cov - cov) / cov_sd


PAPER_SEEDS = (0, 1, 2)


def test_papers_check_holds_over_seeds(spec_data, svi_fit):
    """The paper's check on three simulated leaderboards (seeds 0-2): the identifiable
    default recovers every capability (hierarchical R^2, true z_j on estimated z_1..z_j)
    with a median over seeds above 0.9 for z2 and z3 and above 0.6 for z1, and beats
    pooled factor analysis (in its best factor order) on z1 in the median. The
    identification is weak at this size (the Laplace noise separates the capabilities by
    a few nats per leaderboard), so single seeds can miss on z1: the recipe reports every
    seed (results/capability_factors.md). A model that does not separate the capabilities
    (the pooled fit; a Gaussian fit lands at a prior-chosen point of its ridge) misses the
    z1 bound on most seeds."""
    model_r2, pooled_r2 = [], []
    for seed in PAPER_SEEDS:
        truth, data = spec_data if seed == 0 else simulate_capabilities(seed=seed)
        model, guide = svi_fit if seed == 0 else _fit_default(data)
        median = guide.median(full_batch(model.validate(data)))
        model_r2.append(hierarchical_r2(truth["z"], model.factor_scores(median, data)))
        pooled_r2.append(best_order_r2(truth["z"], pooled_fa_factors(data["x"].numpy(), 3)))
    model_r2, pooled_r2 = np.median(model_r2, 0), np.median(pooled_r2, 0)
    assert model_r2[0] > 0.6 and (model_r2[1:] > 0.9).all(), model_r2
    assert model_r2[0] > pooled_r2[0], (model_r2, pooled_r2)


def test_guide_swap_and_prior_swap(spec_data):
    data = spec_data[1]
    mus = {}
    for kind, priors in (("lowrank", None), ("normal", {"mu": dist.Normal(5.0, 0.01)})):
        model = zoo.create("capability_factors", priors=priors)
        guide = guides.build(kind, model)
        result = fit(model, guide, data, steps=300, seed=0, lr=0.1, progress=False)
        assert math.isfinite(result.final_loss)
        mus[kind] = posterior(model, data, guide=guide, num_draws=200).posterior["mu"].values
    # the data's domain means lie within +-3; Normal(5, 0.01) overrules them
    assert np.abs(mus["lowrank"].mean((0, 1))).max() < 3.0, mus["lowrank"].mean((0, 1))
    assert np.abs(mus["normal"].mean((0, 1)) - 5.0).max() < 0.2, mus["normal"].mean((0, 1))


def test_default_trains_on_minibatches(spec_data):
    """The default's guide for eps is a function of the globals (no per-row parameters),
    so it follows any subsample of rows."""
    model = zoo.create("capability_factors")
    result = fit(model, model.guide, spec_data[1], steps=150, batch_size=100, seed=0, **SVI)
    assert all(math.isfinite(v) for v in result.losses)
    assert np.mean(result.losses[-20:]) < np.mean(result.losses[:20])


SMALL = dict(num_domains=3, num_benchmarks=4, num_factors=2)


def test_gaussian_marginal_is_identified_only_up_to_descendant_mixing(spec_data):
    """z' = N z with N unit upper triangular (z_j mixed with its descendants) gives other
    parameters with exactly the same likelihood: the Gaussian variant's posterior has a
    ridge of d0 (d0 - 1) / 2 directions that only the prior shapes."""
    model = zoo.create("capability_factors", marginal=True)
    truth, data = spec_data
    data = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
    generator = torch.Generator().manual_seed(0)
    params = {
        "loading_free": torch.randn(model.num_free, generator=generator, dtype=torch.float64),
        "edge": 0.5 * torch.randn(4, 3, generator=generator, dtype=torch.float64),
        "mu": torch.randn(4, 3, generator=generator, dtype=torch.float64),
        "log_omega": 0.3 * torch.randn(4, 3, generator=generator, dtype=torch.float64),
        "sigma": torch.tensor(0.1, dtype=torch.float64),
    }
    upper = torch.eye(3, dtype=torch.float64)
    upper[0, 1], upper[0, 2], upper[1, 2] = 0.7, 0.3, -0.4
    other = mix_descendants(params, upper)

    def log_lik(values):
        trace = poutine.trace(poutine.condition(model.model, data=values)).get_trace(
            full_batch(data)
        )
        site = trace.nodes["x"]
        return site["fn"].log_prob(site["value"]).sum()

    assert max(float((other[k] - params[k]).abs().max()) for k in SITES) > 0.5
    assert torch.isclose(log_lik(other), log_lik(params), rtol=1e-9, atol=1e-6)
    with pytest.raises(ValueError, match="unit upper triangular"):
        mix_descendants(params, 2 * torch.eye(3))


IDENTIFIED = ("domain_mean", "domain_cov", "sigma")


def test_nuts_and_svi_agree_on_what_the_data_identify():
    """The Gaussian variant (the one NUTS can sample: no per-row latents). A small design
    (3 domains x 30 LMs, 4 benchmarks, 2 capabilities, noise 0.3). The
    raw parameters lie on the prior-shaped ridge above (NUTS mixes slowly along it), so
    the comparison is on the identified functionals: each domain's mean and covariance of
    the scores, and sigma. Measured: NUTS bulk ESS 112-200 of 200 draws, SVI means within
    0.1 NUTS sd, SVI sds 0.96-1.13 of NUTS's."""
    model = zoo.create("capability_factors", marginal=True, **SMALL)
    _, data = simulate_capabilities(
        num_domains=3, per_domain=30, num_benchmarks=4, num_factors=2, noise=0.3, seed=1
    )
    data = model.validate(data)
    mcmc = quiet_nuts(
        model,
        data,
        chains=1,
        warmup=200,
        draws=200,
        seed=0,
        max_tree_depth=7,
        dense_mass=True,
        progress=False,
    )
    idata = posterior(model, data, mcmc=mcmc)
    assert int(idata.sample_stats["diverging"].sum()) == 0
    table = summary(idata, var_names=list(IDENTIFIED))
    assert (table["ess_bulk"] >= 50).all(), table
    guide = guides.build("normal", model)
    fit(model, guide, data, steps=3000, seed=0, **dict(SVI, lr=0.02, lr_final_factor=0.1))
    svi = posterior(model, data, guide=guide, num_draws=2000).posterior
    for name in IDENTIFIED:
        mc = idata.posterior[name].values.reshape(200, -1)
        vi = svi[name].values.reshape(2000, -1)
        varies = mc.std(0) > 1e-6  # the covariance's fixed zeros (none here) would be skipped
        # means within 0.5 NUTS posterior sd + 3 Monte Carlo standard errors (ESS >= 50)
        tol = 0.5 * mc.std(0) + 3 * mc.std(0) / math.sqrt(50)
        close = np.abs(vi.mean(0) - mc.mean(0)) < tol
        assert close[varies].all(), (name, vi.mean(0), mc.mean(0))
        ratio = vi.std(0)[varies] / mc.std(0)[varies]
        assert 0.7 < np.median(ratio) < 1.4, (name, ratio)


def test_anchored_model_is_the_defaults_posterior_in_other_coordinates():
    """anchored_model's joint density equals the default's at the same point, less the
    Jacobian sum_i sum_j log w_kj of eps -> anchor noise; its draws map back to eps."""
    from zoo.models.capability_factors import simulate_capabilities, true_site_values

    model = zoo.create("capability_factors", num_factors=2, per_domain=10)
    data = model.default_data()
    batch = full_batch(data)
    truth, _ = simulate_capabilities(num_factors=2, per_domain=10, seed=0)  # data's truth
    values = {k: v.float() for k, v in true_site_values(truth).items()}
    noise = 0.05 * torch.randn(len(data["x"]), 2, generator=torch.Generator().manual_seed(0))
    anchored = values | {"anchor_noise": noise}
    draws = {k: v.numpy()[None, None] for k, v in anchored.items()}  # (chain, draw, ...)
    back = model.eps_from_anchor_noise(draws, data)
    assert set(back) == {*SITES, "eps"}
    eps = torch.as_tensor(back["eps"][0, 0])

    def joint(fn, at):
        return poutine.trace(poutine.condition(fn, at)).get_trace(batch).log_prob_sum()

    default = joint(model.model, values | {"eps": eps})
    jacobian = values["log_omega"][data["domain"]].sum()
    assert abs(default) < 1e4  # a point near the truth, where a small error shows
    torch.testing.assert_close(
        joint(model.anchored_model, anchored), default - jacobian, rtol=0, atol=1e-2
    )
    # the eps of another anchor noise is another point of the default model
    other = model.eps_from_anchor_noise(
        draws | {"anchor_noise": draws["anchor_noise"] + 0.05}, data
    )
    assert not np.allclose(other["eps"], back["eps"], atol=1e-2)
    # NUTS (zoo train --engine nuts, reference posteriors) samples it, and its draws come
    # back as the model's own sites; the Gaussian variant has no per-row latent to move
    assert model.nuts_target() == model.anchored_model
    assert np.array_equal(model.from_nuts_draws(draws, data)["eps"], back["eps"])
    marginal = zoo.create("capability_factors", num_factors=2, per_domain=10, marginal=True)
    assert marginal.nuts_target() is marginal
    with pytest.raises(zoo.ConfigError, match="marginal=false"):
        poutine.trace(zoo.create("capability_factors", marginal=True).anchored_model).get_trace(
            batch
        )
