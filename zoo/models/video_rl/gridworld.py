"""The spec's gridworld videos: an agent on a random walk over a ``grid`` x ``grid`` board
rendered as one bright pixel on a ``2 grid`` x ``2 grid`` image, plus Gaussian pixel noise,
optionally with dark distractor blobs (2 x 2 squares) that move on their own random walks
(exogenous noise: temporally correlated, uncontrolled) or jump to fresh random places each
frame (the control: iid distractors)."""

from __future__ import annotations

import numpy as np

from zoo.datasets.markov import grid_walk_transitions, sample_chains

__all__ = ["NOISES", "render_gridworld"]

#: ``iid``: pixel noise only; ``exogenous``: + distractors on their own random walks;
#: ``iid_blobs``: + distractors at independent uniform places every frame
NOISES = ("iid", "exogenous", "iid_blobs")


def render_gridworld(
    seed: int,
    *,
    episodes: int = 500,
    horizon: int = 20,
    grid: int = 5,
    noise: str = "iid",
    pixel_noise: float = 0.3,
    distractors: int = 3,
    distractor_value: float = -0.5,
) -> dict[str, np.ndarray]:
    """Seeded videos ``x`` (episodes, horizon, (2 grid)^2) and the agent's cell ``state``
    (episodes, horizon), cell (r, c) = r * grid + c, drawn at pixel (2r, 2c) with value 1.
    Distractors add ``distractor_value`` (dark, so the agent stays the one bright pixel and
    is decodable from a single frame; the agent is drawn in front) on a 2 x 2 square whose
    top-left corner walks on the (2 grid - 1)^2 lattice (``exogenous``) or is redrawn
    uniformly each frame (``iid_blobs``); ``distractor`` holds those corners,
    (episodes, horizon, distractors)."""
    if noise not in NOISES:
        raise ValueError(f"unknown noise '{noise}'; valid: {list(NOISES)}")
    rng = np.random.default_rng(seed)
    side = 2 * grid
    state = sample_chains(grid_walk_transitions(grid), episodes, horizon, rng)
    image = np.zeros((episodes, horizon, side, side))
    ep, t = np.meshgrid(np.arange(episodes), np.arange(horizon), indexing="ij")
    lattice = side - 1
    corners = np.zeros((episodes, horizon, distractors if noise != "iid" else 0), np.int64)
    for k in range(corners.shape[-1]):
        if noise == "exogenous":
            corner = sample_chains(grid_walk_transitions(lattice), episodes, horizon, rng)
        else:
            corner = rng.integers(0, lattice * lattice, size=(episodes, horizon))
        corners[..., k] = corner
        r, c = corner // lattice, corner % lattice
        for dr in (0, 1):
            for dc in (0, 1):
                image[ep, t, r + dr, c + dc] += distractor_value
    image[ep, t, 2 * (state // grid), 2 * (state % grid)] = 1.0  # the agent in front
    x = image.reshape(episodes, horizon, side * side)
    x = x + pixel_noise * rng.standard_normal(x.shape)
    return {"x": x.astype(np.float32), "state": state, "distractor": corners}
