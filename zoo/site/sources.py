"""What the site is made of, read from the repository: each model's tutorial, results file
and gallery picture. A model that lacks its tutorial or its results stops the build with one
line naming the model and what is missing."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from zoo.evidence.results import format_figure, read_results
from zoo.papers import PAPERS

__all__ = ["SiteError", "ModelSources", "model_sources", "first_image"]


class SiteError(RuntimeError):
    """The site cannot be built from this repository: the message says what is missing."""


@dataclass(frozen=True)
class ModelSources:
    """One registered model as the site shows it."""

    name: str
    family: str
    class_path: str  # dotted path of the model class, for the API page
    paper: int | None
    paper_title: str
    summary: str
    story: str
    tutorial: Path
    results: dict
    image: bytes | None  # PNG of the card: the first figure its tutorial stores

    def headline(self) -> list[tuple[str, str]]:
        """``(label, mean ± sd)`` of each headline figure; empty for a model not yet
        reproduced (its results file says so)."""
        if self.results.get("quick"):
            return []
        out = []
        for figure in self.results.get("headline", []):
            entry = self.results["figures"].get(figure["key"])
            if entry is not None:
                out.append((figure["label"], format_figure(entry, figure["digits"])))
        return out


def first_image(notebook: Path) -> bytes | None:
    """The first PNG among a notebook's stored outputs, or ``None``."""
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get("image/png")
            if data:
                return base64.b64decode("".join(data) if isinstance(data, list) else data)
    return None


def model_sources(root: Path) -> list[ModelSources]:
    """Every registered model's sources under ``root`` (the checkout)."""
    import zoo
    from zoo.registry import family

    titles = {paper.number: paper.title for paper in PAPERS}
    out = []
    for name in zoo.list_models():
        cls = zoo.get(name)
        fam = family(name)
        tutorial = root / "tutorials" / f"{fam}.ipynb"
        if not tutorial.exists():
            raise SiteError(f"model '{name}' has no tutorial: expected tutorials/{fam}.ipynb")
        results_path = root / "results" / f"{name}.json"
        if not results_path.exists():
            raise SiteError(
                f"model '{name}' has no results file: expected results/{name}.json "
                f"(run `zoo reproduce {name}`)"
            )
        out.append(
            ModelSources(
                name=name,
                family=fam,
                class_path=f"{cls.__module__}.{cls.__qualname__}",
                paper=cls.paper,
                paper_title=titles.get(cls.paper, "") if cls.paper is not None else "",
                summary=(cls.summary or (cls.__doc__ or "").strip().split("\n")[0]).strip(),
                story=_story(cls),
                tutorial=tutorial,
                results=read_results(results_path),
                image=first_image(tutorial),
            )
        )
    return out


def _story(cls: type) -> str:
    """The generative story: the model's module docstring (where the zoo writes the math)
    followed by the class docstring, when they differ."""
    import inspect
    import sys

    module_doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    class_doc = inspect.getdoc(cls) or ""
    return "\n\n".join(d for d in dict.fromkeys((module_doc, class_doc)) if d)
