"""ELBO choice by name, and the (model, guide) pair as one differentiable torch module."""

from __future__ import annotations

import warnings

import pyro
import torch
from pyro import infer
from torch import nn

from inference.data import Batch

__all__ = ["ELBOS", "ELBO_NAMES", "make_elbo", "resolve_elbo", "FlatBatch", "PairLoss"]

#: ELBO name -> (Pyro class, extra kwargs). ``jit`` is Trace_ELBO traced by the PyTorch JIT.
ELBOS: dict[str, tuple[type, dict]] = {
    "trace": (infer.Trace_ELBO, {}),
    "jit": (infer.Trace_ELBO, {}),
    "meanfield": (infer.TraceMeanField_ELBO, {}),
    "renyi": (infer.RenyiELBO, {"alpha": 0.5}),
    "iwae": (infer.RenyiELBO, {"alpha": 0.0}),
    "graph": (infer.TraceGraph_ELBO, {}),
    "enum": (infer.TraceEnum_ELBO, {}),
}

#: names ``fit`` accepts: ``auto`` picks the fastest correct path for the model
ELBO_NAMES = ("auto", *ELBOS)


def resolve_elbo(name: str, model: nn.Module) -> str:
    """``auto`` -> ``jit`` for a model that declares ``static_structure`` (its sites and
    shapes never depend on data values, so a traced loss stays correct), else ``trace``."""
    if name not in ELBO_NAMES:
        raise ValueError(f"unknown elbo '{name}'; valid: {list(ELBO_NAMES)}")
    if name != "auto":
        return name
    return "jit" if getattr(model, "static_structure", False) else "trace"


# ELBOs whose differentiable_loss gives the gradient directly (others use loss_and_grads)
_DIFFERENTIABLE = {"trace", "jit", "meanfield", "enum"}


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
