"""Video representations for RL (paper 22): the gridworld videos, the exact state sum
against enumeration, recovery of the agent's cell from iid-noise videos, the exogenous
failure, the baselines, bad input."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import init_to_value

import guides
import zoo
from inference.data import DataError, full_batch
from inference.metrics import hungarian_accuracy
from inference.svi import fit
from zoo.experiments.video_rl import hmm_restarts
from zoo.models.video_rl.baselines import (
    contrastive_decoder,
    kmeans_decoder,
    supervised_decoder,
)
from zoo.models.video_rl.gridworld import render_gridworld
from zoo.models.video_rl.model import IsoNormal

SMALL = dict(grid=3, horizon=10, episodes=120)


def _point_guide(values):
    def guide(batch):
        for name, value in values.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    return guide


def test_gridworld_follows_the_spec():
    raw = render_gridworld(0, episodes=50, horizon=12, noise="exogenous", pixel_noise=0.01)
    assert raw["x"].shape == (50, 12, 100) and raw["state"].max() <= 24
    frames = raw["x"].reshape(50, 12, 10, 10)
    r, c = raw["state"] // 5, raw["state"] % 5
    ep, t = np.meshgrid(np.arange(50), np.arange(12), indexing="ij")
    assert np.allclose(frames[ep, t, 2 * r, 2 * c], 1.0, atol=0.1)  # the agent in front
    assert frames.max() < 1.1  # the one bright pixel
    # the agent and the distractors walk one step at a time (temporally correlated) ...
    moves = np.abs(np.diff(r, axis=1)) + np.abs(np.diff(c, axis=1))
    assert moves.max() <= 1
    corner = raw["distractor"]
    step = np.abs(np.diff(corner // 9, axis=1)) + np.abs(np.diff(corner % 9, axis=1))
    assert step.max() <= 1
    # ... while the control's blobs jump anywhere
    control = render_gridworld(0, episodes=50, horizon=12, noise="iid_blobs")["distractor"]
    assert (np.abs(np.diff(control // 9, axis=1)) > 1).mean() > 0.5
    again = render_gridworld(0, episodes=50, horizon=12, noise="exogenous", pixel_noise=0.01)
    assert np.array_equal(again["x"], raw["x"])


def test_fast_emission_matches_a_normal():
    loc, scale = torch.randn(4, 7), torch.tensor(0.6)
    value = torch.randn(3, 5, 1, 7)
    fast = IsoNormal(loc.unsqueeze(-3), scale).log_prob(value)
    slow = dist.Normal(loc, scale).to_event(1).log_prob(value)
    assert fast.shape == slow.shape == (3, 5, 4)
    assert torch.allclose(fast, slow, atol=1e-4)
    # under a leading dimension of draws (vectorized particles, posterior draws)
    loc, scale = torch.randn(6, 1, 1, 4, 7), torch.rand(6, 1, 1, 1) + 0.5
    fast = IsoNormal(loc, scale).log_prob(value)
    slow = dist.Normal(loc, scale.unsqueeze(-1)).to_event(1).log_prob(value)
    assert fast.shape == slow.shape == (6, 3, 5, 4)
    assert torch.allclose(fast, slow, atol=1e-3)


def test_summed_states_match_enumeration_and_pyro_discrete_hmm():
    """Trace_ELBO on the forward algorithm = TraceEnum_ELBO with every s_t enumerated
    (pyro.markov), and StateHMM.log_prob = Pyro's DiscreteHMM.log_prob."""
    model = zoo.create("video_rl", grid=2, horizon=6, episodes=30)
    truth, data = model.simulate(0)
    values = {k: v.clone().requires_grad_() for k, v in truth.items()}
    batch = full_batch(data)
    with torch.no_grad():
        summed = Trace_ELBO().loss(model.model, _point_guide(values), batch)
    enum = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        model.enumerated_model, _point_guide(values), batch
    )
    assert abs(float(enum.detach()) - summed) < 1e-5 * abs(summed)
    hmm = model.hmm(truth["trans"], truth["means"], truth["sigma"], 6)
    reference = dist.DiscreteHMM.log_prob(hmm, data["x"])
    assert torch.allclose(hmm.log_prob(data["x"]), reference, rtol=1e-5)


def test_decoder_recovers_the_agent_from_iid_noise_videos():
    """MAP fit, best of two restarts by training loss: the decoded cells match the truth
    (chance is 1/9) and the learned transitions the grid walk's."""
    model = zoo.create("video_rl", noise="iid", **SMALL)
    train, test = model.split(model.default_data(0), 0)
    guide, losses = hmm_restarts(model, train, steps=150, restarts=2, seed=0)
    scores = model.evaluate(guide, test)
    assert scores["accuracy"] > 0.95, scores
    assert scores["trans_l1"] < 0.5, scores  # a uniform matrix is ~1.3 away
    median = guide.median(full_batch(test))
    decoded = model.decode(median, test)
    assert decoded.shape == test["state"].shape


def test_the_default_guide_starts_the_means_at_frames_and_decodes():
    """What ``zoo train video_rl`` does: one fit of the default guide, whose means start at
    distinct frames of the first batch (a start from the prior's draws decoded ~0.5 at full
    size); one start, so a looser bar than the restarts above."""
    model = zoo.create("video_rl", noise="iid", **SMALL)
    train, test = model.split(model.default_data(0), 0)
    guide = model.guide
    pyro.set_rng_seed(0)
    start = guide.median(full_batch(train))["means"]  # the first call sets the start
    frames = train["x"].reshape(-1, start.shape[-1])
    assert all(bool((frames == row).all(-1).any()) for row in start)
    fit(model, guide, train, steps=150, lr=0.05, seed=0, progress=False)
    assert model.evaluate(guide, test)["accuracy"] > 0.8


def test_exogenous_distractors_break_the_forward_model_but_not_decodability():
    """The paper's failure mode: with temporally correlated blobs the HMM's states follow
    the distractors; a supervised read-out of one frame still finds the agent."""
    accuracy = {}
    for noise in ("iid", "exogenous"):
        model = zoo.create("video_rl", noise=noise, **SMALL)
        train, test = model.split(model.default_data(1), 1)
        guide, _ = hmm_restarts(model, train, steps=150, restarts=2, seed=1)
        accuracy[noise] = model.evaluate(guide, test)["accuracy"]
    assert accuracy["iid"] - accuracy["exogenous"] > 0.3, accuracy
    read_out = supervised_decoder(train["x"], train["state"], seed=1)
    pred = read_out(test["x"]).reshape(-1)
    assert hungarian_accuracy(pred, test["state"].reshape(-1), 9) > 0.8


def test_kmeans_and_contrastive_baselines_decode_iid_frames():
    model = zoo.create("video_rl", noise="iid", **SMALL)
    data = model.default_data(0)
    labels = data["state"].reshape(-1)
    kmeans = kmeans_decoder(data["x"], 9, restarts=2, seed=0)
    assert hungarian_accuracy(kmeans(data["x"]).reshape(-1), labels, 9) > 0.8
    decode, losses = contrastive_decoder(data["x"], 9, steps=400, restarts=1, seed=0)
    assert len(losses) == 1
    assert hungarian_accuracy(decode(data["x"]).reshape(-1), labels, 9) > 0.3  # chance 0.11


def test_enumerated_fit_by_trace_enum_elbo_trains():
    model = zoo.create("video_rl", grid=2, horizon=6, episodes=40)
    data = model.default_data(0)

    class Enumerated(torch.nn.Module):
        max_plate_nesting = 1

        def forward(self, batch):
            return model.enumerated_model(batch)

    start = model.init_values(data, seed=0)
    guide = guides.build("delta", model, init_loc_fn=init_to_value(values=start))
    result = fit(Enumerated(), guide, data, steps=40, lr=0.05, elbo="enum", progress=False)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])


def test_bad_input_is_refused_before_training():
    model = zoo.create("video_rl", grid=2, horizon=6, episodes=10)
    data = {k: v.clone() for k, v in model.default_data(0).items()}
    with pytest.raises(DataError, match="horizon=6"):
        model.validate({"x": data["x"][:, :5], "state": data["state"][:, :5]})
    bad = data["x"].clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="x"):
        model.validate({"x": bad, "state": data["state"]})
    with pytest.raises(DataError, match="state"):
        model.validate({"x": data["x"], "state": data["state"] + 10})
    with pytest.raises(zoo.ConfigError, match="noise"):
        zoo.create("video_rl", noise="gaussian")
    with pytest.raises(zoo.ConfigError, match="grid"):
        zoo.create("video_rl", grid=1)
