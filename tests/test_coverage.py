"""Every registered model has its test file, tutorial and README row; a model module dropped
into zoo/models/ is found without editing any other file, and is then held to the same."""

import importlib
import sys
from pathlib import Path

import pytest

import zoo
from zoo import registry

REPO = Path(__file__).resolve().parents[1]


def missing_pieces(name: str, repo: Path = REPO) -> list[str]:
    """What model ``name`` lacks of the files every model has (empty when complete)."""
    family = registry.family(name)
    missing = []
    if not (repo / "tests" / "models" / f"test_{family}.py").is_file():
        missing.append(f"tests/models/test_{family}.py")
    if not (repo / "tutorials" / f"{family}.ipynb").is_file():
        missing.append(f"tutorials/{family}.ipynb")
    readme = (repo / "README.md").read_text()
    if f"| `{name}` |" not in readme:
        missing.append(f"a README row '| `{name}` |'")
    return missing


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_model_has_its_test_file_tutorial_and_readme_row(name):
    assert missing_pieces(name) == []


@pytest.mark.parametrize("name", zoo.list_models())
def test_registry_key_carries_its_family_name(name):
    family = registry.family(name)
    assert name == family or name.startswith(family + "_"), (
        f"model '{name}' is defined in zoo/models/{family}: its key must be '{family}' or "
        f"start with '{family}_'"
    )


def test_no_test_file_or_tutorial_without_a_model():
    families = {registry.family(name) for name in zoo.list_models()}
    tests = {p.stem.removeprefix("test_") for p in (REPO / "tests" / "models").glob("test_*.py")}
    tutorials = {p.stem for p in (REPO / "tutorials").glob("*.ipynb")}
    assert tests <= families and tutorials <= families


NEW_MODEL = '''
"""A dropped-in model (test fixture)."""
from dataclasses import dataclass

import pyro
import pyro.distributions as dist

from inference.data import Field
from zoo.base import TrainConfig, ZooModel
from zoo.registry import register


@register
class DroppedIn(ZooModel):
    """y_n ~ Normal(mu, 1), mu ~ Normal(0, 1): a model nobody listed anywhere."""

    name = "dropped_in"

    @dataclass
    class Config(TrainConfig):
        pass

    def data_spec(self):
        return {"y": Field(shape=())}

    def default_priors(self):
        return {"mu": dist.Normal(0.0, 1.0)}

    def model(self, batch):
        mu = pyro.sample("mu", self.prior("mu"))
        with self.data_plate(batch):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=batch["y"])
'''


@pytest.fixture
def dropped_in_model(tmp_path, monkeypatch):
    """A module ``dropped_in.py`` in a second folder of the ``zoo.models`` package, and the
    registry as a fresh process would see it."""
    (tmp_path / "dropped_in.py").write_text(NEW_MODEL)
    models = importlib.import_module("zoo.models")
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_discovered", False)
    yield "dropped_in"
    sys.modules.pop("zoo.models.dropped_in", None)


def test_a_model_dropped_into_zoo_models_is_listed_and_held_to_the_contract(
    dropped_in_model, tmp_path, capsys
):
    from zoo.cli import main

    assert dropped_in_model in zoo.list_models()
    assert registry.family(dropped_in_model) == "dropped_in"
    assert main(["list"]) == 0
    assert dropped_in_model in capsys.readouterr().out
    # the coverage check now fails for it: no test file, tutorial or README row
    assert missing_pieces(dropped_in_model) == [
        "tests/models/test_dropped_in.py",
        "tutorials/dropped_in.ipynb",
        "a README row '| `dropped_in` |'",
    ]
    # the contract's data check runs on it and names what is missing
    with pytest.raises(NotImplementedError):
        zoo.create(dropped_in_model).default_data()
