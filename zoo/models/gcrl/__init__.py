"""GCRL (paper 36): generative causal representation learning for out-of-distribution
motion forecasting, with invariant and environment-variant latents."""

from zoo.models.gcrl import model  # noqa: F401  (registers gcrl)
