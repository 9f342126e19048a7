"""NUTS for the models small enough for it."""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_median, init_to_value
from torch import nn

from inference.data import full_batch
from inference.traces import sample_sites

__all__ = ["nuts", "quiet_nuts", "independent_chains"]


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
    dense_mass: bool = False,
    init_values: Mapping[str, torch.Tensor] | None = None,
    jit_compile: bool = True,
    progress: bool = True,
) -> MCMC:
    """Run NUTS on ``model`` with all of ``data`` as one batch; return the finished MCMC.

    ``dense_mass`` adapts a full mass matrix in warmup: worth its O(D^2) cost when the
    posterior has strongly correlated directions (a diagonal one then leaves NUTS at its
    maximal tree depth with a random-walk ESS). ``init_values`` start every chain at the
    given site values (e.g. a point estimate, or a labelling that rules out label
    switching); sites not named start at the prior median.

    Chains run in parallel processes when the machine has a core per chain to spare, and
    one after another otherwise (Pyro's choice).
    """
    for name, value in (("chains", chains), ("warmup", warmup), ("draws", draws)):
        if not isinstance(value, int) or value < (1 if name != "warmup" else 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    median = init_to_median(num_samples=15)
    if init_values is None:
        init_strategy = median
    else:
        if not isinstance(init_values, Mapping):
            raise TypeError(f"init_values must map site names to tensors, got {init_values!r}")
        values = {name: torch.as_tensor(v) for name, v in init_values.items()}
        trace = poutine.trace(model).get_trace(full_batch(data))
        latent = sample_sites(trace, observed=False)  # no plates' subsample sites
        unknown = sorted(set(values) - set(latent))
        if unknown:
            raise ValueError(
                f"init_values name {unknown}, not latent sites of the model {sorted(latent)}"
            )
        bad = [name for name, v in values.items() if not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"init_values must be finite; not so for {bad}")
        init_strategy = init_to_value(values=values, fallback=median)
    pyro.set_rng_seed(seed)
    kernel = NUTS(
        model,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        full_mass=dense_mass,
        jit_compile=jit_compile,
        ignore_jit_warnings=True,
        init_strategy=init_strategy,
    )
    with warnings.catch_warnings():
        # chains run one after another on fewer cores: what the caller asked, not a problem
        warnings.filterwarnings("ignore", message="num_chains=", category=UserWarning)
        mcmc = MCMC(
            kernel,
            num_samples=draws,
            warmup_steps=warmup,
            num_chains=chains,
            disable_progbar=not progress,
        )
    mcmc.run(full_batch(data))
    return mcmc


def quiet_nuts(model: nn.Module, data: Mapping[str, torch.Tensor], **options) -> MCMC:
    """:func:`nuts` with Pyro's warnings silenced: chains drawn one after another on fewer
    cores than chains, and step-size adaptation notes. For the many short runs of SBC,
    reference posteriors and tests, where the result's own diagnostics say what matters."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nuts(model, data, **options)


#: the run a forked worker of :func:`independent_chains` draws one chain of (fork shares it,
#: so neither the model nor the data is pickled)
_CHAIN_JOB: tuple[Callable, Mapping[str, torch.Tensor], dict] | None = None


def _one_chain(seed: int) -> tuple[dict[str, np.ndarray], int]:
    from inference.reference import mcmc_draws

    model, data, options = _CHAIN_JOB
    draws, divergent = mcmc_draws(quiet_nuts(model, data, chains=1, seed=seed, **options))
    return {k: v[0] for k, v in draws.items()}, divergent


def independent_chains(
    model: Callable,
    data: Mapping[str, torch.Tensor],
    *,
    chains: int = 4,
    seed: int = 0,
    processes: int | None = None,
    **options,
) -> tuple[dict[str, np.ndarray], int]:
    """``chains`` single-chain runs of :func:`quiet_nuts`, chain ``i`` seeded ``seed + i``,
    each in its own forked process, up to ``processes`` at a time (default: one a core);
    returns the draws ``(chain, draw, *site)`` and the number of divergent transitions.

    Pyro draws chains in parallel only with a core to spare per chain (on 2 cores, one after
    another); these use every core. Each chain's seed is its own, so the number of
    processes changes no chain's draws."""
    global _CHAIN_JOB
    if not isinstance(chains, int) or chains < 1:
        raise ValueError(f"chains must be a positive integer, got {chains!r}")
    if processes is not None and (not isinstance(processes, int) or processes < 1):
        raise ValueError(f"processes must be a positive integer or None, got {processes!r}")
    processes = min(chains, processes or os.cpu_count() or 1)
    _CHAIN_JOB = (model, data, options)
    try:
        if processes == 1:
            runs = [_one_chain(seed + i) for i in range(chains)]
        else:
            # one thread a chain: a chain a core, and a forked OpenMP pool can hang
            fork = multiprocessing.get_context("fork")
            with fork.Pool(processes, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                runs = pool.map(_one_chain, [seed + i for i in range(chains)], chunksize=1)
    finally:
        _CHAIN_JOB = None
    draws = {k: np.stack([run[k] for run, _ in runs]) for k in runs[0][0]}
    return draws, sum(divergent for _, divergent in runs)
