"""NUTS effective samples per second against NumPyro, two chains in parallel on each side.

Three of the zoo's Bayesian models, each written once more in NumPyro with the same priors
(the models' defaults), data, initial values, warmup, draws, target acceptance, tree depth
and mass matrix:

- ``eight_schools`` (non-centered; 10 latent dimensions),
- ``pac_invariance`` on the subset {X1, X2} of its default 8 x 400-row SEM (21 dimensions),
- ``pretraining_factor``, the exact-marginal factor model on its default 50-column data
  (151 dimensions, dense mass matrix, chains started at the model's SVI point estimate).

Each chain runs in its own process on one thread: the zoo's as ``inference.mcmc.nuts`` with
one chain per process (Pyro itself runs chains one after another unless a core is left over
beside them), NumPyro's as ``chain_method="parallel"`` over two host devices. The headline
is ESS per CPU-second: the CPU time of all chains together (``time.process_time``, JIT compilation
included, process start-up not), which other work on a shared machine does not move; the
wall seconds of the slower chain are given beside it. ESS is ArviZ's bulk ESS, the minimum
over the latent sites both sides share (the non-centered offsets included). Repeated over
seeds; the table gives mean ± sd.

Each finished (model, seed) is kept in ``runs/benchmarks/nuts_peers/``; a stopped run resumes.

Run alone with ``python -m benchmarks.nuts_peers [--quick]``.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CHAINS = 2
#: finished (model, seed) measurements, so an interrupted run resumes
CACHE = Path(__file__).resolve().parents[1] / "runs" / "benchmarks" / "nuts_peers"
#: per model: zoo overrides, NUTS options, (warmup, draws) full and quick
CASES = {
    "eight_schools": ({}, {}, (500, 1000), (50, 50)),
    "pac_invariance": ({"features": (0, 1)}, {}, (500, 500), (30, 30)),
    "pretraining_factor": ({}, {"dense_mass": True}, (300, 300), (20, 20)),
}


def available() -> bool:
    return importlib.util.find_spec("numpyro") is not None


def _model_and_data(name: str, overrides: dict):
    import zoo

    model = zoo.create(name, **overrides)
    return model, model.default_data()


def _zoo_chain(name: str, overrides: dict, options: dict, warmup: int, draws: int, seed: int):
    """One chain of the zoo's NUTS in this process: (wall s, CPU s, {site: (1, draws, ...)})."""
    import torch

    from inference.mcmc import quiet_nuts

    torch.set_num_threads(1)
    model, data = _model_and_data(name, overrides)
    init = model.nuts_init(data)
    start, cpu = time.perf_counter(), time.process_time()
    mcmc = quiet_nuts(model, data, chains=1, warmup=warmup, draws=draws, seed=seed,
                      progress=False, init_values=init, **options)  # fmt: skip
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    draws_by_site = mcmc.get_samples(group_by_chain=True)
    return seconds, cpu, {k: v.numpy() for k, v in draws_by_site.items()}


def _numpyro_model(name: str, overrides: dict):
    """The NumPyro twin of the zoo model and its data as arrays."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    model, data = _model_and_data(name, overrides)
    arrays = {k: jnp.asarray(v.numpy()) for k, v in data.items()}
    if name == "eight_schools":

        def twin(y, sigma):
            mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
            tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
            with numpyro.plate("data", len(y)):
                eta = numpyro.sample("eta", nd.Normal(0.0, 1.0))
                numpyro.sample("y", nd.Normal(mu + tau * eta, sigma), obs=y)

        return twin, {"y": arrays["y"], "sigma": arrays["sigma"]}
    if name == "pac_invariance":
        features, envs = list(model.config.features), model.config.num_envs
        p = len(features)

        def twin(x, y, env):
            beta = numpyro.sample("beta", nd.Normal(0.0, 2.0).expand([p]).to_event(1))
            tau = numpyro.sample("tau", nd.HalfNormal(0.5).expand([p]).to_event(1))
            sigma = numpyro.sample("sigma", nd.HalfNormal(2.0))
            with numpyro.plate("env", envs):
                eta = numpyro.sample("eta", nd.Normal(0.0, 1.0).expand([p]).to_event(1))
            beta_env = beta + tau * eta
            with numpyro.plate("data", len(y)):
                mean = (x[:, features] * beta_env[env]).sum(-1)
                numpyro.sample("y", nd.Normal(mean, sigma), obs=y)

        return twin, {"x": arrays["x"], "y": arrays["y"], "env": arrays["env"]}
    if name == "pretraining_factor":
        d, r = model.config.input_dim, model.config.latent_dim
        free_to_w, diag_to_w = (jnp.asarray(b.numpy()) for b in (model.free_to_w, model.diag_to_w))
        num_free = model.num_free

        def twin(x):
            w_free = numpyro.sample("W_free", nd.Normal(0.0, 0.3).expand([num_free]).to_event(1))
            w_diag = numpyro.sample("W_diag", nd.LogNormal(-1.0, 0.5).expand([r]).to_event(1))
            sigma = numpyro.sample("sigma", nd.LogNormal(0.0, 0.25))
            w = (w_free @ free_to_w + w_diag @ diag_to_w).reshape(d, r)
            with numpyro.plate("data", x.shape[0]):
                cov = nd.LowRankMultivariateNormal(jnp.zeros(d), w, jnp.full(d, sigma**2))
                numpyro.sample("x", cov, obs=x)

        return twin, {"x": arrays["x"]}
    raise ValueError(f"no NumPyro twin for {name!r}")


def check_twin(name: str, seed: int = 0) -> tuple[float, float]:
    """The zoo model's and its NumPyro twin's log joint at one prior draw of the latent
    sites, after checking they agree (so the comparison times the same posterior)."""
    import jax.numpy as jnp
    import pyro
    from numpyro.infer.util import log_density
    from pyro import poutine

    from inference.data import full_batch
    from inference.traces import sample_sites

    overrides = CASES[name][0]
    model, data = _model_and_data(name, overrides)
    pyro.set_rng_seed(seed)
    trace = poutine.trace(model).get_trace(full_batch(data))
    zoo_value = float(trace.log_prob_sum())
    latent = sample_sites(trace, observed=False)
    values = {k: jnp.asarray(trace.nodes[k]["value"].detach().numpy()) for k in latent}
    twin, arrays = _numpyro_model(name, overrides)
    twin_value = float(log_density(twin, (), arrays, values)[0])
    if not abs(zoo_value - twin_value) <= 1e-4 * max(1.0, abs(zoo_value)):
        raise AssertionError(
            f"{name}: the NumPyro twin's log joint {twin_value} differs from the zoo "
            f"model's {zoo_value} at the same values; the benchmark would compare two models"
        )
    return zoo_value, twin_value


def _numpyro_chains(name: str, overrides: dict, options: dict, warmup: int, draws: int,
                    seed: int):  # fmt: skip
    """Both chains of NumPyro's NUTS in this (fresh) process, one host device each."""
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={CHAINS} "
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_median, init_to_value

    jax.config.update("jax_platform_name", "cpu")
    check_twin(name, seed)
    model, data = _model_and_data(name, overrides)
    init = model.nuts_init(data)
    twin, arrays = _numpyro_model(name, overrides)
    strategy = (
        init_to_median(num_samples=15)
        if init is None
        else init_to_value(values={k: np.asarray(v) for k, v in init.items()})
    )
    kernel = NUTS(twin, target_accept_prob=0.8, max_tree_depth=10,
                  dense_mass=options.get("dense_mass", False), init_strategy=strategy)  # fmt: skip
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=CHAINS,
                chain_method="parallel", progress_bar=False)  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()
    mcmc.run(jax.random.PRNGKey(seed), **arrays)
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, {k: np.asarray(v) for k, v in samples.items()}


def _min_ess(draws: dict, sites) -> float:
    from inference.diagnostics.summary import min_ess_bulk

    return min_ess_bulk({k: draws[k] for k in sites})


def _cached(name: str, seed: int, quick: bool) -> Path:
    return CACHE / ("quick" if quick else "full") / f"{name}-{seed}.json"


def _one(name: str, seed: int, quick: bool) -> dict:
    """One seed of one model on both sides, kept in :data:`CACHE` once done (a run that is
    stopped resumes at the next seed)."""
    cache = _cached(name, seed, quick)
    if cache.is_file():
        return json.loads(cache.read_text())
    result = _measure(name, seed, quick)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return result


def _measure(name: str, seed: int, quick: bool) -> dict:
    overrides, options, full, small = CASES[name]
    warmup, draws = small if quick else full
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(CHAINS, mp_context=spawn) as pool:
        futures = [
            pool.submit(_zoo_chain, name, overrides, options, warmup, draws, 1000 * seed + chain)
            for chain in range(CHAINS)
        ]
        chains = [future.result() for future in futures]
    zoo_seconds = max(seconds for seconds, _, _ in chains)
    zoo_cpu = sum(cpu for _, cpu, _ in chains)
    zoo_draws = {k: np.concatenate([d[k] for _, _, d in chains]) for k in chains[0][2]}
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        np_seconds, np_cpu, np_draws = pool.submit(
            _numpyro_chains, name, overrides, options, warmup, draws, seed
        ).result()
    sites = sorted(set(zoo_draws) & set(np_draws))
    return {
        "zoo": float(_min_ess(zoo_draws, sites) / zoo_cpu),
        "numpyro": float(_min_ess(np_draws, sites) / np_cpu),
        "zoo seconds": float(zoo_seconds),
        "numpyro seconds": float(np_seconds),
        "sites": [str(site) for site in sites],
        "warmup": warmup,
        "draws": draws,
    }


def _mean_sd(values) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _so_far(name: str, seeds: range, quick: bool) -> str:
    """A model left out of the table: its seeds already measured (in :data:`CACHE`), or that
    none is."""
    done = [json.loads(f.read_text()) for seed in seeds
            if (f := _cached(name, seed, quick)).is_file()]  # fmt: skip
    if not done:
        return f"{name} (no seed yet)"
    zoo_rate = statistics.mean(r["zoo"] for r in done)
    numpyro_rate = statistics.mean(r["numpyro"] for r in done)
    return (
        f"{name} ({len(done)} of {len(seeds)} seeds so far, {done[0]['warmup']} + "
        f"{done[0]['draws']} per chain: zoo {zoo_rate:.2f}, NumPyro {numpyro_rate:.2f} min-ESS "
        f"per CPU-s, zoo/numpyro {zoo_rate / numpyro_rate:.2f})"
    )


def run(quick: bool = False, models: list[str] | None = None) -> dict:
    """The table over ``models`` (default: every case); a subset's notes name the rest."""
    unknown = sorted(set(models or ()) - set(CASES))
    if unknown:
        raise ValueError(f"no NumPyro twin for {unknown}; cases: {list(CASES)}")
    names = [name for name in CASES if models is None or name in models]
    title = f"NUTS min-ESS per CPU-second against NumPyro ({CHAINS} parallel chains a side)"
    if not available():
        return {
            "title": title,
            "notes": "NumPyro is not installed (optional: pip install -e .[bench]); skipped.",
            "rows": [{"model": "skipped"}],
        }
    seeds = range(2 if quick else 3)
    rows = []
    for name in names:
        runs = [_one(name, seed, quick) for seed in seeds]
        ratios = [r["zoo"] / r["numpyro"] for r in runs]
        rows.append({
            "model": name,
            "warmup + draws per chain": f"{runs[0]['warmup']} + {runs[0]['draws']}",
            "zoo min-ESS per CPU-s": _mean_sd([r["zoo"] for r in runs]),
            "numpyro min-ESS per CPU-s": _mean_sd([r["numpyro"] for r in runs]),
            "zoo wall s": _mean_sd([r["zoo seconds"] for r in runs]),
            "numpyro wall s": _mean_sd([r["numpyro seconds"] for r in runs]),
            "zoo/numpyro": f"{statistics.mean(ratios):.2f} ± {statistics.stdev(ratios):.2f}",
        })  # fmt: skip
    return {
        "title": title,
        "notes": (
            f"Mean ± sd over {len(seeds)} seeds; each side's chains in {CHAINS} processes (zoo) "
            f"or on {CHAINS} host devices (NumPyro), one thread each, same priors, data, "
            "initial values, target acceptance 0.8, tree depth 10 and mass matrix. CPU-s: all "
            "chains' CPU time together; wall s: the slower chain (it moves with other work on "
            "the machine, CPU-s do not); compilation included in both. ESS: ArviZ bulk ESS, "
            "minimum over the shared latent sites."
            + (
                " Not measured yet: "
                + "; ".join(_so_far(n, seeds, quick) for n in CASES if n not in names)
                + "."
                if len(names) < len(CASES)
                else ""
            )
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
