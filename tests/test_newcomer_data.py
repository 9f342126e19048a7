"""Data files and priors as a newcomer writes them: a CSV without its header row, greyscale
images for a Bernoulli model, an invalid prior argument: one whole line that names the
problem and the fix, before any work; a file that is read says how many rows it gave."""

import numpy as np
from sklearn.datasets import load_digits

from zoo.cli.main import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _images_csv(path, images) -> None:
    header = ",".join(f"p{i}" for i in range(images.shape[1]))
    rows = "\n".join(",".join(f"{v:g}" for v in row) for row in images)
    path.write_text(f"{header}\n{rows}\n")


def test_csv_without_header_is_refused_not_shortened(tmp_path, capsys):
    images = (load_digits().data[:50] > 8).astype(float)
    path = tmp_path / "images.csv"
    _images_csv(path, images)
    path.write_text(path.read_text().split("\n", 1)[1])  # the header row removed
    out = tmp_path / "never"
    assert (
        main(["train", "vae_digits", "--data", str(path), "--steps", "2", "--out", str(out)]) == 2
    )
    assert "has no header row" in _error_line(capsys)
    assert not out.exists()


def test_rows_read_from_a_file_are_reported(tmp_path, capsys):
    images = (load_digits().data[:50] > 8).astype(float)
    path = tmp_path / "images.csv"
    _images_csv(path, images)
    argv = ["train", "vae_digits", "--data", str(path), "--steps", "2", "--no-progress"]
    assert main([*argv, "--set", "hidden=[8]", "--out", str(tmp_path / "run")]) == 0
    assert f"data: 50 rows read from '{path}'" in capsys.readouterr().out


def test_greyscale_images_for_a_bernoulli_model_name_the_setting(tmp_path, capsys):
    path = tmp_path / "grey.npz"
    np.savez(path, x=load_digits().data[:20] / 16.0)
    out = tmp_path / "never"
    assert (
        main(["train", "vae_digits", "--data", str(path), "--steps", "2", "--out", str(out)]) == 2
    )
    line = _error_line(capsys)
    assert "greyscale" in line and "--set likelihood=continuous_bernoulli" in line
    argv = ["train", "vae_digits", "--data", str(path), "--steps", "2", "--no-progress"]
    assert main([*argv, "--set", "likelihood=continuous_bernoulli", "--out", str(out)]) == 0


def test_invalid_prior_argument_is_one_whole_line(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "eight_schools", "--prior", "tau=HalfNormal(-5)", "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert line.endswith("-5.0)") and "found invalid values" in line
    assert not out.exists()


def test_prior_on_a_vector_site_in_every_form(tmp_path, capsys):
    """``z`` has event shape (10,): a scalar prior means iid elements; the shape methods
    and Independent spell it out; a run trained with one resumes and diagnoses with it."""
    forms = [
        "z=Normal(0, 2)",
        "z=Normal(0, 2).expand([10]).to_event(1)",
        "z=Independent(Normal(0, 2).expand([10]), 1)",
    ]
    base = ["train", "vae_digits", "--steps", "2", "--no-progress", "--set", "hidden=[8]"]
    for n, form in enumerate(forms):
        run = tmp_path / f"run{n}"
        assert main([*base, "--prior", form, "--out", str(run)]) == 0, form
        assert main(["diagnose", str(run)]) == 0
    # the three forms are one prior: a run resumes under any of them
    resume = [*base, "--steps", "3", "--out", str(tmp_path / "run0"), "--resume"]
    assert main([*resume, "--prior", forms[2]]) == 0
    capsys.readouterr()
    bad = {
        "z=Normal(0, 1).to_event(1)": "expand it first",
        "z=Normal(0, 1).expand([3]).to_event(1)": "must have event shape (10,)",
        "z=Normal(0, 1).sample()": ".sample() is not allowed",
    }
    for form, message in bad.items():
        assert main([*base, "--prior", form, "--out", str(tmp_path / "never")]) == 2
        assert message in _error_line(capsys)
    assert not (tmp_path / "never").exists()


def test_python_split_is_the_clis_split(tmp_path):
    """``model.split`` (the README's Python example) holds out the rows ``zoo train`` holds
    out, seed for seed, so ``evaluate`` scores unseen rows in Python too."""
    import json

    import torch

    import zoo

    model = zoo.create("vae_digits")
    data = model.default_data()
    train, held_out = model.split(data, seed=2)
    assert len(held_out["x"]) == 270 and len(train["x"]) + 270 == len(data["x"])
    run = tmp_path / "run"
    argv = ["train", "vae_digits", "--steps", "1", "--seed", "2", "--set", "hidden=[8]"]
    assert main([*argv, "--no-progress", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["rows"] == {"train": 1527, "test": 270}
    from zoo.cli.runs import _split

    cli_train, cli_test = _split(model, data, 2)
    assert torch.equal(cli_test["x"], held_out["x"]) and torch.equal(cli_train["x"], train["x"])
    assert zoo.create("eight_schools").split(zoo.create("eight_schools").default_data())[1] is None


def test_readme_python_example_runs():
    """The README's Python block, as a user pastes it (fewer steps)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Using a model from Python", 1)[1].split("```python", 1)[1]
    code = block.split("```", 1)[0].replace("steps=3000", "steps=30")
    exec(compile(code, "README.md", "exec"), {})
