"""MPNP (paper 19): the GP tasks, the objective (RenyiELBO alpha=0 over the parameter-free
prior proposal plus the amortized and pseudo factors equals the paper's three terms), the
NP variant's ELBO, a short training against the GP oracle and a prior-predictive floor,
and bad input."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import guides
import zoo
from guides.sets import masked_mean
from inference.data import DataError, full_batch
from inference.elbos import make_elbo
from inference.posterior import posterior
from inference.svi import fit
from tests.sites import latent_sites, traces
from zoo.datasets.gp_tasks import gp_predictive, gp_tasks, kernel_matrix
from zoo.models.mpnp import predictive_scores

TINY = dict(zoo.get("mpnp").tiny)


def _batch(model, rows=6):
    return full_batch({k: v[:rows] for k, v in model.default_data(0).items()})


def test_gp_tasks_follow_the_spec():
    d = gp_tasks(2000, kernel="rbf", seed=0)
    n_c, n = d["num_context"], d["num_points"]
    assert n_c.min() == 3 and n_c.max() == 47 and (n - n_c).min() >= 3 and n.max() <= 50
    assert np.abs(d["x"]).max() <= 2.0
    pos = np.arange(50)[None]
    real = pos < n[:, None]
    noise = (d["y"] - d["f"])[real]
    assert abs(noise.var() - 0.02) < 0.002  # Gaussian noise of variance 0.02
    # the padding repeats the last real point
    last = d["x"][np.arange(2000), n - 1]
    assert np.all(d["x"][~real] == np.broadcast_to(last[:, None], d["x"].shape)[~real])
    heavy = gp_tasks(2000, kernel="rbf", noise="student_t", seed=0)
    t_noise = (heavy["y"] - heavy["f"])[real]
    assert np.mean(np.abs(t_noise) > 0.6) > 10 * np.mean(np.abs(noise) > 0.6)  # heavy tails
    # GPyTorch's periodic kernel: a shift by one period is perfectly correlated
    x = torch.tensor([[0.0, 0.3, 0.7]])
    hypers = {k: torch.tensor([v]) for k, v in
              {"lengthscale": 0.4, "scale": 0.5, "period": 0.35}.items()}  # fmt: skip
    k = kernel_matrix("periodic", torch.tensor([[0.1, 0.45]]), hypers)[0]
    assert k[0, 1] == pytest.approx(0.25, abs=1e-6) and k[0, 0] == pytest.approx(0.25)
    rbf = kernel_matrix("rbf", x, hypers)[0]
    assert rbf[0, 1] == pytest.approx(0.25 * math.exp(-0.5 * (0.3 / 0.4) ** 2), rel=1e-6)


def test_gp_oracle_beats_the_wrong_kernel():
    """The exact GP predictive with the true kernel scores the targets better than the
    same predictive with a wrong kernel (the oracle the recipe reports is an oracle)."""
    d = gp_tasks(300, kernel="periodic", seed=1)
    pos = np.arange(50)[None]
    tar = (pos >= d["num_context"][:, None]) & (pos < d["num_points"][:, None])
    scores = {}
    for kernel in ("periodic", "rbf"):
        mean, sd = gp_predictive(d, kernel)
        ll = -0.5 * ((d["y"] - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
        scores[kernel] = ll[tar].mean()
    assert scores["periodic"] > scores["rbf"] + 0.3, scores


def test_iwae_loss_is_the_papers_three_terms():
    """RenyiELBO(alpha=0, K vectorized particles) of the model with its parameter-free
    guide equals L_marg + L_amort + L_pseudo computed by hand from the same draws of eps;
    a pseudo factor given per particle (not averaged) would enter the importance weights
    and give another value."""
    torch.manual_seed(0)
    model = zoo.create("mpnp", **TINY)
    batch = _batch(model)
    assert not list(model.guide.parameters())
    K = 4
    elbo = make_elbo("iwae", num_particles=K, max_plate_nesting=1)
    elbo.loss(model.model, model.guide, batch)  # (the first call sets the guide up)
    pyro.set_rng_seed(1)
    loss = elbo.loss(model.model, model.guide, batch)
    pyro.set_rng_seed(1)
    _, guide_trace = next(elbo._get_traces(model.model, model.guide, (batch,), {}))
    eps = guide_trace.nodes["eps"]["value"]
    assert eps.shape == (K, 6, model.config.max_points, model.config.noise_dim)
    with torch.no_grad():
        ctx, valid = model.masks(batch)
        x, y = batch["x"], batch["y"]
        r = model.represent(x, y)
        theta_c = masked_mean(r, ctx)
        theta_p = masked_mean(model.pseudo(r, ctx, eps), ctx)

        def ll(theta):
            return (model.decode(x, theta).log_prob(y) * valid).sum(-1)

        marg = torch.logsumexp(ll(0.5 * (theta_c + theta_p)), 0) - math.log(K)
        hand = -(marg + ll(theta_c) + ll(theta_p).mean(0)).sum()
        wrong = -(torch.logsumexp(ll(0.5 * (theta_c + theta_p)) + ll(theta_p), 0)
                  - math.log(K) + ll(theta_c)).sum()  # fmt: skip
    assert loss == pytest.approx(float(hand), rel=1e-5)
    assert abs(float(wrong) - loss) > 0.1  # (the exact form agrees to ~0.01 here)


def test_np_guide_gives_the_np_elbo():
    """The NP variant's non-centred z: log p(z) - log q(z) in z's coordinates equals
    log p(latent | Z_c) - log q(latent | Z_c U Z_t) (the affine map's Jacobians cancel),
    so its ELBO is the NP's; every local guide family applies to it."""
    torch.manual_seed(0)
    model = zoo.create("mpnp", **{**TINY, "variant": "np"})
    batch = _batch(model)
    with torch.no_grad():
        guide_trace = poutine.trace(model.guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(model.model, guide_trace)).get_trace(batch)
    z = guide_trace.nodes["z"]["value"]
    ratio = model_trace.nodes["z"]["fn"].log_prob(z) - guide_trace.nodes["z"]["fn"].log_prob(z)
    ctx, valid = model.masks(batch)
    with torch.no_grad():
        loc_c, scale_c = model.latent_encoder(batch["x"], batch["y"], ctx)
        loc_d, scale_d = model.latent_encoder(batch["x"], batch["y"], valid)
    latent = loc_c + scale_c * z
    direct = (torch.distributions.Normal(loc_c, scale_c).log_prob(latent).sum(-1)
              - torch.distributions.Normal(loc_d, scale_d).log_prob(latent).sum(-1))  # fmt: skip
    assert torch.allclose(ratio, direct, atol=1e-4)
    assert guides.local_kinds(model) == ("normal", "mvn", "flow")
    assert guides.local_kinds(zoo.create("mpnp", **TINY)) == ("normal",)
    assert zoo.create("mpnp", **{**TINY, "variant": "cnp"}).local_sites == ()


SMALL = {"width": 32, "noise_dim": 16, "latent_dim": 8, "num_tasks": 1000,
         "batch_size": 32, "lr": 2e-3, "eval_samples": 10}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
def test_short_training_sits_between_the_floor_and_the_gp_oracle(seed):
    """After 200 steps the MPNP's target log-likelihood on new RBF tasks is well above the
    prior predictive (a Normal with the data's pooled variance, which ignores the context)
    and below the exact GP with the true kernel (a model that leaked the targets into its
    context would pass it); its 90% intervals cover 80-97% of the targets, and the spread
    of its predictive mean across draws of eps (the martingale posterior's functional
    uncertainty) is larger at the targets than at the context points."""
    torch.manual_seed(seed)
    model = zoo.create("mpnp", **SMALL)
    fit(model, model.guide, model.default_data(seed), config=model.config, steps=200,
        progress=False, seed=seed, **model.svi_options())  # fmt: skip
    raw = model.tasks(200, seed=100 + seed)
    test = model.rows(raw)
    scores = model.scores(test)
    mean, sd = gp_predictive(raw, "rbf")
    oracle = predictive_scores(torch.as_tensor(mean)[None], torch.as_tensor(sd)[None], test)
    pooled = float(test["y"].var())
    floor = predictive_scores(torch.zeros(1, 1, 50), torch.full((1, 1, 50), pooled**0.5), test)
    assert floor["tar_ll"] + 0.2 < scores["tar_ll"] < oracle["tar_ll"], (floor, scores, oracle)
    assert 0.80 < scores["tar_coverage90"] < 0.97, scores
    mu, _ = model.predictive(test, 10)
    spread = mu.std(0)
    ctx, valid = model.masks(test)
    assert spread[valid & ~ctx].mean() > 1.1 * spread[ctx].mean()  # (1.27 and 1.56 here)


@pytest.mark.parametrize("variant", ["np", "cnp"])
def test_baseline_variants_train_and_score(variant):
    torch.manual_seed(0)
    model = zoo.create("mpnp", **{**TINY, "variant": variant})
    data = model.default_data(0)
    result = fit(model, model.guide, data, config=model.config, steps=30, progress=False,
                 **model.svi_options())  # fmt: skip
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    scores = model.evaluate(model.guide, data)
    assert set(scores) == {"ctx_ll", "tar_ll", "tar_coverage90"}
    assert all(math.isfinite(v) for v in scores.values())
    model_trace, _ = traces(model, model.guide, full_batch(data))
    assert latent_sites(model_trace) == ({"z"} if variant == "np" else set())
    # ArviZ's groups for a model with or without latents (the CNP has none)
    idata = posterior(model, {k: v[:8] for k, v in data.items()}, guide=model.guide, num_draws=5)
    assert idata.posterior_predictive["y"].shape == (1, 5, 8, model.config.max_points)


def test_zoo_train_objective_is_the_one_particle_bound():
    """Under Trace_ELBO with one particle (``zoo train``'s engine) the loss is the K = 1
    case: the amortized, pseudo and marginal terms of one draw of eps."""
    torch.manual_seed(0)
    model = zoo.create("mpnp", **TINY)
    batch = _batch(model)
    Trace_ELBO().loss(model.model, model.guide, batch)
    pyro.set_rng_seed(2)
    one = Trace_ELBO().loss(model.model, model.guide, batch)
    pyro.set_rng_seed(2)
    iwae = make_elbo("iwae", num_particles=2, max_plate_nesting=1)
    assert math.isfinite(one) and math.isfinite(iwae.loss(model.model, model.guide, batch))
    assert model.svi_options() == {"elbo": "iwae", "num_particles": 5}


def test_bad_input_is_refused_before_training():
    model = zoo.create("mpnp", **TINY)
    data = {k: v.numpy().copy() for k, v in model.default_data(0).items()}
    with pytest.raises(DataError, match="'num_context' must be below 'num_points'"):
        model.validate({**data, "num_points": data["num_context"]})
    with pytest.raises(DataError, match="field 'x' has shape"):
        model.validate({**data, "x": data["x"][:, :40]})
    bad = data["y"].copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="field 'y'"):
        model.validate({**data, "y": bad})
    with pytest.raises(DataError, match="field 'num_context'"):
        model.validate({**data, "num_context": data["num_context"] * 0})
    for key, value, message in [
        ("variant", "anp", "variant must be one of"),
        ("kernel", "cosine", "kernel must be one of"),
        ("noise", "laplace", "noise must be one of"),
        ("heads", 3, "multiple of heads"),
        ("sigma_floor", 1.5, "sigma_floor"),
        ("particles", 0, "particles must be a positive integer"),
    ]:
        with pytest.raises(zoo.ConfigError, match=message):
            zoo.create("mpnp", **{key: value})
