"""Time to result for every registered model: its default ``zoo train`` and its
``zoo reproduce``.

``zoo train NAME`` runs with its defaults in a fresh process (all cores the machine gives),
and its stages come from the run folder's ``timings.json`` (set-up and checks, training,
the report's posterior draws and diagnostics). The ``zoo reproduce`` figure is the wall time
recorded in ``results/NAME.json`` by the run that made the committed results (its machine
and load are in that file). Targets: a default under 5 minutes, a reproduce under 15.

Run alone with ``python -m benchmarks.time_to_result [--quick] [--models a,b]``; ``--quick``
times two small models only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import zoo

ROOT = Path(__file__).resolve().parents[1]
TRAIN_TARGET_S, REPRODUCE_TARGET_S = 300, 900


def train_timings(name: str, out: Path, timeout: float = 3600) -> dict:
    """``zoo train NAME`` with its defaults: the stages' seconds, or why it failed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OMP_NUM_THREADS", None)  # the cores a user has, not the test suite's one
    done = subprocess.run([sys.executable, "-m", "zoo", "train", name, "--out", str(out),
                           "--no-progress"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads((out / "timings.json").read_text())


def reproduce_seconds(name: str) -> tuple[float | None, int]:
    path = ROOT / "results" / f"{name}.json"
    if not path.is_file():
        return None, 0
    record = json.loads(path.read_text())
    return float(record["wall_time_s"]), len(record["seeds"])


def _row(name: str, timings: dict) -> dict:
    repro, seeds = reproduce_seconds(name)
    if "error" in timings:
        train, slowest = f"failed: {timings['error']}", "-"
    else:
        stages = {k: v for k, v in timings.items() if k != "total"}
        slow = max(stages, key=stages.get)
        train = f"{timings['total']:.0f}" + (" (over 5 min)" if timings["total"] > 300 else "")
        slowest = f"{slow} ({stages[slow]:.0f} s)"
    return {
        "model": name,
        "zoo train, s": train,
        "slowest stage": slowest,
        "zoo reproduce, s": (
            "-"
            if repro is None
            else f"{repro:.0f} ({seeds} seeds)" + (" (over 15 min)" if repro > 900 else "")
        ),
        "per seed, s": "-" if repro is None else f"{repro / seeds:.0f}",
    }


def run(quick: bool = False, models: list[str] | None = None) -> dict:
    names = models or (["eight_schools", "vae_digits"] if quick else sorted(zoo.list()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(_row(name, train_timings(name, Path(tmp) / name)))
            print(rows[-1], flush=True)
    return {
        "title": "Time to result: default `zoo train` and `zoo reproduce` per model",
        "notes": (
            "zoo train: wall seconds of `zoo train NAME` with its defaults (all cores), by "
            "stage from the run's timings.json (setup: model, data and checks; training; "
            "report: posterior draws, diagnostics and figures). zoo reproduce: the wall time "
            "recorded in results/NAME.json by the run that made the committed figures (its "
            "machine and load are there; several ran while other jobs shared the cores). "
            "Targets: under 5 minutes and under 15 minutes."
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="", help="comma-separated model names")
    args = parser.parse_args()
    chosen = [m for m in args.models.split(",") if m] or None
    print(format_table(run(quick=args.quick, models=chosen)))
