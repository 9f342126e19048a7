"""``python -m zoo.site build|serve``: assemble the site's sources under ``build/site-src``
(hand-written pages from ``docs/``, generated pages, tutorials as stored) and build them with
MkDocs into ``site/``, strictly: a link to a page that does not exist fails the build."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from zoo.site.pages import (
    PACKAGES,
    gallery_page,
    model_api_page,
    model_page,
    package_api_page,
    results_index,
)
from zoo.site.sources import SiteError, model_sources

__all__ = ["assemble", "build", "main"]

ROOT = Path(__file__).resolve().parents[2]

#: the user guides (docs/guides/), in reading order
GUIDES = {
    "Swap a guide": "guides/swap-guide.md",
    "Swap a prior": "guides/swap-prior.md",
    "Read the diagnostics": "guides/diagnostics.md",
    "Command line": "guides/cli.md",
    "Scale out with Lightning": "guides/lightning.md",
    "Add a model": "guides/add-a-model.md",
}


def _config(models, families: list[str]) -> dict:
    return {
        "site_name": "latent-zoo",
        "site_description": "A Pyro model zoo for latent-variable models",
        "docs_dir": "src",
        "site_dir": "site",
        "use_directory_urls": True,
        "strict": True,
        "theme": {
            "name": "material",
            "font": False,  # no web fonts: the site works offline
            "features": [
                "navigation.tabs",
                "navigation.sections",
                "search.suggest",
                "content.code.copy",
            ],  # fmt: skip
        },
        "markdown_extensions": [
            "attr_list",
            "md_in_html",
            "tables",
            "admonition",
            {"toc": {"permalink": True}},
            "pymdownx.superfences",
        ],
        # MathJax 2 from the jupyter-server-mathjax package: formulas render offline
        "extra_javascript": ["assets/mathjax-config.js", "assets/mathjax/MathJax.js"],
        "extra_css": ["assets/zoo.css"],
        "plugins": [
            "search",
            {
                "mkdocs-jupyter": {
                    "execute": False,
                    "include_source": True,
                    "include_requirejs": False,
                }
            },  # fmt: skip
            {
                "mkdocstrings": {
                    "handlers": {
                        "python": {
                            "paths": [str(ROOT)],
                            "options": {
                                "docstring_style": "sphinx",
                                "show_source": False,
                                "show_root_heading": True,
                                "merge_init_into_class": True,
                                "show_if_no_docstring": False,
                                "filters": ["!^_"],
                            },
                        }
                    }
                }
            },  # fmt: skip
        ],
        "nav": [
            {"Home": "index.md"},
            {"Gallery": "gallery.md"},
            {"Tutorials": [{f: f"tutorials/{f}.ipynb"} for f in families]},
            {"Guides": [{title: path} for title, path in GUIDES.items()]},
            {"Models": [{m.name: f"models/{m.name}.md"} for m in models]},
            {
                "API": [{f"{p}": f"api/{p}.md"} for p in PACKAGES]
                + [{m.name: f"api/models/{m.name}.md"} for m in models]
            },  # fmt: skip
            {"Results": ["results/index.md", "performance.md", "papers.md"]},
        ],
    }


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def assemble(out: Path, root: Path = ROOT) -> Path:
    """Write the site's MkDocs project into ``out`` (emptied first); return its config."""
    models = model_sources(root)
    if out.exists():
        shutil.rmtree(out)
    src = out / "src"
    for path in (root / "docs").rglob("*.md"):
        _write(src / path.relative_to(root / "docs"), path.read_text())
    missing = [p for p in ["index.md", *GUIDES.values()] if not (src / p).exists()]
    if missing:
        raise SiteError(f"docs/ is missing the hand-written page(s) {missing}")
    _write(src / "gallery.md", gallery_page(models))
    _write(src / "results" / "index.md", results_index(models, root / "results"))
    for path in (root / "results" / "reference").glob("*.md"):
        _write(src / "results" / "reference" / path.name, path.read_text())
    for p in PACKAGES:
        _write(src / "api" / f"{p}.md", package_api_page(p))
    families: list[str] = []
    for m in models:
        _write(src / "models" / f"{m.name}.md", model_page(m))
        _write(src / "api" / "models" / f"{m.name}.md", model_api_page(m))
        results_md = root / "results" / f"{m.name}.md"
        _write(src / "results" / f"{m.name}.md",
               results_md.read_text() if results_md.exists() else f"# {m.name}\n")  # fmt: skip
        if m.image:
            _write(src / "gallery" / f"{m.name}.png", m.image)
        if m.family not in families:
            families.append(m.family)
            shutil.copyfile(m.tutorial, _mkparent(src / "tutorials" / m.tutorial.name))
    _copy_mathjax(src / "assets")
    bench = root / "benchmarks" / "results.md"
    _write(src / "performance.md", bench.read_text() if bench.exists() else "# Performance\n")
    import yaml  # MkDocs' own dependency (the docs extra)

    config = out / "mkdocs.yml"
    _write(config, yaml.safe_dump(_config(models, families), sort_keys=False))
    return config


#: MathJax 2's configuration: TeX between $...$ or $$...$$ (the notebooks' and docstrings'
#: notation), HTML-CSS output with the one web font the package ships (STIX-Web)
MATHJAX_CONFIG = """window.MathJax = {
  config: ["TeX-AMS-MML_HTMLorMML-full.js"],
  tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], processEscapes: true},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  messageStyle: "none",
  menuSettings: {zoom: "Click"}
};
"""


#: the generative stories are docstrings: keep their lines, wrap the long ones
STYLE = ".story pre > code { white-space: pre-wrap; }\n"


def _copy_mathjax(assets: Path) -> None:
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(static, assets / "mathjax")
    _write(assets / "mathjax-config.js", MATHJAX_CONFIG)
    _write(assets / "zoo.css", STYLE)


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def build(out: Path = ROOT / "build" / "site", site: Path = ROOT / "site") -> Path:
    """Assemble and build; return the folder of the built site."""
    config = assemble(out)
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(config),
           "-d", str(site.resolve())]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=out)
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.site", description=__doc__)
    parser.add_argument("command", choices=["build", "serve"])
    parser.add_argument("--site", default=str(ROOT / "site"), help="output folder")
    args = parser.parse_args(argv)
    try:
        site = build(site=Path(args.site))
    except SiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError:
        print("error: mkdocs build failed (see its messages above)", file=sys.stderr)
        return 1
    print(f"site built in {site}")
    if args.command == "serve":
        import http.server
        import socketserver
        from functools import partial

        handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
        with socketserver.TCPServer(("127.0.0.1", 8000), handler) as server:
            print("serving on http://127.0.0.1:8000 (Ctrl-C stops)")
            server.serve_forever()
    return 0
