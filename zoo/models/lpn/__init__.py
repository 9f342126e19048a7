"""Latent program network (paper 18): a continuous latent space of programs learnt from
input-output pairs, searched by gradient ascent at test time."""

from zoo.models.lpn import model  # noqa: F401  (registers lpn)
