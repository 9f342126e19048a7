"""Relative representations (paper 9): zero-shot stitching of encoders and decoders trained
from different seeds, on binarized load_digits.

Per seed ``s`` of the reproduce run: one held-out split (15%), and two training seeds of
each arm, ``A = s`` and ``B = s + 1000``, each with the same architecture widths, steps,
batch size and learning rate (the model's defaults, untuned for every arm):

- ``relative``: the Rel-VAE (``relrep``): heads read r(x), cosines to the 64 anchors.
- ``absolute``: the same network with the heads reading the embedding e(x) itself
  (``relative=False``, ``embed_dim = K = 64``: the same size), the paper's baseline.
- ``procrustes``: the absolute runs stitched through the orthogonal map and scale fitted
  on the embeddings of the same 64 anchors (A's to B's, orthogonal Procrustes): the
  simplest strong baseline with the same information as the relative encoder (the anchors)
  and no change to training.

Stitching: the trunk of run A computes the representation of each held-out digit; the
heads and decoder of run B decode it (and B -> A; the figure is the mean of both
directions). Reconstruction is the decoder's pixel means at the posterior mean, MSE per
pixel against the binary digit. ``stitch_ratio`` = stitched / non-stitched MSE;
``stitch_skill`` = (MSE of the mean training image - stitched) / (MSE of the mean image -
non-stitched): 1 when stitching loses nothing, 0 when the stitched decoder learns no more
than the mean image, negative when worse. (The spec's starting thresholds were ratio <= 1.5
relative and >= 3 absolute; on binary pixels the mean image already has 1.7-1.8x a trained
model's MSE, so the absolute ratio cannot reach 3 without anti-correlation: we state the
calibrated check as relative ratio <= 1.5 and absolute skill <= 0.25.)

Each relative/absolute pair is trained at two budgets, ``epochs`` (the model's default,
200) and ``short_epochs`` (60: the budget of the unit test), arms ``relative_short`` and
``absolute_short``: how stitching depends on training length.

Cross-seed similarity: :func:`inference.relative.relative_similarity` on the two runs'
trunk embeddings e(x) of the held-out digits, with the model's own anchors (centred cosine,
MRR, Jaccard@10), for each arm; beside it the same figure for two untrained trunks (random
weights from the two seeds: what the architecture alone gives) and for two seeds of the zoo's
``vae_digits`` (another model: its guide's posterior means of z, at the same epochs).
"""

from __future__ import annotations

import torch

import zoo
from inference.data import holdout_split
from inference.evaluation import elbo_per_row
from inference.relative import relative_similarity
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe

OTHER_SEED = 1000


def procrustes(source: torch.Tensor, target: torch.Tensor):
    """The map ``v -> s (v - mu_s) Q + mu_t`` with orthogonal ``Q`` and scale ``s`` that
    best sends the rows of ``source`` onto those of ``target`` (least squares)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sv, vt = torch.linalg.svd(a.T @ b)
    q = u @ vt
    scale = sv.sum() / (a**2).sum()
    return lambda v: scale * (v - mu_s) @ q + mu_t


def _fit(name: str, seed: int, train: dict, epochs: float, **config):
    model = zoo.create(name, epochs=epochs, **config)
    torch.manual_seed(seed)
    fit(model, model.guide, train, config=model.config, seed=seed, progress=False)
    model.eval()
    return model


def _stitching(a, b, x: torch.Tensor, mean_mse: float, **stitch_ab) -> dict[str, float]:
    own = 0.5 * (a.reconstruction_mse(x) + b.reconstruction_mse(x))
    if stitch_ab:
        ab, ba = stitch_ab["ab"], stitch_ab["ba"]
        stitched = 0.5 * (
            b.reconstruction_mse(x, encoder=a.encoder, transform=ab)
            + a.reconstruction_mse(x, encoder=b.encoder, transform=ba)
        )
    else:
        stitched = 0.5 * (
            b.reconstruction_mse(x, encoder=a.encoder) + a.reconstruction_mse(x, encoder=b.encoder)
        )
    return {
        "mse": own,
        "stitched_mse": stitched,
        "stitch_ratio": stitched / own,
        "stitch_skill": (mean_mse - stitched) / (mean_mse - own),
    }


def _similarity(embed_a, embed_b, x: torch.Tensor, anchors: torch.Tensor) -> dict[str, float]:
    """relative_similarity on the held-out rows with the anchors prepended (their indices
    0..K-1), scored on every row."""
    rows = torch.cat([anchors, x])
    sim = relative_similarity(embed_a, embed_b, rows, torch.arange(len(anchors)))
    return {f"similarity_{k}": v for k, v in sim.figures().items()}


@recipe(
    "relrep",
    headline=[
        Figure("relative/stitch_ratio", "Rel-VAE stitched / own reconstruction MSE", 2),
        Figure("absolute/stitch_ratio", "absolute VAE stitched / own MSE", 2),
        Figure("procrustes/stitch_ratio", "absolute + Procrustes on anchors, stitched / own", 2),
        Figure("relative/stitch_skill", "Rel-VAE stitching skill (1 = lossless, 0 = mean)", 2),
        Figure("absolute/stitch_skill", "absolute VAE stitching skill", 2),
        Figure("relative/similarity_cosine", "Rel-VAE cross-seed cosine of r(x)", 3),
        Figure("absolute/similarity_cosine", "absolute VAE cross-seed cosine of r(x)", 3),
        Figure("untrained/similarity_cosine", "untrained trunks, cross-seed cosine of r(x)", 3),
        Figure("vae_digits/similarity_cosine", "vae_digits z means, cross-seed cosine", 3),
        Figure("relative_short/stitch_ratio", "Rel-VAE stitched / own MSE, 60 epochs", 2),
        Figure("absolute_short/stitch_ratio", "absolute VAE stitched / own MSE, 60 epochs", 2),
        Figure("relative_short/similarity_cosine", "Rel-VAE cross-seed cosine, 60 epochs", 3),
        Figure("relative/heldout_elbo", "Rel-VAE held-out ELBO (nats/image)", 2),
        Figure("absolute/heldout_elbo", "absolute VAE held-out ELBO (nats/image)", 2),
    ],
    settings={"holdout": 0.15, "epochs": 200, "short_epochs": 60, "vae_digits": True},
    quick={"epochs": 2, "short_epochs": 1},
    paper="Moschella et al. (ICLR 2023)",
    data="load_digits binarized at half intensity (1797 images), 15% held out per seed; "
    "64 anchors at fixed indices of load_digits in every run",
    claim="Zero-shot stitching across training seeds (encoder of run A, heads and decoder of "
    "run B): reconstruction MSE ratio stitched / own for the Rel-VAE, the absolute VAE of "
    "the same size and budget, and the absolute VAE aligned by Procrustes on the same 64 "
    "anchors; cross-seed cosine of the relative representations (also for untrained trunks "
    "and for vae_digits); held-out ELBO.",
)
def relrep(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    data = zoo.create("relrep").default_data()
    train, test = holdout_split(data, s["holdout"], seed)
    x = test["x"]
    mean_mse = float(((x - train["x"].mean(0)) ** 2).mean())
    out: dict[str, float] = {"mean_image/mse": mean_mse}
    seeds = (seed, seed + OTHER_SEED)
    runs = {}
    arms = [("relative", True, s["epochs"]), ("absolute", False, s["epochs"])]
    arms += [
        ("relative_short", True, s["short_epochs"]),
        ("absolute_short", False, s["short_epochs"]),
    ]
    for arm, relative, epochs in arms:
        a, b = (_fit("relrep", sd, train, epochs, relative=relative) for sd in seeds)
        runs[arm] = (a, b)
        out |= {f"{arm}/{k}": v for k, v in _stitching(a, b, x, mean_mse).items()}
        elbo = [float(elbo_per_row(m, m.guide, test, num_particles=10).mean()) for m in (a, b)]
        out[f"{arm}/heldout_elbo"] = sum(elbo) / 2
        anchors = a.encoder.anchors
        out |= {
            f"{arm}/{k}": v
            for k, v in _similarity(a.encoder.embed, b.encoder.embed, x, anchors).items()
        }
    a, b = runs["absolute"]
    anchors = a.encoder.anchors
    with torch.no_grad():
        ea, eb = a.encoder.embed(anchors), b.encoder.embed(anchors)
    aligned = _stitching(a, b, x, mean_mse, ab=procrustes(ea, eb), ba=procrustes(eb, ea))
    out |= {f"procrustes/{k}": v for k, v in aligned.items()}

    untrained = []
    for sd in seeds:
        torch.manual_seed(sd)
        untrained.append(zoo.create("relrep"))
    out |= {
        f"untrained/{k}": v
        for k, v in _similarity(
            untrained[0].encoder.embed, untrained[1].encoder.embed, x, anchors
        ).items()
    }
    if s["vae_digits"]:
        va, vb = (_fit("vae_digits", sd, train, s["epochs"]) for sd in seeds)
        out |= {
            f"vae_digits/{k}": v
            for k, v in _similarity((va, va.guide), (vb, vb.guide), x, anchors).items()
        }
    return {k: float(v) for k, v in out.items()}
