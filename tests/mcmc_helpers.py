"""NUTS as the statistical tests run it: Pyro's warnings (chains drawn one after another
on few cores, step-size adaptation notes) silenced, nothing else changed."""

import warnings

from inference.mcmc import nuts


def quiet_nuts(model, data, **options):
    """:func:`inference.mcmc.nuts` with its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nuts(model, data, **options)
