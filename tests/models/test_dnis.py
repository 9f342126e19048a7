"""DNIS (paper 5): the paper's checks on the spec's simulation, at a reduced size.

Recovery against the simulation's known ranks (frequent ids rank 8 -> 2 dimension blocks of
4; the rest rank 2 -> 1 block), over two seeds: after the bi-level fit and pruning the most
frequent block keeps at least its true need and more blocks than the rarest one, the pruned
model uses at most ~60% of uniform d = 16's parameters, and its test RMSE is no worse than
uniform d = 16 MF given the same rows and embedding steps (both at the default prior sd;
with its prior sd tuned, uniform MF is slightly better: see results/dnis.md). The spec's
literal form (alphas multiplying N(0, I) embeddings) kept every block at full size (measured
while building it) and so fails the second check.
"""

from __future__ import annotations

import pytest
import torch

import guides
import zoo
from inference.svi import fit
from zoo.base import ConfigError
from zoo.models.dnis import block_index, reindex_by_frequency, three_way_split

SIZE = {"n_users": 250, "n_items": 200, "n_ratings": 20_000, "batch_size": 2048, "lr": 0.05}
ROUNDS, STEPS, FINETUNE = 3, 120, 150


@pytest.mark.parametrize("seed", [0, 1])
def test_pruning_recovers_block_ranks_and_beats_uniform_d16(seed):
    model = zoo.create("dnis", rounds=ROUNDS, steps=STEPS, **SIZE)
    _, data = model.simulate(seed)
    train, val, test = three_way_split(data, seed)
    guide = guides.build("normal", model)
    model.fit_bilevel(guide, train, val, seed=seed)
    user_mask, item_mask = model.prune(guide, train)
    fit(model, guide, train, steps=FINETUNE, trainable=["model."], seed=seed, progress=False,
        batch_size=2048, lr=0.05)  # fmt: skip
    need_u, need_i = model.true_block_dims()
    assert need_u.tolist() == [2, 1, 1, 1, 1] and need_i.tolist() == [2, 1, 1, 1, 1]
    for mask, need in ((user_mask, need_u), (item_mask, need_i)):
        kept = mask.sum(-1)
        assert kept[0] >= need[0], f"the frequent block lost true dimensions: {kept.tolist()}"
        assert kept[0] > kept[-1], f"the rarest block kept as many blocks: {kept.tolist()}"
        assert (kept >= need).all(), f"a block kept fewer than its true rank: {kept.tolist()}"
    full = (SIZE["n_users"] + SIZE["n_items"]) * 16
    assert model.embedding_params() <= 0.6 * full

    uniform = zoo.create("dnis", ard=False, dim=16, **SIZE)
    ug = guides.build("normal", uniform)
    fit(uniform, ug, train, steps=ROUNDS * STEPS + FINETUNE, seed=seed, progress=False,
        batch_size=2048, lr=0.05)  # fmt: skip
    assert model.rmse(guide, test) <= uniform.rmse(ug, test) + 0.005


def test_blocks_follow_frequency_order():
    block = block_index(10, (0.1, 0.2, 0.2, 0.2, 0.3))
    assert block.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    ids = torch.tensor([3, 3, 3, 1, 1, 0])
    new, order = reindex_by_frequency(ids, 4)
    assert new.tolist() == [0, 0, 0, 1, 1, 2] and order[:3].tolist() == [3, 1, 0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 10}, "multiple of dim_blocks"),
        ({"block_fractions": (0.5, 0.4)}, "sum to 1"),
        ({"prune_threshold": 1.5}, "prune_threshold"),
        ({"rank_rare": 9}, "rank_rare"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        zoo.create("dnis", **overrides)


def test_out_of_range_ids_are_refused():
    model = zoo.create("dnis", **zoo.get("dnis").tiny)
    data = dict(model.default_data(0))
    data["user"] = data["user"].clone()
    data["user"][0] = 10_000
    with pytest.raises(ValueError, match="'user'"):
        model.validate(data)
