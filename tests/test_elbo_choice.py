"""``elbo="auto"`` takes the analytic KL where every latent site has one, enumeration where
the model enumerates, the sampled KL otherwise, and says why; an analytic estimator asked
for where a KL has no closed form is refused before training."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from inference.data import full_batch
from inference.elbos import choose_elbo, kl_forms
from inference.svi import fit


class _Toy(torch.nn.Module):
    """z ~ prior (Normal, or Student-t: no closed-form KL from a Normal), x ~ N(z, 1); an
    optional enumerated class c."""

    static_structure = True

    def __init__(self, prior="normal", enumerate_class=False):
        super().__init__()
        self.prior, self.enumerate_class = prior, enumerate_class

    def forward(self, batch):
        with pyro.plate("data", batch.size, subsample=batch.index):
            p = dist.Normal(0.0, 1.0) if self.prior == "normal" else dist.StudentT(3.0, 0.0, 1.0)
            z = pyro.sample("z", p)
            if self.enumerate_class:
                c = pyro.sample(
                    "c", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"}
                )
                z = z + c.float()
            pyro.sample("x", dist.Normal(z, 1.0), obs=batch["x"])


class _Guide(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(n))

    def forward(self, batch):
        with pyro.plate("data", batch.size, subsample=batch.index):
            pyro.sample("z", dist.Normal(self.loc[batch.index], 1.0))


def _batch():
    return full_batch({"x": torch.randn(8)})


def test_auto_takes_the_analytic_kl_where_every_site_has_one():
    choice = choose_elbo("auto", _Toy(), _Guide(8), _batch())
    assert choice.name == "jit_meanfield"
    assert "closed-form KL against the prior at z" in choice.reason
    assert choose_elbo("auto", _Toy(), _Guide(8), _batch(), jit=False).name == "meanfield"


def test_auto_samples_the_kl_where_a_site_has_no_closed_form():
    forms = kl_forms(_Toy("student"), _Guide(8), _batch())
    assert forms.sampled == ("z",) and forms.closed == ()
    choice = choose_elbo("auto", _Toy("student"), _Guide(8), _batch())
    assert choice.name == "jit" and "no closed-form KL at z" in choice.reason


def test_auto_enumerates_where_the_model_enumerates():
    choice = choose_elbo("auto", _Toy(enumerate_class=True), _Guide(8), _batch())
    assert choice.name == "enum" and "enumerates c" in choice.reason


def test_an_analytic_estimator_without_a_closed_form_is_refused_before_training():
    model, guide = _Toy("student"), _Guide(8)
    before = guide.loc.detach().clone()
    message = r"elbo 'meanfield' needs a closed-form KL at some latent site, and none of z .*jit"
    with pytest.raises(ValueError, match=message):
        fit(model, guide, {"x": torch.randn(8)}, steps=5, elbo="meanfield", progress=False)
    assert torch.equal(guide.loc.detach(), before)


def test_fit_reports_the_estimator_it_chose():
    model = zoo.create("vae_digits", hidden=(16,))
    result = fit(model, model.guide, model.default_data(), steps=2, batch_size=32,
                 progress=False)  # fmt: skip
    assert result.elbo == "jit_meanfield" and "closed-form KL" in result.elbo_reason
    explicit = fit(model, model.guide, model.default_data(), steps=2, batch_size=32,
                   elbo="trace", progress=False)  # fmt: skip
    assert (explicit.elbo, explicit.elbo_reason) == ("trace", "asked for")


def test_zoo_models_get_the_analytic_kl_where_a_site_has_one():
    # gcrl's priors are flows (no closed form anywhere); pv_rnn's first step is a Normal
    # against a Normal, its later steps are not
    gcrl = zoo.create("gcrl", **zoo.get("gcrl").tiny)
    batch = full_batch(gcrl.default_data(seed=0))
    assert choose_elbo("auto", gcrl, gcrl.default_guide(), batch).name == "trace"
    pv_rnn = zoo.create("pv_rnn", **zoo.get("pv_rnn").tiny)
    choice = choose_elbo("auto", pv_rnn, pv_rnn.default_guide(),
                         full_batch(pv_rnn.default_data(seed=0)))  # fmt: skip
    assert choice.name == "meanfield" and "sampled at z" in choice.reason


def test_a_kl_estimated_by_draws_counts_as_sampled():
    """lzn's zone posterior has a registered KL (for the diagnostics) that is a 16-draw
    estimate: auto takes the sampled term, one draw, and the estimate itself carries a
    gradient to the anchors through its reparameterised draws."""
    from inference.latent_flow import ZoneLatent

    lzn = zoo.create("lzn", **zoo.get("lzn").tiny)
    batch = full_batch(lzn.default_data(seed=0))
    choice = choose_elbo("auto", lzn, lzn.default_guide(), batch)
    assert choice.name == "trace" and "no closed-form KL at z" in choice.reason
    anchors = torch.randn(6, 2, requires_grad=True)
    # a prior other than N(0, I), whose cross-entropy term depends on where each zone lies
    prior = pyro.distributions.Normal(torch.full((6, 2), 2.0), 1.0).to_event(1)
    kl = torch.distributions.kl_divergence(ZoneLatent(anchors, steps=4), prior)
    (grad,) = torch.autograd.grad(kl[0], anchors)
    assert grad[0].abs().sum() > 1e-3  # row 0's KL moves with its own anchor


class _Positive(torch.nn.Module):
    """s ~ HalfNormal(1), x ~ N(0, s): the constrained site an autoguide maps with a Jacobian."""

    def forward(self, batch):
        s = pyro.sample("s", dist.HalfNormal(1.0))
        with pyro.plate("data", batch.size, subsample=batch.index):
            pyro.sample("x", dist.Normal(0.0, s), obs=batch["x"])


def test_meanfield_keeps_the_jacobian_of_an_autoguides_constrained_site():
    # Pyro's KL(Delta || p) = -log p(v) drops the Delta's log-density; the zoo's meanfield
    # ELBO scores such a site by its sampled term, so it equals Trace_ELBO draw for draw
    from pyro.infer.autoguide import AutoNormal

    from inference.elbos import make_elbo

    model, batch = _Positive(), full_batch({"x": 2.0 * torch.randn(50)})
    guide = AutoNormal(model)
    guide(batch)
    values = {}
    for name in ("trace", "meanfield"):
        pyro.set_rng_seed(0)
        values[name] = float(make_elbo(name).differentiable_loss(model, guide, batch))
    assert values["meanfield"] == pytest.approx(values["trace"], rel=1e-6)
    assert choose_elbo("auto", model, guide, batch).name == "trace"  # nothing analytic
