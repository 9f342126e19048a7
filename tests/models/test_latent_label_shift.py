"""Latent label shift (paper 25): data pipeline, exact enumeration, per-point posteriors,
NUTS against SVI, SBC with its power, recovery, the paper's check against k-means, bad input."""

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
from inference.mcmc import nuts
from inference.metrics import hungarian_accuracy, match_classes
from inference.posterior import draw_latents
from inference.svi import fit
from tests.sites import latent_sites, traces
from zoo.evidence.calibration import sbc_figures
from zoo.models.latent_label_shift import kmeans_baseline, make_domains

TINY = dict(num_classes=2, num_domains=3, num_codes=4, alpha=2.0)


@pytest.fixture(scope="module")
def digits_model():
    return zoo.create("latent_label_shift")


@pytest.fixture(scope="module")
def digits_data(digits_model):
    return digits_model.default_data(0)


def _point_guide(values):
    def guide(batch):
        for name, value in values.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    return guide


def test_domains_follow_the_spec():
    raw = make_domains(0, num_domains=15, per_domain=80, alpha=0.5, max_cond=8.0)
    assert raw["x"].shape == (1200, 64) and raw["x"].min() >= 0 and raw["x"].max() <= 1
    assert np.all(np.bincount(raw["domain"]) == 80)
    assert np.linalg.cond(raw["pi"]) <= 8.0
    assert np.allclose(raw["pi"].sum(1), 1.0)
    pairs = {(d, s) for d, s in zip(raw["digit"], raw["label"], strict=True)}
    assert pairs <= {(0, 0), (6, 0), (1, 1), (7, 1), (2, 2), (5, 2), (3, 3), (8, 3), (4, 4), (9, 4)}


def test_default_data_and_sites(digits_model, digits_data):
    assert set(digits_data) == {"code", "domain", "label"}
    assert digits_data["code"].max() < 30 and digits_data["domain"].max() == 14
    model_trace, guide_trace = traces(digits_model, digits_model.guide, full_batch(digits_data))
    assert latent_sites(model_trace) == latent_sites(guide_trace) == {"pi", "phi"}
    assert model_trace.nodes["pi"]["value"].shape == (15, 5)
    assert model_trace.nodes["phi"]["value"].shape == (5, 30)
    assert math.isfinite(
        Trace_ELBO().loss(digits_model, digits_model.guide, full_batch(digits_data))
    )


def test_enumerated_model_matches_the_summed_model():
    """TraceEnum_ELBO with y enumerated equals Trace_ELBO with y summed out, to 1e-5."""
    model = zoo.create("latent_label_shift", per_domain=34, **TINY)
    truth, data = model.simulate(0)
    values = {k: truth[k].clone().requires_grad_() for k in ("pi", "phi")}
    batch = full_batch(data)
    with torch.no_grad():
        summed = Trace_ELBO().loss(model.model, _point_guide(values), batch)
    enum = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        model.enumerated_model, _point_guide(values), batch
    )
    assert abs(float(enum) - summed) < 1e-5 * abs(summed)


def test_infer_discrete_gives_the_exact_class_posterior():
    """MAP classes equal the argmax of p(y | c, d); draws (temperature 1) of one repeated
    point have frequencies within 4 binomial standard errors of p(y | c, d)."""
    model = zoo.create("latent_label_shift", per_domain=20, **TINY)
    truth, data = model.simulate(1)
    exact = model.class_posterior(truth["pi"], truth["phi"], data)
    assert torch.equal(model.decode(truth, data), exact.argmax(-1))
    repeated = {k: v[:1].expand(4000) for k, v in data.items()}
    draws = model.decode(truth, repeated, temperature=1)
    freq = float((draws == 1).float().mean())
    p = float(exact[0, 1])
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / 4000) + 1e-6


def test_guide_swap_and_prior_swap(digits_data):
    model = zoo.create("latent_label_shift", priors={"phi": dist.Dirichlet(torch.full((30,), 0.5))})
    trace = poutine.trace(model).get_trace(full_batch(digits_data))
    assert torch.allclose(trace.nodes["phi"]["fn"].base_dist.concentration, torch.tensor(0.5))
    guide = guides.build("lowrank", model, rank=4)
    result = fit(model, guide, digits_data, steps=40, lr=0.05, progress=False)
    assert all(math.isfinite(v) for v in result.losses)


def test_paper_check_beats_kmeans(digits_model, digits_data):
    """The paired-digit check: Hungarian accuracy of the topic model over DDFA codes is at
    least 0.2 above k-means (K=5) on the pixels, which splits the super-classes; the mean
    L1 error of p(y | d) is under 0.3."""
    guide = guides.build("normal", digits_model)
    fit(digits_model, guide, digits_data, steps=800, lr=0.05, progress=False)
    scores = digits_model.evaluate(guide, digits_data)
    raw = digits_model.digits_inputs(0)
    baseline = kmeans_baseline(raw["x"], raw["label"], 5)
    assert scores["accuracy"] > baseline + 0.2, (scores, baseline)
    assert scores["pi_l1"] < 0.3, scores


def test_nuts_starts_every_chain_in_one_labelling(digits_model, digits_data):
    """``nuts_init`` is one SVI point, passed to every chain: a labelling that already
    scores well, so the chains explore one of the K! equivalent modes."""
    start = digits_model.nuts_init(digits_data)
    assert start["pi"].shape == (15, 5) and start["phi"].shape == (5, 30)
    for name in ("pi", "phi"):
        assert torch.allclose(start[name].sum(-1), torch.ones(()), atol=1e-4)
    assert digits_model.scores(start["pi"], start["phi"], digits_data)["accuracy"] > 0.85


def test_recovery_of_known_truth():
    """3 classes, 6 domains, 12 codes, 3000 rows from the model with sparse p(c | y) (phi ~
    Dirichlet(0.2): codes nearly anchor one class, the paper's separability condition):
    after Hungarian matching the posterior-median p(y | d) is within 0.15 (L1, mean over
    domains) of the truth and the MAP classes reach 90% or more of the accuracy of the
    true-parameter MAP classes."""
    model = zoo.create(
        "latent_label_shift",
        num_classes=3,
        num_domains=6,
        num_codes=12,
        per_domain=500,
        priors={"phi": dist.Dirichlet(torch.full((12,), 0.2))},
    )
    truth, data = model.simulate(2)
    labels = data["label"].numpy()  # the true classes
    guide = guides.build("normal", model)
    fit(model, guide, data, steps=1500, lr=0.05, progress=False)
    with torch.no_grad():
        median = guide.median(full_batch(data))
    pred = model.decode(median, data).numpy()
    perm = match_classes(pred, labels, 3)
    pi = np.zeros((6, 3))
    pi[:, perm] = median["pi"].numpy()
    assert np.abs(pi - truth["pi"].numpy()).sum(1).mean() < 0.15
    oracle = hungarian_accuracy(model.decode(truth, data).numpy(), labels, 3)
    assert hungarian_accuracy(pred, labels, 3) > 0.9 * oracle


def test_nuts_and_svi_agree():
    """On a tiny data set: posterior means of p(c | d) (permutation-free) and of pi and phi
    (SVI classes matched to NUTS's) within 1 NUTS posterior sd + 0.02."""
    model = zoo.create("latent_label_shift", per_domain=50, **TINY)
    truth, data = model.simulate(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc = nuts(model, data, chains=1, warmup=100, draws=150, seed=0, progress=False)
    assert sum(len(v) for v in mcmc.diagnostics()["divergences"].values()) <= 3
    guide = guides.build("mvn", model)
    fit(model, guide, data, steps=1500, lr=0.02, progress=False)
    svi = draw_latents(model, guide, data, 1000)
    mc = mcmc.get_samples()

    def check(a, b):
        gap = (a.mean(0) - b.mean(0)).abs()
        assert torch.all(gap < b.std(0) + 0.02), (gap, b.std(0))

    check(svi["pi"] @ svi["phi"], mc["pi"] @ mc["phi"])
    cost = torch.cdist(svi["phi"].mean(0), mc["phi"].mean(0)).numpy()
    from scipy.optimize import linear_sum_assignment

    _, order = linear_sum_assignment(cost)
    inverse = np.argsort(order)
    check(svi["phi"][:, inverse], mc["phi"])
    check(svi["pi"][..., inverse], mc["pi"])


def prior_resampling_draws(model, data, num_prior, num_draws=40, seed=0):
    """Posterior draws by importance resampling from the prior with the model's own
    likelihood (exact as num_prior grows; the effective sample size is checked)."""
    pyro.set_rng_seed(seed)
    batch = full_batch(data)
    with torch.no_grad(), pyro.plate("prior_draws", num_prior, dim=-2):
        trace = poutine.trace(model.model).get_trace(batch)
    trace.compute_log_prob()
    weights = torch.softmax(trace.nodes["code"]["log_prob"].sum(-1), 0)
    assert 1.0 / float((weights**2).sum()) > 100, "too few effective prior draws"
    pick = torch.multinomial(weights, num_draws, replacement=True)
    return {k: trace.nodes[k]["value"].squeeze(1)[pick] for k in ("pi", "phi")}


def test_sbc_with_power():
    """SBC (100 replicates, 40 draws) on 12 rows of a 2-class model, draws by prior
    importance resampling: simulate() and model() tell the same story (every scalar of pi
    and phi: uniformity p > 0.01), with >= 80% power against a posterior 1.5x too narrow,
    1.5x too wide or shifted by half an sd; the same draws made 1.5x too narrow fail.
    Label switching does not matter for an exact sampler. The tutorial runs SBC with NUTS."""
    model = zoo.create("latent_label_shift", per_domain=4, **TINY)
    figures, result = sbc_figures(
        model.simulate,
        lambda data, seed: prior_resampling_draws(model, data, 20_000, seed=seed),
        num_replicates=100,
        params=["pi", "phi"],
        seed=0,
    )
    print(result.describe())
    assert not result.underpowered, result.describe()
    assert result.passed(), result.pvalues
    assert figures["sbc/narrowed_rejected"] == 1.0, figures


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["code"].__setitem__(0, 30), "field 'code' has values outside"),
        (lambda d: d["domain"].__setitem__(0, -1), "field 'domain' has values outside"),
        (lambda d: d["label"].__setitem__(0, -2), "field 'label' has values outside"),
        (lambda d: d.update(code=d["code"].float() + 0.5), "field 'code' must hold integers"),
        (
            lambda d: d.update(code=d["code"].float().index_fill(0, torch.tensor([0]), math.nan)),
            "field 'code' has 1 NaN",
        ),
        (lambda d: d.update(code=d["code"][:, None]), r"field 'code' has shape \(\d+, 1\)"),
    ],
)
def test_bad_data_is_refused(digits_model, digits_data, change, message):
    data = {k: v.clone() for k, v in digits_data.items()}
    change(data)
    with pytest.raises(DataError, match=message):
        digits_model.validate(data)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": 0.0}, "alpha must be a positive number"),
        ({"num_codes": 3}, r"num_codes must be >= num_classes \(5\)"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"clusters": 3}, r"unknown config key\(s\) \['clusters'\]"),
    ],
)
def test_bad_config_is_refused(options, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create("latent_label_shift", **options)


def test_bad_priors_and_default_data_mismatch():
    with pytest.raises(ValueError, match="concentration"):
        zoo.create("latent_label_shift", priors={"pi": dist.Dirichlet(torch.zeros(5))})
    with pytest.raises(zoo.PriorError, match="event shape"):
        zoo.create("latent_label_shift", priors={"phi": dist.Dirichlet(torch.ones(7))})
    with pytest.raises(zoo.ConfigError, match="default data has 5 classes"):
        zoo.create("latent_label_shift", num_classes=3).default_data(0)
