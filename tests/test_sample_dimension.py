"""Every registered model runs under a leading sample dimension.

Vectorized ELBO particles (``Trace_ELBO(num_particles=P, vectorize_particles=True)``) and the
report's vectorized posterior draws (:mod:`inference.posterior`) both run the model once
inside a plate of samples left of its ``max_plate_nesting`` plates: every latent the guide
gives it then carries a leading batch of sample dimensions, and the model must broadcast it
(no ``view`` with a fixed row count, no network that assumes one batch dimension).

The checks (:func:`check_vectorized_particles`, :func:`check_vectorized_draws`) are shared
by every model. Beyond "it runs and is finite" they assert that each particle (draw) is its
own sample: site by site, the vectorized log density of particle ``i`` equals the log
density of a plain, non-vectorized run at particle ``i``'s latents. A site whose density
depends on noise the model or guide draws itself (a diffusion timestep, level dropout, an
SGLD run) cannot be compared with a plain run; it is compared in evaluation mode where
that makes it a function of the latents, and is otherwise checked for finite values only.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.subsample_messenger import _Subsample

import zoo
from inference.data import full_batch
from inference.posterior import posterior

MODELS = zoo.list_models()

#: rows of the default data each model is checked on, and particles / draws
ROWS = 5
PARTICLES = 3
DRAWS = 4
#: a plain and a vectorized run of a site agree to float32 rounding
TOLERANCE = {"rtol": 1e-4, "atol": 1e-3}

#: model sites that are a mean over the particles by design, given to every particle alike,
#: so no particle's value is a plain run's: mpnp's pseudo-context term (the paper's
#: (1/K) sum_k, which RenyiELBO's log-mean-exp passes through once only in this form)
PARTICLE_MEANS: dict[str, set[str]] = {"mpnp": {"pseudo"}}

#: config overrides that keep a model's check fast (the default is slow to build or run)
SMALL: dict[str, dict] = {
    "causal_diffae": {"n_data": 40},
}


def small_model(name: str) -> tuple[zoo.ZooModel, dict[str, torch.Tensor]]:
    """The model (seeded) and the first :data:`ROWS` rows of its default data."""
    pyro.set_rng_seed(0)
    model = zoo.create(name, **SMALL.get(name, {}))
    data = model.default_data(seed=0)
    return model, {k: v[:ROWS] for k, v in data.items()}


# ----- traces ---------------------------------------------------------------------------------


def _is_sample(site) -> bool:
    return site["type"] == "sample" and not isinstance(site["fn"], _Subsample)


def _is_point_mass(fn) -> bool:
    while fn is not None:
        if isinstance(fn, dist.Delta):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def _in_plate(fn: Callable, num: int, dim: int) -> Callable:
    """``fn`` inside a plate of ``num`` samples at ``dim`` (as Trace_ELBO vectorizes)."""

    def run(*args):
        with pyro.plate("num_particles_vectorized", num, dim=dim):
            return fn(*args)

    return run


def per_sample_log_probs(trace, num: int, dim: int, *, scaled: bool = True) -> dict:
    """Site name -> ``(num,)``: the site's log density summed over everything but the
    sample plate at ``dim`` (a site that does not depend on the samples counts for each)."""
    trace.compute_log_prob()
    out = {}
    for name, site in trace.nodes.items():
        if not _is_sample(site):
            continue
        log_prob = site["log_prob" if scaled else "unscaled_log_prob"]
        assert log_prob.dim() <= -dim, (
            f"site '{name}' has log_prob shape {tuple(log_prob.shape)}: dimensions left of "
            "the sample plate (max_plate_nesting too small?)"
        )
        if log_prob.dim() == -dim:
            assert log_prob.shape[0] in (1, num), f"site '{name}': {tuple(log_prob.shape)}"
            out[name] = log_prob.reshape(log_prob.shape[0], -1).sum(-1).expand(num)
        else:
            out[name] = log_prob.sum().expand(num)
    return out


def plain_log_probs(trace, *, scaled: bool = True) -> dict[str, float]:
    """Site name -> the site's log density summed, for a plain (non-vectorized) trace."""
    trace.compute_log_prob()
    key = "log_prob" if scaled else "unscaled_log_prob"
    sites = {name: site for name, site in trace.nodes.items() if _is_sample(site)}
    return {name: float(site[key].detach().sum()) for name, site in sites.items()}


def _latent_shapes(guide, batch) -> dict[str, torch.Size]:
    """Shapes of the guide's latent sites in a plain run."""
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(batch)
    return {
        name: site["value"].shape
        for name, site in trace.nodes.items()
        if _is_sample(site) and not site["is_observed"]
    }


def _single_values(trace, index: int, dim: int, shapes: Mapping[str, torch.Size]) -> dict:
    """Sample ``index`` of each latent of a vectorized guide trace, shaped as in a plain
    run; a point mass computed from an auxiliary draw (an AutoGuide's constrained value) is
    left for the guide to recompute."""
    auxiliary = any(s["infer"].get("is_auxiliary") for s in trace.nodes.values() if _is_sample(s))
    out = {}
    for name, shape in shapes.items():
        site = trace.nodes[name]
        if auxiliary and _is_point_mass(site["fn"]):
            continue
        value = site["value"]
        where = value.dim() - site["fn"].event_dim + dim  # the sample plate's position
        if where >= 0 and value.shape[where] > 1:
            value = value.select(where, index)
        out[name] = value.reshape(shape)
    return out


def _guide_at(guide, batch, values: Mapping[str, torch.Tensor]):
    """A plain trace of the guide with its latents at ``values``."""
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(guide, data=dict(values))).get_trace(batch)
    for name in values:  # latents at the given values, not data
        trace.nodes[name]["is_observed"] = False
    return trace


def _model_at(model, guide_trace, batch):
    with torch.no_grad():
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)


def _repeatable_sites(log_probs: Callable[[], dict[str, float]]) -> set[str]:
    """Sites whose log density comes out the same under two seeds: the others depend on
    noise drawn inside the model or guide and are not compared with a plain run."""
    runs = []
    for seed in (2, 3):
        pyro.set_rng_seed(seed)
        runs.append(log_probs())
    return {name for name, value in runs[0].items() if runs[1].get(name) == value}


@contextlib.contextmanager
def _mode(model, training: bool):
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


def _assert_sites_close(vectorized: dict, plain: list[dict], sites: set[str], what: str):
    for name in sorted(sites):
        expected = torch.tensor([p[name] for p in plain], dtype=vectorized[name].dtype)
        torch.testing.assert_close(
            vectorized[name],
            expected,
            **TOLERANCE,
            msg=lambda m, name=name: f"{what} site '{name}': vectorized != plain run\n{m}",
        )


# ----- the checks -----------------------------------------------------------------------------


def _compare_particles(model, guide, batch, num: int, dim: int) -> tuple[set, set]:
    """Per site, each vectorized particle's log density against a plain run at its
    latents; returns the model sites compared and those left out (not repeatable)."""
    with torch.no_grad():
        pyro.set_rng_seed(0)
        guide_trace = poutine.trace(_in_plate(guide, num, dim)).get_trace(batch)
        model_trace = _model_at(_in_plate(model.model, num, dim), guide_trace, batch)
    vec_q = per_sample_log_probs(guide_trace, num, dim)
    vec_p = per_sample_log_probs(model_trace, num, dim)
    values = [_single_values(guide_trace, i, dim, _latent_shapes(guide, batch)) for i in range(num)]
    plain_q = [_guide_at(guide, batch, v) for v in values]
    plain_p = [_model_at(model.model, q, batch) for q in plain_q]
    q_sites = _repeatable_sites(lambda: plain_log_probs(_guide_at(guide, batch, values[0])))
    p_sites = _repeatable_sites(lambda: plain_log_probs(_model_at(model.model, plain_q[0], batch)))
    _assert_sites_close(vec_q, [plain_log_probs(q) for q in plain_q], q_sites, "guide")
    p_sites -= PARTICLE_MEANS.get(model.name, set())
    _assert_sites_close(vec_p, [plain_log_probs(p) for p in plain_p], p_sites, "model")
    return p_sites, set(vec_p) - p_sites - PARTICLE_MEANS.get(model.name, set())


def check_vectorized_particles(model, data, num_particles: int = PARTICLES) -> torch.Tensor:
    """The vectorized-particle ELBO of ``model`` with its default guide is finite and is
    the mean of per-particle log weights that differ (all equal for a point-mass guide);
    site by site, each particle's log density is a plain run's at that particle's latents
    (training mode, then evaluation mode for sites that draw their own noise in training).
    Returns the per-particle log weights."""
    batch = full_batch(data)
    guide = model.guide
    with torch.no_grad():
        guide(batch)  # create lazily initialised guide parameters
    mpn = model.max_plate_nesting
    dim = -(mpn + 1)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=mpn)
    with torch.no_grad():
        pyro.set_rng_seed(0)
        loss = elbo.loss(model.model, guide, batch)
        assert torch.isfinite(torch.tensor(loss)), f"{model.name}: vectorized ELBO is {loss}"
        pyro.set_rng_seed(0)  # the same draws as the loss
        guide_trace = poutine.trace(_in_plate(guide, num_particles, dim)).get_trace(batch)
        model_trace = _model_at(_in_plate(model.model, num_particles, dim), guide_trace, batch)
    log_p = sum(per_sample_log_probs(model_trace, num_particles, dim).values())
    log_w = log_p - sum(per_sample_log_probs(guide_trace, num_particles, dim).values())
    assert torch.isfinite(log_w).all(), f"{model.name}: per-particle log weights {log_w}"
    torch.testing.assert_close(-log_w.mean(), torch.tensor(loss, dtype=log_w.dtype))

    shapes = _latent_shapes(guide, batch)
    values = [_single_values(guide_trace, i, dim, shapes) for i in range(num_particles)]
    point_mass = all(torch.equal(values[0][k], v[k]) for v in values for k in values[0])
    assert len(set(log_w.tolist())) == (1 if point_mass else num_particles), (
        f"{model.name}: vectorized particles give log weights {log_w.tolist()} "
        f"({'a point-mass guide' if point_mass else 'independent draws'})"
    )
    compared, left = _compare_particles(model, guide, batch, num_particles, dim)
    if left:
        with _mode(model, False):
            more, left = _compare_particles(model, guide, batch, num_particles, dim)
        compared |= more
    assert compared, f"{model.name}: no model site could be compared with a plain run"
    return log_w


def check_vectorized_draws(model, data, num_draws: int = DRAWS):
    """The report's vectorized posterior draws: every latent and every observed site's
    predictive and log-likelihood draws carry the leading draw dimension; each draw's
    pointwise log likelihood and its log joint (``sample_stats.lp``: the model's densities
    without ``poutine.scale``) are a plain run's at that draw wherever they are a function
    of the latents. Returns the InferenceData."""
    guide = model.guide
    batch = full_batch(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = posterior(model, data, guide=guide, num_draws=num_draws, seed=0)
    rows = len(next(iter(data.values())))
    shapes = {
        name: shape
        for name, shape in _latent_shapes(guide, batch).items()
        if name in idata.posterior  # (an AutoGuide's auxiliary sites are the guide's own)
    }
    for name, shape in shapes.items():
        values = idata.posterior[name].values
        assert values.shape[:2] == (1, num_draws), f"{name}: {values.shape}"
        assert values[0].reshape(num_draws, -1).shape[1] == shape.numel(), f"{name}: {shape}"
    for name in model.observed_sites:
        predictive = idata.posterior_predictive[name].values
        assert predictive.shape == (1, num_draws, *data[name].shape), (
            f"{model.name}: predictive '{name}' has shape {predictive.shape}, expected "
            f"{(1, num_draws, *data[name].shape)}"
        )
        assert idata.log_likelihood[name].values.shape == (1, num_draws, rows)
    lp = torch.as_tensor(idata.sample_stats["lp"].values[0])
    assert lp.shape == (num_draws,) and torch.isfinite(lp).all(), f"lp {lp}"

    def plain(i: int) -> dict[str, float]:
        draw = {
            k: torch.as_tensor(idata.posterior[k].values[0, i]).reshape(s)
            for k, s in shapes.items()
        }
        with torch.no_grad():
            trace = poutine.trace(poutine.condition(model.model, data=draw)).get_trace(batch)
        log_probs = plain_log_probs(trace, scaled=False)
        log_probs["(lp)"] = sum(log_probs.values())
        return log_probs

    sites = _repeatable_sites(lambda: plain(0))
    runs = [plain(i) for i in range(num_draws)]
    vectorized = {"(lp)": lp}
    for name in model.observed_sites:
        vectorized[name] = torch.as_tensor(idata.log_likelihood[name].values[0]).sum(-1)
    _assert_sites_close(vectorized, runs, sites & set(vectorized), "posterior draws")
    return idata


#: models whose guide scores a value differently when it is not its own draw (known, open)
SCORED_AT_THE_DRAW = {
    # ZoneLatent's log q uses the exact start responsibility of its own draw, but a replayed
    # value goes through the 8-step reverse flow, which returns only ~86% of latents to their
    # own anchor: log q is then off by up to ~8 nats (inference/latent_flow.py)
    "lzn": "log q of a replayed z comes from the reverse flow, of a draw from its start",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=SCORED_AT_THE_DRAW[n]))
        if n in SCORED_AT_THE_DRAW
        else n
        for n in MODELS
    ],
)
def test_vectorized_particles(name):
    model, data = small_model(name)
    check_vectorized_particles(model, data)


#: models whose observed site is a function of a data field, not the field itself (known, open)
OBSERVES_A_FUNCTION_OF_THE_DATA = {
    # a JEPA has no decoder: its likelihood is over the target encoder's latents of the masked
    # columns of x, so its posterior predictive is latent-shaped (rows, tokens, width), not x's
    "tjepa": "the observed site 'x' scores the target encoder's latents of x, not x",
    # DiGIT's AR model is over the 16 patch tokens a fixed tokenizer makes of the 64 pixels
    "digit_tokens": "the observed site 'x' scores x's 16 tokens, not its 64 pixels",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n, marks=pytest.mark.xfail(strict=True, reason=OBSERVES_A_FUNCTION_OF_THE_DATA[n])
        )
        if n in OBSERVES_A_FUNCTION_OF_THE_DATA
        else n
        for n in MODELS
    ],
)
def test_vectorized_posterior_draws(name):
    model, data = small_model(name)
    check_vectorized_draws(model, data)
