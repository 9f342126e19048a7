"""The spec's synthetic agents: straight-ish walks whose goal direction and speed are
invariant across environments and whose curvature and speed change are the environment's.

Each agent n in environment e has

    theta_n ~ Uniform(-1, 1)                   heading at the last observed step (rad)
    v_n     ~ Uniform(0.3, 0.6)                speed at the last observed step (m / step)
    kappa_n ~ Normal(0.04 (e - 2), 0.01)       turn per step (rad)        (environment's)
    a_n     ~ Normal(1 + 0.15 (e - 2), 0.05)   speed ratio over the future (environment's)

and walks with heading theta_n + kappa_n (t - t0) and speed v_n a_n^((t - t0) / F) at step t
(t0 the last observed step, F the future length); positions are relative to the agent's
position at t0 and observed with iid Normal(0, noise) error. The invariant factors are
(theta, v), the variant ones (kappa, a). Environments 0-2 turn right or go straight and slow
down; environment 4 turns left and speeds up (the out-of-distribution test).
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_agents", "CURVATURE_STEP", "SPEED_STEP"]

#: change of the mean curvature (rad per step) and speed ratio per environment
CURVATURE_STEP = 0.04
SPEED_STEP = 0.15


def make_agents(
    seed: int,
    envs: tuple[int, ...] = (0, 1, 2),
    per_env: int = 300,
    *,
    past_steps: int = 8,
    future_steps: int = 12,
    noise: float = 0.02,
) -> dict[str, np.ndarray]:
    """``per_env`` agents from each environment of ``envs``: ``past`` (N, past_steps, 2),
    ``future`` (N, future_steps, 2), ``env`` (N,), the invariant factors ``invariant``
    (N, 2: theta, v) and the variant ones ``variant`` (N, 2: kappa, a)."""
    if per_env < 1 or past_steps < 2 or future_steps < 1:
        raise ValueError(
            f"need per_env >= 1, past_steps >= 2, future_steps >= 1; got {per_env}, "
            f"{past_steps}, {future_steps}"
        )
    rng = np.random.default_rng(seed)
    env = np.repeat(np.asarray(envs, dtype=np.int64), per_env)
    n = len(env)
    theta = rng.uniform(-1.0, 1.0, n)
    speed = rng.uniform(0.3, 0.6, n)
    kappa = rng.normal(CURVATURE_STEP * (env - 2), 0.01)
    ratio = rng.normal(1.0 + SPEED_STEP * (env - 2), 0.05).clip(min=0.2)
    t0 = past_steps - 1
    steps = np.arange(past_steps + future_steps) - t0  # relative to the last observed step
    heading = theta[:, None] + kappa[:, None] * steps
    step_speed = speed[:, None] * ratio[:, None] ** (steps / future_steps)
    move = step_speed[..., None] * np.stack([np.cos(heading), np.sin(heading)], -1)
    # position at step t: sum of the moves after t0 up to t, minus those from t+1 to t0
    ahead = np.cumsum(move[:, t0 + 1 :], axis=1)
    behind = -np.cumsum(move[:, t0:0:-1], axis=1)[:, ::-1]
    path = np.concatenate([behind, np.zeros((n, 1, 2)), ahead], axis=1)
    path = path + rng.normal(0.0, noise, path.shape)
    return {
        "past": path[:, :past_steps].astype(np.float32),
        "future": path[:, past_steps:].astype(np.float32),
        "env": env,
        "invariant": np.stack([theta, speed], -1),
        "variant": np.stack([kappa, ratio], -1),
    }
