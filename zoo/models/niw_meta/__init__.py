"""NIW-Meta (paper 7): the regression model (``niw_meta``) and the digits few-shot
classifier (``niw_meta_digits``) with its glyph version (``niw_meta_glyphs``), sharing the
NIW/NIG global prior and guide."""

from zoo.models.niw_meta import digits, glyphs, regression  # noqa: F401  (registers all three)
