"""Unsupervised pretraining (paper 8): factor-model and mixture instances.

Exact marginals against explicit latents, enumeration against summation, NUTS against SVI,
a powered SBC, recovery of known truth, the paper's pretraining-vs-supervised check, bad
input.
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import guides
import zoo
from inference.data import DataError, full_batch
from inference.diagnostics import summary
from inference.mcmc import nuts
from inference.posterior import draw_latents, posterior
from inference.svi import fit
from tests.sites import latent_sites, traces
from zoo.evidence.calibration import sbc_figures
from zoo.models.pretraining import (
    BayesianRegression,
    factor_features,
    least_squares,
    ppca_mle,
    principal_angles,
    ridge_baseline,
)

SMALL_FACTOR = dict(input_dim=4, latent_dim=1, num_unlabeled=200, num_labeled=1, num_test=1)
SMALL_MIXTURE = dict(input_dim=2, num_components=2, num_unlabeled=200, num_labeled=1, num_test=1)


def _quiet_nuts(model, data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nuts(model, data, progress=False, **kwargs)


# ----- structure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, local",
    [
        ("pretraining_factor", {}, set()),
        ("pretraining_factor", {"marginalize": False}, {"z"}),
        ("pretraining_mixture", {}, set()),
    ],
)
def test_sites_shapes_and_finite_elbo(name, options, local):
    model = zoo.create(name, num_unlabeled=40, num_labeled=5, num_test=5, **options)
    data = model.default_data(0)
    assert data["x"].shape == (50, model.config.input_dim)
    assert sorted(data["role"].unique().tolist()) == [0, 1, 2]
    batch = full_batch(data)
    model_trace, guide_trace = traces(model, model.guide, batch)
    assert latent_sites(guide_trace) == latent_sites(model_trace)
    assert local <= latent_sites(model_trace)
    loss = Trace_ELBO().loss(model, model.guide, batch)
    assert math.isfinite(loss)


def test_factor_loadings_are_lower_triangular_with_positive_diagonal():
    model = zoo.create("pretraining_factor", input_dim=5, latent_dim=3)
    w = model.loadings(torch.randn(model.num_free), torch.tensor([0.5, 1.0, 2.0]))
    assert w.shape == (5, 3)
    assert torch.equal(torch.diagonal(w[:3]), torch.tensor([0.5, 1.0, 2.0]))
    assert torch.all(torch.triu(w[:3], diagonal=1) == 0)
    batched = model.loadings(torch.randn(4, 1, model.num_free), torch.rand(4, 1, 3))
    assert batched.shape == (4, 1, 5, 3)


def test_exact_marginal_equals_the_elbo_of_the_exact_posterior():
    """With z as a site, the ELBO under the exact Gaussian posterior q(z | x) equals the
    marginal log likelihood of the z-integrated model for every draw of z (to 1e-3)."""
    options = dict(input_dim=5, latent_dim=2, num_unlabeled=30, num_labeled=1, num_test=1)
    exact = zoo.create("pretraining_factor", **options)
    explicit = zoo.create("pretraining_factor", marginalize=False, **options)
    truth, data = exact.simulate(3)
    batch = full_batch(data)
    globals_ = {k: truth[k] for k in ("W_free", "W_diag", "sigma")}
    w, sigma = truth["W"], truth["sigma"]
    precision = w.T @ w + sigma**2 * torch.eye(2)
    post_cov = sigma**2 * torch.linalg.inv(precision)
    post_loc = torch.linalg.solve(precision, w.T @ data["x"].T).T

    def exact_guide(batch):
        with explicit.data_plate(batch):
            pyro.sample("z", dist.MultivariateNormal(post_loc, post_cov))

    conditioned = poutine.condition(explicit.model, data=globals_)
    with torch.no_grad():
        for _ in range(3):
            trace_q = poutine.trace(exact_guide).get_trace(batch)
            trace_p = poutine.trace(poutine.replay(conditioned, trace=trace_q)).get_trace(batch)
            elbo = trace_p.log_prob_sum(lambda n, s: n in ("z", "x")) - trace_q.log_prob_sum()
            marg = poutine.trace(poutine.condition(exact.model, data=globals_)).get_trace(batch)
            log_lik = marg.nodes["x"]["fn"].log_prob(data["x"]).sum()
            assert torch.allclose(elbo, log_lik, rtol=0, atol=1e-3 * abs(float(log_lik)))


def test_enumerated_mixture_matches_the_summed_mixture():
    """TraceEnum_ELBO on the model with c as a site equals Trace_ELBO on the model with c
    summed out (MixtureSameFamily), under the same point-mass guide: both are exact."""
    model = zoo.create("pretraining_mixture", **SMALL_MIXTURE)
    truth, data = model.simulate(0)
    batch = full_batch(data)
    # (TraceEnum_ELBO computes only a loss it can differentiate)
    values = {k: truth[k].clone().requires_grad_() for k in ("weights", "loc_first", "loc_rest")}

    def point_guide(batch):
        for name, value in values.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    with torch.no_grad():
        summed = Trace_ELBO().loss(model.model, point_guide, batch)
    enum = (
        TraceEnum_ELBO(max_plate_nesting=1)
        .differentiable_loss(model.enumerated_model, point_guide, batch)
        .detach()
    )
    assert abs(float(enum) - summed) < 1e-4 * abs(summed)


def test_infer_discrete_recovers_assignments():
    model = zoo.create("pretraining_mixture", **SMALL_MIXTURE)
    truth, data, extras = model.simulate_with_extras(0)
    values = {k: truth[k] for k in ("weights", "loc_first", "loc_rest")}

    class Fixed(torch.nn.Module):
        def forward(self, batch):
            for name, value in values.items():
                pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    assigned = model.assignments(Fixed(), data)
    resp = torch.as_tensor(model_features(model, data, truth), dtype=torch.float32)
    assert torch.equal(assigned, resp.argmax(-1))  # MAP assignment = argmax responsibility
    # its accuracy against the true components is the Bayes rate, mean max responsibility,
    # within 3 binomial standard errors
    accuracy = (assigned == extras["c"]).float().mean()
    expected = resp.max(-1).values.mean()
    se = math.sqrt(float(expected * (1 - expected)) / len(assigned))
    assert abs(float(accuracy - expected)) < 3 * se + 1e-6, (accuracy, expected)


def model_features(model, data, truth):
    from zoo.models.pretraining import mixture_features

    return mixture_features(
        data["x"].numpy().astype(float), truth["locs"].numpy(), truth["weights"].numpy()
    )


# ----- swaps -------------------------------------------------------------------------------


def test_guide_swap_and_prior_swap():
    model = zoo.create("pretraining_factor", priors={"sigma": dist.HalfNormal(1.0)}, **SMALL_FACTOR)
    data = model.default_data(0)
    trace = poutine.trace(model).get_trace(full_batch(data))
    assert isinstance(trace.nodes["sigma"]["fn"], dist.HalfNormal)
    guide = guides.build("lowrank", model, rank=2)
    result = fit(model, guide, data, steps=50, lr=0.02, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    with pytest.raises(zoo.PriorError, match="site 'sigma' must have support positive"):
        zoo.create("pretraining_factor", priors={"sigma": dist.Normal(0.0, 1.0)})
    with pytest.raises(zoo.PriorError, match="site 'loc_first' must have support"):
        zoo.create(
            "pretraining_mixture",
            priors={"loc_first": dist.Normal(torch.zeros(4), 1.0).to_event(1)},
        )


# ----- recovery, NUTS vs SVI, SBC ------------------------------------------------------------


def test_map_recovers_the_true_subspace_and_the_closed_form_mle():
    """MAP by SVI (delta guide) on 4000 rows from a known factor model: the largest
    principal angle to the true loadings' span is under 10 degrees, to the closed-form PPCA
    MLE under 3 degrees; sigma within 5% of the truth."""
    model = zoo.create(
        "pretraining_factor",
        input_dim=10,
        latent_dim=2,
        num_unlabeled=4000,
        num_labeled=1,
        num_test=1,
    )
    truth, data = model.simulate(7)
    guide = guides.build("delta", model)
    fit(model, guide, data, steps=600, lr=0.03, batch_size=1000, progress=False)
    w, sigma = model.point_estimate(guide, data)
    w_mle, sigma_mle = ppca_mle(data["x"].numpy().astype(float), 2)
    assert np.degrees(principal_angles(w, truth["W"].numpy()).max()) < 10
    assert np.degrees(principal_angles(w, w_mle).max()) < 3
    assert abs(sigma - float(truth["sigma"])) < 0.05 * float(truth["sigma"])


def test_nuts_starts_at_the_svi_point():
    """The chains' start (``nuts_init``) is an SVI fit of the exact-marginal model: its
    loadings span the closed-form MLE's to within 5 degrees; NUTS adapts a dense mass
    matrix. The z-as-a-site variant has neither."""
    options = dict(input_dim=10, latent_dim=2, num_unlabeled=2000, num_labeled=1, num_test=1)
    model = zoo.create("pretraining_factor", **options)
    _, data = model.simulate(7)
    start = model.nuts_init(data)
    assert set(start) >= {"W_free", "W_diag", "sigma"}
    w = model.loadings(start["W_free"], start["W_diag"]).numpy()
    w_mle, sigma_mle = ppca_mle(data["x"].numpy().astype(float), 2)
    assert np.degrees(principal_angles(w, w_mle).max()) < 5
    assert abs(float(start["sigma"]) - sigma_mle) < 0.05 * sigma_mle
    assert model.nuts_options == {"dense_mass": True}  # correlated loadings
    variant = zoo.create("pretraining_factor", marginalize=False, **options)
    assert variant.nuts_init(data) is None and variant.nuts_options == {}


@pytest.mark.parametrize(
    "name, options, kind",
    [("pretraining_factor", SMALL_FACTOR, "mvn"), ("pretraining_mixture", SMALL_MIXTURE, "mvn")],
)
def test_nuts_and_svi_agree_on_the_globals(name, options, kind):
    """Posterior means of every global (scalar component) from a full-rank Gaussian guide
    lie within 1 NUTS posterior sd (+0.02) of NUTS's (150 draws: Monte Carlo error about
    0.1 sd); no more than 2% divergent NUTS draws."""
    model = zoo.create(name, **options)
    truth, data = model.simulate(1)
    data = model.validate(data)
    mcmc = _quiet_nuts(model, data, chains=1, warmup=100, draws=150, seed=0)
    divergent = sum(len(v) for v in mcmc.diagnostics()["divergences"].values())
    assert divergent <= 3
    guide = guides.build(kind, model)
    fit(model, guide, data, steps=1500, lr=0.02, progress=False)
    svi = draw_latents(model, guide, data, 1000)
    for site, draws in mcmc.get_samples().items():
        mean, sd = draws.mean(0), draws.std(0)
        gap = (svi[site].mean(0) - mean).abs()
        assert torch.all(gap < sd + 0.02), (site, gap, sd)


def prior_resampling_draws(model, data, num_prior, num_draws=40, seed=0):
    """Posterior draws of the globals by importance resampling from the prior with the
    model's own likelihood (exact as num_prior grows; the effective sample size is checked):
    cheap enough for SBC in a test."""
    pyro.set_rng_seed(seed)
    batch = full_batch(data)
    with torch.no_grad(), pyro.plate("prior_draws", num_prior, dim=-2):
        trace = poutine.trace(model.model).get_trace(batch)
    trace.compute_log_prob()
    weights = torch.softmax(trace.nodes["x"]["log_prob"].sum(-1), 0)
    assert 1.0 / float((weights**2).sum()) > 100, "too few effective prior draws"
    pick = torch.multinomial(weights, num_draws, replacement=True)
    return {k: trace.nodes[k]["value"].squeeze(1)[pick] for k in latent_sites(trace)}


def test_small_sbc_of_the_factor_model():
    """SBC (100 replicates, 40 draws each) of the factor model on 10 rows, with draws by
    prior importance resampling: checks that simulate() and model() tell the same
    generative story. 100 replicates give the test >= 80% power against a posterior 1.5x
    too narrow, 1.5x too wide or shifted by half an sd (80 would leave 'too wide' at 79%),
    and the same draws narrowed 1.5x about their mean are rejected on the same replicates.
    The tutorial runs SBC with NUTS, for the mixture too (whose posterior is too narrow for
    prior draws)."""
    model = zoo.create(
        "pretraining_factor",
        input_dim=3,
        latent_dim=1,
        num_unlabeled=8,
        num_labeled=1,
        num_test=1,
    )

    figures, result = sbc_figures(
        model.simulate,
        lambda data, seed: prior_resampling_draws(model, data, num_prior=20_000, seed=seed),
        num_replicates=100,
        params=sorted(set(model.default_priors())),
        seed=0,
    )
    print(result.describe())
    assert result.num_replicates == 100 and result.num_draws == 40
    assert not result.underpowered, result.describe()
    assert result.passed(), result.pvalues
    assert figures["sbc/narrowed_rejected"] == 1.0, "a 1.5x too narrow posterior passed"


def test_downstream_bayesian_regression_by_nuts():
    """NUTS on the downstream regression over the pretrained features: R-hat < 1.05 and the
    posterior mean of beta within 0.3 of the true regression weights (rotation fixed)."""
    model = zoo.create(
        "pretraining_factor",
        input_dim=10,
        latent_dim=2,
        num_unlabeled=2000,
        num_labeled=100,
        num_test=1,
    )
    truth, data, extras = model.simulate_with_extras(2)
    x = data["x"].numpy().astype(float)
    role = data["role"].numpy()
    w, sigma = truth["W"].numpy().astype(float), float(truth["sigma"])
    features = factor_features(x[role == 1], w, sigma)
    regression = BayesianRegression(num_features=2)
    reg_data = regression.validate({"f": features, "y": data["y"].numpy()[role == 1]})
    mcmc = _quiet_nuts(regression, reg_data, chains=2, warmup=100, draws=100, seed=0)
    idata = posterior(regression, reg_data, mcmc=mcmc)
    table = summary(idata, var_names=["beta", "tau"])
    assert (table["r_hat"] < 1.05).all()
    beta = idata.posterior["beta"].values.reshape(-1, 2).mean(0)
    assert np.abs(beta - extras["beta"].numpy()).max() < 0.3


# ----- the paper's check -----------------------------------------------------------------------


def _excess_risks(model, seed, m, n):
    design = zoo.create(model.name, model.config, num_unlabeled=m, num_labeled=n, num_test=2000)
    truth, data, extras = design.simulate_with_extras(seed)
    x, y = data["x"].numpy().astype(float), data["y"].numpy().astype(float)
    role = data["role"].numpy()
    test = role == 2
    oracle = factor_features(x[test], truth["W"].numpy(), float(truth["sigma"]))
    bayes = np.mean((oracle @ extras["beta"].numpy() - y[test]) ** 2)
    w, sigma = ppca_mle(x[role == 0], model.config.latent_dim)
    f = factor_features(x, w, sigma)
    pre = least_squares(f[role == 1], y[role == 1])
    sup = ridge_baseline(x[role == 1], y[role == 1])
    return (
        np.mean((pre(f[test]) - y[test]) ** 2) - bayes,
        np.mean((sup(x[test]) - y[test]) ** 2) - bayes,
    )


def test_paper_check_pretraining_beats_supervised_and_improves_with_m():
    """d = 50, r = 3, tau = 0.5 (the spec's setting, fewer repeats): at n = 20 labeled rows
    the mean excess risk of MLE pretraining + least squares is under half that of ridge on
    the raw inputs, and it falls from m = 200 to m = 5000 unlabeled rows."""
    model = zoo.create("pretraining_factor")
    seeds = range(12)
    risks = {m: np.array([_excess_risks(model, s, m, 20) for s in seeds]) for m in (200, 5000)}
    pre_big, sup = risks[5000].mean(0)
    assert pre_big < 0.5 * sup, (pre_big, sup)
    assert risks[5000][:, 0].mean() < risks[200][:, 0].mean()


def test_evaluate_reports_the_headline_metrics():
    model = zoo.create("pretraining_factor", num_unlabeled=1000, num_test=300)
    data = model.default_data(0)
    guide = guides.build("delta", model)
    fit(model, guide, data, steps=300, lr=0.03, batch_size=500, progress=False)
    out = model.evaluate(guide, data)
    assert out["num_labeled"] == 20 and out["num_test"] == 300
    assert out["pretrained_test_mse"] < out["supervised_test_mse"]
    assert out["max_angle_to_mle_deg"] < 15


# ----- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(x=d["x"][:, :3]), r"field 'x' has shape \(\d+, 3\); expected"),
        (lambda d: d["x"].__setitem__((0, 0), float("nan")), "field 'x' has 1 NaN"),
        (lambda d: d["role"].__setitem__(0, 3), "field 'role' has values outside"),
        (lambda d: d.pop("y"), r"missing field\(s\) \['y'\]"),
    ],
)
def test_bad_data_is_refused(change, message):
    model = zoo.create("pretraining_factor", **SMALL_FACTOR)
    data = {k: v.clone() for k, v in model.default_data(0).items()}
    change(data)
    with pytest.raises(DataError, match=message):
        model.validate(data)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("pretraining_factor", {"latent_dim": 50}, "latent_dim must be below input_dim"),
        ("pretraining_factor", {"latent_dim": 0}, "latent_dim must be a positive integer"),
        ("pretraining_factor", {"noise_scale": -1.0}, "noise_scale must be a positive number"),
        ("pretraining_factor", {"rank": 2}, r"unknown config key\(s\) \['rank'\]"),
        ("pretraining_mixture", {"num_components": 1}, "num_components must be >= 2"),
    ],
)
def test_bad_config_is_refused(name, options, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create(name, **options)
