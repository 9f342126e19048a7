"""qlae: InfoM / InfoE / InfoC and reconstruction of QLAE against an AE and a beta-VAE (the
same model class, same data, architecture, optimiser and steps), with PCA of the pixels as
the simplest code that needs no training."""

from __future__ import annotations

import pyro
import torch
from sklearn.decomposition import PCA

import zoo
from inference.diagnostics import infomec
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe

VARIANTS = ("qlae", "ae", "beta_vae")
#: what each arm reports (the figures of ``QLAE.evaluate``)
METRICS = ("reconstruction_bce_per_image", "infom", "infoe", "infoc", "active_latents")


def _data(s: dict) -> dict[str, torch.Tensor]:
    """The mini-dSprites of ``data_seed`` (the same images for every seed and arm), the
    first ``rows`` of them."""
    data = zoo.create("qlae").default_data(seed=s["data_seed"])
    return {k: v[: s["rows"]] for k, v in data.items()}


def _arm(variant: str, data, s: dict, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    model = zoo.create(
        "qlae", variant=variant, latent_dim=s["latent_dim"], hidden=tuple(s["hidden"])
    )
    fit(model, model.guide, data, config=model.config, steps=s["steps"], seed=seed, progress=False)
    metrics = model.evaluate(model.guide, data)
    return {f"{variant}/{key}": float(metrics[key]) for key in METRICS}


def _pca(data, s: dict) -> dict[str, float]:
    """InfoMEC of the first ``latent_dim`` principal components of the pixels: a linear
    code with no disentangling pressure (deterministic, so the same for every seed)."""
    x = data["x"].numpy()
    codes = PCA(n_components=s["latent_dim"]).fit_transform(x)
    result = infomec(codes, data["factors"].numpy())
    return {f"pca/{k}": float(v) for k, v in result.as_dict().items()}


@recipe(
    "qlae",
    headline=[
        Figure("qlae/infom", "InfoM, QLAE", 3),
        Figure("ae/infom", "InfoM, AE", 3),
        Figure("beta_vae/infom", "InfoM, beta-VAE", 3),
        Figure("pca/infom", "InfoM, PCA of pixels", 3),
        Figure("qlae/infoe", "InfoE, QLAE", 3),
        Figure("qlae/reconstruction_bce_per_image", "reconstruction (nats/image), QLAE", 2),
        Figure("beta_vae/reconstruction_bce_per_image", "reconstruction, beta-VAE", 2),
    ],
    settings={
        "steps": 1500,
        "latent_dim": 8,
        "hidden": [256, 256],
        "data_seed": 0,
        "rows": 3240,
    },
    quick={"steps": 3, "hidden": [16], "rows": 200},
    paper="Hsu et al., NeurIPS 2023 (paper 12)",
    data="mini-dSprites, 16x16, 4 factors (3240 images, data seed 0)",
    claim="InfoM, InfoE, InfoC of the codes against the 4 known factors and reconstruction "
    "cross-entropy of QLAE, a plain AE and a beta-VAE (beta 4): same images, architecture, "
    "AdamW with weight decay and steps, seeds pairing the arms; PCA of the pixels as the "
    "untrained baseline code.",
)
def qlae(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    data = _data(s)
    figures: dict[str, float] = {}
    for variant in VARIANTS:
        figures |= _arm(variant, data, s, seed)
    for key in ("infom", "infoe", "infoc"):
        best = max(figures[f"ae/{key}"], figures[f"beta_vae/{key}"])
        figures[f"qlae_minus_best_baseline/{key}"] = figures[f"qlae/{key}"] - best
    return figures | ctx.once("pca", lambda: _pca(data, s))
