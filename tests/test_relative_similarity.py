"""inference.relative: the relative projection's invariance (and its limits), and the
cross-run similarity on embedding functions and on a zoo model (vae_digits)."""

import pytest
import torch

import zoo
from inference.relative import (
    anchor_indices,
    latent_means,
    relative_projection,
    relative_similarity,
)


def _orthogonal(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_is_invariant_to_orthogonal_maps_and_scale(seed):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(200, 16, generator=g, dtype=torch.float64)
    anchors = e[:32]
    q, scale = _orthogonal(16, seed + 10), 0.01 + 50 * torch.rand(1, generator=g).item()
    r = relative_projection(e, anchors)
    moved = relative_projection(scale * e @ q, scale * anchors @ q)
    assert (moved - r).abs().max() < 1e-6
    # in float32 too (a model's embeddings), to the same 1e-6 at unit-ish scale
    r32 = relative_projection(e.float(), anchors.float())
    moved32 = relative_projection((e @ q).float(), (anchors @ q).float())
    assert (moved32 - r32).abs().max() < 1e-6


def test_projection_is_not_invariant_to_other_maps():
    """The check can fail: a shear, a translation or per-dimension scaling change r."""
    g = torch.Generator().manual_seed(0)
    e = torch.randn(200, 16, generator=g, dtype=torch.float64)
    r = relative_projection(e, e[:32])
    shear = torch.eye(16, dtype=torch.float64) + 0.5 * torch.randn(16, 16, generator=g)
    shift = e + 1.0
    stretch = e * torch.linspace(0.2, 5.0, 16, dtype=torch.float64)
    for moved in (e @ shear, shift, stretch):
        assert (relative_projection(moved, moved[:32]) - r).abs().max() > 0.1


def test_similarity_of_a_rotated_copy_is_one_and_of_an_unrelated_map_is_low():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 10, generator=g)
    w = torch.randn(10, 8, generator=g)
    q = _orthogonal(8, 4).float()
    anchors = anchor_indices(300, 20, seed=0)
    same = relative_similarity(lambda v: v @ w, lambda v: 3.0 * (v @ w) @ q, x, anchors)
    assert same.cosine > 1 - 1e-5 and same.mrr > 0.999 and same.jaccard > 0.999
    assert same.absolute_cosine < 0.9  # the raw embeddings do not agree
    other = torch.randn(10, 8, generator=g)
    unrelated = relative_similarity(lambda v: v @ w, lambda v: torch.tanh(v @ other), x, anchors)
    assert unrelated.cosine < 0.5 and unrelated.mrr < 0.3
    assert same.cosine_per_row.shape == (300,) and same.relative_a.shape == (300, 20)


def test_similarity_on_a_zoo_model_up_to_a_rotation_of_its_latent():
    """vae_digits and a copy whose encoder means are rotated (and scaled) have the same
    relative representation; a differently initialised copy does not."""
    torch.manual_seed(0)
    model = zoo.create("vae_digits", latent_dim=6, hidden=(32,))
    data = {"x": model.default_data()["x"][:300]}
    torch.manual_seed(1)
    rotated = zoo.create("vae_digits", latent_dim=6, hidden=(32,))
    rotated.load_state_dict(model.state_dict())
    q = _orthogonal(6, 7).float()
    last = rotated.encoder.net[-1]
    with torch.no_grad():  # loc = W x + b -> 2 (W x + b) Q (the loc rows of the last layer)
        last.weight[:6] = 2.0 * (q.T @ last.weight[:6])
        last.bias[:6] = 2.0 * (last.bias[:6] @ q)
    assert torch.allclose(
        latent_means(rotated, rotated.guide, data),
        2.0 * latent_means(model, model.guide, data) @ q,
        atol=1e-5,
    )
    anchors = anchor_indices(300, 32)
    same = relative_similarity((model, model.guide), (rotated, rotated.guide), data, anchors)
    assert same.cosine > 1 - 1e-5 and same.mrr > 0.999
    torch.manual_seed(2)
    fresh = zoo.create("vae_digits", latent_dim=6, hidden=(32,))
    other = relative_similarity((model, model.guide), (fresh, fresh.guide), data, anchors)
    assert other.cosine < same.cosine - 0.1


def test_bad_inputs_are_refused_with_one_line():
    x = torch.randn(50, 4)

    def embed(v):
        return v

    cases = [
        (dict(anchors=[0]), "at least 2 anchors"),
        (dict(anchors=[0, 50]), "anchor indices must lie"),
        (dict(anchors=[1, 1, 2]), "repeat"),
        (dict(anchors=[0, 1], top_k=50), "top_k"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            relative_similarity(embed, embed, x, **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        relative_similarity(embed, embed, torch.full((5, 4), float("nan")), [0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        relative_similarity(embed, lambda v: v / 0.0, x, [0, 1])
    with pytest.raises(ValueError, match="shape"):
        relative_similarity(embed, lambda v: v[:3], x, [0, 1])
    with pytest.raises(TypeError, match="embedding function or a"):
        relative_similarity(embed, "run_b", x, [0, 1])
    with pytest.raises(ValueError, match="different numbers of rows"):
        relative_similarity(embed, embed, {"x": x, "y": x[:3]}, [0, 1])
    with pytest.raises(ValueError, match="width"):
        relative_projection(torch.ones(3, 4), torch.ones(2, 5))
    with pytest.raises(ValueError, match="num_anchors"):
        anchor_indices(10, 11)
