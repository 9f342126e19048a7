"""The spec's pattern tasks (the LPN repository's ``PatternTaskGenerator``, ported): a task
is a 2 x 2 pattern of colours 1-9; each of its pairs has a 4 x 4 input holding one marker
pixel (value 1) and, as output, the pattern pasted with its top-left corner at the marker
(background 0). The program is the pattern; the marker moves from pair to pair."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["COLOURS", "pattern_tasks", "apply_pattern"]

#: pixel values: 0 background, 1 the marker in inputs, 1-9 pattern colours in outputs
COLOURS = 10


def apply_pattern(pattern: np.ndarray, row: np.ndarray, col: np.ndarray, grid: int) -> tuple:
    """Inputs and outputs of pairs with markers at ``(row, col)``: ``pattern`` (..., p, p),
    ``row``/``col`` (..., pairs); returns ``(x, y)``, each (..., pairs, grid, grid)."""
    lead = row.shape
    size = pattern.shape[-1]
    x = np.zeros((*lead, grid, grid), dtype=np.int64)
    y = np.zeros((*lead, grid, grid), dtype=np.int64)
    index = np.indices(lead)
    x[(*index, row, col)] = 1
    for a in range(size):
        for b in range(size):
            y[(*index, row + a, col + b)] = pattern[..., None, a, b]
    return x, y


def pattern_tasks(
    num: int, *, pairs: int = 4, grid: int = 4, size: int = 2, colours: int = 9, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``num`` seeded tasks: ``x``, ``y`` (num, pairs, grid, grid) int64 and ``pattern``
    (num, size, size), the true program, of colours 1..``colours``. Each pair's marker is
    uniform over the positions where the pattern fits, drawn independently per pair."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(1, colours + 1, size=(num, size, size))
    row = rng.integers(0, grid - size + 1, size=(num, pairs))
    col = rng.integers(0, grid - size + 1, size=(num, pairs))
    x, y = apply_pattern(pattern, row, col, grid)
    return {
        "x": torch.from_numpy(x),
        "y": torch.from_numpy(y),
        "pattern": torch.from_numpy(pattern),
    }
