"""vae_digits SVI step time through the zoo engine against a hand-written PyTorch loop.

Both train the same network (encoder 64-256-256-2x10, decoder 10-256-256-64, softplus), on
the same batches of 128 binarized digits, with the same single-sample Monte Carlo
estimator of the negative ELBO that Pyro's Trace_ELBO uses (log q(z|x) - log p(z) -
log p(x|z) at a reparameterized z, scaled by N/B), from the same initial weights, with
fused Adam at lr 1e-3 (the engine's optimizer, and the fastest PyTorch has), one CPU
thread. The hand loop is the no-overhead limit; ``zoo/hand`` is the engine's overhead.

Run alone with ``python -m benchmarks.vae_step [--quick]``.
"""

from __future__ import annotations

import math
import statistics
import time

import pyro
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

import zoo
from inference.svi import fit

BATCH = 128
LATENT = 10
HIDDEN = (256, 256)
LR = 1e-3


def _split(seed: int = 0):
    data = zoo.create("vae_digits").default_data()
    perm = torch.randperm(len(data["x"]), generator=torch.Generator().manual_seed(seed))
    n_train = int(round(0.85 * len(perm)))
    return data["x"][perm[:n_train]], data["x"][perm[n_train:]]


def _mlp(sizes):
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class HandVAE(nn.Module):
    """The same VAE in plain PyTorch."""

    def __init__(self):
        super().__init__()
        self.encoder = _mlp([64, *HIDDEN, 2 * LATENT])
        self.decoder = _mlp([LATENT, *HIDDEN, 64])

    def encode(self, x):
        loc, raw = self.encoder(x).split(LATENT, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-4

    def neg_elbo(self, x, scale: float):
        loc, sd = self.encode(x)
        z = loc + sd * torch.randn_like(loc)
        log_q = Normal(loc, sd).log_prob(z).sum(-1)
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_lik = Bernoulli(logits=self.decoder(z)).log_prob(x).sum(-1)
        return scale * (log_q - log_p - log_lik).sum()


def heldout_elbo(encode, decoder, x, particles: int = 10, seed: int = 0) -> float:
    """Mean per-image ELBO on ``x`` (nats), one evaluator for every variant."""
    torch.manual_seed(seed)
    with torch.no_grad():
        loc, sd = encode(x)
        z = loc + sd * torch.randn((particles, *loc.shape))
        log_w = (
            Normal(0.0, 1.0).log_prob(z).sum(-1)
            + Bernoulli(logits=decoder(z)).log_prob(x).sum(-1)
            - Normal(loc, sd).log_prob(z).sum(-1)
        )
    return float(log_w.mean())


def hand_run(train, steps: int, seed: int, log_every: int = 50):
    """Train the hand-written VAE; return (seconds in the loop, model)."""
    model = HandVAE()
    start_from = _zoo_model(seed)  # the zoo's initial weights, so only the loop differs
    model.encoder.load_state_dict(start_from.encoder.net.state_dict())
    model.decoder.load_state_dict(start_from.decoder.state_dict())
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    n = len(train)
    per_epoch = n // BATCH
    generator = torch.Generator().manual_seed(seed)
    order, position, pending = torch.randperm(n, generator=generator), 0, []
    start = time.perf_counter()
    for step in range(steps):
        if position == per_epoch:
            order, position = torch.randperm(n, generator=generator), 0
        x = train.index_select(0, order[position * BATCH : (position + 1) * BATCH])
        position += 1
        opt.zero_grad(set_to_none=True)
        loss = model.neg_elbo(x, n / BATCH)
        loss.backward()
        opt.step()
        pending.append(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:  # same sync pattern as fit
            values = torch.stack(pending).tolist()
            pending.clear()
            assert all(math.isfinite(v) for v in values)
    return time.perf_counter() - start, model


def _zoo_model(seed: int):
    pyro.set_rng_seed(seed)
    return zoo.create("vae_digits", latent_dim=LATENT, hidden=HIDDEN)


def zoo_run(train, steps: int, seed: int, elbo: str):
    """Train vae_digits through inference.svi.fit; return (seconds in the loop, model)."""
    model = _zoo_model(seed)
    result = fit(
        model,
        model.guide,
        {"x": train},
        steps=steps,
        batch_size=BATCH,
        lr=LR,
        elbo=elbo,
        seed=seed,
        progress=False,
        log_every=50,
        validate=False,
    )
    return result.seconds, model


def run(quick: bool = False) -> dict:
    """Median ms/step over repeats, the zoo/hand ratio, and held-out ELBOs after training."""
    torch.set_num_threads(1)
    repeats, steps, quality_steps = (3, 50, 100) if quick else (5, 200, 1000)
    quality_seeds = 2 if quick else 3
    train, test = _split()
    variants = {
        "hand-written PyTorch": lambda s, n: hand_run(train, n, s),
        "zoo fit, elbo=trace": lambda s, n: zoo_run(train, n, s, "trace"),
        "zoo fit, elbo=jit (sampled KL)": lambda s, n: zoo_run(train, n, s, "jit"),
        "zoo fit, elbo=jit_meanfield (what elbo=auto picks)": (
            lambda s, n: zoo_run(train, n, s, "jit_meanfield")
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):  # interleaved, so load changes hit every variant alike
        for name, train_fn in variants.items():
            seconds, _ = train_fn(repeat, steps)
            times[name].append(1000.0 * seconds / steps)
    rows = []
    hand_ms = statistics.median(times["hand-written PyTorch"])
    for name, train_fn in variants.items():
        elbos = []
        for seed in range(quality_seeds):  # seeds differ more than variants do
            _, model = train_fn(seed, quality_steps)
            encode = model.encode if isinstance(model, HandVAE) else model.encoder
            elbos.append(heldout_elbo(encode, model.decoder, test))
        ms = statistics.median(times[name])
        rows.append(
            {
                "variant": name,
                "ms/step (median)": round(ms, 3),
                "min..max": f"{min(times[name]):.3f}..{max(times[name]):.3f}",
                "ratio to hand": round(ms / hand_ms, 2),
                f"held-out ELBO/image after {quality_steps} steps": (
                    f"{statistics.mean(elbos):.2f} ± {statistics.stdev(elbos):.2f}"
                ),
            }
        )
    return {
        "title": "vae_digits SVI step (batch 128, 64-256-256-10, 1 thread)",
        "notes": (
            f"{repeats} repeats of {steps} steps per variant (interleaved); ms/step is loop "
            "time only (fit's setup and JIT tracing excluded). ELBO: 10-sample held-out "
            "ELBO per image on a seeded 15% split, one evaluator for all variants, mean ± sd "
            f"over {quality_seeds} training seeds."
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
