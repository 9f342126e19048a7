"""A run's diagnostics, figures, ``diagnostics.json`` and ``report.md``."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.cli.runfiles import jsonable, num_rows, write_text

#: idata of models with local latents covers at most this many rows, with fewer draws
LOCAL_IDATA_ROWS = 200
LOCAL_IDATA_DRAWS = 64
GLOBAL_IDATA_DRAWS = 500
#: variables with more elements per draw than this get a compact summary row
SUMMARY_MAX_ELEMENTS = 32


def device_of(model: torch.nn.Module) -> torch.device:
    return getattr(model, "device", torch.device("cpu"))


def _idata(model, guide, data, record, *, mcmc=None):
    from inference.posterior import posterior

    seed = int(record.get("seed", 0))
    device = device_of(model)
    to_sites = None
    if mcmc is not None:  # the draws' coordinates need every row NUTS ran on
        all_rows = {k: v.to(device) for k, v in data.items()}
        to_sites = functools.partial(model.from_nuts_draws, data=all_rows)
    if model.local_sites or model.idata_rows is not None:
        rows = min(num_rows(data), model.idata_rows or LOCAL_IDATA_ROWS)
        data = {k: v[:rows] for k, v in data.items()}
        draws = LOCAL_IDATA_DRAWS
    else:
        draws = GLOBAL_IDATA_DRAWS
    data = {k: v.to(device) for k, v in data.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return posterior(
            model,
            data,
            guide=guide,
            mcmc=mcmc,
            num_draws=draws,
            seed=seed,
            dims=model.dims(),
            coords=model.coords(data),
            mcmc_to_sites=to_sites,
        ), data


def read_idata(path: str | os.PathLike):
    """An ``idata.nc`` written by a run, as ArviZ InferenceData."""
    from inference.posterior import az

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"'{path}' does not exist")
    return az.from_netcdf(path)


def _try(label: str, fn, notes: list[str]):
    try:
        return fn()
    except ImportError:  # a broken install, not a diagnostic's verdict
        raise
    except Exception as error:  # a diagnostic failing must not lose the trained run
        notes.append(f"{label}: failed ({type(error).__name__}: {error})")
    return None


#: summary columns that describe Markov chains, not independent draws
MCMC_COLUMNS = ("mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat")


def _summary_rows(idata, model) -> list[dict[str, Any]]:
    """Rows of the posterior summary: ArviZ's for small variables, one compact row (means
    over elements) for large ones such as local latents."""
    from inference.diagnostics import summary

    post = idata.posterior
    small = [v for v in post.data_vars if int(np.prod(post[v].shape[2:])) <= SUMMARY_MAX_ELEMENTS]
    large = [v for v in post.data_vars if v not in small]
    rows: list[dict[str, Any]] = []
    # MCMC draws: a large variable still needs its worst R-hat and ESS (one bad element is
    # a failed run); guide draws are independent, so those columns would say nothing
    sampled = "sample_stats" in idata.groups() and "diverging" in idata.sample_stats
    if small:
        table = summary(idata, var_names=small)
        if not sampled:
            table = table.drop(columns=[c for c in MCMC_COLUMNS if c in table.columns])
        for label, row in table.iterrows():
            rows.append({"variable": str(label), **{k: _num(v) for k, v in row.items()}})
    for var in large:
        values = np.asarray(post[var])
        flat = values.reshape(values.shape[0] * values.shape[1], -1)
        row = {
            "variable": f"{var} {tuple(values.shape[2:])} (compact: mean over elements)",
            "mean": _num(flat.mean()),
            "sd": _num(flat.std(axis=0).mean()),
        }
        if sampled:
            table = summary(idata, var_names=[var])
            row["variable"] = f"{var} {tuple(values.shape[2:])} (compact: means; worst R-hat, ESS)"
            row["ess_bulk"] = _num(table["ess_bulk"].min())
            row["ess_tail"] = _num(table["ess_tail"].min())
            row["r_hat"] = _num(table["r_hat"].max())
        rows.append(row)
    return rows


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row.get(c)).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class QuietArviz:
    """ArviZ logs a warning for every single-chain summary (R-hat needs 2 chains; the
    table says n/a): keep the training output readable."""

    def __enter__(self):
        from inference.diagnostics.summary import quiet_arviz

        self.context = quiet_arviz()
        self.context.__enter__()

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


def write_outputs(
    run_dir, record, model, guide, train, test, *, losses=None, mcmc=None, truth=None
):
    """idata.nc, figures, diagnostics.json and report.md of a trained run (``truth``: see
    :func:`write_report`)."""
    with QuietArviz():
        idata, idata_data = _idata(model, guide, train, record, mcmc=mcmc)
        idata.to_netcdf(str(run_dir / "idata.nc"))
        write_report(
            run_dir, record, model, guide, idata, idata_data, train, test, losses, [], truth
        )


def _draws_guide(model, idata, data):
    """The run's NUTS draws of ``model``'s latent sites as a guide (:mod:`guides.draws`).
    Per-row sites are left out: idata holds them for the first training rows only, and
    ``evaluate`` may run on other rows (the model then draws them from their prior)."""
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    from guides.draws import from_draws
    from inference.data import full_batch

    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(full_batch(data))
    latent = [
        name
        for name, node in trace.nodes.items()
        if node["type"] == "sample"
        and not node["is_observed"]
        and not site_is_subsample(node)
        and name not in model.local_sites
    ]
    post = idata.posterior
    draws = {}
    for name in latent:
        values = torch.as_tensor(np.array(post[name].values))
        if values.is_floating_point():
            values = values.to(torch.get_default_dtype())
        draws[name] = values.reshape((-1, *values.shape[2:]))
    return from_draws(model, draws, data)


def _truth_keywords(fn, truth: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keywords of ``fn`` that the simulation's truth fills: ``truth=`` and the extras
    (:meth:`zoo.base.ZooModel.simulate_with_extras`) it names; none without a truth."""
    if truth is None:
        return {}
    import inspect

    params = inspect.signature(fn).parameters
    out = {"truth": truth["truth"]} if "truth" in params else {}
    out.update({k: v for k, v in truth["extras"].items() if k in params})
    return out


def write_report(
    run_dir, record, model, guide, idata, idata_data, train, test, losses, notes, truth=None
):
    """The figures, ``diagnostics.json`` and ``report.md``. ``truth``: ``{"train": ...,
    "test": ...}``, each ``{"truth": ..., "extras": ...}`` for those rows, when the run's
    data are the model's own simulation; :meth:`evaluate` and :meth:`figures` get what
    their signatures ask for."""
    from inference.diagnostics import divergences, loo

    truth = truth or {}

    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    made: list[str] = []

    def plot(name: str, fn_name: str, arg) -> None:
        def go():
            from inference.diagnostics import plots

            getattr(plots, fn_name)(arg, figures / name)
            made.append(name)

        _try(f"figure {name}", go, notes)

    if losses:
        plot("elbo.png", "plot_elbo", losses)
    if "observed_data" in idata.groups():
        plot("ppc.png", "plot_ppc", idata)
    else:  # e.g. a likelihood that enters as a pyro.factor (a diffusion decoder's loss)
        notes.append("posterior predictive check: none, the model has no observed sample site")
    if record.get("engine") == "nuts":
        plot("trace.png", "plot_trace", idata)
    made += _model_figures(
        model, guide, train, idata, figures, notes, taken=made, truth=truth.get("train")
    )

    diagnostics: dict[str, Any] = {}
    diagnostics["divergences"] = _try("divergences", lambda: divergences(idata), notes)
    if model.local_sites:
        # the log_likelihood group holds p(x_n | z_n) at guide draws of z_n, not the
        # marginal p(x_n) that LOO needs
        diagnostics["loo"] = None
        notes.append("PSIS-LOO: not computed for a model with local latents")
    else:
        diagnostics["loo"] = _try("PSIS-LOO", lambda: loo(idata), notes)
    if guide is not None and model.likelihood_is_estimate:
        diagnostics["khat"] = None
        notes.append(
            "guide k-hat: not computed, the model's likelihood is a Monte Carlo estimate "
            "(its weights p/q are not defined)"
        )
    elif guide is not None and model.local_sites:
        # a joint k-hat over every row's latents grows with N and says nothing per row:
        # amortized guides are judged per data point
        def khat():
            from inference.diagnostics.khat import khat_verdict, pointwise_khat

            k = pointwise_khat(model, guide, idata_data)
            verdicts = [khat_verdict(float(v)) for v in k]
            return {
                "khat": float(np.median(k)),
                "verdict": khat_verdict(float(np.median(k))),
                "pointwise": True,
                "max": float(np.max(k)),
                "fractions": {v: verdicts.count(v) / len(verdicts) for v in set(verdicts)},
            }

        diagnostics["khat"] = _try("guide k-hat", khat, notes)
    elif guide is not None:

        def khat():
            from inference.diagnostics.khat import guide_khat

            return guide_khat(model, guide, idata_data, seed=int(record.get("seed", 0)))

        diagnostics["khat"] = _try("guide k-hat", khat, notes)
    else:
        diagnostics["khat"] = None
        notes.append("guide k-hat: not applicable (NUTS draws, no guide)")
    if model.local_sites and guide is not None:

        def activity():
            from inference.diagnostics.collapse import latent_activity

            return latent_activity(model, guide, idata_data)

        diagnostics["latent_activity"] = _try("latent activity", activity, notes)
    # evaluate() takes a guide; NUTS's draws stand in as one (guides.draws)
    posterior_of = guide
    if guide is None:
        posterior_of = _try(
            "NUTS draws as a guide", lambda: _draws_guide(model, idata, train), notes
        )
    if posterior_of is not None:
        eval_data = test if test is not None else train
        device = device_of(model)
        eval_data = {k: v.to(device) for k, v in eval_data.items()}
        known = _truth_keywords(model.evaluate, truth.get("test" if test is not None else "train"))
        diagnostics["evaluate"] = _try(
            "evaluate", lambda: jsonable(model.evaluate(posterior_of, eval_data, **known)), notes
        )
        where = "held-out rows" if test is not None else "training rows"
        diagnostics["evaluated_on"] = where + (", from the NUTS draws" if guide is None else "")
    else:
        diagnostics["evaluate"] = None
    summary_rows = _try("posterior summary", lambda: _summary_rows(idata, model), notes) or []
    diagnostics["summary"] = summary_rows
    diagnostics["figures"] = made
    diagnostics["supports_nuts"] = bool(getattr(model, "supports_nuts", False))
    diagnostics["notes"] = notes
    if losses:
        tail = losses[-max(1, min(50, len(losses) // 10)) :]
        diagnostics["final_loss"] = sum(tail) / len(tail)
    write_text(run_dir / "diagnostics.json", json.dumps(_clean(diagnostics), indent=2) + "\n")
    write_text(run_dir / "report.md", _report_text(record, diagnostics))


#: a model figure's name: it becomes a file name in figures/
_FIGURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _model_figures(
    model, guide, train, idata, folder: Path, notes: list[str], *, taken=(), truth=None
):
    """Save the model's own figures (:meth:`zoo.base.ZooModel.figures`) as
    ``folder/<name>.png``; a figure that fails is noted, never fatal. Returns the files
    written (``taken``: the report's own figures, which a model figure may not replace)."""
    from inference.diagnostics.plots import save_figure

    device = device_of(model)
    data = {k: v.to(device) for k, v in train.items()}
    known = _truth_keywords(model.figures, truth)
    wanted = _try(
        "model figures", lambda: dict(model.figures(guide, data, idata=idata, **known)), notes
    )
    made = []
    for name, figure in (wanted or {}).items():
        if not isinstance(name, str) or not _FIGURE_NAME.fullmatch(name):
            notes.append(f"model figure {name!r}: skipped (not a usable file name)")
            continue
        file = f"{name}.png"
        if file in taken:
            notes.append(f"model figure {name!r}: skipped (the report's own {file})")
            continue

        def go(figure=figure, file=file):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                made_figure = figure() if callable(figure) else figure
                save_figure(made_figure, folder / file)
            made.append(file)

        _try(f"model figure {name}", go, notes)
    return made


def _clean(value: Any) -> Any:
    """JSON-safe (NaN/Inf -> null, numpy -> Python)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    return value


def _steps_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """How long the run trained: NUTS chains, warmup and draws; SVI steps trained of those
    asked for, and a stopped run's way to continue."""
    if record.get("engine") == "nuts":
        return [
            {"setting": "chains", "value": record.get("chains")},
            {"setting": "warmup steps per chain", "value": record.get("steps")},
            {"setting": "draws per chain", "value": record.get("steps")},
        ]
    planned, trained = record.get("steps"), record.get("steps_trained")
    if trained is None or planned is None or trained >= planned:
        return [{"setting": "steps", "value": trained if trained is not None else planned}]
    note = (
        f"{trained} of {planned}: **training stopped early**; continue with "
        f"`zoo train {record['model']} --out RUN --resume`"
    )
    return [{"setting": "steps", "value": note}]


#: the thresholds a NUTS report flags (docs/guides/diagnostics.md: R-hat above 1.01, bulk ESS
#: below 400)
RHAT_LIMIT, ESS_LIMIT = 1.01, 400


def _mixing_rows(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The worst R-hat and smallest bulk ESS of a NUTS run, flagged against the limits."""
    rhats = [r["r_hat"] for r in summary if r.get("r_hat") is not None]
    ess = [r["ess_bulk"] for r in summary if r.get("ess_bulk") is not None]
    rows = []
    if rhats:
        worst = max(rhats)
        flag = (
            f" (**above {RHAT_LIMIT}: the chains disagree; run longer**)"
            if worst > RHAT_LIMIT
            else f" (below {RHAT_LIMIT}: ok)"
        )
        rows.append({"diagnostic": "worst R-hat", "value": f"{worst:.3f}{flag}"})
    if ess:
        least = min(ess)
        flag = (
            f" (**below {ESS_LIMIT}: too few effective draws; run longer**)"
            if least < ESS_LIMIT
            else f" (at least {ESS_LIMIT}: ok)"
        )
        rows.append({"diagnostic": "smallest bulk ESS", "value": f"{least:.0f}{flag}"})
    return rows


def _elbo_text(record: Mapping[str, Any]) -> Any:
    """The estimator and, for runs that record it, why ``auto`` chose it."""
    if record.get("elbo") and record.get("elbo_reason") not in (None, "asked for"):
        return f"{record['elbo']} ({record['elbo_reason']})"
    return record.get("elbo")


def _report_text(record: Mapping[str, Any], diag: Mapping[str, Any]) -> str:
    lines = [f"# Run report: {record['model']}", ""]
    setup = [
        {"setting": "engine", "value": record.get("engine")},
        {"setting": "guide", "value": record.get("guide")},
        {"setting": "local guide", "value": record.get("local_guide", "normal")},
        {"setting": "elbo", "value": _elbo_text(record)},
        *_steps_rows(record),
        {"setting": "seed", "value": record.get("seed")},
        {"setting": "config", "value": json.dumps(record.get("config"))},
        {"setting": "priors", "value": json.dumps(record.get("priors")) or "{}"},
        {"setting": "data", "value": json.dumps(record.get("data"))},
    ]
    lines += ["## Setup", "", _table(setup)]
    rows = []
    if "final_loss" in diag:
        rows.append(
            {"diagnostic": "final loss (-ELBO, mean of last steps)", "value": diag["final_loss"]}
        )
    nuts = record.get("engine") == "nuts"
    if nuts:
        rows.append({"diagnostic": "divergences", "value": diag.get("divergences")})
        rows += _mixing_rows(diag.get("summary") or [])
    loo = diag.get("loo") or {}
    for key in ("elpd_loo", "se", "p_loo", "max_pareto_k") if loo else ():
        rows.append({"diagnostic": f"PSIS-LOO {key}", "value": loo.get(key)})
    khat = diag.get("khat")
    if khat and khat.get("pointwise"):
        shares = ", ".join(f"{v}: {f:.0%}" for v, f in sorted(khat.get("fractions", {}).items()))
        rows.append(
            {
                "diagnostic": "guide k-hat per data point (PSIS, Yao et al. 2018)",
                "value": f"median {_fmt(_num(khat.get('khat')))} ({khat.get('verdict')}), "
                f"max {_fmt(_num(khat.get('max')))}; {shares}",
            }
        )
    elif khat:
        rows.append(
            {
                "diagnostic": "guide k-hat (PSIS, Yao et al. 2018)",
                "value": f"{_fmt(_num(khat.get('khat')))} ({khat.get('verdict')})",
            }
        )
    else:
        rows.append({"diagnostic": "guide k-hat (PSIS, Yao et al. 2018)", "value": "n/a"})
    lines += ["## Diagnostics", "", _table(rows)]
    activity = diag.get("latent_activity")
    if activity:
        from inference.diagnostics.collapse import collapse_table

        act_rows = collapse_table(activity)
        for row in act_rows:
            row["total KL (nats)"] = _num(row["total KL (nats)"])
        lines += ["## Latent activity (posterior collapse, per latent level)", "", _table(act_rows)]
    evaluation = diag.get("evaluate")
    if evaluation:
        where = diag.get("evaluated_on", "")
        ev_rows = [{"metric": k, "value": v} for k, v in evaluation.items()]
        lines += [f"## Evaluation ({where})", ""]
        if khat and khat.get("verdict") == "do not trust":
            lines += [
                f"**These figures rest on a guide that does not match the posterior** (guide "
                f"k-hat {_fmt(_num(khat.get('khat')))} >= 0.7): "
                + (
                    "rerun with `--engine nuts` before trusting them."
                    if diag.get("supports_nuts")
                    else "try a richer `--guide` (mvn, flow) before trusting them."
                ),
                "",
            ]
        lines.append(_table(ev_rows))
    summary_note = (
        ""
        if nuts
        else " (independent guide draws: R-hat, ESS and MCSE do not apply and are not shown)"
    )
    lines += [f"## Posterior summary{summary_note}", "", _table(diag.get("summary") or [])]
    if diag.get("figures"):
        lines += ["## Figures", ""]
        lines += [f"![{name}](figures/{name})" for name in diag["figures"]]
        lines.append("")
    if diag.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in diag["notes"]] + [""]
    return "\n".join(lines)
