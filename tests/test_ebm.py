"""SGLD and the replay buffer (inference.ebm): the sampler's stationary law on a known
energy, the buffer's bookkeeping, and one-line errors for bad input."""

import pytest
import torch

from inference.ebm import ReplayBuffer, persistent_sgld, sgld


def gaussian_energy(x):
    """E(x) = |x - 1|^2 / (2 * 0.25): N(1, 0.5^2 I)."""
    return ((x - 1.0) ** 2).sum(-1) / (2 * 0.25)


def test_langevin_noise_samples_the_energy_and_tiny_noise_does_not():
    torch.manual_seed(0)
    start = torch.randn(4000, 2) * 2
    step = 0.01
    x = sgld(gaussian_energy, start, steps=400, step_size=step, noise=(2 * step) ** 0.5)
    assert x.mean(0).sub(1.0).abs().max() < 0.05
    assert x.std(0).sub(0.5).abs().max() < 0.03
    cold = sgld(gaussian_energy, start, steps=400, step_size=step, noise=0.01)
    assert cold.std(0).max() < 0.1  # JEM-style small noise: near the mode, not the law


def test_sgld_clamps_to_the_box_and_leaves_the_energy_without_gradients():
    net = torch.nn.Linear(2, 1)
    energy = lambda x: net(x).squeeze(-1) * 50.0  # noqa: E731  (a steep slope out of the box)
    x = sgld(energy, torch.zeros(64, 2), steps=20, step_size=0.1, noise=0.1, low=-1, high=1)
    assert x.abs().max() <= 1.0 and not x.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_replay_buffer_keeps_chains_and_restarts_some():
    torch.manual_seed(0)
    buffer = ReplayBuffer(100, (2,), low=-3, high=3)
    assert buffer.samples.shape == (100, 2) and buffer.samples.abs().max() <= 3
    buffer.samples.zero_()
    index, start = buffer.draw(1000, reinit=0.2)
    fresh = (start != 0).any(-1).float().mean()
    assert 0.15 < fresh < 0.25
    buffer.update(index[:5], torch.full((5, 2), 0.5))
    assert torch.equal(buffer.samples[index[:5]], torch.full((5, 2), 0.5))
    out = persistent_sgld(gaussian_energy, buffer, 10, steps=2, step_size=0.01, noise=0.0)
    assert out.shape == (10, 2)
    assert "samples" in buffer.state_dict()


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: sgld(gaussian_energy, torch.zeros(3, 2), steps=-1, step_size=0.1, noise=0.1),
            "steps",
        ),
        (
            lambda: sgld(gaussian_energy, torch.zeros(3, 2), steps=1, step_size=-1, noise=0.1),
            "step_size",
        ),
        (
            lambda: sgld(
                gaussian_energy, torch.zeros(3, 2), steps=1, step_size=0.1, noise=float("nan")
            ),
            "noise",
        ),
        (
            lambda: sgld(
                gaussian_energy, torch.full((3, 2), float("nan")), steps=1, step_size=0.1, noise=0.1
            ),
            "non-finite",
        ),
        (
            lambda: sgld(
                gaussian_energy,
                torch.zeros(3, 2, dtype=torch.long),
                steps=1,
                step_size=0.1,
                noise=0.1,
            ),
            "floating",
        ),
        (lambda: ReplayBuffer(0, (2,), low=-1, high=1), "size"),
        (lambda: ReplayBuffer(10, (2,), low=1, high=-1), "low must be below high"),
        (lambda: ReplayBuffer(10, (2,), low=-1, high=1).draw(5, reinit=1.5), "reinit"),
    ],
)
def test_bad_input_gives_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
