"""Guide families for local latents (``guides.build(..., local=...)``, ``zoo train
--local-guide``), the guide options check and the encoder swap."""

import json
import math
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import guides
import zoo
from guides import local
from inference.data import Field, full_batch
from inference.svi import fit, restore
from tests.sites import latent_sites, traces
from zoo.base import ZooModel
from zoo.cli import main

VAE = {"latent_dim": 3, "hidden": (16,)}
REP4EX = {"hidden": (16,), "outcome_hidden": (8,), "num_rows": 256}
CASES = [("vae_digits", VAE), ("rep4ex", REP4EX)]


@pytest.fixture(scope="module")
def datasets():
    out = {}
    for name, config in CASES:
        data = zoo.create(name, **config).default_data(0)
        out[name] = {k: v[:256] for k, v in data.items()}
    return out


def _heads(guide) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone()
        for name, p in guide.named_parameters()
        if name.startswith("local.heads.")
    }


# ----- the families train their own parameters --------------------------------------------


@pytest.mark.parametrize("family", ["mvn", "flow"])
@pytest.mark.parametrize("name, config", CASES)
def test_local_family_trains_its_heads(name, config, family, datasets):
    pyro.set_rng_seed(0)
    model = zoo.create(name, **config)
    data = datasets[name]
    guide = guides.build("default", model, local=family)
    batch = full_batch({k: v[:4] for k, v in data.items()})
    model_trace, guide_trace = traces(model, guide, batch)
    assert latent_sites(guide_trace) == latent_sites(model_trace)
    # the family is the site's guide: not the encoder's diagonal Normal
    fn = guide_trace.nodes["z"]["fn"]
    assert isinstance(fn, dist.TransformedDistribution), fn
    initial = _heads(guide)
    assert initial, "the family created no parameters"
    model_params = {id(p) for p in model.parameters()}
    assert not any(id(p) in model_params for p in guide.local.parameters())

    result = fit(model, guide, data, steps=8, batch_size=64, lr=1e-2, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    trained = {id(p) for p in result.loss_fn.parameters()}
    assert all(id(p) in trained for p in guide.local.parameters())
    after = _heads(guide)
    assert set(after) == set(initial)
    moved = [k for k in initial if not torch.equal(initial[k], after[k])]
    assert len(moved) == len(initial), f"heads left untrained: {set(initial) - set(moved)}"


def test_mvn_learns_correlations_and_keeps_marginal_scales(datasets):
    pyro.set_rng_seed(0)
    model = zoo.create("vae_digits", **VAE)
    guide = guides.build("normal", model, local="mvn")
    fit(model, guide, datasets["vae_digits"], steps=8, batch_size=64, lr=1e-2, progress=False)
    batch = full_batch({"x": datasets["vae_digits"]["x"][:5]})
    _, guide_trace = traces(model, guide, batch)
    tril = guide_trace.nodes["z"]["fn"].transforms[0].scale_tril  # (5, 3, 3)
    cov = tril @ tril.mT
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    corr = cov / (sd[..., :, None] * sd[..., None, :])
    off = corr - torch.diag_embed(corr.diagonal(dim1=-2, dim2=-1))
    assert off.abs().max() > 0.02  # a full covariance (the diagonal Normal has exactly 0)
    with torch.no_grad():
        _, scale = model.encoder(batch["x"])
    assert torch.allclose(sd, scale, rtol=1e-5)  # the encoder's marginal scales, exactly
    # the draws follow that covariance
    with torch.no_grad():
        draws = poutine.trace(lambda: _vectorized(guide, batch, 4000)).get_trace()
    z = draws.nodes["z"]["value"]
    assert torch.allclose(z.std(0), sd, rtol=0.1)


def _vectorized(guide, batch, num):
    with pyro.plate("_draws", num, dim=-2):
        return guide(batch)


def test_low_rank_mvn_above_max_full(datasets):
    model = zoo.create("vae_digits", **VAE)
    guide = guides.build("normal", model, local="mvn", local_options={"max_full": 2})
    _, guide_trace = traces(model, guide, full_batch({"x": datasets["vae_digits"]["x"][:4]}))
    assert isinstance(guide_trace.nodes["z"]["fn"], dist.LowRankMultivariateNormal)
    rank = math.ceil(math.sqrt(3))
    assert guide.local.heads["z"].out_features == 3 * rank


def test_flow_reaches_sites_with_a_matrix_event():
    """mm_gpvae's local sites are (latents, frequencies) matrices: one vector to a flow."""
    pyro.set_rng_seed(0)
    model = zoo.create("mm_gpvae", trials=8, time_bins=16, neurons=12, image_side=10, hidden=8)
    data = model.default_data(0)
    guide = guides.build("default", model, local="flow")
    result = fit(model, guide, data, steps=2, batch_size=4, lr=1e-3, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    _, guide_trace = traces(model, guide, full_batch({k: v[:3] for k, v in data.items()}))
    for site in model.local_sites:
        node = guide_trace.nodes[site]
        assert node["fn"].event_dim == 2
        assert torch.isfinite(node["fn"].log_prob(node["value"])).all()


def test_heads_round_trip_through_a_checkpoint_and_move_with_the_guide(tmp_path, datasets):
    data = datasets["vae_digits"]
    path = tmp_path / "checkpoint.pt"
    pyro.set_rng_seed(0)
    model = zoo.create("vae_digits", **VAE)
    guide = guides.build("default", model, local="flow")
    fit(model, guide, data, steps=5, batch_size=64, lr=1e-2, checkpoint=path, progress=False)
    trained = _heads(guide)

    pyro.set_rng_seed(1)  # another initialisation: only the checkpoint can restore them
    fresh_model = zoo.create("vae_digits", **VAE)
    fresh = guides.build("default", fresh_model, local="flow")
    restore(fresh_model, fresh, data, path)
    restored = _heads(fresh)
    assert set(restored) == set(trained)
    assert all(torch.equal(restored[k], trained[k]) for k in trained)
    # the flow's buffers (autoregressive order, masks) come back too
    for key, value in guide.local.state_dict().items():
        assert torch.equal(fresh.local.state_dict()[key], value), key
    batch = full_batch({"x": data["x"][:6]})
    with torch.no_grad():
        pyro.set_rng_seed(3)
        a = poutine.trace(guide).get_trace(batch).nodes["z"]["value"]
        pyro.set_rng_seed(3)
        b = poutine.trace(fresh).get_trace(batch).nodes["z"]["value"]
    assert torch.equal(a, b)
    # a checkpoint of another family is refused by name
    other_model = zoo.create("vae_digits", **VAE)
    other = guides.build("default", other_model, local="mvn")
    with pytest.raises(ValueError, match="another model or guide"):
        restore(other_model, other, data, path)

    fresh.double()  # the heads are modules of the guide: .to() moves them
    assert all(p.dtype == torch.float64 for p in fresh.local.parameters())


# ----- the normal family is what the models drew before --------------------------------------


class _OldVAEGuide(torch.nn.Module):
    """vae_digits' local guide as written before the families existed."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "_zoo_model", model)

    def forward(self, batch):
        model = self._zoo_model
        with model.data_plate(batch):
            loc, scale = model.encoder(batch["x"])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        return {}


class _OldHVAEGuide(_OldVAEGuide):
    """collapse_hvae's local guide as written before the families existed."""

    def forward(self, batch):
        model, c = self._zoo_model, self._zoo_model.config
        with model.data_plate(batch):
            with poutine.scale(scale=float(c.beta1)):
                loc, scale = model.encoder(batch["x"])
                z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            with poutine.scale(scale=float(c.beta2)):
                loc2, scale2 = model.encoder2(z1)
                pyro.sample("z2", dist.Normal(loc2, scale2).to_event(1))
        return {}


@pytest.mark.parametrize(
    "name, config, old",
    [("vae_digits", VAE, _OldVAEGuide), ("collapse_hvae", {"hidden": (8,)}, _OldHVAEGuide)],
)
@pytest.mark.parametrize("elbo", ["trace", "jit"])
def test_normal_family_draws_and_losses_are_unchanged(name, config, old, elbo):
    def run(make_guide):
        pyro.set_rng_seed(0)
        model = zoo.create(name, **config)
        data = {k: v[:128] for k, v in model.default_data(0).items()}
        guide = make_guide(model)
        batch = full_batch({k: v[:8] for k, v in data.items()})
        with torch.no_grad():
            guide(batch)  # (a SwappedGuide traces the model once, on its first call)
            pyro.set_rng_seed(1)
            trace = poutine.trace(guide).get_trace(batch)
        trace.compute_log_prob()
        nodes = trace.nodes
        draws = {s: (nodes[s]["value"], nodes[s]["log_prob"]) for s in model.local_sites}
        result = fit(model, guide, data, steps=4, batch_size=32, lr=1e-2, elbo=elbo, progress=False)
        return draws, result.losses

    new_draws, new_losses = run(lambda m: guides.build("normal", m, local="normal"))
    old_draws, old_losses = run(old)
    assert new_losses == old_losses
    for site, (value, log_prob) in old_draws.items():
        assert torch.equal(new_draws[site][0], value) and torch.equal(new_draws[site][1], log_prob)
    # the default guide is that same normal family
    default_draws, default_losses = run(lambda m: guides.build("default", m))
    assert default_losses == old_losses


# ----- which models take which families -----------------------------------------------------


def test_local_kinds_per_model():
    assert guides.local_kinds(zoo.create("vae_digits", **VAE)) == ("normal", "mvn", "flow")
    assert guides.local_kinds(zoo.create("eight_schools")) == ()
    assert guides.local_kinds(zoo.create("niw_meta")) == ("normal",)
    assert guides.local_kinds(zoo.create("niw_meta", local_step="amortized")) == guides.LOCAL_KINDS
    assert guides.local_kinds(zoo.create("qlae")) == ("normal",)
    assert guides.local_kinds(zoo.create("qlae", variant="beta_vae")) == guides.LOCAL_KINDS
    assert guides.local_kinds(zoo.create("pretraining_factor")) == ()
    assert guides.local_kinds(zoo.create("pretraining_factor", marginalize=False)) == (
        guides.LOCAL_KINDS
    )


class _Unconverted(ZooModel):
    """A model whose local guide draws z with pyro.sample directly."""

    name = "unconverted"
    local_sites = ("z",)

    def __init__(self):
        super().__init__()
        self.encoder = guides.NormalEncoder(4, 2, (8,))

    def data_spec(self):
        return {"x": Field(shape=(4,))}

    def model(self, batch):
        with self.data_plate(batch):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            loc = z.sum(-1, keepdim=True).expand(z.shape[:-1] + (4,))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=batch["x"])

    def local_guide(self, batch, global_values=None):
        with self.data_plate(batch):
            loc, scale = self.encoder(batch["x"])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_a_local_guide_the_family_cannot_reach_is_an_error():
    model = _Unconverted()
    batch = full_batch({"x": torch.randn(5, 4)})
    guides.build("normal", model)(batch)  # the normal family is its own guide
    guide = guides.build("normal", model, local="flow")
    with pytest.raises(guides.GuideError, match=r"cannot reach site\(s\) \['z'\].*unconverted"):
        guide(batch)


# ----- bad input: one line, the option and the valid choices, before any work --------------


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_unknown_local_kind():
    model = zoo.create("vae_digits", **VAE)
    with pytest.raises(guides.GuideError) as error:
        guides.build("normal", model, local="iaf")
    assert _one_line(error) == (
        "unknown local guide kind 'iaf'; valid local kinds: ['normal', 'mvn', 'flow']"
    )
    assert isinstance(error.value, ValueError)


def test_local_family_for_a_model_without_local_latents():
    with pytest.raises(guides.GuideError) as error:
        guides.build("normal", zoo.create("eight_schools"), local="mvn")
    assert "local guide 'mvn' needs local latents" in _one_line(error)
    assert "'eight_schools' has none; valid local kinds for it: ['normal']" in str(error.value)
    guides.build("normal", zoo.create("eight_schools"), local="normal")  # the default


@pytest.mark.parametrize(
    "name, config, why",
    [("niw_meta", {}, "closed form"), ("qlae", {"hidden": (8,)}, "point mass")],
)
def test_local_family_for_a_model_that_keeps_its_local_guide(name, config, why):
    model = zoo.create(name, **config)
    for kind in ("default", "normal"):
        with pytest.raises(guides.GuideError) as error:
            guides.build(kind, model, local="flow")
        message = _one_line(error)
        assert f"model '{name}' keeps its own local guide" in message and why in message
        assert "valid local kinds for it: ['normal']" in message


def test_guide_options_are_checked_against_the_family():
    model = zoo.create("vae_digits", **VAE)
    with pytest.raises(guides.GuideError) as error:
        guides.build("normal", model, rank=3)
    assert _one_line(error) == (
        "guide kind 'normal' takes no option(s) ['rank']; its options: "
        "['init_loc_fn', 'init_scale']"
    )
    with pytest.raises(guides.GuideError, match=r"'default' takes no option\(s\) \['rank'\]; it "):
        guides.build("default", model, rank=3)
    with pytest.raises(guides.GuideError, match=r"its options: \['hidden_dim', 'num_transforms'\]"):
        guides.build("flow", model, init_scale=0.1)
    schools = zoo.create("eight_schools")
    assert guides.build("lowrank", schools, rank=2) is not None
    assert guides.kind_options("lowrank") == ["init_scale", "rank"]
    # the swap's own plumbing is not a user option
    with pytest.raises(guides.GuideError, match="create_plates"):
        guides.build("normal", schools, create_plates=None)


def test_local_options_are_checked_against_the_family():
    model = zoo.create("vae_digits", **VAE)
    with pytest.raises(guides.GuideError) as error:
        guides.build("normal", model, local="mvn", local_options={"num_transforms": 2})
    assert _one_line(error) == (
        "local guide 'mvn' takes no option(s) ['num_transforms']; its options: "
        "['context', 'max_full', 'rank']"
    )
    with pytest.raises(guides.GuideError, match="local guide 'normal' takes no option"):
        guides.build("normal", model, local_options={"rank": 2})
    with pytest.raises(guides.GuideError, match="rank must be a positive integer, got 0"):
        guides.build("normal", model, local="mvn", local_options={"rank": 0})
    with pytest.raises(guides.GuideError, match="num_transforms must be a positive integer"):
        guides.build("normal", model, local="flow", local_options={"num_transforms": 1.5})
    with pytest.raises(guides.GuideError, match=r"must be one of \['loc_scale', 'hidden'\]"):
        guides.build("normal", model, local="mvn", local_options={"context": "features"})
    guide = guides.build("normal", model, local="flow", local_options={"num_transforms": 1})
    assert guide.local.num_transforms == 1 and guide.local.context == "hidden"
    assert guides.build("normal", model, local="mvn").local.context == "loc_scale"


# ----- the encoder swap ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["normal", "flow"])
def test_encoder_swap_leaves_the_model_alone(family, datasets):
    data = datasets["vae_digits"]
    model = zoo.create("vae_digits", **VAE)
    own = model.encoder
    own_state = {k: v.clone() for k, v in own.state_dict().items()}
    encoder = guides.NormalEncoder(64, 3, (8, 8))
    guide = guides.build("default", model, local=family, encoder=encoder)
    assert model.encoder is own and guide.encoder is encoder
    assert type(encoder) is guides.NormalEncoder  # not converted in place either
    result = fit(model, guide, data, steps=5, batch_size=64, lr=1e-2, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    trained = {id(p) for p in result.loss_fn.parameters()}
    assert all(id(p) in trained for p in encoder.parameters())
    # the model's own encoder took no part: not a single value moved
    assert all(torch.equal(own.state_dict()[k], v) for k, v in own_state.items())
    # the guide's draws come from the swapped encoder
    batch = full_batch({"x": data["x"][:4]})
    _, guide_trace = traces(model, guide, batch)
    if family == "normal":
        with torch.no_grad():
            loc, _ = encoder(batch["x"])
        assert torch.allclose(guide_trace.nodes["z"]["fn"].base_dist.loc, loc)
    # the model's default guide is untouched by another guide's swap
    assert model.guide.encoder is None


def test_evaluate_reads_the_guide_encoder(datasets):
    data = datasets["rep4ex"]
    model = zoo.create("rep4ex", **REP4EX)
    encoder = guides.NormalEncoder(10, 2, (4,))
    guide = guides.build("default", model, encoder=encoder)
    with torch.no_grad():
        assert torch.equal(model.representation(data), model.encoder(data["x"])[0])
        with local.using(guide):
            assert torch.equal(model.representation(data), encoder(data["x"])[0])


def test_bad_encoder_swaps_are_refused():
    model = zoo.create("vae_digits", **VAE)
    with pytest.raises(guides.GuideError, match="encoder must be a torch.nn.Module, got str"):
        guides.build("normal", model, encoder="not a module")
    with pytest.raises(guides.GuideError, match="'eight_schools' has no local latents"):
        guides.build("normal", zoo.create("eight_schools"), encoder=guides.NormalEncoder(8, 1))


class _LogScaleEncoder(torch.nn.Module):
    """A user's encoder that returns a log-scale (its values are partly negative)."""

    def __init__(self, latent: int):
        super().__init__()
        self.net = torch.nn.Linear(64, 2 * latent)

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


class _NoTupleEncoder(torch.nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.net = torch.nn.Linear(64, latent)

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize(
    "encoder, message",
    [
        (_LogScaleEncoder(VAE["latent_dim"]), "not a log-scale"),
        (guides.NormalEncoder(64, VAE["latent_dim"] + 3, (8,)), "the model's latent needs"),
        (_NoTupleEncoder(VAE["latent_dim"]), "returned a Tensor; it must return (loc, scale)"),
    ],
    ids=["log_scale", "latent_size", "not_a_pair"],
)
def test_encoder_contract_is_checked_before_the_first_step(encoder, message, datasets):
    """What a user's encoder must return, named in one error raised before any step (a
    log-scale used to give a NaN at step 1; a wrong size, a shape error with a trace)."""
    model = zoo.create("vae_digits", **VAE)
    guide = guides.build("default", model, encoder=encoder)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with pytest.raises(guides.GuideError, match=re.escape(message)):
        fit(model, guide, datasets["vae_digits"], steps=5, batch_size=64, progress=False)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in before.items())


# ----- the command line --------------------------------------------------------------------


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("zoo: error: "), err
    return err[0]


def test_cli_local_guide_flow_trains_diagnoses_and_samples(tmp_path, capsys):
    out = tmp_path / "flow"
    argv = ["train", "vae_digits", "--local-guide", "flow", "--steps", "5", "--no-progress"]
    assert main([*argv, "--set", "hidden=[32]", "--out", str(out)]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["local_guide"] == "flow" and record["guide"] == "default"
    assert "| local guide | flow |" in (out / "report.md").read_text()
    from inference.checkpoint import load_checkpoint

    state, meta = load_checkpoint(out / "checkpoint.pt")
    assert meta["local_guide"] == "flow"
    assert any(".local.heads.z." in key for key in state["module"])
    (out / "report.md").unlink()
    assert main(["diagnose", str(out)]) == 0  # rebuilds the flow to load its heads
    assert (out / "report.md").exists()
    assert main(["sample", str(out), "--num", "3"]) == 0
    with np.load(out / "samples.npz") as samples:
        assert samples["x"].shape[0] == 3
    capsys.readouterr()
    # resuming with another family is refused by name
    code = main([*argv[:2], "--local-guide", "mvn", "--steps", "5", "--no-progress",
                 "--set", "hidden=[32]", "--out", str(out), "--resume"])  # fmt: skip
    assert code == 2
    assert 'local_guide="flow", not "mvn"' in _error_line(capsys)


def test_cli_run_without_local_guide_key_loads_as_normal(tmp_path, capsys):
    out = tmp_path / "old"
    argv = ["train", "vae_digits", "--steps", "3", "--no-progress", "--set", "hidden=[16]"]
    assert main([*argv, "--out", str(out)]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record.pop("local_guide") == "normal"
    (out / "config.json").write_text(json.dumps(record))  # as written before the option
    assert main(["diagnose", str(out)]) == 0
    assert "| local guide | normal |" in (out / "report.md").read_text()
    assert main([*argv, "--out", str(out), "--resume"]) == 0  # the resume check agrees


def test_cli_bad_local_guide_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "vae_digits", "--local-guide", "iaf", "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert "--local-guide" in line and "'normal', 'mvn', 'flow'" in line
    assert main(["train", "eight_schools", "--local-guide", "flow", "--out", str(out)]) == 2
    assert "valid local kinds for it: ['normal']" in _error_line(capsys)
    assert main(["train", "niw_meta", "--local-guide", "mvn", "--out", str(out)]) == 2
    assert "keeps its own local guide" in _error_line(capsys)
    assert not out.exists()


def test_cli_help_and_info_name_the_local_kinds(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--local-guide LOCAL" in text and "(default: normal)" in text
    assert all(f"{kind}, " in text for kind in ("normal", "mvn", "flow"))
    assert main(["info", "vae_digits"]) == 0
    out = capsys.readouterr().out
    assert "local guide kinds (local sites, --local-guide): ['normal', 'mvn', 'flow']" in out
    assert "guide kinds (global sites, --guide): ['default', 'delta'" in out
    assert main(["info", "eight_schools"]) == 0
    assert "--local-guide): none (no local latents)" in capsys.readouterr().out


def test_sequence_encoder_is_causal_per_step():
    import torch

    from guides.encoders import SequenceEncoder

    enc = SequenceEncoder(2, 3, 8, per_step=True)
    x = torch.randn(4, 6, 2)
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (4, 6, 3) and bool((scale > 0).all())
    changed = x.clone()
    changed[:, 4:] += 1.0  # the future must not change the earlier steps' posteriors
    assert torch.allclose(enc(changed)[0][:, :4], loc[:, :4])
    assert SequenceEncoder(2, 3, 8)(x)[0].shape == (4, 3)
