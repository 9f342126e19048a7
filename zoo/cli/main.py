"""The ``zoo`` command: ``list``, ``info NAME``, ``train NAME``, ``diagnose RUN``,
``sample RUN``.

Anticipated user errors print one line, ``zoo: error: <message>``, to stderr and exit with
status 2 (1 when training diverged); never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors as one line too."""

    def error(self, message: str):  # noqa: D401
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    from guides.local import LOCAL_KINDS

    parser = _Parser(prog="zoo", description="latent-zoo: Pyro latent-variable models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("list", help="list the registered models")

    info = sub.add_parser("info", help="describe a model")
    info.add_argument("name")

    train = sub.add_parser("train", help="train a model into a run folder")
    train.add_argument("name")
    train.add_argument("--guide", default="default", help="guide kind (default: the model's)")
    train.add_argument(
        "--local-guide",
        default="normal",
        choices=LOCAL_KINDS,
        metavar="LOCAL",
        help=(
            "family of the amortized guide of the local latents (models with local latents): "
            f"{', '.join(LOCAL_KINDS)} (default: normal, the encoder's diagonal Gaussian; mvn: "
            "full-covariance or low-rank Gaussian; flow: inverse autoregressive flow)"
        ),
    )
    train.add_argument(
        "--prior", action="append", default=[], metavar="SITE=Dist(args)", help="prior override"
    )
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="cpu or cuda")
    train.add_argument("--data", default=None, metavar="FILE", help=".npz or .csv data file")
    train.add_argument("--out", default=None, metavar="DIR", help="run folder")
    train.add_argument("--engine", default="svi", help="svi or nuts")
    train.add_argument("--elbo", default="auto")
    train.add_argument("--chains", type=int, default=2, help="NUTS chains")
    train.add_argument("--checkpoint-every", type=int, default=None, metavar="N")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--trainer", default="plain", help="plain, or lightning (DDP across devices and nodes)"
    )
    train.add_argument("--devices", type=int, default=1, help="lightning: devices per node")
    train.add_argument("--num-nodes", type=int, default=1, help="lightning: number of nodes")
    train.add_argument("--accelerator", default="cpu", help="lightning: cpu or gpu")
    train.add_argument("--strategy", default=None, help="lightning: default ddp (or auto)")

    diagnose = sub.add_parser("diagnose", help="recompute a run's idata and report")
    diagnose.add_argument("run")

    sample = sub.add_parser("sample", help="posterior-predictive draws of a run to .npz")
    sample.add_argument("run")
    sample.add_argument("--num", type=int, default=100)
    sample.add_argument("--out", default=None, metavar="FILE")
    return parser


def _first_line(text: str) -> str:
    for line in str(text).strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _cmd_list(args) -> int:
    import zoo

    for name in zoo.list_models():
        cls = zoo.get(name)
        paper = f"paper {cls.paper}" if cls.paper is not None else "reference model"
        print(f"{name:24s} {paper:16s} {_first_line(_doc(cls))}")
    return 0


def _doc(cls) -> str:
    module = sys.modules.get(cls.__module__)
    return (getattr(module, "__doc__", None) or cls.__doc__ or "").strip()


def _cmd_info(args) -> int:
    import guides
    import zoo
    from zoo.cli.options import prior_display
    from zoo.priors import support_name

    cls = zoo.get(args.name)
    model = cls()
    print(f"{cls.name}: {type(model).__name__}")
    print(f"paper: {cls.paper if cls.paper is not None else 'none (reference model)'}")
    doc = _doc(cls).splitlines()
    print("\n".join("  " + line for line in doc[:12]).rstrip())
    print("config defaults:")
    for field in dataclasses.fields(cls.Config):
        print(f"  {field.name} = {getattr(model.config, field.name)!r}")
    print("priors:")
    for site, prior in model.default_priors().items():
        print(f"  {site} ~ {prior_display(prior)}   (support: {support_name(prior.support)})")
    print("data fields:")
    for key, field in model.data_spec().items():
        shape = ("N",) + tuple(field.shape)
        print(f"  {key}: shape {shape}, {field.dtype}, {field.support}  {field.doc}".rstrip())
    print(f"local sites: {list(model.local_sites)}")
    print(f"guide kinds (global sites, --guide): {sorted(guides.KINDS)}")
    kinds = guides.local_kinds(model)
    if not kinds:
        local_line = "none (no local latents)"
    elif model.fixed_local_guide:
        local_line = f"{list(kinds)} only: {model.fixed_local_guide}"
    else:
        local_line = f"{list(kinds)} (default: normal)"
    print(f"local guide kinds (local sites, --local-guide): {local_line}")
    engines = ["svi", "nuts"] if cls.supports_nuts else ["svi"]
    print(f"engines: {engines}")
    if getattr(cls, "holdout", 0):
        print(f"holdout: {cls.holdout} of the rows are held out for evaluate()")
    return 0


def _cmd_train(args) -> int:
    from zoo.cli.runs import launch_rank, train_run

    run_dir = train_run(
        args.name,
        out=args.out,
        guide=args.guide,
        local_guide=args.local_guide,
        priors=args.prior,
        sets=args.set,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        data_path=args.data,
        engine=args.engine,
        elbo=args.elbo,
        resume=args.resume,
        progress=not args.no_progress,
        chains=args.chains,
        checkpoint_every=args.checkpoint_every,
        trainer=args.trainer,
        devices=args.devices,
        num_nodes=args.num_nodes,
        accelerator=args.accelerator,
        strategy=args.strategy,
    )
    if launch_rank() != 0:  # another rank of a distributed run: rank 0 reports
        return 0
    print(f"run written to {run_dir}")
    print(f"report: {run_dir / 'report.md'}")
    return 0


def _cmd_diagnose(args) -> int:
    from zoo.cli.runs import diagnose_run

    report = diagnose_run(args.run)
    print(f"report: {report}")
    return 0


def _cmd_sample(args) -> int:
    from zoo.cli.runs import sample_run

    path = sample_run(args.run, args.num, args.out)
    print(f"samples written to {path}")
    return 0


_COMMANDS = {
    "list": _cmd_list,
    "info": _cmd_info,
    "train": _cmd_train,
    "diagnose": _cmd_diagnose,
    "sample": _cmd_sample,
}


def _error(message: str) -> None:
    print(f"zoo: error: {_first_line(message) or 'unknown error'}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zoo`` command; return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        _error(str(error))
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)

    from guides import GuideError
    from inference.checkpoint import CheckpointError
    from inference.data import DataError
    from inference.svi import TrainingDiverged
    from zoo.base import ConfigError
    from zoo.priors import PriorError

    try:
        return _COMMANDS[args.command](args)
    except TrainingDiverged as error:
        _error(f"training diverged: {error}")
        return 1
    except KeyError as error:
        _error(error.args[0] if error.args else str(error))
        return 2
    except (
        DataError,
        PriorError,
        ConfigError,
        GuideError,
        CheckpointError,
        ValueError,
    ) as error:
        _error(str(error))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
