"""Evidence: each model's headline experiment as a *recipe*, run over seeds by
``zoo reproduce NAME`` into ``results/NAME.json|md``, and the README's model table generated
from those files (``zoo readme``).

Recipes live in :mod:`zoo.experiments`, one module per model family, and register with
:func:`recipe`.
"""

from zoo.evidence.recipes import (
    Check,
    Figure,
    Recipe,
    RunContext,
    find_recipe,
    get_recipe,
    list_recipes,
    recipe,
)

__all__ = [
    "Check",
    "Figure",
    "Recipe",
    "RunContext",
    "find_recipe",
    "get_recipe",
    "list_recipes",
    "recipe",
]
