"""The one place that maps model names to classes."""

from __future__ import annotations

from typing import Any

from zoo.base import ZooModel

_REGISTRY: dict[str, type[ZooModel]] = {}


def register(cls: type[ZooModel]) -> type[ZooModel]:
    """Class decorator: make a zoo model available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a zoo model named '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[ZooModel]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; available: {list_models()}") from None


def create(name: str, config: Any = None, *, priors=None, **config_overrides: Any) -> ZooModel:
    """Build a registered model: ``zoo.create("eight_schools", priors={...}, centered=False)``."""
    return get(name)(config, priors=priors, **config_overrides)
