"""snowflake (paper 24): the snowflake is a metric for any parameters (non-negative weights,
concave activations), the Euclidean model recovers simulated positions, the snowflake embeds
a binary tree's metric in d = 2 with lower error and far lower distortion than the Euclidean
geometry (over seeds), the latent graph module draws k neighbours; bad input refused."""

import numpy as np
import pytest
import torch

import zoo
from inference.data import DataError
from inference.svi import fit
from zoo.base import ConfigError
from zoo.models.snowflake import SnowflakeDGM, SnowflakeMetric, shortest_paths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snowflake_is_a_metric_with_concave_increasing_profile_for_any_parameters(seed):
    torch.manual_seed(seed)
    metric = SnowflakeMetric("snowflake", width=4, depth=2)
    with torch.no_grad():
        for p in metric.parameters():
            p.normal_(0.0, 2.0)  # far from the initial values, negative raw weights too
    t = torch.linspace(0.0, 6.0, 601)
    f = metric.profile(t).detach()
    assert abs(float(f[0])) < 1e-3
    assert (f.diff() > 0).all(), "increasing"
    assert (f.diff().diff() < 1e-4).all(), "concave"
    x = torch.randn(40, 3) * 2
    d = metric.pairwise(x).detach()
    assert torch.allclose(d, d.T, atol=1e-5)
    triangle = d.unsqueeze(-1) <= d.unsqueeze(1) + d.T.unsqueeze(0) + 1e-4  # d_ik <= d_ij + d_jk
    assert triangle.all()


def test_euclidean_model_recovers_simulated_positions_up_to_isometry():
    """Positions in 2-D have local optima (a fold of the layout): the best of three SVI
    restarts by final training loss (not by the truth) is kept, as a user would."""
    fits = []
    for seed in range(3):
        model = zoo.create("snowflake", geometry="euclidean", steps=1500)
        truth, data = model.simulate(seed=3)
        result = fit(model, model.guide, data, config=model.config, seed=seed, progress=False)
        fits.append((float(np.mean(result.losses[-50:])), model, model.guide))
    _, model, guide = min(fits, key=lambda f: f[0])
    z = model.positions(guide, data)
    i, j = data["i"], data["j"]
    true_rho = (truth["z"][i] - truth["z"][j]).norm(dim=-1)
    with torch.no_grad():
        fitted = model.metric(z[i], z[j])
    # the data's own noise is 0.1; a fit that ignored them would sit near the prior's
    # scale (rmse ~ 1.2), a folded layout near 0.3
    rmse = float((fitted - true_rho).pow(2).mean().sqrt())
    assert rmse < 0.1, rmse
    sigma = model.evaluate(guide, data)["sigma"]
    assert 0.07 < sigma < 0.14, sigma


@pytest.mark.parametrize("seed", [0, 1])
def test_snowflake_embeds_the_tree_with_less_distortion_than_euclidean(seed):
    scores = {}
    for geometry in ("snowflake", "euclidean"):
        model = zoo.create("snowflake", graph="tree", geometry=geometry, steps=2000)
        data = model.default_data()
        fit(model, model.guide, data, config=model.config, seed=seed, progress=False)
        scores[geometry] = model.evaluate(model.guide, data)
    snow, euc = scores["snowflake"], scores["euclidean"]
    assert snow["mse"] < 0.9 * euc["mse"], scores
    assert snow["max_distortion"] < 0.5 * euc["max_distortion"], scores


def test_tree_and_cycle_star_metrics():
    tree = zoo.create("snowflake", graph="tree").default_data()
    assert len(tree["w"]) == 31 * 30 // 2 and float(tree["w"].max()) == 8.0  # leaf to leaf
    model = zoo.create("snowflake", graph="cycle_star")
    d = shortest_paths(model.num_nodes, model.edges)
    assert d[0, 6] == 6 and d[13, 14] == 2 and d[13, 6] == 8


def test_latent_graph_draws_k_neighbours_and_passes_gradient_to_the_geometry():
    torch.manual_seed(0)
    net = SnowflakeDGM(10, 3, geometry="snowflake", k=4)
    x = torch.randn(30, 10)
    adj = net.dense_graph(x, sample=True)
    assert torch.allclose(adj.sum(-1), torch.ones(30), atol=1e-5)
    assert ((adj > 0).sum(-1) >= 5).all()  # self-loop plus k drawn neighbours at least
    net(x).sum().backward()
    assert net.metric.out.grad.abs().sum() > 0 and net.encoder[0].weight.grad.abs().sum() > 0


def test_bad_input_is_refused():
    model = zoo.create("snowflake")
    data = {k: v.clone() for k, v in model.default_data().items()}
    with pytest.raises(DataError, match="'i' equals 'j'"):
        model.validate({**data, "j": data["i"]})
    with pytest.raises(DataError, match="'j'"):
        model.validate({**data, "j": data["j"] + 31})
    with pytest.raises(DataError, match="'w'"):
        model.validate({**data, "w": -data["w"]})
    with pytest.raises(ConfigError, match="graph"):
        zoo.create("snowflake", graph="grid")
    with pytest.raises(ConfigError, match="latent_dim"):
        zoo.create("snowflake", latent_dim=0)
    assert np.isfinite(model.default_data()["w"].numpy()).all()
