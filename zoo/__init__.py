"""latent-zoo: latent-variable models from recent papers as Pyro models plus guides.

Models live in :mod:`zoo.models` and are found by discovery the first time the registry is
asked for one (``zoo.list()``, ``zoo.get``, ``zoo.create``).
"""

from zoo.base import DATA_PLATE, ConfigError, ZooModel
from zoo.priors import PriorError, parse_prior
from zoo.registry import create, get, list_models, register

list = list_models  # noqa: A001  (``zoo.list()`` as in the design)

__all__ = [
    "DATA_PLATE",
    "ConfigError",
    "PriorError",
    "ZooModel",
    "create",
    "get",
    "list",
    "list_models",
    "parse_prior",
    "register",
]
