"""NIW-Meta (Kim & Hospedales, ICLR 2024): the regression model against per-task Bayesian
ridge, a pooled fit and MAML with its step size tuned on validation episodes, with SBC of
the closed-form guide; the digits classifier's accuracy and calibration against baselines
that get a temperature (and MAML a step size) fitted on validation episodes, and against
nearest centroid and logistic regression on raw pixels."""

from __future__ import annotations

import torch

import zoo
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.evidence.calibration import sbc_figures
from zoo.models.niw_meta.baselines import (
    centroid_logits,
    fit_temperature,
    logistic_probs,
    nll,
    tune_on_validation,
)
from zoo.models.niw_meta.digits import (
    BASE_CLASSES,
    calibration_scores,
    digit_episodes,
    train_maml,
    train_protonet,
)
from zoo.models.niw_meta.regression import maml

# ----- regression: SineLine ----------------------------------------------------------------


def _split(data, sizes):
    """Consecutive episode blocks of ``sizes`` (train, validation, test)."""
    out, start = [], 0
    for size in sizes:
        out.append({k: v[start : start + size] for k, v in data.items()})
        start += size
    return out


def _tuned_maml(model, train, val, test, s, seed: int) -> dict[str, float]:
    """MAML with its (initial, then meta-learned) inner step size chosen from a grid by
    validation query MSE; the chosen run is scored on the test episodes."""
    options = dict(inner_steps=s["maml_inner_steps"], outer_steps=s["steps"],
                   batch_size=s["batch_size"], seed=seed)  # fmt: skip
    val_mse = {lr: maml(model, train, val, inner_lr=lr, **options)["maml_query_mse"]
               for lr in s["maml_inner_lr_grid"]}  # fmt: skip
    best = min(val_mse, key=val_mse.get)
    out = maml(model, train, test, inner_lr=best, **options)
    return {"maml/query_mse": out["maml_query_mse"], "maml/inner_lr_init": float(best),
            "maml/inner_lr_learned": out["maml_inner_lr"]}  # fmt: skip


def _guide_sbc(s) -> dict[str, float]:
    """SBC of the closed-form guide (trained by SVI) on the tiny conjugate version: ranks of
    the true ``mu`` and ``precision`` among the guide's draws, beside the same draws made
    1.5x too narrow."""
    options = dict(covariance="diag", num_rbf=0, nu0=6.0, psi0=4.0, queries=5, num_tasks=30)
    model = zoo.create("niw_meta", **options)

    def simulate(replicate_seed):
        truth, data = model.simulate(replicate_seed)
        return {"mu": truth["mu"], "precision": truth["precision"]}, data

    def fit_draws(data, replicate_seed):
        fresh = zoo.create("niw_meta", **options)
        fit(fresh, fresh.guide, data, steps=s["sbc_steps"], lr=0.05, seed=replicate_seed,
            lr_schedule="exponential", lr_final_factor=0.1, progress=False)  # fmt: skip
        mus, precisions = fresh.global_draws(fresh.guide, data, s["sbc_draws"], replicate_seed)
        return {"mu": mus, "precision": torch.diagonal(precisions, dim1=-2, dim2=-1)}

    figures, _ = sbc_figures(simulate, fit_draws, num_replicates=s["sbc_replicates"],
                             params=["mu", "precision"], seed=0)  # fmt: skip
    return figures


@recipe(
    "niw_meta",
    headline=[
        Figure("niw/query_mse", "NIW-Meta query MSE", 3),
        Figure("ridge/query_mse", "per-task ridge MSE", 3),
        Figure("maml/query_mse", "tuned MAML MSE", 3),
        Figure("pooled/query_mse", "pooled MSE", 2),
        Figure("niw/coverage90", "NIW 90% coverage", 3),
        Figure("ridge/coverage90", "ridge 90% coverage", 3),
        Figure("sbc/min_pvalue", "guide SBC smallest p", 3),
    ],
    settings={
        "train_tasks": 400,
        "val_tasks": 200,
        "test_tasks": 200,
        "steps": 300,
        "batch_size": 64,
        "lr": 0.05,
        "maml_inner_steps": 5,
        "maml_inner_lr_grid": [0.005, 0.02, 0.08],
        "sbc_replicates": 100,
        "sbc_draws": 40,
        "sbc_steps": 150,
    },
    quick={
        "train_tasks": 40,
        "val_tasks": 20,
        "test_tasks": 20,
        "steps": 10,
        "maml_inner_lr_grid": [0.02],
        "sbc_replicates": 3,
        "sbc_draws": 5,
        "sbc_steps": 5,
    },
    paper="Kim & Hospedales, ICLR 2024 (NIW-Meta), head-only version",
    data="SineLine episodes (5 shots, 50 queries; train / validation / test episodes drawn "
    "per seed)",
    claim="Query MSE and 90% predictive-interval coverage given 5-shot supports on held-out "
    "SineLine episodes: NIW-Meta (closed-form local step) against per-task Bayesian ridge "
    "(prior precision by each task's evidence), one pooled head, and second-order MAML on the "
    "same features with its inner step size chosen on validation episodes. SBC of the trained "
    "closed-form guide (mu and precision of a tiny conjugate version), run once for all "
    "seeds, with its power and whether 1.5x-narrowed draws are rejected.",
)
def niw_meta(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    sizes = (s["train_tasks"], s["val_tasks"], s["test_tasks"])
    model = zoo.create("niw_meta", num_tasks=sum(sizes))
    train, val, test = _split(model.default_data(seed=seed), sizes)
    fit(model, model.guide, train, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
        seed=seed, progress=False)  # fmt: skip
    scores = model.evaluate(model.guide, test)
    figures = {}
    for arm in ("niw", "ridge", "pooled"):
        figures[f"{arm}/query_mse"] = scores[f"{arm}_query_mse"]
        figures[f"{arm}/coverage90"] = scores[f"{arm}_coverage90"]
    figures |= _tuned_maml(model, train, val, test, s, seed)
    return figures | ctx.once("sbc", lambda: _guide_sbc(s))


# ----- digits: few-shot classification ------------------------------------------------------


def _scores(figures: dict, label: str, probs: torch.Tensor, y: torch.Tensor) -> None:
    scores = calibration_scores("x", probs, y, boot=1)
    figures[f"{label}/accuracy"] = scores["x_accuracy"]
    figures[f"{label}/ece"] = scores["x_ece"]
    figures[f"{label}/nll"] = nll(probs.clamp_min(1e-12).log(), y)


def _with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits / temperature).softmax(-1)


#: the two validation sets tuned settings are fitted on: episodes of the meta-training
#: digits 0-5 (suffix ""), or of the novel digits 6-9 from the half of their images the test
#: episodes never use (suffix "_heldout"): the base digits' features separate them far
#: better than the novel ones', so a temperature fitted there may not transfer
VALIDATION = {"": "base", "_heldout": "novel_heldout"}
TEST_IMAGES, HELDOUT_IMAGES = slice(0, None, 2), slice(1, None, 2)


def _validation_sets(model, shots: int, seed: int, size: int) -> dict[str, dict]:
    c = model.config
    base = digit_episodes(BASE_CLASSES, size, c.ways, shots, c.queries, seed=10_000 + seed)
    heldout = model.novel_episodes(size, seed=30_000 + seed, images=HELDOUT_IMAGES)
    return {"": model.validate(base), "_heldout": heldout}


def _digits_shots(shots: int, seed: int, s) -> dict[str, float]:
    """Every arm at one shot count: the same meta-training episodes and step budget, the same
    validation episodes for every tuned setting (two sets, see :data:`VALIDATION`), the same
    novel test episodes (digits 6-9, the other half of their images)."""
    model = zoo.create("niw_meta_digits", shots=shots, num_episodes=s["num_episodes"],
                       test_episodes=s["test_episodes"], pretrain_steps=s["pretrain_steps"],
                       baseline_steps=0)  # fmt: skip
    c = model.config
    train = model.default_data(seed=seed)
    vals = _validation_sets(model, shots, seed, s["val_episodes"])
    test = model.novel_episodes(seed=20_000 + seed, images=TEST_IMAGES)
    y_test = test["y_query"]
    figures: dict[str, float] = {}

    fit(model, model.guide, train, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
        seed=seed, progress=False)  # fmt: skip
    niw_test = model.predict_proba(model.guide, test, seed=seed)
    _scores(figures, "niw", niw_test, y_test)
    proto = train_protonet(model, train, steps=s["steps"], batch_size=s["batch_size"], seed=seed)
    proto_test = proto.logits(test)
    _scores(figures, "protonet", proto_test.softmax(-1), y_test)
    learner = train_maml(model, train, steps=s["steps"], batch_size=s["maml_batch_size"],
                         seed=seed)  # fmt: skip
    _scores(figures, "maml", learner(test), y_test)
    grid = [f * learner.inner_lr for f in s["maml_lr_factors"]]

    def log_niw(episodes):
        return model.predict_proba(model.guide, episodes, seed=seed).clamp_min(1e-12).log()

    for suffix, val in vals.items():
        y_val = val["y_query"]
        t = fit_temperature(log_niw(val), y_val)
        _scores(figures, f"niw_temp{suffix}", _with_temperature(niw_test.clamp_min(1e-12).log(),
                t), y_test)  # fmt: skip
        figures[f"niw_temp{suffix}/temperature"] = t
        t = fit_temperature(proto.logits(val), y_val)
        _scores(figures, f"protonet_temp{suffix}", _with_temperature(proto_test, t), y_test)
        figures[f"protonet_temp{suffix}/temperature"] = t
        lr, t, _ = tune_on_validation(lambda g, v=val: learner.logits(v, inner_lr=g), grid, y_val)
        _scores(figures, f"maml_tuned{suffix}",
                _with_temperature(learner.logits(test, inner_lr=lr), t), y_test)  # fmt: skip
        figures[f"maml_tuned{suffix}/inner_lr"] = lr
        figures[f"maml_tuned{suffix}/temperature"] = t
        t = fit_temperature(centroid_logits(val, c.ways), y_val)
        _scores(figures, f"pixels_centroid{suffix}",
                _with_temperature(centroid_logits(test, c.ways), t), y_test)  # fmt: skip
        figures[f"pixels_centroid{suffix}/temperature"] = t
        val_nll = {C: nll(logistic_probs(val, c.ways, C).clamp_min(1e-12).log(), y_val)
                   for C in s["logreg_c_grid"]}  # fmt: skip
        best_c = min(val_nll, key=val_nll.get)
        _scores(figures, f"pixels_logreg{suffix}", logistic_probs(test, c.ways, best_c), y_test)
        figures[f"pixels_logreg{suffix}/C"] = best_c
    return {f"{shots}shot/{k}": v for k, v in figures.items()}


@recipe(
    "niw_meta_digits",
    headline=[
        Figure("1shot/niw/ece", "1-shot ECE NIW-Meta", 3),
        Figure("1shot/protonet_temp/ece", "1-shot ECE ProtoNet+T (T on base digits)", 3),
        Figure("1shot/protonet_temp_heldout/ece", "1-shot ECE ProtoNet+T (T on held-out)", 3),
        Figure("5shot/niw/ece", "5-shot ECE NIW-Meta", 3),
        Figure("5shot/protonet_temp_heldout/ece", "5-shot ECE ProtoNet+T (T on held-out)", 3),
        Figure("1shot/niw/accuracy", "1-shot acc. NIW-Meta", 3),
        Figure("1shot/pixels_centroid/accuracy", "1-shot acc. raw-pixel centroid", 3),
    ],
    settings={
        "shots": [1, 5],
        "num_episodes": 1000,
        "val_episodes": 100,
        "test_episodes": 200,
        "pretrain_steps": 300,
        "steps": 250,
        "batch_size": 32,
        "maml_batch_size": 16,
        "lr": 0.005,
        "maml_lr_factors": [0.25, 0.5, 1.0, 2.0, 4.0],
        "logreg_c_grid": [0.1, 1.0, 10.0, 100.0],
    },
    quick={
        "num_episodes": 40,
        "val_episodes": 10,
        "test_episodes": 10,
        "pretrain_steps": 5,
        "steps": 3,
        "maml_lr_factors": [1.0],
        "logreg_c_grid": [1.0],
    },
    paper="Kim & Hospedales, ICLR 2024 (NIW-Meta), head-only version",
    data="load_digits 4-way episodes: meta-train and validation on digits 0-5, test on 6-9",
    claim="Accuracy and ECE (15 bins) on novel-digit 4-way episodes, 1- and 5-shot: NIW-Meta "
    "(SGLD quadratic local step, untuned) against ProtoNet and second-order MAML trained for "
    "the same steps on the same episodes from the same pre-trained features, each also with a "
    "temperature (MAML: and its inner step size) fitted by NLL on validation episodes, and "
    "against nearest centroid (temperature fitted likewise) and per-episode logistic "
    "regression (C chosen likewise) on raw support pixels. Two validation sets, each tuned "
    "arm reported for both: episodes of the meta-training digits 0-5, and episodes of the "
    "novel digits from the half of their images that the test episodes never use (suffix "
    "_heldout); test episodes use the other half.",
)
def niw_meta_digits(seed: int, ctx: RunContext) -> dict[str, float]:
    figures: dict[str, float] = {}
    for shots in ctx.settings["shots"]:
        figures |= _digits_shots(shots, seed, ctx.settings)
    return figures
