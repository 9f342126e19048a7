"""Trace helpers shared by the model tests (the site vocabulary is inference.traces')."""

import torch
from pyro import poutine

from inference.traces import latent_sites as _latent_sites


def latent_sites(trace) -> set[str]:
    """Names of the latent sample sites of a trace (no plate subsample, observed,
    deterministic, factor or auxiliary sites)."""
    return set(_latent_sites(trace))


def traces(model, guide, batch):
    """``(model_trace, guide_trace)``: the guide run on ``batch`` and the model replayed."""
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    return model_trace, guide_trace
