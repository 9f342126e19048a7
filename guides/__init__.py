"""Guide families and the swap: ``guides.build(kind, model, **options)``.

Global sites get the chosen family (an AutoGuide); local sites under the subsampled data
plate keep the model's amortized encoder, since a non-amortized guide cannot follow a
minibatch. The encoder network can be swapped too (``encoder=...``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import autoguide
from pyro.nn import PyroModule

from guides.encoders import NormalEncoder, as_pyro_module, mlp
from inference.traces import latent_sites

__all__ = ["KINDS", "build", "SwappedGuide", "GuideError", "NormalEncoder", "mlp"]


class GuideError(ValueError):
    """A guide request that cannot be met: the message names the kind or option."""


def _normal(model: Callable, init_scale: float = 0.05, **kwargs) -> autoguide.AutoGuide:
    return autoguide.AutoNormal(model, init_scale=init_scale, **kwargs)


def _lowrank(model: Callable, rank: int | None = None, init_scale: float = 0.05):
    return autoguide.AutoLowRankMultivariateNormal(model, rank=rank, init_scale=init_scale)


def _mvn(model: Callable, init_scale: float = 0.05):
    return autoguide.AutoMultivariateNormal(model, init_scale=init_scale)


def _flow(model: Callable, num_transforms: int = 2, hidden_dim: int | None = None):
    hidden = None if hidden_dim is None else [hidden_dim]
    return autoguide.AutoIAFNormal(model, hidden_dim=hidden, num_transforms=num_transforms)


def _delta(model: Callable, **kwargs):
    return autoguide.AutoDelta(model, **kwargs)


#: families with one parameter per row under the data plate, indexed by the batch's rows
_FOLLOW_BATCH = ("normal", "delta")


#: guide kind -> AutoGuide factory for the global sites (``default`` is the model's own)
KINDS: dict[str, Callable[..., autoguide.AutoGuide] | None] = {
    "default": None,
    "normal": _normal,
    "lowrank": _lowrank,
    "mvn": _mvn,
    "flow": _flow,
    "delta": _delta,
}


class SwappedGuide(PyroModule):
    """An AutoGuide family over a zoo model's global sites plus its amortized local guide.

    The AutoGuide is created on the first call, once the model's sites are known; a model
    with no global latents (a plain VAE) is then guided by its encoder alone.
    """

    def __init__(self, model: Any, kind: str, factory: Callable, options: dict[str, Any]):
        super().__init__()
        object.__setattr__(self, "_zoo_model", model)  # not a child: its params stay its own
        self.kind = kind
        self._factory = factory
        self._options = options
        self.global_guide: autoguide.AutoGuide | None = None
        self._has_globals: bool | None = None

    def _global_model(self) -> Callable:
        model = self._zoo_model
        return poutine.block(model.model, hide=list(model.local_sites))

    def _setup(self, batch: Any) -> None:
        global_model = self._global_model()
        with poutine.block():
            trace = poutine.trace(global_model).get_trace(batch)
        latent = [trace.nodes[name] for name in latent_sites(trace)]
        self._has_globals = bool(latent)
        # only globals inside a plate need the guide's data plate; creating it for globals
        # outside all plates would clash with the plate of the model's local guide
        in_plate = any(site["cond_indep_stack"] for site in latent)
        if self._has_globals:
            options = dict(self._options)
            if in_plate and self.kind in _FOLLOW_BATCH and hasattr(self._zoo_model, "data_plate"):
                # the guide's data plate follows the batch's rows: without it an AutoGuide
                # subsamples its per-row parameters at random, not at ``batch.index``
                options.setdefault("create_plates", self._zoo_model.data_plate)
            self.global_guide = self._factory(global_model, **options)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        if self._has_globals is None:
            self._setup(batch)
        values: dict[str, torch.Tensor] = {}
        if self.global_guide is not None:
            values = self.global_guide(batch)
        if self._zoo_model.local_sites:
            self._zoo_model.local_guide(batch, values)
        return values

    def median(self, batch: Any) -> dict[str, torch.Tensor]:
        """Median of the global sites (empty for a model without globals)."""
        if self._has_globals is None:
            self._setup(batch)
        return {} if self.global_guide is None else self.global_guide.median(batch)


def build(kind: str, model: Any, *, encoder: torch.nn.Module | None = None, **options: Any):
    """A guide of family ``kind`` for the zoo model ``model``.

    :param kind: one of :data:`KINDS`.
    :param encoder: replaces the model's amortized encoder (models with local latents).
    :param options: passed to the family, e.g. ``rank`` for ``lowrank``, ``num_transforms``
        for ``flow``, ``init_scale`` for ``normal``/``lowrank``/``mvn``.
    """
    if kind not in KINDS:
        raise GuideError(f"unknown guide kind '{kind}'; valid kinds: {sorted(KINDS)}")
    if encoder is not None:
        if not model.local_sites:
            raise GuideError(f"model '{model.name}' has no local latents, so no encoder to swap")
        if not isinstance(encoder, torch.nn.Module):
            raise GuideError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        model.encoder = as_pyro_module(encoder)
    if kind == "default":
        if options:
            raise GuideError(f"guide kind 'default' takes no options, got {sorted(options)}")
        return model.default_guide()
    return SwappedGuide(model, kind, KINDS[kind], options)
