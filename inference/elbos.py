"""ELBO choice by name, and the (model, guide) pair as one differentiable torch module."""

from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass

import pyro
import pyro.distributions  # noqa: F401  (registers Pyro's KL pairs with torch)
import torch
from pyro import infer, poutine
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.util import prune_subsample_sites
from torch import nn
from torch.distributions import kl_divergence, register_kl

from inference.data import Batch


def enumerating() -> bool:
    """Whether an enumeration handler (TraceEnum_ELBO, ``infer_discrete``) runs the caller:
    a model that sums a discrete latent out in closed form can then run its enumerated
    form instead."""
    from pyro.poutine.enum_messenger import EnumMessenger
    from pyro.poutine.runtime import _PYRO_STACK

    return any(isinstance(handler, EnumMessenger) for handler in _PYRO_STACK)


__all__ = [
    "enumerating",
    "ELBOS",
    "ELBO_NAMES",
    "JIT_ELBOS",
    "ElboChoice",
    "KLForms",
    "choose_elbo",
    "kl_forms",
    "make_elbo",
    "resolve_elbo",
    "FlatBatch",
    "PairLoss",
]


class _PointWithDensity(pyro.distributions.Delta):
    """A guide's Delta whose log-density counts (an autoguide's constrained value): it has
    no closed-form KL, so the meanfield ELBO takes its sampled term log p(v) - log q(v)."""


@register_kl(_PointWithDensity, torch.distributions.Distribution)
def _no_closed_form(p, q):
    raise NotImplementedError


def _point_mass_with_density(fn) -> bool:
    """Whether ``fn`` is (a wrapped) Delta whose log-density is not zero everywhere."""
    while not isinstance(fn, pyro.distributions.Delta):
        if not hasattr(fn, "base_dist"):
            return False
        fn = fn.base_dist
    return bool(torch.as_tensor(fn.log_density).ne(0).any())


def _is_point_mass(fn) -> bool:
    while not isinstance(fn, pyro.distributions.Delta):
        if not hasattr(fn, "base_dist"):
            return False
        fn = fn.base_dist
    return True


class _MeanFieldELBO(infer.TraceMeanField_ELBO):
    """Pyro's TraceMeanField_ELBO, with two fixes.

    - Pyro's KL(Delta || p) is -log p(v): it drops a Delta's log-density, the Jacobian that
      autoguides (AutoNormal, AutoMultivariateNormal, ...) attach to a constrained value, so
      their constrained sites would be fitted to another objective. Such sites take the
      sampled term here, as in Trace_ELBO.
    - Pyro's loss is ``loss + (surrogate - torch_item(surrogate))``: the same value eagerly,
      but a JIT trace freezes ``torch_item(...)`` as a constant, so a traced copy reports the
      loss of the parameters it was traced at. Here the loss is the surrogate itself.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        for name, site in guide_trace.nodes.items():
            fn = site.get("fn")
            if site["type"] != "sample" or not _point_mass_with_density(fn):
                continue
            if not isinstance(fn, pyro.distributions.Delta):
                raise ValueError(
                    f"the meanfield ELBO cannot score guide site '{name}' (a wrapped point "
                    "mass with a log-density); use elbo 'trace'"
                )
            site["fn"] = _PointWithDensity(fn.v, log_density=fn.log_density,
                                           event_dim=fn.event_dim)  # fmt: skip
        with warnings.catch_warnings():
            # torch notes that (_PointWithDensity, Distribution) and Pyro's (Delta,
            # Distribution) both match; it takes the more specific one, ours
            warnings.filterwarnings("ignore", message="Ambiguous kl_divergence")
            return super()._differentiable_loss_particle(model_trace, guide_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        surrogate = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _, particle = self._differentiable_loss_particle(model_trace, guide_trace)
            surrogate = surrogate + particle / self.num_particles
        return surrogate


#: ELBO name -> (Pyro class, extra kwargs). ``jit`` is Trace_ELBO traced by the PyTorch JIT,
#: ``jit_meanfield`` TraceMeanField_ELBO (the KL of each latent site in closed form) traced.
ELBOS: dict[str, tuple[type, dict]] = {
    "trace": (infer.Trace_ELBO, {}),
    "jit": (infer.Trace_ELBO, {}),
    "meanfield": (_MeanFieldELBO, {}),
    "jit_meanfield": (_MeanFieldELBO, {}),
    "renyi": (infer.RenyiELBO, {"alpha": 0.5}),
    "iwae": (infer.RenyiELBO, {"alpha": 0.0}),
    "graph": (infer.TraceGraph_ELBO, {}),
    "enum": (infer.TraceEnum_ELBO, {}),
}

#: names ``fit`` accepts: ``auto`` picks the estimator that learns fastest for the model
ELBO_NAMES = ("auto", *ELBOS)
#: the names whose loss is traced once by the PyTorch JIT and replayed
JIT_ELBOS = ("jit", "jit_meanfield")
_ANALYTIC = ("meanfield", "jit_meanfield")


def resolve_elbo(name: str, model: nn.Module) -> str:
    """The estimator for ``name`` without looking at the guide: ``auto`` -> ``jit`` for a
    model that declares ``static_structure`` (its sites and shapes never depend on data
    values, so a traced loss stays correct), else ``trace``. Training resolves ``auto`` with
    :func:`choose_elbo`, which also takes the analytic KL where every site has one."""
    if name not in ELBO_NAMES:
        raise ValueError(f"unknown elbo '{name}'; valid: {list(ELBO_NAMES)}")
    if name != "auto":
        return name
    return "jit" if getattr(model, "static_structure", False) else "trace"


@dataclass(frozen=True)
class KLForms:
    """The latent sites of a (model, guide) pair by how their KL term can be computed."""

    closed: tuple[str, ...]  # KL(q || p) has a closed form (torch's / Pyro's kl registry)
    sampled: tuple[str, ...]  # no closed form: the KL is estimated from the guide's draw
    enumerated: tuple[str, ...]  # model sites marked for enumeration and absent from the guide


def _copy_pair(model: nn.Module, guide: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Deep copies of ``model`` and ``guide``. An AutoGuide's ``__getstate__`` drops its
    model and parent (it is written for pickling) on the original as well: both are put back
    on the original, and the copy runs the copied model where there is one."""
    autos = [m for m in guide.modules() if isinstance(m, AutoGuide)]
    saved = [(m, m._model, m.master) for m in autos]
    memo: dict = {}
    try:
        copied = copy.deepcopy((model, guide), memo)
    finally:
        for m, inner, master in saved:
            m._model, m.master = inner, master
    for m, inner, master in saved:
        twin = memo.get(id(m))
        if twin is not None:
            target = inner[0] if inner else None
            twin._model = (memo.get(id(target), target),)
            parent = master() if master is not None else None
            twin.master = None if parent is None else weakref.ref(memo.get(id(parent), parent))
    return copied


def kl_forms(model: nn.Module, guide: nn.Module, batch: Batch) -> KLForms:
    """Trace ``guide`` and ``model`` (replayed on the guide's draws) once on ``batch`` and
    sort the latent sites by whether ``KL(q || p)`` has a closed form. Neither the modules
    nor the random stream are changed."""
    try:  # a copy, so that a lazily built guide's parameters are not created here
        model, guide = _copy_pair(model, guide)
    except Exception:  # noqa: BLE001 - a module that cannot be copied is traced as it is
        pass
    # the caller's random stream is left where it was: training draws what it drew before
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(batch))
        model_trace = prune_subsample_sites(
            poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
        )
    closed, sampled, enumerated = [], [], []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if name not in guide_trace.nodes:
            if site["infer"].get("enumerate"):
                enumerated.append(name)
            continue
        q = guide_trace.nodes[name]["fn"]
        if _is_point_mass(q):
            # an autoguide's value or a MAP point: its term is log p(v) - log q(v) under any
            # estimator, nothing analytic to gain
            sampled.append(name)
            continue
        if not getattr(q, "closed_form_kl", True):
            # a KL registered for diagnostics but estimated by draws: dearer per step than
            # the sampled term and no lower in variance
            sampled.append(name)
            continue
        try:
            kl_divergence(q, site["fn"])
        except NotImplementedError:
            sampled.append(name)
        else:
            closed.append(name)
    return KLForms(tuple(closed), tuple(sampled), tuple(enumerated))


@dataclass(frozen=True)
class ElboChoice:
    """The estimator a fit uses and why (the run report prints both)."""

    name: str
    reason: str


def choose_elbo(
    name: str, model: nn.Module, guide: nn.Module, batch: Batch, *, jit: bool = True
) -> ElboChoice:
    """The estimator for ``name``; ``auto`` takes the one that learns fastest per second.

    - enumeration (``enum``) where the model marks sites for it that the guide leaves out;
    - the analytic KL (``meanfield``; ``jit_meanfield`` where the model declares
      ``static_structure`` and ``jit`` is allowed) when at least one latent site's KL
      against its prior has a closed form: the same ELBO with a lower-variance gradient
      (the other sites keep their sampled term in the same estimator), worth about 2 nats
      at equal epochs for the VAE family (``benchmarks/vs_pythae.py``);
    - the sampled KL (``jit`` or ``trace``) when no site has one.

    An analytic estimator asked for by name where no latent site has a closed-form KL is
    refused, naming the sites and the estimators that fit.
    """
    if name not in ELBO_NAMES:
        raise ValueError(f"unknown elbo '{name}'; valid: {list(ELBO_NAMES)}")
    if name not in _ANALYTIC and name != "auto":
        return ElboChoice(name, "asked for")
    forms = kl_forms(model, guide, batch)
    static = jit and getattr(model, "static_structure", False)
    if name in _ANALYTIC:
        if not forms.closed:
            raise ValueError(
                f"elbo '{name}' needs a closed-form KL at some latent site, and none of "
                f"{', '.join(forms.sampled) or 'its sites'} (guide vs prior) has one; use "
                f"{'jit' if static else 'trace'}, graph, renyi or iwae, or auto to choose"
            )
        return ElboChoice(name, "asked for")
    if forms.enumerated:
        return ElboChoice("enum", f"the model enumerates {', '.join(forms.enumerated)}")
    how = ", traced by the JIT (static structure)" if static else ""
    if forms.closed:
        rest = f"; sampled at {', '.join(forms.sampled)}" if forms.sampled else ""
        return ElboChoice(
            "jit_meanfield" if static else "meanfield",
            f"closed-form KL against the prior at {', '.join(forms.closed)}: analytic KL"
            f"{rest}{how}",
        )
    why = (
        f"no closed-form KL at {', '.join(forms.sampled)}: sampled KL"
        if forms.sampled
        else "no latent sites: sampled ELBO"
    )
    return ElboChoice("jit" if static else "trace", why + how)


# ELBOs whose differentiable_loss gives the gradient directly (others use loss_and_grads)
_DIFFERENTIABLE = {"trace", "jit", "meanfield", "jit_meanfield", "enum"}


def make_elbo(
    name: str,
    *,
    num_particles: int = 1,
    vectorize_particles: bool = True,
    max_plate_nesting: int | None = None,
) -> infer.ELBO:
    if name not in ELBOS:
        raise ValueError(f"unknown elbo '{name}'; valid: {sorted(ELBOS)}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if name in ("renyi", "iwae") and num_particles < 2:
        raise ValueError(f"elbo '{name}' needs num_particles >= 2, got {num_particles}")
    cls, extra = ELBOS[name]
    kwargs = dict(extra, num_particles=num_particles)
    if num_particles > 1:
        kwargs["vectorize_particles"] = vectorize_particles
    if max_plate_nesting is not None:
        kwargs["max_plate_nesting"] = max_plate_nesting
    if name not in ("enum", "renyi", "iwae"):  # RenyiELBO takes no ignore_jit_warnings
        kwargs["ignore_jit_warnings"] = True
    return cls(**kwargs)


class FlatBatch(nn.Module):
    """Calls ``fn(Batch)`` from flat tensors ``(index, *fields)``, so that the loss takes
    only tensors and can be traced by the JIT."""

    def __init__(self, fn: nn.Module, keys: list[str], size: int):
        super().__init__()
        self.fn = fn
        self.keys = list(keys)
        self.size = int(size)

    def forward(self, index: torch.Tensor, *tensors: torch.Tensor):
        return self.fn(
            Batch(dict(zip(self.keys, tensors, strict=True)), index=index, size=self.size)
        )


class PairLoss(nn.Module):
    """The negative ELBO of a (model, guide) pair as a module whose ``parameters()`` are
    every trainable parameter of both (Pyro's module-local parameter mode).

    ``step_loss(batch)`` computes the loss and fills the gradients; it returns the loss as
    a tensor, so the training loop need not synchronise with the device every step.
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        elbo_name: str,
        elbo: infer.ELBO,
        keys: list[str],
        size: int,
    ):
        super().__init__()
        self.elbo_name = elbo_name
        self.elbo = elbo
        self.pair = elbo(FlatBatch(model, keys, size), FlatBatch(guide, keys, size))
        self.keys = list(keys)
        self._compiled = None

    def _args(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return (batch.index, *(batch[k] for k in self.keys))

    def initialize(self, batch: Batch, *, jit: bool = False) -> None:
        """Create lazily initialised guide parameters and, for ``jit``, trace the loss."""
        with torch.no_grad():
            # (TraceEnum_ELBO refuses to compute a loss that needs no gradient)
            if self.elbo_name in _DIFFERENTIABLE and self.elbo_name != "enum":
                self._loss(batch)
            else:
                self.pair.guide(*self._args(batch))
        if jit:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.pair, self._args(batch), check_trace=False)
            # kept out of the module tree: it shares the pair's parameters, and state_dict
            # must list each of them once
            object.__setattr__(self, "_compiled", traced)

    def _loss(self, batch: Batch) -> torch.Tensor:
        if self._compiled is None:
            return self.pair(*self._args(batch))
        # The traced graph runs as recorded: the graph executor's profiling and fusion
        # passes cost more than they save on a CPU (measured in benchmarks/vae_step.py).
        with torch.jit.optimized_execution(False):
            return self._compiled(*self._args(batch))

    def step_loss(self, batch: Batch) -> torch.Tensor:
        if self.elbo_name in _DIFFERENTIABLE:
            loss = self._loss(batch)
            loss.backward()
            return loss.detach()
        value = self.elbo.loss_and_grads(self.pair.model, self.pair.guide, *self._args(batch))
        return torch.as_tensor(value)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> float:
        """A loss estimate without gradients (for validation data)."""
        return float(self.elbo.loss(self.pair.model, self.pair.guide, *self._args(batch)))


def module_local_params() -> None:
    """Switch Pyro to module-local parameters: a model's and a guide's parameters live in
    their modules (no global parameter store), as plain PyTorch training expects."""
    pyro.settings.set(module_local_params=True)
