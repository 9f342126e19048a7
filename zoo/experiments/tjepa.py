"""T-JEPA (paper 31): self-supervised pre-training of a table encoder by masked latent
prediction, judged by linear probes on frozen embeddings.

Per seed: the spec's synthetic table (8 informative columns driven by a shared 2-D factor,
24 noise columns; the label is the XOR of the factor's signs), 70% of rows to pre-train
and fit probes, 30% to test. Arms, each read out by the same linear probe
(:func:`inference.representation.linear_probe`: standardised, penalty by CV on the training
rows only) on the same rows:

- ``tjepa``: the model with one [REG] token, target (EMA) encoder, every output token
  concatenated (the paper's downstream input);
- ``noreg``: the same model and budget without [REG] tokens (the paper's collapse ablation);
- ``random``: the same encoder untrained (random weights, another draw);
- ``raw``: the standardised columns themselves (the simplest strong baseline).

Per arm also the collapse measures (embedding spread, effective rank) and, for encoders, the
share of the embedding's input-gradient attribution on the 8 informative columns (uniform:
0.25). The Bayesian read-out: a logistic regression by NUTS
(:func:`inference.representation.bayesian_linear_probe`) on the first 8 principal
components of the T-JEPA embeddings and on the 8 of the raw columns (posterior accuracy with
its spread). A real table, ``load_breast_cancer`` (569 rows, 30 columns), with fewer steps:
T-JEPA, random init and raw columns by the same probe.
"""

from __future__ import annotations

import torch
from sklearn.decomposition import PCA

import zoo
from inference.representation import (
    bayesian_linear_probe,
    effective_rank,
    embedding_spread,
    linear_probe,
)
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.models.tjepa import column_attribution


def _pretrain(seed: int, train: dict, **config):
    torch.manual_seed(seed)
    model = zoo.create("tjepa", **config)
    fit(model, model.guide, train, config=model.config, seed=seed, progress=False)
    return model


def _untrained(seed: int, **config):
    torch.manual_seed(seed + 1)  # another draw of the initial weights than the fitted arms
    return zoo.create("tjepa", **config)


def _scores(prefix, z_train, z_test, train, test, out, task="classification"):
    key = "accuracy" if task == "classification" else "r2"
    y_train, y_test = train["y"].numpy(), test["y"].numpy()
    out[f"{prefix}/probe_{key}"] = linear_probe(z_train, y_train, z_test, y_test, task=task)[key]
    out[f"{prefix}/spread"] = embedding_spread(z_test)
    out[f"{prefix}/effective_rank"] = effective_rank(z_test)


@recipe(
    "tjepa",
    headline=[
        Figure("tjepa/probe_accuracy", "T-JEPA linear-probe accuracy (synthetic XOR table)", 3),
        Figure("random/probe_accuracy", "same encoder, random init", 3),
        Figure("raw/probe_accuracy", "raw columns", 3),
        Figure("noreg/probe_accuracy", "T-JEPA without [REG] tokens", 3),
        Figure("tjepa/spread", "embedding spread with [REG] (0: collapse)", 3),
        Figure("noreg/spread", "embedding spread without [REG]", 3),
        Figure("tjepa/informative_attribution", "attribution share on 8/32 informative cols", 3),
        Figure("tjepa/bayes_accuracy", "Bayesian (NUTS) probe accuracy, 8 PCs of T-JEPA", 3),
        Figure("raw/bayes_accuracy", "Bayesian probe accuracy, 8 PCs of raw columns", 3),
        Figure("breast_cancer/tjepa/probe_accuracy", "breast cancer: T-JEPA probe accuracy", 3),
        Figure("breast_cancer/raw/probe_accuracy", "breast cancer: raw-column probe accuracy", 3),
    ],
    settings={
        "rows": 1000,
        "steps": 400,
        "real_steps": 150,
        "bayes_dims": 8,
        "bayes_warmup": 100,
        "bayes_draws": 100,
    },
    quick={"rows": 200, "steps": 20, "real_steps": 10, "bayes_warmup": 20, "bayes_draws": 20},
    paper="Thimonier et al. (ICLR 2025)",
    data="synthetic table (spec): 8 informative columns from a 2-D factor, 24 noise columns, "
    "XOR label (per seed); sklearn load_breast_cancer",
    claim="Linear-probe accuracy on frozen T-JEPA embeddings against the same encoder at "
    "random init and the raw columns (same rows and probe, penalty by CV on train); "
    "embedding spread with and without [REG] tokens (the paper: collapse without); share "
    "of the embedding's attribution on the informative columns; a NUTS logistic probe.",
)
def tjepa(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    out: dict[str, float] = {}
    config = {"rows": s["rows"], "steps": s["steps"]}
    model = zoo.create("tjepa", **config)
    data = model.default_data(seed)
    train, test = model.split(data, seed)
    informative = list(model.informative_columns())

    arms = {
        "tjepa": _pretrain(seed, train, **config),
        "noreg": _pretrain(seed, train, n_reg=0, **config),
        "random": _untrained(seed, **config),
    }
    embedded = {}
    for arm, m in arms.items():
        z_train, z_test = m.embed(train["x"]).numpy(), m.embed(test["x"]).numpy()
        embedded[arm] = (z_train, z_test)
        _scores(arm, z_train, z_test, train, test, out)
        out[f"{arm}/mean_pool_probe_accuracy"] = linear_probe(
            m.embed(train["x"], pool="mean"),
            train["y"],
            m.embed(test["x"], pool="mean"),
            test["y"],
        )["accuracy"]
        out[f"{arm}/mean_pool_spread"] = embedding_spread(m.embed(test["x"], pool="mean"))
        share = column_attribution(m, test["x"])
        out[f"{arm}/informative_attribution"] = float(share[informative].sum())
    embedded["raw"] = (train["x"].numpy(), test["x"].numpy())
    _scores("raw", *embedded["raw"], train, test, out)

    # ----- the Bayesian read-out: NUTS on a few principal components ---------------------------
    for arm in ("tjepa", "raw"):
        z_train, z_test = embedded[arm]
        pca = PCA(s["bayes_dims"], random_state=seed).fit(z_train)
        result = bayesian_linear_probe(
            pca.transform(z_train),
            train["y"],
            pca.transform(z_test),
            test["y"],
            warmup=s["bayes_warmup"],
            draws=s["bayes_draws"],
            seed=seed,
        )
        out[f"{arm}/bayes_accuracy"] = result["accuracy"]
        out[f"{arm}/bayes_accuracy_sd"] = result["accuracy_sd"]
        out[f"{arm}/bayes_r_hat_max"] = result["r_hat_max"]

    # ----- a real table ------------------------------------------------------------------------
    real = {"table": "breast_cancer", "rows": None, "steps": s["real_steps"]}
    model = zoo.create("tjepa", **real)
    data = model.default_data(seed)
    train, test = model.split(data, seed)
    for arm, m in (
        ("tjepa", _pretrain(seed, train, **real)),
        ("random", _untrained(seed, **real)),
    ):
        _scores(
            f"breast_cancer/{arm}",
            m.embed(train["x"]).numpy(),
            m.embed(test["x"]).numpy(),
            train,
            test,
            out,
        )
    _scores("breast_cancer/raw", train["x"].numpy(), test["x"].numpy(), train, test, out)
    return {k: float(v) for k, v in out.items()}
