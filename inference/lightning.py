"""Scale-out: any zoo (model, guide, ELBO) as a Lightning module, trained with DDP.

``lightning`` is an optional extra (``pip install -e .[lightning]``); it is imported only
when this module's functions are called, so the core works without it.

Rows are sharded across ranks by :func:`row_batches`, torch's ``BatchSampler`` over a
``DistributedSampler``: every epoch one seeded permutation (the same on every rank, reshuffled
per epoch through Lightning's ``set_epoch``), rank ``r`` takes its rows ``r, r + W, ...`` of
it, so step ``t`` covers the global batch of rows ``[t*W*B, (t+1)*W*B)`` of the permutation,
``B`` rows per rank. The :class:`~inference.data.Batch` a
rank's model sees keeps ``size`` = the FULL data size ``N`` and ``index`` = global row
indices, so ``pyro.plate("data", N, subsample=index)`` scales each rank's loss by ``N/B``;
DDP averages the gradients across ranks, which is the minibatch estimator of the full
ELBO's gradient with the global batch. With one process and ``batch_size = world_size * B``
the rows of every step are the same rows as in the ``world_size``-rank run.

Guide parameters created lazily (AutoGuides) are created in ``__init__`` on the first
batch, before Lightning wraps the module in DDP, which then broadcasts rank 0's values.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from inference.data import DATA_PLATE, Batch
from inference.elbos import ELBOS, JIT_ELBOS, PairLoss, make_elbo
from inference.svi import load_pair_state

__all__ = [
    "ACCELERATORS",
    "LIGHTNING_ELBOS",
    "LightningSetupError",
    "check_splittable",
    "check_trainer_options",
    "fit_lightning",
    "lightning_state",
    "load_lightning_checkpoint",
    "make_module",
    "require_lightning",
    "row_batches",
]

#: accelerators the CLI accepts (``cuda`` is taken as ``gpu``)
ACCELERATORS = ("cpu", "gpu")
#: ELBOs whose ``differentiable_loss`` Lightning can backpropagate itself
LIGHTNING_ELBOS = tuple(
    name
    for name, (cls, _) in ELBOS.items()
    if name not in JIT_ELBOS and hasattr(cls, "differentiable_loss")
)
#: Lightning strategies that keep a full replica of the parameters on every rank
DDP_STRATEGIES = ("auto", "single_device")
#: state_dict prefix of the (model, guide) pair inside the Lightning module
PREFIX = "loss_fn."


class LightningSetupError(ValueError):
    """A Lightning request that cannot be met: the message names the option or the model."""


def require_lightning():
    """The ``lightning`` package, or an ImportError that says how to install it."""
    try:
        import lightning
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise ImportError(
            "the lightning trainer needs the 'lightning' package: install the 'lightning' "
            "extra: pip install -e .[lightning]"
        ) from None
    return lightning


# ----- checks, before any work -----------------------------------------------------------------


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_trainer_options(
    devices: Any = 1,
    num_nodes: Any = 1,
    accelerator: str = "cpu",
    strategy: str | None = None,
    elbo: str = "trace",
) -> tuple[int, int, str, str]:
    """Validate the trainer options; return ``(devices, num_nodes, accelerator, strategy)``.

    Rules: ``devices`` and ``num_nodes`` are positive integers; ``accelerator`` is ``cpu``
    or ``gpu`` (``cuda``); ``gpu`` needs CUDA and at most as many devices as this machine
    has GPUs; ``cpu`` allows at most twice as many processes per node as this machine has
    cores (more only oversubscribes them); ``strategy`` must be one Lightning knows and one
    that replicates the parameters (DDP family; sharding strategies are refused); the ELBO
    must have a differentiable loss.
    """
    for label, value in (("devices", devices), ("num_nodes", num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LightningSetupError(f"{label} must be a positive integer, got {value!r}")
    accelerator = "gpu" if accelerator == "cuda" else accelerator
    if accelerator not in ACCELERATORS:
        raise LightningSetupError(
            f"unknown accelerator '{accelerator}'; valid: {list(ACCELERATORS)}"
        )
    if accelerator == "gpu":
        if not torch.cuda.is_available():
            raise LightningSetupError(
                "accelerator 'gpu' was asked for but CUDA is not available on this machine "
                "(use --accelerator cpu)"
            )
        have = torch.cuda.device_count()
        if devices > have:
            raise LightningSetupError(
                f"--devices {devices} asks for more GPUs than this machine has ({have})"
            )
    else:
        cores = _cpu_cores()
        if devices > 2 * cores:
            raise LightningSetupError(
                f"--devices {devices} asks for more CPU processes than this machine can run "
                f"(it has {cores} cores; at most {2 * cores} processes per node)"
            )
    if strategy is None:
        strategy = "ddp" if devices * num_nodes > 1 else "auto"
    lightning = require_lightning()
    known = lightning.pytorch.strategies.StrategyRegistry.available_strategies()
    if strategy not in known and strategy != "auto":
        raise LightningSetupError(
            f"unknown strategy '{strategy}': Lightning does not know it; valid: "
            f"{sorted(s for s in known if s.startswith('ddp'))} (or 'auto')"
        )
    if not (strategy.startswith("ddp") or strategy in DDP_STRATEGIES):
        raise LightningSetupError(
            f"strategy '{strategy}' shards or compiles the model, which a Pyro model and "
            "guide do not support; use a ddp strategy"
        )
    if elbo not in LIGHTNING_ELBOS and elbo != "auto":
        raise LightningSetupError(
            f"elbo '{elbo}' has no differentiable loss for Lightning to backpropagate; "
            f"valid with --trainer lightning: {list(LIGHTNING_ELBOS)}"
        )
    return devices, num_nodes, accelerator, strategy


def check_splittable(
    model: nn.Module, data: Mapping[str, torch.Tensor], batch_size: int, world_size: int
) -> None:
    """Refuse a model whose rows cannot be split across ``world_size`` ranks.

    A model cannot be split when it declares ``splittable = False`` (rows that depend on
    each other, such as one long time series), when its ``data`` plate does not follow the
    batch's subsample (its loss would not be scaled by ``N / B``: every rank would weigh its
    share as if it were all the data), or when the data holds fewer rows than one global
    batch (``world_size * batch_size``).
    """
    name = getattr(model, "name", type(model).__name__)
    if not getattr(model, "splittable", True):
        raise LightningSetupError(
            f"model '{name}' cannot be split across ranks: its rows are not exchangeable "
            "(splittable = False); train it with the plain engine"
        )
    size = len(next(iter(data.values())))
    if batch_size < 1:
        raise LightningSetupError(f"batch_size must be a positive integer, got {batch_size}")
    if size < world_size * batch_size:
        raise LightningSetupError(
            f"model '{name}' cannot be split across ranks: the data has {size} rows, fewer "
            f"than one global batch of {world_size} ranks x {batch_size} rows"
        )
    # trace the model on a strict subset of the rows: its data plate must be subsampled
    index = torch.arange(min(batch_size, max(1, size - 1)))
    rows = {k: v[: len(index)] for k, v in data.items()}
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(Batch(rows, index=index, size=size))
    plate = trace.nodes.get(DATA_PLATE)
    ok = (
        plate is not None
        and site_is_subsample(plate)
        and plate["fn"].size == size
        and int(plate["value"].shape[0]) == len(index)
    )
    if not ok:
        raise LightningSetupError(
            f"model '{name}' cannot be split across ranks: it has no pyro.plate('data', "
            "batch.size, subsample=batch.index) over its rows, so a rank's share of the rows "
            "would not be scaled to the full data"
        )


# ----- data: row indices sharded by rank ---------------------------------------------------------


def row_batches(
    size: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle: bool = True,
) -> torch.utils.data.BatchSampler:
    """Per-rank batches of row indices: torch's ``BatchSampler`` over a ``DistributedSampler``.
    Each epoch draws one permutation from ``seed + epoch`` (the same on every rank); rank
    ``r`` takes every ``world_size``-th row of it from the ``r``-th, in batches of
    ``batch_size``. Incomplete batches are dropped, so every rank takes the same number of
    equally scaled steps, ``size // (world_size * batch_size)`` per epoch (no padding with
    duplicated rows). A single global batch that holds every row is not shuffled."""
    if batch_size * world_size > size:
        raise LightningSetupError(
            f"{size} rows cannot fill one global batch of {world_size} ranks x {batch_size} rows"
        )
    rows = torch.utils.data.DistributedSampler(
        range(size),
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle and batch_size * world_size < size,
        seed=seed,
        drop_last=True,
    )
    return torch.utils.data.BatchSampler(rows, batch_size, drop_last=True)


class _RowCollate:
    """Row indices -> :class:`Batch` of those rows, with the FULL data size."""

    def __init__(self, data: Mapping[str, torch.Tensor], size: int):
        self.data = dict(data)
        self.size = int(size)

    def __call__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        rows = {k: v.index_select(0, index) for k, v in self.data.items()}
        return Batch(rows, index=index, size=self.size)


# ----- the Lightning module -----------------------------------------------------------------


def make_module(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    batch_size: int | None = None,
    elbo: str = "trace",
    num_particles: int = 1,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    seed: int = 0,
    row_scale: float = 1.0,
):
    """A ``lightning.LightningModule`` that trains ``guide`` to ``model``'s posterior on
    ``data``: ``lightning.Trainer(strategy="ddp", devices=N, num_nodes=M).fit(module)``.

    :param batch_size: rows per rank and step (``None``: the rows split evenly across ranks).
    :param row_scale: extra weight of the data plate's terms (1, the default, is correct;
        the tests use ``1 / world_size`` to show that a rank which scales its rows to its
        share of the data, not to ``N``, gives another posterior).
    """
    L = require_lightning()
    if elbo == "auto":  # the traced (jit) loss is the plain engine's; Lightning runs eager
        elbo = "trace"
    if elbo not in LIGHTNING_ELBOS:
        raise LightningSetupError(
            f"elbo '{elbo}' has no differentiable loss for Lightning to backpropagate; "
            f"valid: {list(LIGHTNING_ELBOS)}"
        )

    class ZooLightningModule(L.LightningModule):
        """A zoo (model, guide) pair; ``training_step`` returns the negative ELBO of the
        rank's rows at full-data scale."""

        def __init__(self):
            super().__init__()
            self.data = {k: v.detach().cpu() for k, v in data.items()}
            self.size = len(next(iter(self.data.values())))
            self.batch_size = batch_size
            self.lr = float(lr)
            self.weight_decay = float(weight_decay)
            self.seed = int(seed)
            elbo_obj = make_elbo(
                elbo,
                num_particles=num_particles,
                max_plate_nesting=getattr(model, "max_plate_nesting", None),
            )
            self.row_scale = float(row_scale)
            self.loss_fn = PairLoss(model, guide, elbo, elbo_obj, list(data), self.size)
            # lazily created guide parameters exist before DDP wraps the module
            first = _RowCollate(self.data, self.size)(range(min(self.size, batch_size or 1)))
            self.loss_fn.initialize(first)
            self.losses: list[torch.Tensor] = []

        def train_dataloader(self):
            world, rank = 1, 0
            if self._trainer is not None:
                world, rank = self.trainer.world_size, self.trainer.global_rank
            per_rank = self.batch_size or max(1, self.size // world)
            sampler = row_batches(self.size, per_rank, rank=rank, world_size=world, seed=self.seed)
            return torch.utils.data.DataLoader(
                range(self.size),
                batch_sampler=sampler,
                collate_fn=_RowCollate(self.data, self.size),
                num_workers=0,
            )

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            if isinstance(batch, Batch):
                rows = {k: v.to(device) for k, v in batch.items()}
                return Batch(rows, index=batch.index.to(device), size=batch.size)
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

        def training_step(self, batch, batch_idx):
            args = (batch.index, *(batch[k] for k in self.loss_fn.keys))
            if self.row_scale != 1.0:
                with _ScaleRows(self.row_scale):
                    loss = self.loss_fn.pair(*args)
            else:
                loss = self.loss_fn.pair(*args)
            self.losses.append(loss.detach())
            self.log(
                "loss", loss.detach(), prog_bar=True, on_step=True, batch_size=len(batch.index)
            )
            return loss

        def configure_optimizers(self):
            params = [p for p in self.parameters() if p.requires_grad]
            if not params:
                raise LightningSetupError("the model and guide have no trainable parameters")
            if self.weight_decay > 0:  # decoupled decay, as the plain engine's "adamw"
                return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
            return torch.optim.Adam(params, lr=self.lr)

        def gathered_losses(self) -> list[float]:
            """This fit's per-step losses averaged over ranks (the global batch's estimate);
            every rank must call it."""
            if not self.losses:
                return []
            local = torch.stack(self.losses).float()
            if self._trainer is not None and self.trainer.world_size > 1:
                local = self.all_gather(local).mean(0)
            return local.cpu().tolist()

    return ZooLightningModule()


class _ScaleRows(Messenger):
    """Multiplies the scale of every site under the data plate (tests only)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def _process_message(self, msg):
        if any(frame.name == DATA_PLATE for frame in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.factor


class _NoAdverts(logging.Filter):
    """Drops Lightning's tips to install its cloud services from a run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_adverts() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in logger.filters):
        logger.addFilter(_NoAdverts())


def _trainer_kwargs(
    devices: int, num_nodes: int, accelerator: str, strategy: str, steps: int
) -> dict[str, Any]:
    return dict(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        max_steps=steps,
        max_epochs=-1,
        log_every_n_steps=1,  # row_batches make one batch an epoch: log every step
        use_distributed_sampler=False,  # row_batches shards the rows
        num_sanity_val_steps=0,
    )


def fit_lightning(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    steps: int,
    batch_size: int | None = None,
    elbo: str = "trace",
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    seed: int = 0,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    strategy: str | None = None,
    default_root_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = False,
    logger: Any = False,
    row_scale: float = 1.0,
) -> tuple[Any, Any]:
    """Train ``guide`` to ``model`` on ``data`` with ``lightning.Trainer``; returns
    ``(module, trainer)``. ``weight_decay > 0`` trains with AdamW, ``clip_norm`` clips the
    global gradient norm (as the plain engine does). Every option is checked before any
    work. ``checkpoint`` is the Lightning ``.ckpt`` file written every ``checkpoint_every``
    steps and at the end; ``resume=True`` continues from it when it exists."""
    devices, num_nodes, accelerator, strategy = check_trainer_options(
        devices, num_nodes, accelerator, strategy, elbo
    )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LightningSetupError(f"steps must be a positive integer, got {steps!r}")
    world = devices * num_nodes
    size = len(next(iter(data.values())))
    per_rank = batch_size or max(1, size // world)
    check_splittable(model, data, per_rank, world)
    L = require_lightning()
    L.seed_everything(seed, workers=True, verbose=False)
    pyro.set_rng_seed(seed)
    module = make_module(
        model,
        guide,
        data,
        batch_size=per_rank,
        elbo=elbo,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        row_scale=row_scale,
    )
    callbacks = []
    ckpt_path = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=checkpoint.parent,
                filename=checkpoint.stem,
                every_n_train_steps=checkpoint_every or max(1, steps // 10),
                save_top_k=1,
                enable_version_counter=False,
                save_on_train_epoch_end=False,
            )
        )
        if resume and checkpoint.exists():
            ckpt_path = str(checkpoint)
    _quiet_adverts()
    trainer = L.Trainer(
        **_trainer_kwargs(devices, num_nodes, accelerator, strategy, steps),
        default_root_dir=default_root_dir,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=bool(callbacks),
        gradient_clip_val=clip_norm,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        # the run folder holds the run's other files by design, and Lightning's own use of
        # torch's pytree API warns about a deprecation that is Lightning's to fix
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
        trainer.fit(module, ckpt_path=ckpt_path)
    if checkpoint is not None:
        # the final state, whole (optimizer and loops too: --resume needs them); all ranks
        # call, rank 0 writes
        trainer.save_checkpoint(checkpoint, weights_only=False)
    return module, trainer


# ----- checkpoints: Lightning's .ckpt into the plain engine -------------------------------


def lightning_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The (model, guide) pair's ``PairLoss`` state_dict from a Lightning ``.ckpt``, read
    with ``torch.load(weights_only=True)`` (no code runs), and ``{"global_step", "epoch"}``."""
    from inference.checkpoint import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Lightning checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or a corrupt file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"Lightning checkpoint '{path}' cannot be read as tensors and plain data ({first})"
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"'{path}' is not a Lightning checkpoint (no state_dict)")
    state = {k[len(PREFIX) :]: v for k, v in payload["state_dict"].items() if k.startswith(PREFIX)}
    if not state:
        raise CheckpointError(f"'{path}' holds no latent-zoo model and guide parameters")
    meta = {"global_step": payload.get("global_step"), "epoch": payload.get("epoch")}
    return state, meta


def load_lightning_checkpoint(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
) -> dict[str, Any]:
    """Load a Lightning ``.ckpt`` of a zoo run into ``model`` and ``guide`` (built as for
    training), so :func:`inference.posterior.posterior` and the diagnostics use them.
    Returns ``{"global_step", "epoch"}``."""
    state, meta = lightning_state(path)
    load_pair_state(model, guide, data, state, f"Lightning checkpoint '{path}'")
    return meta
