"""DiGIT (paper 30): the paper's own checks at digit scale, each able to fail: discriminative
tokens are more stable under pixel noise (two tokenizer seeds), and the same GPT over them
gives better linear-probe features and samples the judge finds more class-consistent; the
rate plumbing (uniform head = log2 K bits) and the model's own bad inputs."""

import math

import numpy as np
import pyro
import pytest
import torch

import zoo
from inference.data import DataError
from inference.representation import linear_probe
from inference.svi import fit
from zoo.base import ConfigError
from zoo.models.digit_tokens import patches

SMALL = {
    "tokenizer_rows": 500,
    "encoder_steps": 300,
    "decoder_steps": 300,
    "judge_steps": 600,
    "width": 32,
    "layers": 1,
    "heads": 2,
    "samples_per_class": 20,
}


def small(tokenizer, seed=0, **overrides):
    return zoo.create(
        "digit_tokens", tokenizer=tokenizer, tokenizer_seed=seed, **{**SMALL, **overrides}
    )


def test_patches_are_2x2_blocks_in_raster_order():
    x = torch.arange(64.0).reshape(1, 64)
    p = patches(x)
    assert p.shape == (1, 16, 4)
    assert p[0, 0].tolist() == [0.0, 1.0, 8.0, 9.0]
    assert p[0, 5].tolist() == [18.0, 19.0, 26.0, 27.0]  # grid row 1, column 1


@pytest.mark.parametrize("seed", [0, 1])
def test_discriminative_tokens_change_less_under_pixel_noise(seed):
    rates = {}
    for kind in ("discriminative", "reconstructive"):
        model = small(kind, seed, decoder_steps=1)
        x = model.default_data()["x"][:400]
        rates[kind] = model.tokenizer.change_rate(x, 0.1, seed=seed)
    # measured about 0.23 against 0.39: a margin a random encoder does not reach
    assert rates["discriminative"] < rates["reconstructive"] - 0.05, rates


def test_uniform_head_costs_log2_k_bits_per_token():
    model = small("reconstructive", decoder_steps=1, codebook_size=16)
    x = model.default_data()["x"][:20]
    per_token = -model.token_log_prob(None, x) / math.log(2.0)  # head = 0: uniform logits
    assert torch.allclose(per_token, torch.full_like(per_token, 4.0), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_same_gpt_over_discriminative_tokens_probes_and_samples_better(seed):
    out = {}
    for kind in ("discriminative", "reconstructive"):
        model = small(kind, seed)
        data = model.default_data()
        train, test = model.split(data, seed=seed)
        pyro.set_rng_seed(seed)
        fit(model, model.guide, train, steps=300, batch_size=64, lr=3e-3, progress=False, seed=seed)
        bits = -model.token_log_prob(model.guide, test["x"]).mean() / math.log(2.0)
        assert float(bits) < 0.75 * math.log2(64), (kind, float(bits))  # far below uniform
        probe = linear_probe(
            model.hidden(train["x"]), train["label"], model.hidden(test["x"]), test["label"]
        )["accuracy"]
        consistency = model.class_consistency(model.guide, seed=seed)["sample_consistency"]
        out[kind] = (probe, consistency)
    (dp, dc), (rp, rc) = out["discriminative"], out["reconstructive"]
    # measured (seeds 0, 1): probes 0.88, 0.87 against 0.60, 0.54; judged class-consistency
    # 0.43, 0.31 against 0.20, 0.21 after these short fits (chance: 0.1)
    assert dp > rp + 0.15, out
    assert dc > rc + 0.05, out
    assert dc > 0.25, out


def test_bad_config_and_data_give_one_line_errors():
    with pytest.raises(ConfigError, match="tokenizer must be one of"):
        zoo.create("digit_tokens", tokenizer="vqgan")
    with pytest.raises(ConfigError, match="codebook_size"):
        zoo.create("digit_tokens", codebook_size=1)
    with pytest.raises(ConfigError, match="divisible by heads"):
        zoo.create("digit_tokens", width=30, heads=4)
    with pytest.raises(ConfigError, match="label_dropout"):
        zoo.create("digit_tokens", label_dropout=1.0)
    model = zoo.create("digit_tokens", tokenizer_rows=200)
    data = {k: v[:10].numpy().copy() for k, v in model.default_data().items()}
    bad = {**data, "x": data["x"].copy()}
    bad["x"][0, 0] = np.nan
    with pytest.raises(DataError, match="'x'"):
        model.validate(bad)
    bad = {**data, "x": data["x"] + 2.0}
    with pytest.raises(DataError, match="'x'"):
        model.validate(bad)
    bad = {**data, "label": np.full(10, 10)}
    with pytest.raises(DataError, match="'label'"):
        model.validate(bad)
    bad = {**data, "x": data["x"][:, :60]}
    with pytest.raises(DataError, match="'x'"):
        model.validate(bad)
