"""Multi-latent VAE and per-group mutual information (paper 1), with the positive-view
experiment in :mod:`zoo.models.mlvgm_mi.positive_views`."""

from zoo.models.mlvgm_mi import model  # noqa: F401  (registers mlvgm_mi)
