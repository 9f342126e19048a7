"""The benchmark suite runs (quick mode) and reports ratios; no timing is asserted."""

import json
import math

import pytest

from benchmarks import (
    elbo_choice,
    format_table,
    gp_prior,
    numpyro_compare,
    time_to_result,
    vae_step,
    vs_pythae,
)


def test_vae_step_benchmark_reports_a_ratio_per_variant():
    result = vae_step.run(quick=True)
    ratios = [row["ratio to hand"] for row in result["rows"]]
    assert len(ratios) == 4 and ratios[0] == 1.0
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    assert "| hand-written PyTorch |" in format_table(result)


def test_gp_benchmark_covers_each_size():
    result = gp_prior.run(quick=True)
    assert [row["n"] for row in result["rows"]] == [250, 500]
    assert all(row["Pyro/GPyTorch"] > 0 for row in result["rows"])


def test_numpyro_comparison_is_skipped_without_numpyro(monkeypatch):
    monkeypatch.setattr(numpyro_compare, "available", lambda: False)
    result = numpyro_compare.run(quick=True)
    assert "not installed" in result["notes"]


def test_pythae_comparison_is_skipped_without_pythae(monkeypatch):
    monkeypatch.setattr(vs_pythae, "available", lambda: False)
    assert "not installed" in vs_pythae.run(quick=True)["notes"]


def test_elbo_choice_compares_auto_with_the_sampled_kl_per_model(monkeypatch, tmp_path):
    monkeypatch.setattr(elbo_choice, "CACHE", tmp_path)
    rows = elbo_choice.run(quick=True)["rows"]
    assert [row["model"] for row in rows] == ["vae_digits", "eight_schools"]
    digits, schools = rows
    assert digits["auto picks"] == "jit_meanfield" and digits["sampled KL"] == "jit"
    assert digits["better per second"] in ("auto (one seed)", "sampled (one seed)")
    # an autoguide has no closed-form KL: nothing to compare
    assert schools["auto picks"] == "jit" and schools["better per second"] == "(no analytic KL)"
    # a finished model is kept: a second run reads it instead of training again
    assert (tmp_path / "2s-1seeds" / "vae_digits.json").is_file()
    monkeypatch.setattr(elbo_choice, "_train_for", None)
    assert elbo_choice.run(quick=True)["rows"] == rows


def test_elbo_choice_verdict_needs_the_interval_to_exclude_zero():
    from zoo.evidence.results import summarise

    assert elbo_choice._verdict(summarise([3.0, 4.0, 5.0])) == "auto"
    assert elbo_choice._verdict(summarise([-3.0, -4.0, -5.0])) == "sampled"
    assert elbo_choice._verdict(summarise([-3.0, 4.0, 1.0])) == "level within noise"


def test_time_to_result_names_the_slowest_stage_and_flags_slow_runs(monkeypatch):
    monkeypatch.setattr(time_to_result, "reproduce_seconds", lambda name: (1200.0, 3))
    stages = {"setup": 2.0, "training": 400.0, "report": 30.0, "total": 432.0}
    row = time_to_result._row("m", stages | {"cpu": 410.0, "load": 1.2})
    assert row["slowest stage"] == "training (400 s)"
    assert row["zoo train, wall / CPU s"] == "432 / 410 (over 5 min)"
    assert "over 15 min" in row["zoo reproduce, s"] and row["load"] == "1.2"
    assert row["per seed, s"] == "400"
    # wall time inflated by a loaded machine, CPU time under the target: not flagged
    loaded = time_to_result._row("m", stages | {"cpu": 250.0, "load": 6.0})
    assert loaded["zoo train, wall / CPU s"] == "432 / 250"
    failed = time_to_result._row("m", {"error": "ValueError: bad"})
    assert failed["zoo train, wall / CPU s"].startswith("failed: ValueError")


def test_time_to_result_summary_names_what_misses_its_target_and_why(monkeypatch):
    recorded = {"fast": (120.0, 3), "slow": (2400.0, 3), "unexplained": (1000.0, 3)}
    monkeypatch.setattr(time_to_result, "reproduce_seconds", lambda n: recorded.get(n, (None, 0)))
    monkeypatch.setitem(time_to_result.SLOW_BECAUSE, "slow", "NUTS per subset")
    measured = {
        "fast": {"total": 20.0, "cpu": 30.0},
        "slow": {"total": 400.0, "cpu": 380.0},
        "unexplained": {"total": 500.0, "cpu": 120.0},  # a loaded machine, not a slow model
    }
    summary = time_to_result.targets_summary(measured)
    assert "over 5 minutes: `slow` (of 3 timed; the slowest is `unexplained`" in summary
    assert "`slow` 40 min over 3 seeds (NUTS per subset)" in summary
    assert "`unexplained` 17 min over 3 seeds (not yet explained)" in summary
    assert "`fast`" not in summary.split("as recorded:")[1]
    quick = time_to_result.targets_summary({"fast": measured["fast"], "bad": {"error": "E"}})
    assert "over 5 minutes: none" in quick and "Failed: `bad`" in quick
    assert quick.endswith("as recorded: none.")


def test_only_replaces_the_chosen_sections_of_the_results_file():
    from benchmarks.__main__ import replace_section

    text = "# results\n\n## A\n\nold a\n\n## B\n\nold b\n"
    assert (
        replace_section(text, "## A\n\nnew a\n") == "# results\n\n## A\n\nnew a\n\n## B\n\nold b\n"
    )
    assert replace_section(text, "## B\n\nnew b\n").endswith("## B\n\nnew b\n")
    assert replace_section(text, "## C\n\nc\n").endswith("old b\n\n## C\n\nc\n")
    # the same benchmark at other settings replaces its section, not adds a second one
    text = "# results\n\n## A (10 s a run)\n\nold a\n\n## B\n\nold b\n"
    assert replace_section(text, "## A (30 s a run)\n\nnew a\n") == (
        "# results\n\n## A (30 s a run)\n\nnew a\n\n## B\n\nold b\n"
    )


def test_nuts_peers_is_skipped_without_numpyro(monkeypatch):
    from benchmarks import nuts_peers

    monkeypatch.setattr(nuts_peers, "available", lambda: False)
    assert "not installed" in nuts_peers.run(quick=True)["notes"]


def test_nuts_peers_twins_have_the_zoo_models_log_joint():
    """Where NumPyro is installed (the bench extra): each NumPyro twin scores a prior draw
    as the zoo model does, so the benchmark times the same posterior on both sides."""
    pytest.importorskip("numpyro")
    from benchmarks import nuts_peers

    for name in nuts_peers.CASES:
        zoo_value, twin_value = nuts_peers.check_twin(name)
        assert twin_value == pytest.approx(zoo_value, rel=1e-4)


def test_nuts_peers_names_a_model_left_out_with_its_seeds_so_far(monkeypatch, tmp_path):
    from benchmarks import nuts_peers

    monkeypatch.setattr(nuts_peers, "CACHE", tmp_path)
    (tmp_path / "full").mkdir()
    record = {"zoo": 1.2, "numpyro": 0.3, "warmup": 300, "draws": 300}
    (tmp_path / "full" / "m-0.json").write_text(json.dumps(record))
    assert nuts_peers._so_far("m", range(3), quick=False) == (
        "m (1 of 3 seeds so far, 300 + 300 per chain: zoo 1.20, NumPyro 0.30 min-ESS per "
        "CPU-s, zoo/numpyro 4.00)"
    )
    assert nuts_peers._so_far("other", range(3), quick=False) == "other (no seed yet)"
