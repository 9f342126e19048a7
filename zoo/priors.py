"""Declared priors: checking a user's override against the default, and parsing
``SITE=Dist(args)`` strings from the command line without ``eval``."""

from __future__ import annotations

import ast

import pyro.distributions as dist
import torch
from torch.distributions import biject_to, constraints

__all__ = ["PriorError", "check_override", "parse_prior", "support_name"]


class PriorError(ValueError):
    """A prior override that cannot be used: the message names the site and the problem."""


_SUPPORT_NAMES = {
    "Real()": "real",
    "GreaterThan(lower_bound=0.0)": "positive",
    "GreaterThanEq(lower_bound=0.0)": "positive",
    "Interval(lower_bound=0.0, upper_bound=1.0)": "unit interval",
    "Simplex()": "simplex",
    "Boolean()": "boolean",
}


def _base_support(support: constraints.Constraint) -> tuple[constraints.Constraint, int]:
    event = 0
    while isinstance(support, constraints.independent):
        event += support.reinterpreted_batch_ndims
        support = support.base_constraint
    return support, event


def support_name(support: constraints.Constraint) -> str:
    base, event = _base_support(support)
    name = _SUPPORT_NAMES.get(str(base), str(base))
    return f"{name} (event dim {event})" if event else name


def _same_support(a: constraints.Constraint, b: constraints.Constraint) -> bool:
    (base_a, ev_a), (base_b, ev_b) = _base_support(a), _base_support(b)
    if ev_a != ev_b:
        return False
    if str(base_a) == str(base_b):
        return True
    # Supports that map to the same unconstrained space are interchangeable for a prior
    # (e.g. HalfCauchy's positive and Gamma's nonnegative both map through exp).
    try:
        return biject_to(base_a) == biject_to(base_b)
    except NotImplementedError:
        return False


def check_override(site: str, default: dist.Distribution, override: object) -> dist.Distribution:
    """Return ``override`` if it can replace ``default`` at ``site``, else raise PriorError."""
    if not isinstance(override, torch.distributions.Distribution):
        raise PriorError(
            f"prior for site '{site}' must be a pyro.distributions Distribution, "
            f"got {type(override).__name__}"
        )
    if not override.event_shape and not override.batch_shape and default.event_shape:
        # one scalar prior for a vector site: the same prior for every element, iid
        override = override.expand(default.event_shape).to_event(len(default.event_shape))
    if override.event_shape != default.event_shape:
        raise PriorError(
            f"prior for site '{site}' must have event shape {tuple(default.event_shape)}; "
            f"got {tuple(override.event_shape)}"
        )
    if not _same_support(default.support, override.support):
        raise PriorError(
            f"prior for site '{site}' must have support {support_name(default.support)}; "
            f"{type(override).__name__} has support {support_name(override.support)}"
        )
    try:
        torch.broadcast_shapes(override.batch_shape, default.batch_shape)
    except RuntimeError:
        raise PriorError(
            f"prior for site '{site}' has batch shape {tuple(override.batch_shape)}, which does "
            f"not broadcast to the site's {tuple(default.batch_shape)}"
        ) from None
    if len(override.batch_shape) > len(default.batch_shape):
        raise PriorError(
            f"prior for site '{site}' has batch shape {tuple(override.batch_shape)}, more "
            f"dimensions than the site's {tuple(default.batch_shape)}"
        )
    return override


def _literal(node: ast.AST, text: str) -> object:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise PriorError(
            f"prior '{text}': arguments must be literal numbers or lists, got '{ast.unparse(node)}'"
        ) from None
    if isinstance(value, bool) or not isinstance(value, int | float | list | tuple):
        raise PriorError(f"prior '{text}': argument {value!r} is not a number or list")
    return torch.tensor(value, dtype=torch.get_default_dtype())


def parse_prior(text: str) -> tuple[str, dist.Distribution]:
    """Parse ``"tau=HalfNormal(5.0)"`` into ``("tau", dist.HalfNormal(5.0))``.

    Only names from ``pyro.distributions`` and literal arguments are accepted; nothing is
    evaluated.
    """
    site, sep, expr = text.partition("=")
    site, expr = site.strip(), expr.strip()
    if not sep or not site or not expr:
        raise PriorError(f"prior '{text}' must look like SITE=Dist(args), e.g. tau=HalfNormal(5)")
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise PriorError(f"prior '{text}': '{expr}' is not of the form Dist(args)") from None
    return site, _build(tree, text)


#: the forms a prior may take besides Dist(args): shape methods and Independent
_SHAPE_METHODS = ("to_event", "expand")


def _build(tree: ast.AST, text: str) -> dist.Distribution:
    """The distribution an expression describes: ``Dist(args)``, ``P.to_event(n)``,
    ``P.expand([shape])`` or ``Independent(P, n)``, nested; never evaluated."""
    form = (
        f"prior '{text}': '{ast.unparse(tree)}' is not of the form Dist(args), "
        "P.expand([shape]), P.to_event(n) or Independent(P, n)"
    )
    if not isinstance(tree, ast.Call) or tree.keywords and not all(k.arg for k in tree.keywords):
        raise PriorError(form)
    func = tree.func
    if isinstance(func, ast.Attribute) and func.attr in _SHAPE_METHODS:
        inner = _build(func.value, text)
        if len(tree.args) != 1 or tree.keywords:
            raise PriorError(f"prior '{text}': .{func.attr}() takes one argument")
        value = _literal(tree.args[0], text)
        if func.attr == "to_event":
            ndims = _count(value, text)
            if ndims > len(inner.batch_shape):
                raise PriorError(
                    f"prior '{text}': .to_event({ndims}) needs {ndims} batch dimension(s), the "
                    f"distribution has batch shape {tuple(inner.batch_shape)}; expand it first, "
                    "e.g. Normal(0, 1).expand([10]).to_event(1) (or give Normal(0, 1) alone: "
                    "the same prior for every element)"
                )
            return inner.to_event(ndims)
        shape = [_count(v, text) for v in value.reshape(-1).tolist()]
        try:
            return inner.expand(shape)
        except (TypeError, ValueError, RuntimeError) as error:
            reason = " ".join(str(error).split())
            raise PriorError(f"prior '{text}': .expand({shape}) cannot apply ({reason})") from None
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
        raise PriorError(
            f"prior '{text}': .{func.attr}() is not allowed; a prior may use "
            f"{', '.join(f'.{m}()' for m in _SHAPE_METHODS)}"
        )
    if not isinstance(func, ast.Name | ast.Attribute):
        raise PriorError(form)
    name = func.id if isinstance(func, ast.Name) else func.attr
    if name == "Independent":
        if len(tree.args) != 2 or tree.keywords:
            raise PriorError(f"prior '{text}': Independent takes (distribution, n)")
        return _build(tree.args[0], text).to_event(_count(_literal(tree.args[1], text), text))
    cls = getattr(dist, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.distributions.Distribution)):
        raise PriorError(f"prior '{text}': '{name}' is not a distribution in pyro.distributions")
    args = [_literal(a, text) for a in tree.args]
    kwargs = {kw.arg: _literal(kw.value, text) for kw in tree.keywords}
    try:
        return cls(*args, **kwargs, validate_args=True)
    except (TypeError, ValueError) as error:
        reason = " ".join(str(error).split())  # torch's message spans lines
        raise PriorError(f"prior '{text}': {name} rejects these arguments ({reason})") from None


def _count(value: torch.Tensor | float, text: str) -> int:
    """A non-negative whole number argument (a shape or an event dimension count)."""
    number = float(value)
    if not number.is_integer() or number < 0:
        raise PriorError(f"prior '{text}': {number:g} is not a non-negative whole number")
    return int(number)
