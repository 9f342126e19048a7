"""CausalDiffAE (paper 28): a diffusion autoencoder whose semantic code is a structural
causal model."""

from zoo.models.causal_diffae import model  # noqa: F401  (registers causal_diffae)
