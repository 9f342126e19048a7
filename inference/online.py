"""Online inference over a sliding window: a trained model's network frozen, fresh local
parameters fitted to the last ``window`` steps of each sequence, then the window moves on.

This is the "error regression" of predictive-coding RNNs (Ahmadi & Tani 2019, PV-RNN):
at every step the latent variables of the recent past are re-inferred from the prediction
errors they cause, with the generative network held fixed, and the future is predicted
from them. Nothing here knows a particular model: the caller gives

- ``model(batch)``, the generative model of one window (its data plate over sequences,
  the window's steps in the fields along ``time_dim``);
- ``new_window(end, previous)``, a factory of the window's guide (a module whose
  parameters are the only ones trained: adaptive vectors, say, shifted from the
  previous window's and with the new step appended) and of per-row context fields the
  model needs (the network state at the window's start), given the previous window's
  fitted guide (``None`` at the first window);

and each window is fitted by :func:`inference.svi.fit` with ``trainable`` naming the
guide's parameters, the model's parameters also switched out of autograd while it runs
(no gradient is computed for them, none is left behind).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from inference.svi import fit

__all__ = ["sliding_window", "frozen"]

Factory = Callable[[int, Any], tuple[nn.Module, Mapping[str, torch.Tensor]]]


@contextlib.contextmanager
def frozen(module: nn.Module):
    """``module``'s parameters out of autograd for a block (restored afterwards)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def sliding_window(
    model: nn.Module,
    data: Mapping[str, torch.Tensor],
    new_window: Factory,
    *,
    window: int,
    steps: int,
    lr: float = 0.09,
    start: int | None = None,
    stop: int | None = None,
    time_dim: int = 1,
    time_fields: Sequence[str] | None = None,
    trainable: Sequence[str] | Callable[[str], bool] = ("guide.",),
    seed: int = 0,
    **fit_options: Any,
) -> Iterator[tuple[int, nn.Module, dict[str, torch.Tensor]]]:
    """Fit one window after another; yields ``(end, guide, window_data)`` after each fit.

    The window ending at ``end`` (exclusive) holds steps ``end - window .. end - 1`` of every
    field in ``time_fields`` (default: every field of ``data``) along ``time_dim``, plus
    the factory's context fields. Windows end at ``start, start + 1, ..., stop`` (default
    ``window`` and the sequences' length). Each window is fitted for ``steps`` Adam steps
    at ``lr`` (the PV-RNN implementation's 0.09) on all sequences at once (full batch),
    seeded ``seed + end``; ``fit_options`` go to :func:`inference.svi.fit`.

    :raises ValueError: a window that does not fit the sequences, or no steps.
    """
    fields = list(data) if time_fields is None else list(time_fields)
    if not fields:
        raise ValueError("sliding_window needs at least one time field")
    length = int(data[fields[0]].shape[time_dim])
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= length:
        raise ValueError(f"window must be an integer in 1..{length} (the length), got {window!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    start = window if start is None else int(start)
    stop = length if stop is None else int(stop)
    if not window <= start <= stop <= length:
        raise ValueError(
            f"windows must end within {window}..{length}; got start={start}, stop={stop}"
        )
    options = {"elbo": "trace", "progress": False, "batch_size": None, **fit_options}
    previous = None
    with frozen(model):
        for end in range(start, stop + 1):
            guide, context = new_window(end, previous)
            piece = {k: data[k].narrow(time_dim, end - window, window) for k in fields}
            piece.update(context)
            fit(
                model,
                guide,
                piece,
                steps=steps,
                lr=lr,
                seed=seed + end,
                trainable=trainable,
                **options,
            )
            yield end, guide, piece
            previous = guide
