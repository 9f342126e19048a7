"""zoo.cli.runs and zoo.cli.datafiles in-process: option parsing, data files, the hold-out split,
the run folder, resume checks, the progress bar and the NaN guard's exit status."""

import json

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import zoo
from inference.data import DataError, holdout_split
from zoo.base import ConfigError
from zoo.cli import main
from zoo.cli.datafiles import load_data_file
from zoo.cli.runs import (
    _build,
    diagnose_run,
    parse_priors,
    parse_sets,
    train_run,
)
from zoo.models.eight_schools import SIGMA
from zoo.models.vae_digits import VAEDigits
from zoo.priors import PriorError, parse_prior


def test_parse_sets_types_values_after_the_config():
    sets = parse_sets(VAEDigits, ["hidden=16,8", "latent_dim=3", "epochs=2", "likelihood=x"])
    assert sets == {"hidden": (16, 8), "latent_dim": 3, "epochs": 2.0, "likelihood": "x"}
    assert isinstance(sets["epochs"], float)
    assert parse_sets(VAEDigits, ["hidden=[32]"]) == {"hidden": (32,)}
    schools = zoo.get("eight_schools")
    assert parse_sets(schools, ["centered=true"]) == {"centered": True}
    assert parse_sets(schools, ["centered=0"]) == {"centered": False}
    with pytest.raises(ConfigError, match=r"unknown config key 'width'.*valid keys"):
        parse_sets(VAEDigits, ["width=3"])
    with pytest.raises(ConfigError, match="'1.5' is not a valid integer"):
        parse_sets(VAEDigits, ["latent_dim=1.5"])
    with pytest.raises(ConfigError, match="'16,a' is not a valid list of int"):
        parse_sets(VAEDigits, ["hidden=16,a"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_sets(VAEDigits, ["latent_dim"])


def test_parse_priors_from_strings_and_distributions_round_trip():
    dists, texts = parse_priors(["tau=HalfNormal(2.0)", "mu=Normal(1.0, 3.0)"])
    assert isinstance(dists["tau"], dist.HalfNormal) and texts["tau"] == "HalfNormal(2.0)"
    dists, texts = parse_priors({"tau": dist.HalfCauchy(2.5), "mu": "Normal(0, 1)"})
    site, again = parse_prior(f"tau={texts['tau']}")
    assert site == "tau" and isinstance(again, dist.HalfCauchy)
    assert float(again.scale) == 2.5
    with pytest.raises(PriorError, match="given twice"):
        parse_priors(["tau=HalfNormal(1.0)", "tau=HalfNormal(2.0)"])
    with pytest.raises(PriorError, match="must be a 'Dist\\(args\\)' string"):
        parse_priors({"tau": 3.0})


def test_csv_with_several_fields_takes_named_columns(tmp_path):
    model = zoo.create("eight_schools")
    path = tmp_path / "schools.csv"
    rows = "\n".join(f"{s},{i}" for i, s in enumerate(SIGMA))
    path.write_text(f"sigma,y\n{rows}\n")
    arrays = load_data_file(path, model)
    np.testing.assert_array_equal(arrays["sigma"], SIGMA)
    np.testing.assert_array_equal(arrays["y"], np.arange(8.0))
    data = model.validate(arrays)
    assert data["y"].dtype == torch.float32 and data["y"].shape == (8,)


def test_csv_with_one_field_takes_all_columns_reshaped(tmp_path):
    model = zoo.create("vae_digits")
    path = tmp_path / "digits.csv"
    header = ",".join(f"p{i}" for i in range(64))
    path.write_text(header + "\n" + ",".join(["1"] * 64) + "\n" + ",".join(["0"] * 64) + "\n")
    arrays = load_data_file(path, model)
    assert arrays["x"].shape == (2, 64)
    assert model.validate(arrays)["x"].sum() == 64
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("a,b\n1,0\n")
    with pytest.raises(DataError, match=r"narrow.csv' has 2 column\(s\); field 'x' needs 64"):
        load_data_file(narrow, model)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("y,sigma\n1,2\n3\n")
    with pytest.raises(DataError, match="line 3 has 1 column"):
        load_data_file(ragged, zoo.create("eight_schools"))


def test_npz_errors_name_the_file_and_problem(tmp_path):
    model = zoo.create("eight_schools")
    path = tmp_path / "partial.npz"
    np.savez(path, y=np.zeros(8))
    with pytest.raises(DataError, match=r"partial.npz' lacks array\(s\) \['sigma'\]"):
        load_data_file(path, model)
    extra = tmp_path / "extra.npz"
    np.savez(extra, y=np.zeros(8), sigma=np.ones(8), w=np.ones(8))
    with pytest.raises(DataError, match=r"unknown array\(s\) \['w'\]"):
        load_data_file(extra, model)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="broken.npz' is not a readable .npz"):
        load_data_file(broken, model)


def test_holdout_split_is_seeded_and_disjoint():
    model = zoo.create("vae_digits", latent_dim=2, hidden=(8,))
    data = {"x": torch.arange(100.0).reshape(100, 1).expand(100, 64).contiguous()}
    train, test = holdout_split(data, model.config.holdout, seed=1)
    ids_train, ids_test = set(train["x"][:, 0].tolist()), set(test["x"][:, 0].tolist())
    assert len(ids_test) == 15 and len(ids_train) == 85
    assert ids_train.isdisjoint(ids_test) and ids_train | ids_test == set(range(100))
    again, other = (
        holdout_split(data, model.config.holdout, seed=1)[1],
        holdout_split(data, model.config.holdout, seed=2)[1],
    )
    assert torch.equal(again["x"], test["x"])
    assert not torch.equal(other["x"], test["x"])
    schools = zoo.create("eight_schools")
    full, none = holdout_split(schools.default_data(), schools.config.holdout, seed=1)
    assert none is None and len(full["y"]) == 8


def test_train_run_with_data_file_records_source_and_prior(tmp_path):
    data = tmp_path / "schools.npz"
    np.savez(data, y=np.array([28.0, 8, -3, 7, -1, 1, 18, 12]), sigma=SIGMA)
    run = train_run(
        "eight_schools",
        out=tmp_path / "run",
        priors={"tau": "HalfNormal(3.0)"},
        sets=["centered=true"],
        steps=20,
        seed=4,
        data_path=data,
        progress=False,
    )
    record = json.loads((run / "config.json").read_text())
    assert record["data"]["source"] == "file" and record["data"]["path"] == str(data)
    assert record["config"]["centered"] is True and record["seed"] == 4
    model, _ = _build(record, seed=4)
    assert model.config.centered is True
    assert isinstance(model.prior("tau"), dist.HalfNormal) and float(model.prior("tau").scale) == 3
    # diagnose refuses data that changed since training
    np.savez(data, y=np.zeros(8), sigma=SIGMA)
    with pytest.raises(DataError, match="changed since the run was trained"):
        diagnose_run(run)


def test_resume_refuses_other_settings_and_validation_precedes_writing(tmp_path):
    run = train_run("eight_schools", out=tmp_path / "run", steps=10, progress=False)
    with pytest.raises(ValueError, match=r"cannot resume .*steps=5: it has trained 10 steps"):
        train_run("eight_schools", out=run, steps=5, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"cannot resume .*seed=0, not 1"):
        train_run("eight_schools", out=run, steps=20, seed=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train_run("eight_schools", out=run, steps=10, progress=False)
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError):
        train_run("eight_schools", out=fresh, data_path=tmp_path / "x.npz", progress=False)
    with pytest.raises(ValueError, match="only"):
        train_run("eight_schools", out=fresh, engine="nuts", resume=True, progress=False)
    assert not fresh.exists()


def test_progress_bar_is_shown_unless_disabled(tmp_path, capsys):
    assert main(["train", "eight_schools", "--steps", "12", "--out", str(tmp_path / "a")]) == 0
    assert "svi" in capsys.readouterr().err
    argv = ["train", "eight_schools", "--steps", "12", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert "svi" not in capsys.readouterr().err


def test_diverged_training_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZOO_VALIDATE", "0")  # else Pyro's checks refuse the NaN logits first
    argv = ["train", "vae_digits", "--set", "hidden=8", "--set", "latent_dim=2"]
    argv += ["--set", "lr=1e30", "--steps", "40", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo: error: training diverged: loss became")


@pytest.mark.parametrize("name, metric", [("mm_gpvae", "r2_s_to_s"), ("rep4ex", "affine_r2")])
def test_report_scores_against_the_simulation_truth_only_for_its_own_data(name, metric, tmp_path):
    from tests.test_contract import tiny_sets

    argv = ["train", name, *tiny_sets(name), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "own")]) == 0
    scored = json.loads((tmp_path / "own" / "diagnostics.json").read_text())["evaluate"]
    assert metric in scored and np.isfinite(scored[metric])
    # the same rows from a file: the truth is not assumed to belong to them
    model = zoo.create(name, **zoo.get(name).tiny)
    np.savez(tmp_path / "d.npz", **{k: v.numpy() for k, v in model.default_data(0).items()})
    assert main([*argv, "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "file")]) == 0
    unscored = json.loads((tmp_path / "file" / "diagnostics.json").read_text())["evaluate"]
    assert metric not in unscored


def test_replicates_of_a_model_without_observed_sites_is_one_line(tmp_path, capsys):
    """causal_diffae's data enter through pyro.factor: ``zoo sample --replicates`` has no
    posterior predictive to write and says so in one line (new rows still work)."""
    tiny = {k: v for k, v in zoo.get("causal_diffae").tiny.items() if k != "steps"}
    out = train_run("causal_diffae", out=tmp_path / "run", sets=tiny, steps=2, progress=False)
    capsys.readouterr()
    argv = ["sample", str(out), "--num", "2", "--replicates", "--out", str(tmp_path / "r.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'causal_diffae' has no observed sample site" in err
    assert not (tmp_path / "r.npz").exists()
