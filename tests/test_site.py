"""The documentation site's sources (``zoo.site``), without MkDocs or a browser: every
registered model gets a gallery card, a page and an API page; a model without its tutorial
or results file stops the build with one line naming both. The built site itself is checked
in a browser by ``make docs-check`` (tests/browser/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import zoo
from zoo.site import sources
from zoo.site.build import assemble
from zoo.site.sources import SiteError

REPO = Path(__file__).resolve().parents[1]


def _checkout(tmp_path: Path) -> Path:
    """The parts of the repository the site reads, copied so a test may break them."""
    root = tmp_path / "repo"
    for part in ("docs", "tutorials", "results", "benchmarks"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("quick"))
    return root


@pytest.fixture(scope="module")
def assembled(tmp_path_factory) -> Path:
    root = _checkout(tmp_path_factory.mktemp("site"))
    missing = [n for n in zoo.list_models() if not (root / "results" / f"{n}.json").exists()]
    if missing:
        pytest.skip(f"models not yet reproduced: {missing} (test_evidence flags them)")
    # the site serves its own MathJax (the docs extra); `make docs-check` runs these tests
    pytest.importorskip("jupyter_server_mathjax", reason="the docs extra is not installed")
    out = root / "build"
    assemble(out, root)
    return out / "src"


def test_every_model_has_a_card_a_page_and_an_api_page(assembled):
    gallery = (assembled / "gallery.md").read_text()
    for name in zoo.list_models():
        assert f"**[{name}](models/{name}.md)**" in gallery, name
        assert (assembled / "models" / f"{name}.md").exists(), name
        api = (assembled / "api" / "models" / f"{name}.md").read_text()
        assert "## Config fields" in api and "## Data fields" in api, name


def test_model_pages_carry_the_paper_title_and_headline(assembled):
    page = (assembled / "models" / "eight_schools.md").read_text()
    assert "Headline figures" in page and " ± " in page


@pytest.mark.parametrize("missing", ["tutorial", "results"])
def test_a_model_without_its_tutorial_or_results_stops_the_build(tmp_path, missing):
    root = _checkout(tmp_path)
    if missing == "tutorial":
        (root / "tutorials" / "eight_schools.ipynb").unlink()
        expected = "model 'eight_schools' has no tutorial: expected tutorials/eight_schools.ipynb"
    else:
        (root / "results" / "eight_schools.json").unlink()
        expected = "model 'eight_schools' has no results file: expected results/eight_schools.json"
    with pytest.raises(SiteError) as error:
        sources.model_sources(root)
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)
