"""``zoo reproduce NAME``: run a recipe over seeds and write its results file, refusing bad
requests before any training and never replacing a good file with a failed run."""

from __future__ import annotations

import datetime
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["reproduce", "check_request", "DEFAULT_RESULTS", "QUICK_RESULTS"]

#: where full runs write, relative to the working directory (the repository root)
DEFAULT_RESULTS = Path("results")
#: where --quick runs write by default, so a smoke run never replaces evidence
QUICK_RESULTS = DEFAULT_RESULTS / "quick"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write results to '{folder}': {error.strerror or error}") from None


def check_seeds(seeds: int | None, default: int, quick: bool, what: str) -> list[int]:
    """Seeds ``0..N-1``; N at least 3 outside --quick, since ``what`` is a mean over them."""
    count = default if seeds is None else seeds
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    if not quick and count < 3:
        raise ValueError(
            f"--seeds {count}: {what} is a mean over at least 3 seeds (--quick runs accept fewer)"
        )
    return list(range(count))


def results_folder(out: str | Path | None, quick: bool, sub: str = "") -> Path:
    """The folder a run writes to, checked to be writable before any work."""
    base = Path(out) if out is not None else (QUICK_RESULTS if quick else DEFAULT_RESULTS)
    folder = base / sub if sub else base
    _check_writable(folder)
    return folder


def check_request(name: str, seeds: int | None, quick: bool, out: str | Path | None):
    """The recipe, seed list and results folder of a request; one clear error otherwise."""
    from zoo.evidence.recipes import get_recipe

    found = get_recipe(name)
    seed_list = check_seeds(seeds, found.seeds, quick, "a headline figure")
    return found, seed_list, results_folder(out, quick)


def _as_float(key: str, value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"figure '{key}' is not a number: {value!r}") from None
    return number if math.isfinite(number) else None


def reproduce(
    name: str,
    *,
    seeds: int | None = None,
    quick: bool = False,
    out: str | Path | None = None,
    log=None,
) -> tuple[Path, Path]:
    """Run model ``name``'s recipe over seeds ``0..seeds-1``; write ``NAME.json`` and
    ``NAME.md`` (and ``NAME/`` with the recipe's artifacts) into ``out``. Returns the two
    file paths. Files from an earlier run are replaced only once every seed has finished."""
    import pyro

    from zoo.evidence.recipes import RunContext
    from zoo.evidence.results import FORMAT_VERSION, provenance, summarise, write_results

    found, seed_list, folder = check_request(name, seeds, quick, out)
    settings = found.settings_for(quick)
    origin = provenance()  # the code that runs is the code at the start
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.artifacts-"))
    try:
        context = RunContext(quick=quick, settings=dict(settings), artifacts=staging)
        per_seed: list[dict[str, float | None]] = []
        started = time.perf_counter()
        for seed in seed_list:
            tick = time.perf_counter()
            pyro.set_rng_seed(seed)
            figures = found.run(seed, context)
            per_seed.append({k: _as_float(k, v) for k, v in figures.items()})
            print(
                f"{name}: seed {seed} done in {time.perf_counter() - tick:.1f} s",
                file=log or sys.stderr,
            )
        wall = time.perf_counter() - started
        keys = list(dict.fromkeys(k for figures in per_seed for k in figures))
        missing = [f.key for f in found.headline if f.key not in keys]
        if missing:
            raise KeyError(f"recipe {name} returned no headline figure {missing}")
        command = f"zoo reproduce {name} --seeds {len(seed_list)}" + (" --quick" if quick else "")
        results: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "model": name,
            "command": command,
            "quick": quick,
            "claim": found.claim,
            "paper": found.paper,
            "data": found.data,
            "seeds": seed_list,
            "settings": {k: _jsonable(v) for k, v in settings.items()},
            "headline": [
                {"key": f.key, "label": f.label, "digits": f.digits} for f in found.headline
            ],
            "figures": {k: summarise([fig.get(k) for fig in per_seed]) for k in keys},
            "wall_time_s": round(wall, 1),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            **origin,
        }
        paths = write_results(results, folder)
        _publish_artifacts(staging, folder / name)
        return paths
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_artifacts(staging: Path, target: Path) -> None:
    if not any(staging.iterdir()):
        return
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
