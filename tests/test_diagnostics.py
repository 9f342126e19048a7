"""Diagnostics: k-hat, SBC, latent activity (posterior collapse) and the plots."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import zoo
from inference.diagnostics import (
    SBCResult,
    collapse_table,
    guide_khat,
    khat_verdict,
    latent_activity,
    pointwise_khat,
    sbc,
)
from inference.diagnostics.plots import (
    forest_figure,
    pair_figure,
    plot_elbo,
    plot_ppc,
    plot_rank_histogram,
    plot_trace,
    rank_figure,
)
from inference.diagnostics.sbc import ALTERNATIVES, SBCPowerWarning, sbc_power, uniformity_pvalue
from inference.posterior import posterior
from tests.mcmc_helpers import quiet_nuts

# ----- k-hat --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, verdict",
    [
        (-0.2, "good"),
        (0.0, "good"),
        (0.499, "good"),
        (0.5, "usable"),
        (0.699, "usable"),
        (0.7, "do not trust"),
        (1.3, "do not trust"),
        (math.inf, "do not trust"),
        (math.nan, "do not trust"),
    ],
)
def test_khat_verdict_thresholds(k, verdict):
    assert khat_verdict(k) == verdict


class ConjugateNormal(PyroModule):
    """mu ~ N(0, 1), y_n ~ N(mu, 1): the posterior is N(sum y / (n + 1), 1 / (n + 1))."""

    max_plate_nesting = 1

    def forward(self, batch):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", batch.size, subsample=batch.index):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=batch["y"])


class ScaledPosterior(PyroModule):
    """The exact posterior of :class:`ConjugateNormal` with its sd multiplied by ``factor``."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, batch):
        n = batch["y"].shape[0]
        loc = batch["y"].sum() / (n + 1)
        pyro.sample("mu", dist.Normal(loc, self.factor / math.sqrt(n + 1)))


@pytest.fixture
def conjugate_data():
    return {"y": 1.0 + torch.randn(20, generator=torch.Generator().manual_seed(0))}


def test_guide_khat_tells_a_wide_guide_from_a_narrow_one(conjugate_data):
    model = ConjugateNormal()
    # wider than the posterior: bounded weights; a third as wide: a heavy-tailed ratio
    # (measured over seeds 0-4: k from -1.74 to -1.52, and from 0.79 to 1.03)
    wide = guide_khat(model, ScaledPosterior(1.5), conjugate_data, num_particles=4000, seed=0)
    narrow = guide_khat(model, ScaledPosterior(0.33), conjugate_data, num_particles=4000, seed=0)
    assert set(wide) == {"khat", "verdict"}
    assert wide["verdict"] == "good", wide
    assert narrow["verdict"] == "do not trust", narrow
    assert narrow["khat"] > wide["khat"] + 0.5


# ----- SBC ----------------------------------------------------------------------------------

NUM_Y = 5


def _simulate(seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn((), generator=g)
    theta = torch.randn(2, generator=g)
    y = mu + theta + torch.randn(NUM_Y, 2, generator=g)
    return {"mu": mu, "theta": theta}, {"y": y}


def _exact_draws(sd_factor=1.0, shift=0.0, num_draws=49):
    """Posterior draws of the conjugate toy (mu and theta independent N(0, 1) priors on
    the two columns' means, column j ~ N(mu + theta_j, 1)): optionally miscalibrated."""

    def fit_draws(data, seed):
        # mu and theta are not separately identified; draw from the exact joint posterior
        # of (mu, theta) given y: Gaussian with precision I + n * A^T A
        g = torch.Generator().manual_seed(10_000 + seed)
        a = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # column mean = mu + theta_j
        precision = torch.eye(3) + NUM_Y * a.T @ a
        cov = torch.linalg.inv(precision)
        mean = cov @ (a.T @ data["y"].sum(0))
        chol = torch.linalg.cholesky(cov)
        z = mean + shift + sd_factor * torch.randn(num_draws, 3, generator=g) @ chol.T
        return {"mu": z[:, 0], "theta": z[:, 1:]}

    return fit_draws


def test_sbc_passes_exact_posterior_draws():
    result = sbc(_simulate, _exact_draws(), num_replicates=200, params=["mu", "theta"], seed=0)
    assert isinstance(result, SBCResult)
    assert result.num_draws == 49
    assert set(result.ranks) == {"mu", "theta[0]", "theta[1]"}
    assert all(len(r) == 200 and r.min() >= 0 and r.max() <= 49 for r in result.ranks.values())
    assert min(result.pvalues.values()) > 0.01, result.pvalues
    assert result.passed()
    # 200 replicates: the test would catch each stated miscalibration almost surely
    assert result.min_power >= 0.99 and not result.underpowered, result.describe()
    print(result.describe())


def test_sbc_power_grows_with_replicates_and_the_null_keeps_its_level():
    few, enough = sbc_power(20, 49), sbc_power(100, 49)
    assert set(few) == set(ALTERNATIVES)
    assert max(few.values()) < 0.5 and min(enough.values()) > 0.85, (few, enough)
    # under uniform ranks the combined test rejects at about its level, not more
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 50, size=(4000, 100))
    rejected = np.mean([uniformity_pvalue(r, 49, 20) < 0.01 for r in ranks])
    assert rejected < 0.02, rejected


def test_sbc_warns_when_underpowered():
    with pytest.warns(SBCPowerWarning, match="underpowered"):
        result = sbc(_simulate, _exact_draws(), num_replicates=10, params=["mu"], seed=0)
    assert result.underpowered and "underpowered" in result.describe()


@pytest.mark.parametrize(
    "sd_factor, shift",
    [(0.5, 0.0), (2.0, 0.0), (1.0, 0.5)],
    ids=["overconfident", "underconfident", "shifted"],
)
def test_sbc_flags_miscalibrated_draws(sd_factor, shift):
    fitter = _exact_draws(sd_factor=sd_factor, shift=shift)
    result = sbc(_simulate, fitter, num_replicates=200, params=["mu", "theta"], seed=0)
    assert max(result.pvalues.values()) < 0.01, result.pvalues
    assert not result.passed(0.01)


def test_sbc_refuses_draw_counts_that_change():
    def uneven(data, seed):
        return {"mu": torch.randn(10 + seed)}

    with pytest.raises(ValueError, match="same number"):
        sbc(_simulate, uneven, num_replicates=3, params=["mu"])
    with pytest.raises(KeyError, match="nope"):
        sbc(_simulate, _exact_draws(), num_replicates=3, params=["nope"])


# ----- posterior collapse -------------------------------------------------------------------

LATENT = 4
DEAD = (1, 3)


@pytest.fixture(scope="module")
def vae():
    """A small VAE whose encoder is set so that q(z_d | x) = p(z_d) = N(0, 1) exactly for
    the dims in DEAD, and the other dims' means vary strongly with x."""
    pyro.set_rng_seed(0)
    model = zoo.create("vae_digits", latent_dim=LATENT, hidden=(16,))
    data = {k: v[:200] for k, v in model.default_data().items()}
    last = model.encoder.net[-1]
    with torch.no_grad():
        for d in range(LATENT):
            if d in DEAD:
                last.weight[d] = 0.0
                last.bias[d] = 0.0
                last.weight[LATENT + d] = 0.0
                # softplus(raw) + 1e-4 = 1 (NormalEncoder's scale)
                last.bias[LATENT + d] = float(torch.log(torch.expm1(torch.tensor(1 - 1e-4))))
            else:
                last.weight[d] *= 10.0
    return model, data


def test_latent_activity_finds_exactly_the_dead_dimensions(vae):
    model, data = vae
    report = latent_activity(model, model.guide, data)
    assert set(report) == {"z"}
    z = report["z"]
    assert z["active"] == [d not in DEAD for d in range(LATENT)]
    assert z["active_units"] == LATENT - len(DEAD)
    assert len(z["kl_per_dim"]) == LATENT
    for d, kl in enumerate(z["kl_per_dim"]):
        if d in DEAD:
            assert abs(kl) < 1e-6, (d, kl)
        else:
            assert kl > 0.01, (d, kl)
    assert z["total_kl"] == pytest.approx(sum(z["kl_per_dim"]))
    # a threshold above every dimension's activity leaves none active
    none = latent_activity(model, model.guide, data, sites=["z"], threshold=1e9)
    assert none["z"]["active_units"] == 0
    with pytest.raises(ValueError, match="not local latent"):
        latent_activity(model, model.guide, data, sites=["x"])


def test_latent_activity_counts_agree_or_say_why(vae):
    """A dimension whose E[z|x] moves a little (Var 0.05 > 0.01) at the prior's scale carries
    about 0.025 nats: counted active and not collapsed by the loose criteria, but not
    informative; the table says the criteria disagree and gives each count."""
    model, data = vae
    faint = model.encoder.net[-1]
    with torch.no_grad():
        saved = faint.weight.clone(), faint.bias.clone()
        faint.weight[LATENT + 2] = 0.0  # unit scale, as for the dead dims
        faint.bias[LATENT + 2] = faint.bias[LATENT + 1]
        mean = model.encoder(data["x"])[0][:, 2]
        faint.weight[2] *= (0.05 / mean.var(unbiased=False)).sqrt()
        faint.bias[2] -= model.encoder(data["x"])[0][:, 2].mean()  # centred: KL = Var / 2
        report = latent_activity(model, model.guide, data)["z"]
        faint.weight.copy_(saved[0])
        faint.bias.copy_(saved[1])
    assert report["active_units"] == 2 and report["collapsed_dims"] == 2
    assert report["kl_per_dim"][2] == pytest.approx(0.025, rel=0.2)
    assert report["informative"] == [True, False, False, False]
    (row,) = collapse_table({"z": report})
    assert row["informative dims (active, KL >= 0.1 nats)"] == 1
    assert row["criteria agree"].startswith("no: 2 move E[z|x] and 2 have KL >= 0.01 nats")
    healthy = collapse_table(latent_activity(model, model.guide, data))
    assert healthy[0]["criteria agree"] == "yes"


def test_pointwise_khat_one_finite_value_per_row(vae):
    model, data = vae
    pyro.set_rng_seed(0)
    k = pointwise_khat(model, model.guide, data, num_particles=100)
    assert k.shape == (200,)
    assert np.isfinite(k).all()
    assert len(np.unique(k)) > 1


# ----- plots --------------------------------------------------------------------------------


def _check_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path, vae):
    model, data = vae
    path = plot_elbo(
        np.linspace(500.0, 100.0, 300) + np.random.default_rng(0).normal(size=300),
        tmp_path / "elbo.png",
    )
    _check_png(path)

    with pytest.warns(SBCPowerWarning):  # 40 replicates: enough for a picture, not a test
        result = sbc(_simulate, _exact_draws(), num_replicates=40, params=["mu", "theta"])
    _check_png(plot_rank_histogram(result, tmp_path / "ranks.png"))

    idata = posterior(model, data, guide=model.guide, num_draws=100)  # 64 pixels per row
    _check_png(plot_ppc(idata, tmp_path / "ppc.png", num_pp_samples=10))

    schools = zoo.create("eight_schools")
    eight = schools.default_data()
    mcmc = quiet_nuts(
        schools, eight, chains=2, warmup=30, draws=30, jit_compile=False, progress=False
    )
    named = dict(dims=schools.dims(), coords=schools.coords(eight))
    trace_idata = posterior(schools, eight, mcmc=mcmc, **named)
    _check_png(plot_trace(trace_idata, tmp_path / "trace.png", var_names=["mu", "tau"]))
    _check_png(plot_trace(trace_idata, tmp_path / "trace_all.png"))
    for name in ("elbo", "ranks", "ppc", "trace", "trace_all"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000

    # the figures a notebook shows inline: one panel per chain/variable as ArviZ draws them
    assert len(rank_figure(trace_idata, ["mu", "tau"]).axes) == 2
    vi_idata = posterior(schools, eight, guide=schools.guide, num_draws=50, **named)
    forest = forest_figure({"NUTS": trace_idata, "VI": vi_idata}, ["mu", "tau"])
    assert [t.get_text() for t in forest.axes[0].get_legend().get_texts()] == ["VI", "NUTS"]
    pair = pair_figure(trace_idata, ["theta", "tau"], coords={"school": ["Choate"]})
    assert len(pair.axes) == 1 and pair.axes[0].get_ylabel() == "tau"
