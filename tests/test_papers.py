"""The paper list kept in the repository (issue 24): 37 papers numbered 1..37, every model's
paper among them, each paper's status read from the registry, printed by
``zoo list --papers`` and written to ``docs/papers.md``."""

import re
from pathlib import Path

import zoo
from zoo.catalog import scan_models
from zoo.cli import main
from zoo.papers import NOT_YET, PAPERS, papers_markdown

REPO = Path(__file__).resolve().parents[1]


def test_the_list_has_37_papers_numbered_1_to_37():
    assert [paper.number for paper in PAPERS] == list(range(1, 38))
    assert all(paper.title.strip() for paper in PAPERS)
    assert len({paper.title for paper in PAPERS}) == 37


def test_links_are_well_formed_and_only_where_an_id_is_known():
    for paper in PAPERS:
        if paper.arxiv:
            assert re.fullmatch(r"\d{4}\.\d{4,5}", paper.arxiv), paper
            assert paper.link == f"https://arxiv.org/abs/{paper.arxiv}"
        else:
            assert paper.link == ""
        if paper.code:
            assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", paper.code), paper


def test_every_registered_model_names_a_listed_paper():
    numbers = {paper.number for paper in PAPERS}
    for name in zoo.list_models():
        paper = zoo.get(name).paper
        assert paper is None or paper in numbers, (name, paper)


def test_zoo_list_papers_prints_each_paper_with_its_status(capsys):
    assert main(["list", "--papers"]) == 0
    out = capsys.readouterr().out
    for paper in PAPERS:
        assert f"{paper.number:2d}. {paper.title}" in out
    blocks = dict(re.findall(r"(?m)^\s*(\d+)\. .*\n((?:    .*\n)*)", out))
    assert "in the zoo: mlvgm_mi" in blocks["1"]
    assert "in the zoo: collapse_cvae, collapse_hvae" in blocks["17"]
    assert "in the zoo: pv_rnn" in blocks["3"]
    assert "paper: https://arxiv.org/abs/2306.09702" in blocks["7"]
    assert "code: https://github.com/minyoungkim21/niwmeta" in blocks["7"]
    implemented = {zoo.get(name).paper for name in zoo.list_models()} - {None}
    missing = [p.number for p in PAPERS if p.number not in implemented]
    if missing:
        assert NOT_YET in blocks[str(missing[0])]
    assert sum(NOT_YET in block for block in blocks.values()) == 37 - len(implemented)


def test_docs_papers_md_is_generated_from_the_list():
    """Regenerate with ``zoo list --papers --markdown > docs/papers.md``."""
    assert (REPO / "docs" / "papers.md").read_text() == papers_markdown(scan_models())


def test_the_readme_points_to_the_list_in_the_repository():
    readme = (REPO / "README.md").read_text()
    assert "../shared/papers.md" not in readme
    assert "docs/papers.md" in readme and "zoo list --papers" in readme
