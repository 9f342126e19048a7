"""The closed-form latent flow (inference.latent_flow): anchors -> N(0, I) and back."""

import math

import pytest
import torch

from inference.latent_flow import (
    LatentFlowError,
    ZoneLatent,
    flow_times,
    gaussian_moment_test,
    log_weights,
    to_anchors,
    to_gaussian,
    zone_assignment,
)


def _own(z, anchors, **options):
    _, logw = to_anchors(z, anchors, **options)
    return float((logw[-1].argmax(-1) == torch.arange(len(anchors))).float().mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flow_reaches_a_gaussian_and_comes_back_to_each_anchor(seed):
    torch.manual_seed(seed)
    anchors = 2.0 * torch.randn(400, 6) + 1.0  # far from N(0, I): the flow must move them
    z = to_gaussian(anchors)
    test = gaussian_moment_test(z)
    assert test.passed, test
    assert test.max_cov_error < 0.35
    assert _own(z, anchors) >= 0.99


def test_the_moment_test_rejects_the_anchors_and_a_broken_flow():
    torch.manual_seed(0)
    anchors = 2.0 * torch.randn(400, 6) + 1.0
    assert not gaussian_moment_test(anchors).passed
    # a flow that stops half-way (t0 -> 0.5) is not Gaussian either
    half = 0.5 * torch.randn_like(anchors) + 0.5 * anchors
    assert not gaussian_moment_test(half).passed
    assert not gaussian_moment_test(1.3 * torch.randn(400, 6)).passed


def test_heun_and_the_time_grid_beat_the_authors_euler_steps():
    torch.manual_seed(0)
    centers = 1.5 * torch.randn(10, 8)
    anchors = centers[torch.arange(512) % 10] + 0.05 * torch.randn(512, 8)
    euler = {"solver": "euler", "power": 1.0}
    z = to_gaussian(anchors, **euler)
    assert _own(z, anchors, **euler) < 0.6
    z = to_gaussian(anchors)
    assert _own(z, anchors) > 0.85


def test_log_space_weights_do_not_underflow_in_high_dimension():
    torch.manual_seed(0)
    anchors = torch.randn(64, 400)
    x = 0.5 * anchors[:8] + 0.5 * torch.randn(8, 400)
    naive = torch.exp(-0.5 * ((x[:, None] - 0.5 * anchors[None]) / 0.5).pow(2).sum(-1))
    assert bool((naive.sum(-1) == 0).all()), "the unnormalised pdfs underflow here"
    w = log_weights(x, 0.5, anchors).exp()
    assert torch.isfinite(w).all() and torch.allclose(w.sum(-1), torch.ones(8))
    z = to_gaussian(anchors)
    assert torch.isfinite(z).all()
    assert _own(z, anchors) == 1.0


def test_a_single_anchor_flows_on_the_straight_line():
    anchor, noise = torch.tensor([[3.0, -2.0]]), torch.tensor([[0.5, 1.0]])
    z = to_gaussian(anchor, noise, t0=1e-4)
    # (float32 keeps the start's noise t0 * eps beside the anchor to ~1e-7 / t0)
    assert torch.allclose(z, noise, atol=5e-3)
    assert not torch.allclose(to_gaussian(anchor, noise, steps=1, power=1.0), anchor, atol=0.5)


def test_reference_mode_flows_each_row_among_the_reference_and_itself():
    torch.manual_seed(0)
    reference = torch.randn(300, 4)
    queries = torch.randn(5, 4)
    noise = torch.randn(5, 4)
    z = to_gaussian(queries, noise, reference=reference)
    for i in range(5):  # the same as flowing reference + query i, row by row
        pool = torch.cat([reference, queries[i : i + 1]])
        full_noise = torch.cat([torch.zeros(300, 4), noise[i : i + 1]])
        alone = to_gaussian(pool, full_noise)[-1]
        assert torch.allclose(z[i], alone, atol=1e-4)


def test_zone_latent_density_and_reparameterised_draws():
    torch.manual_seed(0)
    anchors = torch.randn(200, 3, requires_grad=True)
    q = ZoneLatent(anchors)
    z = q.rsample()
    log_q = q.log_prob(z)
    gauss = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(log_q, gauss + math.log(200), atol=1e-3)
    assert torch.allclose(q.log_prob(z.detach().clone()), log_q, atol=1e-3)
    z.sum().backward()
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0
    draws = q.expand([4, 200]).rsample()
    assert draws.shape == (4, 200, 3)


def test_zone_assignment_names_the_anchor_a_latent_flows_to():
    torch.manual_seed(0)
    anchors = 3.0 * torch.eye(4)
    label = torch.arange(200) % 4
    # 200 images in 4 tight clusters flow to N(0, I); each lands in its cluster's label zone
    z = to_gaussian(anchors[label] + 0.01 * torch.randn(200, 4))
    logp = zone_assignment(z, anchors)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(200), atol=1e-5)
    assert float((logp.argmax(-1) == label).float().mean()) >= 0.98
    wrong = zone_assignment(z, anchors.roll(1, 0))
    assert float((wrong.argmax(-1) == label).float().mean()) <= 0.05


def test_flow_times_run_from_t0_to_one():
    times = flow_times(10, 1e-4, 2.0)
    assert times[0] == pytest.approx(1e-4) and times[-1] == 1.0
    assert all(b > a for a, b in zip(times[:-1], times[1:], strict=True))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: to_gaussian(torch.randn(5)), "anchors must have shape"),
        (lambda: to_gaussian(torch.tensor([[float("nan"), 0.0]])), "NaN"),
        (lambda: to_gaussian(torch.randn(3, 2), torch.randn(3, 4)), "noise has dimension"),
        (lambda: to_gaussian(torch.randn(3, 2), steps=0), "steps must be"),
        (lambda: to_gaussian(torch.randn(3, 2), t0=1.5), "t0 must be"),
        (lambda: to_gaussian(torch.randn(3, 2), solver="rk4"), "solver must be"),
        (lambda: to_anchors(torch.randn(3, 2), torch.randn(4, 3)), "z has dimension"),
        (lambda: zone_assignment(torch.randn(3, 2), torch.randn(4, 2), cutoff=1.0), "cutoff"),
        (lambda: gaussian_moment_test(torch.randn(3, 5)), "more rows than dimensions"),
        (lambda: to_gaussian(torch.randint(0, 3, (3, 2))), "floating-point"),
    ],
)
def test_bad_input_gets_a_one_line_error(call, message):
    with pytest.raises(LatentFlowError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
