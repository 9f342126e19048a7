"""Diagnostic figures, each saved as a PNG whose path is returned.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, not
through pyplot's global state, so they work headless and leave no open figures behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from inference.posterior import az

__all__ = [
    "image_grid",
    "new_figure",
    "plot_elbo",
    "plot_ppc",
    "plot_rank_histogram",
    "plot_trace",
    "save_figure",
    "trace_figure",
    "rank_figure",
    "forest_figure",
    "pair_figure",
]


def new_figure(**kwargs) -> Figure:
    """A figure on the Agg canvas (no pyplot state): ``Figure(**kwargs)``."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` (folders made as needed); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


_figure, _save = new_figure, save_figure


def image_grid(
    images,
    *,
    ncols: int = 8,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "gray_r",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """A grid of pictures drawn as one mosaic (fast for hundreds of small images).

    :param images: ``(n, H, W)`` grey or ``(n, H, W, 3)`` colour, laid out ``ncols`` to a
        row (the last row may be short).
    :param row_labels: one label per grid row, written at its left.
    :param vmin, vmax: the grey scale's range (default: [0, 1] widened to the values').
    """
    images = np.asarray(images, dtype=float)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"images must be (n, H, W) or (n, H, W, 3), got {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to draw")
    n, h, w = images.shape[:3]
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} rows")
    colour = images.ndim == 4
    finite = images[np.isfinite(images)]
    lo = min(0.0, float(finite.min())) if vmin is None and finite.size else (vmin or 0.0)
    hi = max(1.0, float(finite.max())) if vmax is None and finite.size else (vmax or 1.0)
    pad = 1
    mosaic = np.full(
        (nrows * (h + pad) - pad, ncols * (w + pad) - pad, *((3,) if colour else ())), np.nan
    )
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        mosaic[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = image
    scale = 0.55 if max(h, w) <= 16 else 0.9
    fig = new_figure(
        figsize=(1.2 + scale * ncols * w / max(h, w), 0.4 + scale * nrows * h / max(h, w))
    )
    ax = fig.add_subplot()
    if colour:
        ax.imshow(np.clip(np.nan_to_num((mosaic - lo) / (hi - lo), nan=1.0), 0, 1))
    else:
        from matplotlib import colormaps

        palette = colormaps[cmap].with_extremes(bad="#d0d7e0")
        ax.imshow(np.ma.masked_invalid(mosaic), cmap=palette, vmin=lo, vmax=hi)
    ax.set_xticks([])
    ax.set_yticks([(h + pad) * r + (h - 1) / 2 for r in range(nrows)] if row_labels else [])
    if row_labels:
        ax.set_yticklabels(list(row_labels), fontsize=8)
        ax.tick_params(axis="y", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_elbo(losses: Sequence[float], path: str | os.PathLike) -> Path:
    """Training loss (negative ELBO) per step, with a running mean; log scale when the
    losses are all positive and span more than a decade."""
    losses = np.asarray(losses, dtype=float)
    if losses.size == 0:
        raise ValueError("no losses to plot")
    fig = _figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    steps = np.arange(1, losses.size + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    window = max(1, losses.size // 50)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
    finite = losses[np.isfinite(losses)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("negative ELBO")
    ax.legend(loc="upper right")
    return _save(fig, path)


def plot_ppc(
    idata,
    path: str | os.PathLike,
    *,
    var_names: Sequence[str] | None = None,
    num_pp_samples: int = 50,
    kind: str = "kde",
    seed: int = 0,
) -> Path:
    """ArviZ posterior predictive check (observed vs replicated data), using only
    ``num_pp_samples`` predictive draws so high-dimensional observations stay fast."""
    names = list(var_names) if var_names is not None else list(idata.observed_data.data_vars)
    if not names:
        raise ValueError("the InferenceData has no observed data to check")
    total = idata.posterior_predictive.sizes["chain"] * idata.posterior_predictive.sizes["draw"]
    fig = _figure(figsize=(5 * len(names), 3.5))
    axes = [fig.add_subplot(1, len(names), i + 1) for i in range(len(names))]
    az.plot_ppc(
        idata,
        var_names=names,
        kind=kind,
        num_pp_samples=int(min(num_pp_samples, total)),
        random_seed=seed,
        ax=np.asarray(axes),
        show=False,
    )
    return _save(fig, path)


def plot_rank_histogram(result, path: str | os.PathLike, *, max_panels: int = 12) -> Path:
    """SBC rank histograms (one panel per scalar component, the first ``max_panels``), with
    the uniform expectation and its 99% band; the title gives the uniformity p-value."""
    from scipy import stats

    from inference.diagnostics.sbc import rank_histogram

    names = list(result.ranks)[:max_panels]
    if not names:
        raise ValueError("the SBC result has no ranks")
    bins = result.bins or max(2, min(20, result.num_replicates // 5, result.num_draws + 1))
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = _figure(figsize=(3.2 * cols, 2.6 * rows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        observed, expected = rank_histogram(result.ranks[name], result.num_draws, bins)
        n = len(result.ranks[name])
        ax.bar(np.arange(bins), observed, width=0.9, color="C0")
        lo = stats.binom.ppf(0.005, n, expected / n)
        hi = stats.binom.ppf(0.995, n, expected / n)
        ax.fill_between(np.arange(bins), lo, hi, step="mid", color="0.7", alpha=0.5, lw=0)
        ax.plot(np.arange(bins), expected, color="k", lw=1, drawstyle="steps-mid")
        ax.set_title(f"{name}  p={result.pvalues[name]:.3g}", fontsize=9)
        ax.set_xticks([])
    fig.suptitle(f"SBC ranks ({result.num_draws} draws, {result.num_replicates} replicates)")
    return _save(fig, path)


def _names(idata, var_names: Sequence[str] | None) -> list[str]:
    names = list(var_names) if var_names is not None else list(idata.posterior.data_vars)
    if not names:
        raise ValueError("the InferenceData has no posterior variables")
    return names


def _grid(fig: Figure, rows: int, cols: int) -> np.ndarray:
    return np.asarray(
        [[fig.add_subplot(rows, cols, cols * i + j + 1) for j in range(cols)] for i in range(rows)]
    )


def trace_figure(idata, var_names: Sequence[str] | None = None) -> Figure:
    """ArviZ trace plot (densities per chain, and the draws in order), for MCMC runs. Shown
    inline when it is a notebook cell's value."""
    names = _names(idata, var_names)
    fig = _figure(figsize=(10, 2.2 * len(names)))
    az.plot_trace(idata, var_names=names, axes=_grid(fig, len(names), 2), compact=True,
                  show=False)  # fmt: skip
    fig.tight_layout()
    return fig


def rank_figure(idata, var_names: Sequence[str] | None = None) -> Figure:
    """ArviZ rank plot: each chain's rank histogram; all near uniform when chains mix."""
    names = _names(idata, var_names)
    fig = _figure(figsize=(4 * len(names), 3))
    axes = _grid(fig, 1, len(names))[0]
    az.plot_rank(idata, var_names=names, ax=axes, show=False)
    fig.tight_layout()
    return fig


def forest_figure(
    posteriors: dict, var_names: Sequence[str] | None = None, *, hdi_prob: float = 0.9
) -> Figure:
    """ArviZ forest plot of several posteriors side by side (``{label: idata}``): each
    variable's median and ``hdi_prob`` interval per posterior."""
    labels, datas = list(posteriors), list(posteriors.values())
    names = _names(datas[0], var_names)
    fig = _figure(figsize=(6, 1.0 + 0.45 * sum(int(np.prod(datas[0].posterior[n].shape[2:]))
                                               for n in names) * len(datas) ** 0.5))  # fmt: skip
    ax = fig.add_subplot(1, 1, 1)
    az.plot_forest(datas, model_names=labels, var_names=names, combined=True, hdi_prob=hdi_prob,
                   ax=ax, show=False)  # fmt: skip
    fig.tight_layout()
    return fig


def pair_figure(
    idata, var_names: Sequence[str], *, coords: dict | None = None, divergences: bool = True
) -> Figure:
    """ArviZ pair plot of ``var_names`` (``coords`` selects elements, e.g. one school) with
    the divergent transitions marked: where they gather (the neck of a funnel) the sampler
    cannot follow the geometry."""
    names = list(var_names)
    selected = idata.posterior.sel(coords or {})
    count = sum(int(np.prod(selected[n].shape[2:])) for n in names)
    fig = _figure(figsize=(2.4 * count, 2.4 * count))
    axes = _grid(fig, count - 1, count - 1) if count > 1 else None
    has_div = divergences and "sample_stats" in idata and "diverging" in idata.sample_stats
    az.plot_pair(idata, var_names=names, coords=coords, divergences=has_div, ax=axes,
                 show=False)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_trace(idata, path: str | os.PathLike, var_names: Sequence[str] | None = None) -> Path:
    """:func:`trace_figure` saved as a PNG at ``path``."""
    return _save(trace_figure(idata, var_names), path)
