"""clc (paper 29): the noisy discretised Gaussian is the rate measure's distribution, the
negative ELBO is rate plus distortion, retrieval and bad input, and the paper's check at
simulated truth over two seeds: images that are dictionary items plus noise cost about the
index alone once conditioned on their reference (the digits curves are in the recipe)."""

import math

import numpy as np
import pytest
import torch

import zoo
from inference.data import DataError
from inference.rate import (
    NoisyDiscretizedGaussian,
    UnitUniform,
    discretized_gaussian_bits,
    psnr,
    rd_gain,
)
from inference.svi import fit
from zoo.base import ConfigError
from zoo.models.clc import Dictionary, digits_split, photo_patches

LN2 = math.log(2.0)

# ----- the shared rate pieces --------------------------------------------------------------


def test_noisy_discretized_gaussian_is_the_rate_measure_and_a_density():
    loc, scale = torch.tensor(0.4), torch.tensor(1.3)
    d = NoisyDiscretizedGaussian(loc, scale)
    ints = torch.arange(-6.0, 7.0)
    assert torch.allclose(-d.log_prob(ints) / LN2, discretized_gaussian_bits(ints, loc, scale))
    grid = torch.linspace(-15, 15, 30001)
    integral = float(torch.trapezoid(d.log_prob(grid).exp(), grid))
    assert integral == pytest.approx(1.0, abs=1e-4)
    torch.manual_seed(0)
    draws = d.rsample((200_000,))
    assert float(draws.mean()) == pytest.approx(0.4, abs=0.02)
    assert float(draws.var()) == pytest.approx(1.3**2 + 1 / 12, rel=0.02)
    # the density of a draw: a histogram agrees with log_prob
    hist = torch.histc(draws, bins=30, min=-3.0, max=3.0) / (len(draws) * 0.2)
    centers = torch.linspace(-2.9, 2.9, 30)
    assert torch.allclose(hist, d.log_prob(centers).exp(), atol=0.01)


def test_unit_uniform_keeps_its_own_draws_at_large_centres():
    """torch's Uniform gives -inf to some of its own draws at |centre| ~ 1e4 (the -ELBO
    then becomes -inf); UnitUniform gives 0 inside the box and -inf outside."""
    center = torch.full((100_000,), 12345.678)
    q = UnitUniform(center)
    draws = q.rsample()
    assert (q.log_prob(draws) == 0).all()
    assert ((draws - center).abs() <= 0.5 + 1e-2).all()
    assert q.log_prob(center + 0.7).eq(-math.inf).all()


def test_rd_gain_and_psnr():
    rate = [10.0, 20.0, 30.0]
    assert rd_gain(rate, [20.0, 22.0, 23.0], rate, [19.0, 21.0, 22.0]) == pytest.approx(1.0)
    assert rd_gain([1.0, 2.0], [5.0, 6.0], [3.0, 4.0], [5.0, 6.0]) != rd_gain(
        [1.0, 2.0], [5.0, 6.0], [3.0, 4.0], [5.0, 6.0]
    ), "no overlap: NaN"
    assert rd_gain([0.0, 10.0], [0.0, 10.0], [5.0, 15.0], [0.0, 10.0]) == pytest.approx(5.0)
    assert psnr(0.01) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="at least 2 points"):
        rd_gain([1.0], [1.0], [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        rd_gain([1.0, float("nan")], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="mse must be positive"):
        psnr(0.0)


# ----- retrieval and the model -------------------------------------------------------------


def test_dictionary_retrieves_each_item_itself_and_refuses_bad_items():
    dictionary, x = digits_split(0, 64)
    assert len(dictionary) == 64 and dictionary.index_bits() == 6.0
    assert (dictionary.nearest(dictionary.items) == np.arange(64)).all()
    refs = dictionary.references(x[:200])
    own = ((refs - x[:200]) ** 2).sum(1)
    other = ((dictionary.items[0] - x[:200]) ** 2).sum(1)
    assert own.mean() < 0.6 * other.mean(), "the nearest item is closer than an arbitrary one"
    patches = photo_patches(0)
    assert patches.shape[1] == 64 and 0 <= patches.min() and patches.max() <= 1
    with pytest.raises(ValueError, match="NaN"):
        Dictionary(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="K >= 2"):
        Dictionary(np.zeros(5))


def test_negative_elbo_is_rate_plus_distortion():
    """The loss of one fixed draw of the uniform noise, by Pyro's trace, against rate in
    nats plus lambda times the squared error (and the Gaussian's constant)."""
    import pyro
    from pyro import poutine

    model = zoo.create("clc", latent_dim=4, hidden=(16,), lam=50.0)
    data = model.default_data()
    batch = {k: v[:16] for k, v in data.items()}
    from inference.data import full_batch

    b = full_batch(batch)
    pyro.set_rng_seed(0)
    guide_trace = poutine.trace(model.local_guide).get_trace(b)
    model_trace = poutine.trace(poutine.replay(model.model, guide_trace)).get_trace(b)
    y = guide_trace.nodes["y"]["value"]
    loc, scale = model.entropy_params(batch["ref"])
    rate = discretized_gaussian_bits(y, loc, scale).sum() * LN2
    sse = (model.decode(y, batch["ref"]) - batch["x"]).pow(2).sum()
    const = 16 * 64 * 0.5 * math.log(2 * math.pi / (2 * 50.0))
    loss = -(model_trace.log_prob_sum() - guide_trace.log_prob_sum()).detach()
    assert float(loss) == pytest.approx(float(rate + 50.0 * sse + const), rel=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lam": 0.0}, "lam must be a positive number"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"reference": "yes"}, "reference must be true or false"),
        ({"dictionary_size": 1}, "dictionary_size must be an integer"),
        ({"lambda": 1.0}, "unknown config key"),
    ],
)
def test_bad_config_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        zoo.create("clc", **overrides)


def test_bad_data_is_refused_before_training():
    model = zoo.create("clc", latent_dim=4)
    x = torch.rand(10, 64)
    with pytest.raises(DataError, match="'ref'"):
        model.validate({"x": x})
    with pytest.raises(DataError, match="'x'"):
        model.validate({"x": x * 2, "ref": x})
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="'ref'"):
        model.validate({"x": x, "ref": bad})
    with pytest.raises(DataError, match="'x'"):
        model.validate({"x": torch.rand(10, 63), "ref": x})


# ----- the paper's check -------------------------------------------------------------------


def simulated(seed: int, size: int = 64, rows: int = 1200, noise: float = 0.05):
    """Known truth: each image is a dictionary item plus a little pixel noise, so given its
    reference an image carries almost no information worth coding."""
    dictionary, _ = digits_split(seed, size)
    rng = np.random.default_rng(seed)
    items = rng.integers(size, size=rows)
    x = dictionary.items[items] + noise * rng.standard_normal((rows, 64))
    return dictionary, items, np.clip(x, 0, 1).astype("float32")


def codec(seed: int, reference: bool, dictionary, x, refs) -> dict:
    torch.manual_seed(seed)
    model = zoo.create(
        "clc",
        reference=reference,
        lam=100.0,
        hidden=(64,),
        latent_dim=8,
        dictionary_size=len(dictionary),
    )
    data = {"x": torch.tensor(x[:900]), "ref": torch.tensor(refs[:900])}
    fit(model, model.guide, data, epochs=40, batch_size=128, lr=3e-3, seed=seed, progress=False)
    return model.rate_distortion(torch.tensor(x[900:]), torch.tensor(refs[900:]))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_reference_removes_the_bits_the_dictionary_already_holds(seed):
    """Recovery of the known truth: conditioned on its reference, an image costs about the
    index alone (6 bits for 64 items) at no worse distortion than the unconditioned codec,
    which has to code the item itself in its latent (a broken conditioning, e.g. ignoring
    ``ref``, makes the two codecs alike and fails)."""
    dictionary, items, x = simulated(seed)
    assert (dictionary.nearest(x) == items).mean() > 0.95, "retrieval finds the true item"
    refs = dictionary.references(x)
    conditioned = codec(seed, True, dictionary, x, refs)
    plain = codec(seed, False, dictionary, x, refs)
    assert conditioned["index_bits"] == 6.0 and plain["index_bits"] == 0.0
    assert conditioned["latent_bits"] < 4.0, conditioned
    assert conditioned["bits"] < 0.5 * plain["bits"], (conditioned, plain)
    assert conditioned["mse"] <= plain["mse"] * 1.1, (conditioned, plain)
