"""Paper checks: a claim read on a results file as met, not met or level within noise."""

from pathlib import Path

import pytest

from zoo.evidence.checks import Check, evaluate_check
from zoo.evidence.recipes import find_recipe, list_recipes
from zoo.evidence.results import read_results, summarise


def _figures(**values):
    return {key.replace("__", "/"): summarise(v) for key, v in values.items()}


def test_a_paired_margin_clear_of_zero_is_met_and_its_mirror_is_not():
    figures = _figures(model__acc=[0.90, 0.91, 0.92], base__acc=[0.80, 0.82, 0.81])
    met = evaluate_check(Check("at least the baseline", "model/acc", ">=", "base/acc"), figures)
    assert met.verdict == "met" and met.margin == pytest.approx(0.1)
    assert met.interval[0] > 0
    lost = evaluate_check(Check("at most the baseline", "model/acc", "<=", "base/acc"), figures)
    assert lost.verdict == "not met" and lost.margin == pytest.approx(-0.1)


def test_seeds_that_disagree_leave_the_claim_level_within_noise():
    # the mean favours the model, but one seed of three goes the other way
    figures = _figures(model__acc=[0.90, 0.70, 0.95], base__acc=[0.80, 0.80, 0.80])
    check = Check("at least the baseline", "model/acc", ">=", "base/acc")
    assert evaluate_check(check, figures).verdict == "level within noise"


def test_a_bound_and_a_factor():
    figures = _figures(ratio=[0.70, 0.72, 0.71], mae=[0.5, 0.52, 0.51], base=[1.0, 1.0, 1.0])
    assert evaluate_check(Check("below 0.8", "ratio", "<=", 0.8), figures).verdict == "met"
    scaled = evaluate_check(Check("mae <= 0.4 x base", "mae", "<=", "base", 0.4), figures)
    assert scaled.verdict == "not met" and scaled.right.startswith("0.4 × ")


def test_a_check_names_what_it_cannot_read():
    with pytest.raises(ValueError, match="op must be one of"):
        Check("x", "a", ">", 1.0)
    with pytest.raises(KeyError, match="no figure 'missing/key'"):
        evaluate_check(Check("x", "missing/key", ">=", 1.0), _figures(a=[1.0, 2.0]))


def test_every_recipe_check_reads_its_results_file():
    """A check naming a figure its recipe does not produce fails here, not in `zoo readme`."""
    checked = 0
    for name in list_recipes():
        recipe = find_recipe(name)
        path = Path("results") / f"{name}.json"
        if recipe.checks and path.is_file():
            figures = read_results(path)["figures"]
            for check in recipe.checks:
                evaluate_check(check, figures)
                checked += 1
    assert checked >= 20  # the three flagships' claims at least
