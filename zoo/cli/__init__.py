"""The command-line runtime: the ``zoo`` command (:mod:`~zoo.cli.main`), its option parsing
(:mod:`~zoo.cli.options`), run folders (:mod:`~zoo.cli.runs`, :mod:`~zoo.cli.runfiles`,
:mod:`~zoo.cli.datafiles`) and reports (:mod:`~zoo.cli.report`)."""

from zoo.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
