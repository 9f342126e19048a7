"""CausalDiffAE on mini-MorphoMNIST: the paper's small check against two baselines.

Trains three models with the same data, seed and steps: the full model, the ablation without
label alignment (``label_prior=False``) and the non-causal baseline (``causal=False``,
independent factors z_i = u_i). Reports per-block linear-probe R^2 on held-out images,
counterfactual MAE (measured with the generator's own measurement functions), the effect
size of do(thickness) as the guidance weight w grows, and a digits classifier's accuracy on
new samples. Not part of ``python -m benchmarks`` (about 15 CPU minutes in full: 900
steps of the convolutional eps-net per variant, batch 64, lr 2e-3).

Run with ``python -m benchmarks.causal_diffae [--quick] [--steps N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import zoo
from inference.svi import fit
from zoo.models.causal_diffae.model import counterfactual_mae, effect_size, sample_accuracy

VARIANTS = {
    "causal_diffae": {},
    "no_label_prior": {"label_prior": False},
    "non_causal": {"causal": False},
}
DO_VALUES = {"thickness": (0.1, 0.5, 0.9), "intensity": (0.4, 0.6, 0.85)}
GUIDANCE = (0.0, 1.0, 2.0, 3.0)


def run(
    quick: bool = False,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    variants: tuple[str, ...] = tuple(VARIANTS),
    save_dir: str | None = None,
    **config,
) -> dict:
    torch.set_num_threads(1)
    steps = steps or (30 if quick else 900)
    n_eval = 40 if quick else 200
    rows = []
    for variant in variants:
        overrides = VARIANTS[variant]
        model = zoo.create("causal_diffae", **config, **overrides)
        train_raw = model.raw_data(seed)
        test_raw = model.raw_data(seed + 1000, n=1000)
        train = {k: torch.as_tensor(train_raw[k]) for k in model.data_spec()}
        start = time.perf_counter()
        fit(
            model,
            model.guide,
            model.validate(train),
            config=model.config,
            steps=steps,
            seed=seed,
            progress=False,
            device=device,
        )
        train_s = time.perf_counter() - start
        model.eval()
        if save_dir:
            torch.save(model.state_dict(), f"{save_dir}/{variant}.pt")
        test = model.validate({k: test_raw[k] for k in model.data_spec()})
        row = {"variant": variant, "train s": round(train_s, 1)}
        row.update(model.probe_r2(test))
        row.update(counterfactual_mae(model, test_raw, DO_VALUES, n=n_eval))
        if variant == "causal_diffae":
            for w in GUIDANCE:
                row[f"effect_thickness_w{w:g}"] = effect_size(
                    model, test_raw, "thickness", 0.1, 0.9, n=n_eval // 2, w=w
                )
            row.update(sample_accuracy(model, train_raw, test_raw, n=n_eval))
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    title = f"CausalDiffAE mini-MorphoMNIST (steps {steps}, seed {seed}, {device}, {config})"
    return {"title": title, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eps-net", default="unet")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--save-dir", default=None, help="write each trained state_dict")
    args = parser.parse_args()
    run(
        quick=args.quick,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        eps_net=args.eps_net,
        **({"batch_size": 64, "lr": 2e-3} if args.eps_net == "unet" else {}),
        variants=tuple(args.variants.split(",")),
        save_dir=args.save_dir,
    )


if __name__ == "__main__":
    main()
