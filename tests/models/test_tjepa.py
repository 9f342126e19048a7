"""T-JEPA (paper 31): the synthetic table's truth, the masks, the EMA target encoder, the
MSE equivalence of the MAP analogue, the paper's check on the synthetic table (a probe on
the pre-trained embeddings beats random init and the raw columns; attribution on the
informative columns) over two seeds, and bad input."""

import numpy as np
import pytest
import torch
from pyro import poutine

import zoo
from inference.data import DataError, full_batch
from inference.representation import linear_probe
from inference.svi import fit
from zoo.datasets.tables import TABLES, load_table, synthetic_table
from zoo.models.tjepa import column_attribution

#: a small pre-training that runs in ~20 s on one core
SMALL = {"rows": 600, "width": 16, "ff": 32, "pred_width": 16, "steps": 600}


def test_synthetic_table_hides_an_xor_in_its_informative_columns():
    table = synthetic_table(1200, seed=0)
    assert table.x.shape == (1200, 32) and table.informative == tuple(range(8))
    assert np.allclose(table.x.mean(0), 0, atol=1e-5) and np.allclose(table.x.std(0), 1, atol=1e-4)
    train, test = slice(0, 800), slice(800, None)
    raw = linear_probe(table.x[train], table.y[train], table.x[test], table.y[test])
    assert raw["accuracy"] < 0.7  # no linear read-out of the columns separates the XOR
    # the informative columns predict each other, the noise columns nothing
    corr = np.abs(np.corrcoef(table.x.T))
    np.fill_diagonal(corr, 0)
    assert corr[:8, :8].max(1).min() > 0.5 and corr[8:].max() < 0.2


def test_every_table_loads_standardised():
    for name in TABLES:
        table = load_table(name, rows=100, seed=1)
        assert table.x.shape[0] == 100 and np.isfinite(table.x).all()
        model = zoo.create("tjepa", table=name, rows=100)
        data = model.default_data(1)
        assert data["x"].shape == (100, model.columns)
    assert load_table("diabetes").task == "regression"


def test_masks_are_disjoint_and_within_the_shares():
    model = zoo.create("tjepa")
    torch.manual_seed(0)
    d = model.columns
    for _ in range(20):
        context, targets = model.masks(16)
        k_c, (_, m, k_t) = context.shape[1], targets.shape
        assert m == model.config.target_masks
        assert 0.136 * d - 1 <= k_c <= 0.368 * d + 1 and 0.156 * d - 1 <= k_t <= 0.622 * d + 1
        for row in range(16):
            assert len(set(context[row].tolist())) == k_c
            for t in targets[row]:
                assert len(set(t.tolist())) == k_t
                assert not set(t.tolist()) & set(context[row].tolist())


def test_the_likelihood_is_the_paper_mse_up_to_sigma():
    """-log p of the site at sigma is the mean squared error of the prediction (times
    1/(2 sigma^2), summed over the latent width) plus a constant."""
    model = zoo.create("tjepa", rows=64)
    batch = full_batch(model.default_data(0))
    torch.manual_seed(0)
    trace = poutine.trace(model.model).get_trace(batch)
    site = trace.nodes["x"]
    sigma = trace.nodes["sigma"]["value"]
    pred, target = site["fn"].base_dist.loc, site["value"]
    mse = ((pred - target) ** 2).sum(-1).mean(-1)  # per row: over tokens (mean), width (sum)
    width = target.shape[-1]
    expected = -(mse / (2 * sigma**2) + width * (torch.log(sigma) + 0.5 * np.log(2 * np.pi)))
    got = site["fn"].log_prob(target) * site["scale"]
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_target_encoder_follows_the_context_encoder_by_ema():
    model = zoo.create("tjepa", rows=64, steps=5, batch_size=64)
    data = model.default_data(0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    fit(model, model.guide, data, config=model.config, progress=False)
    assert int(model.ema_steps) >= 4  # one EMA step per optimiser step (the last is pending)
    moved = max(
        (p - q).abs().max() for p, q in zip(model.target_encoder.parameters(), before, strict=True)
    )
    assert moved > 0
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    frozen = zoo.create("tjepa", rows=64, steps=5, batch_size=64, ema_start=1.0)
    before = [p.clone() for p in frozen.target_encoder.parameters()]
    fit(frozen, frozen.guide, data, config=frozen.config, progress=False)
    for p, q in zip(frozen.target_encoder.parameters(), before, strict=True):
        assert torch.equal(p, q)


@pytest.fixture(scope="module")
def pretrained():
    """Two seeds of a small pre-training on the synthetic table, with their splits."""
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = zoo.create("tjepa", **SMALL)
        data = model.default_data(seed)
        train, test = model.split(data, seed)
        fit(model, model.guide, train, config=model.config, seed=seed, progress=False)
        torch.manual_seed(seed + 1)
        untrained = zoo.create("tjepa", **SMALL)
        out.append((model, untrained, train, test))
    return out


def test_paper_check_probe_beats_random_init_and_raw_columns(pretrained):
    for model, untrained, train, test in pretrained:
        y_train, y_test = train["y"], test["y"]
        scores = {
            name: linear_probe(m.embed(train["x"]), y_train, m.embed(test["x"]), y_test)["accuracy"]
            for name, m in (("tjepa", model), ("random", untrained))
        }
        raw = linear_probe(train["x"], y_train, test["x"], y_test)["accuracy"]
        assert scores["tjepa"] > raw + 0.15, (scores, raw)
        assert scores["tjepa"] > scores["random"] + 0.03, (scores, raw)


def test_paper_check_attribution_moves_to_the_informative_columns(pretrained):
    """The embedding's attribution share on the 8 informative columns (uniform: 0.25),
    averaged over the two seeds. Per seed it is not reliable at this budget: measured at
    600 steps, seed 0 reaches 0.52 (target encoder) and seed 1 stays at 0.23, against 0.21
    and 0.23 at random init; the context encoder, which the EMA target lags, 0.66 and 0.31."""
    target, context, random = [], [], []
    for model, untrained, _, test in pretrained:
        share = column_attribution(model, test["x"])
        assert share.shape == (32,) and np.isclose(share.sum(), 1.0)
        target.append(share[:8].sum())
        context.append(column_attribution(model, test["x"], encoder="context")[:8].sum())
        random.append(column_attribution(untrained, test["x"])[:8].sum())
    assert np.mean(random) < 0.3  # a random encoder looks at every column alike
    assert np.mean(target) > np.mean(random) + 0.05, (target, random)
    assert np.mean(context) > 0.35, context


def test_evaluate_reports_probe_collapse_and_attribution(pretrained):
    model, _, _, test = pretrained[0]
    out = model.evaluate(model.guide, test)
    assert {"spread", "effective_rank", "probe_accuracy", "raw_probe_accuracy"} <= set(out)
    assert out["spread"] > 0.1 and 0 < out["informative_attribution"] < 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"table": "iris"}, "table must be one of"),
        ({"context_share": (0.5, 0.2)}, "context_share must be"),
        ({"context_share": (0.3, 0.6), "target_share": (0.2, 0.6)}, "must sum to <= 1"),
        ({"n_reg": -1}, "n_reg must be"),
        ({"width": 30, "heads": 4}, "divisible"),
        ({"ema_start": 1.5}, "ema_start must be"),
        ({"pool": "max"}, "pool must be"),
        ({"rows": 4}, "rows must be >= 16"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create("tjepa", **overrides)


def test_bad_data_is_refused():
    model = zoo.create("tjepa", rows=32)
    data = {k: v.numpy().copy() for k, v in model.default_data(0).items()}
    with pytest.raises(DataError, match="field 'x' has shape"):
        model.validate({"x": data["x"][:, :10], "y": data["y"]})
    bad = data["x"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="field 'x' has 1 NaN"):
        model.validate({"x": bad, "y": data["y"]})
    with pytest.raises(DataError, match="field 'y'"):
        model.validate({"x": data["x"], "y": data["y"] - 5})
