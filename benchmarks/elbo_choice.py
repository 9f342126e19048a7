"""Every model's ``elbo="auto"`` choice against the alternative, at equal wall time.

For each registered model whose ``auto`` estimator is the analytic KL, the model's default
config and guide train for the same wall-clock budget with ``auto`` and with the sampled-KL
estimator it replaced (``jit`` for static models, ``trace`` otherwise), same seed, the two
runs interleaved (which goes first alternates by seed); both are then scored by one
evaluator, a 20-particle Trace_ELBO estimate of the negative ELBO on (up to 256 rows of) the
training data at full-data scale, lower is better. Models whose ``auto`` is the sampled KL
have no analytic alternative and are listed with their choice only.

Run alone with ``python -m benchmarks.elbo_choice [--quick]``.
"""

from __future__ import annotations

import statistics
import time
import warnings

import pyro
import torch

import zoo
from inference.data import Batch
from inference.elbos import PairLoss, choose_elbo, make_elbo
from inference.svi import first_batch, fit


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
    start = time.perf_counter()

    def stop_when_out_of_time(step: int, _loss: float) -> None:
        nonlocal steps_done
        steps_done = step
        if time.perf_counter() - start > seconds:
            raise _OutOfTime

    options = dict(config=model.config, steps=10**6, elbo=elbo, seed=seed, progress=False,
                   validate=False, log_every=5, callback=stop_when_out_of_time)  # fmt: skip
    try:
        fit(model, guide, train, **options)
    except _OutOfTime:
        pass
    return _score(model, guide, train, seed), steps_done


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seconds, seeds = (2.0, range(1)) if quick else (10.0, range(2))
    names = ["vae_digits", "eight_schools"] if quick else sorted(zoo.list())
    rows = []
    for name in names:
        model, guide, train = _build(name, 0)
        batch = first_batch(train, model.config.batch_size, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choice = choose_elbo("auto", model, guide, batch)
        if choice.name not in ("meanfield", "jit_meanfield"):
            rows.append({"model": name, "auto picks": choice.name, "auto": "-",
                         "sampled KL": "-", "steps auto / sampled": "-",
                         "better per second": "(no analytic KL)"})  # fmt: skip
            continue
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
        gain = [s - a for a, s in zip(scores["auto"], scores[sampled], strict=True)]
        rows.append(
            {
                "model": name,
                "auto picks": choice.name,
                "auto": f"{statistics.mean(scores['auto']):.1f}",
                "sampled KL": f"{statistics.mean(scores[sampled]):.1f} ({sampled})",
                "steps auto / sampled": (
                    f"{statistics.mean(steps['auto']):.0f} / {statistics.mean(steps[sampled]):.0f}"
                ),
                "better per second": (
                    f"auto by {statistics.mean(gain):.1f}"
                    if statistics.mean(gain) > 0
                    else f"sampled by {-statistics.mean(gain):.1f}"
                ),
            }
        )
    return {
        "title": f"elbo=auto against the sampled KL at equal wall time ({seconds:.0f} s a run)",
        "notes": (
            f"Negative ELBO (20-particle estimate on up to 256 training rows, full-data scale; "
            f"lower is better) after {seconds:.0f} s of training with each model's default "
            f"config and guide, mean over {len(seeds)} seed(s), 1 thread, the two estimators "
            "interleaved. 'better per second' is the mean difference, sampled minus auto."
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
