"""Every model's ``elbo="auto"`` choice against the alternative, at equal compute.

For each registered model whose ``auto`` estimator is the analytic KL, the model's default
config and guide train for the same budget of CPU seconds (one thread, so the budget is
the work done and a shared machine's load does not move it) with ``auto`` and with the
sampled-KL estimator it replaced (``jit`` for static models, ``trace`` otherwise), same
seed, the two runs interleaved (which goes first alternates by seed); both are then scored
by one evaluator, a 20-particle Trace_ELBO estimate of the negative ELBO on (up to 256 rows
of) the training data at full-data scale, lower is better. The gain is paired by seed, with
its 95% t-interval; the verdict says which estimator is better per second or that the seeds
cannot tell. Models whose ``auto`` is the sampled KL have no analytic alternative and are
listed with their choice only.

Each model's figures are kept in ``runs/benchmarks/elbo_choice/`` as they finish, one folder
per budget and seed count, so an interrupted run resumes where it stopped.

Run alone with ``python -m benchmarks.elbo_choice [--quick] [--models a,b] [--seconds S]
[--seeds N]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pyro
import torch

import zoo
from inference.data import Batch
from inference.elbos import PairLoss, choose_elbo, make_elbo
from inference.svi import first_batch, fit
from zoo.evidence.results import summarise

CACHE = Path(__file__).resolve().parents[1] / "runs" / "benchmarks" / "elbo_choice"


class _OutOfTime(Exception):
    pass


def _build(name: str, seed: int):
    pyro.set_rng_seed(seed)
    model = zoo.create(name)
    train, _ = model.split(model.default_data(seed=0), 0)
    return model, model.default_guide(), train


def _score(model, guide, train, seed: int) -> float:
    rows = len(next(iter(train.values())))
    keep = min(rows, 256)
    batch = Batch({k: v[:keep] for k, v in train.items()}, index=torch.arange(keep), size=rows)
    loss = PairLoss(model, guide, "trace", make_elbo("trace", num_particles=20), list(train), rows)
    pyro.set_rng_seed(10_000 + seed)
    return loss.evaluate(batch)


def _train_for(name: str, elbo: str, seed: int, seconds: float) -> tuple[float, int]:
    model, guide, train = _build(name, seed)
    steps_done = 0
    start = time.process_time()

    def stop_when_out_of_time(step: int, _loss: float) -> None:
        nonlocal steps_done
        steps_done = step
        if time.process_time() - start > seconds:
            raise _OutOfTime

    options = dict(config=model.config, steps=10**6, elbo=elbo, seed=seed, progress=False,
                   validate=False, log_every=5, callback=stop_when_out_of_time)  # fmt: skip
    try:
        fit(model, guide, train, **options)
    except _OutOfTime:
        pass
    return _score(model, guide, train, seed), steps_done


def _verdict(gain: dict) -> str:
    """Which estimator is better per second, from the paired gain's 95% interval."""
    if gain["ci95"] is None:  # one seed: no interval
        return "auto (one seed)" if gain["mean"] > 0 else "sampled (one seed)"
    low, high = gain["ci95"]
    if low > 0:
        return "auto"
    if high < 0:
        return "sampled"
    return "level within noise"


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def compare(name: str, seconds: float, seeds: range) -> dict:
    """One model's row: its ``auto`` choice and, where that is the analytic KL, the paired
    comparison against the sampled KL (cached in :data:`CACHE` under the same budget)."""
    cache = CACHE / f"{seconds:g}s-{len(seeds)}seeds" / f"{name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model, guide, train = _build(name, 0)
    batch = first_batch(train, model.config.batch_size, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        choice = choose_elbo("auto", model, guide, batch)
    row = {"model": name, "auto picks": choice.name}
    if choice.name in ("meanfield", "jit_meanfield"):
        sampled = "jit" if choice.name == "jit_meanfield" else "trace"
        scores: dict[str, list[float]] = {"auto": [], sampled: []}
        steps: dict[str, list[int]] = {"auto": [], sampled: []}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for seed in seeds:
                order = ("auto", sampled) if seed % 2 == 0 else (sampled, "auto")
                for elbo in order:
                    value, done = _train_for(name, elbo, seed, seconds)
                    scores[elbo].append(value)
                    steps[elbo].append(done)
        gain = summarise([s - a for a, s in zip(scores["auto"], scores[sampled], strict=True)])
        auto, other = summarise(scores["auto"]), summarise(scores[sampled])
        interval = (
            f" [{_signed(gain['ci95'][0])}, {_signed(gain['ci95'][1])}]" if gain["ci95"] else ""
        )
        row |= {
            "sampled KL": sampled,
            "auto": f"{auto['mean']:.1f}",
            "sampled": f"{other['mean']:.1f}",
            "steps auto / sampled": f"{sum(steps['auto']) / len(seeds):.0f} / "
            f"{sum(steps[sampled]) / len(seeds):.0f}",
            "gain of auto (sampled - auto) [95%]": f"{_signed(gain['mean'])}{interval}",
            "better per second": _verdict(gain),
        }
    else:
        row |= {"sampled KL": "-", "auto": "-", "sampled": "-", "steps auto / sampled": "-",
                "gain of auto (sampled - auto) [95%]": "-",
                "better per second": "(no analytic KL)"}  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=1))
    return row


def run(
    quick: bool = False,
    models: list[str] | None = None,
    seconds: float | None = None,
    seeds: int | None = None,
) -> dict:
    torch.set_num_threads(1)
    seconds = seconds or (2.0 if quick else 30.0)
    seed_range = range(seeds or (1 if quick else 3))
    names = models or (["vae_digits", "eight_schools"] if quick else sorted(zoo.list()))
    unknown = sorted(set(names) - set(zoo.list()))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; see `zoo list`")
    rows = [compare(name, seconds, seed_range) for name in names]
    return {
        "title": f"elbo=auto against the sampled KL at equal compute ({seconds:.0f} CPU-s a run)",
        "notes": (
            f"Negative ELBO (20-particle estimate on up to 256 training rows, full-data scale; "
            f"lower is better) after {seconds:.0f} CPU-seconds of training (1 thread) with each "
            f"model's default config and guide, mean over {len(seed_range)} seeds, the two "
            "estimators interleaved. The gain is paired by seed (sampled minus auto; positive "
            "means the analytic KL is ahead) with its 95% t-interval; 'better per second' is "
            "'auto' or 'sampled' where the interval excludes 0, else 'level within noise'."
            + (
                f" Measured so far: {len(names)} of the {len(zoo.list())} registered models; "
                f"not yet: {', '.join(sorted(set(zoo.list()) - set(names)))}."
                if models and not quick and set(names) != set(zoo.list())
                else ""
            )
        ),
        "rows": rows,
    }


def main() -> None:
    from benchmarks import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s, one seed, two models")
    parser.add_argument("--models", help="comma-separated model names (default: all)")
    parser.add_argument("--seconds", type=float, help="CPU seconds a run (default 30)")
    parser.add_argument("--seeds", type=int, help="seeds (default 3)")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else None
    print(format_table(run(args.quick, models, args.seconds, args.seeds)))


if __name__ == "__main__":
    main()
