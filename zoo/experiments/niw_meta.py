"""NIW-Meta (Kim & Hospedales, ICLR 2024): the regression model against per-task Bayesian
ridge, a pooled fit and MAML with its step size tuned on validation episodes, with SBC of
the closed-form guide; the digits classifier's accuracy and calibration against baselines
that get a temperature (and MAML a step size) fitted on validation episodes, and against
nearest centroid and logistic regression on raw pixels."""

from __future__ import annotations

import torch

import zoo
from inference.svi import fit
from zoo.evidence import Check, Figure, RunContext, recipe
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
    1.5x too narrow.

    It fails at 150 steps a replicate: the precision's ranks are humped (the guide is too
    wide there; smallest p below 0.0001), while ``mu`` passes. The same 100 replicates with
    1,000 steps each (measured outside the recipe, 494 s) raise the smallest p to 0.009,
    still just below 0.01: most of the failure is the short fits."""
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


# ----- glyphs: few-shot classification with many base classes ------------------------------


def _pca_logits(train_images, components: int):
    """Nearest centroid in the PCA space of the base-class images (fitted once per setting):
    returns ``episodes -> logits``."""
    from sklearn.decomposition import PCA

    pca = PCA(components, random_state=0).fit(train_images)

    def logits(episodes):
        project = {k: torch.as_tensor(pca.transform(episodes[k].reshape(-1, episodes[k].shape[-1]))
                                      .reshape(episodes[k].shape[:-1] + (-1,)), dtype=torch.float32)
                   for k in ("x_support", "x_query")}  # fmt: skip
        return centroid_logits({**episodes, **project}, episodes["y_support"].max() + 1)

    return logits


def _tuned(figures, label, logits_for, grid, val, tests, name):
    """Choose ``name`` from ``grid`` and a temperature by validation NLL, score every test."""
    setting, t, _ = tune_on_validation(lambda g: logits_for(g, val), grid, val["y_query"])
    for test_name, test in tests.items():
        _scores(figures, f"{test_name}/{label}",
                _with_temperature(logits_for(setting, test), t), test["y_query"])  # fmt: skip
    figures[f"tuning/{label}/{name}"] = float(setting)
    figures[f"tuning/{label}/temperature"] = t


def _glyph_model(ways: int, shots: int, s, **overrides):
    return zoo.create("niw_meta_glyphs", ways=ways, shots=shots, queries=s["queries"],
                      num_episodes=s["num_episodes"], test_episodes=s["test_episodes"],
                      pretrain_steps=s["pretrain_steps"], base_classes=s["base_classes"],
                      val_classes=s["val_classes"], test_classes=s["test_classes"],
                      per_class=s["per_class"], **{**s["niw"], **overrides})  # fmt: skip


def _head_ablation(ways, shots, seed, s, train, tests, batch) -> dict[str, float]:
    """NIW-Meta with the per-class softmax head as theta (the digits model's head-only step)
    on the fixed pre-trained features, same episodes and steps: the version the adapter
    replaced (see :mod:`zoo.models.niw_meta.glyphs`)."""
    model = _glyph_model(ways, shots, s, **s["head_ablation_config"])
    fit(model, model.guide, train, steps=s["steps"], batch_size=batch, lr=s["lr"], seed=seed,
        progress=False)  # fmt: skip
    figures: dict[str, float] = {}
    for name, test in tests.items():
        _scores(figures, f"{name}/niw_head", model.predict_proba(model.guide, test, seed=seed),
                test["y_query"])  # fmt: skip
    return figures


def _glyph_setting(ways: int, shots: int, seed: int, s) -> dict[str, float]:
    """Every arm at one (ways, shots): the same meta-training episodes (base glyph classes),
    the same step budget in images per step, every tuned setting chosen on the same
    validation episodes (validation glyph classes), scored on held-out glyph classes and
    (at most 10 ways) on load_digits. The conv network the network arms start from is pre-trained
    once per configuration, from seed 0, and shared by all seeds: the spread over seeds
    covers the episodes, the meta-training and each method's own randomness, not the
    pre-training's."""
    from zoo.models.niw_meta.glyphs import episode_logreg_logits, train_anil

    model = _glyph_model(ways, shots, s)
    batch = max(1, s["images_per_step"] // (ways * (shots + s["queries"])))
    train = model.default_data(seed=seed)
    val = model.episodes("val", s["val_episodes"], seed=10_000 + seed)
    tests = {"glyphs": model.novel_episodes(seed=20_000 + seed)}
    if ways <= 10:
        tests["digits"] = model.digit_episodes(seed=30_000 + seed)
    figures: dict[str, float] = {}

    fit(model, model.guide, train, steps=s["steps"], batch_size=batch, lr=s["lr"], seed=seed,
        progress=False)  # fmt: skip
    sets = {**tests, "val": val}
    niw = {k: model.predict_proba(model.guide, v, seed=seed) for k, v in sets.items()}
    t = fit_temperature(niw["val"].clamp_min(1e-12).log(), val["y_query"])
    for name, test in tests.items():
        _scores(figures, f"{name}/niw", niw[name], test["y_query"])
        log_probs = niw[name].clamp_min(1e-12).log()
        _scores(figures, f"{name}/niw_temp", _with_temperature(log_probs, t), test["y_query"])
    figures["tuning/niw_temp/temperature"] = t

    if [ways, shots] in s["head_ablation"]:
        figures |= _head_ablation(ways, shots, seed, s, train, tests, batch)

    proto = train_protonet(model, train, steps=s["steps"], batch_size=batch, seed=seed,
                           learn_scale=True)  # fmt: skip
    _tuned(figures, "protonet", lambda _, e: proto.logits(e), [1.0], val, tests, "none")
    learner = train_anil(model, train, steps=s["steps"], batch_size=batch, seed=seed)
    grid = [f * learner.inner_lr for f in s["maml_lr_factors"]]
    _tuned(figures, "maml", lambda g, e: learner.logits(e, inner_lr=g), grid, val, tests,
           "inner_lr")  # fmt: skip
    _tuned(figures, "pixels_centroid", lambda _, e: centroid_logits(e, ways), [1.0], val, tests,
           "none")  # fmt: skip
    base = model.pool("base")
    pcas = {k: _pca_logits(base.reshape(-1, base.shape[-1]), k) for k in s["pca_grid"]}
    _tuned(figures, "pca_centroid", lambda k, e: pcas[k](e), s["pca_grid"], val, tests,
           "components")  # fmt: skip
    pooled = model.initial_features()  # the supervised pooled network, head refitted per episode

    def pooled_logits(l2, e):
        with torch.no_grad():
            fs, fq = pooled(e["x_support"]), pooled(e["x_query"])
        return episode_logreg_logits(fs, e["y_support"], fq, ways, l2)

    _tuned(figures, "pooled_finetune", pooled_logits, s["pooled_l2_grid"], val, tests, "l2")
    return {f"{ways}way{shots}shot/{k}": v for k, v in figures.items()}


_DIGITS_SHIFT = (
    "every method built on the glyph-trained network falls below the pixels here, the pooled "
    "network too: the ten digit classes are out of distribution for it"
)


def _glyph_checks() -> list[Check]:
    """The paper's claims: NIW-Meta at least as accurate as the tuned ProtoNet and MAML (and
    far above the raw-pixel and PCA centroids) on held-out classes, and better calibrated."""
    checks = []
    for ways, shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
        at = f"{ways}way{shots}shot/glyphs"
        for arm, name in (("protonet", "ProtoNet+T"), ("maml", "MAML (head)"),
                          ("pca_centroid", "the PCA centroid")):  # fmt: skip
            checks.append(Check(
                f"{ways}-way {shots}-shot glyphs: accuracy at least {name}'s",
                f"{at}/niw/accuracy", ">=", f"{at}/{arm}/accuracy",
            ))  # fmt: skip
    for arm, name in (("protonet", "ProtoNet+T"), ("maml", "MAML (head)")):
        checks.append(Check(
            f"5-way 1-shot glyphs: ECE at most {name}'s (NIW-Meta untuned)",
            "5way1shot/glyphs/niw/ece", "<=", f"5way1shot/glyphs/{arm}/ece",
            why="untuned, its predictive is overconfident; with a validation temperature, "
            "as the baselines have, it is level (the row below)",
        ))  # fmt: skip
    checks.append(Check(
        "5-way 1-shot glyphs: ECE at most ProtoNet+T's (NIW-Meta with a validation temperature)",
        "5way1shot/glyphs/niw_temp/ece", "<=", "5way1shot/glyphs/protonet/ece",
    ))  # fmt: skip
    for shots in (1, 5):
        at = f"{5}way{shots}shot/digits"
        checks.append(Check(
            f"5-way {shots}-shot digits: accuracy at least the pixel centroid's",
            f"{at}/niw/accuracy", ">=", f"{at}/pixels_centroid/accuracy", why=_DIGITS_SHIFT,
        ))  # fmt: skip
    return checks


@recipe(
    "niw_meta_glyphs",
    headline=[
        Figure("5way1shot/glyphs/niw/accuracy", "5w1s acc. NIW-Meta", 3),
        Figure("5way1shot/glyphs/protonet/accuracy", "5w1s acc. ProtoNet+T", 3),
        Figure("5way1shot/glyphs/maml/accuracy", "5w1s acc. MAML (head)", 3),
        Figure("5way1shot/glyphs/pooled_finetune/accuracy", "5w1s acc. pooled+finetune", 3),
        Figure("5way1shot/glyphs/pixels_centroid/accuracy", "5w1s acc. pixel centroid", 3),
        Figure("5way1shot/glyphs/niw/ece", "5w1s ECE NIW-Meta", 3),
        Figure("5way1shot/glyphs/protonet/ece", "5w1s ECE ProtoNet+T", 3),
    ],
    settings={
        "ways": [5, 20],
        "shots": [1, 5],
        "queries": 5,
        "base_classes": 600,
        "val_classes": 200,
        "test_classes": 300,
        "per_class": 20,
        "num_episodes": 2000,
        "val_episodes": 200,
        "test_episodes": 600,
        "pretrain_steps": 400,
        "steps": 300,
        "images_per_step": 480,
        "lr": 0.005,
        "niw": {},
        "head_ablation": [[5, 1]],
        "head_ablation_config": {
            "theta": "head",
            "train_features": False,
            "psi0": 1.0,
            "sgld_step_size": 0.5,
        },
        "maml_lr_factors": [0.5, 1.0, 2.0],
        "pca_grid": [16, 32, 64],
        "pooled_l2_grid": [0.01, 0.1, 1.0],
    },
    quick={
        "ways": [5],
        "shots": [1],
        "base_classes": 30,
        "val_classes": 10,
        "test_classes": 10,
        "per_class": 8,
        "num_episodes": 20,
        "val_episodes": 10,
        "test_episodes": 10,
        "pretrain_steps": 5,
        "steps": 2,
        "niw": {"channels": 4, "feat_dim": 4, "sgld_chains": 2},
        "maml_lr_factors": [1.0],
        "pca_grid": [4],
        "pooled_l2_grid": [0.1],
    },
    paper="Kim & Hospedales, ICLR 2024 (NIW-Meta), an episode-wise top-layer adapter",
    data="synthetic stroke glyphs (zoo.datasets.glyphs; disjoint base / validation / test "
    "classes) and load_digits upsampled as out-of-distribution classes",
    claim="Accuracy and ECE (15 bins) of 5- and 20-way, 1- and 5-shot episodes on held-out "
    "glyph classes and (5-way) on the ten load_digits classes: NIW-Meta (diagonal NIW over an "
    "episode-wise top layer of a conv network pre-trained on the base classes, prototype "
    "readout, SGLD quadratic local step; the trunk trained by the ELBO) against ProtoNet with a "
    "learned scale, MAML with the inner loop on the head (ANIL), the supervised pooled network "
    "with a logistic head fitted per episode, and nearest centroid on raw pixels and on PCA "
    "features; all start from the same pre-trained network where they use one, train for "
    "the same steps on the same episodes, and have a temperature (and their one setting) "
    "chosen by NLL on validation-class episodes; NIW-Meta is reported untuned and with a "
    "validation temperature. Ablation at 5-way 1-shot: NIW-Meta with the per-class softmax "
    "head as theta on the fixed pre-trained features (niw_head).",
    checks=_glyph_checks(),
)
def niw_meta_glyphs(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    figures: dict[str, float] = {}
    for ways in s["ways"]:
        for shots in s["shots"]:
            figures |= _glyph_setting(ways, shots, seed, s)
    return figures
