"""Guide families and the swap: ``guides.build(kind, model, local=..., **options)``.

Global sites get the chosen family (an AutoGuide); local sites under the subsampled data
plate keep an amortized encoder, since a non-amortized guide cannot follow a minibatch,
whose family is chosen by ``local=`` (:mod:`guides.local`: ``normal``, ``mvn``, ``flow``).
The encoder network can be swapped too (``encoder=...``): the guide owns it, and the model
the caller holds is left as it was.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import autoguide

from guides.encoders import NormalEncoder, mlp
from guides.local import LOCAL_KINDS, LocalDriver, check_local, local_kinds, make_family
from inference.data import DATA_PLATE
from inference.traces import latent_sites

__all__ = [
    "KINDS",
    "LOCAL_KINDS",
    "build",
    "kind_options",
    "local_kinds",
    "check_local",
    "SwappedGuide",
    "GuideError",
    "NormalEncoder",
    "mlp",
]


class GuideError(ValueError):
    """A guide request that cannot be met: the message names the kind or option."""


def _normal(model: Callable, init_scale: float = 0.05, init_loc_fn=None, *, create_plates=None):
    extra = {} if init_loc_fn is None else {"init_loc_fn": init_loc_fn}
    return autoguide.AutoNormal(model, init_scale=init_scale, create_plates=create_plates, **extra)


def _lowrank(model: Callable, rank: int | None = None, init_scale: float = 0.05):
    return autoguide.AutoLowRankMultivariateNormal(model, rank=rank, init_scale=init_scale)


def _mvn(model: Callable, init_scale: float = 0.05):
    return autoguide.AutoMultivariateNormal(model, init_scale=init_scale)


def _flow(model: Callable, num_transforms: int = 2, hidden_dim: int | None = None):
    hidden = None if hidden_dim is None else [hidden_dim]
    return autoguide.AutoIAFNormal(model, hidden_dim=hidden, num_transforms=num_transforms)


def _delta(model: Callable, init_loc_fn=None, *, create_plates=None):
    extra = {} if init_loc_fn is None else {"init_loc_fn": init_loc_fn}
    return autoguide.AutoDelta(model, create_plates=create_plates, **extra)


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


class SwappedGuide(LocalDriver):
    """An AutoGuide family over a zoo model's global sites plus its amortized local guide
    (whose family and encoder are this guide's, see :class:`~guides.local.LocalDriver`).

    The AutoGuide is created on the first call, once the model's sites are known; a model
    with no global latents (a plain VAE) is then guided by its encoder alone.
    """

    def __init__(self, model: Any, kind: str, factory: Callable, options: dict[str, Any]):
        super().__init__(model)
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
        # only globals inside the data plate need the guide's data plate; creating it for
        # others (outside all plates, or in a plate of their own such as one per domain)
        # would clash with the plate of the model's local guide
        in_plate = any(
            frame.name == DATA_PLATE for site in latent for frame in site["cond_indep_stack"]
        )
        if self._has_globals:
            options = dict(self._options)
            if in_plate and self.kind in _FOLLOW_BATCH and hasattr(self._zoo_model, "data_plate"):
                # the guide's data plate follows the batch's rows: without it an AutoGuide
                # subsamples its per-row parameters at random, not at ``batch.index``
                options["create_plates"] = self._zoo_model.data_plate
            self.global_guide = self._factory(global_model, **options)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        if self._has_globals is None:
            self._setup(batch)
        values: dict[str, torch.Tensor] = {}
        if self.global_guide is not None:
            values = self.global_guide(batch)
        if self._zoo_model.local_sites:
            self.run_local(batch, values)
        return values

    def median(self, batch: Any) -> dict[str, torch.Tensor]:
        """Median of the global sites (empty for a model without globals)."""
        if self._has_globals is None:
            self._setup(batch)
        return {} if self.global_guide is None else self.global_guide.median(batch)


#: factory arguments the swap sets itself, not options a user passes
_INTERNAL = ("model", "create_plates")


def kind_options(kind: str) -> list[str]:
    """The options guide kind ``kind`` takes (from its factory's signature)."""
    factory = KINDS[kind]
    if factory is None:
        return []
    params = inspect.signature(factory).parameters
    return sorted(name for name in params if name not in _INTERNAL)


def build(
    kind: str,
    model: Any,
    *,
    local: str = "normal",
    local_options: dict[str, Any] | None = None,
    encoder: torch.nn.Module | None = None,
    **options: Any,
):
    """A guide of family ``kind`` for the zoo model ``model``.

    :param kind: one of :data:`KINDS`, the family of the global sites (``default``: the
        model's own guide).
    :param local: one of :data:`LOCAL_KINDS`, the family of the amortized local sites
        (``normal``, the encoder's diagonal Gaussian, is the default); see
        :func:`local_kinds` for the kinds a model takes.
    :param local_options: passed to the local family: ``rank``, ``max_full``, ``context``
        for ``mvn``; ``num_transforms``, ``hidden_dim``, ``context`` for ``flow`` (see
        :mod:`guides.local`).
    :param encoder: an encoder network the guide uses in place of the model's
        ``encoder`` (models with local latents); the guide owns and trains it, and the
        model is left as it was. Its contract (:func:`guides.local.check_encoder_output`,
        checked on its first batch, before the first training step): ``forward(x)`` returns
        ``(loc, scale)`` shaped like the model's own encoder's output (``(batch, latent)``
        for a VAE), ``scale`` positive (not a log-scale); an ``encode(x)`` method may add
        the last hidden features as a third value, which the ``mvn`` and ``flow`` local
        families read.
    :param options: passed to the global family, e.g. ``rank`` for ``lowrank``,
        ``num_transforms`` for ``flow``, ``init_scale`` for ``normal``/``lowrank``/``mvn``
        (:func:`kind_options` lists them).
    :raises GuideError: an unknown kind, a local kind the model does not take, an option
        the family does not take, or an unusable encoder; before anything is built.
    """
    if kind not in KINDS:
        raise GuideError(f"unknown guide kind {kind!r}; valid kinds: {sorted(KINDS)}")
    check_local(model, local)
    valid = kind_options(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = f"its options: {valid}" if valid else "it takes no options"
        raise GuideError(f"guide kind '{kind}' takes no option(s) {unknown}; {takes}")
    family = make_family(local, local_options)
    if encoder is not None:
        if not model.local_sites:
            raise GuideError(f"model '{model.name}' has no local latents, so no encoder to swap")
        if not isinstance(encoder, torch.nn.Module):
            raise GuideError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    if kind == "default":
        guide = model.default_guide()
        if local == "normal" and encoder is None:
            return guide
        if not isinstance(guide, LocalDriver):
            raise GuideError(
                f"model '{model.name}' has its own default guide ({type(guide).__name__}), "
                "which takes no local family or encoder; pick a guide kind from "
                f"{sorted(k for k in KINDS if k != 'default')}"
            )
    else:
        guide = SwappedGuide(model, kind, KINDS[kind], options)
    guide.set_local(family, encoder)
    return guide
