"""The Lightning (DDP) trainer: agreement of 2 CPU ranks (gloo) with one process, bad input,
Lightning checkpoints into the plain engine's posterior and diagnose path, and the CLI.

Agreement (same seed, same global batch: 1 process x 2B rows vs 2 ranks x B rows), as
measured on 2 CPU cores (seed 3): a 64-row eight-schools data set with prior mu ~ N(0, 1),
600 steps: posterior mean of mu 4.75 (1 process) vs 4.69 (2 ranks), seed-to-seed spread
0.17; tolerance 0.5. A rank that scales its rows to its share of the data instead of N
gives 2.98: off by 1.7, so the test fails on that bug. tau: 5.28 vs 4.87, tolerance 1.0.
vae_digits (latent 4, hidden 32, 120 steps): held-out ELBO -24.816 vs -24.816 nats per
image, tolerance 0.5.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import guides  # noqa: E402
import zoo  # noqa: E402
from inference.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from inference.data import full_batch  # noqa: E402
from inference.lightning import (  # noqa: E402
    LightningSetupError,
    check_splittable,
    check_trainer_options,
    fit_lightning,
    lightning_state,
    load_lightning_checkpoint,
)
from inference.posterior import posterior  # noqa: E402
from zoo.cli import main  # noqa: E402
from zoo.cli.runs import diagnose_run, train_run  # noqa: E402
from zoo.models.eight_schools import EightSchools  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import lightning_ddp_script as ddp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MU_TOL, TAU_TOL, VAE_TOL = 0.5, 1.0, 0.5


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    return env


def test_ddp_two_cpu_ranks_agree_with_one_process(tmp_path):
    out = tmp_path / "ddp.json"
    script = ROOT / "tests" / "lightning_ddp_script.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script), str(out)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    one = {case: ddp.run_case(case, devices=1) for case in ("schools", "vae")}
    for case in two:
        assert two[case]["steps"] == ddp.CASES[case][0]
    assert abs(two["schools"]["mu_mean"] - one["schools"]["mu_mean"]) < MU_TOL, (two, one)
    assert abs(two["schools"]["tau_mean"] - one["schools"]["tau_mean"]) < TAU_TOL, (two, one)
    # the estimator can fail: ranks that weigh their rows as the whole data set disagree
    wrong = abs(two["schools_wrong_scale"]["mu_mean"] - one["schools"]["mu_mean"])
    assert wrong > 2 * MU_TOL, (two, one)
    assert abs(two["vae"]["heldout_elbo"] - one["vae"]["heldout_elbo"]) < VAE_TOL, (two, one)


def _schools():
    model = zoo.create("eight_schools")
    return model, guides.build("default", model), model.default_data()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(accelerator="tpu"), "unknown accelerator 'tpu'"),
        (dict(strategy="warp_drive"), "unknown strategy 'warp_drive': Lightning does not know"),
        (dict(strategy="fsdp"), "strategy 'fsdp' shards"),
        (dict(devices=0), "devices must be a positive integer"),
        (dict(num_nodes=-1), "num_nodes must be a positive integer"),
        (dict(devices=100_000), "more CPU processes than this machine can run"),
        (dict(elbo="renyi"), "elbo 'renyi' has no differentiable loss"),
    ],
)
def test_bad_trainer_options_are_named(kwargs, message):
    with pytest.raises(LightningSetupError, match=message):
        check_trainer_options(**kwargs)


def test_gpu_that_is_not_there_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LightningSetupError, match="'gpu' was asked for but CUDA is not"):
        check_trainer_options(accelerator="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LightningSetupError, match="more GPUs than this machine has \\(1\\)"):
        check_trainer_options(accelerator="gpu", devices=2)


class _Sequential(EightSchools):
    splittable = False


class _WholeData(EightSchools):
    """A data plate that ignores the batch's subsample: it cannot be scaled per rank."""

    def data_plate(self, batch):
        import pyro

        return pyro.plate("data", batch.batch_size, dim=-1)


def test_models_that_cannot_be_split_are_refused():
    data = zoo.create("eight_schools").default_data()
    with pytest.raises(LightningSetupError, match="not exchangeable \\(splittable = False\\)"):
        check_splittable(_Sequential(), data, 2, 2)
    with pytest.raises(LightningSetupError, match="no pyro.plate\\('data'.*subsample"):
        check_splittable(_WholeData(), data, 2, 2)
    with pytest.raises(LightningSetupError, match="8 rows, fewer than one global batch of 2"):
        check_splittable(zoo.create("eight_schools"), data, 5, 2)
    check_splittable(zoo.create("eight_schools"), data, 4, 2)  # fine


def test_cli_bad_lightning_input_is_one_line(tmp_path, capsys):
    base = ["train", "eight_schools", "--trainer", "lightning", "--out", str(tmp_path / "r")]
    for extra, message in [
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--devices", "9"], "more CPU processes than this machine can run"),
        (["--devices", "2", "--num-nodes", "5"], "cannot be split across 10 ranks"),  # 8 rows
        (["--accelerator", "quantum"], "--accelerator: invalid choice: 'quantum'"),
        (["--engine", "nuts"], "nuts runs plain"),
        (["--elbo", "iwae"], "elbo 'iwae' has no differentiable loss"),
    ]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["train", "eight_schools", "--trainer", "spark"]) == 2
    assert "--trainer: invalid choice: 'spark'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_lightning_checkpoint_resumes_and_loads_into_posterior(tmp_path):
    ckpt = tmp_path / "lightning.ckpt"
    model, guide, data = _schools()
    module, trainer = fit_lightning(
        model, guide, data, steps=20, batch_size=4, lr=0.05, checkpoint=ckpt, seed=1
    )
    assert trainer.global_step == 20
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain data only
    assert payload["global_step"] == 20
    state, meta = lightning_state(ckpt)
    assert meta["global_step"] == 20
    # resume: continues from step 20 to 40 with the saved parameters
    model2, guide2, _ = _schools()
    module2, trainer2 = fit_lightning(
        model2, guide2, data, steps=40, batch_size=4, lr=0.05, checkpoint=ckpt, resume=True
    )
    assert trainer2.global_step == 40 and len(module2.losses) == 20
    assert lightning_state(ckpt)[1]["global_step"] == 40
    # into fresh objects and the plain engine's posterior
    model3, guide3, _ = _schools()
    load_lightning_checkpoint(model3, guide3, data, ckpt)
    trained = module2.loss_fn.state_dict()
    assert sorted(state) == sorted(trained)
    for name, value in lightning_state(ckpt)[0].items():
        assert torch.equal(value, trained[name]), name
    want = guide2.median(full_batch(data))["mu"]
    assert torch.allclose(guide3.median(full_batch(data))["mu"], want)
    idata = posterior(model3, data, guide=guide3, num_draws=50, seed=0)
    assert idata.posterior["mu"].shape == (1, 50)
    # a Lightning checkpoint of another model is refused
    vae = zoo.create("vae_digits", latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="another model or guide"):
        load_lightning_checkpoint(vae, guides.build("default", vae), vae.default_data(), ckpt)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        lightning_state(bad)


def test_cli_ddp_run_folder_diagnoses_like_a_plain_run(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "zoo", "train", "eight_schools", "--trainer", "lightning"]
    cmd += ["--devices", "2", "--steps", "12", "--out", str(run), "--no-progress"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run written to") == 1  # rank 0 reports
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "lightning.ckpt", "report.md"):
        assert (run / name).is_file(), name
    record = json.loads((run / "config.json").read_text())
    assert record["trainer"] == "lightning" and record["lightning"]["devices"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 13
    state, meta = load_checkpoint(run / "checkpoint.pt")
    assert meta["step"] == 12 and meta["trainer"] == "lightning"
    lstate, _ = lightning_state(run / "lightning.ckpt")
    for key, value in lstate.items():
        assert torch.equal(state["module"][key], value), key
    (run / "report.md").unlink()
    assert diagnose_run(run).is_file()  # the plain engine's diagnose path


def test_train_run_lightning_resume(tmp_path):
    run = tmp_path / "run"
    kw = dict(out=run, trainer="lightning", devices=1, progress=False, seed=2)
    train_run("eight_schools", steps=10, **kw)
    with pytest.raises(ValueError, match="trained with trainer=lightning, not plain"):
        train_run("eight_schools", steps=10, out=run, resume=True, progress=False, seed=2)
    with pytest.raises(ValueError, match="steps=5: it has trained 10 steps"):
        train_run("eight_schools", steps=5, resume=True, **kw)
    train_run("eight_schools", steps=10, resume=True, **kw)
    assert len((run / "metrics.csv").read_text().splitlines()) == 11
