"""The reference part of ``zoo reproduce NAME``: for a model small enough for NUTS, reference
draws certified as posteriordb certifies its own (4 chains, R-hat < 1.01, bulk ESS in the
thousands, no divergences), and every applicable guide kind graded against them over SVI
seeds: PSIS k-hat, the error of its posterior means and the ratio of its sds, in units of
the reference's sds. Files: ``results/reference/NAME.json|md`` and the draws ``NAME.npz``.

A model's default data can make NUTS too slow or non-convergent; its :class:`Design` then
names a smaller one, and the files record it. The criteria are never loosened: a reference
that misses them is written with ``certified: false`` and the reasons.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DESIGNS",
    "Design",
    "NO_REFERENCE",
    "align_chains",
    "has_reference",
    "KIND_ORDER",
    "check_reference_request",
    "recommend",
    "reference",
    "render_reference_markdown",
]

#: guide kinds graded, cheapest first (the order a recommendation prefers)
KIND_ORDER = ("normal", "lowrank", "mvn", "flow")
#: kinds of :data:`guides.KINDS` not graded, and why
SKIPPED_KINDS = {
    "default": "the model's own guide is guides.build('normal'): graded as 'normal'",
    "delta": "a point mass: no sd to compare and no density for importance weights (k-hat)",
}
#: a kind is recommended when its mean over seeds meets all three
GOOD_KHAT, GOOD_MEAN_ERROR, GOOD_SD_DEVIATION = 0.7, 0.2, 0.2
#: a kind whose SVI diverges is retried once at the shared lr times this
RETRY_LR_FACTOR = 0.1
#: the draws file is thinned to stay under this many bytes
MAX_DRAWS_BYTES = 5_000_000
#: the file name a results folder keeps the reference part in
FOLDER = "reference"

_FULL = {
    "chains": 4,
    "warmup": 700,
    "draws": 1500,
    "target_accept": 0.9,
    "max_tree_depth": 10,
    "svi_steps": 1500,
    "svi_lr": 0.01,
    "svi_particles": 4,
    "guide_draws": 4000,
    "khat_particles": 500,
    "jit": True,
    "use_nuts_init": True,
    # True: chain i is its own run seeded i, drawn in parallel on every core (inference.mcmc.
    # independent_chains); False: Pyro's chains of one seed, in parallel only with a core
    # to spare per chain
    "independent_chains": False,
}
_QUICK = {
    "chains": 2,
    "warmup": 15,
    "draws": 15,
    "max_tree_depth": 4,
    "svi_steps": 10,
    "svi_particles": 1,
    "guide_draws": 100,
    "khat_particles": 20,
    "jit": False,
    "use_nuts_init": False,
}


def _align_classes(reference: Mapping[str, np.ndarray], approx: dict) -> dict:
    """latent_label_shift: relabel the guide's classes to the reference's (its classes are
    exchangeable, so an SVI fit may find any of the K! labellings): the permutation of
    ``phi``'s rows that best matches the reference's mean ``phi``, applied to ``pi`` too."""
    from scipy.optimize import linear_sum_assignment

    ref_phi = reference["phi"].reshape((-1,) + reference["phi"].shape[2:]).mean(0)
    q_phi = approx["phi"].reshape((-1,) + approx["phi"].shape[2:]).mean(0)
    cost = ((q_phi[:, None, :] - ref_phi[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    order = rows[np.argsort(cols)]  # the guide's class matched to reference class j
    out = dict(approx)
    out["phi"] = approx["phi"][..., order, :]
    out["pi"] = approx["pi"][..., order]
    return out


def _flat_class_shares() -> dict[str, Any]:
    """latent_label_shift's reference prior: each domain's class shares flat on the simplex."""
    import pyro.distributions as dist
    import torch

    from zoo.models.latent_label_shift import SUPER_CLASSES  # the default data's classes

    return {"pi": dist.Dirichlet(torch.ones(len(SUPER_CLASSES)))}


def align_chains(draws: Mapping[str, np.ndarray], align: Callable) -> dict[str, np.ndarray]:
    """Every chain relabelled to the first chain's labelling by ``align`` (draws shaped
    (chain, draw, ...)): chains of an exchangeable model can each settle in another of its
    equivalent labellings, and R-hat then reads the labellings, not the mixing."""
    first = {k: v[:1] for k, v in draws.items()}
    chains = next(iter(draws.values())).shape[0]
    parts = [align(first, {k: v[c : c + 1] for k, v in draws.items()}) for c in range(chains)]
    return {k: np.concatenate([part[k] for part in parts]) for k in draws}


@dataclass(frozen=True)
class Design:
    """How a model's reference is made: the model's config (the data design; empty for the
    default data), why it departs from the default, settings over :data:`_FULL`, prior
    overrides (a function returning ``{site: distribution}``, for the model's ``priors=``)
    and, for a model with exchangeable labels, how to align one labelling to another."""

    config: Mapping[str, Any] = field(default_factory=dict)
    why: str = "the model's default data"
    settings: Mapping[str, Any] = field(default_factory=dict)
    quick_config: Mapping[str, Any] = field(default_factory=dict)
    align: Callable | None = None
    priors: Callable[[], Mapping[str, Any]] | None = None

    def settings_for(self, quick: bool) -> dict[str, Any]:
        merged = _FULL | dict(self.settings)
        return merged | _QUICK if quick else merged

    def config_for(self, quick: bool) -> dict[str, Any]:
        return dict(self.config) | (dict(self.quick_config) if quick else {})


DESIGNS: dict[str, Design] = {
    "eight_schools": Design(
        config={"centered": False},
        why="the default data; the non-centered form (the centered one is a funnel)",
        settings={"svi_lr": 0.03, "svi_particles": 8},
    ),
    "pac_invariance": Design(
        why="the default data (8 environments x 400 rows, S = {X1}); 2,500 draws per chain "
        "(1,500 left the smallest bulk ESS at 1,812)",
        settings={"draws": 2500},
        quick_config={"rows_per_env": 20},
    ),
    # Under the model's own prior, pi ~ Dirichlet(alpha / K) = Dirichlet(0.1), a full run
    # (commit 8d1e1c4, 4,258 s of NUTS, 4 x (700 + 1,500)) was not certified: relabelled,
    # R-hat 1.20, smallest bulk ESS 14 and 13 divergences, all on class shares near 0, where
    # that prior's density is unbounded. Under the flat prior below, 2 chains of 300 + 300
    # took 43 s and reached R-hat 1.014 and a bulk ESS of 206 once relabelled. (alpha = 5 in
    # the config is not the same fix: it also redraws the data's domains near-uniform, which
    # leaves the factorization weakly identified.)
    "latent_label_shift": Design(
        config={"num_domains": 8, "num_codes": 12},
        why="8 domains x 80 rows and 12 codes (the default 15 domains and 30 codes need hours "
        "of NUTS); the data's domains as by default (alpha = 0.5), but a flat prior on each "
        "domain's class shares, Dirichlet(1), in place of the model's Dirichlet(alpha / K), "
        "whose unbounded density at the simplex's edge NUTS could not certify; chains start "
        "at the model's nuts_init (one SVI point), and each chain, and each guide, is "
        "relabelled to the first chain's labelling by matching phi (chains switch labels "
        "in warmup)",
        settings={"svi_lr": 0.05, "draws": 2500},
        quick_config={"per_domain": 10},
        align=_align_classes,
        priors=_flat_class_shares,
    ),
    # capability_factors in its own coordinates (eps, or the capabilities z themselves) mixed
    # too slowly for a reference: at this size eps chains ran at the tree-depth cap of 10,
    # about 4 CPU-s an iteration (some 10 CPU-hours for 4 x 2,200), and 2 chains sampling z
    # disagreed after 100 + 100 (R-hat 2.6). A dense mass matrix over the globals in
    # anchored_model: 3x faster per iteration but a fifth of the ESS at 200 + 200. At 2,200
    # draws a chain (a94f359) it mixed, R-hat 1.002, but loading_free's bulk ESS was 1,069
    # (about 0.12 per draw); 4,800 draws a chain, as independent chains on 2 cores, certify
    # it (e832fc2: 5,089 s of NUTS, 170 CPU-minutes).
    "capability_factors": Design(
        config={"num_factors": 2, "per_domain": 50},
        why="d0 = 2 capabilities and 50 LMs per domain (the default's 3 and 150 leave NUTS "
        "hours longer); NUTS samples anchored_model, the same posterior with each row's "
        "anchor-benchmark noise as its local latent (2 chains of 200 + 200: R-hat 1.03 and a "
        "bulk ESS of 110, against R-hat 2.3 sampling the capabilities z), and its draws are "
        "turned back into eps",
        settings={"warmup": 500, "draws": 4800, "independent_chains": True},
        quick_config={"per_domain": 5},
    ),
    "pretraining_factor": Design(
        config={"input_dim": 10, "latent_dim": 2, "num_unlabeled": 1000, "num_test": 100},
        why="d = 10 inputs, r = 2 factors, 1,000 unlabeled rows (the default d = 50 needs "
        "hours of dense-mass NUTS for a certified reference); the model's own dense mass "
        "and nuts_init",
        quick_config={"num_unlabeled": 100, "num_test": 20},
    ),
    "pretraining_mixture": Design(
        config={"input_dim": 5, "num_components": 3, "num_unlabeled": 1000, "num_test": 100},
        why="d = 5 inputs, K = 3 components, 1,000 unlabeled rows (the default d = 20, "
        "K = 4 on 6,000 rows is slow for 4 x 3,000 NUTS steps)",
        quick_config={"num_unlabeled": 100, "num_test": 20},
    ),
}


#: NUTS-capable models with no reference, and why (measured): ``zoo reproduce NAME`` runs
#: only their headline, and the guide table (the site's results page) gives the reason
NO_REFERENCE: dict[str, str] = {}


def has_reference(name: str) -> bool:
    """Whether ``zoo reproduce NAME`` makes a reference part for model ``name``."""
    import zoo

    return zoo.get(name).supports_nuts and name not in NO_REFERENCE


def check_reference_request(
    name: str, seeds: int | None, quick: bool, out: str | Path | None
) -> tuple[Design, list[int], Path]:
    """The design, SVI seeds and folder of a reference request; one clear error otherwise
    (an unknown model, one not small enough for NUTS, too few seeds, an unwritable folder)."""
    import zoo
    from zoo.evidence.runner import check_seeds, results_folder

    cls = zoo.get(name)
    if not cls.supports_nuts:
        raise ValueError(
            f"model '{name}' is not small enough for NUTS, so it has no reference posterior "
            "(run `zoo reproduce NAME --only headline`)"
        )
    if name in NO_REFERENCE:
        raise ValueError(f"model '{name}' has no reference posterior: {NO_REFERENCE[name]}")
    if name not in DESIGNS:
        raise ValueError(f"model '{name}' has no reference design in zoo/evidence/reference.py")
    seed_list = check_seeds(seeds, 3, quick, "a guide's grade")
    return DESIGNS[name], seed_list, results_folder(out, quick, FOLDER)


def _reference_draws(model, data, s: Mapping[str, Any]):
    """NUTS on the model's :meth:`~zoo.base.ZooModel.nuts_target` (the model itself, or its
    posterior in coordinates NUTS samples better): the draws ``(chain, draw, *site)``, the
    divergences, the NUTS options and whether the chains started at ``nuts_init``."""
    from inference.mcmc import independent_chains, quiet_nuts
    from inference.reference import mcmc_draws

    options = {"dense_mass": False} | dict(model.nuts_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nuts_init's own SVI fit
        init = model.nuts_init(data) if s["use_nuts_init"] else None
    run = {
        "chains": s["chains"],
        "seed": 0,
        "warmup": s["warmup"],
        "draws": s["draws"],
        "target_accept": s["target_accept"],
        "max_tree_depth": s["max_tree_depth"],
        "init_values": init,
        "jit_compile": s["jit"],
        "progress": False,
    }
    if s["independent_chains"]:
        draws, divergences = independent_chains(model.nuts_target(), data, **run, **options)
    else:
        draws, divergences = mcmc_draws(quiet_nuts(model.nuts_target(), data, **run, **options))
    return draws, divergences, options, init is not None


def _sampler_name(model) -> str:
    """What NUTS sampled, for the files: "model", or the name of the model's method."""
    target = model.nuts_target()
    return "model" if target is model else target.__name__


def _grade_kind(model, data, kind: str, seed: int, s, draws, align) -> dict[str, float]:
    import guides
    from inference.diagnostics import guide_khat
    from inference.posterior import draw_latents
    from inference.reference import grade
    from inference.svi import fit

    guide = guides.build(kind, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(
            model,
            guide,
            data,
            steps=s["svi_steps"],
            lr=s["svi_lr"],
            num_particles=s["svi_particles"],
            seed=seed,
            progress=False,
        )
    q = draw_latents(model, guide, data, s["guide_draws"])
    q = {k: v.detach().cpu().numpy()[None] for k, v in q.items()}
    if align is not None:
        q = align(draws, q)
    figures = grade(draws, q)
    figures["khat"] = guide_khat(model, guide, data, num_particles=s["khat_particles"], seed=seed)[
        "khat"
    ]
    return figures


def _grade_over_seeds(model, data, kind: str, seeds, s, draws, align) -> dict[str, Any]:
    """One guide kind's grades, each figure summarised over the SVI ``seeds``."""
    import pyro

    from zoo.evidence.results import summarise

    per_seed = []
    for seed in seeds:
        pyro.set_rng_seed(seed)
        per_seed.append(_grade_kind(model, data, kind, seed, s, draws, align))
    return {k: summarise([p[k] for p in per_seed]) for k in per_seed[0]}


def reference(
    name: str,
    *,
    seeds: int | None = None,
    quick: bool = False,
    out: str | Path | None = None,
    log=None,
) -> tuple[Path, Path, Path]:
    """Make model ``name``'s reference draws, certify them and grade each guide kind over
    SVI seeds ``0..seeds-1``; write ``reference/NAME.json``, ``.md`` and ``.npz`` under
    ``out`` only once everything has finished (a failed run keeps the older files)."""
    import pyro

    import zoo
    from inference.reference import certify, save_draws, thin_to_fit
    from inference.svi import TrainingDiverged
    from zoo.cli.options import prior_display
    from zoo.cli.runfiles import write_text
    from zoo.evidence.results import (
        FORMAT_VERSION,
        provenance,
    )
    from zoo.evidence.runner import _jsonable

    design, seed_list, folder = check_reference_request(name, seeds, quick, out)
    s = design.settings_for(quick)
    config = design.config_for(quick)
    log = log or sys.stderr
    origin = provenance()  # the code that runs is the code at the start
    started = time.perf_counter()
    pyro.set_rng_seed(0)
    priors = dict(design.priors()) if design.priors is not None else {}
    model = zoo.create(name, priors=priors, **config)
    data = model.default_data()
    draws, divergences, options, started_at_init = _reference_draws(model, data, s)
    draws = model.from_nuts_draws(draws, data)
    if design.align is not None:
        draws = align_chains(draws, design.align)
    nuts_time = time.perf_counter() - started
    certificate = certify(draws, divergences)
    print(f"{name}: reference in {nuts_time:.0f} s, certified {certificate['certified']}", file=log)
    grades: dict[str, dict[str, Any]] = {}
    skipped, retried = dict(SKIPPED_KINDS), {}
    for kind in KIND_ORDER:
        try:
            grades[kind] = _grade_over_seeds(model, data, kind, seed_list, s, draws, design.align)
        except TrainingDiverged as error:  # every kind gets the same one retry, at a lower lr
            first = f"SVI diverged at lr {s['svi_lr']}: {str(error).rstrip('.')}"
            slower = s | {"svi_lr": s["svi_lr"] * RETRY_LR_FACTOR}
            try:
                grades[kind] = _grade_over_seeds(
                    model, data, kind, seed_list, slower, draws, design.align
                )
            except TrainingDiverged as again:  # a kind that cannot be trained here is a finding
                skipped[kind] = f"{first}; again at lr {slower['svi_lr']:g}: {again}"
                print(f"{name}: {kind} diverged", file=log)
                continue
            retried[kind] = f"{first}; graded at lr {slower['svi_lr']:g}"
        print(f"{name}: {kind} graded", file=log)
    thinned, step = thin_to_fit(draws, MAX_DRAWS_BYTES)
    command = f"zoo reproduce {name} --only reference --seeds {len(seed_list)}" + (
        " --quick" if quick else ""
    )
    results: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": name,
        "command": command,
        "quick": quick,
        "design": {k: _jsonable(v) for k, v in config.items()},
        "design_why": design.why,
        "prior_overrides": {site: prior_display(prior) for site, prior in priors.items()},
        "num_rows": int(len(next(iter(data.values())))),
        "settings": {k: _jsonable(v) for k, v in s.items()},
        "nuts_options": {k: _jsonable(v) for k, v in options.items()},
        "nuts_init": "the model's nuts_init" if started_at_init else "prior median",
        "sampler": _sampler_name(model),
        "nuts_time_s": round(nuts_time, 1),
        "certificate": certificate,
        "svi_seeds": seed_list,
        "grades": grades,
        "skipped_kinds": skipped,
        "retried_kinds": retried,
        "draws_file": f"{name}.npz",
        "draws_thinned_by": step,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        **origin,
    }
    results["recommendation"] = recommend(results)

    paths = (folder / f"{name}.npz", folder / f"{name}.json", folder / f"{name}.md")
    save_draws(paths[0], thinned)
    write_text(paths[1], json.dumps(results, indent=1) + "\n")
    write_text(paths[2], render_reference_markdown(results))
    return paths


def _mean(entry: Mapping[str, Any]) -> float:
    """The mean over seeds, infinite when any seed's value is (a k-hat is stored as None
    when the weights' tail is unbounded, and summarise's mean skips it)."""
    value = entry.get("mean")
    if value is None or None in entry.get("values", []):
        return float("inf")
    return float(value)


def format_khat(entry: Mapping[str, Any]) -> str:
    """A k-hat figure over seeds, saying on how many seeds it was infinite."""
    from zoo.evidence.results import format_figure

    values = entry.get("values", [])
    infinite = sum(v is None for v in values)
    if not infinite or infinite == len(values):
        return format_figure(entry, 2)
    return f"{format_figure(entry, 2)} (infinite on {infinite} of {len(values)} seeds)"


def recommend(results: Mapping[str, Any]) -> dict[str, Any]:
    """The guide to use, from the grades: the cheapest kind (:data:`KIND_ORDER`) whose means
    over seeds have k-hat < 0.7, mean error < 0.2 and sd-ratio deviation < 0.2 reference sds;
    when none does, the kind with the smallest mean error, marked as not good enough."""
    grades = results["grades"]
    kinds = [k for k in KIND_ORDER if k in grades]
    if not kinds:
        return {"kind": None, "good": False, "note": "no guide graded"}

    def good(kind: str) -> bool:
        g = grades[kind]
        return (
            _mean(g["khat"]) < GOOD_KHAT
            and _mean(g["mean_error_max"]) < GOOD_MEAN_ERROR
            and _mean(g["sd_ratio_worst_deviation"]) < GOOD_SD_DEVIATION
        )

    passing = [k for k in kinds if good(k)]
    certified = results["certificate"]["certified"]
    caveat = "" if certified else " (the reference is not certified: provisional)"
    if passing:
        return {"kind": passing[0], "good": True, "note": f"`{passing[0]}`{caveat}"}
    best = min(kinds, key=lambda k: _mean(grades[k]["mean_error_max"]))
    return {
        "kind": best,
        "good": False,
        "note": f"none meets the bar; closest `{best}`: prefer NUTS{caveat}",
    }


def _fmt(entry: Mapping[str, Any], digits: int = 2) -> str:
    from zoo.evidence.results import format_figure

    return format_figure(entry, digits)


def render_reference_markdown(results: Mapping[str, Any]) -> str:
    """The reference file in words: the design, the certificate and the grades table."""
    c = results["certificate"]
    verdict = "certified" if c["certified"] else "NOT certified: " + "; ".join(c["failures"])
    lines = [
        f"# `{results['model']}`: reference posterior and guide grades",
        "",
        f"Made by `{results['command']}`"
        + (" (quick size: a smoke run, not evidence)" if results["quick"] else "")
        + f" on {results['date']}, {results['wall_time_s']:.0f} s in all (NUTS "
        f"{results['nuts_time_s']:.0f} s); commit `{results['commit'][:12]}`"
        + (" with uncommitted changes" if results.get("uncommitted_changes") else "")
        + ".",
        "",
        f"Design: {results['design_why']}; config `{results['design']}`, "
        f"{results['num_rows']} rows"
        + "".join(f"; prior {k} ~ {v}" for k, v in results.get("prior_overrides", {}).items())
        + f". NUTS options `{results['nuts_options']}`, chains "
        f"start at {results['nuts_init']}"
        + (
            f"; NUTS samples `{results['sampler']}`"
            if results.get("sampler", "model") != "model"
            else ""
        )
        + ".",
        "",
        f"Reference: {c['chains']} chains x {c['draws_per_chain']} draws, worst R-hat "
        f"{c['rhat_max']:.4f}, smallest bulk ESS {c['ess_bulk_min']:.0f}, "
        f"{c['divergences']} divergences: **{verdict}** (criteria {c['criteria']}). "
        f"Draws: `{results['draws_file']}` (thinned by {results['draws_thinned_by']}).",
        "",
        f"Guides over SVI seeds {results['svi_seeds']} (mean ± sd); errors in reference sds:",
        "",
        "| guide | k-hat | max mean error | median mean error | worst sd ratio - 1 |",
        "|---|---|---|---|---|",
    ]
    for kind, g in results["grades"].items():
        lines.append(
            f"| `{kind}` | {format_khat(g['khat'])} | {_fmt(g['mean_error_max'])} | "
            f"{_fmt(g['mean_error_median'])} | {_fmt(g['sd_ratio_worst_deviation'])} |"
        )
    lines += ["", f"Recommended guide: {results['recommendation']['note']}.", ""]
    lines += [f"Retried: `{k}`: {why}." for k, why in results.get("retried_kinds", {}).items()]
    lines += [f"Not graded: `{k}`: {why}." for k, why in results["skipped_kinds"].items()]
    lines += ["", "Settings:", ""]
    lines += [f"- `{k}` = `{v!r}`" for k, v in results["settings"].items()]
    return "\n".join(lines) + "\n"
