"""The shared scores in ``inference.metrics`` on cases with a known answer."""

import numpy as np
import pytest

from inference.metrics import (
    displacement_errors,
    hungarian_accuracy,
    interval_coverage,
    mean_corr_coef,
)


def test_hungarian_accuracy_ignores_label_names():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert hungarian_accuracy((labels + 1) % 3, labels, 3) == 1.0
    assert hungarian_accuracy(np.zeros(6, dtype=int), labels, 3) == pytest.approx(1 / 3)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_mcc_is_one_for_permuted_rescaled_factors_and_low_for_noise(method):
    rng = np.random.default_rng(0)
    true = rng.normal(size=(500, 3))
    recovered = np.stack([-2 * true[:, 2], np.exp(true[:, 0]), 3 * true[:, 1] + 1], axis=1)
    expected = 1.0 if method == "spearman" else 0.9  # exp() is monotone, not affine
    assert mean_corr_coef(recovered, true, method) >= expected - 1e-9
    assert mean_corr_coef(rng.normal(size=(500, 3)), true, method) < 0.15


def test_displacement_errors_average_and_final_step():
    true = np.zeros((2, 3, 2))
    pred = true.copy()
    pred[:, :, 0] = [[0, 0, 3], [0, 3, 3]]  # errors per step 0,0,3 and 0,3,3
    assert displacement_errors(pred, true) == pytest.approx((1.5, 3.0))


def test_interval_coverage_matches_the_level_for_calibrated_draws():
    rng = np.random.default_rng(1)
    draws, truth = rng.normal(size=(2000, 4000)), rng.normal(size=4000)
    assert interval_coverage(draws, truth, 0.9) == pytest.approx(0.9, abs=0.02)
    assert interval_coverage(0.3 * draws, truth, 0.9) < 0.5  # over-confident


def test_markov_chains_follow_their_transitions():
    from zoo.datasets.markov import empirical_transitions, grid_walk_transitions, sample_chains

    t = grid_walk_transitions(3, stay=0.2)
    assert np.allclose(t.sum(1), 1.0) and t[0, 8] == 0.0  # corners are not neighbours
    chains = sample_chains(t, 400, 50, np.random.default_rng(0))
    assert chains.shape == (400, 50)
    assert np.abs(empirical_transitions(chains, 9) - t).max() < 0.03
    with pytest.raises(ValueError, match="probability vector"):
        sample_chains(np.array([[0.5, 0.4], [0.0, 1.0]]), 2, 3, np.random.default_rng(0))
