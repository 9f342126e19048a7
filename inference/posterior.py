"""Posterior draws from a fitted guide or an MCMC run, as one ``arviz.InferenceData``.

ArviZ's ``from_pyro`` reads MCMC runs only, so both engines share one path here: latent
draws (chain, draw, ...) -> deterministic sites, posterior predictive and pointwise log
likelihood by vectorized replay of the model -> ``az.from_dict``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, Predictive
from pyro.poutine.util import site_is_factor, site_is_subsample
from torch import nn

from inference.data import full_batch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ's notice of its 1.x refactor
    import arviz as az

__all__ = ["posterior", "draw_latents", "site_names", "load_example"]


def site_names(model: nn.Module, guide: nn.Module | None, batch) -> dict[str, list[str]]:
    """Latent, deterministic, observed and factor sites of one run of the model (a
    ``pyro.factor`` adds to the joint density but is neither data nor a latent)."""
    with poutine.block(), torch.no_grad():
        if guide is not None:
            guide_trace = poutine.trace(guide).get_trace(batch)
            trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
        else:
            trace = poutine.trace(model).get_trace(batch)
    names: dict[str, list[str]] = {"latent": [], "deterministic": [], "observed": [], "factor": []}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("_deterministic"):
            names["deterministic"].append(name)
        elif site_is_factor(site):
            names["factor"].append(name)
        elif site["is_observed"]:
            names["observed"].append(name)
        else:
            names["latent"].append(name)
    return names


def draw_latents(
    model: nn.Module, guide: nn.Module, data: Mapping[str, torch.Tensor], num_draws: int
) -> dict[str, torch.Tensor]:
    """``num_draws`` joint draws of the guide's latent sites, shaped ``(num_draws, *site)``.

    The guide runs once under a plate of draws left of the model's plates (Predictive's own
    guide pass misreads the shape of a global site with an event dimension)."""
    if hasattr(guide, "resample"):  # posterior draws as a guide (guides.draws): no sampling
        return guide.resample(num_draws)
    batch = full_batch(data)
    names = site_names(model, guide, batch)
    mpn = int(getattr(model, "max_plate_nesting", 1))

    def vectorized():
        with pyro.plate("_num_draws", num_draws, dim=-(mpn + 1)):
            return guide(batch)

    with poutine.block(), torch.no_grad():
        trace = poutine.trace(vectorized).get_trace()
    return {k: _per_draw(trace.nodes[k]["value"].detach(), num_draws, mpn) for k in names["latent"]}


def _sum_to(log_prob: torch.Tensor, keep: int) -> torch.Tensor:
    """Sum a (S, ...) log density over all but its first ``keep`` dimensions."""
    return (
        log_prob.reshape(log_prob.shape[:keep] + (-1,)).sum(-1)
        if log_prob.dim() > keep
        else log_prob
    )


def _replay(
    model: nn.Module, draws: Mapping[str, torch.Tensor], batch, names, mpn: int, num_draws: int
):
    """Deterministic sites, posterior predictive and log densities given latent draws, from
    one vectorized trace of the model conditioned on the draws (a model without latent
    sites, a conditional neural process, is traced ``num_draws`` times as it is)."""
    num = len(next(iter(draws.values()))) if draws else num_draws
    out: dict[str, dict[str, torch.Tensor]] = {"deterministic": {}, "predictive": {}, "log_lik": {}}
    with torch.no_grad():
        if draws:
            predictive = Predictive(model, posterior_samples=dict(draws), parallel=True)
        else:
            predictive = Predictive(model, num_samples=num, parallel=True)
        trace = predictive.get_vectorized_trace(batch)
        lp = torch.zeros(num, device=batch.index.device)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["infer"].get("_deterministic"):
                out["deterministic"][name] = _per_draw(site["value"], num, mpn)
                continue
            log_prob = site["fn"].log_prob(site["value"]).expand(site["fn"].batch_shape)
            if name in names["factor"] and log_prob.numel() < num:
                # a factor that does not depend on the draws (e.g. a penalty on weights)
                lp = lp + log_prob.sum()
                continue
            log_prob = log_prob.reshape((num,) + log_prob.shape[1:])
            lp = lp + _sum_to(log_prob, 1)
            if name in names["observed"]:  # (conditioning marks the draws observed too)
                # pointwise over the data plate (dim -1), summed over inner plates
                out["log_lik"][name] = _sum_to(log_prob.movedim(-1, 1), 2)
                # y_rep ~ p(y | draw): the observed site's distribution under each draw
                out["predictive"][name] = _per_draw(site["fn"].sample(), num, mpn)
    out["lp"] = lp
    return out


def _as_traced(draws: Mapping[str, torch.Tensor], model: nn.Module, guide, batch) -> dict:
    """Draws shaped ``(num, 1.., *site)`` with the draws dimension left of every plate, from
    one trace of the model (replayed on the guide when there is one). Predictive pads a
    draw's shape by counting all of its dimensions as batch dimensions, so a global site with
    an event dimension (shape ``(D,)``) would otherwise be misread as ``D`` draws."""
    with poutine.block(), torch.no_grad():
        if guide is not None:
            guide_trace = poutine.trace(guide).get_trace(batch)
            model = poutine.replay(model, trace=guide_trace)
        trace = poutine.trace(model).get_trace(batch)
    mpn = int(getattr(model, "max_plate_nesting", 1))
    out = {}
    for name, value in draws.items():
        site = trace.nodes.get(name)
        if site is not None and value[0].numel() == site["value"].numel():
            fn = site["fn"]
            pad = (1,) * max(0, mpn - len(fn.batch_shape))
            value = value.reshape((value.shape[0], *pad, *site["value"].shape))
        out[name] = value
    return out


def _cut_to_rows(draws: Mapping[str, torch.Tensor], model: nn.Module, batch) -> dict:
    """MCMC draws (num, *site) of per-row sites cover every row NUTS ran on; where ``batch``
    holds only the first of them (a report's idata), each is cut to its site's shape in one
    trace of the model on ``batch``."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(batch)
    return {
        name: _first_rows(value, trace.nodes[name]["value"].shape) if name in trace.nodes else value
        for name, value in draws.items()
    }


def _first_rows(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``value`` (num, *site) cut to ``shape`` where every dimension is at least as long
    (per-row draws of all rows, a trace of the first rows); otherwise unchanged."""
    site = value.shape[1:]
    if len(site) != len(shape) or site == shape:
        return value
    if any(a < b for a, b in zip(site, shape, strict=True)):
        return value
    return value[(slice(None), *(slice(0, n) for n in shape))]


def _per_draw(value: torch.Tensor, num: int, mpn: int) -> torch.Tensor:
    """Drop the singleton plate dimensions that broadcasting against the draws plate (at
    dim -(mpn+1)) left between the draws dimension and the site's own dimensions."""
    value = value.reshape((num,) + value.shape[1:]) if value.dim() else value.expand(num)
    for _ in range(mpn):
        if value.dim() > 1 and value.shape[1] == 1:
            value = value.squeeze(1)
    return value


def _np(tensors: Mapping[str, torch.Tensor], chains: int) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().reshape((chains, -1) + tuple(v.shape[1:]))
        for k, v in tensors.items()
    }


def posterior(
    model: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    guide: nn.Module | None = None,
    mcmc: MCMC | None = None,
    num_draws: int = 500,
    seed: int = 0,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    mcmc_to_sites: Callable[[dict[str, torch.Tensor]], Mapping[str, Any]] | None = None,
) -> az.InferenceData:
    """One InferenceData with posterior, posterior_predictive, log_likelihood,
    observed_data, constant_data and sample_stats groups, from a guide or an MCMC run.

    With ``mcmc``, ``data`` may be the first rows of the data NUTS ran on (per-row draws are
    cut to them).

    :param dims: ArviZ dimension names per site, e.g. ``{"theta": ["school"]}``; observed
        sites get theirs for the predictive and log-likelihood groups too.
    :param mcmc_to_sites: turns the MCMC run's draws (site -> (chain, draw, ...)) into draws
        of ``model``'s own sites, for a run that sampled the model in other coordinates
        (:meth:`zoo.base.ZooModel.nuts_target`).
    """
    if (guide is None) == (mcmc is None):
        raise ValueError("give exactly one of guide= or mcmc=")
    pyro.set_rng_seed(seed)
    batch = full_batch(data)
    mpn = int(getattr(model, "max_plate_nesting", 1))
    names = site_names(model, guide, batch)
    sample_stats: dict[str, np.ndarray] = {}
    if mcmc is not None:
        by_chain = mcmc.get_samples(group_by_chain=True)
        if mcmc_to_sites is not None:
            by_chain = {k: torch.as_tensor(v) for k, v in mcmc_to_sites(by_chain).items()}
        chains, per_chain = next(iter(by_chain.values())).shape[:2]
        draws = {k: v.reshape((chains * per_chain,) + v.shape[2:]) for k, v in by_chain.items()}
        draws = _cut_to_rows(draws, model, batch)
        diverging = np.zeros((chains, per_chain), dtype=bool)
        for i, (_, steps) in enumerate(sorted(mcmc.diagnostics()["divergences"].items())):
            diverging[i, steps] = True
        sample_stats["diverging"] = diverging
    else:
        chains = 1
        draws = draw_latents(model, guide, data, num_draws)
    num = num_draws if mcmc is None else chains * per_chain
    replay = _replay(model, _as_traced(draws, model, guide, batch), batch, names, mpn, num)
    posterior_vars = _np({**draws, **replay["deterministic"]}, chains)
    sample_stats["lp"] = replay["lp"].cpu().numpy().reshape(chains, -1)
    observed = {k: batch[k].cpu().numpy() for k in names["observed"] if k in batch}
    constant = {k: v.cpu().numpy() for k, v in batch.items() if k not in names["observed"]}
    dims = dict(dims or {})
    return az.from_dict(
        posterior=posterior_vars,
        posterior_predictive=_np(replay["predictive"], chains),
        log_likelihood=_np(replay["log_lik"], chains),
        observed_data=observed,
        constant_data=constant or None,
        sample_stats=sample_stats,
        coords=dict(coords or {}),
        dims=dims,
    )


def load_example(name: str) -> dict[str, np.ndarray]:
    """Arrays of a data set bundled with ArviZ (no download), e.g. ``"centered_eight"``."""
    idata = az.load_arviz_data(name)
    arrays = {k: np.asarray(v) for k, v in idata.observed_data.data_vars.items()}
    if "constant_data" in idata.groups():
        arrays.update({k: np.asarray(v) for k, v in idata.constant_data.data_vars.items()})
    return arrays
