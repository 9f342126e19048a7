"""The synthetic glyph generator (the zoo's Omniglot stand-in) and NIW-Meta on glyphs:
determinism by seed, distinct classes, refusal of requests it cannot honour, episode sizes
the class pool cannot fill, and a short meta-training run that beats chance."""

import numpy as np
import pytest

from zoo.datasets.glyphs import (
    MAX_CLASSES,
    MIN_DISTANCE,
    GlyphError,
    glyph_classes,
    glyph_set,
    render,
)


def test_glyphs_are_deterministic_by_seed_and_differ_across_seeds():
    ctrl, mask = glyph_classes(30, seed=3)
    again, mask2 = glyph_classes(30, seed=3)
    other, _ = glyph_classes(30, seed=4)
    assert np.array_equal(ctrl, again) and np.array_equal(mask, mask2)
    assert not np.allclose(ctrl, other)
    a = render(ctrl, mask, 4, seed=1)
    assert a.shape == (30, 4, 400) and a.dtype == np.float32
    assert np.array_equal(a, render(ctrl, mask, 4, seed=1))
    assert not np.array_equal(a, render(ctrl, mask, 4, seed=2))
    assert 0.0 <= a.min() and a.max() <= 1.0 and 0.03 < a.mean() < 0.4  # ink, not blank


def test_glyph_classes_are_distinct_and_instances_vary_less_than_classes():
    ctrl, mask = glyph_classes(200, seed=0)
    canonical = render(ctrl, mask, 1, jitter=0.0, affine=0.0)[:, 0]
    rms = np.sqrt(((canonical[:, None] - canonical[None]) ** 2).mean(-1))
    np.fill_diagonal(rms, np.inf)
    # the generator's promise, with a margin for the pen (canonical renders use the mean pen)
    assert rms.min() >= 0.8 * MIN_DISTANCE
    # an instance is closer to its own class's other instances than a random class's on
    # average: within-class variation is smaller than between-class
    images = render(ctrl, mask, 2, seed=5)
    within = np.sqrt(((images[:, 0] - images[:, 1]) ** 2).mean(-1)).mean()
    between = np.sqrt(((images[:, 0] - np.roll(images[:, 1], 1, 0)) ** 2).mean(-1)).mean()
    assert within < 0.8 * between


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=MAX_CLASSES + 1), f"must be an integer in [1, {MAX_CLASSES}]"),
        (dict(num_classes=0), "num_classes must be an integer in [1,"),
        (dict(num_classes=10, side=4), "side must be an integer in [8, 64]"),
    ],
)
def test_glyph_generator_refuses_what_it_cannot_make_in_one_line(kwargs, message):
    with pytest.raises(GlyphError) as info:
        glyph_classes(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_glyph_set_is_cached_and_read_only():
    a = glyph_set(12, 3)
    assert a is glyph_set(12, 3) and a.shape == (12, 3, 400)
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1.0


# ----- NIW-Meta on glyphs ------------------------------------------------------------------

TINY_GLYPHS = dict(base_classes=30, val_classes=10, test_classes=10, per_class=8,
                   pretrain_steps=5, num_episodes=20, test_episodes=6, sgld_chains=2,
                   channels=4, feat_dim=4)  # fmt: skip


def test_glyph_episodes_have_the_configured_shape_and_disjoint_class_pools():
    import zoo

    model = zoo.create("niw_meta_glyphs", ways=3, shots=2, queries=3, **TINY_GLYPHS)
    data = model.default_data(seed=1)
    assert data["x_support"].shape == (20, 6, 400) and data["y_query"].shape == (20, 9)
    assert np.array_equal(data["y_support"][0].numpy(), [0, 0, 1, 1, 2, 2])
    digits = model.digit_episodes(num=4, seed=0)
    assert digits["x_query"].shape == (4, 9, 400) and 0 <= digits["x_query"].min()
    pools = [model.pool(s) for s in ("base", "val", "test")]
    assert [len(p) for p in pools] == [30, 10, 10]
    flat = [p.reshape(len(p), -1) for p in pools]
    assert not (flat[0][:, None] == flat[2][None]).all(-1).any()  # no test class is a base one


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(ways=11), "ways must be in [2, 10]"),
        (dict(shots=5, queries=4), "shots + queries = 9 exceeds per_class = 8"),
        (dict(base_classes=4990), "exceeds the glyph generator's 5000 distinct classes"),
    ],
)
def test_episode_sizes_the_pools_cannot_fill_are_refused_before_training(overrides, message):
    import zoo
    from zoo.base import ConfigError

    with pytest.raises(ConfigError) as info:
        zoo.create("niw_meta_glyphs", **{**TINY_GLYPHS, **overrides})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_digit_episodes_refuse_more_than_ten_ways():
    import zoo
    from zoo.base import ConfigError

    model = zoo.create("niw_meta_glyphs", **{**TINY_GLYPHS, "ways": 10, "val_classes": 12,
                                              "test_classes": 12})  # fmt: skip
    model.digit_episodes(num=2)
    wide = zoo.create("niw_meta_glyphs", **{**TINY_GLYPHS, "ways": 12, "val_classes": 12,
                                             "test_classes": 12})  # fmt: skip
    with pytest.raises(ConfigError, match="digit episodes need ways <= 10"):
        wide.digit_episodes(num=2)


def test_episode_logreg_separates_separable_supports():
    import torch

    from zoo.models.niw_meta.glyphs import episode_logreg_logits

    torch.manual_seed(0)
    means = torch.randn(4, 3, 6) * 3
    fs = means.repeat_interleave(2, 1) + 0.1 * torch.randn(4, 6, 6)
    ys = torch.arange(3).repeat_interleave(2)[None].expand(4, 6)
    fq = means + 0.1 * torch.randn(4, 3, 6)
    logits = episode_logreg_logits(fs, ys, fq, 3, l2=0.01)
    assert (logits.argmax(-1) == torch.arange(3)).all()


# ----- the adapter parametrisation (theta = the network's top layer) -----------------------


def test_sgld_started_at_prior_draws_recovers_a_gaussian_targets_variance():
    """Chains started at draws of the target recover its variance in a few steps; chains all
    started at the mean report the random walk's spread (Abar far too large): why the adapter's
    local step starts at prior draws."""
    import torch

    from zoo.models.niw_meta.digits import sgld_moments

    torch.manual_seed(0)
    precision = torch.full((200,), 50.0)

    def log_target(theta):
        return -0.5 * (theta**2 * precision).sum(-1)

    options = dict(steps=3, burnin=5, step_size=0.1, chains=64, a_min=1e-6, a_max=1e6,
                   preconditioner=precision.reciprocal())  # fmt: skip
    _, dispersed = sgld_moments(log_target, torch.zeros(200), init_sd=precision.rsqrt(), **options)
    _, pinned = sgld_moments(log_target, torch.zeros(200), **options)
    assert abs(float(dispersed.median()) / 50.0 - 1.0) < 0.2
    assert float(pinned.median()) > 1.5 * 50.0


def test_adapter_starts_as_the_identity_and_a_flat_support_leaves_the_prior():
    """At initialisation (identity adapter, tight prior) NIW-Meta's predictive is the prototype
    readout of the pre-trained network's normalised features; and the local posterior's
    precision is never below the prior's."""
    import torch
    from pyro import poutine

    import zoo
    from inference.data import full_batch

    model = zoo.create("niw_meta_glyphs", **{**TINY_GLYPHS, "prior_precision_init": 1e8})
    episodes = model.episodes("val", 5, seed=0)
    probs = model.predict_proba(model.guide, episodes, num_samples=3)
    net = model.initial_features()
    with torch.no_grad():
        fs, fq = net(episodes["x_support"]), net(episodes["x_query"])
    onehot = torch.nn.functional.one_hot(episodes["y_support"], model.config.ways).float()
    protos = onehot.mT @ fs / onehot.sum(-2).unsqueeze(-1)
    expected = (-(torch.cdist(fq, protos) ** 2)).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-3)
    model2 = zoo.create("niw_meta_glyphs", **TINY_GLYPHS)
    fn = poutine.trace(model2.guide).get_trace(full_batch(episodes)).nodes["theta"]["fn"]
    prior_sd = (model2.guide.rate / model2.guide.shape).sqrt()
    assert (fn.base_dist.scale <= prior_sd * (1 + 1e-5)).all()


def test_adapter_niw_meta_learns_to_beat_chance_on_held_out_glyphs():
    import zoo
    from inference.svi import fit

    config = dict(base_classes=60, val_classes=10, test_classes=20, per_class=8,
                  pretrain_steps=30, num_episodes=200, test_episodes=40, sgld_chains=4,
                  channels=4, feat_dim=8)  # fmt: skip
    model = zoo.create("niw_meta_glyphs", **config)
    fit(model, model.guide, model.default_data(seed=0), steps=30, batch_size=16, lr=0.005,
        seed=0, progress=False)  # fmt: skip
    test = model.novel_episodes()
    probs = model.predict_proba(model.guide, test)
    accuracy = float((probs.argmax(-1) == test["y_query"]).float().mean())
    assert accuracy > 0.5  # chance is 0.2; the head version (theta="head") gets ~0.25
