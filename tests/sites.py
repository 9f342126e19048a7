"""Trace helpers shared by the model tests."""

import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample


def latent_sites(trace) -> set[str]:
    """Names of the latent sample sites of a trace (no plate subsample, observed,
    deterministic or auxiliary sites)."""
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not isinstance(site["fn"], _Subsample)
        and not site["is_observed"]
        and not site["infer"].get("_deterministic")
        and not site["infer"].get("is_auxiliary")
    }


def traces(model, guide, batch):
    """``(model_trace, guide_trace)``: the guide run on ``batch`` and the model replayed."""
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    return model_trace, guide_trace
