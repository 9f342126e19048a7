"""A results file: per-figure values over seeds, their mean, sd and 95% interval, with the
settings, seeds, wall time, commit and machine that produced them; written atomically."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from zoo.cli.runfiles import write_text

__all__ = ["summarise", "provenance", "write_results", "read_results", "render_markdown"]

FORMAT_VERSION = 1


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd and a 95% t-interval of the mean over seeds (NaN-free values only)."""
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    finite = array[np.isfinite(array)]
    kept = [float(v) if math.isfinite(v) else None for v in array]
    entry: dict[str, Any] = {"values": kept, "n": int(finite.size)}
    if finite.size == 0:
        return entry | {"mean": None, "sd": None, "ci95": None}
    mean = float(finite.mean())
    if finite.size < 2:
        return entry | {"mean": mean, "sd": None, "ci95": None}
    sd = float(finite.std(ddof=1))
    half = float(stats.t.ppf(0.975, finite.size - 1) * sd / math.sqrt(finite.size))
    return entry | {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """The commit (and whether the tree had uncommitted changes) and the machine."""
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "uncommitted_changes": bool(status) if status is not None else None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def write_results(results: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``NAME.json`` and ``NAME.md`` into ``folder``, each replaced in one step."""
    name = results["model"]
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    write_text(json_path, json.dumps(results, indent=1, sort_keys=False) + "\n")
    write_text(md_path, render_markdown(results))
    return json_path, md_path


def read_results(path: Path) -> dict[str, Any]:
    with open(path) as f:
        results = json.load(f)
    if results.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: results format {results.get('format')!r}, expected 1")
    return results


def format_value(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def format_figure(entry: Mapping[str, Any], digits: int) -> str:
    """``mean ± sd`` (or the single value)."""
    mean = format_value(entry.get("mean"), digits)
    if entry.get("sd") is None:
        return mean
    return f"{mean} ± {format_value(entry['sd'], digits)}"


def render_markdown(results: Mapping[str, Any]) -> str:
    seeds = results["seeds"]
    machine = results["machine"]
    lines = [
        f"# `{results['model']}`: headline experiment",
        "",
        results["claim"],
        "",
        f"Made by `{results['command']}`"
        + (" (quick size: a smoke run, not evidence)" if results["quick"] else "")
        + f" on {results['date']}, seeds {', '.join(map(str, seeds))}, "
        f"{results['wall_time_s']:.0f} s in all; commit `{results['commit'][:12]}`"
        + (" with uncommitted changes" if results.get("uncommitted_changes") else "")
        + f"; {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} threads).",
        "",
        "| figure | mean ± sd | 95% interval of the mean | per seed |",
        "|---|---|---|---|",
    ]
    digits = {f["key"]: f["digits"] for f in results["headline"]}
    labels = {f["key"]: f["label"] for f in results["headline"]}
    for key, entry in results["figures"].items():
        d = digits.get(key, 3)
        ci = entry.get("ci95")
        interval = f"[{format_value(ci[0], d)}, {format_value(ci[1], d)}]" if ci else "n/a"
        per_seed = ", ".join(format_value(v, d) for v in entry["values"])
        label = f"{labels[key]} (`{key}`)" if key in labels else f"`{key}`"
        lines.append(f"| {label} | {format_figure(entry, d)} | {interval} | {per_seed} |")
    lines += ["", "Settings:", ""]
    lines += [f"- `{k}` = `{v!r}`" for k, v in results["settings"].items()]
    return "\n".join(lines) + "\n"
