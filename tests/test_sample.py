"""``zoo sample`` draws new data from a fitted model (and pictures of images), the model
figures reach the run folder and report, and every CLI option says what it does."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

import guides
import zoo
from inference.checkpoint import load_checkpoint
from inference.data import full_batch
from inference.elbos import ELBO_NAMES
from tests.cli_helpers import error_line
from zoo.cli import main
from zoo.cli.main import build_parser
from zoo.cli.runs import ENGINES, TRAINERS
from zoo.models.eight_schools import SIGMA

TINY_VAE = ["--set", "latent_dim=2", "--set", "hidden=16", "--steps", "5", "--no-progress"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vae"
    assert main(["train", "vae_digits", *TINY_VAE, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def schools_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "schools"
    assert (
        main(["train", "eight_schools", "--steps", "20", "--no-progress", "--out", str(out)]) == 0
    )
    return out


# ----- zoo sample: new rows by default -------------------------------------------------------


def test_sample_vae_gives_new_images_and_a_picture(vae_run, tmp_path, capsys):
    out = tmp_path / "new" / "digits.npz"
    capsys.readouterr()
    assert main(["sample", str(vae_run), "--num", "7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with np.load(out) as arrays:
        assert set(arrays) == {"x"}
        x = arrays["x"]
    assert x.shape == (7, 64)  # seven new images, not (draws, 1527 training rows, 64)
    assert set(np.unique(x).tolist()) <= {0.0, 1.0}  # the data's support: binary pixels
    zoo.create("vae_digits", latent_dim=2, hidden=(16,)).validate({"x": x})
    picture = tmp_path / "new" / "digits.png"
    assert picture.stat().st_size > 0 and f"picture: {picture}" in printed
    assert "7 new rows written to" in printed


def test_sample_replicates_keeps_the_old_array(vae_run, tmp_path):
    out = tmp_path / "replicates.npz"
    assert main(["sample", str(vae_run), "--num", "3", "--replicates", "--out", str(out)]) == 0
    with np.load(out) as arrays:
        assert arrays["x"].shape == (3, 1527, 64)  # draws x training rows x pixels
    assert not (tmp_path / "replicates.png").exists()


def test_sample_eight_schools_gives_new_schools_given_their_sigma(schools_run, tmp_path):
    out = tmp_path / "schools.npz"
    assert main(["sample", str(schools_run), "--num", "40", "--out", str(out)]) == 0
    with np.load(out) as arrays:
        assert set(arrays) == {"y", "sigma"}
        assert arrays["y"].shape == (40,) and arrays["sigma"].shape == (40,)
        assert np.isfinite(arrays["y"]).all()
        assert set(arrays["sigma"].tolist()) <= set(SIGMA.tolist())  # resampled inputs
    assert not (tmp_path / "schools.png").exists()  # no images, no picture
    # the seed is the run's by default and can be set: same seed, same rows
    again = tmp_path / "again.npz"
    assert main(["sample", str(schools_run), "--num", "40", "--out", str(again)]) == 0
    other = tmp_path / "other.npz"
    assert (
        main(["sample", str(schools_run), "--num", "40", "--seed", "9", "--out", str(other)]) == 0
    )
    with np.load(out) as a, np.load(again) as b, np.load(other) as c:
        assert np.array_equal(a["y"], b["y"]) and not np.array_equal(a["y"], c["y"])


def test_new_schools_use_the_fitted_globals_and_fresh_school_effects():
    """Globals come from the fit (here a posterior draw with mu = 1000), school effects are
    new draws from N(mu, tau), not the eight schools' posterior effects."""
    model = zoo.create("eight_schools")
    data = model.default_data()
    draws = {"mu": torch.tensor([1000.0]), "tau": torch.tensor([30.0])}
    rows = model.sample_new_rows(4000, data=data, draws=draws, seed=1)
    assert rows["y"].shape == (4000,) and rows["sigma"].shape == (4000,)
    z = (rows["y"] - 1000.0) / (30.0**2 + rows["sigma"] ** 2).sqrt()
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.05
    # a fitted guide's global draw is used the same way
    guide = guides.build("delta", model)
    with torch.no_grad():
        guide(full_batch(data))
        guide.global_guide.mu_unconstrained.fill_(-500.0)
        guide.global_guide.tau_unconstrained.fill_(0.0)  # tau = 1
    rows = model.sample_new_rows(500, data=data, guide=guide, seed=2)
    assert abs(float(rows["y"].mean()) + 500.0) < 5.0


def test_vae_new_images_come_from_the_prior_not_the_encoder():
    model = zoo.create("vae_digits", latent_dim=2, hidden=(16,))
    data = {"x": model.default_data()["x"][:50]}
    seen = []
    original = model.decoder.forward
    model.decoder.forward = lambda z: seen.append(z.detach().clone()) or original(z)
    rows = model.sample_new_rows(3000, data=data, guide=model.guide, seed=0)
    assert rows["x"].shape == (3000, 64)
    z = seen[-1]
    assert z.shape == (3000, 2)
    assert z.mean(0).abs().max() < 0.1 and (z.std(0) - 1.0).abs().max() < 0.05  # N(0, I)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--num", "0"], "num must be a positive integer, got 0"),
        (["--num", "-3"], "num must be a positive integer, got -3"),
        (["--num", "many"], "argument --num: invalid int value: 'many'"),
        (["--out", "draws.txt"], "must end in .npz"),
        (["--out", "FOLDER.npz"], "is a folder"),
        (["--out", "FILE/draws.npz"], "is a file, not a folder"),
    ],
)
def test_bad_sample_options_are_one_line(schools_run, tmp_path, capsys, argv, expected):
    (tmp_path / "FOLDER.npz").mkdir()
    (tmp_path / "FILE").write_text("not a folder")
    argv = [a.replace("FOLDER", str(tmp_path / "FOLDER")) for a in argv]
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    before = sorted(p.name for p in schools_run.iterdir())
    assert main(["sample", str(schools_run), *argv]) == 2
    assert expected in error_line(capsys)
    assert sorted(p.name for p in schools_run.iterdir()) == before  # nothing written


def test_sample_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "does not exist" in error_line(capsys)


# ----- model figures -------------------------------------------------------------------------


def test_vae_figures_are_in_the_run_folder_and_report(vae_run):
    report = (vae_run / "report.md").read_text()
    for name in ("samples", "reconstructions", "traversal"):
        assert (vae_run / "figures" / f"{name}.png").stat().st_size > 0, name
        assert f"![{name}.png](figures/{name}.png)" in report
    diagnostics = json.loads((vae_run / "diagnostics.json").read_text())
    assert not [n for n in diagnostics["notes"] if "figure" in n]


def test_a_failing_model_figure_is_noted_and_the_run_kept(schools_run, monkeypatch, capsys):
    from inference.diagnostics.plots import new_figure
    from zoo.models.eight_schools import EightSchools

    def fine():
        fig = new_figure()
        fig.add_subplot().plot([0, 1])
        return fig

    def broken():
        raise RuntimeError("no picture today")

    figures = {"fine": fine, "broken": broken, "../escape": fine}
    monkeypatch.setattr(EightSchools, "figures", lambda self, guide, data, idata=None: figures)
    assert main(["diagnose", str(schools_run)]) == 0
    report = (schools_run / "report.md").read_text()
    assert (schools_run / "figures" / "fine.png").stat().st_size > 0
    assert "![fine.png](figures/fine.png)" in report
    assert "model figure broken: failed (RuntimeError: no picture today)" in report
    assert "not a usable file name" in report and not (schools_run / "escape.png").exists()
    assert "k-hat" in report and "mu_mean" in report  # the rest of the report is there

    def raising(self, guide, data, idata=None):
        raise ValueError("figures exploded")

    monkeypatch.setattr(EightSchools, "figures", raising)
    assert main(["diagnose", str(schools_run)]) == 0
    report = (schools_run / "report.md").read_text()
    assert "model figures: failed (ValueError: figures exploded)" in report
    assert "k-hat" in report


# ----- --help and --resume -------------------------------------------------------------------


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", ["list", "info", "train", "diagnose", "sample"])
def test_help_of_every_subcommand_says_what_each_option_does(command, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in _subparsers()[command]._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 15, action.dest  # says what it does
        if action.option_strings:
            assert "(default: " in action.help, action.dest
        for choice in action.choices or ():
            assert str(choice) in text, (action.dest, choice)


def test_help_lists_the_libraries_choices(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for choices in (guides.KINDS, ELBO_NAMES, ENGINES, TRAINERS):
        assert "{" + ",".join(sorted(choices) if choices is guides.KINDS else choices) + "}" in text
    assert re.search(r"--seed SEED\s+seed of", text)


def test_resume_says_from_which_step_it_continues(schools_run, tmp_path, capsys):
    run = tmp_path / "longer"
    run.mkdir()
    shutil.copy(schools_run / "checkpoint.pt", run / "checkpoint.pt")  # a run at step 20 ...
    record = json.loads((schools_run / "config.json").read_text())
    record["steps"] = 30  # ... of a 30-step run
    (run / "config.json").write_text(json.dumps(record))
    argv = ["train", "eight_schools", "--steps", "30", "--no-progress", "--out", str(run)]
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "resuming from step 20 of 30" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoint.pt")[1]["step"] == 30
    assert main([*argv, "--resume"]) == 0
    assert "resuming from step 30 of 30 (already complete" in capsys.readouterr().out
    # a run whose config was written but no checkpoint yet starts from step 0 ...
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps(record | {"steps": 3}))
    assert main(["train", "eight_schools", "--steps", "3", "--no-progress", "--out", str(fresh),
                 "--resume"]) == 0  # fmt: skip
    assert "no checkpoint in" in capsys.readouterr().out
    # ... and a folder without a run is refused, never trained from scratch
    assert main(["train", "eight_schools", "--out", str(tmp_path / "typo"), "--resume"]) == 2
    assert not (tmp_path / "typo").exists()
