"""latent-zoo: latent-variable models from recent papers as Pyro models plus guides."""

from zoo import (  # noqa: F401  (importing a model module registers its models)
    ard_vae,
    capability_factors,
    causal_diffae,
    eight_schools,
    latent_label_shift,
    mlvgm_mi,
    mm_gpvae,
    niw_meta,
    niw_meta_digits,
    pac_invariance,
    posterior_collapse,
    pretraining,
    qlae,
    rep4ex,
    vae_digits,
)
from zoo.base import DATA_PLATE, ConfigError, ZooModel
from zoo.priors import PriorError, parse_prior
from zoo.registry import create, get, list_models, register

list = list_models  # noqa: A001  (``zoo.list()`` as in the design)

__all__ = [
    "DATA_PLATE",
    "ConfigError",
    "PriorError",
    "ZooModel",
    "create",
    "get",
    "list",
    "list_models",
    "parse_prior",
    "register",
]
