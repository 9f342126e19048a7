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
