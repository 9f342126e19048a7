"""What a headline experiment is: a function of a seed that returns named figures, its
settings at full and at quick size, and which figures the README shows."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.evidence.checks import Check

__all__ = [
    "Check",
    "Figure",
    "Recipe",
    "RunContext",
    "recipe",
    "find_recipe",
    "get_recipe",
    "list_recipes",
]

#: the package whose modules hold the recipes, one per model family
EXPERIMENTS_PACKAGE = "zoo.experiments"


@dataclass(frozen=True)
class Figure:
    """A figure the README shows: the key a recipe's run returns, and how to print it."""

    key: str
    label: str
    digits: int = 3


@dataclass
class RunContext:
    """What a recipe's run sees besides its seed.

    ``settings`` are the recipe's settings at the requested size (recorded in the results
    file, so a figure always comes with what made it); ``artifacts`` is a folder for files
    kept beside the results (reference draws), published only when the whole run succeeds;
    :meth:`once` computes a value shared by all seeds (a reference posterior) a single time.
    """

    quick: bool
    settings: dict[str, Any]
    artifacts: Path
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


Run = Callable[[int, RunContext], Mapping[str, float]]


@dataclass(frozen=True)
class Recipe:
    """A model's headline experiment.

    :param model: the registered model name.
    :param run: ``run(seed, ctx) -> {key: value}``; every arm (the model and its baselines)
        runs inside it on the same data, budget and tuning, so seeds pair the arms.
    :param headline: the figures the README row shows, in order.
    :param settings: full-size settings; ``quick`` overrides some of them for the tests.
    :param paper: the README's paper column; ``data``: its default-data column.
    :param claim: what the experiment measures and against what, in words (no figures:
        figures come only from results files).
    :param seeds: the default number of seeds (at least 3).
    :param checks: the paper's claims, each tested on the results file (``zoo readme``
        prints them with their verdict: met, not met, or level within noise).
    """

    model: str
    run: Run
    headline: tuple[Figure, ...]
    settings: Mapping[str, Any]
    quick: Mapping[str, Any]
    paper: str
    data: str
    claim: str
    seeds: int = 3
    checks: tuple[Check, ...] = ()

    def settings_for(self, quick: bool) -> dict[str, Any]:
        merged = dict(self.settings)
        if quick:
            unknown = set(self.quick) - set(self.settings)
            if unknown:
                raise ValueError(f"recipe {self.model}: quick settings {sorted(unknown)} unknown")
            merged.update(self.quick)
        return merged


_RECIPES: dict[str, Recipe] = {}
_discovered = False


def recipe(
    model: str,
    *,
    headline: list[Figure] | tuple[Figure, ...],
    settings: Mapping[str, Any],
    quick: Mapping[str, Any],
    paper: str,
    data: str,
    claim: str,
    seeds: int = 3,
    checks: list[Check] | tuple[Check, ...] = (),
) -> Callable[[Run], Run]:
    """Decorator: register ``run`` as model ``model``'s headline experiment."""

    def register(run: Run) -> Run:
        if model in _RECIPES and _RECIPES[model].run is not run:
            raise ValueError(f"a recipe for '{model}' is already registered")
        if seeds < 3:
            raise ValueError(f"recipe {model}: a headline needs at least 3 seeds, got {seeds}")
        _RECIPES[model] = Recipe(
            model=model,
            run=run,
            headline=tuple(headline),
            settings=dict(settings),
            quick=dict(quick),
            paper=paper,
            data=data,
            claim=claim,
            seeds=seeds,
            checks=tuple(checks),
        )
        return run

    return register


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(EXPERIMENTS_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{EXPERIMENTS_PACKAGE}.{module.name}")


def find_recipe(model: str) -> Recipe | None:
    """The recipe registered for ``model``, or None."""
    _discover()
    return _RECIPES.get(model)


def list_recipes() -> list[str]:
    _discover()
    return sorted(_RECIPES)


def get_recipe(model: str) -> Recipe:
    """The recipe of a registered model; KeyError naming the problem otherwise."""
    import zoo
    from zoo.registry import family

    zoo.get(model)  # KeyError for an unknown model, with the list
    _discover()
    if model not in _RECIPES:
        raise KeyError(
            f"model '{model}' has no reproduce recipe yet (add one to "
            f"zoo/experiments/{family(model)}.py); models with one: {list_recipes()}"
        )
    return _RECIPES[model]
