"""Training runs on disk: ``train_run``, ``diagnose_run`` and ``sample_run``.

A run folder holds:

- ``config.json``: model name and config, guide and local guide (``local_guide``, read as
  ``normal`` from a run written before it existed), priors (as ``Dist(args)`` strings), seed,
  steps, engine, ELBO, training options and the data source: all a rebuild needs;
- ``metrics.csv``: ``step,loss,lr`` per SVI step;
- ``checkpoint.pt``: the SVI state (plain tensors and JSON, see :mod:`inference.checkpoint`),
  written every ``checkpoint_every`` steps; ``resume=True`` continues exactly from it;
- ``idata.nc``: the posterior as ArviZ InferenceData (netCDF);
- ``figures/*.png``: ELBO trace, posterior predictive check, trace plot (NUTS);
- ``diagnostics.json`` and ``report.md``: the diagnostics and the model's evaluation.

Every input is checked before training starts and before anything is written, so a bad
invocation never touches an existing run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch

import guides
from inference.data import DataError, holdout_split
from inference.elbos import ELBO_NAMES
from zoo import registry
from zoo.base import ZooModel
from zoo.cli.choices import DEFAULT_NUTS_DRAWS, ENGINES, TRAINERS  # one source: the light module
from zoo.cli.datafiles import load_data_file
from zoo.cli.options import (
    check_device,
    parse_priors,
    parse_sets,
    positive_int,
)
from zoo.cli.report import QuietArviz, device_of, read_idata, write_outputs, write_report
from zoo.cli.runfiles import jsonable, num_rows, read_config, read_losses, write_metrics, write_text

__all__ = [
    "ENGINES",
    "RUN_FILES",
    "SampleFiles",
    "TRAINERS",
    "train_run",
    "diagnose_run",
    "sample_run",
    "parse_sets",
    "parse_priors",
    "read_idata",
]

#: the files a run folder may hold; a fresh run refuses a folder that holds any of them
RUN_FILES = (
    "config.json",
    "metrics.csv",
    "checkpoint.pt",
    "lightning.ckpt",
    "idata.nc",
    "diagnostics.json",
    "report.md",
)


# ----- data ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _load_data(model: ZooModel, source: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if source["source"] == "file":
        path = Path(source["path"])
        arrays = load_data_file(path, model)
        if "sha256" in source and _sha256(path) != source["sha256"]:
            raise DataError(f"data file '{path}' changed since the run was trained")
        try:
            return model.validate(arrays)
        except DataError as error:
            raise DataError(f"data file '{path}': {error}") from None
    return model.default_data(int(source.get("seed", 0)))


def _split(model: ZooModel, data: dict[str, torch.Tensor], seed: int):
    """``(train, test)``: the model's seeded holdout split (test is None without one)."""
    return model.split(data, seed)


def _known_truth(model: ZooModel, source: Mapping[str, Any], data, seed: int) -> dict | None:
    """The simulation's truth for the run's rows, split like the data (``{"train": {"truth",
    "extras"}, "test": ...}``), when the run's data are the model's default data and those
    are exactly ``simulate(seed)``'s data (compared, never assumed); else ``None``. Entries
    with one row per data row are split; the others (globals) go to both parts."""
    if source.get("source") != "default" or not model.has_truth():
        return None
    sim_seed = int(source.get("seed", 0))
    if hasattr(model, "simulate_with_extras"):
        truth, simulated, extras = model.simulate_with_extras(sim_seed)
    else:
        (truth, simulated), extras = model.simulate(sim_seed), {}
    if simulated.keys() != data.keys() or not all(torch.equal(simulated[k], data[k]) for k in data):
        return None
    rows = num_rows(data)
    parts = {}
    for part, values in (("truth", truth), ("extras", extras)):
        per_row = {k: v for k, v in values.items() if v.dim() and v.shape[0] == rows}
        shared = {k: v for k, v in values.items() if k not in per_row}
        train, test = holdout_split(per_row, model.config.holdout, seed) if per_row else ({}, None)
        parts[part] = ({**shared, **train}, None if test is None else {**shared, **test})
    out = {"train": {"truth": parts["truth"][0], "extras": parts["extras"][0]}}
    if parts["truth"][1] is not None:
        out["test"] = {"truth": parts["truth"][1], "extras": parts["extras"][1] or {}}
    return out


# ----- run folder ----------------------------------------------------------------------------


#: what must match between a run and its --resume ("steps" may grow; priors compare by value)
_RESUME_KEYS = (
    "model",
    "config",
    "guide",
    "local_guide",
    "seed",
    "batch_size",
    "lr",
    "engine",
    "elbo",
    "data",
)


#: the value of a record key that a run folder written before the key existed implies
_RECORD_DEFAULTS = {"local_guide": "normal"}


def _recorded(record: Mapping[str, Any], key: str) -> Any:
    return record.get(key, _RECORD_DEFAULTS.get(key))


class TrainingInterrupted(Exception):
    """Training was stopped (Ctrl-C); the message says where the run can continue from."""


def _prior_values(texts: Mapping[str, str], model: ZooModel) -> dict[str, str]:
    """Prior texts as the distributions ``model`` would use, in one canonical form, so
    ``HalfNormal(5)`` and ``HalfNormal(5.0)`` (or a scalar prior and its expanded form on a
    vector site) compare equal."""
    from zoo.cli.options import prior_display
    from zoo.priors import check_override, parse_prior

    declared = model.default_priors()
    out = {}
    for site, text in texts.items():
        prior = parse_prior(f"{site}={text}")[1]
        if site in declared:
            prior = check_override(site, declared[site], prior)
        out[site] = prior_display(prior)
    return out


def _set_text(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` reads it back."""
    if value is None:
        return f"{key}=none"
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def recorded_settings(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The :func:`train_run` arguments that made the run in ``run_dir``: what ``zoo train
    --resume`` uses for every option not given again on its command line.

    :raises ValueError: ``run_dir`` holds no run (no readable ``config.json``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(
            f"cannot resume '{run_dir}': it holds no run (no config.json); check the path, "
            "or drop --resume to start a new run there"
        )
    record = read_config(run_dir)
    model_cls = registry.get(record["model"])
    defaults = jsonable(dataclasses.asdict(model_cls.Config()))
    config = record.get("config") or {}
    settings: dict[str, Any] = {
        "guide": record.get("guide") or "default",
        "local_guide": _recorded(record, "local_guide"),
        "priors": [f"{site}={text}" for site, text in (record.get("priors") or {}).items()],
        "sets": [_set_text(k, v) for k, v in config.items() if defaults.get(k, v) != v],
        "steps": record.get("steps"),
        "seed": record.get("seed", 0),
        "device": record.get("device"),
        "engine": record.get("engine", "svi"),
        "checkpoint_every": record.get("checkpoint_every"),
    }
    if record.get("elbo") in ELBO_NAMES:
        settings["elbo"] = record["elbo"]
    if record.get("chains"):
        settings["chains"] = record["chains"]
    source = record.get("data") or {}
    if source.get("source") == "file":
        settings["data_path"] = source["path"]
    if record.get("trainer") == "lightning":
        settings["trainer"] = "lightning"
        settings |= {k: v for k, v in record.get("lightning", {}).items() if k != "batch_per_rank"}
    return settings


def _default_out(name: str) -> Path:
    """``runs/NAME-<date>-<time>``, with ``-2``, ``-3``, ... when that folder exists (two
    runs in one second)."""
    import time

    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _build(record: Mapping[str, Any], *, seed: int):
    """Model and guide from a run record (priors and config as recorded)."""
    model_cls = registry.get(record["model"])
    prior_dists, _ = parse_priors({k: v for k, v in record.get("priors", {}).items()})
    config = dict(record.get("config", {}))  # lists come back as the config's tuples
    pyro.set_rng_seed(seed)  # networks are initialised when the model is built
    model = model_cls(config, priors=prior_dists)
    guide = guides.build(
        record.get("guide", "default"), model, local=_recorded(record, "local_guide")
    )
    return model, guide


# ----- training ------------------------------------------------------------------------------


def train_run(
    name: str,
    *,
    out: str | os.PathLike | None = None,
    guide: str = "default",
    local_guide: str = "normal",
    priors: Sequence[str] | Mapping[str, Any] | None = (),
    sets: Sequence[str] | Mapping[str, Any] | None = (),
    steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    data_path: str | os.PathLike | None = None,
    engine: str = "svi",
    elbo: str = "auto",
    resume: bool = False,
    progress: bool = True,
    chains: int = 2,
    checkpoint_every: int | None = None,
    trainer: str = "plain",
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    strategy: str | None = None,
) -> Path:
    """Train model ``name`` into the run folder ``out`` and write its diagnostics.

    :param guide: a kind of :data:`guides.KINDS` (SVI only).
    :param local_guide: the family of the amortized local guide, one of
        :data:`guides.LOCAL_KINDS` (``normal``, the default; ``mvn``, ``flow``), for models
        with local latents (SVI only).
    :param priors: ``["tau=HalfNormal(2.0)", ...]`` or ``{"tau": "HalfNormal(2.0)"}``.
    :param sets: ``["key=value", ...]`` config overrides, typed after the model's Config.
    :param steps: SVI steps (NUTS: draws per chain, and as many warmup steps); default: the
        Config's ``epochs`` when it has one, else 2000 steps (1000 draws for NUTS).
    :param data_path: a ``.npz`` or ``.csv`` file (default: the model's default data).
    :param engine: ``svi`` or ``nuts`` (models with ``supports_nuts`` only).
    :param resume: continue from the folder's checkpoint (same settings required).
    :param chains: NUTS chains.
    :param checkpoint_every: SVI steps between checkpoints (default: a tenth of the run).
    :param trainer: ``plain`` (:func:`inference.svi.fit`) or ``lightning``
        (:mod:`inference.lightning`: ``devices`` processes or GPUs per node on ``num_nodes``
        nodes, ``accelerator`` ``cpu`` or ``gpu``, ``strategy`` default ``ddp``). The
        Config's ``batch_size`` is the global batch, split evenly across the ranks; the run
        folder is the same, plus Lightning's own ``lightning.ckpt`` and ``lightning_logs/``.
    :returns: the run folder.
    :raises KeyError, ValueError, ConfigError, PriorError, GuideError, DataError: bad input,
        raised before anything is written.
    :raises inference.svi.TrainingDiverged: the loss became NaN/Inf (the last checkpoint
        is kept).
    """
    # --- every check first; nothing is written until all pass ---
    clock = _StageClock()
    model_cls = registry.get(name)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}'; valid engines: {list(ENGINES)}")
    if engine == "nuts" and not model_cls.supports_nuts:
        raise ValueError(
            f"model '{name}' does not support the nuts engine (too large for NUTS); use svi"
        )
    if engine == "nuts" and guide != "default":
        raise ValueError("--guide applies to the svi engine; nuts needs no guide")
    if engine == "nuts" and resume:
        raise ValueError("--resume applies to the svi engine only")
    if resume and out is None:
        raise ValueError("--resume needs --out RUN: the run folder to continue")
    if guide not in guides.KINDS:
        raise guides.GuideError(
            f"unknown guide kind '{guide}'; valid kinds: {sorted(guides.KINDS)}"
        )
    if local_guide not in guides.LOCAL_KINDS:
        raise guides.GuideError(
            f"unknown local guide kind {local_guide!r} (--local-guide); valid local kinds: "
            f"{list(guides.LOCAL_KINDS)}"
        )
    if engine == "nuts" and local_guide != "normal":
        raise ValueError("--local-guide applies to the svi engine; nuts needs no guide")
    if elbo not in ELBO_NAMES:
        raise ValueError(f"unknown elbo '{elbo}'; valid: {list(ELBO_NAMES)}")
    steps = positive_int("steps", steps)
    chains = positive_int("chains", chains, allow_none=False)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    device = check_device(device)
    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer '{trainer}'; valid trainers: {list(TRAINERS)}")
    world = 1
    if trainer == "lightning":
        if engine != "svi":
            raise ValueError("--trainer lightning trains the svi engine; nuts runs plain")
        if device is not None:
            raise ValueError("--device applies to the plain trainer; use --accelerator")
        try:
            from inference.lightning import check_trainer_options
        except ImportError as error:  # pragma: no cover - the extra is missing
            raise ValueError(str(error)) from None
        devices, num_nodes, accelerator, strategy = check_trainer_options(
            devices, num_nodes, accelerator, strategy, elbo
        )
        world = devices * num_nodes
    overrides = parse_sets(model_cls, sets)
    prior_dists, prior_texts = parse_priors(priors)
    pyro.set_rng_seed(seed)  # networks are initialised when the model is built
    model = model_cls(None, priors=prior_dists, **overrides)
    guides.check_local(model, local_guide)  # (the model's config may decide)
    if data_path is not None:
        data_path = Path(data_path).resolve()
        source = {"source": "file", "path": str(data_path)}
        data = _load_data(model, source)
        source["sha256"] = _sha256(data_path)
    else:
        source = {"source": "default", "seed": seed}
        data = _load_data(model, source)
    train, test = _split(model, data, seed)
    cfg = model.config
    batch_size = None if cfg.batch_size is None else min(cfg.batch_size, num_rows(train))
    lr = float(cfg.lr)
    optim = {
        "optimizer": cfg.resolved_optimizer(),
        "weight_decay": float(cfg.weight_decay),
        "clip_norm": None if cfg.clip_norm is None else float(cfg.clip_norm),
    }
    if engine == "nuts":
        total = steps or DEFAULT_NUTS_DRAWS
    else:
        total = steps if steps is not None else cfg.total_steps(num_rows(train))
    if checkpoint_every is None:
        checkpoint_every = max(1, min(500, total // 10))
    model_guide = guides.build(guide, model, local=local_guide) if engine == "svi" else None
    if trainer == "lightning":
        from inference.lightning import check_splittable

        global_batch = batch_size or num_rows(train)
        if global_batch < world:
            raise ValueError(
                f"a global batch of {global_batch} rows cannot be split across {world} ranks"
            )
        check_splittable(model, train, global_batch // world, world)

    record = {
        "model": name,
        "config": jsonable(model.config_dict()),
        "guide": guide,
        "local_guide": local_guide,
        "priors": prior_texts,
        "seed": seed,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        **({"optimizer": optim} if engine == "svi" else {}),
        "engine": engine,
        "elbo": None,
        "chains": chains if engine == "nuts" else None,
        "checkpoint_every": checkpoint_every if engine == "svi" else None,
        "device": device,
        "data": source,
        "rows": {"train": num_rows(train), "test": num_rows(test) if test is not None else 0},
    }
    if engine == "svi":
        from inference.elbos import choose_elbo
        from inference.svi import first_batch

        # resolved before anything is written, so a resume compares like with like; Lightning
        # runs the loss eagerly (no JIT)
        batch = first_batch(train, batch_size, seed)
        choice = choose_elbo(elbo, model, model_guide, batch, jit=trainer != "lightning")
        record["elbo"], record["elbo_reason"] = choice.name, choice.reason
    if trainer == "lightning":
        record["trainer"] = trainer
        record["lightning"] = {
            "devices": devices,
            "num_nodes": num_nodes,
            "accelerator": accelerator,
            "strategy": strategy,
            "batch_per_rank": (batch_size or num_rows(train)) // world,
        }
    rank_zero = launch_rank() == 0
    run_dir = Path(out) if out is not None else _default_out(name)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out '{run_dir}' exists and is not a folder")
    held = [f for f in RUN_FILES if (run_dir / f).exists()]
    if held and not resume and rank_zero:
        raise ValueError(
            f"run folder '{run_dir}' already holds a run ({', '.join(held)}); "
            "use --resume to continue it or choose another --out"
        )
    if resume:
        old = read_config(run_dir) if (run_dir / "config.json").is_file() else None
        if old is None:
            raise ValueError(
                f"cannot resume '{run_dir}': it holds no run (no config.json); check the "
                "path, or drop --resume to start a new run there"
            )
        if old.get("trainer", "plain") != record.get("trainer", "plain"):
            raise ValueError(
                f"cannot resume '{run_dir}': it was trained with trainer="
                f"{old.get('trainer', 'plain')}, not {record.get('trainer', 'plain')}"
            )
        for key in _RESUME_KEYS:
            if _recorded(old, key) != record[key]:
                raise ValueError(
                    f"cannot resume '{run_dir}': it was trained with {key}="
                    f"{json.dumps(_recorded(old, key))}, not {json.dumps(record[key])}"
                )
        if _prior_values(old.get("priors") or {}, model) != _prior_values(record["priors"], model):
            raise ValueError(
                f"cannot resume '{run_dir}': it was trained with priors="
                f"{json.dumps(old.get('priors') or {})}, not {json.dumps(record['priors'])}"
            )
        done = _trained_steps(run_dir, trainer)
        if done is not None and total < done:
            raise ValueError(
                f"cannot resume '{run_dir}' with steps={total}: it has trained {done} steps "
                "already (--steps may only grow)"
            )

    # --- all checks passed: write and train ---
    clock.lap("setup")
    if data_path is not None and rank_zero:
        rows = record["rows"]
        print(
            f"data: {rows['train'] + rows['test']} rows read from '{data_path}' "
            f"({rows['train']} to train, {rows['test']} held out)",
            flush=True,
        )
    if resume and rank_zero:
        print(_resume_point(run_dir, trainer, total, _recorded(old, "steps")), flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")
    if engine == "nuts":
        from inference.mcmc import nuts

        mcmc = nuts(
            model.nuts_target(),
            train,
            chains=chains,
            warmup=total,
            draws=total,
            seed=seed,
            progress=progress,
            init_values=model.nuts_init(train),
            **model.nuts_options,
        )
        clock.lap("training")
        truth = _known_truth(model, source, data, seed)
        write_outputs(run_dir, record, model, None, train, test, mcmc=mcmc, truth=truth)
        clock.lap("report")
        clock.write(run_dir)
        return run_dir

    if trainer == "lightning":
        return _train_lightning(
            run_dir,
            record,
            model,
            model_guide,
            train,
            test,
            resume,
            progress,
            _known_truth(model, source, data, seed),
        )

    from inference.svi import fit

    with warnings.catch_warnings(), _interruptible(name, run_dir, trainer, total):
        # the NaN guard stops with one clear message; Pyro's per-step warnings add nothing
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        result = fit(
            model,
            model_guide,
            train,
            steps=total,
            batch_size=batch_size,
            elbo=record["elbo"],
            lr=lr,
            **optim,
            checkpoint=run_dir / "checkpoint.pt",
            checkpoint_every=checkpoint_every,
            resume=resume,
            meta={"model": name, "guide": guide, "local_guide": local_guide},
            seed=seed,
            device=device,
            progress=progress,
        )
    write_metrics(run_dir / "metrics.csv", result.losses, result.lrs)
    record["steps_trained"] = result.steps
    clock.lap("training")
    truth = _known_truth(model, source, data, seed)
    write_outputs(
        run_dir, record, model, model_guide, train, test, losses=result.losses, truth=truth
    )
    clock.lap("report")
    clock.write(run_dir)
    return run_dir


class _StageClock:
    """Wall time of a run's stages (set-up and checks, training, the report's posterior
    draws and diagnostics), written to ``timings.json`` in the run folder."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 3)
        self.last = now

    def write(self, run_dir: Path) -> None:
        total = round(self.last - self.start, 3)
        write_text(run_dir / "timings.json", json.dumps({**self.stages, "total": total}) + "\n")


@contextlib.contextmanager
def _interruptible(name: str, run_dir: Path, trainer: str, total: int):
    """Turn Ctrl-C during training into :class:`TrainingInterrupted`, whose message names
    the step the run can continue from and the command that continues it."""
    try:
        yield
    except KeyboardInterrupt:
        step = _trained_steps(run_dir, trainer)
        command = f"zoo train {name} --out {run_dir} --resume"
        if step is None:
            where = f"no checkpoint was written yet in '{run_dir}'"
        else:
            where = f"the last checkpoint in '{run_dir}' is at step {step} of {total}"
        message = f"training interrupted; {where}: continue with `{command}`"
        raise TrainingInterrupted(message) from None


def _trained_steps(run_dir: Path, trainer: str) -> int | None:
    """The step of the run's checkpoint; None when there is none (or Lightning's cannot be
    read here: Lightning reads it itself)."""
    if trainer == "lightning":
        path = run_dir / "lightning.ckpt"
        if not path.exists():
            return None
        try:
            return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        except Exception:  # noqa: BLE001 - Lightning's own file
            return None
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return None
    from inference.checkpoint import load_checkpoint

    return int(load_checkpoint(path)[1].get("step", 0))


def _resume_point(run_dir: Path, trainer: str, total: int, planned: int | None = None) -> str:
    """The line ``--resume`` prints: from which step of how many the run continues."""
    step = _trained_steps(run_dir, trainer)
    if step is None and trainer == "lightning" and (run_dir / "lightning.ckpt").exists():
        return f"resuming from Lightning's checkpoint in '{run_dir}' ({total} steps in all)"
    if step is None:
        return f"no checkpoint in '{run_dir}': training from step 0 of {total}"
    grown = f" (extended from {planned})" if planned is not None and total > planned else ""
    done = " (already complete: only the outputs are rewritten)" if step >= total else ""
    return f"resuming from step {step} of {total}{grown}{done}"


def launch_rank() -> int:
    """This process's global rank as the launcher (Lightning, torchrun, SLURM) set it; 0
    when not launched as one of several processes."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        try:
            rank = int(os.environ.get(key, "0"))
        except ValueError:
            continue
        if rank != 0:
            return rank
    return 0


def _train_lightning(
    run_dir, record, model, guide, train, test, resume, progress, truth=None
) -> Path:
    """The Lightning path of :func:`train_run`: every rank trains; rank 0 alone writes
    config.json (already), metrics.csv, checkpoint.pt (the plain engine's format, so
    ``zoo diagnose`` reads it), Lightning's ``lightning.ckpt`` and the diagnostics."""
    from lightning.pytorch.loggers import CSVLogger

    from inference.checkpoint import save_checkpoint
    from inference.lightning import fit_lightning

    opts = record["lightning"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        module, trainer = fit_lightning(
            model,
            guide,
            train,
            steps=record["steps"],
            batch_size=opts["batch_per_rank"],
            elbo=record["elbo"],
            lr=record["lr"],
            weight_decay=record["optimizer"]["weight_decay"],
            clip_norm=record["optimizer"]["clip_norm"],
            seed=record["seed"],
            devices=opts["devices"],
            num_nodes=opts["num_nodes"],
            accelerator=opts["accelerator"],
            strategy=opts["strategy"],
            default_root_dir=run_dir,
            checkpoint=run_dir / "lightning.ckpt",
            checkpoint_every=record["checkpoint_every"],
            resume=resume,
            progress=progress,
            logger=CSVLogger(save_dir=run_dir, name="lightning_logs"),
        )
    losses = module.gathered_losses()  # a collective: every rank calls it
    if trainer.global_rank != 0:
        return run_dir
    start = trainer.global_step - len(losses)
    losses = read_losses(run_dir / "metrics.csv")[:start] + losses if start > 0 else losses
    if not all(math.isfinite(v) for v in losses):
        from inference.svi import TrainingDiverged

        raise TrainingDiverged("the loss became NaN or infinite under Lightning; try a smaller lr")
    write_metrics(run_dir / "metrics.csv", losses, [record["lr"]] * len(losses))
    model.cpu()
    guide.cpu()
    save_checkpoint(
        run_dir / "checkpoint.pt",
        {"module": {k: v.detach().cpu() for k, v in module.loss_fn.state_dict().items()}},
        {
            "model": record["model"],
            "guide": record["guide"],
            "local_guide": record["local_guide"],
            "elbo": record["elbo"],
            "seed": record["seed"],
            "step": int(trainer.global_step),
            "trainer": "lightning",
        },
    )
    record["steps_trained"] = int(trainer.global_step)
    write_outputs(run_dir, record, model, guide, train, test, losses=losses, truth=truth)
    return run_dir


# ----- diagnose and sample -------------------------------------------------------------------


def _load_run(run_dir: Path):
    """(record, model, guide, train, test, truth) of a run, parameters restored (SVI);
    ``truth()`` computes the simulation's truth for its rows where it is known."""
    from inference.svi import restore

    record = read_config(run_dir)
    seed = int(record.get("seed", 0))
    model, guide = _build(record, seed=seed)
    source = record.get("data", {"source": "default", "seed": seed})
    data = _load_data(model, source)
    train, test = _split(model, data, seed)
    if record.get("engine", "svi") == "svi":
        meta = restore(model, guide, train, run_dir / "checkpoint.pt")
        record["steps_trained"] = int(meta.get("step", record.get("steps") or 0))
    else:
        guide = None
    return record, model, guide, train, test, lambda: _known_truth(model, source, data, seed)


def diagnose_run(run_dir: str | os.PathLike) -> Path:
    """Rebuild a run's model and guide from ``config.json``, load its checkpoint and
    recompute ``idata.nc``, the figures and ``report.md``. Returns the report's path."""
    run_dir = Path(run_dir)
    record, model, guide, train, test, truth = _load_run(run_dir)
    if guide is None:  # NUTS: the draws are the run's idata
        idata = read_idata(run_dir / "idata.nc")
        with QuietArviz():
            write_report(run_dir, record, model, None, idata, train, train, test, None, [], truth())
    else:
        losses = read_losses(run_dir / "metrics.csv")
        if not losses and (run_dir / "checkpoint.pt").is_file():
            # an interrupted run wrote no metrics.csv; its checkpoint holds the losses so far
            from inference.checkpoint import load_checkpoint

            state = load_checkpoint(run_dir / "checkpoint.pt")[0]
            losses = [float(v) for v in state.get("losses", [])]
        write_outputs(run_dir, record, model, guide, train, test, losses=losses, truth=truth())
    return run_dir / "report.md"


class SampleFiles(NamedTuple):
    """What ``zoo sample`` wrote: the ``.npz`` and the pictures next to it (if any)."""

    data: Path
    pictures: list[Path]


def _sample_path(run_dir: Path, out_file) -> Path:
    """The ``.npz`` to write, checked before any work: a file name ending in ``.npz``
    whose folder is (or can be made) a folder."""
    out_file = Path(out_file) if out_file is not None else run_dir / "samples.npz"
    if out_file.suffix != ".npz":
        raise ValueError(f"--out '{out_file}' must end in .npz")
    if out_file.is_dir():
        raise ValueError(f"--out '{out_file}' is a folder; give a file name ending in .npz")
    for parent in out_file.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out '{out_file}': '{parent}' is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"--out '{out_file}': folder '{parent}' is not writable")
            break
    return out_file


def sample_run(
    run_dir: str | os.PathLike,
    num: int = 100,
    out_file: str | os.PathLike | None = None,
    *,
    replicates: bool = False,
    seed: int | None = None,
) -> SampleFiles:
    """Draw from a trained run into a ``.npz`` file (default ``RUN/samples.npz``).

    By default ``num`` *new* rows from the fitted generative model
    (:meth:`zoo.base.ZooModel.sample_new_rows`: globals drawn from the fitted guide or the
    NUTS draws, local latents from their prior, new observations given both), one array
    per data field shaped ``(num, *field.shape)``; where the data are images, a picture of
    them is written next to the ``.npz`` (``<name>.png``, or ``<name>_<field>.png`` for
    several). With ``replicates=True``: ``num`` posterior-predictive replicates of the
    training rows instead, arrays ``(num, N, ...)`` of the observed fields.

    :param seed: the draw's seed (default: the run's seed).
    """
    num = positive_int("num", num, allow_none=False)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    run_dir = Path(run_dir)
    out_file = _sample_path(run_dir, out_file)
    record, model, guide, train, _, _ = _load_run(run_dir)
    if replicates and not model.observed_sites:
        raise ValueError(
            f"--replicates: model '{record['model']}' has no observed sample site (its data "
            "enter the joint through pyro.factor), so there is nothing to replicate; "
            "leave out --replicates for new rows"
        )
    seed = int(record.get("seed", 0)) if seed is None else seed
    rows = None
    if replicates:
        arrays = _replicates(run_dir, model, guide, train, num, seed)
    else:
        from inference.generate import draws_from_idata

        draws = draws_from_idata(read_idata(run_dir / "idata.nc")) if guide is None else None
        device = device_of(model)
        data = {k: v.to(device) for k, v in train.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = model.sample_new_rows(num, data=data, guide=guide, draws=draws, seed=seed)
        arrays = {k: v.detach().cpu().numpy() for k, v in rows.items()}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        np.savez(out_file, **arrays)
    except OSError as error:
        raise ValueError(f"cannot write --out '{out_file}': {error.strerror or error}") from None
    pictures = []
    if rows is not None:
        from inference.diagnostics.plots import save_figure
        from zoo.figures import new_rows_pictures

        figures = new_rows_pictures(model, rows)
        for key, fig in figures.items():
            stem = out_file.stem if len(figures) == 1 else f"{out_file.stem}_{key}"
            pictures.append(save_figure(fig, out_file.with_name(f"{stem}.png")))
    return SampleFiles(out_file, pictures)


def _replicates(run_dir, model, guide, train, num, seed) -> dict[str, np.ndarray]:
    """``num`` posterior-predictive replicates of the training rows' observed fields."""
    if guide is None:
        idata = read_idata(run_dir / "idata.nc")
        pp = idata.posterior_predictive
        arrays = {}
        for var in pp.data_vars:
            values = np.asarray(pp[var])
            values = values.reshape((-1,) + values.shape[2:])
            if num > len(values):
                raise ValueError(f"the run holds {len(values)} NUTS draws; asked for {num}")
            arrays[var] = values[:num]
        return arrays
    from inference.posterior import posterior

    device = device_of(model)
    data = {k: v.to(device) for k, v in train.items()}
    with warnings.catch_warnings(), QuietArviz():
        warnings.simplefilter("ignore")
        idata = posterior(model, data, guide=guide, num_draws=num, seed=seed)
    pp = idata.posterior_predictive
    return {var: np.asarray(pp[var])[0] for var in pp.data_vars}
