"""SBC inside a recipe: the real fitter's draws and the same draws made 1.5x too narrow are
ranked on the same replicates, so the results file shows both the verdict and that the test
can fail."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from inference.diagnostics.sbc import SBCPowerWarning, SBCResult, sbc

__all__ = ["sbc_figures", "narrowed", "thinned_nuts_draws"]


def narrowed(draws: Mapping[str, torch.Tensor], factor: float = 1.5) -> dict[str, torch.Tensor]:
    """Draws shrunk about their mean by ``factor`` (on the log scale for positive ones): an
    over-confident posterior with the same centre."""
    out = {}
    for name, value in draws.items():
        positive = bool((value > 0).all())
        x = value.log() if positive else value
        x = x.mean(0) + (x - x.mean(0)) / factor
        out[name] = x.exp() if positive else x
    return out


def thinned_nuts_draws(
    model, data, *, seed: int, warmup: int, draws: int, thin: int, **options
) -> dict[str, torch.Tensor]:
    """One NUTS chain's draws, every ``thin``-th kept: the roughly independent draws SBC
    ranks the truth among."""
    from inference.mcmc import quiet_nuts

    mcmc = quiet_nuts(
        model, data, chains=1, warmup=warmup, draws=draws, seed=seed, progress=False, **options
    )
    return {k: v[::thin] for k, v in mcmc.get_samples().items()}


def sbc_figures(
    simulate: Callable,
    fit_draws: Callable[[Mapping, int], Mapping[str, torch.Tensor]],
    *,
    num_replicates: int,
    params: Sequence[str],
    seed: int,
    prefix: str = "sbc",
) -> tuple[dict[str, float], SBCResult]:
    """Run SBC of ``fit_draws`` and of its 1.5x-narrowed draws on the same replicates.

    Figures: the smallest p-value over components, pass (1) or fail (0) at the result's
    level, the power against each stated alternative, and whether the narrowed posterior
    was rejected (1) — the test's power shown on this model rather than simulated.
    """
    cache: dict[int, Mapping[str, torch.Tensor]] = {}

    def cached(data, replicate_seed):
        if replicate_seed not in cache:
            cache[replicate_seed] = fit_draws(data, replicate_seed)
        return cache[replicate_seed]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SBCPowerWarning)  # the power is a figure here
        result = sbc(simulate, cached, num_replicates=num_replicates, params=params, seed=seed)
        too_narrow = sbc(
            simulate,
            lambda data, s: narrowed(cached(data, s)),
            num_replicates=num_replicates,
            params=params,
            seed=seed,
        )
    figures = {
        f"{prefix}/min_pvalue": min(result.pvalues.values()),
        f"{prefix}/passed": float(result.passed()),
        f"{prefix}/narrowed_rejected": float(not too_narrow.passed()),
        f"{prefix}/replicates": float(num_replicates),
    }
    figures |= {f"{prefix}/power/{k}": v for k, v in result.power.items()}
    return figures, result
