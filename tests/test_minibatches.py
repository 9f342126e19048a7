"""Minibatches: every row in every epoch, at one batch shape."""

import torch

from inference.data import Minibatches, steps_per_epoch


def test_an_epoch_shows_every_row_in_batches_of_one_shape():
    rows, batch = 1527, 128
    loader = Minibatches({"x": torch.arange(rows).float()}, batch, seed=3)
    assert loader.steps_per_epoch == steps_per_epoch(rows, batch) == 12
    for _ in range(2):  # two epochs, each a new shuffle
        seen = []
        for _ in range(loader.steps_per_epoch):
            batch_rows = next(loader)
            assert batch_rows["x"].shape == (batch,)
            assert batch_rows.index.unique().numel() == batch  # distinct rows in a step
            assert torch.equal(batch_rows["x"], batch_rows.index.float())
            seen.append(batch_rows.index)
        assert torch.cat(seen).unique().numel() == rows


def test_steps_per_epoch_rounds_up_and_caps_the_batch_at_the_rows():
    assert steps_per_epoch(100, 30) == 4
    assert steps_per_epoch(100, 25) == 4
    assert steps_per_epoch(100, 500) == 1
    assert steps_per_epoch(100, None) == 1
