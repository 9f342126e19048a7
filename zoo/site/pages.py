"""The generated pages of the site, as Markdown: the gallery, one page and one API page per
model, the API reference of the three packages, and the results index."""

from __future__ import annotations

import dataclasses
import pkgutil
from collections.abc import Iterable
from importlib import import_module

from zoo.site.sources import ModelSources

__all__ = [
    "gallery_page",
    "model_page",
    "model_api_page",
    "package_api_page",
    "results_index",
    "PACKAGES",
]

#: the packages the API reference covers, top to bottom of the import layers
PACKAGES = ("zoo", "guides", "inference")


def _escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _paper_line(m: ModelSources) -> str:
    if m.paper is None:
        return "a reference model (no paper)"
    return f"paper {m.paper}: *{m.paper_title}*"


def gallery_page(models: Iterable[ModelSources]) -> str:
    """One card per model: its picture, paper, headline figures and links."""
    lines = [
        "# Model gallery",
        "",
        "Every model of the zoo, with one figure from its tutorial and the headline figures of "
        "its `zoo reproduce` run (mean ± sd over seeds). Open a card for the generative story, "
        "the tutorial and the API.",
        "",
        '<div class="grid cards" markdown>',
        "",
    ]
    for m in models:
        figures = m.headline()[:3]
        shown = "; ".join(f"{label} {value}" for label, value in figures) or "not yet reproduced"
        image = f"![{m.name}](gallery/{m.name}.png){{ loading=lazy }}" if m.image else ""
        lines += [
            f"-   **[{m.name}](models/{m.name}.md)**",
            "",
            f"    {image}" if image else "    *(its tutorial stores no figure)*",
            "",
            f"    {_paper_line(m)}",
            "",
            f"    {_escape(m.summary)}",
            "",
            f"    <small>{_escape(shown)}</small>",
            "",
            f"    [Tutorial](tutorials/{m.family}.ipynb) · [API](api/models/{m.name}.md) · "
            f"[Results](results/{m.name}.md)",
            "",
        ]
    lines.append("</div>")
    return "\n".join(lines) + "\n"


def model_page(m: ModelSources) -> str:
    """The model's own page: paper, generative story, headline figures, links."""
    heading = f"Paper {m.paper}: {m.paper_title}" if m.paper is not None else "Reference model"
    lines = [f"# {m.name}", "", f"## {heading}", "", _escape(m.summary), ""]
    if m.image:
        lines += [f"![{m.name}](../gallery/{m.name}.png)", ""]
    lines += ["## Generative story", "", '<div class="story" markdown>', "", "```text", m.story,
              "```", "", "</div>", "", "## Headline figures", ""]  # fmt: skip
    figures = m.headline()
    if figures:
        seeds = len(m.results.get("seeds", []))
        lines += [f"From `{m.results['command']}` ({seeds} seeds): mean ± sd.", ""]
        lines += ["| figure | mean ± sd |", "|---|---|"]
        lines += [f"| {_escape(label)} | {value} |" for label, value in figures]
    else:
        lines.append(f"Not yet reproduced: run `zoo reproduce {m.name}`.")
    lines += [
        "",
        f"What is measured: {_escape(m.results.get('claim', ''))}",
        "",
        "## Use it",
        "",
        "```bash",
        f"zoo info {m.name}",
        f"zoo train {m.name} --out runs/{m.name}",
        f"zoo diagnose runs/{m.name}",
        "```",
        "",
        f"[Tutorial](../tutorials/{m.family}.ipynb) · [API](../api/models/{m.name}.md) · "
        f"[All results of the run](../results/{m.name}.md)",
        "",
    ]
    return "\n".join(lines)


def model_api_page(m: ModelSources) -> str:
    """The class's docstring and members (mkdocstrings) after its config fields, priors and
    data fields, read from a default instance."""
    import zoo
    from zoo.cli.options import prior_display
    from zoo.priors import support_name

    cls = zoo.get(m.name)
    model = cls()
    lines = [f"# {m.name}: `{cls.__qualname__}`", "", f"[Model page](../../models/{m.name}.md)", ""]
    lines += ["## Config fields", "", "| field | default |", "|---|---|"]
    for field in dataclasses.fields(cls.Config):
        lines.append(f"| `{field.name}` | `{_escape(repr(getattr(model.config, field.name)))}` |")
    lines += ["", "## Priors", ""]
    priors = model.default_priors()
    if priors:
        lines += ["| site | default prior | support |", "|---|---|---|"]
        for site, prior in priors.items():
            lines.append(
                f"| `{site}` | `{_escape(prior_display(prior))}` | {support_name(prior.support)} |"
            )
    else:
        lines.append("No swappable priors.")
    lines += [
        "",
        "## Data fields",
        "",
        "| field | shape | dtype | support | what |",
        "|---|---|---|---|---|",
    ]
    for key, field in model.data_spec().items():
        shape = ", ".join(["N", *map(str, field.shape)])
        lines.append(
            f"| `{key}` | ({shape}) | {field.dtype} | `{_escape(field.support)}` | "
            f"{_escape(field.doc)} |"
        )
    lines += [
        "",
        "## Reference",
        "",
        f"::: {m.class_path}",
        "    options:",
        "      heading_level: 3",
        "",
    ]
    return "\n".join(lines)


def _modules(package: str) -> list[str]:
    pkg = import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_") or info.name.startswith(("zoo.models", "zoo.site", "zoo.cli")):
            continue
        names.append(info.name)
    return names


def package_api_page(package: str) -> str:
    """Every public module of ``package`` (the models have their own pages)."""
    lines = [f"# `{package}`", ""]
    for module in _modules(package):
        lines += [
            f"::: {module}",
            "    options:",
            "      heading_level: 2",
            "      members_order: source",
            "",
        ]
    return "\n".join(lines)


def results_index(models: Iterable[ModelSources], results_dir) -> str:
    """One row per model: its headline figures, linked to the whole results file."""
    lines = [
        "# Results",
        "",
        "Every figure is a mean ± sd over seeds from `zoo reproduce NAME`, which trains the "
        "model and every baseline on the same data, budget and tuning. Each page holds the "
        "whole results file: every figure per seed, its 95% interval, the settings, the commit "
        "and the machine.",
        "",
        "| model | headline (mean ± sd) | seeds |",
        "|---|---|---|",
    ]
    for m in models:
        figures = "; ".join(f"{label} {value}" for label, value in m.headline())
        seeds = len(m.results.get("seeds", []))
        lines.append(
            f"| [{m.name}]({m.name}.md) | {_escape(figures) or 'not yet reproduced'} | {seeds} |"
        )
    lines += ["", "## The papers' claims, checked", "", *_checks_table(results_dir)]
    lines += ["", "## SBC runs of `zoo reproduce`", "", *_sbc_table(results_dir)]
    lines += ["", "## Which guide for which model", "", *_guide_table(results_dir)]
    return "\n".join(lines) + "\n"


def _page_block(block: str) -> list[str]:
    """A generated README block as lines of the results page: its two marker lines dropped,
    its links into ``results/`` made relative to the page (which lives there)."""
    return block.replace("](results/", "](").splitlines()[1:-1]


def _checks_table(results_dir) -> list[str]:
    """Each recipe's paper checks with their verdicts (:mod:`zoo.evidence.checks`)."""
    from zoo.evidence.readme import render_checks

    return _page_block(render_checks(results_dir))


def _sbc_table(results_dir) -> list[str]:
    """Each recipe's SBC run with its verdict and power, linked to the model's page."""
    from zoo.evidence.readme import render_sbc

    return _page_block(render_sbc(results_dir))


def _guide_table(results_dir) -> list[str]:
    """The reference-posterior grades of each guide kind (:mod:`zoo.evidence.reference`),
    linked to the reference pages beside this one."""
    from zoo.evidence.readme import render_guide_table

    return _page_block(render_guide_table(results_dir))
