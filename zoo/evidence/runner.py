"""``zoo reproduce NAME``: run a recipe over seeds and write its results file, refusing bad
requests before any training and never replacing a good file with a failed run."""

from __future__ import annotations

import datetime
import json
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
    file paths. Files from an earlier run are replaced only once every seed has finished.

    Each finished seed is saved beside them (``.NAME.progress.json``, the artifacts in
    ``.NAME.staging/``): a run that stopped (Ctrl-C, a crash, a machine that went away) and
    is started again from the same commit of a clean tree with the same settings keeps
    those seeds and runs only the others. Both are removed when the run completes."""
    import pyro

    from zoo.evidence.recipes import RunContext
    from zoo.evidence.results import FORMAT_VERSION, provenance, summarise, write_results

    found, seed_list, folder = check_request(name, seeds, quick, out)
    settings = found.settings_for(quick)
    origin = provenance()  # the code that runs is the code at the start
    progress = folder / f".{name}.progress.json"
    key = _resume_key(name, quick, settings, origin)
    done = _finished_seeds(progress, key, seed_list)
    staging = folder / f".{name}.staging"
    if not done or not staging.is_dir():
        done = {}  # artifacts of the kept seeds are gone: run every seed again
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    context = RunContext(quick=quick, settings=dict(settings), artifacts=staging)
    per_seed: list[dict[str, float | None]] = []
    seconds: dict[int, float] = {}
    for seed in seed_list:
        if seed in done:
            per_seed.append(done[seed]["figures"])
            seconds[seed] = done[seed]["seconds"]
            print(f"{name}: seed {seed} kept from the interrupted run of the same commit",
                  file=log or sys.stderr)  # fmt: skip
            continue
        tick = time.perf_counter()
        pyro.set_rng_seed(seed)
        figures = found.run(seed, context)
        per_seed.append({k: _as_float(k, v) for k, v in figures.items()})
        seconds[seed] = time.perf_counter() - tick
        done[seed] = {"figures": per_seed[-1], "seconds": seconds[seed]}
        _save_progress(progress, key, done)
        print(f"{name}: seed {seed} done in {seconds[seed]:.1f} s", file=log or sys.stderr)
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
        "headline": [{"key": f.key, "label": f.label, "digits": f.digits} for f in found.headline],
        "figures": {k: summarise([fig.get(k) for fig in per_seed]) for k in keys},
        "wall_time_s": round(sum(seconds.values()), 1),  # the seeds' own times, kept ones too
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        **origin,
    }
    paths = write_results(results, folder)
    _publish_artifacts(staging, folder / name)
    progress.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    return paths


def _resume_key(name: str, quick: bool, settings: dict, origin: dict) -> dict | None:
    """What a kept seed must share with this run: the recipe, its settings and the commit
    of a clean tree. ``None`` (nothing is ever kept) when the tree has uncommitted changes
    or git cannot say: the code that made a kept seed could not be named."""
    if origin.get("uncommitted_changes") is not False or origin.get("commit") in (None, "unknown"):
        return None
    return {"model": name, "quick": quick, "commit": origin["commit"],
            "settings": {k: _jsonable(v) for k, v in settings.items()}}  # fmt: skip


def _finished_seeds(progress: Path, key: dict | None, seed_list: list[int]) -> dict[int, dict]:
    """Seeds an interrupted run with the same ``key`` finished (see :func:`_resume_key`)."""
    if key is None or not progress.is_file():
        return {}
    try:
        saved = json.loads(progress.read_text())
    except (OSError, ValueError):
        return {}
    if saved.get("key") != key:
        return {}
    return {int(s): v for s, v in saved.get("seeds", {}).items() if int(s) in seed_list}


def _save_progress(progress: Path, key: dict | None, done: dict[int, dict]) -> None:
    from zoo.cli.runfiles import write_text  # one-step replace

    seeds = {str(s): v for s, v in done.items()}
    write_text(progress, json.dumps({"key": key, "seeds": seeds}, indent=1) + "\n")


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
