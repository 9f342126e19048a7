"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018).

Draw parameters from the prior and data given them, fit, and record the rank of the true
value among the posterior draws. If the fitter samples the exact posterior the rank is
uniform on ``0..S`` for every scalar parameter; a chi-square test on a rank histogram
checks that. Draws should be (roughly) independent: thin MCMC draws to about their ESS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

__all__ = ["sbc", "SBCResult", "rank_histogram"]


@dataclass
class SBCResult:
    """Ranks of the truth among ``num_draws`` posterior draws, per scalar component
    (``"mu"``, ``"theta[3]"``), over the replicates, and the uniformity p-values."""

    ranks: dict[str, np.ndarray]
    num_draws: int
    pvalues: dict[str, float]
    bins: int = 0

    @property
    def num_replicates(self) -> int:
        return len(next(iter(self.ranks.values()))) if self.ranks else 0

    def passed(self, alpha: float = 0.01) -> bool:
        """True when no component's uniformity test rejects at level ``alpha``."""
        return all(p > alpha for p in self.pvalues.values())


def _num_bins(num_replicates: int, num_draws: int) -> int:
    """About 5 expected ranks per bin or more, at most 20 bins and at most S + 1."""
    return int(max(2, min(20, num_replicates // 5, num_draws + 1)))


def rank_histogram(ranks: np.ndarray, num_draws: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed and (under uniformity) expected counts of integer ranks in ``0..num_draws``
    grouped into ``bins`` bins of (nearly) equal numbers of rank values."""
    ranks = np.asarray(ranks, dtype=np.int64)
    values = np.arange(num_draws + 1)
    which = values * bins // (num_draws + 1)  # bin of each possible rank value
    observed = np.bincount(which[ranks], minlength=bins).astype(float)
    expected = np.bincount(which, minlength=bins) / (num_draws + 1) * len(ranks)
    return observed, expected


def _uniformity_pvalue(ranks: np.ndarray, num_draws: int, bins: int) -> float:
    observed, expected = rank_histogram(ranks, num_draws, bins)
    return float(stats.chisquare(observed, expected).pvalue)


def _components(name: str, value: np.ndarray) -> list[tuple[str, tuple]]:
    if value.ndim == 0:
        return [(name, ())]
    return [(f"{name}[{','.join(map(str, idx))}]", idx) for idx in np.ndindex(*value.shape)]


def _np(value) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=float)


def sbc(
    simulate: Callable[[int], tuple[Mapping[str, torch.Tensor], Mapping]],
    fit_draws: Callable[[Mapping, int], Mapping[str, torch.Tensor]],
    *,
    num_replicates: int,
    params: Sequence[str],
    seed: int = 0,
) -> SBCResult:
    """Run SBC.

    :param simulate: ``simulate(seed) -> (truth, data)``: parameters drawn from the prior
        (``truth[name]`` a tensor) and data drawn given them.
    :param fit_draws: ``fit_draws(data, seed) -> {name: draws}``, draws of shape
        ``(S, *truth[name].shape)`` from the fitted posterior; ``S`` fixed across replicates.
    :param num_replicates: number of simulated data sets.
    :param params: the parameter names to check (each scalar component separately).
    :param seed: replicate ``r`` uses ``seed + r`` for both the simulation and the fit.
    """
    if not isinstance(num_replicates, int) or num_replicates < 2:
        raise ValueError(f"num_replicates must be an integer >= 2, got {num_replicates!r}")
    if not params:
        raise ValueError("params must name at least one parameter")
    rng = np.random.default_rng(seed)
    ranks: dict[str, list[int]] = {}
    num_draws: int | None = None
    for r in range(num_replicates):
        truth, data = simulate(seed + r)
        draws = fit_draws(data, seed + r)
        for name in params:
            if name not in truth:
                raise KeyError(f"simulate returned no truth for '{name}'; got {sorted(truth)}")
            if name not in draws:
                raise KeyError(f"fit_draws returned no draws for '{name}'; got {sorted(draws)}")
            true = _np(truth[name])
            sample = _np(draws[name])
            if sample.shape[1:] != true.shape:
                raise ValueError(
                    f"draws of '{name}' have shape {sample.shape}; expected "
                    f"(S, {', '.join(map(str, true.shape))}) to match the truth"
                )
            if num_draws is None:
                num_draws = sample.shape[0]
            elif sample.shape[0] != num_draws:
                raise ValueError(
                    f"replicate {r} returned {sample.shape[0]} draws of '{name}', "
                    f"earlier ones {num_draws}; SBC needs the same number every time"
                )
            below = (sample < true).sum(0)
            ties = (sample == true).sum(0)
            # ties (discrete parameters) are broken uniformly at random
            rank = below + rng.integers(0, ties + 1)
            for key, idx in _components(name, true):
                ranks.setdefault(key, []).append(int(np.asarray(rank)[idx]))
    assert num_draws is not None
    bins = _num_bins(num_replicates, num_draws)
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in ranks.items()}
    pvalues = {k: _uniformity_pvalue(v, num_draws, bins) for k, v in arrays.items()}
    return SBCResult(ranks=arrays, num_draws=num_draws, pvalues=pvalues, bins=bins)
