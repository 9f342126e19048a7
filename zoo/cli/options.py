"""Parsing and checking what a user asks for: ``--set key=value``, ``--prior
SITE=Dist(args)``, devices and counts, each refused with one clear line."""

from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pyro.distributions.torch_distribution import ExpandedDistribution

from zoo.base import ConfigError, ZooModel
from zoo.priors import PriorError, parse_prior


def config_types(cls: type) -> dict[str, Any]:
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
    types = config_types(model_cls.Config)
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


def check_device(device: str | None) -> str | None:
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


def positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
