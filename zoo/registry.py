"""The one place that maps model names to classes; models are found by discovery."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from zoo.base import TrainConfig, ZooModel

_REGISTRY: dict[str, type[ZooModel]] = {}
_discovered = False

#: the package whose modules are the zoo's models
MODELS_PACKAGE = "zoo.models"


def register(cls: type[ZooModel]) -> type[ZooModel]:
    """Class decorator: make a zoo model available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, TrainConfig)):
        raise TypeError(
            f"{cls.__qualname__}.Config must be a dataclass subclassing TrainConfig, so the "
            "training fields are declared"
        )
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a zoo model named '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def discover() -> None:
    """Import every module and package of :mod:`zoo.models` once, so that each registers its
    models: adding a model touches no shared file."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(MODELS_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{MODELS_PACKAGE}.{module.name}")


def family(name: str) -> str:
    """The module or package of :mod:`zoo.models` that defines model ``name``: the name its
    test file (``tests/models/test_<family>.py``) and tutorial (``tutorials/<family>.ipynb``)
    carry."""
    module = get(name).__module__
    prefix = MODELS_PACKAGE + "."
    if not module.startswith(prefix):
        return module
    return module[len(prefix) :].split(".")[0]


def list_models() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get(name: str) -> type[ZooModel]:
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; available: {list_models()}") from None


def create(name: str, config: Any = None, *, priors=None, **config_overrides: Any) -> ZooModel:
    """Build a registered model: ``zoo.create("eight_schools", priors={...}, centered=False)``."""
    return get(name)(config, priors=priors, **config_overrides)
