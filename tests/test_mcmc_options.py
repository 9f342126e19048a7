"""NUTS options: a dense mass matrix, starting values, and their bad-input errors."""

import warnings

import pytest
import torch

import zoo
from inference.mcmc import nuts
from tests.mcmc_helpers import quiet_nuts


@pytest.fixture(scope="module")
def schools():
    model = zoo.create("eight_schools", centered=False)
    return model, model.default_data()


def _run(model, data, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nuts(model, data, chains=1, warmup=20, draws=5, seed=0, progress=False, **options)


def test_dense_mass_adapts_a_full_matrix(schools):
    model, data = schools
    dense = _run(model, data, dense_mass=True).kernel.inverse_mass_matrix
    diagonal = _run(model, data).kernel.inverse_mass_matrix
    (dense_matrix,) = dense.values()
    (diagonal_matrix,) = diagonal.values()
    assert dense_matrix.dim() == 2 and dense_matrix.shape[0] == dense_matrix.shape[1] == 10
    assert dense_matrix.triu(1).abs().sum() > 0  # off-diagonal terms were adapted
    assert diagonal_matrix.dim() == 1


def test_chains_start_at_the_given_values(schools):
    model, data = schools
    start = {"mu": torch.tensor(17.0), "tau": torch.tensor(0.5)}
    # no warmup and one draw: NUTS's first draw stays near the start
    mcmc = quiet_nuts(
        model,
        data,
        chains=1,
        warmup=0,
        draws=1,
        seed=0,
        progress=False,
        init_values=start,
        max_tree_depth=1,
    )
    assert abs(float(mcmc.get_samples()["mu"][0]) - 17.0) < 5.0


@pytest.mark.parametrize(
    "init, message",
    [
        ({"m": torch.tensor(0.0)}, r"init_values name \['m'\], not latent sites"),
        ({"y": torch.zeros(8)}, r"init_values name \[.y.\], not latent sites"),
        ({"data": torch.zeros(8)}, r"init_values name \[.data.\], not latent sites"),
        ({"mu": torch.tensor(float("nan"))}, r"init_values must be finite; not so for \['mu'\]"),
        ([("mu", 0.0)], "init_values must map site names to tensors"),
    ],
)
def test_bad_init_values_are_refused_before_sampling(schools, init, message):
    model, data = schools
    with pytest.raises((ValueError, TypeError), match=message):
        _run(model, data, init_values=init)


def test_independent_chains_in_processes_are_the_chains_drawn_in_one(schools):
    """Chain i is seeded seed + i wherever it runs: two forked processes give the draws that
    one process gives, chain for chain, and the chains differ from each other."""
    import numpy as np

    from inference.mcmc import independent_chains

    model, data = schools
    options = {"chains": 2, "warmup": 15, "draws": 10, "seed": 3, "jit_compile": False}
    forked, divergent = independent_chains(model, data, processes=2, **options)
    inline, _ = independent_chains(model, data, processes=1, **options)
    assert set(forked) == {"mu", "tau", "eta"} and forked["mu"].shape == (2, 10)
    assert forked["eta"].shape == (2, 10, 8) and isinstance(divergent, int)
    for site in forked:
        np.testing.assert_allclose(forked[site], inline[site], rtol=1e-5)
    assert not np.allclose(forked["mu"][0], forked["mu"][1])
    with pytest.raises(ValueError, match="chains must be a positive integer"):
        independent_chains(model, data, chains=0)
    with pytest.raises(ValueError, match="processes must be a positive integer"):
        independent_chains(model, data, processes=0)
