"""TrainConfig: the declared training fields that zoo train, svi.fit and Lightning read."""

import dataclasses
import json

import pytest

import zoo
from inference.config import TRAIN_FIELDS, TrainConfig
from inference.svi import _training_settings, fit
from tests.cli_helpers import error_line
from zoo.base import ZooModel
from zoo.cli import main
from zoo.registry import register


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_model_config_declares_the_training_fields(name):
    config = zoo.create(name).config
    assert isinstance(config, TrainConfig)
    assert set(TRAIN_FIELDS) <= {f.name for f in dataclasses.fields(config)}


def test_a_misspelt_training_field_is_refused_with_the_valid_names(tmp_path, capsys):
    with pytest.raises(zoo.ConfigError, match=r"unknown config key\(s\) \['learning_rate'\].*'lr'"):
        zoo.create("eight_schools", learning_rate=0.1)
    out = tmp_path / "run"
    argv = ["train", "eight_schools", "--set", "learning_rate=0.1", "--out", str(out)]
    assert main(argv) == 2
    line = error_line(capsys)
    assert "learning_rate" in line and "'lr'" in line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": 0.0}, "lr must be positive"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"steps": 2.5}, "steps must be a positive integer"),
        ({"epochs": -1.0}, "epochs must be positive"),
        ({"optimizer": "sgd"}, r"unknown optimizer 'sgd'; valid: \['auto', 'adam'"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"clip_norm": 0.0}, "clip_norm must be positive"),
        ({"holdout": 1.0}, r"holdout must be in \[0, 1\)"),
    ],
)
def test_out_of_range_training_fields_are_refused(overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create("vae_digits", **overrides)


def test_optimizer_auto_and_the_step_budget():
    assert TrainConfig().resolved_optimizer() == "adam"
    assert TrainConfig(weight_decay=0.1).resolved_optimizer() == "adamw"
    assert TrainConfig(weight_decay=0.1, optimizer="clipped_adam").resolved_optimizer() == (
        "clipped_adam"
    )
    assert TrainConfig().total_steps(100) == TrainConfig.DEFAULT_STEPS
    assert TrainConfig(epochs=2.0, batch_size=30).total_steps(100) == 8  # 4 batches a pass
    assert TrainConfig(epochs=2.0, batch_size=500).total_steps(100) == 2  # batch > rows
    assert TrainConfig(steps=7, epochs=2.0).total_steps(100) == 7  # steps take precedence


def test_fit_takes_unpassed_settings_from_the_config():
    config = TrainConfig(lr=0.5, batch_size=3, epochs=2.0, weight_decay=0.1, clip_norm=2.0)
    names = ("steps", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "clip_norm")
    from inference.svi import _UNSET

    unset = dict.fromkeys(names, _UNSET)
    assert _training_settings(config, **unset) == (None, 2.0, 3, "adamw", 0.5, 0.1, 2.0)
    # an explicit budget replaces the config's; an explicit lr wins over the config's
    given = {**unset, "steps": 5, "lr": 0.1}
    assert _training_settings(config, **given) == (5, None, 3, "adamw", 0.1, 0.1, 2.0)
    # without a config: fit's own defaults
    assert _training_settings(None, **given) == (5, None, None, "adam", 0.1, 0.0, None)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        _training_settings({"lr": 0.1}, **unset)


def test_fit_with_the_model_config_trains_like_zoo_train(tmp_path):
    model = zoo.create("eight_schools", steps=30, lr=0.05)
    result = fit(model, model.guide, model.default_data(), config=model.config, progress=False)
    assert len(result.losses) == 30
    run = tmp_path / "run"
    assert (
        main(["train", "eight_schools", "--set", "steps=30", "--no-progress", "--out", str(run)])
        == 0
    )
    record = json.loads((run / "config.json").read_text())
    assert record["steps"] == 30 and record["config"]["steps"] == 30


def test_a_model_config_must_subclass_train_config():
    class Loose(ZooModel):
        name = "loose_config_model"

        @dataclasses.dataclass
        class Config:
            latent_dim: int = 2

    with pytest.raises(TypeError, match="Config must be a dataclass subclassing TrainConfig"):
        register(Loose)
    assert "loose_config_model" not in zoo.list_models()
