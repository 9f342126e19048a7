"""NUTS for the models small enough for it."""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_median
from torch import nn

from inference.data import full_batch

__all__ = ["nuts"]


def nuts(
    model: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = True,
    progress: bool = True,
) -> MCMC:
    """Run NUTS on ``model`` with all of ``data`` as one batch; return the finished MCMC.

    Chains run in parallel processes when the machine has a core per chain to spare, and
    one after another otherwise (Pyro's choice).
    """
    for name, value in (("chains", chains), ("warmup", warmup), ("draws", draws)):
        if not isinstance(value, int) or value < (1 if name != "warmup" else 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    pyro.set_rng_seed(seed)
    kernel = NUTS(
        model,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        jit_compile=jit_compile,
        ignore_jit_warnings=True,
        init_strategy=init_to_median(num_samples=15),
    )
    mcmc = MCMC(
        kernel,
        num_samples=draws,
        warmup_steps=warmup,
        num_chains=chains,
        disable_progbar=not progress,
    )
    mcmc.run(full_batch(data))
    return mcmc
