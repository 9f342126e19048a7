"""Latent label shift (paper 25): classes discovered from domains whose label mix shifts,
on the paired-digit check, against simple baselines on the same rows.

Arms (all see the same pixels, domains and, where they use them, the same DDFA codes; none
sees a label): the Bayesian topic model over the DDFA codes fitted by SVI (the model); the
paper's own step 3, NMF of the code-by-domain table; k-means with K clusters on the raw
pixels; k-means with K clusters on the domain discriminator's outputs (the DDFA features
without any factorisation). Scores: Hungarian-matched accuracy of the per-point classes and
the mean L1 error of p(y | d) against each domain's label frequencies.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF

import guides
import zoo
from inference.metrics import match_classes
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.models.latent_label_shift import ddfa_codes, make_domains


def _label_mix(labels: np.ndarray, domain: np.ndarray, k: int, num_domains: int) -> np.ndarray:
    """Each domain's label frequencies, (D, K)."""
    freq = np.zeros((num_domains, k))
    np.add.at(freq, (domain, labels), 1)
    return freq / freq.sum(1, keepdims=True)


def cluster_scores(pred: np.ndarray, labels: np.ndarray, domain: np.ndarray, k: int) -> dict:
    """Hungarian accuracy of hard clusters and the L1 error of their per-domain
    frequencies (relabelled by the same matching) as an estimate of p(y | d)."""
    num_domains = int(domain.max()) + 1
    perm = match_classes(pred, labels, k)
    matched = perm[pred]
    truth = _label_mix(labels, domain, k, num_domains)
    estimate = _label_mix(matched, domain, k, num_domains)
    return {
        "accuracy": float(np.mean(matched == labels)),
        "pi_l1": float(np.abs(estimate - truth).sum(1).mean()),
    }


def nmf_scores(codes, domain, labels, k: int, num_codes: int, seed: int) -> dict:
    """The paper's step 3: NMF of p(c | d) = p(y | d) p(c | y); each point's class is
    argmax_y p(y | d) p(c | y), and p(y | d) is scored after the same matching."""
    num_domains = int(domain.max()) + 1
    table = np.zeros((num_domains, num_codes))
    np.add.at(table, (domain, codes), 1)
    table /= table.sum(1, keepdims=True)
    nmf = NMF(k, init="nndsvda", max_iter=2000, random_state=seed)
    w = nmf.fit_transform(table)
    h = nmf.components_
    scale = h.sum(1).clip(min=1e-12)
    phi = h / scale[:, None]  # p(c | y)
    pi = w * scale
    pi /= pi.sum(1, keepdims=True).clip(min=1e-12)  # p(y | d)
    pred = np.argmax(pi[domain] * phi[:, codes].T, -1)
    perm = match_classes(pred, labels, k)
    pi_matched = np.zeros_like(pi)
    pi_matched[:, perm] = pi
    truth = _label_mix(labels, domain, k, num_domains)
    return {
        "accuracy": float(np.mean(perm[pred] == labels)),
        "pi_l1": float(np.abs(pi_matched - truth).sum(1).mean()),
    }


@recipe(
    "latent_label_shift",
    headline=[
        Figure("svi/accuracy", "topic model (SVI) accuracy", 3),
        Figure("baseline_nmf/accuracy", "NMF of the code-domain table accuracy", 3),
        Figure("baseline_kmeans_pixels/accuracy", "k-means on pixels accuracy", 3),
        Figure("baseline_kmeans_ddfa/accuracy", "k-means on discriminator outputs accuracy", 3),
        Figure("svi/pi_l1", "topic model L1 error of the label mix", 3),
        Figure("baseline_nmf/pi_l1", "NMF L1 error of the label mix", 3),
        Figure("baseline_kmeans_pixels/pi_l1", "k-means pixels L1 error of the label mix", 3),
    ],
    settings={"per_domain": 80, "steps": 800, "lr": 0.05},
    quick={"per_domain": 20, "steps": 30},
    paper="Roberts et al. (NeurIPS 2022)",
    data="load_digits: 5 super-classes of digit pairs over 15 Dirichlet domains (per seed)",
    claim="Hungarian-matched accuracy and the L1 error of p(y | d) of the topic model over "
    "the DDFA codes (SVI) against NMF of the code-by-domain table (the paper's step 3), "
    "k-means on the pixels and k-means on the domain discriminator's outputs, same rows.",
)
def latent_label_shift(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    model = zoo.create("latent_label_shift", per_domain=s["per_domain"])
    c = model.config
    raw = make_domains(
        seed,
        num_domains=c.num_domains,
        per_domain=c.per_domain,
        alpha=c.alpha,
        max_cond=c.max_cond,
    )
    codes, p_domain = ddfa_codes(raw["x"], raw["domain"], c.num_codes, seed=seed)
    data = model.validate({"code": codes, "domain": raw["domain"], "label": raw["label"]})
    guide = guides.build("normal", model)
    torch.manual_seed(seed)
    fit(model, guide, data, steps=s["steps"], lr=s["lr"], seed=seed, progress=False)
    k, labels, domain = c.num_classes, raw["label"], raw["domain"]
    arms = {
        "svi": model.evaluate(guide, data),
        "baseline_nmf": nmf_scores(codes, domain, labels, k, c.num_codes, seed),
    }
    for name, features in (("pixels", raw["x"]), ("ddfa", p_domain)):
        pred = KMeans(k, n_init=4, random_state=seed).fit(features).labels_
        arms[f"baseline_kmeans_{name}"] = cluster_scores(pred, labels, domain, k)
    return {f"{arm}/{key}": float(v) for arm, scores in arms.items() for key, v in scores.items()}
