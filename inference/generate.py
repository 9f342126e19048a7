"""New data from a fitted generative model: global latents from the fit, everything under
the data plate drawn forward from the model.

A fit (a guide or posterior draws) says what the *global* latents are; new rows need new
*local* latents, drawn from the model's own prior given those globals, and new observations
given both. :func:`forward_trace` runs the model that way: observed sites are sampled
(``poutine.uncondition``, for data sites only) and the global sites are fixed to one fitted draw
(``poutine.condition``). Nothing here knows a particular model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch
from pyro import poutine
from pyro.poutine.uncondition_messenger import UnconditionMessenger

from inference.data import Batch
from inference.traces import is_sample_site, local_sites, sample_sites

__all__ = ["global_sites", "guide_globals", "draw_globals", "draws_from_idata", "forward_trace"]


def _trace(fn: Callable, batch: Batch):
    with poutine.block(), torch.no_grad():
        return poutine.trace(fn).get_trace(batch)


def global_sites(model: Callable, batch: Batch):
    """``(names, trace)``: the model's latent sample sites outside the data plate, from one
    run of the model on ``batch`` (observed fields as they are), and that run's trace."""
    trace = _trace(model, batch)
    local = set(local_sites(trace))
    return [n for n in sample_sites(trace, observed=False) if n not in local], trace


def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` in the shape the model gives the site (draws may have dropped or added
    singleton dimensions)."""
    value = torch.as_tensor(value, dtype=reference.dtype, device=reference.device)
    if value.shape != reference.shape and value.numel() == reference.numel():
        value = value.reshape(reference.shape)
    return value


def guide_globals(
    guide: Callable, batch: Batch, names: list[str], reference
) -> dict[str, torch.Tensor]:
    """One joint draw of the global sites ``names`` from a fitted guide run on ``batch``
    (a site the guide does not sample is left out: the model then draws it from its prior).
    ``reference`` is a model trace giving each site's shape."""
    trace = _trace(guide, batch)
    return {
        name: _like(trace.nodes[name]["value"], reference.nodes[name]["value"])
        for name in names
        if name in trace.nodes
    }


def draw_globals(
    draws: Mapping[str, torch.Tensor],
    names: list[str],
    reference,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One joint draw of the global sites ``names`` from posterior draws (e.g. NUTS),
    ``site -> (S, *shape)``: the same random index ``s`` for every site."""
    present = [n for n in names if n in draws]
    if not present:
        return {}
    size = len(draws[present[0]])
    s = int(torch.randint(size, (1,), generator=generator))
    return {name: _like(draws[name][s], reference.nodes[name]["value"]) for name in present}


class _Unobserve(UnconditionMessenger):
    """``poutine.uncondition`` for data sites only: deterministic sites and factors (a
    ``pyro.factor``'s ``Unit`` site) keep their values; with ``names``, only those sites
    are sampled."""

    def __init__(self, names: Collection[str] | None = None):
        super().__init__()
        self.names = None if names is None else set(names)

    def _pyro_sample(self, msg) -> None:
        if not is_sample_site(msg) or (self.names is not None and msg["name"] not in self.names):
            return
        super()._pyro_sample(msg)


def forward_trace(
    model: Callable,
    batch: Batch,
    values: Mapping[str, torch.Tensor],
    *,
    observed: Collection[str] | None = None,
):
    """The trace of ``model`` on ``batch`` with its observed sites (those named in
    ``observed``, default every data site) sampled from their distributions, the batch's
    observed values ignored, and the sites in ``values`` fixed to them: a draw of new data
    given those (global) values."""
    # unobserve innermost: it frees the data sites first, then condition fixes the values
    fn = poutine.condition(_Unobserve(observed)(model), data=dict(values))
    return _trace(fn, batch)


def draws_from_idata(idata) -> dict[str, torch.Tensor]:
    """The posterior group of an ``arviz.InferenceData`` as ``site -> (chains * draws,
    *shape)`` tensors (the form :func:`draw_globals` takes)."""
    out = {}
    for name, var in idata.posterior.data_vars.items():
        values = torch.as_tensor(var.values)
        out[str(name)] = values.reshape((-1, *values.shape[2:]))
    return out
