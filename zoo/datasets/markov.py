"""Seeded Markov chains: the discrete dynamics behind the sequential models' synthetic data
(a probabilistic finite-state machine over motion primitives, an agent's or a distractor's
random walk on a grid). NumPy only, so a generator is exact and cheap to call per seed."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_chains", "grid_walk_transitions", "empirical_transitions"]


def _check_transitions(transitions: np.ndarray) -> np.ndarray:
    t = np.asarray(transitions, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"transitions must be a square (S, S) matrix, got shape {t.shape}")
    if (t < 0).any() or not np.allclose(t.sum(1), 1.0, atol=1e-6):
        raise ValueError("every row of transitions must be a probability vector (>= 0, sums to 1)")
    return t


def sample_chains(
    transitions: np.ndarray,
    num_chains: int,
    length: int,
    rng: np.random.Generator,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """``num_chains`` state sequences of ``length`` steps, (num_chains, length) int64:
    ``s_0 ~ initial`` (uniform by default), ``s_t ~ transitions[s_{t-1}]``."""
    t = _check_transitions(transitions)
    states = t.shape[0]
    if num_chains < 1 or length < 1:
        raise ValueError(f"num_chains and length must be >= 1, got {num_chains} and {length}")
    p0 = np.full(states, 1.0 / states) if initial is None else np.asarray(initial, np.float64)
    if p0.shape != (states,) or (p0 < 0).any() or not np.isclose(p0.sum(), 1.0):
        raise ValueError(f"initial must be a probability vector of length {states}")
    cumulative = np.cumsum(t, axis=1)
    out = np.empty((num_chains, length), dtype=np.int64)
    out[:, 0] = rng.choice(states, size=num_chains, p=p0)
    for step in range(1, length):
        u = rng.random(num_chains)[:, None]
        out[:, step] = np.minimum((u > cumulative[out[:, step - 1]]).sum(1), states - 1)
    return out


def grid_walk_transitions(size: int, stay: float = 0.0) -> np.ndarray:
    """The (size^2, size^2) transition matrix of a random walk on a ``size`` x ``size`` grid:
    stay with probability ``stay``, else move to one of the four neighbours uniformly (a move
    into a wall keeps the cell). Cell ``(r, c)`` is state ``r * size + c``."""
    if size < 2 or not 0 <= stay < 1:
        raise ValueError(f"need size >= 2 and 0 <= stay < 1, got size={size}, stay={stay}")
    n = size * size
    t = np.zeros((n, n))
    for r in range(size):
        for c in range(size):
            here = r * size + c
            t[here, here] += stay
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = min(max(r + dr, 0), size - 1), min(max(c + dc, 0), size - 1)
                t[here, rr * size + cc] += (1 - stay) / 4
    return t


def empirical_transitions(
    states: np.ndarray, num_states: int, smoothing: float = 0.0
) -> np.ndarray:
    """Row-normalised transition counts of state sequences (num_chains, length), with
    ``smoothing`` added to every count (rows never visited stay uniform)."""
    s = np.asarray(states, dtype=np.int64)
    counts = np.full((num_states, num_states), float(smoothing))
    np.add.at(counts, (s[:, :-1].ravel(), s[:, 1:].ravel()), 1.0)
    totals = counts.sum(1, keepdims=True)
    return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), 1.0 / num_states)
