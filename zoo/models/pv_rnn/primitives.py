"""The spec's probabilistic finite-state machine of three 2-D motion primitives (circle,
figure-8, line; 25 steps each), and the check on generated sequences: which primitive each
25-step segment is, and how far the transition frequencies are from the machine's.

Every primitive starts and ends at the origin, so sequences are continuous across
transitions and the first steps of a segment tell the primitives apart. The machine moves
from each primitive to the next one (circle -> figure-8 -> line -> circle) with probability
0.7 and to the other with 0.3 (no primitive repeats itself).
"""

from __future__ import annotations

import numpy as np

from zoo.datasets.markov import empirical_transitions, sample_chains

__all__ = [
    "PRIMITIVES",
    "SEGMENT",
    "TRANSITIONS",
    "templates",
    "make_sequences",
    "classify_segments",
    "transition_kl",
]

PRIMITIVES = ("circle", "figure8", "line")
SEGMENT = 25
#: row: from, column: to
TRANSITIONS = np.array([[0.0, 0.7, 0.3], [0.3, 0.0, 0.7], [0.7, 0.3, 0.0]])


def templates(amplitude: float = 0.8) -> np.ndarray:
    """The three primitives, (3, 25, 2)."""
    theta = 2 * np.pi * np.arange(SEGMENT) / SEGMENT
    a = amplitude
    circle = np.stack([a / 2 * (1 - np.cos(theta)), a / 2 * np.sin(theta)], -1)
    figure8 = np.stack([-a / 2 * np.sin(theta), -a / 2 * np.sin(2 * theta)], -1)
    line = np.stack([-a * 0.8 * np.sin(theta / 2), a * 0.8 * np.sin(theta / 2)], -1)
    return np.stack([circle, figure8, line])


def make_sequences(
    num: int, length: int, seed: int, noise: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, states)``: ``num`` sequences of ``length`` steps (num, length, 2), float32, and
    the primitive of every 25-step segment (num, ceil(length / 25)); Gaussian noise of
    sd ``noise`` on every coordinate."""
    rng = np.random.default_rng(seed)
    segments = -(-length // SEGMENT)
    states = sample_chains(TRANSITIONS, num, segments, rng)
    x = templates()[states].reshape(num, segments * SEGMENT, 2)[:, :length]
    x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), states


def classify_segments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(states, errors)``: the nearest primitive of every complete 25-step segment of
    sequences ``x`` (num, T, 2), and its root-mean-square distance to it."""
    x = np.asarray(x, dtype=np.float64)
    segments = x.shape[1] // SEGMENT
    seg = x[:, : segments * SEGMENT].reshape(x.shape[0], segments, SEGMENT, 2)
    dist = ((seg[:, :, None] - templates()[None, None]) ** 2).mean((-1, -2))  # (N, S, 3)
    return dist.argmin(-1), np.sqrt(dist.min(-1))


def transition_kl(states: np.ndarray, smoothing: float = 0.5) -> float:
    """Mean over primitives of KL(true transitions || empirical transitions of ``states``),
    counts smoothed by ``smoothing`` (nats); 0 only when the frequencies match the truth."""
    est = empirical_transitions(states, len(PRIMITIVES), smoothing=smoothing)
    true = TRANSITIONS
    mask = true > 0
    return float((true[mask] * np.log(true[mask] / est[mask])).sum() / len(PRIMITIVES))
