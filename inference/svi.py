"""Minibatch stochastic variational inference: ``fit(model, guide, data, ...)``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from pyro.util import get_rng_state, set_rng_state
from torch import nn
from tqdm import tqdm  # text bars everywhere: tqdm.auto warns in notebooks without ipywidgets

from inference.checkpoint import load_checkpoint, save_checkpoint
from inference.config import OPTIMIZERS, TrainConfig
from inference.data import Batch, Minibatches, full_batch
from inference.elbos import ELBO_NAMES, JIT_ELBOS, PairLoss, choose_elbo, make_elbo

__all__ = ["fit", "FitResult", "TrainingDiverged", "OPTIMIZERS", "SCHEDULES", "restore"]

SCHEDULES = ("constant", "exponential", "cosine")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; parameters were restored to the last finite state."""


@dataclass
class FitResult:
    """What a fit produced. ``losses`` are per-step negative-ELBO estimates (full-data
    scale); ``loss_fn`` holds the trained model and guide parameters."""

    losses: list[float]
    steps: int
    epochs: float
    stopped: str
    seconds: float
    loss_fn: PairLoss
    lrs: list[float] = field(default_factory=list)
    elbo: str = ""  # the estimator used (``auto`` resolved)
    elbo_reason: str = ""  # why it was chosen

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, min(50, len(self.losses) // 10)) :]
        return sum(tail) / len(tail)


def _optimizer(name: str, params, lr: float, clip_norm: float | None, weight_decay: float):
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        try:
            # one fused kernel for all parameters: half the time of foreach Adam on a CPU
            return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
            return cls(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "clipped_adam":
        return ClippedAdam(params, lr=lr, clip_norm=clip_norm or 10.0, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; valid: {list(OPTIMIZERS)}")


def _schedule(name: str, opt, steps: int, final_factor: float):
    if name == "constant":
        return None  # nothing to step
    if name == "exponential":
        # the last of ``steps`` steps runs at lr * final_factor
        gamma = final_factor ** (1.0 / max(1, steps - 1))
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    if name == "cosine":
        base = opt.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, max(1, steps - 1), base * final_factor
        )
    raise ValueError(f"unknown lr_schedule '{name}'; valid: {list(SCHEDULES)}")


def _rng_state() -> dict[str, Any]:
    """Pyro's RNG state (torch, Python's ``random``, numpy) plus CUDA's, as tensors and plain
    containers: numpy's key array is kept as a tensor so that the checkpoint stays loadable
    with ``weights_only=True``."""
    state = get_rng_state()
    name, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`_rng_state`; also reads checkpoints written before numpy's state was
    kept (``{"torch", "python"}``)."""
    state = dict(state)
    if "python" in state:
        state["random"] = state.pop("python")
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        state["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    set_rng_state(state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Unset:
    def __repr__(self) -> str:
        return "<from config>"


#: a training argument of :func:`fit` not passed: taken from ``config``, else the default
_UNSET: Any = _Unset()
#: :func:`fit`'s training defaults when no config is given
_FIT_DEFAULTS = {
    "steps": None,
    "epochs": None,
    "batch_size": None,
    "optimizer": "adam",
    "lr": 1e-2,
    "weight_decay": 0.0,
    "clip_norm": None,
}


def _training_settings(config: TrainConfig | None, **given: Any) -> tuple:
    """The training arguments of :func:`fit`, each from the call, else from ``config``,
    else :data:`_FIT_DEFAULTS`; returned in the order of ``given``."""
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    settings = {}
    for name, value in given.items():
        if value is not _UNSET:
            settings[name] = value
        elif config is not None:
            settings[name] = getattr(config, name)
        else:
            settings[name] = _FIT_DEFAULTS[name]
    if config is not None:
        if given["steps"] is not _UNSET or given["epochs"] is not _UNSET:
            # an explicit budget replaces the config's whole budget
            settings["steps"] = None if given["steps"] is _UNSET else given["steps"]
            settings["epochs"] = None if given["epochs"] is _UNSET else given["epochs"]
        elif settings["steps"] is None and settings["epochs"] is None:
            settings["steps"] = TrainConfig.DEFAULT_STEPS
    if settings["optimizer"] == "auto":
        settings["optimizer"] = "adamw" if settings["weight_decay"] > 0 else "adam"
    return tuple(settings.values())


def _check_options(
    *,
    steps,
    epochs,
    elbo,
    optimizer,
    lr,
    lr_schedule,
    clip_norm,
    patience,
    checkpoint_every,
    log_every,
):
    if steps is None and epochs is None:
        raise ValueError("give steps or epochs")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if epochs is not None and not epochs > 0:
        raise ValueError(f"epochs must be positive, got {epochs!r}")
    if elbo not in ELBO_NAMES:
        raise ValueError(f"unknown elbo '{elbo}'; valid: {list(ELBO_NAMES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; valid: {list(OPTIMIZERS)}")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule '{lr_schedule}'; valid: {list(SCHEDULES)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm!r}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 epoch, got {patience!r}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every!r}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every!r}")


def _default_validate() -> bool:
    return os.environ.get("ZOO_VALIDATE", "0") not in ("", "0", "false", "False")


def fit(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    config: TrainConfig | None = None,
    steps: int | None = _UNSET,
    epochs: float | None = _UNSET,
    batch_size: int | None = _UNSET,
    elbo: str = "auto",
    num_particles: int = 1,
    vectorize_particles: bool = True,
    optimizer: str = _UNSET,
    lr: float = _UNSET,
    weight_decay: float = _UNSET,
    lr_schedule: str = "constant",
    lr_final_factor: float = 0.1,
    clip_norm: float | None = _UNSET,
    patience: int | None = None,
    min_rel_improvement: float = 1e-3,
    log_every: int = 10,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    meta: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    validate: bool | None = None,
    callback: Callable[[int, float], None] | None = None,
    trainable: Callable[[str], bool] | Sequence[str] | None = None,
) -> FitResult:
    """Fit ``guide`` to ``model``'s posterior on ``data`` by minibatch SVI.

    :param model: a module called as ``model(batch)`` whose data plate is
        ``pyro.plate("data", batch.size, subsample=batch.index)``.
    :param guide: a module called as ``guide(batch)`` (see :func:`guides.build`).
    :param data: row-aligned tensors (already validated).
    :param config: a :class:`~inference.config.TrainConfig` (a zoo model's ``config``) whose
        training fields fill every training argument not passed explicitly: ``fit(model,
        guide, data, config=model.config)`` trains the way ``zoo train`` does (the holdout
        split is the caller's). Without it: Adam at lr 0.01, no clipping, full batch.
    :param steps: optimisation steps; or ``epochs`` passes over the data.
    :param batch_size: rows per step (``None``: the whole data set).
    :param elbo: one of ``trace``, ``jit`` (Trace_ELBO compiled by the PyTorch JIT),
        ``meanfield``, ``jit_meanfield`` (the KL of every latent site in closed form),
        ``renyi``, ``iwae``, ``graph``, ``enum``; ``auto`` (default) chooses with
        :func:`inference.elbos.choose_elbo`: enumeration where the model enumerates, the
        analytic KL where every site has one, the sampled KL otherwise, JIT-compiled for
        models that declare ``static_structure``. ``FitResult.elbo`` and ``elbo_reason``
        say which and why.
    :param num_particles: ELBO particles, vectorized unless ``vectorize_particles=False``.
    :param optimizer: ``adam``, ``adamw`` or ``clipped_adam``; ``clip_norm`` clips the
        global gradient norm (per-parameter for ``clipped_adam``).
    :param lr_schedule: ``constant``, ``exponential`` or ``cosine`` down to
        ``lr * lr_final_factor`` at the last step.
    :param patience: stop early when the epoch-mean loss has not improved by
        ``min_rel_improvement`` (relative) for this many epochs.
    :param log_every: steps between loss checks, progress updates and NaN guards (the loop
        does not synchronise with the device in between).
    :param checkpoint: file to write every ``checkpoint_every`` steps and at the end;
        with ``resume=True`` training continues exactly from it when it exists.
    :param validate: Pyro's distribution argument checks (default: off unless the
        environment sets ``ZOO_VALIDATE=1``, as the test suite does).
    :param trainable: train only some parameters, the rest held fixed: a predicate on the
        qualified name (``"model.<name>"`` or ``"guide.<name>"``, names as in
        ``named_parameters()``) or a sequence of such name prefixes. Online inference with
        a frozen network, adapting only the environment-specific parts of a model, or one
        stage of a staged schedule all train this way. ``None`` (default): every parameter.
    :raises TrainingDiverged: the loss became NaN/Inf; the parameters are restored to the
        last finite state before raising, and the last checkpoint on disk is left as it was.
    """
    steps, epochs, batch_size, optimizer, lr, weight_decay, clip_norm = _training_settings(
        config,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
    )
    _check_options(
        steps=steps,
        epochs=epochs,
        elbo=elbo,
        optimizer=optimizer,
        lr=lr,
        lr_schedule=lr_schedule,
        clip_norm=clip_norm,
        patience=patience,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
    )
    if validate is None:
        validate = _default_validate()
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    pyro.set_rng_seed(seed)
    model.to(device)
    guide.to(device)
    data = {k: v.to(device) for k, v in data.items()}
    loader = Minibatches(data, batch_size, seed=seed)
    with pyro.validation_enabled(validate):
        choice = choose_elbo(elbo, model, guide, _peek(loader))
    elbo = choice.name
    total = steps if steps is not None else int(math.ceil(epochs * loader.steps_per_epoch))

    elbo_obj = make_elbo(
        elbo,
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        max_plate_nesting=getattr(model, "max_plate_nesting", None),
    )
    loss_fn = PairLoss(model, guide, elbo, elbo_obj, list(data), loader.size)
    with pyro.validation_enabled(validate):
        loss_fn.initialize(_peek(loader), jit=elbo in JIT_ELBOS)
    params = [p for p in loss_fn.parameters() if p.requires_grad]
    if trainable is not None:
        params = _selected(model, guide, trainable, params)
    if not params:
        raise ValueError("the model and guide have no trainable parameters")
    opt = _optimizer(optimizer, params, lr, clip_norm, weight_decay)
    sched = _schedule(lr_schedule, opt, total, lr_final_factor)

    losses: list[float] = []
    lrs: list[float] = []
    step = 0
    best, stale, last_epoch = math.inf, 0, 0
    epoch_losses: list[float] = []
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state, saved = load_checkpoint(checkpoint)
        loss_fn.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        losses = state["losses"].tolist()
        lrs = state["lrs"].tolist()
        step = int(saved["step"])
        best, stale = float(saved["best"]), int(saved["stale"])
        last_epoch = int(saved["last_epoch"])
        epoch_losses = state["epoch_losses"].tolist()
        _set_rng_state(state["rng"])

    def write_checkpoint() -> None:
        if checkpoint is None:
            return
        state = {
            "module": loss_fn.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": {} if sched is None else sched.state_dict(),
            "loader": loader.state_dict(),
            "losses": torch.tensor(losses, dtype=torch.float64),
            "lrs": torch.tensor(lrs, dtype=torch.float64),
            "epoch_losses": torch.tensor(epoch_losses, dtype=torch.float64),
            "rng": _rng_state(),
        }
        info = dict(
            meta or {},
            step=step,
            best=best,
            stale=stale,
            last_epoch=last_epoch,
            elbo=elbo,
            seed=seed,
            total_steps=total,
        )
        save_checkpoint(checkpoint, state, info)

    snapshot = {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
    snapshot_step = step
    pending: list[torch.Tensor] = []
    stopped = "steps"
    start = time.perf_counter()
    bar = tqdm(
        total=total,
        initial=step,
        disable=not progress,
        desc="svi",
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )
    try:
        with pyro.validation_enabled(validate):
            while step < total:
                batch = next(loader)
                opt.zero_grad(set_to_none=True)
                pending.append(loss_fn.step_loss(batch))
                if clip_norm is not None and optimizer != "clipped_adam":
                    torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)
                opt.step()
                if sched is None:
                    lrs.append(lr)
                else:
                    lrs.append(sched.get_last_lr()[0])
                    sched.step()
                step += 1
                at_epoch_end = loader.position == loader.steps_per_epoch
                checkpoint_due = checkpoint_every is not None and step % checkpoint_every == 0
                if len(pending) >= log_every or at_epoch_end or checkpoint_due or step == total:
                    values = torch.stack(pending).tolist()
                    pending.clear()
                    if not all(math.isfinite(v) for v in values):
                        first_bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
                        bad_step = step - len(values) + first_bad + 1
                        loss_fn.load_state_dict(snapshot)
                        step = snapshot_step
                        del lrs[len(losses) :]
                        # the checkpoint on disk (if any) predates the divergence: keep it
                        raise TrainingDiverged(
                            f"loss became {values[first_bad]} at step {bad_step}; parameters "
                            f"restored to step {snapshot_step} (last finite loss). Try a "
                            "smaller lr, clip_norm, or check the data."
                        )
                    losses.extend(values)
                    epoch_losses.extend(values)
                    snapshot = {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
                    snapshot_step = step
                    bar.update(len(values))
                    bar.set_postfix(loss=f"{values[-1]:.4g}", refresh=False)
                    if callback is not None:
                        callback(step, values[-1])
                if at_epoch_end and loader.epoch + 1 > last_epoch:
                    last_epoch = loader.epoch + 1
                    mean = sum(epoch_losses) / max(1, len(epoch_losses))
                    epoch_losses = []
                    if patience is not None:
                        # (best starts at inf, where inf - inf would be nan)
                        if best == math.inf or mean < best - min_rel_improvement * abs(best):
                            best, stale = mean, 0
                        else:
                            stale += 1
                        if stale >= patience:
                            stopped = "early_stopping"
                            break
                if checkpoint_due:
                    write_checkpoint()
    finally:
        bar.close()
    write_checkpoint()
    return FitResult(
        losses=losses,
        steps=step,
        epochs=step / loader.steps_per_epoch,
        stopped=stopped,
        seconds=time.perf_counter() - start,
        loss_fn=loss_fn,
        lrs=lrs,
        elbo=elbo,
        elbo_reason=choice.reason,
    )


def _selected(
    model: nn.Module,
    guide: nn.Module,
    trainable: Callable[[str], bool] | Sequence[str],
    params: list[torch.Tensor],
) -> list[torch.Tensor]:
    """The parameters of ``params`` whose qualified name ``trainable`` accepts; a prefix
    that matches no parameter is an error (a typo would otherwise train nothing)."""
    named = [(f"{owner}.{name}", p) for owner, module in (("model", model), ("guide", guide))
             for name, p in module.named_parameters()]  # fmt: skip
    if callable(trainable):
        keep = trainable
    else:
        prefixes = [trainable] if isinstance(trainable, str) else list(trainable)
        unmatched = [x for x in prefixes if not any(n.startswith(x) for n, _ in named)]
        if unmatched:
            raise ValueError(
                f"trainable prefix(es) {unmatched} match no parameter; names start with "
                f"{sorted({n.rsplit('.', 1)[0] for n, _ in named})[:8]}"
            )

        def keep(name: str) -> bool:
            return any(name.startswith(x) for x in prefixes)

    chosen = {id(p) for n, p in named if keep(n)}
    return [p for p in params if id(p) in chosen]


def first_batch(data: Mapping[str, torch.Tensor], batch_size: int | None, seed: int = 0) -> Batch:
    """The first batch :func:`fit` trains on with these settings."""
    return _peek(Minibatches(data, batch_size, seed=seed))


def _peek(loader: Minibatches):
    """The first batch the loader will give, without moving the loader."""
    state = loader.state_dict()
    batch = next(loader)
    loader.load_state_dict(state)
    return batch


def load_pair_state(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    source: str,
) -> None:
    """Load a ``PairLoss`` state dict into ``model`` and ``guide`` (built as for training);
    ``source`` names the file in the error when the state belongs to another pair."""
    size = len(next(iter(data.values())))
    loss_fn = PairLoss(model, guide, "trace", make_elbo("trace"), list(data), size)
    with torch.no_grad():
        guide(full_batch(data))  # create lazily initialised guide parameters
    missing, unexpected = loss_fn.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source} was written for another model or guide: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def restore(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    checkpoint: str | os.PathLike,
) -> dict[str, Any]:
    """Load a checkpoint's parameters into ``model`` and ``guide`` (built as for training).
    Returns the checkpoint's metadata."""
    state, meta = load_checkpoint(checkpoint)
    load_pair_state(model, guide, data, state["module"], f"checkpoint '{checkpoint}'")
    return meta
