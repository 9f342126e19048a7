"""ArviZ summaries: R-hat and ESS, divergences, PSIS-LOO."""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np

from inference.posterior import az

__all__ = ["summary", "divergences", "loo", "min_ess_bulk", "quiet_arviz"]


@contextlib.contextmanager
def quiet_arviz():
    """ArviZ's warnings (a single-chain R-hat, ...) silenced: its logger is a ``Logger``
    built outside the logging registry, so ``logging.getLogger("arviz")`` does not reach it."""
    loggers = {id(x): x for x in (getattr(az, "_log", None), logging.getLogger("arviz")) if x}
    below_error = _BelowError()
    levels = {key: logger.level for key, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
        logger.addFilter(below_error)  # also holds if something resets the level meanwhile
    try:
        yield
    finally:
        for key, logger in loggers.items():
            logger.removeFilter(below_error)
            logger.setLevel(levels[key])


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def summary(idata, var_names: list[str] | None = None):
    """ArviZ's summary table (mean, sd, HDI, MCSE, ESS bulk/tail, R-hat) as a DataFrame."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R-hat of a single chain warns; the table says NaN
        return az.summary(idata, var_names=var_names)


def divergences(idata) -> int:
    """Number of divergent transitions (0 for a variational posterior)."""
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "diverging" not in stats:
        return 0
    return int(np.asarray(stats["diverging"]).sum())


def loo(idata) -> dict[str, float]:
    """PSIS-LOO: elpd_loo, its standard error, p_loo and the worst Pareto k."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns on high k; the returned k says it
        result = az.loo(idata, pointwise=True)
    return {
        "elpd_loo": float(result["elpd_loo"]),
        "se": float(result["se"]),
        "p_loo": float(result["p_loo"]),
        "max_pareto_k": float(np.max(np.asarray(result["pareto_k"]))),
    }


def min_ess_bulk(draws: dict[str, np.ndarray]) -> float:
    """Smallest bulk ESS over every scalar component of ``draws`` (arrays shaped (chain,
    draw, ...)), e.g. for draws made by another library."""
    dataset = az.convert_to_dataset({k: np.asarray(v) for k, v in draws.items()})
    ess = az.ess(dataset, method="bulk")
    return float(min(float(ess[name].min()) for name in ess.data_vars))
