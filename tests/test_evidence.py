"""`zoo reproduce` and `zoo readme`: results files over seeds, refusals before any work, no
good file lost to a failed run, and a README that agrees with results/."""

import json
from pathlib import Path

import pytest

import zoo
from tests.cli_helpers import error_line
from zoo.cli.main import main
from zoo.evidence import Figure, Recipe, find_recipe, recipes
from zoo.evidence.readme import BEGIN, END, render_table, stale_rows, update_readme
from zoo.evidence.results import summarise

REPO = Path(__file__).resolve().parents[1]
CALLS = []


def _fake(seed, ctx):
    CALLS.append(seed)
    if ctx.settings["fail"]:
        raise RuntimeError("the experiment broke")
    (ctx.artifacts / "draws.txt").write_text(str(seed))
    return {"value": seed + ctx.settings["size"], "other": float("nan")}


@pytest.fixture
def fake(monkeypatch):
    """A stand-in recipe under a registered model's name (so nothing real trains)."""
    stand_in = Recipe(
        model="eight_schools",
        run=_fake,
        headline=(Figure("value", "a value", 2),),
        settings={"size": 100, "fail": False},
        quick={"size": 2},
        paper="none",
        data="none",
        claim="a stand-in experiment",
    )
    recipes.list_recipes()
    monkeypatch.setitem(recipes._RECIPES, "eight_schools", stand_in)
    CALLS.clear()
    return stand_in


def test_summarise_mean_sd_and_interval():
    entry = summarise([1.0, 2.0, 3.0, None])
    assert entry["mean"] == pytest.approx(2.0) and entry["sd"] == pytest.approx(1.0)
    assert entry["n"] == 3 and entry["values"][3] is None
    low, high = entry["ci95"]
    assert low == pytest.approx(2 - 4.303 / 3**0.5, abs=1e-3) and high > 2


def test_reproduce_writes_results_over_seeds(tmp_path, fake, capsys):
    assert main(["reproduce", "eight_schools", "--seeds", "3", "--out", str(tmp_path)]) == 0
    assert CALLS == [0, 1, 2]
    results = json.loads((tmp_path / "eight_schools.json").read_text())
    assert results["seeds"] == [0, 1, 2] and not results["quick"]
    assert results["figures"]["value"]["values"] == [100.0, 101.0, 102.0]
    assert results["figures"]["value"]["mean"] == pytest.approx(101.0)
    assert results["figures"]["other"]["mean"] is None  # NaN is recorded as missing
    assert results["settings"] == {"size": 100, "fail": False}
    assert results["command"] == "zoo reproduce eight_schools --seeds 3"
    assert len(results["commit"]) >= 7 and results["machine"]["cpus"] >= 1
    assert (tmp_path / "eight_schools" / "draws.txt").read_text() == "2"
    md = (tmp_path / "eight_schools.md").read_text()
    assert "| a value (`value`) | 101.00 ± 1.00 |" in md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown model 'nope'"),
        (["eight_schools", "--seeds", "0"], "--seeds must be a positive integer"),
        (["eight_schools", "--seeds", "2"], "at least 3 seeds"),
    ],
)
def test_reproduce_refuses_bad_requests_before_any_work(tmp_path, fake, capsys, args, message):
    assert main(["reproduce", *args, "--out", str(tmp_path)]) == 2
    assert message in error_line(capsys)
    assert CALLS == []


def test_reproduce_refuses_a_model_without_a_recipe(tmp_path, capsys, monkeypatch):
    recipes.list_recipes()
    monkeypatch.delitem(recipes._RECIPES, "eight_schools")
    assert main(["reproduce", "eight_schools", "--out", str(tmp_path)]) == 2
    assert "has no reproduce recipe" in error_line(capsys)


def test_reproduce_refuses_an_unwritable_folder(tmp_path, fake, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["reproduce", "eight_schools", "--out", str(blocker / "results")]) == 2
    assert "cannot write results to" in error_line(capsys)
    assert CALLS == []


def test_a_failed_run_keeps_the_older_results(tmp_path, fake, capsys):
    assert main(["reproduce", "eight_schools", "--out", str(tmp_path)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("eight_schools*") if p.is_file()}
    fake.settings["fail"] = True  # the stand-in's settings are a plain dict
    with pytest.raises(RuntimeError, match="broke"):
        main(["reproduce", "eight_schools", "--out", str(tmp_path)])
    after = {p.name: p.read_bytes() for p in tmp_path.glob("eight_schools*") if p.is_file()}
    assert after == before
    assert (tmp_path / "eight_schools" / "draws.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_quick_runs_go_to_their_own_folder_and_say_so(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "eight_schools", "--quick", "--seeds", "1"]) == 0
    results = json.loads((tmp_path / "results" / "quick" / "eight_schools.json").read_text())
    assert results["quick"] and results["settings"]["size"] == 2
    assert not (tmp_path / "results" / "eight_schools.json").exists()


def test_readme_generation_and_its_check(tmp_path, fake, capsys):
    results = tmp_path / "results"
    assert main(["reproduce", "eight_schools", "--out", str(results)]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\n{END}\n\ntail\n")
    assert stale_rows(readme, results)  # empty table: stale
    assert update_readme(readme, results) and not update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("# title") and text.endswith("tail\n")
    assert "a value 101.00 ± 1.00 (3 seeds)" in text
    assert stale_rows(readme, results) == []
    # a figure edited by hand no longer agrees with its results file
    readme.write_text(text.replace("101.00 ± 1.00", "99.00 ± 1.00"))
    assert main(["readme", "--check", "--readme", str(readme), "--results", str(results)]) == 1
    assert "eight_schools" in capsys.readouterr().out


def test_the_readme_agrees_with_results():
    stale = stale_rows(REPO / "README.md", REPO / "results")
    assert not stale, "README model table is stale; run `zoo readme`:\n" + "\n".join(stale)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_model_reproduces_at_quick_size(name, tmp_path, capsys):
    if find_recipe(name) is None:
        pytest.skip(f"{name}: no recipe yet")
    assert main(["reproduce", name, "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / f"{name}.json").read_text())
    for figure in results["headline"]:
        assert figure["key"] in results["figures"], figure
    assert render_table(tmp_path)  # the row renders
