"""vae_digits: shapes, site match, guide and prior swaps, a held-out ELBO above the
independent-pixel log-likelihood and a recovery test
against a known decoder whose exact log-likelihood is computed by quadrature."""

import math

import pyro
import pytest
import torch

import guides
import zoo
from inference.data import full_batch
from inference.evaluation import elbo_per_row
from inference.svi import fit
from tests.linear_decoder import simulate_images, true_log_likelihood
from tests.sites import traces
from zoo.experiments.vae_digits import independent_pixels_loglik


def _split(data, seed=0, holdout=0.15):
    perm = torch.randperm(len(data["x"]), generator=torch.Generator().manual_seed(seed))
    n_train = int(round((1 - holdout) * len(perm)))
    train = {k: v[perm[:n_train]] for k, v in data.items()}
    test = {k: v[perm[n_train:]] for k, v in data.items()}
    return train, test


@pytest.fixture(scope="module")
def digits():
    return zoo.create("vae_digits").default_data()


def test_trace_shapes(digits):
    model = zoo.create("vae_digits", latent_dim=3, hidden=(32,))
    batch = full_batch({"x": digits["x"][:16]})
    model_trace, guide_trace = traces(model, model.guide, batch)
    assert guide_trace.nodes["z"]["value"].shape == (16, 3)
    assert model_trace.nodes["z"]["value"].shape == (16, 3)
    assert model_trace.nodes["x"]["value"].shape == (16, 64)
    assert model_trace.nodes["x"]["is_observed"]
    # the model replays the guide's z
    assert torch.equal(model_trace.nodes["z"]["value"], guide_trace.nodes["z"]["value"])


def test_elbo_is_finite(digits):
    model = zoo.create("vae_digits", hidden=(32,))
    pyro.set_rng_seed(0)
    elbo = elbo_per_row(model, model.guide, {"x": digits["x"][:64]}, num_particles=4)
    assert elbo.shape == (64,)
    assert torch.isfinite(elbo).all()
    # 64 Bernoulli pixels: an ELBO is a log-probability bound, so it is negative
    assert (elbo < 0).all()


def test_encoder_swap(digits):
    model = zoo.create("vae_digits", latent_dim=2, hidden=(16,))
    encoder = guides.NormalEncoder(64, 2, (8, 8))
    guide = guides.build("normal", model, encoder=encoder)
    assert guide.encoder is encoder and model.encoder is not encoder  # the guide owns it
    result = fit(model, guide, {"x": digits["x"][:256]}, steps=5, batch_size=64, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    # the swapped encoder's parameters are the ones being trained
    trained = {id(p) for p in result.loss_fn.parameters()}
    assert all(id(p) in trained for p in encoder.parameters())


def test_bad_encoder_swaps_are_refused():
    model = zoo.create("vae_digits", latent_dim=2, hidden=(16,))
    with pytest.raises(guides.GuideError, match="encoder"):
        guides.build("normal", model, encoder="not a module")
    with pytest.raises(guides.GuideError, match="no local latents"):
        guides.build("normal", zoo.create("eight_schools"), encoder=guides.NormalEncoder(8, 1))
    with pytest.raises(guides.GuideError, match="unknown guide kind"):
        guides.build("nonsense", model)


# Measured (CPU, this split, 1000 steps of batch 128, lr 1e-3): held-out elbo_per_image -22.05
# (fit seed 0) and -23.49 (seed 1); the untrained model gives -49.3. The floor is data-derived:
# independent pixels at their training frequencies score -24.79 nats per image on this split, and
# a VAE that ignores z scores about the same, so the ELBO must beat it by a margin (measured 2.7 and
# 1.3 nats). zoo reproduce vae_digits sets the trained VAE beside independent pixels and a
# Bernoulli mixture over seeds.
MARGIN_OVER_PIXELS = 0.5


def test_heldout_elbo_beats_independent_pixels(digits):
    train, test = _split(digits, seed=0)
    assert len(test["x"]) == 270
    pixels = independent_pixels_loglik(train["x"].double().numpy(), test["x"].double().numpy())
    model = zoo.create("vae_digits")
    guide = model.guide
    pyro.set_rng_seed(0)
    untrained = float(elbo_per_row(model, guide, test, num_particles=10).mean())
    assert untrained < pixels - 10, "the floor must fail for an untrained model"
    fit(model, guide, train, steps=1000, batch_size=128, lr=1e-3, progress=False, log_every=50)
    pyro.set_rng_seed(0)
    metrics = model.evaluate(guide, test)
    assert metrics["elbo_per_image"] > pixels + MARGIN_OVER_PIXELS, (metrics, pixels)
    # the 100-sample IWAE bound is (up to Monte Carlo noise) at least the ELBO
    assert metrics["iwae100_per_image"] > metrics["elbo_per_image"] - 0.5


# ----- recovery: data from a known linear decoder with a 2-d latent ---------------------------


# Measured (fit seeds 0-2): true held-out log p(x) -33.14 nats/image; fitted ELBO -33.37..-33.42
# (gap 0.23-0.28), fitted IWAE-100 -33.24..-33.25 (gap ~0.1). Tolerances: 1.0 nat for the ELBO,
# 0.6 for IWAE; an untrained model is ~20 nats off.
ELBO_TOLERANCE = 1.0
IWAE_TOLERANCE = 0.6


def test_recovers_known_decoder_likelihood():
    weight, bias, x = simulate_images(2000, seed=0)
    train, test = {"x": x[:1700]}, {"x": x[1700:]}
    truth = float(true_log_likelihood(weight, bias, test["x"]).mean())
    model = zoo.create("vae_digits", latent_dim=2, hidden=())  # linear decoder: same family
    guide = guides.build("default", model, encoder=guides.NormalEncoder(64, 2, (64,)))
    pyro.set_rng_seed(0)
    untrained = float(elbo_per_row(model, guide, test, num_particles=10).mean())
    assert untrained < truth - 5 * ELBO_TOLERANCE
    fit(model, guide, train, steps=1500, batch_size=128, lr=1e-2, progress=False, log_every=50)
    pyro.set_rng_seed(0)
    metrics = model.evaluate(guide, test)
    assert abs(metrics["elbo_per_image"] - truth) < ELBO_TOLERANCE, (metrics, truth)
    assert abs(metrics["iwae100_per_image"] - truth) < IWAE_TOLERANCE, (metrics, truth)
