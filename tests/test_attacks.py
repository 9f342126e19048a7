"""The attack kit finds adversarial examples that are known in closed form on tiny linear
models, sees through a rounding filter only with BPDA, and measures rate in bits."""

import math

import pytest
import torch

from inference.attacks import (
    eot,
    hidden_pgd,
    margin_loss,
    pgd,
    pgd_linf,
    robust_accuracy,
    straight_through,
)
from inference.rate import bits, discretized_gaussian_bits, index_bits

W = torch.tensor([1.0, -2.0, 0.5, 0.0])


def _linear(x):  # logits of a two-class linear classifier: class 1 iff x @ W + 0.3 > 0
    score = x @ W + 0.3
    return torch.stack([torch.zeros_like(score), score], 1)


def test_linf_pgd_finds_the_closed_form_example():
    """For a linear score the L-inf optimum is x - eps * sign(W) (pushing the class-1
    score down); PGD must land on it, stay in the ball and flip exactly the rows whose
    margin is below eps * ||W||_1."""
    generator = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(64, 4, generator=generator)  # the ball stays inside (0, 1)
    labels = (x @ W + 0.3 > 0).long()
    eps = 0.1
    adversarial = pgd_linf(
        lambda z: margin_loss(_linear(z), labels), x, eps, steps=20, generator=generator
    )
    assert (adversarial - x).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    expected = x - eps * torch.sign(W) * (2 * labels[:, None] - 1)
    moving = W != 0  # the last column does not matter to the score
    assert torch.allclose(adversarial[:, moving], expected[:, moving], atol=1e-5)
    should_flip = (x @ W + 0.3).abs() < eps * W.abs().sum()
    flipped = _linear(adversarial).argmax(1) != labels
    assert should_flip.any() and (~should_flip).any()
    assert torch.equal(flipped, should_flip)


def test_random_noise_of_the_same_size_does_not_find_it():
    generator = torch.Generator().manual_seed(1)
    x = torch.full((200, 4), 0.5)
    x[:, 0] = 0.7  # margin 0.25, below eps * ||W||_1 = 0.35: an example exists in the ball
    labels = torch.ones(200, dtype=torch.long)
    noise = x + 0.1 * (2 * torch.rand(200, 4, generator=generator) - 1)
    attack = pgd_linf(lambda z: margin_loss(_linear(z), labels), x, 0.1, clamp=None, steps=10)
    assert (_linear(attack).argmax(1) != labels).float().mean() == 1.0
    assert (_linear(noise).argmax(1) != labels).float().mean() < 0.5


def test_hidden_pgd_l2_points_against_the_head():
    head = torch.tensor([3.0, 4.0, 0.0])  # the score a hidden perturbation should lower
    hidden = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    delta = hidden_pgd(lambda d: -((hidden + d) @ head), hidden, 0.5, steps=10)
    assert delta.norm(dim=1).max() <= 0.5 + 1e-6
    cosine = torch.nn.functional.cosine_similarity(delta, -head.expand_as(delta), dim=1)
    assert cosine.min() > 0.999 and delta.norm(dim=1).min() > 0.49


def test_bpda_sees_through_a_rounding_filter():
    """Rounding has zero gradient: plain PGD through it reports every row robust (masked
    gradients); with the straight-through estimator the same attack breaks them."""
    labels = torch.ones(32, dtype=torch.long)
    x = torch.full((32, 4), 0.5)
    x[:, 0] = 0.75  # on the quarter grid: margin 0.3, and an example 0.15 away exists
    quantise = lambda z: torch.round(z * 4) / 4  # noqa: E731
    predict = lambda z: _linear(quantise(z)).argmax(1)  # noqa: E731

    def attack_with(filter_fn):
        return lambda z, y: pgd_linf(
            lambda v: margin_loss(_linear(filter_fn(v)), y),
            z,
            0.15,
            steps=20,
            random_start=False,  # a lucky random start is not what this test is about
        )

    masked = robust_accuracy(predict, x, labels, attack_with(quantise))
    through = robust_accuracy(predict, x, labels, attack_with(straight_through(quantise)))
    assert masked["clean_accuracy"] == 1.0 and masked["robust_accuracy"] == 1.0
    assert through["robust_accuracy"] == 0.0 and through["attack_success"] == 1.0
    value = straight_through(quantise)(x)
    assert torch.equal(value, quantise(x))


def test_eot_averages_fresh_randomness():
    generator = torch.Generator().manual_seed(3)
    noisy = lambda z: z.sum(1) + torch.randn(z.shape[0], generator=generator)  # noqa: E731
    x = torch.zeros(2000, 2)
    single, averaged = noisy(x), eot(noisy, 16)(x)
    assert single.std() == pytest.approx(1.0, rel=0.1)
    assert averaged.std() == pytest.approx(0.25, rel=0.1)


def test_discretized_gaussian_rate():
    mean, scale = torch.tensor(0.3), torch.tensor(1.7)
    grid = torch.arange(-60.0, 61.0)
    total = (2 ** -discretized_gaussian_bits(grid, mean, scale)).sum()
    assert total == pytest.approx(1.0, abs=1e-6)
    wide = discretized_gaussian_bits(torch.tensor(2.0), mean, torch.tensor(50.0))
    density = torch.distributions.Normal(mean, 50.0).log_prob(torch.tensor(2.0))
    assert wide == pytest.approx(float(bits(density)), rel=1e-3)
    far = discretized_gaussian_bits(torch.tensor(12.0), torch.tensor(0.0), torch.tensor(1.0))
    assert torch.isfinite(far) and 29 < far <= -math.log2(1e-9) + 1e-6
    assert index_bits(256) == 8.0
    assert bits(torch.full((3, 4), -LN2), event_dims=1).tolist() == pytest.approx([4.0] * 3)


LN2 = math.log(2.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: pgd(lambda z: z.sum(1), torch.zeros(2, 2), -1.0), "eps"),
        (lambda: pgd(lambda z: z.sum(1), torch.zeros(2, 2), 0.1, norm="l1"), "norm"),
        (lambda: pgd(lambda z: z.sum(1), torch.zeros(2, 2), 0.1, steps=0), "steps"),
        (lambda: pgd(lambda z: z.sum(), torch.zeros(2, 2), 0.1), "one loss per row"),
        (lambda: pgd(lambda z: z.sum(1), torch.zeros(2, 2, dtype=torch.long), 0.1), "floating"),
        (lambda: eot(lambda z: z, 0), "samples"),
        (lambda: margin_loss(torch.zeros(3, 2), torch.zeros(2)), "rows"),
        (lambda: discretized_gaussian_bits(torch.zeros(2), 0.0, torch.tensor(0.0)), "scale"),
        (lambda: index_bits(0), "entries"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
