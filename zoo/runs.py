"""Training runs on disk: ``train_run``, ``diagnose_run`` and ``sample_run``.

A run folder holds:

- ``config.json``: model name and config, guide, priors (as ``Dist(args)`` strings), seed,
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

import ast
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution

import guides
from inference.data import DataError
from inference.elbos import ELBO_NAMES, resolve_elbo
from zoo import registry
from zoo.base import ConfigError, ZooModel
from zoo.datafiles import load_data_file
from zoo.priors import PriorError, parse_prior

__all__ = [
    "ENGINES",
    "RUN_FILES",
    "train_run",
    "diagnose_run",
    "sample_run",
    "parse_sets",
    "parse_priors",
    "read_idata",
]

ENGINES = ("svi", "nuts")
#: who runs the SVI loop: the plain engine (inference.svi.fit) or Lightning (DDP scale-out)
TRAINERS = ("plain", "lightning")
DEFAULT_LR = 0.02
DEFAULT_STEPS = 2000
DEFAULT_NUTS_DRAWS = 1000
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
#: idata of models with local latents covers at most this many rows, with fewer draws
LOCAL_IDATA_ROWS = 200
LOCAL_IDATA_DRAWS = 64
GLOBAL_IDATA_DRAWS = 500
#: variables with more elements per draw than this get a compact summary row
SUMMARY_MAX_ELEMENTS = 32


# ----- parsing user options ------------------------------------------------------------------


def _config_types(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: fall back on the defaults' types
        hints = {}
    types = {}
    for f in dataclasses.fields(cls):
        if f.name in hints:
            types[f.name] = hints[f.name]
        elif f.default is not dataclasses.MISSING:
            types[f.name] = type(f.default)
        else:
            types[f.name] = str
    return types


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(key: str, text: str, kind: Any) -> Any:
    """``text`` as a value of type ``kind``; ConfigError naming ``key`` when it is not."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    bad = ConfigError(f"--set {key}={text}: '{text}' is not a valid {_type_name(kind)}")
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(key, text, option)
            except ConfigError:
                continue
        raise bad
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise bad
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise bad from None
    if kind is float:
        try:
            value = float(text.strip())
        except ValueError:
            raise bad from None
        if not math.isfinite(value):
            raise bad
        return value
    if kind is str:
        return text
    if origin in (tuple, list) or kind in (tuple, list):
        stripped = text.strip()
        if not stripped.startswith(("[", "(")):
            stripped = f"[{stripped}]"
        try:
            items = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            raise bad from None
        if not isinstance(items, list | tuple):
            items = [items]
        element = args[0] if args else str
        values = [_coerce(key, str(item), element) for item in items]
        return tuple(values) if (origin or kind) is tuple else values
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise bad from None


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) in (tuple, list):
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        inner = args[0].__name__ if args and isinstance(args[0], type) else "value"
        return f"list of {inner} (e.g. 16,16)"
    names = {bool: "boolean (true/false)", int: "integer", float: "number", str: "string"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def parse_sets(model_cls: type[ZooModel], sets: Sequence[str] | Mapping[str, Any] | None):
    """``["key=value", ...]`` (or a dict) as config overrides typed after ``model_cls.Config``.

    :raises ConfigError: an unknown key (naming the valid ones) or a value of the wrong type.
    """
    if not sets:
        return {}
    types = _config_types(model_cls.Config)
    if isinstance(sets, Mapping):
        items = list(sets.items())
        texts = False
    else:
        items = []
        for entry in sets:
            key, sep, value = str(entry).partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set '{entry}' must look like key=value")
            items.append((key.strip(), value.strip()))
        texts = True
    out: dict[str, Any] = {}
    for key, value in items:
        if key not in types:
            raise ConfigError(
                f"unknown config key '{key}' for model '{model_cls.name}'; "
                f"valid keys: {sorted(types)}"
            )
        out[key] = _coerce(key, value, types[key]) if texts or isinstance(value, str) else value
    return out


def _prior_text(prior: Any) -> str:
    """A ``Dist(args)`` string that :func:`parse_prior` reads back."""
    params = {
        k: getattr(prior, k)
        for k in prior.arg_constraints
        if k in prior.__dict__ or isinstance(getattr(type(prior), k, None), property)
    }
    args = ", ".join(f"{k}={torch.as_tensor(v).tolist()!r}" for k, v in sorted(params.items()))
    return f"{type(prior).__name__}({args})"


def prior_display(prior: Any) -> str:
    """A readable form of a declared prior, e.g. ``Normal(loc=0.0, scale=1.0).to_event(1)``."""
    if isinstance(prior, torch.distributions.Independent):
        return f"{prior_display(prior.base_dist)}.to_event({prior.reinterpreted_batch_ndims})"
    if isinstance(prior, ExpandedDistribution):
        return f"{prior_display(prior.base_dist)}.expand({list(prior.batch_shape)})"
    return _prior_text(prior)


def parse_priors(priors: Sequence[str] | Mapping[str, Any] | None):
    """``["SITE=Dist(args)", ...]`` or ``{site: "Dist(args)" | Distribution}`` as
    ``(distributions, texts)``: site -> distribution and site -> ``Dist(args)`` string."""
    dists: dict[str, Any] = {}
    texts: dict[str, str] = {}
    if not priors:
        return dists, texts
    if isinstance(priors, Mapping):
        entries = []
        for site, value in priors.items():
            if isinstance(value, str):
                entries.append(f"{site}={value}")
            elif isinstance(value, torch.distributions.Distribution):
                dists[site], texts[site] = value, _prior_text(value)
            else:
                raise PriorError(
                    f"prior for site '{site}' must be a 'Dist(args)' string or a "
                    f"distribution, got {type(value).__name__}"
                )
    elif isinstance(priors, str):
        entries = [priors]
    else:
        entries = list(priors)
    for entry in entries:
        site, prior = parse_prior(str(entry))
        if site in dists:
            raise PriorError(f"prior for site '{site}' is given twice")
        dists[site] = prior
        texts[site] = str(entry).partition("=")[2].strip()
    return dists, texts


def _check_device(device: str | None) -> str | None:
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device '{device}'; use e.g. cpu or cuda") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for but CUDA is not available")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device '{device}' is not supported; use cpu or cuda")
    return str(parsed)


def _positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ----- data ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """``(train, test)``: a seeded split for models with ``holdout > 0`` (else test=None)."""
    holdout = float(getattr(model, "holdout", 0.0) or 0.0)
    size = len(next(iter(data.values())))
    n_test = int(round(holdout * size))
    if holdout <= 0 or n_test < 1 or size - n_test < 1:
        return data, None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    return (
        {k: v.index_select(0, train_idx) for k, v in data.items()},
        {k: v.index_select(0, test_idx) for k, v in data.items()},
    )


def _rows(data: Mapping[str, torch.Tensor]) -> int:
    return len(next(iter(data.values())))


# ----- run folder ----------------------------------------------------------------------------


_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_text(path: Path, text: str) -> None:
    """Write atomically (a crash leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ValueError(f"run folder '{run_dir}' does not exist")
    if not path.is_file():
        raise ValueError(f"'{run_dir}' is not a run folder (no config.json)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}' is not readable JSON ({error})") from None
    if not isinstance(record, dict) or "model" not in record:
        raise ValueError(f"'{path}' is not a latent-zoo run config")
    return record


_RESUME_KEYS = (
    "model",
    "config",
    "guide",
    "priors",
    "seed",
    "steps",
    "batch_size",
    "lr",
    "engine",
    "elbo",
    "data",
)


def _default_out(name: str) -> Path:
    import time

    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _build(record: Mapping[str, Any], *, seed: int):
    """Model and guide from a run record (priors and config as recorded)."""
    model_cls = registry.get(record["model"])
    prior_dists, _ = parse_priors({k: v for k, v in record.get("priors", {}).items()})
    config = _restore_types(model_cls, record.get("config", {}))
    pyro.set_rng_seed(seed)  # networks are initialised when the model is built
    model = model_cls(config, priors=prior_dists)
    guide = guides.build(record.get("guide", "default"), model)
    return model, guide


def _restore_types(model_cls: type[ZooModel], config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON gives lists where the config holds tuples: convert back."""
    types = _config_types(model_cls.Config)
    out = {}
    for key, value in config.items():
        kind = types.get(key)
        if isinstance(value, list) and (typing.get_origin(kind) is tuple or kind is tuple):
            value = tuple(value)
        out[key] = value
    return out


# ----- training ------------------------------------------------------------------------------


def train_run(
    name: str,
    *,
    out: str | os.PathLike | None = None,
    guide: str = "default",
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
    if guide not in guides.KINDS:
        raise guides.GuideError(
            f"unknown guide kind '{guide}'; valid kinds: {sorted(guides.KINDS)}"
        )
    if elbo not in ELBO_NAMES:
        raise ValueError(f"unknown elbo '{elbo}'; valid: {list(ELBO_NAMES)}")
    steps = _positive_int("steps", steps)
    chains = _positive_int("chains", chains, allow_none=False)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    device = _check_device(device)
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
    batch_size = getattr(cfg, "batch_size", None)
    if batch_size is not None:
        batch_size = _positive_int("batch_size", int(batch_size))
        batch_size = min(batch_size, _rows(train))
    lr = float(getattr(cfg, "lr", DEFAULT_LR))
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    if engine == "nuts":
        total = steps or DEFAULT_NUTS_DRAWS
    elif steps is not None:
        total = steps
    elif getattr(cfg, "epochs", None) is not None:
        epochs = float(cfg.epochs)
        if not epochs > 0:
            raise ConfigError(f"epochs must be positive, got {cfg.epochs}")
        per_epoch = max(1, _rows(train) // (batch_size or _rows(train)))
        total = max(1, math.ceil(epochs * per_epoch))
    else:
        total = DEFAULT_STEPS
    if checkpoint_every is None:
        checkpoint_every = max(1, min(500, total // 10))
    model_guide = guides.build(guide, model) if engine == "svi" else None
    if trainer == "lightning":
        from inference.lightning import check_splittable

        global_batch = batch_size or _rows(train)
        if global_batch < world:
            raise ValueError(
                f"a global batch of {global_batch} rows cannot be split across {world} ranks"
            )
        check_splittable(model, train, global_batch // world, world)

    record = {
        "model": name,
        "config": _jsonable(model.config_dict()),
        "guide": guide,
        "priors": prior_texts,
        "seed": seed,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        "engine": engine,
        "elbo": resolve_elbo(elbo, model) if engine == "svi" else None,
        "chains": chains if engine == "nuts" else None,
        "checkpoint_every": checkpoint_every if engine == "svi" else None,
        "device": device,
        "data": source,
        "rows": {"train": _rows(train), "test": _rows(test) if test is not None else 0},
    }
    if trainer == "lightning":
        record["elbo"] = "trace" if elbo == "auto" else elbo  # Lightning runs eagerly
        record["trainer"] = trainer
        record["lightning"] = {
            "devices": devices,
            "num_nodes": num_nodes,
            "accelerator": accelerator,
            "strategy": strategy,
            "batch_per_rank": (batch_size or _rows(train)) // world,
        }
    rank_zero = _launch_rank() == 0
    run_dir = Path(out) if out is not None else _default_out(name)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out '{run_dir}' exists and is not a folder")
    held = [f for f in RUN_FILES if (run_dir / f).exists()]
    if held and not resume and rank_zero:
        raise ValueError(
            f"run folder '{run_dir}' already holds a run ({', '.join(held)}); "
            "use --resume to continue it or choose another --out"
        )
    if resume and (run_dir / "config.json").exists():
        old = _read_config(run_dir)
        if old.get("trainer", "plain") != record.get("trainer", "plain"):
            raise ValueError(
                f"cannot resume '{run_dir}': it was trained with trainer="
                f"{old.get('trainer', 'plain')}, not {record.get('trainer', 'plain')}"
            )
        for key in _RESUME_KEYS:
            if old.get(key) != record[key]:
                raise ValueError(
                    f"cannot resume '{run_dir}': it was trained with {key}="
                    f"{json.dumps(old.get(key))}, not {json.dumps(record[key])}"
                )

    # --- all checks passed: write and train ---
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")
    if engine == "nuts":
        from inference.mcmc import nuts

        mcmc = nuts(
            model, train, chains=chains, warmup=total, draws=total, seed=seed, progress=progress
        )
        _write_outputs(run_dir, record, model, None, train, test, mcmc=mcmc)
        return run_dir

    if trainer == "lightning":
        return _train_lightning(run_dir, record, model, model_guide, train, test, resume, progress)

    from inference.svi import fit

    with warnings.catch_warnings():
        # the NaN guard stops with one clear message; Pyro's per-step warnings add nothing
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        result = fit(
            model,
            model_guide,
            train,
            steps=total,
            batch_size=batch_size,
            elbo=elbo,
            lr=lr,
            checkpoint=run_dir / "checkpoint.pt",
            checkpoint_every=checkpoint_every,
            resume=resume,
            meta={"model": name, "guide": guide},
            seed=seed,
            device=device,
            progress=progress,
        )
    _write_metrics(run_dir / "metrics.csv", result.losses, result.lrs)
    _write_outputs(run_dir, record, model, model_guide, train, test, losses=result.losses)
    return run_dir


def _launch_rank() -> int:
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


def _train_lightning(run_dir, record, model, guide, train, test, resume, progress) -> Path:
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
    losses = _read_losses(run_dir / "metrics.csv")[:start] + losses if start > 0 else losses
    if not all(math.isfinite(v) for v in losses):
        from inference.svi import TrainingDiverged

        raise TrainingDiverged("the loss became NaN or infinite under Lightning; try a smaller lr")
    _write_metrics(run_dir / "metrics.csv", losses, [record["lr"]] * len(losses))
    model.cpu()
    guide.cpu()
    save_checkpoint(
        run_dir / "checkpoint.pt",
        {"module": {k: v.detach().cpu() for k, v in module.loss_fn.state_dict().items()}},
        {
            "model": record["model"],
            "guide": record["guide"],
            "elbo": record["elbo"],
            "seed": record["seed"],
            "step": int(trainer.global_step),
            "trainer": "lightning",
        },
    )
    _write_outputs(run_dir, record, model, guide, train, test, losses=losses)
    return run_dir


def _write_metrics(path: Path, losses: Sequence[float], lrs: Sequence[float]) -> None:
    lines = ["step,loss,lr"]
    for i, loss in enumerate(losses):
        lr = lrs[i] if i < len(lrs) else float("nan")
        lines.append(f"{i + 1},{loss!r},{lr!r}")
    _write_text(path, "\n".join(lines) + "\n")


def _read_losses(path: Path) -> list[float]:
    if not path.is_file():
        return []
    losses = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split(",")
        if len(parts) >= 2:
            losses.append(float(parts[1]))
    return losses


# ----- diagnostics and report ----------------------------------------------------------------


def _device_of(model: torch.nn.Module) -> torch.device:
    return getattr(model, "device", torch.device("cpu"))


def _idata(model, guide, data, record, *, mcmc=None):
    from inference.posterior import posterior

    seed = int(record.get("seed", 0))
    if model.local_sites:
        rows = min(_rows(data), LOCAL_IDATA_ROWS)
        data = {k: v[:rows] for k, v in data.items()}
        draws = LOCAL_IDATA_DRAWS
    else:
        draws = GLOBAL_IDATA_DRAWS
    device = _device_of(model)
    data = {k: v.to(device) for k, v in data.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return posterior(
            model,
            data,
            guide=guide,
            mcmc=mcmc,
            num_draws=draws,
            seed=seed,
            dims=model.dims(),
            coords=model.coords(data),
        ), data


def read_idata(path: str | os.PathLike):
    """An ``idata.nc`` written by a run, as ArviZ InferenceData."""
    from inference.posterior import az

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"'{path}' does not exist")
    return az.from_netcdf(path)


def _try(label: str, fn, notes: list[str]):
    try:
        return fn()
    except ImportError:  # a broken install, not a diagnostic's verdict
        raise
    except Exception as error:  # a diagnostic failing must not lose the trained run
        notes.append(f"{label}: failed ({type(error).__name__}: {error})")
    return None


def _summary_rows(idata, model) -> list[dict[str, Any]]:
    """Rows of the posterior summary: ArviZ's for small variables, one compact row (means
    over elements) for large ones such as local latents."""
    from inference.diagnostics import summary

    post = idata.posterior
    small = [v for v in post.data_vars if int(np.prod(post[v].shape[2:])) <= SUMMARY_MAX_ELEMENTS]
    large = [v for v in post.data_vars if v not in small]
    rows: list[dict[str, Any]] = []
    if small:
        table = summary(idata, var_names=small)
        for label, row in table.iterrows():
            rows.append({"variable": str(label), **{k: _num(v) for k, v in row.items()}})
    for var in large:
        values = np.asarray(post[var])
        flat = values.reshape(values.shape[0] * values.shape[1], -1)
        rows.append(
            {
                "variable": f"{var} {tuple(values.shape[2:])} (compact: mean over elements)",
                "mean": _num(flat.mean()),
                "sd": _num(flat.std(axis=0).mean()),
            }
        )
    return rows


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row.get(c)).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class _QuietArviz:
    """ArviZ logs a warning for every single-chain summary (R-hat needs 2 chains; the
    table says n/a): keep the training output readable."""

    def __enter__(self):
        self.logger = logging.getLogger("arviz")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _write_outputs(run_dir, record, model, guide, train, test, *, losses=None, mcmc=None):
    """idata.nc, figures, diagnostics.json and report.md of a trained run."""
    with _QuietArviz():
        idata, idata_data = _idata(model, guide, train, record, mcmc=mcmc)
        idata.to_netcdf(str(run_dir / "idata.nc"))
        _report(run_dir, record, model, guide, idata, idata_data, train, test, losses, [])


def _report(run_dir, record, model, guide, idata, idata_data, train, test, losses, notes):
    from inference.diagnostics import divergences, loo

    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    made: list[str] = []

    def plot(name: str, fn_name: str, arg) -> None:
        def go():
            from inference.diagnostics import plots

            getattr(plots, fn_name)(arg, figures / name)
            made.append(name)

        _try(f"figure {name}", go, notes)

    if losses:
        plot("elbo.png", "plot_elbo", losses)
    plot("ppc.png", "plot_ppc", idata)
    if record.get("engine") == "nuts":
        plot("trace.png", "plot_trace", idata)

    diagnostics: dict[str, Any] = {}
    diagnostics["divergences"] = _try("divergences", lambda: divergences(idata), notes)
    if model.local_sites:
        # the log_likelihood group holds p(x_n | z_n) at guide draws of z_n, not the
        # marginal p(x_n) that LOO needs
        diagnostics["loo"] = None
        notes.append("PSIS-LOO: not computed for a model with local latents")
    else:
        diagnostics["loo"] = _try("PSIS-LOO", lambda: loo(idata), notes)
    if guide is not None and model.local_sites:
        # a joint k-hat over every row's latents grows with N and says nothing per row:
        # amortized guides are judged per data point
        def khat():
            from inference.diagnostics.khat import khat_verdict, pointwise_khat

            k = pointwise_khat(model, guide, idata_data)
            verdicts = [khat_verdict(float(v)) for v in k]
            return {
                "khat": float(np.median(k)),
                "verdict": khat_verdict(float(np.median(k))),
                "pointwise": True,
                "max": float(np.max(k)),
                "fractions": {v: verdicts.count(v) / len(verdicts) for v in set(verdicts)},
            }

        diagnostics["khat"] = _try("guide k-hat", khat, notes)
    elif guide is not None:

        def khat():
            from inference.diagnostics.khat import guide_khat

            return guide_khat(model, guide, idata_data, seed=int(record.get("seed", 0)))

        diagnostics["khat"] = _try("guide k-hat", khat, notes)
    else:
        diagnostics["khat"] = None
        notes.append("guide k-hat: not applicable (NUTS draws, no guide)")
    if model.local_sites and guide is not None:

        def activity():
            from inference.diagnostics.collapse import latent_activity

            return latent_activity(model, guide, idata_data)

        diagnostics["latent_activity"] = _try("latent activity", activity, notes)
    if guide is not None:
        eval_data = test if test is not None else train
        device = _device_of(model)
        eval_data = {k: v.to(device) for k, v in eval_data.items()}
        diagnostics["evaluate"] = _try(
            "evaluate", lambda: _jsonable(model.evaluate(guide, eval_data)), notes
        )
        diagnostics["evaluated_on"] = "held-out rows" if test is not None else "training rows"
    else:
        diagnostics["evaluate"] = None
        notes.append("evaluate(): not run (it needs a guide; NUTS has none)")
    summary_rows = _try("posterior summary", lambda: _summary_rows(idata, model), notes) or []
    diagnostics["summary"] = summary_rows
    diagnostics["figures"] = made
    diagnostics["notes"] = notes
    if losses:
        tail = losses[-max(1, min(50, len(losses) // 10)) :]
        diagnostics["final_loss"] = sum(tail) / len(tail)
    _write_text(run_dir / "diagnostics.json", json.dumps(_clean(diagnostics), indent=2) + "\n")
    _write_text(run_dir / "report.md", _report_text(record, diagnostics))


def _clean(value: Any) -> Any:
    """JSON-safe (NaN/Inf -> null, numpy -> Python)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    return value


def _report_text(record: Mapping[str, Any], diag: Mapping[str, Any]) -> str:
    lines = [f"# Run report: {record['model']}", ""]
    setup = [
        {"setting": "engine", "value": record.get("engine")},
        {"setting": "guide", "value": record.get("guide")},
        {"setting": "elbo", "value": record.get("elbo")},
        {"setting": "steps (NUTS: draws per chain)", "value": record.get("steps")},
        {"setting": "seed", "value": record.get("seed")},
        {"setting": "config", "value": json.dumps(record.get("config"))},
        {"setting": "priors", "value": json.dumps(record.get("priors")) or "{}"},
        {"setting": "data", "value": json.dumps(record.get("data"))},
    ]
    lines += ["## Setup", "", _table(setup)]
    rows = []
    if "final_loss" in diag:
        rows.append(
            {"diagnostic": "final loss (-ELBO, mean of last steps)", "value": diag["final_loss"]}
        )
    rows.append({"diagnostic": "divergences", "value": diag.get("divergences")})
    loo = diag.get("loo") or {}
    for key in ("elpd_loo", "se", "p_loo", "max_pareto_k") if loo else ():
        rows.append({"diagnostic": f"PSIS-LOO {key}", "value": loo.get(key)})
    khat = diag.get("khat")
    if khat and khat.get("pointwise"):
        shares = ", ".join(f"{v}: {f:.0%}" for v, f in sorted(khat.get("fractions", {}).items()))
        rows.append(
            {
                "diagnostic": "guide k-hat per data point (PSIS, Yao et al. 2018)",
                "value": f"median {_fmt(_num(khat.get('khat')))} ({khat.get('verdict')}), "
                f"max {_fmt(_num(khat.get('max')))}; {shares}",
            }
        )
    elif khat:
        rows.append(
            {
                "diagnostic": "guide k-hat (PSIS, Yao et al. 2018)",
                "value": f"{_fmt(_num(khat.get('khat')))} ({khat.get('verdict')})",
            }
        )
    else:
        rows.append({"diagnostic": "guide k-hat (PSIS, Yao et al. 2018)", "value": "n/a"})
    lines += ["## Diagnostics", "", _table(rows)]
    activity = diag.get("latent_activity")
    if activity:
        act_rows = [
            {
                "site": site,
                "active units": info.get("active_units"),
                "total KL (nats)": _num(info.get("total_kl")),
            }
            for site, info in activity.items()
        ]
        lines += ["## Latent activity (posterior collapse)", "", _table(act_rows)]
    evaluation = diag.get("evaluate")
    if evaluation:
        where = diag.get("evaluated_on", "")
        ev_rows = [{"metric": k, "value": v} for k, v in evaluation.items()]
        lines += [f"## Evaluation ({where})", "", _table(ev_rows)]
    lines += ["## Posterior summary", "", _table(diag.get("summary") or [])]
    if diag.get("figures"):
        lines += ["## Figures", ""]
        lines += [f"![{name}](figures/{name})" for name in diag["figures"]]
        lines.append("")
    if diag.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in diag["notes"]] + [""]
    return "\n".join(lines)


# ----- diagnose and sample -------------------------------------------------------------------


def _load_run(run_dir: Path):
    """(record, model, guide, train, test) of a run, parameters restored (SVI)."""
    from inference.svi import restore

    record = _read_config(run_dir)
    seed = int(record.get("seed", 0))
    model, guide = _build(record, seed=seed)
    data = _load_data(model, record.get("data", {"source": "default", "seed": seed}))
    train, test = _split(model, data, seed)
    if record.get("engine", "svi") == "svi":
        restore(model, guide, train, run_dir / "checkpoint.pt")
    else:
        guide = None
    return record, model, guide, train, test


def diagnose_run(run_dir: str | os.PathLike) -> Path:
    """Rebuild a run's model and guide from ``config.json``, load its checkpoint and
    recompute ``idata.nc``, the figures and ``report.md``. Returns the report's path."""
    run_dir = Path(run_dir)
    record, model, guide, train, test = _load_run(run_dir)
    if guide is None:  # NUTS: the draws are the run's idata
        idata = read_idata(run_dir / "idata.nc")
        with _QuietArviz():
            _report(run_dir, record, model, None, idata, train, train, test, None, [])
    else:
        losses = _read_losses(run_dir / "metrics.csv")
        _write_outputs(run_dir, record, model, guide, train, test, losses=losses)
    return run_dir / "report.md"


def sample_run(
    run_dir: str | os.PathLike, num: int = 100, out_file: str | os.PathLike | None = None
) -> Path:
    """``num`` posterior-predictive draws of a run's observed fields (shape ``(num, N,
    ...)``, over the training rows) into a ``.npz`` file. Returns its path."""
    num = _positive_int("num", num, allow_none=False)
    run_dir = Path(run_dir)
    out_file = Path(out_file) if out_file is not None else run_dir / "samples.npz"
    if out_file.suffix != ".npz":
        raise ValueError(f"--out '{out_file}' must end in .npz")
    record, model, guide, train, _ = _load_run(run_dir)
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
    else:
        from inference.posterior import posterior

        device = _device_of(model)
        data = {k: v.to(device) for k, v in train.items()}
        with warnings.catch_warnings(), _QuietArviz():
            warnings.simplefilter("ignore")
            idata = posterior(
                model, data, guide=guide, num_draws=num, seed=int(record.get("seed", 0))
            )
        pp = idata.posterior_predictive
        arrays = {var: np.asarray(pp[var])[0] for var in pp.data_vars}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_file, **arrays)
    return out_file
