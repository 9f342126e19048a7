"""Reading a model's or guide's trace: its local (data-plate) latent sites, their base
distributions, and their values with the rows first. Shared by the latent diagnostics."""

from __future__ import annotations

import torch
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import Independent

__all__ = ["DATA_PLATE", "unwrap_independent", "sample_sites", "local_sites", "rows_first"]

DATA_PLATE = "data"


def unwrap_independent(fn) -> tuple[torch.distributions.Distribution, int]:
    """The base distribution under ``Independent`` wrappers and the event dims it folded."""
    event = 0
    while isinstance(fn, Independent):
        event += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event


def sample_sites(trace, *, observed: bool) -> list[str]:
    """The observed or the latent sample sites of a trace; subsample, deterministic and
    auxiliary sites are neither."""
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and bool(site["is_observed"]) == observed
        and not isinstance(site["fn"], _Subsample)
        and not site["infer"].get("_deterministic")
        and not site["infer"].get("is_auxiliary")
    ]


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
