"""Relative representations and the cross-run similarity of latent spaces.

Moschella et al. (ICLR 2023), "Relative representations enable zero-shot latent space
communication": a sample ``x`` is represented by its cosine similarities to a fixed set of
anchor samples ``a_1..a_K`` in the embedding space of an encoder ``E``,

    r(x) = [cos(E(x), E(a_k))]_k ,

which is unchanged by any angle-preserving map of the embeddings (an orthogonal map and a
positive scale: ``E -> s Q E``). Two training runs whose latent spaces differ by such a map
(a different seed, often) give the same ``r``; :func:`relative_similarity` measures how
close they come, on any zoo model with an amortized local latent (its guide's posterior
means are the embeddings) or on any two embedding functions.

Figures, each over the rows of ``data`` (the paper's cross-space similarity measures):

- ``cosine``: mean over rows of ``cos(r_A(x), r_B(x))``; with ``center=True`` (the default)
  each ``r`` has its mean over the anchors subtracted first (the centring of the paper's
  LayerNorm), so the figure is a per-row Pearson correlation, not inflated by every
  similarity being positive;
- ``mrr``: mean reciprocal rank of row ``i`` of B when the rows of B are ranked by the
  cosine of their ``r_B`` to ``r_A(x_i)`` (1: every row retrieves its own counterpart);
- ``jaccard``: mean Jaccard index of the ``top_k`` nearest rows of each row in A's and in
  B's relative space;
- ``absolute_cosine``: the same row-wise cosine on the raw embeddings (NaN when their
  widths differ): what a run-to-run comparison without anchors sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "RelativeSimilarity",
    "relative_projection",
    "latent_means",
    "relative_similarity",
    "anchor_indices",
]

#: an embedding source: a function from data rows to (N, D) embeddings, or a zoo
#: ``(model, guide)`` pair (the guide's posterior means of a local site)
Embedder = Callable[[torch.Tensor], torch.Tensor] | tuple[nn.Module, nn.Module]


def relative_projection(
    embeddings: torch.Tensor, anchor_embeddings: torch.Tensor, *, eps: float = 1e-12
) -> torch.Tensor:
    """``r[n, k] = cos(embeddings[n], anchor_embeddings[k])``: shape (N, K).

    Invariant to ``embeddings, anchors -> s Q embeddings, s Q anchors`` for orthogonal ``Q``
    and ``s > 0`` (exactly, up to rounding). ``eps`` guards a zero-norm embedding.
    """
    if embeddings.dim() != 2 or anchor_embeddings.dim() != 2:
        raise ValueError(
            f"embeddings and anchor embeddings must be 2-D (rows, width), got shapes "
            f"{tuple(embeddings.shape)} and {tuple(anchor_embeddings.shape)}"
        )
    if embeddings.shape[1] != anchor_embeddings.shape[1]:
        raise ValueError(
            f"embeddings have width {embeddings.shape[1]} but anchor embeddings "
            f"{anchor_embeddings.shape[1]}; both must come from the same encoder"
        )
    e = embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(eps)
    a = anchor_embeddings / anchor_embeddings.norm(dim=-1, keepdim=True).clamp_min(eps)
    return e @ a.T


def anchor_indices(num_rows: int, num_anchors: int, seed: int = 0) -> torch.Tensor:
    """``num_anchors`` distinct row indices of ``range(num_rows)``, fixed by ``seed``: pass
    the same indices to every run compared (anchors must be identical samples)."""
    if not 1 <= num_anchors <= num_rows:
        raise ValueError(f"num_anchors must be in 1..{num_rows} (the rows), got {num_anchors}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_rows, generator=generator)[:num_anchors].sort().values


def latent_means(
    model: nn.Module, guide: nn.Module, x: Mapping[str, torch.Tensor], site: str | None = None
) -> torch.Tensor:
    """The guide's posterior means of local latent ``site`` (default: the model's first
    local site) for every row of the data ``x``, shape (N, D) (rows first, event flattened):
    a zoo model's embedding of its data. The model is put in evaluation mode while the
    guide runs (no dropout, BatchNorm at its running statistics, the same for anchors and
    rows) and restored after."""
    from pyro import poutine

    from inference.data import full_batch
    from inference.traces import unwrap_independent

    site = site or (getattr(model, "local_sites", ()) or (None,))[0]
    if site is None:
        raise ValueError(f"{type(model).__name__} declares no local latent site to embed with")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            trace = poutine.trace(guide).get_trace(full_batch(dict(x)))
    finally:
        model.train(was)
    if site not in trace.nodes:
        raise ValueError(f"the guide has no site '{site}'; its sites: {list(trace.nodes)}")
    fn = unwrap_independent(trace.nodes[site]["fn"])[0]
    try:
        mean = fn.mean
    except NotImplementedError:
        mean = fn.sample((64,)).mean(0)
    rows = len(next(iter(x.values())))
    return mean.reshape(rows, -1).detach()


def _embed(source: Any, rows: Mapping[str, torch.Tensor], which: str, site) -> torch.Tensor:
    if isinstance(source, tuple) and len(source) == 2:
        out = latent_means(source[0], source[1], rows, site)
    elif callable(source):
        with torch.no_grad():
            out = source(next(iter(rows.values())) if len(rows) == 1 else rows)
    else:
        raise TypeError(
            f"run {which} must be an embedding function or a (model, guide) pair, "
            f"got {type(source).__name__}"
        )
    out = torch.as_tensor(out).detach().double()
    if out.dim() != 2 or len(out) != len(next(iter(rows.values()))):
        raise ValueError(
            f"run {which} gave embeddings of shape {tuple(out.shape)}; expected (rows, width)"
        )
    if not torch.isfinite(out).all():
        raise ValueError(f"run {which} gave non-finite embeddings")
    return out


@dataclass
class RelativeSimilarity:
    """What :func:`relative_similarity` measures (see the module doc)."""

    cosine: float
    mrr: float
    jaccard: float
    absolute_cosine: float
    #: per-row cosine of r_A(x) and r_B(x), shape (N,)
    cosine_per_row: torch.Tensor
    #: the two relative representations, (N, K) each
    relative_a: torch.Tensor
    relative_b: torch.Tensor

    def figures(self) -> dict[str, float]:
        return {
            "cosine": self.cosine,
            "mrr": self.mrr,
            "jaccard": self.jaccard,
            "absolute_cosine": self.absolute_cosine,
        }


def _rows_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def relative_similarity(
    run_a: Embedder,
    run_b: Embedder,
    data: Mapping[str, torch.Tensor] | torch.Tensor,
    anchors: Sequence[int] | torch.Tensor,
    *,
    site: str | None = None,
    center: bool = True,
    top_k: int = 10,
) -> RelativeSimilarity:
    """Cross-run similarity of the relative representations of ``data`` under two runs.

    :param run_a, run_b: embedding sources: each a ``(model, guide)`` pair of a trained zoo
        model with a local latent (its guide's posterior means at ``site`` are the
        embedding) or a function from the data (the tensor, or the dict when there are
        several fields) to (N, D) embeddings. The two may have different widths.
    :param data: the rows compared: a model's data dict, or one (N, ...) tensor.
    :param anchors: row indices into ``data`` of the anchor samples (at least 2, distinct),
        the same samples for both runs (see :func:`anchor_indices`).
    :param center: subtract each relative representation's mean over the anchors before
        the row-wise cosine and the retrieval figures (the paper's LayerNorm centring).
    :param top_k: neighbourhood size of the Jaccard figure.
    :raises ValueError: on bad data, anchors out of range or repeated, non-finite
        embeddings; each with a one-line message.
    """
    rows = {"x": data} if torch.is_tensor(data) else dict(data)
    if not rows:
        raise ValueError("data holds no fields")
    lengths = {k: len(v) for k, v in rows.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"data fields have different numbers of rows: {lengths}")
    num = next(iter(lengths.values()))
    for key, value in rows.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"data field '{key}' holds NaN or infinite values")
    index = torch.as_tensor(anchors, dtype=torch.long).reshape(-1)
    if len(index) < 2:
        raise ValueError(f"need at least 2 anchors, got {len(index)}")
    if index.min() < 0 or index.max() >= num:
        raise ValueError(f"anchor indices must lie in 0..{num - 1} (rows of data)")
    if len(index.unique()) != len(index):
        raise ValueError("anchor indices repeat a row; anchors must be distinct samples")
    if num < 2:
        raise ValueError("data must hold at least 2 rows")
    if not 1 <= top_k < num:
        raise ValueError(f"top_k must be in 1..{num - 1}, got {top_k}")

    e_a, e_b = _embed(run_a, rows, "A", site), _embed(run_b, rows, "B", site)
    r_a = relative_projection(e_a, e_a[index])
    r_b = relative_projection(e_b, e_b[index])
    if center:
        r_a = r_a - r_a.mean(-1, keepdim=True)
        r_b = r_b - r_b.mean(-1, keepdim=True)
    per_row = _rows_cosine(r_a, r_b)
    absolute = float(_rows_cosine(e_a, e_b).mean()) if e_a.shape == e_b.shape else float("nan")

    # retrieval: rows of B ranked by cosine to each row of A
    unit_a = r_a / r_a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit_b = r_b / r_b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = unit_a @ unit_b.T
    own = scores.diagonal().unsqueeze(-1)
    rank = 1 + (scores > own).sum(-1)
    mrr = float((1.0 / rank.double()).mean())
    # Jaccard of each row's top_k neighbours (itself excluded) within A and within B
    eye = torch.eye(num, dtype=torch.bool)
    near_a = (unit_a @ unit_a.T).masked_fill(eye, -2).topk(top_k, -1).indices
    near_b = (unit_b @ unit_b.T).masked_fill(eye, -2).topk(top_k, -1).indices
    in_a = torch.zeros(num, num, dtype=torch.bool).scatter_(1, near_a, True)
    in_b = torch.zeros(num, num, dtype=torch.bool).scatter_(1, near_b, True)
    jaccard = float(((in_a & in_b).sum(-1) / (in_a | in_b).sum(-1)).double().mean())
    return RelativeSimilarity(
        cosine=float(per_row.mean()),
        mrr=mrr,
        jaccard=jaccard,
        absolute_cosine=absolute,
        cosine_per_row=per_row.float(),
        relative_a=r_a.float(),
        relative_b=r_b.float(),
    )
