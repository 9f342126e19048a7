"""mm_gpvae: shapes, site match, finite ELBO, guide swap, prior and kernel swaps (Python and
CLI), the Fourier spectrum against the kernel, bad inputs, and latent identification on the
paper's simulation (matched R^2 well above cross-assigned R^2, Fourier >= time domain)."""

import math

import gpytorch
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from inference.data import DataError, full_batch
from inference.evaluation import elbo_per_row
from inference.metrics import affine_r2
from inference.svi import fit
from tests.sites import latent_sites, traces
from zoo.models.mm_gpvae import PRESETS, is_stationary, rbf_gram

SMALL = dict(trials=24, time_bins=16, neurons=12, image_side=10, hidden=16)


@pytest.fixture(scope="module")
def small_data():
    return zoo.create("mm_gpvae", **SMALL).default_data(seed=0)


@pytest.mark.parametrize("parameterization", ["fourier", "time"])
def test_trace_shapes_and_sites(parameterization, small_data):
    model = zoo.create("mm_gpvae", parameterization=parameterization, **SMALL)
    batch = full_batch({k: v[:5] for k, v in small_data.items()})
    model_trace, guide_trace = traces(model, model.guide, batch)
    t = SMALL["time_bins"]
    assert model_trace.nodes["spikes"]["value"].shape == (5, t, 12)
    assert model_trace.nodes["images"]["value"].shape == (5, t, 100)
    for g in "snb":
        assert model_trace.nodes[f"z_{g}"]["value"].shape == (5, 1, t)
    if parameterization == "fourier":
        f = model.basis.shape[1]
        assert f < t + math.ceil(0.5 * t)  # frequencies were pruned
        assert guide_trace.nodes["zeta_s"]["value"].shape == (5, 1, f)
        local = {"zeta_s", "zeta_n", "zeta_b"}
    else:
        local = {"z_s", "z_n", "z_b"}
    scales = {"lengthscale_s", "lengthscale_n", "lengthscale_b"}
    assert latent_sites(guide_trace) == latent_sites(model_trace) == local | scales
    assert set(model.local_sites) == local


@pytest.mark.parametrize("parameterization", ["fourier", "time"])
def test_elbo_is_finite(parameterization, small_data):
    model = zoo.create("mm_gpvae", parameterization=parameterization, **SMALL)
    pyro.set_rng_seed(0)
    elbo = elbo_per_row(model, model.guide, small_data, num_particles=3)
    assert elbo.shape == (SMALL["trials"],)
    assert torch.isfinite(elbo).all()


def test_fourier_prior_matches_the_kernel():
    """With no pruning and wide padding, B diag(c) B^T restricted to the grid is the
    kernel's Gram matrix (the circulant embedding is exact for a decayed RBF)."""
    model = zoo.create("mm_gpvae", time_bins=20, fourier_pad=3.0, min_lengthscale=0.1)
    ell = torch.tensor([3.0, 4.0, 5.0])
    c = model.spectrum(ell) - model.config.jitter
    cov = torch.einsum("tf,lf,uf->ltu", model.basis, c, model.basis)
    gram = model.gram(ell) - model.config.jitter * torch.eye(20)
    assert torch.allclose(cov, gram, atol=1e-4)


def test_meanfield_elbo_uses_the_analytic_kl(small_data):
    for parameterization in ("fourier", "time"):
        model = zoo.create("mm_gpvae", parameterization=parameterization, **SMALL)
        result = fit(model, model.guide, small_data, steps=3, elbo="meanfield", progress=False)
        assert all(math.isfinite(v) for v in result.losses)


def test_prior_swap_on_the_lengthscale(small_data):
    gamma = dist.Gamma(4.0, 0.5)
    model = zoo.create("mm_gpvae", priors={"lengthscale_s": gamma}, **SMALL)
    model_trace, _ = traces(model, model.guide, full_batch(small_data))
    site = model_trace.nodes["lengthscale_s"]
    assert torch.allclose(site["fn"].log_prob(site["value"]), gamma.log_prob(site["value"]))
    assert isinstance(model_trace.nodes["lengthscale_n"]["fn"], dist.LogNormal)
    with pytest.raises(zoo.PriorError, match="support"):
        zoo.create("mm_gpvae", priors={"lengthscale_b": dist.Normal(0.0, 1.0)})
    with pytest.raises(zoo.PriorError, match="unknown prior site"):
        zoo.create("mm_gpvae", priors={"lengthscale": gamma})


@pytest.mark.parametrize("parameterization", ["fourier", "time"])
def test_kernel_swap_changes_the_prior(parameterization, small_data):
    ell = torch.tensor([4.0, 4.0, 4.0])
    rbf = zoo.create("mm_gpvae", parameterization=parameterization, **SMALL)
    matern = zoo.create("mm_gpvae", parameterization=parameterization, kernel="matern52", **SMALL)
    obj = zoo.create(
        "mm_gpvae",
        parameterization=parameterization,
        kernel=gpytorch.kernels.MaternKernel(nu=2.5),
        **SMALL,
    )
    assert isinstance(matern.kernel, gpytorch.kernels.MaternKernel)
    assert obj.config.kernel == "custom"
    pick = (lambda m: m.spectrum(ell)) if parameterization == "fourier" else (lambda m: m.gram(ell))
    with torch.no_grad():
        assert torch.allclose(pick(matern), pick(obj))
        assert not torch.allclose(pick(matern), pick(rbf), atol=1e-3)
    # the swapped model trains, and the lengthscale site stays the same
    result = fit(matern, matern.guide, small_data, steps=3, batch_size=8, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    for name in ("periodic", "rq", "matern12"):
        zoo.create("mm_gpvae", kernel=name, **SMALL)


def test_kernel_swap_from_the_cli(tmp_path):
    from zoo.cli import main

    out = tmp_path / "run"
    main(
        [
            "train",
            "mm_gpvae",
            "--set",
            "kernel=matern52",
            *[f"--set={k}={v}" for k, v in SMALL.items()],
            "--steps",
            "4",
            "--out",
            str(out),
        ]
    )
    import json

    record = json.loads((out / "config.json").read_text())
    assert record["config"]["kernel"] == "matern52"
    assert (out / "report.md").exists()


def test_bad_kernels_and_config():
    linear = gpytorch.kernels.LinearKernel()
    assert not is_stationary(linear)
    with pytest.raises(zoo.ConfigError, match="LinearKernel is not stationary.*Fourier"):
        zoo.create("mm_gpvae", kernel=linear, **SMALL)
    # the time domain takes a non-stationary kernel
    zoo.create("mm_gpvae", kernel=linear, parameterization="time", **SMALL)
    with pytest.raises(zoo.ConfigError, match="kernel must be one of"):
        zoo.create("mm_gpvae", kernel="laplacian")
    with pytest.raises(zoo.ConfigError, match="parameterization must be one of"):
        zoo.create("mm_gpvae", parameterization="wavelet")
    with pytest.raises(zoo.ConfigError, match="shared_combine"):
        zoo.create("mm_gpvae", shared_combine="max")
    # the default data's 8x8 digit must fit in the frame: refused before any data is built
    with pytest.raises(zoo.ConfigError, match=r"image_side must be >= 8 \(the digit is 8x8\)"):
        zoo.create("mm_gpvae", image_side=7)


def test_presets_set_the_design_and_explicit_sizes_win():
    paper, small = zoo.create("mm_gpvae").config, zoo.create("mm_gpvae", preset="small").config
    assert paper.preset == "paper"
    assert (paper.trials, paper.time_bins, paper.neurons, paper.true_lengthscale) == (
        300,
        60,
        100,
        10.0,
    )
    assert (small.trials, small.time_bins, small.neurons, small.true_lengthscale) == (
        200,
        40,
        50,
        8.0,
    )
    assert zoo.create("mm_gpvae", preset="small", trials=30).config.trials == 30
    assert PRESETS["paper"].variances == (0.3, 0.5, 0.8)
    assert PRESETS["paper"].rotation_degrees == 120.0
    assert (paper.digits, small.digits) == ("cycle", "one")
    with pytest.raises(zoo.ConfigError, match="digits must be one of"):
        zoo.create("mm_gpvae", digits="many")


def test_zoom_ceiling_of_the_paper_generator():
    """|1 + z_b| cannot tell z_b from -2 - z_b: per frame, no function of the zoom reaches
    R^2 0.9 at the paper's variance 0.8, while a narrow z_b (rarely below -1) nearly can."""
    from zoo.experiments.mm_gpvae import zoom_r2_ceiling

    rng = np.random.default_rng(0)
    wide = math.sqrt(0.8) * rng.standard_normal(50_000)
    narrow = 0.2 * rng.standard_normal(50_000)
    assert 0.7 < zoom_r2_ceiling(wide, 0.8) < 0.85
    assert zoom_r2_ceiling(narrow, 0.04) > 0.999


def test_unknown_preset_is_a_one_line_error_before_any_work(monkeypatch):
    from zoo.models import mm_gpvae

    def no_simulation(*args, **kwargs):
        raise AssertionError("the simulation ran before the preset was checked")

    monkeypatch.setattr(mm_gpvae.MMGPVAE, "_paper_simulation", no_simulation)
    with pytest.raises(zoo.ConfigError) as error:
        zoo.create("mm_gpvae", preset="huge")
    message = str(error.value)
    assert "\n" not in message and "preset" in message
    assert "'paper'" in message and "'small'" in message and "huge" in message


def test_generator_kernel_is_gpytorch_rbf():
    """The generator's exp(-d^2 / (2 ell^2)) is GPyTorch's RBFKernel at length-scale ell
    and the model's prior Gram matrix: no factor of 2 (or sqrt 2) between the true and the
    learned length-scale. A kernel exp(-d^2 / ell^2) would differ."""
    t, ell = 30, 10.0
    grid = torch.arange(t, dtype=torch.float64).unsqueeze(-1)
    kernel = gpytorch.kernels.RBFKernel().double()
    kernel.lengthscale = ell
    with torch.no_grad():
        gpy = kernel(grid, grid).to_dense().numpy()
    assert np.allclose(rbf_gram(t, ell), gpy, atol=1e-10)
    model = zoo.create("mm_gpvae", preset="small", time_bins=t)
    with torch.no_grad():
        gram = model.gram(torch.tensor([ell])) - model.config.jitter * torch.eye(t)
    assert np.allclose(rbf_gram(t, ell), gram[0].numpy(), atol=1e-5)
    other = np.exp(-((np.arange(t)[:, None] - np.arange(t)[None, :]) ** 2) / ell**2)
    assert not np.allclose(rbf_gram(t, ell), other, atol=1e-2)


def test_paper_generator_variances_and_lengthscale():
    """The paper preset's latents have the paper's GP variances (0.3 / 0.5 / 0.8), and the
    recipe's profile-likelihood estimate recovers their length-scale from the paths."""
    from zoo.experiments.mm_gpvae import path_lengthscale

    model = zoo.create("mm_gpvae", trials=120, neurons=10, time_bins=60)
    truth, data = model.simulate(seed=1)
    for g, rho in zip("snb", (0.3, 0.5, 0.8), strict=True):
        z = truth[f"z_{g}"][:, 0, :].numpy().astype(np.float64)
        assert np.mean(z**2) == pytest.approx(rho, rel=0.3), g
        assert path_lengthscale(z) == pytest.approx(10.0, rel=0.15), g
    assert float(truth["lengthscale_s"]) == 10.0
    frames = data["images"].reshape(120 * 60, -1)
    # a different "3" in each frame (the paper steps through its MNIST files)
    assert not torch.allclose(frames[0], frames[1], atol=0.2)


@pytest.mark.parametrize("modality", ["spikes", "images"])
def test_single_modality_gpvae(modality, small_data):
    other = {"spikes": "images", "images": "spikes"}[modality]
    drop = {"spikes": "latent_image", "images": "latent_neural"}[modality]
    with pytest.raises(zoo.ConfigError, match=f"modalities='{modality}' needs {drop}=0"):
        zoo.create("mm_gpvae", modalities=modality, **SMALL)
    model = zoo.create("mm_gpvae", modalities=modality, **{drop: 0}, **SMALL)
    assert set(model.data_spec()) == {modality}
    data = {modality: small_data[modality]}
    model_trace, _ = traces(model, model.guide, full_batch({k: v[:4] for k, v in data.items()}))
    assert modality in model_trace.nodes and other not in model_trace.nodes
    result = fit(model, model.guide, data, steps=3, elbo="meanfield", progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    assert set(model.simulate(0)[1]) == {modality}
    with pytest.raises(zoo.ConfigError, match="modalities must be one of"):
        zoo.create("mm_gpvae", modalities="audio")


def test_bad_data_gets_clear_errors(small_data):
    model = zoo.create("mm_gpvae", **SMALL)
    good = {k: v.numpy() for k, v in small_data.items()}
    spikes, images = good["spikes"], good["images"]
    cases = [
        ({"spikes": -spikes - 1, "images": images}, "negative counts"),
        ({"spikes": spikes + 0.5, "images": images}, "not whole numbers"),
        ({"spikes": spikes, "images": images[..., :64]}, "64 pixels per frame but the decoder"),
        ({"spikes": spikes, "images": np.where(images > 0.5, np.nan, images)}, "NaN"),
        (
            {"spikes": spikes.astype(float) * np.nan, "images": images},
            "field 'spikes' has .* NaN",
        ),
        ({"spikes": spikes[:, :10], "images": images[:, :10]}, "time_bins=16"),
        (
            {"spikes": [spikes[0], spikes[1][:10]], "images": [images[0], images[1][:10]]},
            "different lengths.*mask",
        ),
    ]
    for data, message in cases:
        with pytest.raises(DataError, match=message):
            model.validate(data)


def test_affine_r2():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 1))
    assert affine_r2(3 * x + 1, x) == pytest.approx(1.0)
    assert affine_r2(rng.standard_normal((500, 1)), x) < 0.02


# ----- recovery on the paper's simulation ------------------------------------------------------

RECOVERY = dict(preset="small", jitter=1e-3, trials=150, time_bins=30, neurons=40, hidden=48)
# Measured (CPU, one thread, 1200 steps of batch 32, lr 5e-3, meanfield ELBO, product-of-experts
# shared posterior, 120 training / 30 held-out trials). Fourier, fit seed 0 (this test):
# matched R^2 s/n/b 0.967/0.985/0.957, largest cross-assigned 0.003, image R^2 0.84. Other fit
# seeds: 1: 0.968/0.985/0.947 (cross 0.03); 2: 0.970/0.913/0.939 (0.14); 3: 0.968/0.946/0.746
# (0.17). Time domain, seed 1: 0.975/0.988/0.940 (0.008). With the paper's plain average
# instead, seed 1 lost a whole group (R^2 0.005 for z_s), hence the default.
# Measured with the earlier design (preset 'small') and its floor jitter=1e-3, pinned here.
MATCHED_MIN = 0.6  # matched R^2 for every group
MARGIN = 0.4  # matched minus the largest cross-assigned R^2 into the same true group
FOURIER_SLACK = 0.03  # mean matched R^2: Fourier >= time domain - slack


def _recovery(parameterization):
    pyro.set_rng_seed(0)
    model = zoo.create("mm_gpvae", parameterization=parameterization, **RECOVERY)
    truth, data, extras = model.simulate_with_extras(seed=0)
    train = {k: v[:120] for k, v in data.items()}
    test = {k: v[120:] for k, v in data.items()}
    test_truth = {f"z_{g}": truth[f"z_{g}"][120:] for g in "snb"}
    fit(
        model,
        model.guide,
        train,
        steps=1200,
        batch_size=32,
        lr=5e-3,
        elbo="meanfield",
        progress=False,
        log_every=50,
    )
    return model.evaluate(model.guide, test, truth=test_truth, rates=extras["rates"][120:])


@pytest.fixture(scope="module")
def recovery_fourier():
    return _recovery("fourier")


def test_matched_latents_beat_cross_assigned(recovery_fourier):
    m = recovery_fourier
    for g in "snb":
        matched = m[f"r2_{g}_to_{g}"]
        cross = max(m[f"r2_{h}_to_{g}"] for h in "snb" if h != g)
        assert matched > MATCHED_MIN, m
        assert matched > cross + MARGIN, m
    assert m["image_r2"] > 0.5 and m["rate_r2"] > 0.5, m


def test_fourier_is_at_least_as_good_as_time_domain(recovery_fourier):
    time_domain = _recovery("time")
    mean_f = np.mean([recovery_fourier[f"r2_{g}_to_{g}"] for g in "snb"])
    mean_t = np.mean([time_domain[f"r2_{g}_to_{g}"] for g in "snb"])
    assert mean_f >= mean_t - FOURIER_SLACK, (recovery_fourier, time_domain)
