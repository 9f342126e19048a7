"""The shared test-time latent search: it climbs the objective it is given and never trains
the network the objective runs through."""

import pytest
import torch
from torch import nn

from inference.latent_search import refine, search


def _quadratic(target: torch.Tensor):
    """A concave per-instance objective with its maximum at ``target``."""
    return lambda z: -((z - target) ** 2).sum(-1)


def test_refine_climbs_monotonically_towards_the_optimum():
    torch.manual_seed(0)
    target = torch.randn(6, 3)
    loc = torch.zeros(6, 3)
    objective = _quadratic(target)
    values = [objective(refine(loc, objective, steps=k, lr=0.1)) for k in range(0, 30, 5)]
    for before, after in zip(values, values[1:], strict=False):
        assert (after > before).all()
    assert torch.allclose(refine(loc, objective, steps=60, lr=0.1), target, atol=1e-4)


def test_refine_first_order_passes_gradients_to_loc_as_the_identity():
    target = torch.tensor([[1.0, -2.0]])
    loc = torch.zeros(1, 2, requires_grad=True)
    refine(loc, _quadratic(target), steps=5, lr=0.1).sum().backward()
    assert torch.allclose(loc.grad, torch.ones(1, 2))


def test_refine_second_order_differentiates_through_the_steps():
    # z_K = target + (1 - 2 lr)^K (loc - target): d z_K / d loc = (1 - 2 lr)^K
    target = torch.tensor([[1.0, -2.0]])
    loc = torch.zeros(1, 2, requires_grad=True)
    refine(loc, _quadratic(target), steps=3, lr=0.1, create_graph=True).sum().backward()
    assert torch.allclose(loc.grad, torch.full((1, 2), 0.8**3))


def test_refine_under_no_grad_still_steps():
    target = torch.ones(2, 2)
    with torch.no_grad():
        z = refine(torch.zeros(2, 2), _quadratic(target), steps=10, lr=0.2)
    assert (z > 0.9).all()


def test_search_improves_the_objective_and_leaves_the_network_untouched():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    target = torch.randn(5, 1)

    def objective(z):
        return -((net(z) - target) ** 2).sum(-1) - 0.01 * (z**2).sum(-1)

    result = search(objective, torch.zeros(5, 4), steps=100, lr=0.05, modules=[net])
    # the objective is <= 0: at least half the gap to 0 is closed for every instance
    assert (result.best_value - result.history[0] > 0.5 * -result.history[0]).all()
    assert (result.history[-1] >= result.history[0]).all()
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_search_stops_each_instance_on_its_own():
    target = torch.tensor([[0.5], [50.0]])
    objective = _quadratic(target)
    result = search(objective, torch.zeros(2, 1), steps=40, lr=0.1, done=lambda z, v: v > -0.01)
    assert result.stopped_at[0] >= 0 and result.stopped_at[1] == -1
    stopped_z = result.latent[0]
    assert objective(stopped_z[None])[0] > -0.01
    # the stopped instance kept its latent: its history is flat from its stop on
    flat = result.history[int(result.stopped_at[0]) :, 0]
    assert torch.allclose(flat, flat[0].expand_as(flat))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"steps": -1, "lr": 0.1}, "steps"), ({"steps": 3, "lr": 0.0}, "lr")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        search(_quadratic(torch.zeros(1, 1)), torch.zeros(1, 1), **kwargs)
    with pytest.raises(ValueError, match=message):
        refine(torch.zeros(1, 1), _quadratic(torch.zeros(1, 1)), **kwargs)


def test_an_objective_without_one_value_per_instance_is_refused():
    with pytest.raises(ValueError, match=r"one value per instance, shape \(3,\)"):
        search(lambda z: z.sum(), torch.zeros(3, 2), steps=2, lr=0.1)


def test_search_with_plain_gradient_steps_is_refine_with_the_best_kept():
    target = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    objective = _quadratic(target)
    z0 = torch.zeros(2, 2)
    result = search(objective, z0, steps=7, lr=0.1, optimizer="sgd")
    assert torch.allclose(result.latent, refine(z0, objective, steps=7, lr=0.1))
    assert torch.allclose(result.best, result.latent)  # a concave climb: the last is the best
    # too large a step overshoots and diverges: the best stays the start
    wild = search(objective, z0, steps=5, lr=1.5, optimizer="sgd")
    assert (wild.history[-1] < wild.history[0]).all()
    assert torch.equal(wild.best, z0) and torch.equal(wild.best_value, wild.history[0])


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        search(_quadratic(torch.zeros(1, 1)), torch.zeros(1, 1), steps=2, lr=0.1, optimizer="lbfgs")
