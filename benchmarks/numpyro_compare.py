"""The zoo's engines against NumPyro on the same models, when NumPyro is installed.

NumPyro and JAX are an optional benchmark extra (``pip install -e .[bench]``), never a
runtime dependency. Both sides run on one CPU thread (XLA's thread pool is limited before
JAX is imported) and are measured in the same process:

- vae_digits: ms per SVI step, same network and batch, Trace_ELBO, Adam 1e-3; NumPyro's
  ``svi.update`` is jit-compiled, the zoo runs ``fit`` with ``elbo="auto"``.
- eight schools, non-centered: NUTS min bulk ESS per second, 1 chain, same warmup and draws,
  compilation included on both sides.

Run alone with ``python -m benchmarks.numpyro_compare [--quick]``.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time

import numpy as np
import torch

import zoo
from benchmarks.vae_step import BATCH, HIDDEN, LATENT, LR, _split, zoo_run
from inference.diagnostics.summary import min_ess_bulk
from inference.mcmc import nuts
from zoo.models.eight_schools import SIGMA


def available() -> bool:
    return importlib.util.find_spec("numpyro") is not None


def _jax():
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    import jax

    jax.config.update("jax_platform_name", "cpu")
    return jax


def numpyro_vae_ms(train: np.ndarray, steps: int, seed: int) -> float:
    jax = _jax()
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from jax.example_libraries import stax
    from numpyro.infer import SVI, Trace_ELBO

    def mlp(sizes):
        layers = []
        for i, size in enumerate(sizes):
            layers.append(stax.Dense(size))
            if i < len(sizes) - 1:
                layers.append(stax.Softplus)
        return stax.serial(*layers)

    n = len(train)
    encoder, decoder = mlp([*HIDDEN, 2 * LATENT]), mlp([*HIDDEN, 64])

    def model(x):
        net = numpyro.module("decoder", decoder, (BATCH, LATENT))
        with numpyro.plate("data", n, subsample_size=x.shape[0]):
            z = numpyro.sample("z", nd.Normal(0, 1).expand([LATENT]).to_event(1))
            numpyro.sample("x", nd.Bernoulli(logits=net(z)).to_event(1), obs=x)

    def guide(x):
        net = numpyro.module("encoder", encoder, (BATCH, 64))
        with numpyro.plate("data", n, subsample_size=x.shape[0]):
            out = net(x)
            loc, scale = out[:, :LATENT], jax.nn.softplus(out[:, LATENT:]) + 1e-4
            numpyro.sample("z", nd.Normal(loc, scale).to_event(1))

    svi = SVI(model, guide, numpyro.optim.Adam(LR), Trace_ELBO())
    data = jnp.asarray(train)
    state = svi.init(jax.random.PRNGKey(seed), data[:BATCH])
    update = jax.jit(svi.update)
    rng = np.random.default_rng(seed)
    batches = [data[rng.choice(n, BATCH, replace=False)] for _ in range(steps + 20)]
    for batch in batches[:20]:  # compile and warm up
        state, loss = update(state, batch)
    loss.block_until_ready()
    start = time.perf_counter()
    for batch in batches[20:]:
        state, loss = update(state, batch)
    loss.block_until_ready()
    return 1000.0 * (time.perf_counter() - start) / steps


def numpyro_schools_ess_per_s(y, sigma, warmup: int, draws: int, seed: int) -> float:
    jax = _jax()
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import MCMC, NUTS

    def model(y, sigma):
        mu = numpyro.sample("mu", nd.Normal(0, 5))
        tau = numpyro.sample("tau", nd.HalfCauchy(5))
        with numpyro.plate("school", len(sigma)):
            eta = numpyro.sample("eta", nd.Normal(0, 1))
            numpyro.sample("y", nd.Normal(mu + tau * eta, sigma), obs=y)

    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(y), jnp.asarray(sigma))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    seconds = time.perf_counter() - start
    return min_ess_bulk({k: np.asarray(v) for k, v in samples.items()}) / seconds


def zoo_schools_ess_per_s(warmup: int, draws: int, seed: int) -> float:
    model = zoo.create("eight_schools")
    data = model.default_data()
    start = time.perf_counter()
    mcmc = nuts(model, data, chains=1, warmup=warmup, draws=draws, seed=seed, progress=False)
    samples = mcmc.get_samples(group_by_chain=True)
    seconds = time.perf_counter() - start
    return min_ess_bulk({k: v.numpy() for k, v in samples.items()}) / seconds


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    if not available():
        return {
            "title": "zoo against NumPyro",
            "notes": "NumPyro is not installed (optional: pip install -e .[bench]); skipped.",
            "rows": [{"comparison": "skipped", "zoo": "", "numpyro": "", "zoo/numpyro": ""}],
        }
    repeats, steps = (2, 50) if quick else (5, 300)
    warmup, draws = (100, 100) if quick else (500, 1000)
    train, _ = _split()
    zoo_ms, np_ms = [], []
    for repeat in range(repeats):
        seconds, _ = zoo_run(train, steps, repeat, "auto")
        zoo_ms.append(1000.0 * seconds / steps)
        np_ms.append(numpyro_vae_ms(train.numpy(), steps, repeat))
    data = zoo.create("eight_schools").default_data()
    zoo_ess = zoo_schools_ess_per_s(warmup, draws, 0)
    np_ess = numpyro_schools_ess_per_s(data["y"].numpy(), SIGMA, warmup, draws, 0)
    zoo_step, np_step = statistics.median(zoo_ms), statistics.median(np_ms)
    rows = [
        {
            "comparison": "vae_digits SVI ms/step (lower is better)",
            "zoo": round(zoo_step, 3),
            "numpyro": round(np_step, 3),
            "zoo/numpyro": round(zoo_step / np_step, 2),
        },
        {
            "comparison": "eight schools NUTS min-ESS/s (higher is better)",
            "zoo": round(zoo_ess, 1),
            "numpyro": round(np_ess, 1),
            "zoo/numpyro": round(zoo_ess / np_ess, 2),
        },
    ]
    return {
        "title": "zoo against NumPyro (same models, 1 thread)",
        "notes": (
            f"SVI: median of {repeats} runs of {steps} steps, batch {BATCH}. NUTS: 1 chain, "
            f"{warmup} warmup + {draws} draws, wall time with compilation, ESS by ArviZ."
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
