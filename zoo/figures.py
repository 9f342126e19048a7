"""Pictures of what a zoo model sees and generates: the building blocks of
:meth:`zoo.base.ZooModel.figures` (image grids of data, new rows, reconstructions, latent
traversals) and of the picture ``zoo sample`` writes next to its ``.npz``.

Every function takes a model that follows the contract (``data_spec`` fields declaring
``image``, ``model(batch)``, a guide callable) and returns matplotlib figures; the drawing
itself is :func:`inference.diagnostics.plots.image_grid`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from pyro import poutine

from inference.data import Batch
from inference.diagnostics.plots import image_grid
from inference.traces import sample_sites

__all__ = [
    "pictures",
    "picture_grid",
    "sample_figures",
    "reconstruct",
    "reconstruction_figures",
    "image_figures",
    "traversal_figure",
    "new_rows_pictures",
]

#: images per grid row, and at most this many frames of a row that holds several
PER_ROW = 8
#: rows of a frames field (e.g. trials over time) shown per part of a grid
FRAME_ROWS = 3


def pictures(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(n, H, W)`` or ``(n, C, H, W)`` -> ``(n, H, W)`` grey or ``(n, H, W, 3)`` colour."""
    value = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=float)
    if value.ndim == 4:
        value = value[:, 0] if value.shape[1] != 3 else value.transpose(0, 2, 3, 1)
    return value


def _is_frames(value: torch.Tensor, field_image: Sequence[int]) -> bool:
    return value.dim() == len(field_image) + 2


def picture_grid(
    model: Any,
    parts: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
    *,
    rows: int = PER_ROW,
    title: str | None = None,
) -> dict[str, Figure]:
    """One grid per picture of :meth:`~zoo.base.ZooModel.images`: for each ``(label,
    data)`` part, its first ``rows`` rows as one grid row (or, for a field with several
    frames per row, its first rows as one grid row each, frames evenly spaced)."""
    keys = list(model.images(dict(parts[0][1])))
    spec = model.data_spec()
    out = {}
    for key in keys:
        tiles, labels = [], []
        ncols = rows
        for label, data in parts:
            value = model.images(dict(data))[key]
            image = spec[key].image if key in spec else value.shape[-2:]
            if _is_frames(value, image):
                frames = value.shape[1]
                pick = np.unique(np.linspace(0, frames - 1, min(PER_ROW, frames)).round())
                ncols = len(pick)
                for i in range(min(FRAME_ROWS, len(value))):
                    tiles.append(pictures(value[i, pick.astype(int)]))
                    labels.append(f"{label} {i}")
            else:
                shown = pictures(value[:rows])
                blank = np.full((rows - len(shown), *shown.shape[1:]), np.nan)
                tiles.append(np.concatenate([shown, blank]) if len(shown) < rows else shown)
                labels.append(label)
        fig = image_grid(np.concatenate(tiles), ncols=ncols, row_labels=labels, title=title)
        out[key] = fig
    return out


def _one(figures: dict[str, Figure], key: str) -> Figure:
    return figures[key]


def _names(model: Any, data: Mapping[str, torch.Tensor], stem: str) -> dict[str, str]:
    """Figure name per picture key: ``stem`` alone, or ``stem_<key>`` for several."""
    keys = list(model.images({k: v[:1] for k, v in data.items()}))
    return {key: stem if len(keys) == 1 else f"{stem}_{key}" for key in keys}


def sample_figures(
    model: Any,
    guide: Any,
    data: Mapping[str, torch.Tensor],
    *,
    draws=None,
    seed: int = 0,
    means: bool = True,
) -> dict[str, Callable[[], Figure]]:
    """``samples``: data rows above new rows of :meth:`~zoo.base.ZooModel.sample_new_rows`
    and (``means``) above the mean of each new row given its latents."""
    cache: dict[str, dict[str, Figure]] = {}

    def grids() -> dict[str, Figure]:
        if "grids" not in cache:
            options = dict(data=data, guide=guide, draws=draws, seed=seed)
            parts = [("data", data), ("new", model.sample_new_rows(PER_ROW, **options))]
            title = "training rows; new rows"
            if means:
                parts.append(("new: mean", model.sample_new_rows(PER_ROW, mean=True, **options)))
                title += "; the mean of each new row given its latents"
            cache["grids"] = picture_grid(model, parts, title=title)
        return cache["grids"]

    return {
        name: (lambda key=key: _one(grids(), key))
        for key, name in _names(model, data, "samples").items()
    }


def _rows(data: Mapping[str, torch.Tensor], num: int) -> Batch:
    size = len(next(iter(data.values())))
    num = min(num, size)
    device = next(iter(data.values())).device
    rows = {k: v[:num] for k, v in data.items()}
    return Batch(rows, index=torch.arange(num, device=device), size=size)


def _mean(node) -> torch.Tensor:
    """The mean of a trace site's distribution (its value where there is none)."""
    try:
        return node["fn"].mean.detach()
    except NotImplementedError:
        return node["value"].detach()


def reconstruct(model: Any, guide: Any, data: Mapping[str, torch.Tensor], num: int = PER_ROW):
    """The first ``num`` rows of ``data`` with every observed field replaced by its mean
    given the guide's latents for those rows (one guide draw, the model replayed on it)."""
    batch = _rows(data, num)
    with model.inference_mode(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(batch)
        trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    out = dict(batch)
    for key, field in model.data_spec().items():
        if key in model.observed_sites and key in trace.nodes:
            out[key] = _mean(trace.nodes[key]).reshape((len(batch.index), *field.shape))
    return out


def reconstruction_figures(
    model: Any, guide: Any, data: Mapping[str, torch.Tensor]
) -> dict[str, Callable[[], Figure]]:
    """``reconstructions``: data rows above their reconstructions (:func:`reconstruct`)."""
    if guide is None:
        return {}

    def make(key: str) -> Figure:
        rows = {k: v[:PER_ROW] for k, v in data.items()}
        parts = [("data", rows), ("reconstruction", reconstruct(model, guide, data))]
        title = "training rows, then the mean of the observations given the guide's latents"
        return picture_grid(model, parts, title=title)[key]

    return {
        name: (lambda key=key: make(key))
        for key, name in _names(model, data, "reconstructions").items()
    }


def image_figures(
    model: Any, guide: Any, data: Mapping[str, torch.Tensor], *, draws=None, seed: int = 0
) -> dict[str, Callable[[], Figure]]:
    """The default model figures: :func:`sample_figures` and
    :func:`reconstruction_figures` for models whose data are images (none otherwise)."""
    if not model.images({k: v[:1] for k, v in data.items()}):
        return {}
    return {
        **sample_figures(model, guide, data, draws=draws, seed=seed),
        **reconstruction_figures(model, guide, data),
    }


def traversal_figure(
    model: Any,
    guide: Any,
    data: Mapping[str, torch.Tensor],
    site: str,
    values: torch.Tensor,
    *,
    row: int = 0,
    key: str | None = None,
    label: str | None = None,
) -> Figure:
    """Latent traversal: start from the guide's mean of the local ``site`` for one data row,
    move one latent dimension at a time through ``values`` (``(K,)`` for every dimension,
    or ``(D, K)`` per dimension), decode each (the mean of the observed image), and draw
    one grid row per dimension. ``label`` names the values in the title (default: their
    range)."""
    batch = _rows({k: v[row : row + 1] for k, v in data.items()}, 1)
    with model.inference_mode(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(batch)
    fixed = {}
    for name in sample_sites(guide_trace, observed=False):
        node = guide_trace.nodes[name]
        try:
            fixed[name] = node["fn"].mean.detach()
        except (NotImplementedError, AttributeError):
            fixed[name] = node["value"].detach()
    if site not in fixed:
        raise ValueError(f"the guide has no site '{site}' to traverse")
    start = fixed[site].reshape(-1)
    dims = start.numel()
    values = torch.as_tensor(values, dtype=start.dtype, device=start.device)
    grid = values.expand(dims, values.shape[-1]) if values.dim() == 1 else values
    steps = grid.shape[-1]
    z = start.repeat(dims * steps, 1)
    for d in range(dims):
        z[d * steps : (d + 1) * steps, d] = grid[d]
    rows = dims * steps
    repeated = {k: v.expand(rows, *v.shape[1:]) for k, v in batch.items()}
    many = Batch(repeated, index=torch.arange(rows, device=start.device), size=rows)
    local = set(model.local_sites)
    values_of = {
        name: (value.reshape(1, -1).expand(rows, -1).reshape(rows, *value.shape[1:]))
        if name in local
        else value
        for name, value in fixed.items()
    }
    values_of[site] = z.reshape(rows, *fixed[site].shape[1:])
    with model.inference_mode(), poutine.block():
        trace = poutine.trace(poutine.condition(model.model, data=values_of)).get_trace(many)
    decoded = dict(repeated)
    for name, field in model.data_spec().items():
        if name in model.observed_sites and name in trace.nodes:
            node = trace.nodes[name]
            decoded[name] = _mean(node).reshape(rows, *field.shape)
    images = model.images(decoded)
    key = key or next(iter(images))
    labels = [f"{site}[{d}]" for d in range(dims)]
    if label is not None:
        span = label
    elif values.dim() == 1:
        span = f"{float(values[0]):.3g} to {float(values[-1]):.3g}"
    else:
        span = "each dimension's own values"
    title = f"traversal of {site} ({span}, one dimension per row) from one row's posterior mean"
    return image_grid(pictures(images[key]), ncols=steps, row_labels=labels, title=title)


def new_rows_pictures(
    model: Any, rows: Mapping[str, torch.Tensor], *, limit: int = 256
) -> dict[str, Figure]:
    """Pictures of generated rows (``zoo sample``): per image of
    :meth:`~zoo.base.ZooModel.images`, a grid of the first ``limit`` rows, or for a field
    with several frames per row one grid row per row (the first :data:`PER_ROW` rows)."""
    out = {}
    num = len(next(iter(rows.values())))
    for key, value in model.images(dict(rows)).items():
        image = model.data_spec()[key].image if key in model.data_spec() else value.shape[-2:]
        if _is_frames(value, image):
            frames = value.shape[1]
            pick = np.unique(np.linspace(0, frames - 1, min(PER_ROW, frames)).round()).astype(int)
            shown = value[:PER_ROW][:, pick]
            tiles = pictures(shown.reshape(-1, *shown.shape[2:]))
            labels = [f"row {i}" for i in range(len(shown))]
            title = f"{len(shown)} of {num} new rows, frames {pick.tolist()}"
            out[key] = image_grid(tiles, ncols=len(pick), row_labels=labels, title=title)
        else:
            shown = pictures(value[:limit])
            title = (
                f"{len(shown)} new rows" if len(shown) == num else f"{len(shown)} of {num} new rows"
            )
            out[key] = image_grid(
                shown, ncols=min(16, max(PER_ROW, int(len(shown) ** 0.5))), title=title
            )
    return out
