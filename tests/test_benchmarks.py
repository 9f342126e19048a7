"""The benchmark suite runs (quick mode) and reports ratios; no timing is asserted."""

import math

from benchmarks import format_table, gp_prior, numpyro_compare, vae_step


def test_vae_step_benchmark_reports_a_ratio_per_variant():
    result = vae_step.run(quick=True)
    ratios = [row["ratio to hand"] for row in result["rows"]]
    assert len(ratios) == 3 and ratios[0] == 1.0
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
