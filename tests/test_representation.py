"""The shared representation measures: each one separates a good representation from a
broken one, and refuses malformed input by name."""

import numpy as np
import pytest

from inference.representation import (
    bayesian_linear_probe,
    cluster_scores,
    effective_rank,
    embedding_spread,
    linear_probe,
    representation_report,
)


def _blobs(rows=300, classes=4, dim=6, separation=4.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    centres = separation * rng.standard_normal((classes, dim))
    return centres[labels] + rng.standard_normal((rows, dim)), labels


def test_linear_probe_reads_linear_labels_and_not_noise():
    x, y = _blobs()
    good = linear_probe(x[:200], y[:200], x[200:], y[200:])
    noise = np.random.default_rng(1).standard_normal(x.shape)
    bad = linear_probe(noise[:200], y[:200], noise[200:], y[200:])
    assert good["accuracy"] > 0.95
    assert bad["accuracy"] < 0.45  # chance is 0.25
    assert good["C"] in (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def test_linear_probe_regression_r2():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 5))
    y = x @ np.array([1.0, -2.0, 0.0, 0.5, 0.0]) + 0.1 * rng.standard_normal(200)
    assert linear_probe(x[:150], y[:150], x[150:], y[150:], task="regression")["r2"] > 0.98
    shuffled = rng.permutation(y)
    assert (
        linear_probe(x[:150], shuffled[:150], x[150:], shuffled[150:], task="regression")["r2"]
        < 0.2
    )


def test_bayesian_probe_weights_and_accuracy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((160, 3))
    y = (2.0 * x[:, 0] + 0.3 * rng.standard_normal(160) > 0).astype(int)  # only column 0 matters
    fit = bayesian_linear_probe(x[:120], y[:120], x[120:], y[120:], warmup=150, draws=150)
    w = fit["weights"]  # (draws, features, classes): the class-1 minus class-0 contrast
    contrast = w[:, :, 1] - w[:, :, 0]
    low, high = np.quantile(contrast, [0.05, 0.95], axis=0)
    assert low[0] > 0.5  # the informative column is clearly positive
    assert low[1] < 0 < high[1] and low[2] < 0 < high[2]  # the noise columns cover 0
    assert fit["accuracy"] > 0.85 and 0 <= fit["accuracy_sd"] < 0.1
    assert fit["r_hat_max"] < 1.1


def test_cluster_scores_relabelling_collapse_and_noise():
    labels = np.repeat(np.arange(3), 50)
    perfect = cluster_scores((labels + 1) % 3, labels)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["hungarian_accuracy"] == 1.0
    collapsed = cluster_scores(np.zeros_like(labels), labels)
    assert collapsed["nmi"] == pytest.approx(0.0, abs=1e-9) and collapsed["num_clusters"] == 1
    noise = cluster_scores(np.random.default_rng(0).integers(0, 3, 150), labels)
    assert noise["nmi"] < 0.1 and noise["ari"] < 0.1


def test_spread_and_rank_tell_collapse_from_use():
    rng = np.random.default_rng(4)
    spread_out = rng.standard_normal((500, 8))
    collapsed = np.ones((500, 8)) + 1e-3 * rng.standard_normal((500, 8))
    in_three = spread_out[:, :3] @ rng.standard_normal((3, 8))
    assert embedding_spread(spread_out) == pytest.approx(1.0, abs=0.1)
    assert embedding_spread(collapsed) < 0.01
    assert effective_rank(spread_out) > 7.0
    assert effective_rank(collapsed) < 1.1
    assert 2.0 < effective_rank(in_three) <= 3.0 + 1e-6


def test_report_on_clustered_embeddings():
    x, y = _blobs(rows=400, classes=3, separation=6.0)
    report = representation_report(x, y)
    assert report["probe_accuracy"] > 0.95
    assert report["cluster_nmi"] > 0.8
    assert report["dim"] == 6 and report["effective_rank"] > 1.5


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: linear_probe(np.ones((10, 2)), np.zeros(9), np.ones((4, 2)), np.zeros(4)),
            "train_y",
        ),
        (
            lambda: linear_probe(np.ones((10, 2)), np.zeros(10), np.ones((4, 3)), np.zeros(4)),
            "features",
        ),
        (
            lambda: linear_probe(
                np.full((10, 2), np.nan), np.arange(10) % 2, np.ones((4, 2)), np.zeros(4)
            ),
            "NaN",
        ),
        (
            lambda: linear_probe(np.ones((10, 2)), np.zeros(10), np.ones((4, 2)), np.zeros(4)),
            "single class",
        ),
        (
            lambda: linear_probe(
                np.ones((10, 2)), np.arange(10) % 2, np.ones((4, 2)), np.zeros(4), task="rank"
            ),
            "task",
        ),
        (
            lambda: linear_probe(
                np.ones((10, 2)), np.arange(10) * 0.5, np.ones((4, 2)), np.zeros(4)
            ),
            "integer",
        ),
        (lambda: cluster_scores(np.array([0, 1]), np.array([0, 1, 1])), "labels"),
        (lambda: embedding_spread(np.zeros((5, 3))), "all-zero"),
        (lambda: effective_rank(np.ones((2, 2, 2))), "matrix"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
