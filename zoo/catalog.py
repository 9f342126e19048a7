"""The registered models' ``name``, ``paper`` and ``summary``, read without importing them.

Importing :mod:`zoo.models` to list it costs seconds (torch, Pyro, every model's own
imports), so ``zoo list`` reads the same facts from the source instead: each module or
package that :func:`zoo.registry.discover` would import is parsed, and every ``@register``
class contributes the literal ``name``, ``paper`` and ``summary`` it sets or inherits from a
class defined in :mod:`zoo.models`. ``tests/test_cli_startup.py`` checks that this listing
equals the real registry's. Once the registry has been loaded in this process, it is read
directly (it then also knows models registered by other means).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelEntry", "model_entries", "scan_models", "summary_line"]

#: the package :func:`zoo.registry.discover` imports (kept equal to ``MODELS_PACKAGE``)
MODELS_PACKAGE = "zoo.models"


@dataclass(frozen=True)
class ModelEntry:
    """What ``zoo list`` shows of one registered model."""

    name: str
    paper: int | None
    summary: str


def summary_line(summary: str, doc: str | None) -> str:
    """The model's ``summary``, else the first line of its docstring."""
    if summary:
        return summary.strip()
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@dataclass
class _Class:
    module: str
    bases: list[str]
    attrs: dict[str, object]
    doc: str | None
    registered: bool


def _is_register(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "register") or (
        isinstance(target, ast.Attribute) and target.attr == "register"
    )


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _classes(path: Path, module: str) -> list[tuple[str, _Class]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        attrs: dict[str, object] = {}
        for statement in node.body:
            if isinstance(statement, ast.Assign):
                targets, value = statement.targets, statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                targets, value = [statement.target], statement.value
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("name", "paper", "summary"):
                    try:
                        attrs[target.id] = ast.literal_eval(value)
                    except ValueError:
                        raise ValueError(
                            f"{path}: {node.name}.{target.id} is not a literal, so `zoo list` "
                            "cannot read it without importing the model"
                        ) from None
        registered = any(_is_register(d) for d in node.decorator_list)
        info = _Class(module, [_base_name(b) for b in node.bases], attrs, None, registered)
        info.doc = ast.get_docstring(node)
        found.append((node.name, info))
    return found


def _files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def scan_models() -> list[ModelEntry]:
    """Every ``@register`` class of :mod:`zoo.models`, read from source, sorted by name."""
    package = importlib.import_module(MODELS_PACKAGE)  # a docstring only: cheap
    classes: list[tuple[str, _Class]] = []
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("_"):
            continue
        root = Path(module.module_finder.path) / module.name
        path = root if module.ispkg else root.with_suffix(".py")
        for file in _files(path):
            classes.extend(_classes(file, module.name))
    by_name: dict[str, list[_Class]] = {}
    for class_name, info in classes:
        by_name.setdefault(class_name, []).append(info)

    def lookup(info: _Class, attr: str, default: object) -> object:
        seen = [info]
        while seen:
            current = seen.pop(0)
            if attr in current.attrs:
                return current.attrs[attr]
            for base in current.bases:
                candidates = by_name.get(base, [])
                same = [c for c in candidates if c.module == current.module]
                seen.extend(same or candidates[:1])
        return default

    entries = {}
    for _, info in classes:
        if info.registered:
            name = str(lookup(info, "name", ""))
            paper = lookup(info, "paper", None)
            summary = summary_line(str(lookup(info, "summary", "")), info.doc)
            entries[name] = ModelEntry(name, paper if isinstance(paper, int) else None, summary)
    return [entries[name] for name in sorted(entries)]


def model_entries() -> list[ModelEntry]:
    """The registered models: from the registry when this process has already loaded it,
    else :func:`scan_models` (no model module imported)."""
    registry = sys.modules.get("zoo.registry")
    if registry is None or not registry._discovered:
        return scan_models()
    entries = []
    for name in registry.list_models():
        cls = registry.get(name)
        entries.append(ModelEntry(name, cls.paper, summary_line(cls.summary, cls.__doc__)))
    return entries
