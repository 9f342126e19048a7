"""End-to-end tests of the ``zoo`` command: list/info, train (guide and prior swaps, NUTS),
diagnose, sample, one-line errors for bad input, kill-and-resume, refused checkpoints."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.checkpoint import load_checkpoint, save_checkpoint
from tests.cli_helpers import error_line
from zoo.cli import main
from zoo.cli.runs import read_idata

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.json", "metrics.csv", "checkpoint.pt", "idata.nc", "report.md")


@pytest.fixture(scope="module")
def schools_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mvn"
    argv = ["train", "eight_schools", "--guide", "mvn", "--prior", "tau=HalfNormal(2.0)"]
    assert main([*argv, "--steps", "30", "--out", str(out), "--no-progress"]) == 0
    return out


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "eight_schools" in out and "vae_digits" in out


def test_info(capsys):
    assert main(["info", "eight_schools"]) == 0
    out = capsys.readouterr().out
    assert "Eight schools" in out  # docstring's first line
    assert "centered = False" in out  # config default
    assert "tau ~ HalfCauchy(scale=5.0)" in out  # declared prior
    assert "sigma: shape ('N',)" in out  # data field
    assert "'mvn'" in out and "'flow'" in out  # guide kinds
    assert main(["info", "vae_digits"]) == 0
    out = capsys.readouterr().out
    assert "latent_dim = 10" in out and "x: shape ('N', 64)" in out


def test_train_mvn_with_prior_writes_a_loadable_run(schools_run):
    for name in RUN_FILES:
        assert (schools_run / name).is_file(), name
    record = json.loads((schools_run / "config.json").read_text())
    assert record["model"] == "eight_schools"
    assert record["guide"] == "mvn"
    assert record["priors"] == {"tau": "HalfNormal(2.0)"}
    assert record["steps"] == 30 and record["seed"] == 0 and record["engine"] == "svi"
    with open(schools_run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    state, meta = load_checkpoint(schools_run / "checkpoint.pt")
    assert meta["step"] == 30 and meta["model"] == "eight_schools"
    assert state["losses"].tolist() == [float(r["loss"]) for r in rows]
    assert (schools_run / "idata.nc").stat().st_size > 0
    idata = read_idata(schools_run / "idata.nc")
    assert {"mu", "tau", "theta"} <= set(idata.posterior.data_vars)
    assert float(idata.posterior["tau"].min()) > 0
    report = (schools_run / "report.md").read_text()
    assert "k-hat" in report and "PSIS-LOO" in report and "mu_mean" in report
    for figure in ("elbo.png", "ppc.png"):
        assert (schools_run / "figures" / figure).stat().st_size > 0
    diag = json.loads((schools_run / "diagnostics.json").read_text())
    assert diag["notes"] == []  # every diagnostic ran
    assert isinstance(diag["khat"]["khat"], float) and diag["khat"]["verdict"]


def test_default_guide_then_diagnose_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "eight_schools", "--steps", "30", "--out", str(out), "--no-progress"]) == 0
    )
    (out / "report.md").unlink()
    (out / "idata.nc").unlink()
    assert main(["diagnose", str(out)]) == 0
    assert "k-hat" in (out / "report.md").read_text()
    assert "tau" in read_idata(out / "idata.nc").posterior
    samples = tmp_path / "draws.npz"
    assert main(["sample", str(out), "--num", "5", "--out", str(samples)]) == 0
    with np.load(samples) as draws:  # five new schools, each with a school's sigma
        assert draws["y"].shape == (5,) and np.isfinite(draws["y"]).all()
        assert set(draws["sigma"].tolist()) <= {15.0, 10.0, 16.0, 11.0, 9.0, 18.0}


def test_engine_nuts(tmp_path):
    out = tmp_path / "nuts"
    argv = ["train", "eight_schools", "--engine", "nuts", "--steps", "40", "--chains", "2"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    idata = read_idata(out / "idata.nc")
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 40
    assert "diverging" in idata.sample_stats
    report = (out / "report.md").read_text()
    assert "divergences" in report and "r_hat" in report
    assert json.loads((out / "config.json").read_text())["engine"] == "nuts"
    assert not (out / "checkpoint.pt").exists()
    assert (out / "figures" / "trace.png").stat().st_size > 0
    # new schools from the NUTS draws; replicates of the eight from the stored predictive
    assert main(["sample", str(out), "--num", "6"]) == 0
    with np.load(out / "samples.npz") as draws:
        assert draws["y"].shape == (6,) and np.isfinite(draws["y"]).all()
    assert main(["sample", str(out), "--num", "6", "--replicates"]) == 0
    with np.load(out / "samples.npz") as draws:
        assert draws["y"].shape == (6, 8)


def test_engine_nuts_takes_the_models_options_and_reports_large_variables(tmp_path, monkeypatch):
    """A model's ``nuts_options`` and ``nuts_init`` reach the sampler, and a variable too
    large for a full summary still shows its worst R-hat and ESS."""
    import inference.mcmc
    import zoo.cli.report
    from zoo.models.eight_schools import EightSchools

    seen = {}
    sampler = inference.mcmc.nuts

    def spy(model, data, **options):
        seen.update(options)
        return sampler(model, data, **options)

    monkeypatch.setattr(inference.mcmc, "nuts", spy)
    monkeypatch.setattr(zoo.cli.report, "SUMMARY_MAX_ELEMENTS", 4)
    monkeypatch.setattr(EightSchools, "nuts_options", {"dense_mass": True})
    monkeypatch.setattr(EightSchools, "nuts_init", lambda self, data: {"mu": torch.tensor(4.0)})
    out = tmp_path / "nuts"
    argv = ["train", "eight_schools", "--engine", "nuts", "--steps", "30", "--chains", "2"]
    assert main([*argv, "--set", "centered=false", "--out", str(out), "--no-progress"]) == 0
    assert seen["dense_mass"] is True and float(seen["init_values"]["mu"]) == 4.0
    report = (out / "report.md").read_text()
    lines = report.splitlines()
    row = next(line for line in lines if line.startswith("| eta (8,)"))
    header = [line for line in lines[: lines.index(row)] if line.startswith("| variable")][-1]

    def cells(line):
        return [cell.strip() for cell in line.strip("|").split("|")]

    values = dict(zip(cells(header), cells(row), strict=True))
    assert "worst R-hat, ESS" in values["variable"]
    assert all(values[key] != "n/a" for key in ("ess_bulk", "ess_tail", "r_hat")), values


BAD = [
    (["train", "no_such_model"], "unknown model 'no_such_model'"),
    (["train", "eight_schools", "--guide", "bogus"], "--guide: invalid choice: 'bogus'"),
    (["train", "eight_schools", "--set", "nope=1"], "unknown config key 'nope'"),
    (["train", "eight_schools", "--set", "centered=maybe"], "'maybe' is not a valid boolean"),
    (["train", "vae_digits", "--set", "latent_dim=two"], "'two' is not a valid integer"),
    (["train", "eight_schools", "--prior", "sigma=Normal(0,1)"], "unknown prior site 'sigma'"),
    (["train", "eight_schools", "--prior", "tau=Normal(0,1)"], "must have support positive"),
    (
        ["train", "eight_schools", "--prior", "tau=__import__('os').system('x')"],
        ".system() is not allowed",
    ),
    (["train", "eight_schools", "--prior", "tau=HalfNormal(x)"], "must be literal numbers"),
    (["train", "eight_schools", "--engine", "hmc"], "--engine: invalid choice: 'hmc'"),
    (["train", "vae_digits", "--engine", "nuts"], "does not support the nuts engine"),
    (["train", "eight_schools", "--elbo", "nope"], "--elbo: invalid choice: 'nope'"),
    (["train", "eight_schools", "--steps", "0"], "steps must be a positive integer"),
    (["train", "eight_schools", "--device", "tpu:7"], "device"),
    (["train"], "the following arguments are required: NAME"),
]


@pytest.mark.parametrize("argv,expected", BAD, ids=[" ".join(a[1:3]) for a, _ in BAD])
def test_bad_input_is_one_clear_line(argv, expected, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out)] if len(argv) > 1 else argv) == 2
    line = error_line(capsys)
    assert expected in line
    assert not out.exists()


def _data_file(tmp_path, kind):
    if kind == "nan":
        path = tmp_path / "nan.csv"
        path.write_text("y,sigma\n1.0,2.0\nnan,3.0\n")
    elif kind == "shape":
        path = tmp_path / "shape.npz"
        np.savez(path, y=np.zeros((8, 2)), sigma=np.ones((8, 2)))
    elif kind == "strings":
        path = tmp_path / "strings.csv"
        path.write_text("y,sigma\n1.0,2.0\nhigh,3.0\n")
    elif kind == "npz_strings":
        path = tmp_path / "strings.npz"
        np.savez(path, y=np.array(["a", "b"]), sigma=np.array(["c", "d"]))
    elif kind == "empty":
        path = tmp_path / "empty.csv"
        path.write_text("")
    elif kind == "extension":
        path = tmp_path / "data.txt"
        path.write_text("y,sigma\n1,2\n")
    elif kind == "missing":
        path = tmp_path / "absent.npz"
    elif kind == "columns":
        path = tmp_path / "columns.csv"
        path.write_text("y,s\n1,2\n")
    elif kind == "support":
        path = tmp_path / "support.csv"
        path.write_text("y,sigma\n1,2\n1,-3\n")
    elif kind == "noheader":
        path = tmp_path / "noheader.csv"
        path.write_text("1,2\n3,4\n")
    return path


DATA_BAD = [
    ("nan", "NaN"),
    ("shape", "has shape (8, 2); expected ('N',)"),
    ("strings", "line 3, column 'y' (column 1) holds non-numeric value 'high'"),
    ("npz_strings", "must be numeric"),
    ("empty", "is empty"),
    ("extension", "unknown extension '.txt'"),
    ("missing", "does not exist"),
    ("columns", "lacks column(s) ['sigma']"),
    ("support", "outside its support"),
    ("noheader", "has no header row (line 1 holds only numbers)"),
]


@pytest.mark.parametrize("kind,expected", DATA_BAD, ids=[k for k, _ in DATA_BAD])
def test_bad_data_file_is_one_clear_line(kind, expected, tmp_path, capsys):
    path = _data_file(tmp_path, kind)
    out = tmp_path / "never"
    argv = ["train", "eight_schools", "--data", str(path), "--steps", "5", "--out", str(out)]
    assert main(argv) == 2
    line = error_line(capsys)
    assert expected in line and path.name in line
    assert not out.exists()


def _snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_bad_invocation_leaves_existing_run_untouched(schools_run, tmp_path, capsys):
    before = _snapshot(schools_run)
    assert "checkpoint.pt" in before
    out = str(schools_run)
    attempts = [
        ["train", "eight_schools", "--out", out, "--steps", "5"],  # not --resume: refused
        ["train", "eight_schools", "--out", out, "--resume", "--prior", "tau=Normal(0,1)"],
        ["train", "eight_schools", "--out", out, "--resume", "--set", "nope=1"],
        ["train", "eight_schools", "--out", out, "--resume", "--guide", "normal", "--steps", "30"],
        ["train", "eight_schools", "--out", out, "--data", str(_data_file(tmp_path, "nan"))],
    ]
    for argv in attempts:
        assert main([*argv, "--no-progress"]) == 2, argv
        error_line(capsys)
    assert _snapshot(schools_run) == before


def test_python_dash_m_zoo_reports_error_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "zoo", "train", "eight_schools", "--guide", "bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "zoo: error: argument --guide: invalid choice: 'bogus' (choose from "
        "'default', 'delta', 'flow', 'lowrank', 'mvn', 'normal')"
    ]


VAE = ["--set", "latent_dim=2", "--set", "hidden=16", "--set", "epochs=30", "--seed", "3"]


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle)]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    argv = ["train", "vae_digits", *VAE, "--checkpoint-every", "5", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo", *argv, "--out", str(killed)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None, "training ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _, meta = load_checkpoint(killed / "checkpoint.pt")
    assert 0 < meta["step"] < meta["total_steps"], meta  # it was killed mid-training
    assert not (killed / "metrics.csv").exists()
    # mark the checkpoint's first loss: a resumed run keeps it, a rerun from scratch would not
    state, meta = load_checkpoint(killed / "checkpoint.pt")
    state["losses"][0] = 12345.0
    save_checkpoint(killed / "checkpoint.pt", state, meta)

    assert main([*argv, "--out", str(killed), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main([*argv, "--out", str(whole)]) == 0
    resumed, reference = _losses(killed), _losses(whole)
    assert len(reference) == meta["total_steps"] == 360  # 30 epochs of ceil(1527 / 128) = 12
    assert resumed[0] == 12345.0 != reference[0]
    assert resumed[1:] == reference[1:]
    config = json.loads((whole / "config.json").read_text())
    assert config["rows"] == {"train": 1527, "test": 270}  # seeded hold-out split
    report = (whole / "report.md").read_text()
    assert "held-out rows" in report and "iwae100_per_image" in report
    assert "Latent activity" in report and "k-hat" in report


class _Harmless:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_diagnose_refuses_checkpoint_that_would_run_code(schools_run, tmp_path, capsys):
    run = tmp_path / "evil"
    run.mkdir()
    (run / "config.json").write_bytes((schools_run / "config.json").read_bytes())
    marker = tmp_path / "code_ran"
    payload = {"format": "latent-zoo/checkpoint", "version": 1, "x": _Harmless(str(marker))}
    torch.save(payload, run / "checkpoint.pt")
    assert main(["diagnose", str(run)]) == 2
    line = error_line(capsys)
    assert "refused" in line and "checkpoint.pt" in line
    assert not marker.exists()
    assert not (run / "report.md").exists()
