"""Checkpoints of plain tensors and JSON only, written atomically.

A checkpoint is read with ``torch.load(weights_only=True)``, which refuses any pickled
Python object other than tensors and plain containers, so loading one never runs code.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT"]

FORMAT = "latent-zoo/checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, foreign, or holding code."""


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any], meta: Mapping) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) and ``meta`` (JSON) to
    ``path`` atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "meta": json.dumps(dict(meta)), **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint; return ``(state, meta)``. Refuses corrupt or foreign files and
    files that would need to unpickle code, with a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"checkpoint '{path}' is refused: it holds Python objects that loading would "
            f"have to execute, not just tensors and plain data ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt or not a checkpoint ({error})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a latent-zoo checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has format version {payload.get('version')}; "
            f"this latent-zoo reads version {VERSION}"
        )
    try:
        meta = json.loads(payload.pop("meta"))
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint '{path}' has no readable metadata") from None
    payload.pop("format")
    payload.pop("version")
    return payload, meta
