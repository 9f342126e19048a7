"""The ``zoo`` command: ``list``, ``info NAME``, ``train NAME``, ``diagnose RUN``,
``sample RUN``, ``reproduce NAME``, ``readme``.

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
    """The ``zoo`` parser. Its choices come from :mod:`zoo.cli.choices`, which imports
    nothing heavy, so ``zoo --help`` and ``zoo list`` start without torch."""
    from zoo.cli.choices import (
        ACCELERATORS,
        DEFAULT_NUTS_DRAWS,
        DEFAULT_STEPS,
        ELBO_NAMES,
        ENGINES,
        GUIDE_KINDS,
        LOCAL_KINDS,
        TRAINERS,
    )

    parser = _Parser(
        prog="zoo",
        description="latent-zoo: Pyro latent-variable models. Start with `zoo list`, then "
        "`zoo info NAME`, `zoo train NAME`, `zoo sample RUN`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text)

    listing = command("list", "list the registered models, one line each")
    listing.add_argument(
        "--papers",
        action="store_true",
        help="list the 37 source papers instead: title, authors, venue, links and which "
        "models implement each (default: off)",
    )
    listing.add_argument(
        "--markdown",
        action="store_true",
        help="with --papers: print the list as the Markdown table of docs/papers.md (default: off)",
    )

    info = command("info", "describe a model: config defaults, priors, data fields, guides")
    info.add_argument("name", metavar="NAME", help="a registered model (see `zoo list`)")

    train = command(
        "train",
        "train a model into a run folder (config, metrics, checkpoint, "
        "idata.nc, figures, report.md)",
    )
    train.add_argument("name", metavar="NAME", help="a registered model (see `zoo list`)")
    train.add_argument(
        "--guide",
        default="default",
        choices=sorted(GUIDE_KINDS),
        help="guide family for the global latents (svi engine): 'default' is the model's "
        "own guide (default: %(default)s)",
    )
    train.add_argument(
        "--local-guide",
        default="normal",
        choices=LOCAL_KINDS,
        metavar="LOCAL",
        help="family of the amortized guide of the local latents (models with local "
        "latents; `zoo info NAME` lists a model's): normal, the encoder's diagonal Gaussian; "
        "mvn, a full-covariance (or low-rank) Gaussian; flow, an inverse autoregressive flow "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="SITE=Dist(args)",
        help="replace a declared prior, e.g. tau=HalfNormal(2.0); repeatable; sites and "
        "supports are checked (`zoo info NAME` lists the priors) (default: none)",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. latent_dim=4; repeatable; typed after the "
        "model's Config (`zoo info NAME` lists the fields) (default: none)",
    )
    train.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="SVI steps, or NUTS draws per chain (and as many warmup steps) (default: the "
        f"config's steps or epochs, else {DEFAULT_STEPS} steps; "
        f"NUTS {DEFAULT_NUTS_DRAWS})",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the network initialisation, data split, minibatches and draws "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--device",
        default=None,
        help="torch device of the plain trainer: cpu, cuda or cuda:N (default: cpu)",
    )
    train.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help=".npz or .csv file with the model's data fields, checked before training "
        "(default: the model's own default data)",
    )
    train.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder to write; must not hold a run unless --resume "
        "(default: runs/NAME-<date>-<time>)",
    )
    train.add_argument(
        "--engine",
        default="svi",
        choices=ENGINES,
        help="svi (stochastic variational inference with --guide) or nuts (MCMC, small "
        "models only: `zoo info NAME` lists a model's engines) (default: %(default)s)",
    )
    train.add_argument(
        "--elbo",
        default="auto",
        choices=ELBO_NAMES,
        help="SVI objective; auto takes jit for models with static structure, else trace "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--chains", type=int, default=2, metavar="N", help="NUTS chains (default: %(default)s)"
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="SVI steps between checkpoints (default: a tenth of the run, at most 500)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint's step; options not given are "
        "the run's own, and --steps may grow to train it longer (default: off, start from "
        "step 0)",
    )
    train.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (default: shown)",
    )
    train.add_argument(
        "--trainer",
        default="plain",
        choices=TRAINERS,
        help="who runs SVI: plain (one process) or lightning (PyTorch Lightning, DDP "
        "across --devices and --num-nodes) (default: %(default)s)",
    )
    train.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="lightning: processes (cpu) or GPUs per node (default: %(default)s)",
    )
    train.add_argument(
        "--num-nodes",
        type=int,
        default=1,
        metavar="N",
        help="lightning: number of nodes (default: %(default)s)",
    )
    train.add_argument(
        "--accelerator",
        default="cpu",
        choices=(*ACCELERATORS, "cuda"),
        help="lightning: cpu or gpu (cuda is gpu) (default: %(default)s)",
    )
    train.add_argument(
        "--strategy",
        default=None,
        help="lightning: a DDP-family strategy Lightning knows, e.g. ddp, ddp_spawn, auto "
        "(default: ddp for more than one process, else auto)",
    )

    diagnose = command(
        "diagnose", "recompute a run's idata.nc, figures (the model's own too) and report.md"
    )
    diagnose.add_argument("run", metavar="RUN", help="a run folder written by `zoo train`")

    sample = command(
        "sample",
        "draw new data from a trained run's fitted model into a .npz (and a .png where the "
        "data are images)",
    )
    sample.add_argument("run", metavar="RUN", help="a run folder written by `zoo train`")
    sample.add_argument(
        "--num",
        type=int,
        default=100,
        metavar="N",
        help="new rows to draw (with --replicates: replicates of the training rows) "
        "(default: %(default)s)",
    )
    sample.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help=".npz file to write; pictures go next to it as .png (default: RUN/samples.npz)",
    )
    sample.add_argument(
        "--replicates",
        action="store_true",
        help="instead of new rows, posterior-predictive replicates of the training rows: "
        "arrays (N draws, training rows, ...) of the observed fields (default: off)",
    )
    sample.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the draw (default: the run's seed)",
    )

    reproduce = command(
        "reproduce",
        "run a model's headline experiment (its paper check and baselines) over seeds into "
        "results/NAME.json and results/NAME.md",
    )
    reproduce.add_argument("name", metavar="NAME", help="a registered model (see `zoo list`)")
    reproduce.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="run seeds 0..N-1; at least 3 for a headline (default: the recipe's, 3 or more)",
    )
    reproduce.add_argument(
        "--quick",
        action="store_true",
        help="the same code path at tiny size, a smoke run that is not evidence "
        "(default: off; writes to results/quick/ unless --out)",
    )
    reproduce.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for NAME.json, NAME.md and NAME/ (default: results, or results/quick)",
    )
    reproduce.add_argument(
        "--only",
        choices=["headline", "reference"],
        default=None,
        help="run one part: the headline recipe, or (NUTS-capable models) the reference "
        "posterior and guide grades into DIR/reference/ (default: both that apply)",
    )

    readme = command(
        "readme", "regenerate the README's model table from results/*.json (or --check it)"
    )
    readme.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and list the rows that disagree with results/ "
        "(default: rewrite the table)",
    )
    readme.add_argument("--readme", default="README.md", help="(default: %(default)s)")
    readme.add_argument("--results", default="results", help="(default: %(default)s)")
    return parser


def _first_line(text: str) -> str:
    for line in str(text).strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _cmd_list(args) -> int:
    """Read from source (:mod:`zoo.catalog`), so listing imports no model and no torch."""
    from zoo.catalog import model_entries

    if args.papers:
        return _print_papers(model_entries(), markdown=args.markdown)
    for entry in model_entries():
        paper = f"paper {entry.paper}" if entry.paper is not None else "reference model"
        print(f"{entry.name:24s} {paper:16s} {entry.summary}")
    return 0


def _print_papers(entries, *, markdown: bool) -> int:
    from zoo.papers import PAPERS, paper_models, papers_markdown, status

    if markdown:
        print(papers_markdown(entries), end="")
        return 0
    models = paper_models(entries)
    for paper in PAPERS:
        print(f"{paper.number:2d}. {paper.title}")
        byline = ", ".join(part for part in (paper.authors, paper.where) if part)
        if byline:
            print(f"    {byline}")
        for label, link in (("paper", paper.link), ("code", paper.code)):
            if link:
                print(f"    {label}: {link}")
        print(f"    {status(paper, models)}")
    return 0


def _story(cls) -> tuple[str, str]:
    """The docstring that tells the model's story, and where to read all of it: the class's
    own when it is the longer one or its module holds several models, else the module's."""
    import inspect

    import zoo

    module = sys.modules.get(cls.__module__)
    own = inspect.cleandoc(cls.__doc__ or "")
    shared = inspect.cleandoc(getattr(module, "__doc__", None) or "")
    siblings = sum(zoo.get(name).__module__ == cls.__module__ for name in zoo.list_models())
    if own and (siblings > 1 or len(own) >= len(shared)):
        return own, f"{cls.__module__}.{cls.__qualname__}"
    return shared or own, cls.__module__


def _cmd_info(args) -> int:
    import guides
    import zoo
    from zoo.cli.doctext import short_numbers, story
    from zoo.cli.options import prior_display
    from zoo.papers import PAPERS
    from zoo.priors import support_name

    cls = zoo.get(args.name)
    model = cls()
    print(f"{cls.name}: {type(model).__name__}")
    if cls.paper is None:
        print("paper: none (reference model)")
    else:
        titles = {paper.number: paper.title for paper in PAPERS}
        print(f'paper: {cls.paper}, "{titles.get(cls.paper, "?")}"')
    doc, where = _story(cls)
    text, cut = story(doc)
    print("\n".join(("  " + line).rstrip() for line in text.splitlines()))
    if cut:
        print(f"  (the whole story: python -m pydoc {where})")
    print("config defaults:")
    for field in dataclasses.fields(cls.Config):
        value = getattr(model.config, field.name)
        shown = repr(value) if isinstance(value, str) else short_numbers(repr(value))
        print(f"  {field.name} = {shown}")
    print("priors:")
    for site, prior in model.default_priors().items():
        shown = short_numbers(prior_display(prior))
        print(f"  {site} ~ {shown}   (support: {support_name(prior.support)})")
    print("data fields:")
    for key, field in model.data_spec().items():
        shape = ("N",) + tuple(field.shape)
        image = f", images {'x'.join(map(str, field.image))}" if field.image else ""
        support = short_numbers(str(field.support))
        print(f"  {key}: shape {shape}, {field.dtype}, {support}{image}  {field.doc}".rstrip())
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
    if model.config.holdout:
        print(f"holdout: {model.config.holdout} of the rows are held out for evaluate()")
    return 0


#: ``zoo train`` option (argparse dest) -> its :func:`zoo.cli.runs.train_run` argument
_TRAIN_OPTIONS = {
    "guide": "guide",
    "local_guide": "local_guide",
    "prior": "priors",
    "set": "sets",
    "steps": "steps",
    "seed": "seed",
    "device": "device",
    "data": "data_path",
    "engine": "engine",
    "elbo": "elbo",
    "chains": "chains",
    "checkpoint_every": "checkpoint_every",
    "trainer": "trainer",
    "devices": "devices",
    "num_nodes": "num_nodes",
    "accelerator": "accelerator",
    "strategy": "strategy",
}


def _given_train_options(argv: Sequence[str] | None) -> set[str]:
    """The ``zoo train`` options typed on the command line (argparse dests), as opposed to
    those left at their defaults: the same parser with every default suppressed."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in subparsers.choices["train"]._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _cmd_train(args) -> int:
    from zoo.cli.runs import launch_rank, recorded_settings, train_run

    options = {kwarg: getattr(args, dest) for dest, kwarg in _TRAIN_OPTIONS.items()}
    if args.resume and args.out is not None:
        # every option not typed again is the run's own: nothing to retype, and a mistyped
        # folder is refused rather than trained from scratch
        recorded = recorded_settings(args.out)
        given = getattr(args, "given", set(_TRAIN_OPTIONS))
        for dest, kwarg in _TRAIN_OPTIONS.items():
            if dest not in given and kwarg in recorded:
                options[kwarg] = recorded[kwarg]
    run_dir = train_run(
        args.name,
        out=args.out,
        resume=args.resume,
        progress=not args.no_progress,
        **options,
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

    files = sample_run(args.run, args.num, args.out, replicates=args.replicates, seed=args.seed)
    what = "replicates of the training rows" if args.replicates else f"{args.num} new rows"
    print(f"{what} written to {files.data}")
    for picture in files.pictures:
        print(f"picture: {picture}")
    return 0


def _cmd_reproduce(args) -> int:
    from zoo.evidence.reference import check_reference_request, has_reference, reference
    from zoo.evidence.runner import check_request, reproduce

    request = (args.name, args.seeds, args.quick, args.out)
    parts = [args.only] if args.only else ["headline"]
    if args.only is None and has_reference(args.name):
        parts.append("reference")
    # every refusal before any work
    if "headline" in parts:
        check_request(*request)
    if "reference" in parts:
        check_reference_request(*request)
    if "headline" in parts:
        json_path, md_path = reproduce(args.name, seeds=args.seeds, quick=args.quick, out=args.out)
        print(f"results written to {json_path} and {md_path}")
    if "reference" in parts:
        paths = reference(args.name, seeds=args.seeds, quick=args.quick, out=args.out)
        print(f"reference written to {', '.join(map(str, paths))}")
    return 0


def _cmd_readme(args) -> int:
    from zoo.evidence.readme import stale_rows, update_readme

    if args.check:
        stale = stale_rows(args.readme, args.results)
        for line in stale:
            print(f"stale or missing row: {line}")
        return 1 if stale else 0
    changed = update_readme(args.readme, args.results)
    print(f"{args.readme}: model table {'rewritten' if changed else 'already current'}")
    return 0


_COMMANDS = {
    "list": _cmd_list,
    "info": _cmd_info,
    "train": _cmd_train,
    "diagnose": _cmd_diagnose,
    "sample": _cmd_sample,
    "reproduce": _cmd_reproduce,
    "readme": _cmd_readme,
}


#: commands that run before the heavy error types below are imported
_LIGHT_COMMANDS = ("list",)


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
    if args.command == "train" and args.resume:
        args.given = _given_train_options(argv)
    if args.command in _LIGHT_COMMANDS:  # raises none of the errors below, needs no torch
        return _COMMANDS[args.command](args)

    from guides import GuideError
    from inference.checkpoint import CheckpointError
    from inference.data import DataError
    from inference.svi import TrainingDiverged
    from zoo.base import ConfigError
    from zoo.cli.runs import TrainingInterrupted
    from zoo.priors import PriorError

    try:
        return _COMMANDS[args.command](args)
    except TrainingDiverged as error:
        _error(f"training diverged: {error}")
        return 1
    except TrainingInterrupted as error:
        _error(str(error))
        return 130
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
