"""Posterior collapse: KL per latent dimension and active units of local latents.

Active units (Burda, Grosse & Salakhutdinov 2016, "Importance weighted autoencoders"):
dimension d of z is active when ``Cov_x(E_q[z_d | x]) > threshold`` (0.01 in the paper);
a collapsed dimension has ``q(z_d | x) = p(z_d)`` for every x, so its KL is 0 and its
posterior mean does not move with x.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pyro import poutine
from pyro.distributions import Delta
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn
from torch.distributions import Independent, kl_divergence

from inference.data import full_batch

__all__ = ["latent_activity"]

DATA_PLATE = "data"


def _unwrap(fn) -> tuple[torch.distributions.Distribution, int]:
    """The base distribution under ``Independent`` wrappers and the event dims it folded."""
    event = 0
    while isinstance(fn, Independent):
        event += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event


def _local_sites(trace) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not isinstance(site["fn"], _Subsample)
        and not site["infer"].get("_deterministic")
        and not site["infer"].get("is_auxiliary")
        and any(f.name == DATA_PLATE for f in site["cond_indep_stack"])
    ]


def _rows_first(value: torch.Tensor, event: int, rows: int) -> torch.Tensor:
    """(..., N, *event) per-dimension values -> (N, D): the data plate is the last batch dim."""
    value = value.movedim(-(event + 1), 0) if value.dim() > event else value
    if value.shape[0] != rows:
        value = value.expand((rows,) + value.shape[1:]) if value.shape[0] == 1 else value
    return value.reshape(rows, -1)


def latent_activity(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    sites: Sequence[str] | None = None,
    threshold: float = 0.01,
    num_particles: int = 1,
) -> dict[str, dict]:
    """KL per latent dimension and active units of the local (data-plate) latents.

    The guide is traced on all of ``data`` as one batch and the model replayed on it; for
    each site the per-row ``q(z | x_n)`` and ``p(z)`` (after unwrapping ``Independent``)
    give ``KL(q || p)`` per dimension, analytic where torch knows it and otherwise a Monte
    Carlo estimate from ``num_particles`` draws of q, averaged over the rows.

    :param sites: the local sites to report (default: every latent site under the data plate).
    :param threshold: a dimension is active when the variance over rows of its posterior
        mean exceeds this.
    :returns: ``{site: {"kl_per_dim": list, "active": list[bool], "active_units": int,
        "total_kl": float}}``; ``total_kl`` is the sum over dimensions (nats per row).
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    batch = full_batch(data)
    rows = batch.batch_size
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    local = _local_sites(guide_trace)
    if sites is None:
        sites = local
    else:
        unknown = [s for s in sites if s not in local]
        if unknown:
            raise ValueError(f"site(s) {unknown} are not local latent sites; local sites: {local}")
    if not sites:
        raise ValueError("the guide has no latent sites under the data plate")
    out: dict[str, dict] = {}
    for name in sites:
        q, q_event = _unwrap(guide_trace.nodes[name]["fn"])
        p, _ = _unwrap(model_trace.nodes[name]["fn"])
        if isinstance(q, Delta):
            raise ValueError(
                f"the guide gives site '{name}' no density of its own (a joint or point-mass "
                "guide); latent_activity needs a per-site q(z | x)"
            )
        with torch.no_grad():
            try:
                kl = kl_divergence(q, p)
            except NotImplementedError:
                z = q.sample((num_particles,))
                kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
            try:
                mean = q.mean
            except NotImplementedError:
                mean = q.sample((max(num_particles, 16),)).mean(0)
        kl = _rows_first(kl.expand(q.batch_shape), q_event, rows)
        mean = _rows_first(mean.expand(q.batch_shape), q_event, rows)
        kl_per_dim = kl.mean(0).double()
        activity = mean.double().var(0, unbiased=False)
        active = (activity > threshold).tolist()
        out[name] = {
            "kl_per_dim": kl_per_dim.tolist(),
            "active": active,
            "active_units": int(sum(active)),
            "total_kl": float(kl_per_dim.sum()),
        }
    return out
