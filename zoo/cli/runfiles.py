"""Reading and writing a run folder's plain files (atomically where it matters)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text(path: Path, text: str) -> None:
    """Write atomically (a crash leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ValueError(f"run folder '{run_dir}' does not exist")
    if not path.is_file():
        raise ValueError(f"'{run_dir}' is not a run folder (no config.json)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}' is not readable JSON ({error})") from None
    if not isinstance(record, dict) or "model" not in record:
        raise ValueError(f"'{path}' is not a latent-zoo run config")
    return record


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_metrics(path: Path, losses: Sequence[float], lrs: Sequence[float]) -> None:
    lines = ["step,loss,lr"]
    for i, loss in enumerate(losses):
        lr = lrs[i] if i < len(lrs) else float("nan")
        lines.append(f"{i + 1},{loss!r},{lr!r}")
    write_text(path, "\n".join(lines) + "\n")


def read_losses(path: Path) -> list[float]:
    if not path.is_file():
        return []
    losses = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split(",")
        if len(parts) >= 2:
            losses.append(float(parts[1]))
    return losses


def num_rows(data: Mapping[str, torch.Tensor]) -> int:
    return len(next(iter(data.values())))
