"""Guide families for a model's amortized local latents: ``local=`` in :func:`guides.build`.

A model opts in by drawing each real-valued local site through :func:`sample` in its
``local_guide``, in place of ``pyro.sample(site, dist.Normal(loc, scale).to_event(1))``,
and by asking :func:`encode` (or :func:`encoder`) for its encoder, so that a guide built
with ``encoder=`` runs its own encoder without touching the model::

    def local_guide(self, batch, global_values=None):
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            local.sample("z", loc, scale, context=context)

:func:`sample` draws from the family of the guide being run (a :class:`LocalDriver`):

- ``normal``: ``Normal(loc, scale)``, the encoder's diagonal Gaussian (exactly the line it
  replaces; outside a guide call this is what every model gets);
- ``mvn``: a full-covariance Gaussian ``N(loc, S C S)`` with ``S = diag(scale)``: the
  encoder keeps the means and the marginal scales, and a linear head reads the
  correlations ``C`` from the context, as the Cholesky factor ``L`` of ``C``: the
  rows of ``I + M``, ``M`` strictly lower triangular from the head, scaled to unit length
  (initialised at ``M = 0``, so training starts from the ``normal`` family; the marginal
  scales cannot blow up through the head). Above ``max_full`` dimensions, or when ``rank``
  is given, ``C`` is low rank plus diagonal: ``D^-1/2 (U U^T + I) D^-1/2`` with ``U``
  (size x rank) from the head and ``D`` the diagonal that makes it a correlation;
- ``flow``: ``Normal(loc, scale)`` pushed through ``num_transforms`` inverse autoregressive
  affine transforms conditioned on the context (Kingma et al. 2016, "Improved Variational
  Inference with Inverse Autoregressive Flow"; Pyro's ``ConditionalAffineAutoregressive``),
  initialised at the identity.

The heads are modules of the guide (:attr:`LocalDriver.local`), created on the guide's
first call from the site's size, as an AutoGuide creates its parameters: training builds
its optimizer after that call, checkpoints save them with the guide and ``.to(device)``
moves them.

The context a head reads (option ``context``) is ``"loc_scale"``, the encoder's output
``(loc, log scale)``, or ``"hidden"``, the encoder's last hidden layer when the encoder has
an ``encode`` method (:class:`~guides.encoders.NormalEncoder`; else ``loc_scale``). The
defaults are what measured best on vae_digits (``benchmarks/local_guides.md``): ``mvn``
reads ``loc_scale`` (a head on the 256 hidden features, whose gradients reach the
encoder's trunk, trained to a worse ELBO than ``normal`` on train and held-out data), and
``flow`` reads ``hidden``, as the IAF paper's flows do.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN, PyroModule
from torch import nn
from torch.distributions import constraints
from torch.distributions.transforms import ReshapeTransform, Transform

__all__ = [
    "LocalOnlyGuide",
    "LOCAL_KINDS",
    "LocalFamily",
    "LocalDriver",
    "make_family",
    "family_options",
    "local_kinds",
    "check_local",
    "sample",
    "running_kind",
    "encode",
    "encoder",
    "using",
]

#: local guide families, ``normal`` first (the default)
LOCAL_KINDS = ("normal", "mvn", "flow")
#: what a family's heads read: the encoder's (loc, log scale) or its last hidden layer
CONTEXTS = ("loc_scale", "hidden")


def _error(message: str) -> Exception:
    from guides import GuideError  # (guides imports this module)

    return GuideError(message)


# ----- the families ------------------------------------------------------------------------


class LocalFamily(PyroModule):
    """A family of amortized guides for real-valued local sites; its per-site heads are
    created on the first draw of each site (``heads[site]``) and read the ``context``
    (one of :data:`CONTEXTS`)."""

    kind = "normal"

    def __init__(self, context: str = "loc_scale"):
        super().__init__()
        if context not in CONTEXTS:
            raise _error(
                f"local guide '{self.kind}': context must be one of {list(CONTEXTS)}, "
                f"got {context!r}"
            )
        self.context = context
        self.heads = nn.ModuleDict()

    def context_of(self, loc, scale, hidden, event_dim: int) -> torch.Tensor:
        """The heads' input: ``hidden`` (the encoder's features) or ``(loc, log scale)``."""
        if self.context == "hidden" and hidden is not None:
            return hidden
        return torch.cat([_flat(loc, event_dim), _flat(scale, event_dim).log()], -1)

    def distribution(
        self,
        site: str,
        loc: torch.Tensor,
        scale: torch.Tensor,
        context: torch.Tensor,
        event_dim: int,
    ) -> dist.Distribution:
        return dist.Normal(loc, scale).to_event(event_dim)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class NormalFamily(LocalFamily):
    """The encoder's diagonal Normal (no heads)."""

    kind = "normal"

    def __init__(self):
        super().__init__()


def _flat(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    return value.flatten(-event_dim) if event_dim > 1 else value


def _reshaped(q: dist.Distribution, event_shape: torch.Size) -> dist.Distribution:
    if len(event_shape) == 1:
        return q
    # (cached: the inverse of a draw is the very tensor the flow made, so its log q
    # is read from the flow's own cache, not from a sequential autoregressive inverse)
    reshape = ReshapeTransform(q.event_shape, event_shape, cache_size=1)
    return dist.TransformedDistribution(q, [reshape])


class _TrilAffine(Transform):
    """``x -> loc + L x`` for a batch of lower-triangular ``L`` with a positive diagonal.
    Its cache gives ``log q`` of the guide's own draws from the noise that made them, not
    from a triangular solve (which loses all precision when ``L`` is ill-conditioned)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor):
        super().__init__(cache_size=1)
        self.loc = loc
        self.scale_tril = scale_tril

    def _call(self, x):
        return self.loc + (self.scale_tril @ x.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, y):
        rhs = (y - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(rhs.shape[:-2] + self.scale_tril.shape[-2:])
        return torch.linalg.solve_triangular(tril, rhs, upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, x, y):
        log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_det.expand(x.shape[:-1])


class MVNFamily(LocalFamily):
    """Amortized full-covariance Gaussian; low-rank plus diagonal above ``max_full``
    dimensions or when ``rank`` is given. See the module doc."""

    kind = "mvn"

    def __init__(self, rank: int | None = None, max_full: int = 32, context: str = "loc_scale"):
        super().__init__(context)
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise _error(f"local guide 'mvn': rank must be a positive integer, got {rank!r}")
        if isinstance(max_full, bool) or not isinstance(max_full, int) or max_full < 1:
            raise _error(
                f"local guide 'mvn': max_full must be a positive integer, got {max_full!r}"
            )
        self.rank = rank
        self.max_full = max_full

    def _rank(self, size: int) -> int | None:
        """``None`` for a full covariance, else the low-rank factor's rank."""
        if self.rank is not None:
            return self.rank
        return None if size <= self.max_full else max(1, math.ceil(math.sqrt(size)))

    def _head(self, site: str, size: int, context_dim: int, device) -> nn.Linear:
        if site not in self.heads:
            rank = self._rank(size)
            out = size * (size - 1) // 2 if rank is None else size * rank
            head = nn.Linear(context_dim, max(out, 1)).to(device)
            with torch.no_grad():
                if rank is None:  # M = 0: the diagonal Normal the encoder gives
                    head.weight.zero_()
                    head.bias.zero_()
                else:  # U = 0 is a saddle point of the ELBO (gradient U dL/dCov): start off it
                    head.weight.normal_(0.0, 1e-2 / math.sqrt(context_dim))
                    head.bias.normal_(0.0, 1e-2)
            self.heads[site] = head
        return self.heads[site]

    def distribution(self, site, loc, scale, context, event_dim):
        event_shape = loc.shape[loc.dim() - event_dim :]
        loc, scale = _flat(loc, event_dim), _flat(scale, event_dim)
        size = loc.shape[-1]
        head = self._head(site, size, context.shape[-1], loc.device)
        out = head(context)
        rank = self._rank(size)
        if rank is None:
            rows, cols = torch.tril_indices(size, size, offset=-1, device=loc.device)
            flat_index = rows * size + cols
            strict = out[..., : len(flat_index)]
            lower = strict.new_zeros(strict.shape[:-1] + (size * size,))
            lower = lower.index_copy(-1, flat_index, strict).unflatten(-1, (size, size))
            unit = torch.eye(size, dtype=loc.dtype, device=loc.device) + lower
            corr_tril = unit / unit.norm(dim=-1, keepdim=True)  # Cholesky factor of C
            scale_tril = scale.unsqueeze(-1) * corr_tril
            batch = torch.broadcast_shapes(loc.shape[:-1], scale_tril.shape[:-2])
            noise = dist.Normal(loc.new_zeros(()), 1.0).expand(batch + (size,)).to_event(1)
            q = dist.TransformedDistribution(noise, [_TrilAffine(loc, scale_tril)])
        else:
            factor = out.unflatten(-1, (size, rank))
            # S D^-1/2 (U U^T + I) D^-1/2 S with D = 1 + |U_i|^2: marginal scales = scale
            marginal = scale * (1.0 + factor.pow(2).sum(-1)).rsqrt()
            factor = marginal.unsqueeze(-1) * factor
            batch = torch.broadcast_shapes(loc.shape[:-1], factor.shape[:-2])
            q = dist.LowRankMultivariateNormal(
                loc.expand(batch + (size,)),
                factor.expand(batch + (size, rank)),
                marginal.pow(2).expand(batch + (size,)),
            )
        return _reshaped(q, event_shape)

    def extra_repr(self) -> str:
        return f"kind='mvn', rank={self.rank}, max_full={self.max_full}, context={self.context!r}"


class FlowFamily(LocalFamily):
    """Amortized inverse autoregressive flow on top of the encoder's Normal. See the
    module doc."""

    kind = "flow"

    def __init__(
        self, num_transforms: int = 2, hidden_dim: int | None = None, context: str = "hidden"
    ):
        super().__init__(context)
        for key, value in (("num_transforms", num_transforms), ("hidden_dim", hidden_dim)):
            if value is None and key == "hidden_dim":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _error(f"local guide 'flow': {key} must be a positive integer, got {value!r}")
        self.num_transforms = num_transforms
        self.hidden_dim = hidden_dim

    def _head(self, site: str, size: int, context_dim: int, device) -> nn.ModuleList:
        if site not in self.heads:
            hidden = self.hidden_dim or 10 * size  # Pyro's default width
            steps = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a one-dimensional latent
                for _ in range(self.num_transforms):
                    arn = ConditionalAutoRegressiveNN(size, context_dim, [hidden])
                    with torch.no_grad():  # the identity map: start at the normal family
                        arn.layers[-1].weight.zero_()
                        arn.layers[-1].bias.zero_()
                    steps.append(ConditionalAffineAutoregressive(arn))
            self.heads[site] = nn.ModuleList(steps).to(device)
        return self.heads[site]

    def distribution(self, site, loc, scale, context, event_dim):
        event_shape = loc.shape[loc.dim() - event_dim :]
        loc, scale = _flat(loc, event_dim), _flat(scale, event_dim)
        steps = self._head(site, loc.shape[-1], context.shape[-1], loc.device)
        base = dist.Normal(loc, scale).to_event(1)
        batch = torch.broadcast_shapes(base.batch_shape, context.shape[:-1])
        base = base.expand(batch)
        context = context.expand(batch + context.shape[-1:])
        q = dist.TransformedDistribution(base, [step.condition(context) for step in steps])
        return _reshaped(q, event_shape)

    def extra_repr(self) -> str:
        return (
            f"kind='flow', num_transforms={self.num_transforms}, hidden_dim={self.hidden_dim}, "
            f"context={self.context!r}"
        )


_FAMILIES: dict[str, type[LocalFamily]] = {
    "normal": NormalFamily,
    "mvn": MVNFamily,
    "flow": FlowFamily,
}


def family_options(kind: str) -> list[str]:
    """The options local family ``kind`` takes (from its constructor's signature)."""
    params = inspect.signature(_FAMILIES[kind].__init__).parameters
    return sorted(name for name in params if name != "self")


def make_family(kind: str, options: dict[str, Any] | None = None) -> LocalFamily:
    """The local family ``kind`` with ``options``, checked against its signature."""
    if kind not in _FAMILIES:
        raise _error(f"unknown local guide kind {kind!r}; valid local kinds: {list(LOCAL_KINDS)}")
    options = dict(options or {})
    valid = family_options(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = f"its options: {valid}" if valid else "it takes no options"
        raise _error(f"local guide '{kind}' takes no option(s) {unknown}; {takes}")
    return _FAMILIES[kind](**options)


# ----- which models take which families ---------------------------------------------------


def local_kinds(model: Any) -> tuple[str, ...]:
    """The local guide kinds ``model`` takes: none without local latents, ``normal`` (its
    own guide) alone when :attr:`~zoo.base.ZooModel.fixed_local_guide` says why, else
    :data:`LOCAL_KINDS`."""
    if not model.local_sites:
        return ()
    if model.fixed_local_guide:
        return ("normal",)
    return LOCAL_KINDS


def check_local(model: Any, kind: str) -> None:
    """Refuse ``local=kind`` for ``model`` with a GuideError naming the valid choices."""
    if kind not in LOCAL_KINDS:
        raise _error(f"unknown local guide kind {kind!r}; valid local kinds: {list(LOCAL_KINDS)}")
    if kind == "normal":
        return
    name = getattr(model, "name", type(model).__name__)
    if not model.local_sites:
        raise _error(
            f"local guide '{kind}' needs local latents, and model '{name}' has none; "
            "valid local kinds for it: ['normal'] (the default, which does nothing)"
        )
    if model.fixed_local_guide:
        raise _error(
            f"model '{name}' keeps its own local guide ({model.fixed_local_guide}), so local "
            f"guide '{kind}' does not apply; valid local kinds for it: ['normal']"
        )


# ----- the running guide ------------------------------------------------------------------


class _Run:
    __slots__ = ("model", "family", "encoder", "sampled")

    def __init__(self, model, family, encoder):
        self.model = model
        self.family = family
        self.encoder = encoder
        self.sampled: set[str] = set()


_RUNNING: ContextVar[_Run | None] = ContextVar("zoo_local_guide", default=None)


@contextmanager
def _running(model, family, encoder) -> Iterator[_Run]:
    run = _Run(model, family, encoder)
    token = _RUNNING.set(run)
    try:
        yield run
    finally:
        _RUNNING.reset(token)


def sample(
    site: str,
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    context: torch.Tensor | None = None,
    event_dim: int = 1,
    normal: dist.Distribution | None = None,
) -> torch.Tensor:
    """Draw the real-valued local site ``site`` from the running guide's family.

    :param loc, scale: the encoder's diagonal Gaussian; the site's event is their last
        ``event_dim`` dimensions (flattened into one vector for ``mvn`` and ``flow``).
    :param context: the encoder's features (its last hidden layer), which a family's heads
        read when their ``context`` option is ``"hidden"`` (else, or when ``None``, they
        read ``loc`` and ``log scale``).
    :param normal: the ``normal`` family's distribution when it is not
        ``Normal(loc, scale).to_event(event_dim)`` (an equivalent form the model needs,
        e.g. an MVN with a diagonal ``scale_tril`` for an analytic KL).
    """
    run = _RUNNING.get()
    family = run.family if run is not None else None
    if family is None or family.kind == "normal":
        fn = normal if normal is not None else dist.Normal(loc, scale).to_event(event_dim)
    else:
        if not torch.is_floating_point(loc):
            raise _error(f"local guide '{family.kind}' needs a real-valued site; '{site}' is not")
        context = family.context_of(loc, scale, context, event_dim)
        fn = family.distribution(site, loc, scale, context, event_dim)
    if run is not None:
        run.sampled.add(site)
    return pyro.sample(site, fn)


def running_kind() -> str:
    """The local family of the guide being run (``normal`` outside a guide call)."""
    run = _RUNNING.get()
    return "normal" if run is None or run.family is None else run.family.kind


def encoder(model: Any, name: str = "encoder") -> nn.Module:
    """The encoder the running guide uses for ``model``: the guide's own when it was built
    with ``encoder=`` (that swaps ``model.encoder`` only), else ``model.<name>``."""
    run = _RUNNING.get()
    if name == "encoder" and run is not None and run.model is model and run.encoder is not None:
        return run.encoder
    return getattr(model, name)


def encode(
    model: Any, *inputs: torch.Tensor, name: str = "encoder"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(loc, scale, context)`` of the running guide's encoder for ``model`` on ``inputs``
    (context ``None`` when the encoder has no ``encode`` method)."""
    net = encoder(model, name)
    out = net.encode(*inputs) if hasattr(net, "encode") else net(*inputs)
    own = getattr(model, name, None)
    if net is not own and not getattr(net, "_zoo_contract_checked", False):
        # a user's encoder: checked once, on its first batch, against the model's own
        with torch.no_grad():
            expected = own.encode(*inputs) if hasattr(own, "encode") else own(*inputs)
        check_encoder_output(out, expected[:2], type(net).__name__)
        object.__setattr__(net, "_zoo_contract_checked", True)
    return out if hasattr(net, "encode") else (*out, None)


def check_encoder_output(out: Any, expected: tuple[torch.Tensor, torch.Tensor], name: str) -> None:
    """The encoder contract: ``forward(x)`` returns ``(loc, scale)``, two tensors shaped like
    the model's own encoder's (``(batch, latent)`` for a VAE), ``scale`` positive (a scale,
    not a log-scale); an ``encode(x)`` method may return ``(loc, scale, features)``.

    :raises GuideError: naming what came back and what was expected.
    """
    from guides import GuideError

    shapes = tuple(tuple(t.shape) for t in expected)
    if not isinstance(out, tuple | list) or len(out) not in (2, 3):
        got = (
            f"a {type(out).__name__}" if not isinstance(out, tuple | list) else f"{len(out)} values"
        )
        raise GuideError(
            f"encoder {name} returned {got}; it must return (loc, scale) with shapes {shapes}"
        )
    loc, scale = out[0], out[1]
    if not (torch.is_tensor(loc) and torch.is_tensor(scale)):
        raise GuideError(f"encoder {name} must return tensors (loc, scale), with shapes {shapes}")
    got = (tuple(loc.shape), tuple(scale.shape))
    if got != shapes:
        raise GuideError(
            f"encoder {name} returned loc and scale of shapes {got}; the model's latent needs "
            f"{shapes} (rows first, then the latent size)"
        )
    if not bool((scale > 0).all()):
        raise GuideError(
            f"encoder {name} returned a scale with values <= 0 (smallest "
            f"{float(scale.min()):.3g}): it must return a positive scale, not a log-scale "
            "(e.g. softplus(raw) + 1e-4)"
        )


# ----- guides that run a model's local guide ----------------------------------------------


class LocalDriver(PyroModule):
    """Base of the guides that call a zoo model's ``local_guide``: it owns the local
    family (:attr:`local`, whose heads are the guide's parameters) and, when the guide was
    built with ``encoder=``, that encoder (:attr:`encoder`). Subclasses call
    :meth:`run_local` where they would call ``model.local_guide``."""

    def __init__(self, model: Any):
        super().__init__()
        object.__setattr__(self, "_zoo_model", model)  # not a child: its params stay its own
        self.local: LocalFamily = NormalFamily()
        self.encoder: nn.Module | None = None

    def set_local(self, family: LocalFamily, encoder: nn.Module | None = None) -> None:
        """Use ``family`` (and ``encoder``) for the model's local sites (before the first
        call, as :func:`guides.build` does)."""
        self.local = family
        if encoder is not None:
            self.encoder = encoder

    def local_active(self):
        """A context in which the model's local guide (and :func:`encoder`) see this
        guide's family and encoder."""
        return _running(self._zoo_model, self.local, self.encoder)

    def run_local(self, *args: Any, **kwargs: Any) -> None:
        model = self._zoo_model
        with self.local_active() as run:
            model.local_guide(*args, **kwargs)
        if self.local.kind != "normal":
            missing = [s for s in model.local_sites if s not in run.sampled]
            if missing:
                raise _error(
                    f"local guide '{self.local.kind}' cannot reach site(s) {missing} of model "
                    f"'{model.name}': its local_guide draws them without guides.local.sample"
                )


class LocalOnlyGuide(LocalDriver):
    """The own guide of a model without global latents: its amortized local guide and
    nothing else, so it never traces the model and runs under any ELBO."""

    def forward(self, batch, *args, **kwargs):
        self.run_local(batch)
        return {}

    def median(self, batch):
        return {}


def using(guide: Any):
    """A context in which a model's code outside the guide (an ``evaluate`` reading the
    encoder) sees ``guide``'s encoder; a no-op for other guides."""
    if isinstance(guide, LocalDriver):
        return guide.local_active()
    return nullcontext()
