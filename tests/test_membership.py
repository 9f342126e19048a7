"""The membership attack (inference/membership.py): chance on look-alike groups, high on
separable ones, and one-line errors for bad input."""

import numpy as np
import pytest
import torch

from inference.membership import membership_attack, output_features


def test_look_alike_groups_give_chance_over_seeds():
    accs = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(size=(200, 3)), rng.normal(size=(300, 3))
        accs.append(membership_attack(a, b, seed=seed)["accuracy"])
    assert abs(np.mean(accs) - 0.5) < 0.05, accs


def test_members_with_lower_loss_are_found():
    rng = np.random.default_rng(0)
    members = rng.exponential(0.05, size=150)  # low loss, as on training rows
    nonmembers = rng.exponential(1.0, size=150)
    out = membership_attack(members, nonmembers, seed=0)
    assert out["accuracy"] > 0.8 and out["member_rate"] > 0.8
    assert out["rows"] == 150


def test_output_features_read_the_true_class():
    logits = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    feats = output_features(logits, torch.tensor([0, 1]))
    assert feats.shape == (2, 4)
    assert feats[0, 0] < 0.05 < 4.0 < feats[1, 0]  # loss: right vs wrong class
    assert feats[0, 1] > 0.9 > 0.1 > feats[1, 1]  # probability of the true class
    assert feats[0, 2] == pytest.approx(feats[1, 2])  # top probability ignores the label


@pytest.mark.parametrize(
    "members, nonmembers, kwargs, message",
    [
        (np.full((10, 2), np.nan), np.zeros((10, 2)), {}, "members has NaN"),
        (np.zeros((10, 2)), np.zeros((10, 3)), {}, "members have 2 features"),
        (np.zeros((3, 2)), np.zeros((10, 2)), {}, "at least 5 rows"),
        (np.zeros((10, 2)), np.zeros((10, 2)), {"folds": 1}, "folds must be"),
        (np.zeros((10, 2, 2)), np.zeros((10, 2)), {}, "members must be"),
    ],
)
def test_bad_input_is_refused(members, nonmembers, kwargs, message):
    with pytest.raises(ValueError, match=message):
        membership_attack(members, nonmembers, **kwargs)


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="labels must be integers in 0..2"):
        output_features(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="logits must be"):
        output_features(torch.zeros(2), torch.tensor([0, 1]))
