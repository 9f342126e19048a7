"""vae_digits: held-out ELBO and IWAE-100 of the three local guide families, same seeds.

Each family (``normal``: the encoder's diagonal Gaussian; ``mvn``: full-covariance Gaussian
whose correlations a head reads from the encoder's (loc, log scale); ``flow``: two inverse
autoregressive affine steps conditioned on the encoder's last hidden layer; and, to show
why ``mvn`` does not read that layer, ``mvn`` with ``context="hidden"``; see
:mod:`guides.local`) trains the
model's default configuration as ``zoo train vae_digits --local-guide LOCAL --seed S``
does: the same seeded holdout split (85/15 of the 1797 digits), 300 epochs of batches of
128 (3300 steps), Adam at lr 1e-3, the JIT-compiled Trace_ELBO. Then ``evaluate`` on the
held-out rows: the ELBO (10 particles) and the 100-sample IWAE bound, nats per image.
Seeds 0, 1, 2 for every family (a seed fixes the split, the networks' initialisation and
the minibatch order, so the families see the same data in the same order); mean and
sample sd over seeds, and the paired difference to ``normal`` per seed. The train ELBO is
the training loss of the last 50 steps (single-particle estimates on the minibatches), per
image: its gap to the held-out ELBO is the overfitting. Cost: the whole training loop's
wall time, and the median time of one training step (loss, gradients; the compiled loss
``zoo train`` runs) on a batch of 128, measured round-robin over the families after
training so that a slow spell of a shared machine hits them all alike, as a ratio to
``normal``.

Not in ``python -m benchmarks``' default list (about 10 minutes on one core). Run with
``python -m benchmarks.local_guides [--quick] [--out FILE]`` (writes
``benchmarks/local_guides.md``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import pyro
import torch

import guides
import zoo
from benchmarks import format_table, median_ms
from inference.data import Batch, holdout_split
from inference.svi import fit

#: (row label, local kind, local options)
FAMILIES = (
    ("normal", "normal", {}),
    ("mvn", "mvn", {}),
    ("flow", "flow", {}),
    ("mvn, context=hidden", "mvn", {"context": "hidden"}),
)
SEEDS = (0, 1, 2)


def train_and_score(local: str, seed: int, *, options=None, quick: bool = False) -> dict:
    """One ``zoo train vae_digits --local-guide LOCAL --seed SEED`` run (``options``: the
    family's ``local_options``), scored on the held-out rows."""
    pyro.set_rng_seed(seed)  # as train_run: the networks are initialised at the seed
    model = zoo.create("vae_digits")
    c = model.config
    train, test = holdout_split(model.default_data(seed), model.config.holdout, seed)
    rows = len(train["x"])
    steps = 20 if quick else math.ceil(c.epochs * max(1, rows // c.batch_size))
    guide = guides.build("default", model, local=local, local_options=options)
    result = fit(
        model, guide, train, steps=steps, batch_size=c.batch_size, lr=c.lr, seed=seed,
        progress=False,
    )  # fmt: skip
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    metrics = model.evaluate(guide, test)
    heads = sum(p.numel() for name, p in guide.named_parameters() if name.startswith("local."))
    index = torch.arange(c.batch_size)
    batch = Batch({k: v[index] for k, v in train.items()}, index=index, size=rows)

    def step():
        result.loss_fn.zero_grad(set_to_none=True)
        result.loss_fn.step_loss(batch)

    return {
        "step": step,
        "train_elbo": -result.final_loss / rows,
        "elbo": metrics["elbo_per_image"],
        "iwae": metrics["iwae100_per_image"],
        "train_s": result.seconds,
        "eval_s": time.perf_counter() - start,
        "steps": result.steps,
        "head_params": heads,
        "train_rows": rows,
        "test_rows": len(test["x"]),
    }


def _mean_sd(values: list[float], digits: int = 2) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seeds = SEEDS[:1] if quick else SEEDS
    scores = {
        label: [train_and_score(kind, s, options=options, quick=quick) for s in seeds]
        for label, kind, options in FAMILIES
    }
    step_ms = {label: [] for label in scores}
    for _ in range(2 if quick else 7):  # round-robin: a slow spell hits every family
        for label, runs in scores.items():
            step_ms[label].append(median_ms(runs[0]["step"], 5 if quick else 25))
    step_ms = {label: min(times) for label, times in step_ms.items()}
    base = scores["normal"]
    rows = []
    for family, _, _ in FAMILIES:
        runs = scores[family]
        elbo = [r["elbo"] for r in runs]
        iwae = [r["iwae"] for r in runs]
        d_elbo = [r["elbo"] - b["elbo"] for r, b in zip(runs, base, strict=True)]
        d_iwae = [r["iwae"] - b["iwae"] for r, b in zip(runs, base, strict=True)]
        rows.append(
            {
                "local guide": family,
                "train ELBO": _mean_sd([r["train_elbo"] for r in runs]),
                "held-out ELBO": _mean_sd(elbo),
                "held-out IWAE-100": _mean_sd(iwae),
                "ELBO - normal (paired)": "0" if family == "normal" else _mean_sd(d_elbo),
                "IWAE - normal (paired)": "0" if family == "normal" else _mean_sd(d_iwae),
                "IWAE - ELBO": _mean_sd([i - e for i, e in zip(iwae, elbo, strict=True)]),
                "train s": _mean_sd([r["train_s"] for r in runs], 1),
                "ms/step": f"{step_ms[family]:.2f}",
                "step / normal": f"{step_ms[family] / step_ms['normal']:.2f}",
                "head params": runs[0]["head_params"],
                "per seed ELBO / IWAE": "; ".join(
                    f"{s}: {r['elbo']:.2f} / {r['iwae']:.2f}"
                    for s, r in zip(seeds, runs, strict=True)
                ),
            }
        )
    first = base[0]
    return {
        "title": "vae_digits: local guide families, held-out ELBO and IWAE-100 (nats per image)",
        "notes": (
            f"seeds {list(seeds)}; {first['steps']} steps of batch 128 (Adam, lr 1e-3, jit "
            f"Trace_ELBO) on {first['train_rows']} training digits, scored on "
            f"{first['test_rows']} held-out digits; mean ± sample sd over seeds "
            "(higher is better). "
            + ("QUICK SMOKE RUN: 20 steps, one seed, not a measurement. " if quick else "")
            + "Train ELBO: the last 50 training steps' loss per image. "
            + f"torch {torch.__version__}, 1 thread."
        ),
        "rows": rows,
        "scores": {
            k: [{n: v for n, v in r.items() if n != "step"} for r in runs]
            for k, runs in scores.items()
        },  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, one seed (smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("local_guides.md")))
    args = parser.parse_args()
    table = format_table(run(quick=args.quick))
    print(table)
    Path(args.out).write_text(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
