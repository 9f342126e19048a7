"""Run folders written before the layout move still load in zoo diagnose and zoo sample."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.cli import main

OLD_RUNS = Path(__file__).parent / "data" / "runs_before_layout"

#: evaluations that draw Monte Carlo samples agree to this (nats per image); the others exactly
TOLERANCE = {"vae_digits": 0.1}
#: what evaluate() no longer reports (eight_schools' PSIS-LOO is in the report's diagnostics)
RETIRED = {"eight_schools": {"elpd_loo"}}


@pytest.mark.parametrize("name", ["eight_schools", "vae_digits", "niw_meta"])
def test_a_run_folder_from_before_the_move_diagnoses_and_samples(name, tmp_path, capsys):
    run = tmp_path / name
    shutil.copytree(OLD_RUNS / name, run)
    assert main(["diagnose", str(run)]) == 0
    now = json.loads((run / "diagnostics.json").read_text())["evaluate"]
    then = json.loads((run / "evaluate.json").read_text())
    then = {k: v for k, v in then.items() if k not in RETIRED.get(name, set())}
    assert now.keys() == then.keys()
    for key, value in then.items():
        assert now[key] == pytest.approx(value, abs=TOLERANCE.get(name, 1e-6)), key
    assert main(["sample", str(run), "--num", "3"]) == 0
    samples = np.load(run / "samples.npz")
    assert all(samples[k].shape[0] == 3 for k in samples.files)
    capsys.readouterr()
