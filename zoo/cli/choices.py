"""The vocabularies ``zoo --help`` shows (guide kinds, ELBO names, engines, trainers,
accelerators, default step counts), in a module that imports nothing heavy.

Why a copy: the modules that own these names (:mod:`guides`, :mod:`inference.elbos`,
:mod:`inference.lightning`, :mod:`inference.config`, :mod:`zoo.cli.runs`) sit in packages
whose ``__init__`` imports torch and Pyro, seconds of start-up that ``zoo list`` and
``zoo --help`` do not need. ``tests/test_cli_startup.py`` checks that every name here equals
its owner's, so a new guide kind or ELBO fails a test until it is added here too.
"""

from __future__ import annotations

__all__ = [
    "ACCELERATORS",
    "DEFAULT_NUTS_DRAWS",
    "DEFAULT_STEPS",
    "ELBO_NAMES",
    "ENGINES",
    "GUIDE_KINDS",
    "LOCAL_KINDS",
    "TRAINERS",
]

#: ``--guide``: the keys of :data:`guides.KINDS` (``default`` is the model's own guide)
GUIDE_KINDS = ("default", "normal", "lowrank", "mvn", "flow", "delta")
#: ``--local-guide``: :data:`guides.local.LOCAL_KINDS`
LOCAL_KINDS = ("normal", "mvn", "flow")
#: ``--elbo``: :data:`inference.elbos.ELBO_NAMES`
ELBO_NAMES = (
    "auto", "trace", "jit", "meanfield", "jit_meanfield", "renyi", "iwae", "graph", "enum",
)  # fmt: skip
#: ``--accelerator``: :data:`inference.lightning.ACCELERATORS` (the CLI adds ``cuda``)
ACCELERATORS = ("cpu", "gpu")
#: ``--engine`` (owned here; :mod:`zoo.cli.runs` imports it)
ENGINES = ("svi", "nuts")
#: ``--trainer``: the plain engine (inference.svi.fit) or Lightning (owned here)
TRAINERS = ("plain", "lightning")
#: ``--steps`` for NUTS (owned here)
DEFAULT_NUTS_DRAWS = 1000
#: ``--steps`` for SVI when the config sets none: ``inference.config.TrainConfig.DEFAULT_STEPS``
DEFAULT_STEPS = 2000
