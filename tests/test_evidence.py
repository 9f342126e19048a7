"""`zoo reproduce` and `zoo readme`: results files over seeds, refusals before any work, no
good file lost to a failed run, and a README that agrees with results/."""

import json
from pathlib import Path

import numpy as np
import pytest

import zoo
from tests.cli_helpers import error_line
from zoo.cli.main import main
from zoo.evidence import Figure, Recipe, find_recipe, recipes
from zoo.evidence import reference as reference_part
from zoo.evidence.readme import (
    BEGIN,
    CHECKS_BEGIN,
    CHECKS_END,
    CHOICE_BEGIN,
    CHOICE_END,
    END,
    GUIDES_BEGIN,
    PERF_BEGIN,
    PERF_END,
    SBC_BEGIN,
    SBC_END,
    render_guide_choice,
    render_guide_table,
    render_sbc,
    render_table,
    stale_rows,
    update_readme,
)
from zoo.evidence.results import summarise

REPO = Path(__file__).resolve().parents[1]
CALLS = []
REF_CALLS = []
#: the seed at which the stand-in recipe breaks (not a setting: a rerun's settings are equal)
BREAK_AT: dict[str, int] = {}


def _fake(seed, ctx):
    CALLS.append(seed)
    if ctx.settings["fail"] or BREAK_AT.get("seed") == seed:
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
    # the reference part (NUTS) is tested on its own below; here it only records the call
    monkeypatch.setattr(reference_part, "reference", lambda *a, **k: REF_CALLS.append(a) or ())
    CALLS.clear()
    REF_CALLS.clear()
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


@pytest.fixture
def clean_commit(monkeypatch):
    """Runs that record a commit of a clean tree, whatever the checkout's state."""
    from zoo.evidence import results as results_module

    origin = {**results_module.provenance(), "commit": "a" * 40, "uncommitted_changes": False}
    monkeypatch.setattr(results_module, "provenance", lambda: dict(origin))
    return origin


def test_an_interrupted_run_keeps_its_finished_seeds(
    tmp_path, fake, capsys, clean_commit, monkeypatch
):
    monkeypatch.setitem(BREAK_AT, "seed", 2)  # seeds 0 and 1 finish, seed 2 breaks
    with pytest.raises(RuntimeError, match="broke"):
        main(["reproduce", "eight_schools", "--out", str(tmp_path)])
    assert CALLS == [0, 1, 2] and not (tmp_path / "eight_schools.json").exists()
    BREAK_AT.clear()
    CALLS.clear()
    assert main(["reproduce", "eight_schools", "--out", str(tmp_path)]) == 0
    assert CALLS == [2]  # only the seed that had not finished
    assert "seed 1 kept from the interrupted run" in capsys.readouterr().err
    results = json.loads((tmp_path / "eight_schools.json").read_text())
    assert results["figures"]["value"]["values"] == [100.0, 101.0, 102.0]
    assert sorted(p.name for p in (tmp_path / "eight_schools").iterdir()) == ["draws.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left over


@pytest.mark.parametrize("change", ["settings", "commit", "dirty tree"])
def test_a_changed_run_keeps_nothing(tmp_path, fake, clean_commit, change, monkeypatch):
    monkeypatch.setitem(BREAK_AT, "seed", 2)
    with pytest.raises(RuntimeError):
        main(["reproduce", "eight_schools", "--out", str(tmp_path)])
    BREAK_AT.clear()
    if change == "settings":
        fake.settings["size"] = 7
    elif change == "commit":
        clean_commit["commit"] = "b" * 40
    else:
        clean_commit["uncommitted_changes"] = True
    CALLS.clear()
    assert main(["reproduce", "eight_schools", "--out", str(tmp_path)]) == 0
    assert CALLS == [0, 1, 2]


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
    readme.write_text(
        f"# title\n\n{BEGIN}\n{END}\n\n{CHECKS_BEGIN}\n{CHECKS_END}\n\n{SBC_BEGIN}\n{SBC_END}\n\n"
        f"{CHOICE_BEGIN}\n{CHOICE_END}\n\n{PERF_BEGIN}\n{PERF_END}\n\ntail\n"
    )
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
    assert main(["readme", "--readme", str(tmp_path / "missing.md")]) == 2
    assert "does not exist" in error_line(capsys)


def test_the_sbc_block_reads_verdict_and_power_from_the_results(tmp_path):
    powered = json.loads((REPO / "results" / "eight_schools.json").read_text())
    (tmp_path / "eight_schools.json").write_text(json.dumps(powered))
    weak = json.loads(json.dumps(powered))  # a failing, underpowered run under another name
    weak["figures"]["sbc/passed"]["mean"] = 0.0
    weak["figures"]["sbc/power/too_wide"]["mean"] = 0.5
    (tmp_path / "niw_meta.json").write_text(json.dumps(weak))
    (tmp_path / "lzn.json").write_text((REPO / "results" / "lzn.json").read_text())  # no SBC
    rows = {line.split("`")[1]: line for line in render_sbc(tmp_path).splitlines()[4:-2]}
    assert sorted(rows) == ["eight_schools", "niw_meta"]
    assert "| passes (smallest p" in rows["eight_schools"]
    assert "| yes | yes |" in rows["eight_schools"]
    assert "| **fails** (smallest p" in rows["niw_meta"]
    assert "/ 0.50 /" in rows["niw_meta"] and "**no**: underpowered" in rows["niw_meta"]


def test_the_guide_choice_block_names_each_nuts_models_guide_from_its_reference(tmp_path):
    from zoo.evidence.reference import format_khat

    folder = tmp_path / "reference"
    folder.mkdir()
    (folder / "eight_schools.json").write_text(
        (REPO / "results" / "reference" / "eight_schools.json").read_text()
    )
    quick = json.loads((folder / "eight_schools.json").read_text()) | {"quick": True}
    (folder / "pac_invariance.json").write_text(json.dumps(quick))
    block = render_guide_choice(tmp_path)
    rows = {line.split("`")[1]: line for line in block.splitlines() if line.startswith("| `")}
    assert sorted(rows) == sorted(n for n in zoo.list_models() if zoo.get(n).supports_nuts)
    results = json.loads((folder / "eight_schools.json").read_text())
    note, kind = results["recommendation"]["note"], results["recommendation"]["kind"]
    khat = format_khat(results["grades"][kind]["khat"])
    assert f"| {note} | `{kind}` k̂ {khat}, mean err " in rows["eight_schools"]
    assert "| [results/reference/eight_schools.md]" in rows["eight_schools"]
    assert "quick run only: not evidence" in rows["pac_invariance"]
    assert "not yet made" in rows["latent_label_shift"]


def test_the_readme_agrees_with_results():
    stale = stale_rows(REPO / "README.md", REPO / "results")
    assert not stale, "README model table is stale; run `zoo readme`:\n" + "\n".join(stale)


def test_the_performance_block_copies_the_pythae_section(tmp_path):
    from zoo.evidence.readme import render_performance

    (tmp_path / "results").mkdir()
    block = render_performance(tmp_path / "results")
    assert "not measured yet" in block
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.md").write_text(
        "# b\n\n## vae_digits SVI step\n\nx\n\n## vae_digits against pythae: held-out\n\n"
        "notes\n\n| trainer |\n|---|\n| zoo |\n\n## other\n\ny\n"
    )
    block = render_performance(tmp_path / "results")
    assert "### vae_digits against pythae: held-out" in block and "| zoo |" in block
    assert "## other" not in block and "SVI step" not in block
    assert "Time to result: not measured yet" in block
    # the time-to-result section: its prose in the README, its per-model table left out
    with (tmp_path / "benchmarks" / "results.md").open("a") as results:
        results.write("\n## Time to result: per model\n\nhow\n\nover: `m`\n\n| model |\n")
    block = render_performance(tmp_path / "results")
    assert "### Time to result: per model\n\nhow\n\nover: `m`" in block
    assert "| model |" not in block


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_model_reproduces_at_quick_size(name, tmp_path, capsys):
    assert find_recipe(name) is not None, f"{name} has no recipe in zoo/experiments/"
    assert main(["reproduce", name, "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / f"{name}.json").read_text())
    for figure in results["headline"]:
        assert figure["key"] in results["figures"], figure
    assert render_table(tmp_path)  # the row renders


# ----- the reference part: certified NUTS draws and guides graded against them --------------


def _chains(offsets, draws=1000, seed=0):
    """Independent normal draws, one chain per offset: (chain, draw, 2)."""
    rng = np.random.default_rng(seed)
    return {"theta": rng.normal(size=(len(offsets), draws, 2)) + np.array(offsets)[:, None, None]}


def test_certification_passes_mixed_chains_and_fails_disagreeing_ones():
    from inference.reference import certify

    good = certify(_chains([0, 0, 0, 0]), divergences=0)
    assert good["certified"] and good["failures"] == [], good
    assert good["rhat_max"] < 1.01 and good["ess_bulk_min"] > 2000
    # one chain stuck half an sd away: R-hat reads it and the reference is refused
    bad = certify(_chains([0, 0, 0, 0.5]), divergences=0)
    assert not bad["certified"] and bad["rhat_max"] > 1.01
    assert any("R-hat" in reason for reason in bad["failures"]), bad
    assert not certify(_chains([0, 0, 0, 0]), divergences=3)["certified"]
    too_few = certify(_chains([0, 0], draws=300), divergences=0)
    assert not too_few["certified"] and len(too_few["failures"]) == 2  # chains and ESS


def test_grades_are_in_reference_sds():
    from inference.reference import grade

    reference = _chains([0, 0, 0, 0], draws=2000)
    shifted = {"theta": reference["theta"] + 0.5}
    assert grade(reference, shifted)["mean_error_max"] == pytest.approx(0.5, abs=0.01)
    assert grade(reference, shifted)["sd_ratio_worst_deviation"] < 0.01
    wide = {"theta": 2.0 * reference["theta"]}
    assert grade(reference, wide)["sd_ratio_worst_deviation"] == pytest.approx(1.0, abs=0.01)
    point = {"theta": np.zeros((1, 10, 2))}
    assert grade(reference, point)["sd_ratio_worst_deviation"] == pytest.approx(1.0)


def test_reference_part_at_quick_size(tmp_path, capsys):
    from inference.reference import load_draws

    argv = ["reproduce", "eight_schools", "--only", "reference", "--quick", "--seeds", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    folder = tmp_path / "reference"
    results = json.loads((folder / "eight_schools.json").read_text())
    assert results["quick"] and not results["certificate"]["certified"]  # 2 short chains
    assert "2 chains < 4" in results["certificate"]["failures"]
    assert set(results["grades"]) == {"normal", "lowrank", "mvn", "flow"}
    assert set(results["skipped_kinds"]) == {"default", "delta"}
    for grades in results["grades"].values():
        assert grades["mean_error_max"]["n"] == 1
    draws = load_draws(folder / "eight_schools.npz")
    assert draws["mu"].shape[0] == 2 and draws["eta"].shape[-1] == 8
    assert "NOT certified" in (folder / "eight_schools.md").read_text()
    assert not (tmp_path / "eight_schools.json").exists()  # the headline part did not run
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_reference_refusals_come_before_any_work(tmp_path, fake, capsys):
    no_nuts = next(name for name in zoo.list_models() if not zoo.get(name).supports_nuts)
    argv = ["reproduce", no_nuts, "--only", "reference", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "not small enough for NUTS" in error_line(capsys)
    argv = ["reproduce", "eight_schools", "--only", "reference", "--seeds", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "a guide's grade is a mean over at least 3 seeds" in error_line(capsys)
    # both parts: the headline runs, then the reference part
    assert main(["reproduce", "eight_schools", "--out", str(tmp_path)]) == 0
    assert CALLS == [0, 1, 2] and len(REF_CALLS) == 1
    assert main(["reproduce", "eight_schools", "--only", "headline", "--out", str(tmp_path)]) == 0
    assert len(REF_CALLS) == 1


def test_a_model_without_a_reference_says_why(tmp_path, capsys, monkeypatch):
    from zoo.evidence.reference import NO_REFERENCE, has_reference

    name = "latent_label_shift"
    assert has_reference(name)
    monkeypatch.setitem(NO_REFERENCE, name, "no design found that NUTS certifies (measured)")
    assert zoo.get(name).supports_nuts and not has_reference(name)
    argv = ["reproduce", name, "--only", "reference", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "has no reference posterior: no design found that NUTS certifies" in error_line(capsys)
    assert not list(tmp_path.iterdir())
    row = next(line for line in render_guide_table(tmp_path).splitlines() if f"`{name}`" in line)
    assert f"not made: {NO_REFERENCE[name][:40]}" in row


def test_a_failed_reference_run_keeps_the_older_files(tmp_path, monkeypatch):
    from zoo.evidence import reference as part

    folder = tmp_path / "reference"
    folder.mkdir()
    older = {f"eight_schools.{ext}": f"older {ext}" for ext in ("json", "md", "npz")}
    for name, text in older.items():
        (folder / name).write_text(text)

    def broken(*args, **kwargs):
        raise RuntimeError("NUTS broke")

    monkeypatch.setattr(part, "_reference_draws", broken)
    with pytest.raises(RuntimeError, match="NUTS broke"):
        part.reference("eight_schools", quick=True, seeds=1, out=tmp_path)
    assert {p.name: p.read_text() for p in folder.iterdir()} == older


def _entry(mean: float) -> dict:
    return {"mean": mean, "sd": 0.01, "values": [mean] * 3, "n": 3}


def _reference_results(certified: bool, normal_error: float) -> dict:
    results = {
        "format": 1,
        "model": "eight_schools",
        "command": "zoo reproduce eight_schools --only reference --seeds 3",
        "quick": False,
        "certificate": {
            "chains": 4,
            "draws_per_chain": 2000,
            "rhat_max": 1.002 if certified else 1.2,
            "ess_bulk_min": 3000.0,
            "divergences": 0,
            "certified": certified,
            "failures": [] if certified else ["worst R-hat 1.200 not < 1.01"],
        },
        "grades": {
            kind: {
                "khat": _entry(0.4),
                "mean_error_max": _entry(error),
                "mean_error_median": _entry(error / 2),
                "sd_ratio_worst_deviation": _entry(0.1),
            }
            for kind, error in (("normal", normal_error), ("mvn", 0.05))
        },
    }
    return results


def test_recommendation_is_the_cheapest_guide_that_meets_the_bar():
    from zoo.evidence.reference import recommend

    assert recommend(_reference_results(True, 0.1))["kind"] == "normal"
    assert recommend(_reference_results(True, 0.5))["kind"] == "mvn"
    provisional = recommend(_reference_results(False, 0.5))
    assert provisional["kind"] == "mvn" and "not certified" in provisional["note"]
    none_good = _reference_results(True, 0.5)
    none_good["grades"]["mvn"]["khat"]["mean"] = 0.9
    assert not recommend(none_good)["good"] and "prefer NUTS" in recommend(none_good)["note"]


def test_the_guide_table(tmp_path):
    from zoo.evidence.reference import recommend

    results = _reference_results(False, 0.5)
    results["recommendation"] = recommend(results)
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "eight_schools.json").write_text(json.dumps(results))
    table = render_guide_table(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| `eight_schools`"))
    assert "**no**: worst R-hat 1.200" in row and "closest" not in row and "`mvn`" in row
    assert "`normal` k̂ 0.40 ± 0.01, mean err 0.50 ± 0.01" in row
    # the table is a page of the documentation site, with its links beside that page
    from zoo.site.pages import _guide_table

    page = "\n".join(_guide_table(tmp_path))
    assert "(reference/eight_schools.md)" in page and GUIDES_BEGIN not in page


def test_chains_in_other_labellings_are_relabelled_before_certifying():
    from inference.reference import certify
    from zoo.evidence.reference import DESIGNS, align_chains

    rng = np.random.default_rng(0)
    phi = rng.dirichlet(np.ones(12), size=5)  # 5 classes' code distributions
    pi = rng.dirichlet(np.ones(5), size=8)
    draws = {
        "phi": phi + 0.001 * rng.standard_normal((4, 2000, 5, 12)),
        "pi": pi + 0.001 * rng.standard_normal((4, 2000, 8, 5)),
    }
    swapped = [1, 0, 3, 2, 4]  # chain 3 settled in another labelling of the classes
    draws["phi"][3], draws["pi"][3] = draws["phi"][3][:, swapped], draws["pi"][3][..., swapped]
    assert not certify(draws, 0)["certified"]
    aligned = align_chains(draws, DESIGNS["latent_label_shift"].align)
    assert certify(aligned, 0)["certified"]
    np.testing.assert_array_equal(aligned["phi"][:3], draws["phi"][:3])


#: the grades of a guide kind that meets the bar, for runs whose grading is faked
GOOD_GRADE = {"khat": 0.3, "mean_error_max": 0.1, "mean_error_median": 0.05,
              "sd_ratio_worst_deviation": 0.1}  # fmt: skip


def _fake_nuts(monkeypatch, draws, seen=None):
    """The reference part with its NUTS run replaced: ``draws`` as the chains' draws;
    ``seen(model)`` is called with the model NUTS would have sampled."""
    from zoo.evidence import reference as part

    def reference_draws(model, data, settings):
        if seen is not None:
            seen(model)
        return draws, 0, {}, False

    monkeypatch.setattr(part, "_reference_draws", reference_draws)


def test_a_guide_kind_that_diverges_is_recorded_not_fatal(tmp_path, monkeypatch):
    from inference.svi import TrainingDiverged
    from zoo.evidence import reference as part

    _fake_nuts(monkeypatch, {"mu": _chains([0, 0, 0, 0])["theta"][..., 0]})

    def grade_kind(model, data, kind, *args):
        if kind == "flow":
            raise TrainingDiverged("loss became nan at step 2")
        return dict(GOOD_GRADE)

    monkeypatch.setattr(part, "_grade_kind", grade_kind)
    part.reference("eight_schools", quick=True, seeds=1, out=tmp_path)
    results = json.loads((tmp_path / "reference" / "eight_schools.json").read_text())
    assert set(results["grades"]) == {"normal", "lowrank", "mvn"}
    assert "SVI diverged" in results["skipped_kinds"]["flow"]
    assert "again at lr 0.003" in results["skipped_kinds"]["flow"]  # eight_schools' lr 0.03
    assert results["certificate"]["certified"] and results["recommendation"]["kind"] == "normal"


def test_a_guide_kind_that_diverges_once_is_graded_at_the_lower_lr_and_says_so(
    tmp_path, monkeypatch
):
    from inference.svi import TrainingDiverged
    from zoo.evidence import reference as part
    from zoo.evidence.readme import render_guide_table

    _fake_nuts(monkeypatch, {"mu": _chains([0, 0, 0, 0])["theta"][..., 0]})
    lrs = []

    def grade_kind(model, data, kind, seed, settings, *args):
        lrs.append((kind, settings["svi_lr"]))
        if kind == "flow" and settings["svi_lr"] > 0.01:
            raise TrainingDiverged("loss became nan at step 2")
        return dict(GOOD_GRADE)

    monkeypatch.setattr(part, "_grade_kind", grade_kind)
    part.reference("eight_schools", quick=True, seeds=1, out=tmp_path)
    results = json.loads((tmp_path / "reference" / "eight_schools.json").read_text())
    assert set(results["grades"]) == {"normal", "lowrank", "mvn", "flow"}
    assert "flow" not in results["skipped_kinds"]
    assert results["retried_kinds"]["flow"].endswith("graded at lr 0.003")
    assert ("normal", 0.03) in lrs and ("normal", 0.003) not in lrs  # only the diverged kind
    md = (tmp_path / "reference" / "eight_schools.md").read_text()
    assert "Retried: `flow`: SVI diverged at lr 0.03" in md
    results["quick"] = False  # the table shows quick runs as "not evidence"
    (tmp_path / "reference" / "eight_schools.json").write_text(json.dumps(results))
    assert "`flow` (retried at a lower lr) k̂" in render_guide_table(tmp_path)


def test_a_designs_prior_reaches_the_sampled_and_graded_model_and_its_files(tmp_path, monkeypatch):
    from zoo.evidence import reference as part
    from zoo.evidence.readme import render_guide_table

    seen = []
    rng = np.random.default_rng(0)
    draws = {
        "phi": rng.dirichlet(np.ones(12), size=(2, 50, 5)),
        "pi": rng.dirichlet(np.ones(5), size=(2, 50, 8)),
    }

    def sampled(model):
        seen.append(model.prior("pi").concentration.tolist())

    def grade_kind(model, data, kind, *args):
        seen.append(model.prior("pi").concentration.tolist())
        return dict(GOOD_GRADE)

    _fake_nuts(monkeypatch, draws, sampled)
    monkeypatch.setattr(part, "_grade_kind", grade_kind)
    part.reference("latent_label_shift", quick=True, seeds=1, out=tmp_path)
    # the model's own prior is Dirichlet(alpha / K) = Dirichlet(0.1); the design's is flat
    assert seen and all(c == [1.0] * 5 for c in seen), seen
    folder = tmp_path / "reference"
    results = json.loads((folder / "latent_label_shift.json").read_text())
    flat = "Dirichlet(concentration=[1.0, 1.0, 1.0, 1.0, 1.0])"
    assert results["prior_overrides"] == {"pi": flat}
    assert f"prior pi ~ {flat}" in (folder / "latent_label_shift.md").read_text()
    results["quick"] = False  # the guide table shows quick runs as "not evidence"
    (folder / "latent_label_shift.json").write_text(json.dumps(results))
    row = next(r for r in render_guide_table(tmp_path).splitlines() if "`latent_label_shift`" in r)
    assert "its design's own prior for pi (see details)" in row


def test_a_khat_infinite_on_one_seed_is_not_averaged_away():
    from zoo.evidence.reference import format_khat, recommend

    results = _reference_results(certified=True, normal_error=0.05)
    # normal's k-hat is fine on two seeds and infinite (None) on the third
    results["grades"]["normal"]["khat"] = summarise([0.4, None, 0.5])
    assert results["grades"]["normal"]["khat"]["mean"] < 0.7  # summarise skips the None
    assert recommend(results)["kind"] == "mvn"
    assert format_khat(results["grades"]["normal"]["khat"]).endswith("(infinite on 1 of 3 seeds)")
    assert format_khat(_entry(0.4)) == "0.40 ± 0.01"
