"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018).

Draw parameters from the prior and data given them, fit, and record the rank of the true
value among the posterior draws. If the fitter samples the exact posterior the rank is
uniform on ``0..S`` for every scalar parameter. Three tests check that, Bonferroni-combined
per component: the mean of the normalised ranks (a posterior shifted off the truth), their
mean distance from 1/2 (a posterior too narrow or too wide) and a chi-square test on the rank
histogram (any other shape). Draws should be (roughly) independent: thin MCMC draws to about
their ESS.

A test that cannot fail shows nothing, so every result carries its *power*: the probability,
estimated by simulating ranks, that the same test (replicates, draws, bins, level) rejects a
posterior 1.5x too narrow, 1.5x too wide, or shifted by half a posterior sd. Below
``MIN_POWER`` the result is *underpowered* and :func:`sbc` warns.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

__all__ = [
    "sbc",
    "sbc_power",
    "SBCResult",
    "SBCPowerWarning",
    "rank_histogram",
    "uniformity_pvalue",
    "ALTERNATIVES",
    "MIN_POWER",
]

#: the miscalibrations the power is stated against: name -> (sd factor, shift in posterior sds)
ALTERNATIVES: dict[str, tuple[float, float]] = {
    "too_narrow": (1 / 1.5, 0.0),
    "too_wide": (1.5, 0.0),
    "shifted": (1.0, 0.5),
}
#: below this power against any alternative a result is reported as underpowered
MIN_POWER = 0.8
_POWER_SIMULATIONS = 2000


#: every finished run logs its one-line description here (the test suite prints them)
log = logging.getLogger(__name__)


class SBCPowerWarning(UserWarning):
    """An SBC run whose test would miss a plainly miscalibrated posterior too often."""


@dataclass
class SBCResult:
    """Ranks of the truth among ``num_draws`` posterior draws, per scalar component
    (``"mu"``, ``"theta[3]"``), over the replicates, and the uniformity p-values."""

    ranks: dict[str, np.ndarray]
    num_draws: int
    pvalues: dict[str, float]
    bins: int = 0
    alpha: float = 0.01
    power: dict[str, float] = field(default_factory=dict)

    @property
    def num_replicates(self) -> int:
        return len(next(iter(self.ranks.values()))) if self.ranks else 0

    def passed(self, alpha: float | None = None) -> bool:
        """True when no component's uniformity test rejects at level ``alpha`` (default: the
        level the power was computed at)."""
        alpha = self.alpha if alpha is None else alpha
        return all(p > alpha for p in self.pvalues.values())

    @property
    def min_power(self) -> float:
        return min(self.power.values()) if self.power else 0.0

    @property
    def underpowered(self) -> bool:
        return self.min_power < MIN_POWER

    def describe(self) -> str:
        """One line for reports and test output: verdict, replicates, power."""
        verdict = "passes" if self.passed() else "fails"
        power = ", ".join(f"{k} {v:.2f}" for k, v in self.power.items())
        flag = " (underpowered)" if self.underpowered else ""
        return (
            f"SBC {verdict} at alpha {self.alpha} ({self.num_replicates} replicates, "
            f"{self.num_draws} draws, {self.bins} bins); power against {power}{flag}"
        )


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


def _pvalues(ranks: np.ndarray, num_draws: int, bins: int) -> np.ndarray:
    """Bonferroni-combined p-values of the three uniformity tests, one per row of ``ranks``
    (shape ``(..., R)``)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    num = ranks.shape[-1]
    grid = (np.arange(num_draws + 1) + 0.5) / (num_draws + 1)  # normalised rank values
    u = grid[ranks]
    # location: mean of u; dispersion: mean of |u - 1/2|; both near-normal sums of R terms
    z_location = (u.mean(-1) - grid.mean()) / np.sqrt(grid.var() / num)
    spread = np.abs(grid - 0.5)
    z_dispersion = (np.abs(u - 0.5).mean(-1) - spread.mean()) / np.sqrt(spread.var() / num)
    which = np.arange(num_draws + 1) * bins // (num_draws + 1)
    expected = np.bincount(which, minlength=bins) / (num_draws + 1) * num
    binned = which[ranks]
    observed = (binned[..., None] == np.arange(bins)).sum(-2)
    chi2 = ((observed - expected) ** 2 / expected).sum(-1)
    p = np.stack(
        [
            2 * stats.norm.sf(np.abs(z_location)),
            2 * stats.norm.sf(np.abs(z_dispersion)),
            stats.chi2.sf(chi2, bins - 1),
        ]
    )
    return np.minimum(1.0, 3 * p.min(0))


def uniformity_pvalue(ranks: np.ndarray, num_draws: int, bins: int) -> float:
    """p-value that integer ranks in ``0..num_draws`` are uniform (see the module doc)."""
    return float(_pvalues(np.asarray(ranks)[None], num_draws, bins)[0])


def sbc_power(
    num_replicates: int, num_draws: int, *, alpha: float = 0.01, bins: int | None = None
) -> dict[str, float]:
    """Power of the SBC test per alternative in :data:`ALTERNATIVES`, by simulation.

    For a Gaussian posterior the rank of the truth among ``S`` draws of a miscalibrated one
    is Binomial(S, Phi((theta - shift) / factor)) with theta ~ N(0, 1) in posterior-sd
    units; the power is how often the test rejects such ranks at level ``alpha``.
    Deterministic (a fixed seed), so a test can assert it.
    """
    bins = _num_bins(num_replicates, num_draws) if bins is None else bins
    rng = np.random.default_rng(20180101)
    power = {}
    for name, (factor, shift) in ALTERNATIVES.items():
        theta = rng.standard_normal((_POWER_SIMULATIONS, num_replicates))
        ranks = rng.binomial(num_draws, stats.norm.cdf((theta - shift) / factor))
        power[name] = float((_pvalues(ranks, num_draws, bins) < alpha).mean())
    return power


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
    alpha: float = 0.01,
) -> SBCResult:
    """Run SBC.

    :param simulate: ``simulate(seed) -> (truth, data)``: parameters drawn from the prior
        (``truth[name]`` a tensor) and data drawn given them.
    :param fit_draws: ``fit_draws(data, seed) -> {name: draws}``, draws of shape
        ``(S, *truth[name].shape)`` from the fitted posterior; ``S`` fixed across replicates.
    :param num_replicates: number of simulated data sets.
    :param params: the parameter names to check (each scalar component separately).
    :param seed: replicate ``r`` uses ``seed + r`` for both the simulation and the fit.
    :param alpha: level of the test per component; the power is computed at this level.
        An underpowered run (power below ``MIN_POWER`` against any alternative) warns with
        :class:`SBCPowerWarning`.
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
    pvalues = {k: uniformity_pvalue(v, num_draws, bins) for k, v in arrays.items()}
    power = sbc_power(num_replicates, num_draws, alpha=alpha, bins=bins)
    result = SBCResult(
        ranks=arrays, num_draws=num_draws, pvalues=pvalues, bins=bins, alpha=alpha, power=power
    )
    log.info(result.describe())
    if result.underpowered:
        warnings.warn(
            f"{result.describe()}: below {MIN_POWER:.0%}, more replicates needed for the test "
            "to catch a miscalibrated posterior",
            SBCPowerWarning,
            stacklevel=2,
        )
    return result
