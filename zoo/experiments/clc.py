"""clc (paper 29): the rate-distortion curve of a codec whose entropy model is conditioned on
a reference retrieved from a dictionary, against the same codec without it and against
sending the reference's index alone.

Per seed, digits: ``load_digits`` in [0, 1]; a seeded random 256 images are the dictionary
(shared by encoder and decoder; ``log2 256 = 8`` bits name an item), the rest are split at
random into training and test images; each image's reference is its nearest dictionary
item in PCA features. Photos (when ``photo_lams`` is not empty): greyscale 8x8 patches of
the two photos of ``sklearn.datasets.load_sample_images``; the dictionary (256 patches)
and the training patches come from the first photo (china), the test patches from the
second (flower), each with its nearest dictionary patch.

Arms, each trained by SVI on the same training images with the same architecture (MLP
widths, latent size), optimiser, learning rate and epochs, at each lambda:

- ``clc``: the model (entropy model and decoder conditioned on the reference), its rate
  charged ``log2 K`` bits of index per image;
- ``plain``: the same codec with a learned factorised entropy model and no reference;
- ``nearest``: no codec at all: the reference itself as the reconstruction, at the index's
  ``log2 K`` bits (the simplest baseline).

Every rate is measured with :mod:`inference.rate` on the test images (bits of the rounded
latent under the discretised Gaussian, plus ``index_bits``). Summaries: ``bd_psnr``, the
mean PSNR gain of ``clc`` over ``plain`` over the rates both curves cover (each linearly
interpolated; :func:`inference.rate.rd_gain`), and ``bd_bits``, the mean rate difference at
equal PSNR (negative: ``clc`` saves bits); ``bd_psnr`` is NaN where the two curves' rates
do not overlap (on the photos the conditioned curve sits wholly at lower rates, so
``photo/bd_bits`` is the photo summary). Hyperparameters are fixed for all seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import torch

import zoo
from inference.rate import index_bits, psnr, rd_gain
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.evidence.checks import Check
from zoo.models.clc import Dictionary, digits_split, photo_patches

LN2 = math.log(2.0)


def digits_task(seed: int, s: dict):
    """``(train, test, K)`` for the digits: dicts of ``x`` and ``ref`` tensors."""
    dictionary, x = digits_split(seed, s["dictionary_size"])
    if s.get("rows"):
        x = x[: s["rows"]]
    refs = dictionary.references(x)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[: s["test_rows"]], order[s["test_rows"] :]
    pack = lambda rows: {"x": torch.tensor(x[rows]), "ref": torch.tensor(refs[rows])}  # noqa: E731
    return pack(train), pack(test), len(dictionary)


def photo_task(seed: int, s: dict):
    """``(train, test, K)`` for the photos: dictionary and training patches from china,
    test patches from flower (seeded random subsets)."""
    rng = np.random.default_rng(seed)
    source, target = photo_patches(0), photo_patches(1)
    source = source[rng.permutation(len(source))]
    k, n = s["dictionary_size"], s["photo_rows"]
    dictionary = Dictionary(source[:k])
    train = source[k : k + n]
    test = target[rng.permutation(len(target))[: s["test_rows"]]]
    pack = lambda x: {"x": torch.tensor(x), "ref": torch.tensor(dictionary.references(x))}  # noqa: E731
    return pack(train), pack(test), len(dictionary)


def codec(reference: bool, lam: float, train: dict, size: int, s: dict, epochs: float, seed: int):
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    model = zoo.create(
        "clc",
        reference=reference,
        lam=float(lam),
        latent_dim=s["latent_dim"],
        hidden=tuple(s["hidden"]),
        dictionary_size=size,
    )
    fit(
        model,
        model.guide,
        train,
        epochs=epochs,
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=seed,
        progress=False,
    )
    return model


def curves(prefix: str, task, lams, epochs: float, seed: int, s: dict) -> dict[str, float]:
    train, test, size = task
    out: dict[str, float] = {}
    rd = {"clc": ([], []), "plain": ([], [])}
    for lam in lams:
        for arm, reference in (("clc", True), ("plain", False)):
            model = codec(reference, lam, train, size, s, epochs, seed)
            r = model.rate_distortion(test["x"], test["ref"])
            out[f"{prefix}{arm}/bits_{lam}"] = r["bits"]
            out[f"{prefix}{arm}/psnr_{lam}"] = r["psnr"]
            out[f"{prefix}{arm}/cost_{lam}"] = r["bits"] + lam * 64 * r["mse"] / LN2
            rd[arm][0].append(r["bits"])
            rd[arm][1].append(r["psnr"])
        out[f"{prefix}clc_minus_plain/cost_{lam}"] = (
            out[f"{prefix}clc/cost_{lam}"] - out[f"{prefix}plain/cost_{lam}"]
        )
    (cb, cp), (pb, pp) = rd["clc"], rd["plain"]
    out[f"{prefix}bd_psnr"] = rd_gain(cb, cp, pb, pp)
    out[f"{prefix}bd_bits"] = rd_gain(cp, cb, pp, pb)
    out[f"{prefix}nearest/bits"] = index_bits(size)
    out[f"{prefix}nearest/psnr"] = psnr(float((test["ref"] - test["x"]).pow(2).mean()))
    return out


@recipe(
    "clc",
    headline=[
        Figure("bd_psnr", "digits: PSNR gain of the reference over no reference (dB)", 2),
        Figure("bd_bits", "digits: rate change at equal PSNR (bits/image, index charged)", 1),
        Figure("clc/bits_200", "digits lambda 200: bits/image, conditioned (+8 index)", 1),
        Figure("plain/bits_200", "digits lambda 200: bits/image, unconditioned", 1),
        Figure("clc/psnr_200", "digits lambda 200: PSNR, conditioned (dB)", 2),
        Figure("plain/psnr_200", "digits lambda 200: PSNR, unconditioned (dB)", 2),
        Figure("nearest/psnr", "digits: the nearest reference alone, 8 bits (dB)", 2),
        Figure("photo/bd_bits", "photo patches: rate change at equal PSNR (bits/patch)", 1),
        Figure("photo/clc/bits_1000", "photo lambda 1000: bits/patch, conditioned (+8)", 1),
        Figure("photo/plain/bits_1000", "photo lambda 1000: bits/patch, unconditioned", 1),
    ],
    settings={
        "lams": (30, 200, 1000),
        "photo_lams": (100, 1000),
        "dictionary_size": 256,
        "test_rows": 400,
        "rows": None,
        "photo_rows": 1200,
        "latent_dim": 16,
        "hidden": (128,),
        "epochs": 200.0,
        "photo_epochs": 80.0,
        "batch_size": 128,
        "lr": 2e-3,
    },
    quick={
        "lams": (30, 200),
        "photo_lams": (100, 1000),
        "dictionary_size": 32,
        "test_rows": 50,
        "rows": 200,
        "photo_rows": 100,
        "latent_dim": 4,
        "hidden": (16,),
        "epochs": 2.0,
        "photo_epochs": 2.0,
    },
    paper="Chen et al., AAAI 2025 (paper 29)",
    data="load_digits in [0, 1] (256-image dictionary, 400 test images per seed); 8x8 "
    "greyscale patches of the two sklearn sample photos (dictionary and training from one, "
    "test on the other)",
    claim="Rate (bits per image, measured with inference.rate, the reference's index charged "
    "at log2 256 = 8 bits) and PSNR of a rate-distortion VAE with a uniform posterior whose "
    "discretised Gaussian entropy model (and decoder) see the nearest dictionary item, against "
    "the same codec without it, at 3 lambdas (2 on photos); and the nearest item alone at 8 "
    "bits. Same images, architecture, optimiser and epochs for both codecs.",
    checks=[
        Check(
            "digits: the conditioned RD curve lies above the unconditioned one (PSNR at equal "
            "rate, index charged)",
            "bd_psnr",
            ">=",
            0.0,
        ),
        Check(
            "digits: fewer bits at equal PSNR with the reference, index charged",
            "bd_bits",
            "<=",
            0.0,
        ),
        Check(
            "photos (test on the other photo): fewer bits at equal PSNR with the reference, "
            "index charged",
            "photo/bd_bits",
            "<=",
            0.0,
        ),
        Check(
            "digits lambda 200: the codec beats the nearest reference alone in PSNR",
            "clc/psnr_200",
            ">=",
            "nearest/psnr",
        ),
    ],
)
def clc(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    out = curves("", digits_task(seed, s), s["lams"], s["epochs"], seed, s)
    if s["photo_lams"]:
        photo = curves("photo/", photo_task(seed, s), s["photo_lams"], s["photo_epochs"], seed, s)
        out.update(photo)
    return out
