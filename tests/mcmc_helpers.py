"""NUTS as the statistical tests run it: see :func:`inference.mcmc.quiet_nuts`."""

from inference.mcmc import quiet_nuts

__all__ = ["quiet_nuts"]
