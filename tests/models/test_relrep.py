"""relrep (paper 9): the relative encoder's invariance, cross-seed similarity of r(x) and
zero-shot stitching across seeds (relative succeeds, absolute fails), the model's own bad
inputs.

Calibration (CPU, hidden (128,), 60 epochs, split seed 0, measured for this file): the
Rel-VAE's stitched / own reconstruction MSE was 1.02 (seeds 0, 1) and 1.03 (seeds 2, 3),
stitching skill 0.96 and 0.93, cross-seed centred cosine of r(x) 0.88 and 0.85; the absolute
VAE of the same size had ratio 1.67 and 1.57, skill -0.17 and -0.10 (no better than the mean
image), and two untrained trunks reach a cosine of about 0.6. The thresholds below sit
between: a model whose representation does not transfer misses them.
"""

import pytest
import torch

import zoo
from inference.data import DataError
from inference.svi import fit
from zoo.base import ConfigError
from zoo.experiments.relrep import _similarity, _stitching

SMALL = {"hidden": (128,), "epochs": 60}


def _orthogonal(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_representation_is_invariant_to_orthogonal_map_and_scale(seed):
    """(a): rotating and scaling the trunk's embedding (its last layer) leaves r(x)
    unchanged to 1e-6, in the model's own encoder (before the LayerNorm, in float64)."""
    torch.manual_seed(seed)
    model = zoo.create("relrep", layer_norm=False, hidden=(32,)).double()
    x = model.default_data()["x"][:200].double()
    before, embedded = model.encoder.represent(x), model.encoder.embed(x)
    q, scale = _orthogonal(model.config.embed_dim, seed), 7.5
    last = model.encoder.trunk[-1]
    with torch.no_grad():
        last.weight.copy_(scale * q.T @ last.weight)
        last.bias.copy_(scale * last.bias @ q)
    assert torch.allclose(model.encoder.embed(x), scale * embedded @ q)  # e moved
    assert (model.encoder.represent(x) - before).abs().max() < 1e-6
    # a non-orthogonal map of the embedding changes r: the check can fail
    with torch.no_grad():
        last.weight.mul_(torch.linspace(0.1, 3.0, model.config.embed_dim).double()[:, None])
    assert (model.encoder.represent(x) - before).abs().max() > 1e-2


@pytest.fixture(scope="module")
def pairs():
    data = zoo.create("relrep").default_data()
    out = []
    for seeds in ((0, 1), (2, 3)):
        runs = {}
        for relative in (True, False):
            fitted = []
            for seed in seeds:
                model = zoo.create("relrep", relative=relative, **SMALL)
                train, test = model.split(data, 0)
                torch.manual_seed(seed)
                fit(model, model.guide, train, config=model.config, seed=seed, progress=False)
                model.eval()
                fitted.append(model)
            runs[relative] = fitted
        out.append((runs, train, test))
    return out


def test_cross_seed_cosine_of_relative_representations(pairs):
    """(b): cos(r_A(x), r_B(x)) above 0.8 on held-out digits, for two pairs of seeds."""
    for runs, _, test in pairs:
        a, b = runs[True]
        sim = _similarity(a.encoder.embed, b.encoder.embed, test["x"], a.encoder.anchors)
        assert sim["similarity_cosine"] > 0.8, sim


def test_zero_shot_stitching_relative_succeeds_absolute_fails(pairs):
    """(c), calibrated: relative stitched MSE <= 1.2x its own and skill >= 0.7; absolute
    stitching no better than a quarter of the way from the mean image (skill <= 0.25)."""
    for runs, train, test in pairs:
        x = test["x"]
        mean_mse = float(((x - train["x"].mean(0)) ** 2).mean())
        rel = _stitching(*runs[True], x, mean_mse)
        absolute = _stitching(*runs[False], x, mean_mse)
        assert rel["stitch_ratio"] <= 1.2 and rel["stitch_skill"] >= 0.7, rel
        assert absolute["stitch_skill"] <= 0.25, absolute
        # both arms learn: their own reconstructions beat the mean image by far
        assert rel["mse"] < 0.75 * mean_mse and absolute["mse"] < 0.75 * mean_mse


def test_bad_config_and_inputs():
    with pytest.raises(ConfigError, match="num_anchors .* must be >= embed_dim"):
        zoo.create("relrep", num_anchors=16, embed_dim=32)
    with pytest.raises(ConfigError, match="num_anchors must be in"):
        zoo.create("relrep", num_anchors=5000)
    with pytest.raises(ConfigError, match="unknown config key"):
        zoo.create("relrep", anchors=3)
    model = zoo.create("relrep", **zoo.get("relrep").tiny)
    other = zoo.create("relrep", **{**zoo.get("relrep").tiny, "relative": False})
    x = model.default_data()["x"][:8]
    with pytest.raises(ValueError, match="cannot stitch"):
        model.reconstruct(x, encoder=other.encoder)
    with pytest.raises(DataError):
        model.reconstruct(x * 0.5)  # greyscale values for a Bernoulli likelihood
    with pytest.raises(DataError):
        model.reconstruct(torch.full((2, 64), float("nan")))
