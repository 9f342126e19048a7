"""traversal_purity (inference.diagnostics.traversal) and the sprites' ground-truth
measurements (zoo.datasets.sprites): known answers on decoders whose effect is known, the
sprite renderer itself as a decoder, direction finders, and one-line input errors."""

import math

import numpy as np
import pytest
import torch

import zoo
from inference.diagnostics.traversal import (
    closed_form_directions,
    model_decoder,
    pca_directions,
    traversal_grid,
    traversal_purity,
)
from zoo.datasets.sprites import FACTOR_NAMES, FACTOR_RANGES, MEASUREMENTS, measure, render, sprites

COORDS = {f"f{i}": (lambda out, i=i: out[:, i]) for i in range(3)}


def identity(z):
    return z


def test_axis_directions_are_pure_and_mixed_ones_are_not():
    base = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    pure = traversal_purity(identity, torch.eye(3), base, COORDS)
    assert np.allclose(pure.purity, 1.0, atol=0.02)
    assert pure.assignment == ["f0", "f1", "f2"]
    # the step explains most of the moved coordinate's variance (base spread ~1, steps ~2.2)
    assert (np.diag(pure.r2) > 0.7).all() and (pure.r2 - np.diag(np.diag(pure.r2)) < 0.02).all()
    mixed = traversal_purity(identity, [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], base, COORDS)
    assert mixed.purity[0] == pytest.approx(0.5, abs=0.05)
    assert mixed.purity[1] == pytest.approx(1 / 3, abs=0.05)
    assert mixed.mean_purity < 0.5 < pure.mean_purity


def test_exact_r2_and_inactive_directions():
    base = torch.zeros(4, 3)
    result = traversal_purity(identity, torch.eye(3), base, {"f0": COORDS["f0"]})
    # along e0 the measurement is the step itself: R^2 = 1; along e1, e2 it never moves
    assert result.r2[:, 0] == pytest.approx([1.0, 0.0, 0.0])
    assert result.active.tolist() == [True, False, False]
    assert math.isnan(result.purity[1]) and result.mean_purity == pytest.approx(1.0)
    assert result.values.shape == (3, 4, 13, 1)
    assert result.summary()["active_directions"] == 1


def test_a_nonlinear_saturating_effect_is_still_found():
    base = torch.randn(30, 2, generator=torch.Generator().manual_seed(1))
    squash = {"a": lambda out: torch.tanh(out[:, 0]), "b": lambda out: out[:, 1] ** 3}
    result = traversal_purity(identity, torch.eye(2), base, squash)
    assert result.assignment == ["a", "b"] and (result.purity > 0.95).all()


def test_sprite_measurements_read_the_factors_back():
    images, factors = sprites(500, seed=3)
    measured = measure(images)
    for j, name in enumerate(FACTOR_NAMES):
        low, high = FACTOR_RANGES[name]
        error = np.abs(measured[:, j] - factors[:, j]) / (high - low)
        assert np.corrcoef(measured[:, j], factors[:, j])[0, 1] ** 2 > 0.99, name
        assert np.median(error) < 0.02 and error.max() < 0.1, name


def test_the_renderer_as_decoder_has_pure_factor_axes():
    """Latents = factors (standardised), decode = render: each factor axis moves its own
    measurement only; a rotated basis mixes them and its purity drops."""
    _, factors = sprites(40, seed=4)
    lows = np.array([FACTOR_RANGES[k][0] for k in FACTOR_NAMES])
    highs = np.array([FACTOR_RANGES[k][1] for k in FACTOR_NAMES])
    mid, half = (lows + highs) / 2, (highs - lows) / 2

    def decode(u):  # u in [-1, 1] per factor; steps clipped to the factors' ranges
        f = mid + half * np.clip(u.numpy(), -1, 1)
        return render(f)

    base = torch.as_tensor((factors - mid) / half * 0.5, dtype=torch.float32)
    alphas = np.linspace(-1, 1, 9)
    axes = traversal_purity(decode, torch.eye(4), base, MEASUREMENTS, alphas=alphas)
    assert axes.assignment == list(FACTOR_NAMES)
    assert (axes.purity > 0.9).all()
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))[0]
    rotated = traversal_purity(decode, rotation, base, MEASUREMENTS, alphas=alphas)
    assert rotated.mean_purity < axes.mean_purity - 0.2


def test_direction_finders():
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))[0]
    weight = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    u, _, _ = torch.linalg.svd(weight, full_matrices=False)
    weight = u @ torch.diag(torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ q.T
    found = closed_form_directions(weight, 2)
    assert np.abs(np.abs(found @ q[:, :2].numpy()) - np.eye(2)).max() < 1e-8
    codes = torch.randn(4000, 3, generator=gen) * torch.tensor([3.0, 1.0, 0.3])
    axes = pca_directions(codes, 2)
    assert np.abs(np.abs(axes) - np.eye(3)[:2]).max() < 0.05


def test_model_decoder_on_a_zoo_vae():
    model = zoo.create("vae_digits", latent_dim=2, hidden=(8,))
    data = model.default_data()
    decode = model_decoder(model, data)
    out = decode(torch.zeros(5, 2))
    assert out.shape == (5, 64) and ((out >= 0) & (out <= 1)).all()
    result = traversal_purity(decode, torch.eye(2), torch.zeros(3, 2), {"mass": lambda o: o.sum(1)})
    assert result.r2.shape == (2, 1)
    with pytest.raises(ValueError, match="not a local latent site"):
        model_decoder(model, data, site="w")


def test_traversal_grid_is_a_figure():
    fig = traversal_grid(
        lambda z: torch.sigmoid(z @ torch.ones(2, 4)), torch.eye(2), [0.0, 0.0], (2, 2)
    )
    assert len(fig.axes) == 14


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"directions": torch.eye(3)[:, :2]}, "latent_dim 2 but base latents have 3"),
        ({"base": torch.full((2, 3), math.nan)}, "base must be finite"),
        ({"directions": torch.zeros(1, 3)}, "every direction must be non-zero"),
        ({"directions": torch.ones(3)}, "directions must be a 2-D array"),
        ({"alphas": [0.0, 1.0]}, "at least 3 distinct values"),
        ({"measurements": {}}, "non-empty mapping"),
        ({"measurements": {"a": 3}}, "measurement 'a' is not callable"),
        ({"measurements": {"a": lambda o: o[:, 0] * math.nan}}, "measurement 'a' returned NaN"),
        ({"measurements": {"a": lambda o: o[:1, 0]}}, "measurement 'a' returned shape"),
        ({"decode": lambda z: z[:1]}, "decode returned 1 rows"),
        ({"min_effect": 2.0}, "min_effect must be in"),
    ],
)
def test_bad_inputs_are_refused_in_one_line(kwargs, message):
    args = {
        "decode": identity,
        "directions": torch.eye(3),
        "base": torch.zeros(2, 3),
        "measurements": COORDS,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message) as error:
        traversal_purity(
            args.pop("decode"),
            args.pop("directions"),
            args.pop("base"),
            args.pop("measurements"),
            **args,
        )
    assert "\n" not in str(error.value)


def test_bad_sprite_inputs():
    with pytest.raises(ValueError, match="shape \\(N, 4\\)"):
        render(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="images must be"):
        measure(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sprites(0)


def test_a_reference_marks_tiny_movements_inactive():
    """R^2 has no units: a decoder that moves its output a thousandth of the data's spread
    scores the same R^2 as one that moves it fully; the reference's spread tells them apart."""
    base = torch.randn(20, 3, generator=torch.Generator().manual_seed(2))
    data = torch.randn(500, 3, generator=torch.Generator().manual_seed(3))
    full = traversal_purity(identity, torch.eye(3), base, COORDS, reference=data)
    tiny = traversal_purity(lambda z: 1e-3 * z, torch.eye(3), base, COORDS)
    tiny_ref = traversal_purity(lambda z: 1e-3 * z, torch.eye(3), base, COORDS, reference=data)
    assert full.active.all() and tiny.active.all()
    assert tiny.r2 == pytest.approx(full.r2, abs=1e-6)
    assert not tiny_ref.active.any() and math.isnan(tiny_ref.mean_purity)
    assert np.diag(full.size) == pytest.approx([6.0, 6.0, 6.0], rel=0.1)  # 6 sds over -3..3
    assert np.diag(full.slope) == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="must vary in every measured factor"):
        traversal_purity(identity, torch.eye(3), base, COORDS, reference=torch.zeros(5, 3))
