"""lqvi (paper 37): the shared quantiser and Lipschitz encoder keep their guarantees, the
digits classifier helper, the model's sites and bad input, and the paper's check at small
size over two seeds: the quantised filter undoes much of an attack on the classifier alone,
at a bounded clean-accuracy cost, and its gradient is not masked (an adaptive attack
through the straight-through estimator beats it)."""

import pytest
import torch

import zoo
from guides.encoders import LipschitzNormalEncoder, SpectralLinear
from guides.quantize import grid_quantize, grid_round, nearest_code
from inference.attacks import margin_loss, pgd, pgd_linf
from inference.classifiers import accuracy, train_classifier
from inference.data import DataError
from inference.svi import fit
from zoo.base import ConfigError
from zoo.experiments.lqvi import split

SMALL = {"hidden": (64,), "latent_dim": 8}

# ----- the shared pieces ----------------------------------------------------------------------


def test_grid_quantize_rounds_in_value_and_passes_the_gradient_straight_through():
    z = torch.tensor([-0.74, -0.26, 0.0, 0.24, 0.26, 1.1], requires_grad=True)
    q = grid_quantize(z, 0.5)
    assert torch.equal(q.detach(), torch.tensor([-0.5, -0.5, 0.0, 0.0, 0.5, 1.0]))
    (grad,) = torch.autograd.grad((q * torch.arange(6.0)).sum(), z)
    assert torch.equal(grad, torch.arange(6.0)), "straight-through: dQ/dz = 1"
    assert not grid_round(z, 0.5).requires_grad, "the hard rounding alone has no gradient"
    with pytest.raises(ValueError, match="spacing must be positive"):
        grid_round(z, 0.0)
    book = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 2.0, 4.0]])
    assert torch.equal(nearest_code(torch.tensor([[0.4, 3.2]]), book), torch.tensor([[0.0, 4.0]]))


def test_spectral_linear_is_bounded_even_with_large_weights():
    torch.manual_seed(0)
    layer = SpectralLinear(20, 30, bound=0.7)
    with torch.no_grad():
        layer.weight.mul_(50.0)
    norm = torch.linalg.matrix_norm(layer.normalised_weight(), ord=2)
    assert float(norm.detach()) == pytest.approx(0.7, rel=1e-4)
    small = SpectralLinear(20, 30, bound=100.0)  # already inside the bound: left as it is
    assert torch.allclose(small.normalised_weight(), small.weight)


@pytest.mark.parametrize("lipschitz", [0.5, 3.0])
def test_lipschitz_encoder_bound_holds_against_a_worst_case_search(lipschitz):
    """PGD over an L2 ball looks for the largest move of the encoder mean: it stays within
    L * radius for the spectral-norm encoder and exceeds it for the same network unbounded
    (so the search is strong enough to catch a broken bound)."""
    torch.manual_seed(1)
    x = torch.rand(64, 64)
    radius = 0.5

    def worst_ratio(encoder):
        with torch.no_grad():
            for p in encoder.parameters():
                p.mul_(4.0)  # large weights: an unconstrained net would be far from L
            base = encoder(x)[0]
        adv = pgd(lambda v: (encoder(v)[0] - base).norm(dim=-1), x, radius, norm="l2", steps=30)
        with torch.no_grad():
            return float(((encoder(adv)[0] - base).norm(dim=-1) / radius).max())

    bounded = worst_ratio(LipschitzNormalEncoder(64, 8, (32, 32), lipschitz=lipschitz))
    free = worst_ratio(LipschitzNormalEncoder(64, 8, (32, 32), lipschitz=None))
    assert 0 < bounded <= lipschitz * (1 + 1e-4)
    assert free > 2 * lipschitz


def test_classifier_helper_learns_digits_and_refuses_bad_labels():
    train, test = split(0, 400)
    net = train_classifier(train["x"], train["label"], steps=400, seed=0)
    assert accuracy(net, test["x"], test["label"]) > 0.9
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="y must be"):
        train_classifier(train["x"], train["label"][:-1])
    with pytest.raises(ValueError, match="NaN"):
        train_classifier(torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long))


# ----- the model -----------------------------------------------------------------------------


def test_decoder_sees_the_quantised_latent_and_the_plain_vae_does_not():
    model = zoo.create("lqvi", **SMALL)
    z = torch.tensor([[0.1, 0.3, -0.8, 1.26, 0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(model.code(z), torch.tensor([[0.0, 0.5, -1.0, 1.5, 0, 0, 0, 0]]))
    plain = zoo.create("lqvi", quantize=False, spectral_norm=False, latent_noise=0.0, **SMALL)
    assert torch.equal(plain.code(z), z)
    x = torch.rand(5, 64)
    codes = model.codes(x)
    assert torch.allclose(codes / 0.5, torch.round(codes / 0.5))
    _, scale = model.encoder(x)
    assert (scale >= model.config.latent_noise).all(), "the latent-noise floor"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"spacing": 0.0}, "spacing must be a positive number"),
        ({"lipschitz": -1.0}, "lipschitz must be a positive number"),
        ({"latent_noise": -0.1}, "latent_noise must be in"),
        ({"quantize": "yes"}, "quantize must be true or false"),
        ({"eval_eps": 2.0}, "eval_eps must be in"),
        ({"eot_samples": -1}, "eot_samples must be an integer"),
        ({"likelihood": "normal"}, "likelihood must be one of"),
        ({"spacings": 0.5}, "unknown config key"),
    ],
)
def test_bad_config_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        zoo.create("lqvi", **overrides)


def test_bad_data_is_refused_before_training():
    model = zoo.create("lqvi", **SMALL)
    x = torch.rand(10, 64)
    with pytest.raises(DataError, match="label"):
        model.validate({"x": x, "label": torch.full((10,), 10)})
    with pytest.raises(DataError, match="'x'"):
        model.validate({"x": torch.rand(10, 63)})
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="'x'"):
        model.validate({"x": bad})
    with pytest.raises(DataError, match="'x'"):
        model.validate({"x": x * 2})


# ----- the paper's check ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_quantised_filter_undoes_a_classifier_only_attack_but_not_an_adaptive_one(seed):
    train, test = split(seed, 300)
    x, y = test["x"], test["label"]
    classifier = train_classifier(train["x"], train["label"], steps=800, seed=seed)
    torch.manual_seed(seed)
    model = zoo.create("lqvi", lipschitz=5.0, **SMALL)
    data = {"x": train["x"]}
    fit(model, model.guide, data, epochs=60, batch_size=128, lr=2e-3, seed=seed, progress=False)

    eps = 0.2
    x_adv = pgd_linf(
        lambda v: margin_loss(classifier(v), y), x, eps, steps=20, generator=torch.manual_seed(seed)
    )
    bare_clean, bare_robust = accuracy(classifier, x, y), accuracy(classifier, x_adv, y)
    report = model.robustness(classifier, x, y, eps, steps=20, eot_samples=2, x_transfer=x_adv)
    assert bare_clean > 0.93 and bare_robust < 0.2, "the attack works on the bare classifier"
    assert report["clean"] > bare_clean - 0.3, "a bounded clean-accuracy cost"
    assert report["transfer"] > bare_robust + 0.15, "the filter undoes much of the attack"
    # gradients are not masked: attacking through the filter beats it
    assert report["adaptive"] < report["transfer"] - 0.15
    grad_x = x[:4].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(classifier(model.purify(grad_x)).sum(), grad_x)
    assert grad.abs().sum() > 0, "the straight-through estimator carries a gradient"
