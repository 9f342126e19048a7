"""Met2Net (paper 15): per-variable encoders and decoders, a cross-variable latent
translator and decoupled two-stage training, as a latent state-space model."""

from zoo.models.met2net import model  # noqa: F401  (registers met2net)
