"""DDP agreement runs for tests/test_lightning.py (not a test module itself).

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/lightning_ddp_script.py
OUT.json`` trains each case with 2 CPU processes (gloo); the test runs the same cases in one
process with twice the batch and compares. Rank 0 writes the results to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch

# one Lightning model per case: (steps, rows per process when 2 ranks, lr)
CASES = {
    "schools": (600, 16, 0.1),
    "schools_wrong_scale": (600, 16, 0.1),
    "vae": (120, 32, 3e-3),
}
SEED = 3


def hierarchical_data(rows: int = 64) -> dict[str, torch.Tensor]:
    """A larger eight-schools data set: mu = 8, tau = 3, sigma = 4 (fixed seed)."""
    generator = torch.Generator().manual_seed(11)
    theta = 8.0 + 3.0 * torch.randn(rows, generator=generator)
    sigma = torch.full((rows,), 4.0)
    return {"y": theta + sigma * torch.randn(rows, generator=generator), "sigma": sigma}


def run_case(case: str, devices: int) -> dict[str, float]:
    """Train ``case`` on ``devices`` ranks (global batch = 2 x per-rank batch of CASES)."""
    import pyro
    import pyro.distributions as dist

    import guides
    import zoo
    from inference.data import holdout_split
    from inference.evaluation import elbo_per_row
    from inference.lightning import fit_lightning
    from inference.posterior import draw_latents

    steps, per_rank, lr = CASES[case]
    batch = per_rank * 2 // devices  # the same global batch for 1 or 2 ranks
    pyro.set_rng_seed(SEED)
    if case.startswith("schools"):
        # an informative prior on mu, so that the weight of the rows shows in its posterior
        model = zoo.create("eight_schools", priors={"mu": dist.Normal(0.0, 1.0)})
        data = model.validate(hierarchical_data())
        test = None
    else:
        model = zoo.create("vae_digits", latent_dim=4, hidden=(32,))
        data, test = holdout_split(model.default_data(), model.config.holdout, SEED)
    guide = guides.build("default", model)
    # the deliberate bug: each rank scales its rows to its share of the data, not to N
    row_scale = 0.5 if case.endswith("wrong_scale") else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, trainer = fit_lightning(
            model,
            guide,
            data,
            steps=steps,
            batch_size=batch,
            lr=lr,
            seed=SEED,
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            row_scale=row_scale,
        )
    losses = module.gathered_losses()
    out = {"rank": trainer.global_rank, "steps": trainer.global_step, "loss": losses[-1]}
    torch.manual_seed(0)
    if case.startswith("schools"):
        draws = draw_latents(model, guide, data, 4000)
        for site in ("mu", "tau"):
            out[f"{site}_mean"] = float(draws[site].mean())
            out[f"{site}_sd"] = float(draws[site].std())
    else:
        with torch.no_grad():
            out["heldout_elbo"] = float(elbo_per_row(model, guide, test, num_particles=10).mean())
    return out


def main() -> None:
    torch.set_num_threads(1)
    results = {case: run_case(case, devices=2) for case in CASES}
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[1], "w", encoding="utf-8") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main()
