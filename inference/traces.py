"""The one vocabulary for reading a model's or guide's trace: which sites are latent, which
observed, which local (under the data plate), built on :mod:`pyro.poutine.util`; plus the
base distribution of a site and its values with the rows first (the latent diagnostics)."""

from __future__ import annotations

import torch
from pyro.poutine.util import site_is_factor, site_is_subsample
from torch.distributions import Independent

from inference.data import DATA_PLATE

__all__ = [
    "DATA_PLATE",
    "is_sample_site",
    "unwrap_independent",
    "sample_sites",
    "latent_sites",
    "observed_sites",
    "local_sites",
    "rows_first",
]


def unwrap_independent(fn) -> tuple[torch.distributions.Distribution, int]:
    """The base distribution under ``Independent`` wrappers and the event dims it folded."""
    event = 0
    while isinstance(fn, Independent):
        event += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event


def is_sample_site(site) -> bool:
    """A draw of the model's story: a sample site that is no plate's subsample, no
    ``pyro.factor`` (nor other auxiliary site) and no ``pyro.deterministic`` record."""
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site_is_factor(site)
        and not site["infer"].get("_deterministic")
        and not site["infer"].get("is_auxiliary")
    )


def sample_sites(trace, *, observed: bool) -> list[str]:
    """The observed or the latent sample sites of a trace (see :func:`is_sample_site`)."""
    return [
        name
        for name, site in trace.nodes.items()
        if is_sample_site(site) and bool(site["is_observed"]) == observed
    ]


def latent_sites(trace) -> list[str]:
    """The latent sample sites of a trace."""
    return sample_sites(trace, observed=False)


def observed_sites(trace) -> list[str]:
    """The observed sample sites of a trace (``obs=``)."""
    return sample_sites(trace, observed=True)


def local_sites(trace) -> list[str]:
    """Latent sample sites under the data plate."""
    return [
        name
        for name in sample_sites(trace, observed=False)
        if any(f.name == DATA_PLATE for f in trace.nodes[name]["cond_indep_stack"])
    ]


def rows_first(value: torch.Tensor, event: int, rows: int) -> torch.Tensor:
    """(..., N, *event) per-dimension values -> (N, D): the data plate is the last batch dim."""
    value = value.movedim(-(event + 1), 0) if value.dim() > event else value
    if value.shape[0] != rows:
        value = value.expand((rows,) + value.shape[1:]) if value.shape[0] == 1 else value
    return value.reshape(rows, -1)
