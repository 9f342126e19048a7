"""Reference posteriors: NUTS draws certified the way posteriordb certifies its references
(several chains, R-hat below 1.01, a bulk ESS of thousands, no divergences), kept as a
file, and an approximate posterior graded against them in units of the reference's sds.

Draws here are plain NumPy arrays shaped ``(chain, draw, *site)``; every ArviZ call of the
zoo stays inside :mod:`inference`.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference.posterior import az

__all__ = [
    "Criteria",
    "certify",
    "grade",
    "mcmc_draws",
    "save_draws",
    "load_draws",
]


@dataclass(frozen=True)
class Criteria:
    """What a reference must reach (posteriordb's standard by default)."""

    min_chains: int = 4
    max_rhat: float = 1.01
    min_ess_bulk: float = 2000.0
    max_divergences: int = 0


def _flat(draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every site as ``(chain, draw, components)``."""
    out = {}
    for name, value in draws.items():
        value = np.asarray(value, dtype=float)
        out[name] = value.reshape(value.shape[:2] + (-1,))
    return out


def certify(
    draws: Mapping[str, np.ndarray], divergences: int, criteria: Criteria = Criteria()
) -> dict:
    """The certificate of reference draws: chains, draws per chain, the worst rank-normalized
    R-hat and the smallest bulk ESS over every scalar component, the divergences, whether
    each criterion holds and ``certified`` when all do (with the reasons when not)."""
    flat = _flat(draws)
    chains, per_chain = next(iter(flat.values())).shape[:2]
    dataset = az.convert_to_dataset({k: v for k, v in flat.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one chain: R-hat is NaN, and the check says so
        rhat = az.rhat(dataset)
        ess = az.ess(dataset, method="bulk")
    worst_rhat = max(float(np.nanmax(np.asarray(rhat[k]), initial=-np.inf)) for k in flat)
    if chains < 2 or not np.isfinite(worst_rhat):
        worst_rhat = float("nan")
    min_ess = min(float(np.min(np.asarray(ess[k]))) for k in flat)
    failures = []
    if chains < criteria.min_chains:
        failures.append(f"{chains} chains < {criteria.min_chains}")
    if not worst_rhat < criteria.max_rhat:
        failures.append(f"worst R-hat {worst_rhat:.3f} not < {criteria.max_rhat}")
    if not min_ess >= criteria.min_ess_bulk:
        failures.append(f"smallest bulk ESS {min_ess:.0f} < {criteria.min_ess_bulk:.0f}")
    if divergences > criteria.max_divergences:
        failures.append(f"{divergences} divergences > {criteria.max_divergences}")
    return {
        "chains": int(chains),
        "draws_per_chain": int(per_chain),
        "rhat_max": worst_rhat,
        "ess_bulk_min": min_ess,
        "divergences": int(divergences),
        "criteria": asdict(criteria),
        "certified": not failures,
        "failures": failures,
    }


def grade(reference: Mapping[str, np.ndarray], approx: Mapping[str, np.ndarray]) -> dict:
    """How far ``approx``'s draws are from the reference, per scalar component of the sites
    both have, in units of the reference's posterior sd: the largest and the median
    ``|mean_q - mean_ref| / sd_ref``, and the worst ``|sd_q / sd_ref - 1|`` (1 for a point
    mass). Both arguments map sites to ``(chain, draw, *site)`` arrays."""
    ref, q = _flat(reference), _flat(approx)
    shared = [k for k in ref if k in q]
    if not shared:
        raise ValueError(f"no site in common: reference {sorted(ref)}, approximation {sorted(q)}")
    errors, deviations = [], []
    for name in shared:
        r = ref[name].reshape(-1, ref[name].shape[-1])
        a = q[name].reshape(-1, q[name].shape[-1])
        sd = r.std(0)
        sd = np.where(sd > 0, sd, np.finfo(float).tiny)
        errors.append(np.abs(a.mean(0) - r.mean(0)) / sd)
        deviations.append(np.abs(a.std(0) / sd - 1.0))
    errors, deviations = np.concatenate(errors), np.concatenate(deviations)
    return {
        "mean_error_max": float(errors.max()),
        "mean_error_median": float(np.median(errors)),
        "sd_ratio_worst_deviation": float(deviations.max()),
        "components": int(errors.size),
    }


def mcmc_draws(mcmc) -> tuple[dict[str, np.ndarray], int]:
    """A finished Pyro MCMC run's latent draws ``(chain, draw, *site)`` and its number of
    divergent transitions."""
    by_chain = mcmc.get_samples(group_by_chain=True)
    draws = {k: v.detach().cpu().numpy() for k, v in by_chain.items()}
    divergent = sum(len(steps) for steps in mcmc.diagnostics()["divergences"].values())
    return draws, int(divergent)


def thin_to_fit(draws: Mapping[str, np.ndarray], max_bytes: int) -> tuple[dict, int]:
    """Every ``k``-th draw of each chain, ``k`` the smallest that keeps the float32 draws
    under ``max_bytes``; returns the thinned draws and ``k``."""
    size = sum(np.asarray(v).size for v in draws.values()) * 4
    step = max(1, int(np.ceil(size / max_bytes)))
    return {k: np.asarray(v)[:, ::step] for k, v in draws.items()}, step


def save_draws(path: Path | str, draws: Mapping[str, np.ndarray]) -> None:
    """Write draws as a compressed ``.npz`` of float32 arrays ``(chain, draw, *site)``,
    replaced in one step (an interrupted write leaves the older file)."""
    path = Path(path)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v, dtype=np.float32) for k, v in draws.items()})
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_draws(path: Path | str) -> dict[str, np.ndarray]:
    """The draws :func:`save_draws` wrote."""
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}
