"""The contract every registered zoo model keeps, checked on each model in the registry with
its ``tiny`` config. A model's own test file (tests/models/test_<family>.py) holds only what
is the paper's own: recovery, the paper's check, the model's own bad inputs."""

import dataclasses
import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints

import guides
import zoo
from inference.data import Batch, DataError, full_batch
from inference.svi import fit
from inference.traces import observed_sites
from tests.cli_helpers import error_line
from tests.sites import latent_sites, traces
from zoo.cli import main

MODELS = zoo.list_models()

#: what a complete run folder holds after ``zoo train``
RUN_FILES = ("config.json", "metrics.csv", "checkpoint.pt", "idata.nc", "diagnostics.json")


def tiny(name: str, **overrides):
    """Model ``name`` with its tiny config (and ``overrides``)."""
    return zoo.create(name, **{**zoo.get(name).tiny, **overrides})


def tiny_sets(name: str) -> list[str]:
    """The tiny config as ``zoo train --set`` options."""
    out = []
    for key, value in zoo.get(name).tiny.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        out += ["--set", f"{key}={text}"]
    return out


def few_rows(data, rows: int = 16):
    return {k: v[:rows] for k, v in data.items()}


@pytest.fixture(scope="module")
def tiny_data():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = tiny(name).default_data(seed=0)
        return cache[name]

    return get


# ----- declaration, sites and data ---------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_model_declares_its_contract(name):
    cls = zoo.get(name)
    assert cls.name == name
    assert cls.__doc__ and len(cls.__doc__.strip()) > 20
    assert 10 < len(cls.summary) <= 88 and "\n" not in cls.summary, "one-line summary"
    others = [zoo.get(n).summary for n in MODELS if n != name]
    assert cls.summary not in others, "each model (and variant) its own summary"
    assert set(cls.tiny) <= {f.name for f in dataclasses.fields(cls.Config)}, "tiny keys"
    model = tiny(name)
    assert model.data_spec(), "a model must describe its data"
    assert set(model.observed_sites) <= set(model.data_spec())


@pytest.mark.parametrize("name", MODELS)
def test_model_and_default_guide_sites_match(name, tiny_data):
    model = tiny(name)
    batch = full_batch(few_rows(tiny_data(name)))
    model_trace, guide_trace = traces(model, model.guide, batch)
    assert latent_sites(guide_trace) == latent_sites(model_trace)
    observed = set(observed_sites(model_trace))
    assert observed == set(model.observed_sites)
    model_trace.compute_log_prob()
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and "log_prob" in site:
            assert torch.isfinite(site["log_prob"]).all()


@pytest.mark.parametrize("name", MODELS)
def test_default_data_is_seeded_and_valid(name, tiny_data):
    model = tiny(name)
    first, second = tiny_data(name), model.default_data(seed=0)
    assert first.keys() == model.data_spec().keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"default_data(0) differs on '{key}'"
    assert model.validate({k: v.numpy() for k, v in first.items()}).keys() == first.keys()


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trips_through_json(name):
    model = tiny(name)
    restored = zoo.create(name, json.loads(model.config_json()))
    assert restored.config == model.config


# ----- training ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_short_fit_gives_finite_decreasing_loss(name, tiny_data):
    model = tiny(name)
    result = fit(
        model, model.guide, tiny_data(name), steps=60, batch_size=64, lr=5e-3, progress=False
    )
    assert len(result.losses) == 60
    assert all(math.isfinite(v) for v in result.losses)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_zoo_train_diagnose_and_sample_with_the_tiny_config(name, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", name, *tiny_sets(name), "--no-progress", "--out", str(run)]) == 0
    for file in RUN_FILES:
        assert (run / file).is_file() and (run / file).stat().st_size > 0, file
    figures = sorted((run / "figures").glob("*.png"))
    assert figures, "no figures written"
    report = (run / "report.md").read_text()
    assert "failed (" not in report, report
    before = (run / "idata.nc").stat().st_size
    assert main(["diagnose", str(run)]) == 0
    assert (run / "idata.nc").stat().st_size == pytest.approx(before, rel=0.5)
    assert main(["sample", str(run), "--num", "3"]) == 0
    samples = np.load(run / "samples.npz")
    assert samples.files and all(samples[k].shape[0] == 3 for k in samples.files)
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODELS if zoo.get(n).supports_nuts])
def test_zoo_train_with_nuts_diagnose_and_sample(name, tmp_path, capsys, monkeypatch):
    """``--engine nuts`` end to end for every model NUTS can sample, with the report's idata
    covering fewer rows than NUTS ran on (per-row draws must be cut to them; this crashed
    after sampling once)."""
    import zoo.cli.report

    monkeypatch.setattr(zoo.cli.report, "LOCAL_IDATA_ROWS", 7)
    run = tmp_path / "run"
    argv = ["train", name, *tiny_sets(name), "--engine", "nuts", "--steps", "4", "--chains", "1"]
    assert main([*argv, "--no-progress", "--out", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "failed (" not in report, report
    idata = zoo.cli.report.read_idata(run / "idata.nc")
    for site in tiny(name).local_sites:  # the idata's rows, not every row NUTS ran on
        assert idata.posterior[site].shape[2] == 7, idata.posterior[site].shape
    assert main(["diagnose", str(run)]) == 0
    assert main(["sample", str(run), "--num", "3"]) == 0
    samples = np.load(run / "samples.npz")
    assert samples.files and all(samples[k].shape[0] == 3 for k in samples.files)
    capsys.readouterr()


@pytest.mark.parametrize("kind", sorted(guides.KINDS))
@pytest.mark.parametrize("name", MODELS)
def test_every_guide_kind_trains(name, kind, tiny_data):
    model = tiny(name)
    data = tiny_data(name)
    guide = guides.build(kind, model)
    result = fit(model, guide, data, steps=3, batch_size=32, lr=1e-3, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    size = len(next(iter(data.values())))
    # a joint guide over per-row globals (eight schools' eta) cannot follow a subsample
    rows = size if size <= 64 else 4
    batch = Batch(few_rows(data, rows), index=torch.arange(rows), size=size)
    model_trace, guide_trace = traces(model, guide, batch)  # the rows of the fitted data
    assert latent_sites(guide_trace) == latent_sites(model_trace)


LOCAL_CASES = [
    (name, kind)
    for name in MODELS
    for kind in guides.local_kinds(zoo.create(name, **zoo.get(name).tiny))
    if kind != "normal"  # the default guide's family, run by every test above
]


@pytest.mark.parametrize("name, local", LOCAL_CASES)
def test_every_local_guide_family_trains(name, local, tiny_data):
    model = tiny(name)
    data = tiny_data(name)
    guide = guides.build("default", model, local=local)
    result = fit(model, guide, data, steps=3, batch_size=32, lr=1e-3, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    heads = list(guide.local.parameters())
    assert heads and all(id(p) in {id(q) for q in result.loss_fn.parameters()} for p in heads)


# ----- priors ------------------------------------------------------------------------------


def _elementwise_support(support):
    """The support of one element: ``support`` without its ``independent`` wrappers."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _with_event(base, event: tuple):
    return base.to_event(len(event)) if event else base


def replacement(prior):
    """A prior with the same support and shape as ``prior`` but other parameters."""
    batch, event = tuple(prior.batch_shape), tuple(prior.event_shape)
    if prior.support is constraints.simplex:
        return dist.Dirichlet(torch.full(event, 1.3)).expand(batch)
    if prior.support is constraints.ordered_vector:
        base = dist.Normal(0.3, 1.7).expand(batch + event).to_event(1)
        return dist.TransformedDistribution(base, dist.transforms.OrderedTransform())
    support = _elementwise_support(prior.support)
    if support is constraints.real:
        new = dist.Normal(0.3, 1.7)
    elif isinstance(support, constraints.greater_than | constraints.greater_than_eq):
        new = dist.Gamma(1.5, 0.8)
    else:
        raise NotImplementedError(f"no replacement for support {support}")
    return _with_event(new.expand(batch + event), event)


def wrong_support(prior):
    """A prior of the same shape whose support differs from ``prior``'s."""
    event = tuple(prior.event_shape)
    shape = tuple(prior.batch_shape) + event
    real = _elementwise_support(prior.support) is constraints.real
    base = dist.Gamma(2.0, 1.0) if real else dist.Normal(0.0, 1.0)
    return _with_event(base.expand(shape), event)


@pytest.mark.parametrize("name", MODELS)
def test_every_declared_prior_can_be_swapped_and_a_wrong_support_is_refused(name, tiny_data):
    declared = tiny(name).default_priors()
    batch = full_batch(few_rows(tiny_data(name), 8))
    for site, prior in declared.items():
        new = replacement(prior)
        model = tiny(name, priors={site: new})
        with torch.no_grad():
            pyro.set_rng_seed(0)
            trace = poutine.trace(model.model).get_trace(batch)
        assert site in trace.nodes, f"declared prior site '{site}' is not a site of the model"
        value = trace.nodes[site]["value"]
        # the site may expand the prior or fold dimensions into its event: compare totals
        used = trace.nodes[site]["fn"].log_prob(value).sum()
        expected = new.log_prob(value).sum()
        assert torch.allclose(used, expected, rtol=1e-5), (
            f"the model's site '{site}' does not use the swapped prior"
        )
        with pytest.raises(zoo.PriorError, match=f"site '{site}' must have support"):
            tiny(name, priors={site: wrong_support(prior)})


# ----- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_bad_config_key_and_bad_data_give_one_line_errors(name, tmp_path, capsys, tiny_data):
    out = tmp_path / "run"
    assert main(["train", name, "--set", "no_such_key=1", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "no_such_key" in line and "valid keys" in line

    arrays = {k: v.numpy().copy() for k, v in tiny_data(name).items()}
    floats = [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)]
    field = floats[0] if floats else next(iter(arrays))
    if floats:
        arrays[field].reshape(-1)[0] = np.nan
    else:
        arrays[field] = arrays[field][..., None].repeat(3, axis=-1)  # a wrong per-row shape
    np.savez(tmp_path / "bad.npz", **arrays)
    argv = ["train", name, *tiny_sets(name), "--data", str(tmp_path / "bad.npz")]
    assert main([*argv, "--out", str(out)]) == 2
    assert f"'{field}'" in error_line(capsys)
    assert not out.exists(), "refused input must not write a run folder"


# ----- registry and shared mechanisms (on the reference models) ----------------------------


def test_registry_lookup_and_unknown_name():
    assert {"eight_schools", "vae_digits"} <= set(zoo.list())
    with pytest.raises(KeyError, match="unknown model 'nope'.*eight_schools"):
        zoo.get("nope")


def test_config_overrides_and_unknown_key():
    model = zoo.create("eight_schools", centered=True)
    assert model.config.centered is True
    with pytest.raises(zoo.ConfigError, match=r"unknown config key\(s\) \['centred'\]"):
        zoo.create("eight_schools", centred=True)
    with pytest.raises(zoo.ConfigError, match="likelihood must be one of"):
        zoo.create("vae_digits", likelihood="gaussian")


def test_prior_override_is_used_in_the_model(eight_schools_data):
    model = zoo.create("eight_schools", priors={"tau": dist.HalfNormal(1.0)})
    trace = poutine.trace(model).get_trace(full_batch(eight_schools_data))
    assert isinstance(trace.nodes["tau"]["fn"], dist.HalfNormal)
    # supports that map to the same unconstrained space are accepted (positive vs nonnegative)
    zoo.create("eight_schools", priors={"tau": dist.Gamma(2.0, 0.5)})


@pytest.mark.parametrize(
    "site, prior, message",
    [
        ("sigma_y", dist.Normal(0.0, 1.0), "unknown prior site 'sigma_y'.*declared prior sites"),
        ("tau", dist.Normal(0.0, 1.0), "site 'tau' must have support positive; Normal has"),
        ("mu", dist.Normal(torch.zeros(3), 1.0), "batch shape"),
        ("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1), "event shape"),
        ("mu", 3.0, "must be a pyro.distributions Distribution"),
    ],
)
def test_bad_prior_overrides_are_refused(site, prior, message):
    with pytest.raises(zoo.PriorError, match=message):
        zoo.create("eight_schools", priors={site: prior})


def test_parse_prior_accepts_literals_only():
    site, prior = zoo.parse_prior("tau=HalfNormal(2.5)")
    assert site == "tau" and isinstance(prior, dist.HalfNormal)
    assert float(prior.scale) == 2.5
    _, prior = zoo.parse_prior("mu = dist.Normal(loc=1, scale=[2.0])")
    assert float(prior.loc) == 1.0
    for text, message in [
        ("tau=__import__('os').system('true')", r"\.system\(\) is not allowed"),
        ("tau=HalfNormal(abs(-1))", "literal numbers"),
        ("tau=Tensor(1)", "not a distribution"),
        ("tau", "SITE=Dist"),
        ("tau=HalfNormal(-1.0)", "rejects these arguments"),
        ("tau=HalfNormal('a')", "not a number"),
    ]:
        with pytest.raises(zoo.PriorError, match=message):
            zoo.parse_prior(text)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"y": [1.0, np.nan], "sigma": [1.0, 1.0]}, "field 'y' has 1 NaN"),
        ({"y": [1.0, 2.0], "sigma": [1.0, -1.0]}, "field 'sigma' has values outside"),
        ({"y": [[1.0, 2.0]], "sigma": [1.0]}, r"field 'y' has shape \(1, 2\); expected"),
        ({"y": ["a", "b"], "sigma": [1.0, 1.0]}, "field 'y' must be numeric"),
        ({"y": [], "sigma": []}, "field 'y' is empty"),
        ({"y": [1.0, 2.0]}, r"missing field\(s\) \['sigma'\]"),
        ({"y": [1.0], "sigma": [1.0], "z": [1.0]}, r"unknown field\(s\) \['z'\]"),
        ({"y": [1.0, 2.0], "sigma": [1.0]}, "field 'sigma' has 1 rows but other fields have 2"),
    ],
)
def test_bad_data_gets_a_clear_error(data, message):
    with pytest.raises(DataError, match=message):
        zoo.create("eight_schools").validate(data)


def test_vae_data_support_follows_the_likelihood():
    grey = np.full((4, 64), 0.5)
    with pytest.raises(DataError, match="outside its support"):
        zoo.create("vae_digits").validate({"x": grey})
    assert zoo.create("vae_digits", likelihood="continuous_bernoulli").validate({"x": grey})


def test_unknown_guide_kind_lists_the_valid_ones():
    with pytest.raises(guides.GuideError, match="unknown guide kind 'laplace'.*delta"):
        guides.build("laplace", zoo.create("eight_schools"))


def test_guides_keep_separate_parameters():
    # module-local parameters: two guides of one family never share values by name
    model = zoo.create("eight_schools")
    data = model.default_data()
    first = guides.build("normal", model)
    fit(model, first, data, steps=200, lr=0.05, progress=False)
    second = guides.build("normal", model)
    with torch.no_grad():
        second(full_batch(data))
    loc_first = first.global_guide.locs.mu.detach()
    loc_second = second.global_guide.locs.mu.detach()
    assert not torch.allclose(loc_first, loc_second)
    assert len(pyro.get_param_store()) == 0
