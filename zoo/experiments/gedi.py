"""GEDI (paper 21): clustering NMI of the full objective against its three ablations, on
``make_moons`` and ``make_circles`` (the spec's small check).

Per seed and data set: 1000 training points (noise 0.05) and 1000 test points of the same
generator (another seed). Arms, each with the same rows, steps (1000), batch size (128) and
Adam lr (3e-3; no arm is tuned), scored on the test points (tau = 0.3 for every arm, chosen
on the moons of seed 0 before the run: at 1.0 GEDI half-split the moons):

- ``gedi``: the paper's loss, L_GEN + L_INV + L_PRIOR (``variant="factor"``);
- ``gedi_enum`` (moons only, for time): the native variant, the shared cluster of the two
  views a site summed out by TraceEnum_ELBO (the invariance term is
  log sum_y pi_y p(y | x') p(y | x''));
- ``gen_only``: L_GEN alone (JEM trained unsupervised; its clusters are argmax f);
- ``inv_prior``: L_INV + L_PRIOR (SwAV-like, no generative term);
- ``inv_only``: L_INV alone, which should collapse to one cluster (NMI about 0);
- ``kmeans`` and ``gmm``: k-means (10 restarts) and a full-covariance Gaussian mixture on the
  raw points, the simplest strong baselines (fitted on the same training points).

Figures: NMI and Hungarian accuracy (:func:`inference.representation.cluster_scores`), the
number of clusters used, and the collapse measures of p(y | x) on the test points
(:func:`~inference.representation.embedding_spread`,
:func:`~inference.representation.effective_rank`).
"""

from __future__ import annotations

import torch
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

import zoo
from inference.representation import cluster_scores, effective_rank, embedding_spread
from inference.svi import fit
from zoo.evidence import Check, Figure, RunContext, recipe
from zoo.models.gedi import two_clusters

#: the ablations of the paper's check: config overrides of the full objective
ARMS = {
    "gedi": {},
    "gedi_enum": {"variant": "enum"},
    "gen_only": {"inv_weight": 0.0, "prior_weight": 0.0},
    "inv_prior": {"gen_weight": 0.0},
    "inv_only": {"gen_weight": 0.0, "prior_weight": 0.0},
}
DATASETS = ("moons", "circles")

#: why the circles checks are not met (written after the 3-seed run; see results/gedi.md)
CIRCLES_WHY = (
    "GEDI cut both rings in halves on every seed (NMI 0.00), as L_INV + L_PRIOR, k-means and "
    "the GMM did, while L_GEN alone separated them on 2 of 3 seeds; in GEDI's fit the energy "
    "had not learned the hole between the rings (SGLD samples fall in the centre), so the "
    "balanced cut the invariance and prior terms reach early stays: a local optimum at this "
    "budget (1000 steps, 5 SGLD steps, tau 0.3, unit weights; the spec's 7k iterations and "
    "the paper's weights not tried)"
)


def train_arm(arm: str, dataset: str, train: dict, seed: int, s: dict):
    """The model of ``arm`` fitted on ``train`` with the recipe's shared settings."""
    model = zoo.create(
        "gedi",
        dataset=dataset,
        rows=s["rows"],
        sgld_steps=s["sgld_steps"],
        **ARMS[arm],
    )
    torch.manual_seed(seed)
    fit(
        model,
        model.guide,
        train,
        steps=s["steps"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        elbo="enum" if arm == "gedi_enum" else "trace",
        seed=seed,
        progress=False,
    )
    return model


def _scores(prefix: str, pred, labels, probs=None) -> dict[str, float]:
    scores = cluster_scores(pred, labels)
    out = {f"{prefix}/{k}": float(scores[k]) for k in ("nmi", "hungarian_accuracy")}
    out[f"{prefix}/num_clusters"] = float(scores["num_clusters"])
    if probs is not None:
        out[f"{prefix}/spread"] = embedding_spread(probs)
        out[f"{prefix}/effective_rank"] = effective_rank(probs)
    return out


def _headline() -> list[Figure]:
    names = {
        "gedi": "GEDI",
        "gedi_enum": "GEDI, y enumerated",
        "gen_only": "L_GEN only",
        "inv_prior": "L_INV + L_PRIOR",
        "inv_only": "L_INV only",
        "kmeans": "k-means",
        "gmm": "GMM",
    }
    out = []
    for dataset in DATASETS:
        for arm, name in names.items():
            if arm == "gedi_enum" and dataset != "moons":
                continue
            out.append(Figure(f"{dataset}/{arm}/nmi", f"{dataset}: NMI, {name}", 3))
        out.append(
            Figure(f"{dataset}/inv_only/num_clusters", f"{dataset}: clusters used, L_INV only", 2)
        )
    return out


@recipe(
    "gedi",
    headline=_headline(),
    settings={
        "rows": 1000,
        "noise": 0.05,
        "steps": 1000,
        "batch_size": 128,
        "lr": 3e-3,
        "sgld_steps": 5,
    },
    quick={"rows": 200, "steps": 20, "sgld_steps": 2, "batch_size": 64},
    paper="Sansone & Manhaeve (TMLR 2025)",
    data="sklearn make_moons and make_circles (factor 0.5), noise 0.05; 1000 training and "
    "1000 test points per seed (the spec's 2000 and 7k iterations cut to 1000 steps of "
    "batch 128 and 5 SGLD steps for the time budget)",
    claim="Clustering NMI on held-out points of GEDI (all three terms; and its native variant "
    "with the cluster enumerated) against its ablations L_GEN only, L_INV + L_PRIOR and L_INV "
    "only (which collapses to one cluster), and against k-means and a GMM on the raw points; "
    "same rows, steps, batch size and Adam lr for every trained arm.",
    checks=[
        Check(
            "moons: GEDI's NMI above L_INV + L_PRIOR", "moons/gedi/nmi", ">=", "moons/inv_prior/nmi"
        ),
        Check("moons: GEDI's NMI above L_GEN only", "moons/gedi/nmi", ">=", "moons/gen_only/nmi"),
        Check("moons: L_INV alone collapses (NMI at most 0.05)", "moons/inv_only/nmi", "<=", 0.05),
        Check("moons: GEDI's NMI above k-means'", "moons/gedi/nmi", ">=", "moons/kmeans/nmi"),
        Check("moons: GEDI's NMI above the GMM's", "moons/gedi/nmi", ">=", "moons/gmm/nmi"),
        Check(
            "circles: GEDI separates the rings (NMI at least 0.5)",
            "circles/gedi/nmi",
            ">=",
            0.5,
            why=CIRCLES_WHY,
        ),
        Check(
            "circles: GEDI's NMI above L_GEN only",
            "circles/gedi/nmi",
            ">=",
            "circles/gen_only/nmi",
            why=CIRCLES_WHY,
        ),
        Check(
            "circles: L_INV alone collapses (NMI at most 0.05)",
            "circles/inv_only/nmi",
            "<=",
            0.05,
        ),
    ],
)
def gedi(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    out: dict[str, float] = {}
    for dataset in DATASETS:
        x, label = two_clusters(dataset, s["rows"], s["noise"], seed)
        test_x, test_label = two_clusters(dataset, s["rows"], s["noise"], seed + 10_000)
        train = {"x": torch.as_tensor(x), "label": torch.as_tensor(label)}
        for arm in ARMS:
            if arm == "gedi_enum" and dataset != "moons":
                continue  # (the native variant on the moons only: the run's time budget)
            model = train_arm(arm, dataset, train, seed, s)
            probs = model.cluster_probs(test_x).cpu().numpy()
            out.update(_scores(f"{dataset}/{arm}", probs.argmax(-1), test_label, probs))
        kmeans = KMeans(2, n_init=10, random_state=seed).fit(x)
        out.update(_scores(f"{dataset}/kmeans", kmeans.predict(test_x), test_label))
        gmm = GaussianMixture(2, covariance_type="full", n_init=3, random_state=seed).fit(x)
        out.update(
            _scores(f"{dataset}/gmm", gmm.predict(test_x), test_label, gmm.predict_proba(test_x))
        )
    return out
