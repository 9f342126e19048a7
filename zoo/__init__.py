"""latent-zoo: latent-variable models from recent papers as Pyro models plus guides.

Models live in :mod:`zoo.models` and are found by discovery the first time the registry is
asked for one (``zoo.list()``, ``zoo.get``, ``zoo.create``).

The names below are loaded on first use (PEP 562), not on ``import zoo``: they pull in torch
and Pyro, which take seconds to import, and the light commands (``zoo list``, ``zoo --help``)
need neither.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> (module, attribute) it is loaded from on first use
_LAZY = {
    "DATA_PLATE": ("zoo.base", "DATA_PLATE"),
    "ConfigError": ("zoo.base", "ConfigError"),
    "ZooModel": ("zoo.base", "ZooModel"),
    "PriorError": ("zoo.priors", "PriorError"),
    "parse_prior": ("zoo.priors", "parse_prior"),
    "create": ("zoo.registry", "create"),
    "get": ("zoo.registry", "get"),
    "list": ("zoo.registry", "list_models"),  # ``zoo.list()`` as in the design
    "list_models": ("zoo.registry", "list_models"),
    "register": ("zoo.registry", "register"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'zoo' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
