"""``fit(trainable=...)``: only the chosen parameters move; the rest stay bit-identical."""

import pytest
import torch

import zoo
from inference.svi import fit


def _pair():
    model = zoo.create("vae_digits", **zoo.get("vae_digits").tiny)
    data = model.default_data(seed=0)
    return model, model.guide, {k: v[:64] for k, v in data.items()}


def _values(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("how", ["prefix", "predicate"])
def test_only_the_trainable_parameters_move(how):
    model, guide, data = _pair()
    fit(model, guide, data, steps=1, seed=0, progress=False)  # create the parameters
    before = _values(model)  # the amortized guide's encoder lives on the model
    encoder = "model.encoder"
    chosen = [encoder] if how == "prefix" else (lambda name: name.startswith(encoder))
    fit(model, guide, data, steps=5, lr=0.05, seed=1, progress=False, trainable=chosen)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved, "no encoder parameter moved"
    assert all(n.startswith("encoder") for n in moved), sorted(moved)


def test_a_prefix_matching_nothing_is_refused():
    model, guide, data = _pair()
    with pytest.raises(ValueError, match="match no parameter"):
        fit(model, guide, data, steps=2, progress=False, trainable=["model.decodr"])
