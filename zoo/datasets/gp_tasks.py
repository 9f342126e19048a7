"""One-dimensional regression tasks drawn from Gaussian-process priors (GPyTorch kernels):
the meta-learning benchmark of the neural-process papers (Garnelo et al. 2018; Lee et al.
2020, "Bootstrapping Neural Processes"; Lee et al. 2023, "Martingale Posterior Neural
Processes").

Each task is a function f ~ GP(0, s^2 k_l) on inputs x ~ U[x_min, x_max], observed at
``num_points`` points of which the first ``num_context`` are the context and the rest the
targets, padded to ``max_points`` (the padding repeats the last real point; masks come
from the counts). Kernels are GPyTorch's (:data:`KERNELS`): ``rbf``, ``matern`` (Matern 5/2)
and ``periodic``, each scaled by ``s``; hyperparameters per task: lengthscale l ~ U[0.1,
0.6], scale s ~ U[0.1, 1] and, for ``periodic``, period p ~ U[0.1, 0.5]. Noise:
``gaussian`` adds Normal(0, noise_var) (noise_var 0.02 as in the papers' RBF sets) and
``student_t`` adds 0.1 * StudentT(df=2.1) (the papers' "t-noise" robustness set).
"""

from __future__ import annotations

import math

import gpytorch
import numpy as np
import torch

__all__ = ["KERNELS", "NOISES", "kernel_matrix", "gp_tasks", "gp_predictive"]

#: kernel name -> GPyTorch base kernel class (wrapped in a ScaleKernel)
KERNELS = {
    "rbf": lambda batch: gpytorch.kernels.RBFKernel(batch_shape=batch),
    "matern": lambda batch: gpytorch.kernels.MaternKernel(nu=2.5, batch_shape=batch),
    "periodic": lambda batch: gpytorch.kernels.PeriodicKernel(batch_shape=batch),
}
#: observation noise families
NOISES = ("gaussian", "student_t")
#: hyperparameter ranges (uniform), as in the neural-process papers' GP sets
LENGTHSCALE = (0.1, 0.6)
SCALE = (0.1, 1.0)
PERIOD = (0.1, 0.5)
#: Student-t noise: scale and degrees of freedom
T_SCALE, T_DF = 0.1, 2.1


def kernel_matrix(kernel: str, x: torch.Tensor, hypers: dict[str, torch.Tensor]) -> torch.Tensor:
    """``s^2 k_l(x, x)`` for a batch of tasks: ``x`` (T, n), hyperparameters (T,) each;
    returns (T, n, n), computed by GPyTorch's kernel."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels: {sorted(KERNELS)}")
    batch = torch.Size([x.shape[0]])
    base = KERNELS[kernel](batch)
    k = gpytorch.kernels.ScaleKernel(base, batch_shape=batch).to(torch.float64)
    with torch.no_grad():
        base.lengthscale = hypers["lengthscale"].to(torch.float64).reshape(-1, 1, 1)
        if kernel == "periodic":
            base.period_length = hypers["period"].to(torch.float64).reshape(-1, 1, 1)
        k.outputscale = hypers["scale"].to(torch.float64).pow(2)
        return k(x.to(torch.float64)[..., None]).to_dense()


def gp_tasks(
    num_tasks: int,
    *,
    kernel: str = "rbf",
    noise: str = "gaussian",
    seed: int = 0,
    max_points: int = 50,
    min_context: int = 3,
    min_target: int = 3,
    x_range: tuple[float, float] = (-2.0, 2.0),
    noise_var: float = 0.02,
) -> dict[str, np.ndarray]:
    """``num_tasks`` seeded tasks: ``x``, ``y`` (T, max_points) float32, ``f`` (the noiseless
    function), ``num_context`` and ``num_points`` (T,) int64, and the hyperparameters
    ``lengthscale``, ``scale``, ``period`` (T,) (``period`` NaN for other kernels).

    Context size n_c ~ U{min_context, .., max_points - min_target}, target size
    n_t ~ U{min_target, .., max_points - n_c} (the papers' sampler)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels: {sorted(KERNELS)}")
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; valid noises: {list(NOISES)}")
    if min_context < 1 or min_target < 1 or min_context + min_target > max_points:
        raise ValueError(
            f"need 1 <= min_context, 1 <= min_target and min_context + min_target <= "
            f"max_points, got {min_context}, {min_target}, {max_points}"
        )
    rng = np.random.default_rng(seed)
    lo, hi = x_range
    num_context = rng.integers(min_context, max_points - min_target + 1, num_tasks)
    num_target = rng.integers(min_target, max_points - num_context + 1)
    num_points = num_context + num_target
    x = rng.uniform(lo, hi, (num_tasks, max_points))
    hypers = {
        "lengthscale": rng.uniform(*LENGTHSCALE, num_tasks),
        "scale": rng.uniform(*SCALE, num_tasks),
        "period": rng.uniform(*PERIOD, num_tasks) if kernel == "periodic" else None,
    }
    # padding repeats the last real point (so the padded covariance stays valid)
    pos = np.minimum(np.arange(max_points)[None], num_points[:, None] - 1)
    x = np.take_along_axis(x, pos, 1)
    cov = kernel_matrix(
        kernel,
        torch.as_tensor(x),
        {k: torch.as_tensor(v) for k, v in hypers.items() if v is not None},
    )
    cov = cov + 1e-6 * torch.eye(max_points, dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)
    z = torch.as_tensor(rng.standard_normal((num_tasks, max_points, 1)))
    f = (chol @ z)[..., 0].numpy()
    f = np.take_along_axis(f, pos, 1)  # duplicated inputs share one function value
    if noise == "gaussian":
        eps = math.sqrt(noise_var) * rng.standard_normal(f.shape)
    else:
        eps = T_SCALE * rng.standard_t(T_DF, f.shape)
    y = np.take_along_axis(f + eps, pos, 1)
    period = hypers["period"] if kernel == "periodic" else np.full(num_tasks, np.nan)
    return {
        "x": x.astype(np.float32),
        "y": y.astype(np.float32),
        "f": f.astype(np.float32),
        "num_context": num_context.astype(np.int64),
        "num_points": num_points.astype(np.int64),
        "lengthscale": hypers["lengthscale"],
        "scale": hypers["scale"],
        "period": period,
    }


def gp_predictive(tasks: dict, kernel: str, noise_var: float = 0.02):
    """The exact GP posterior predictive at every point of each task given its context,
    with the task's true kernel and hyperparameters and Gaussian noise ``noise_var``:
    ``(mean, sd)`` (T, max_points) float64 (the oracle of the Gaussian-noise sets)."""
    x = torch.as_tensor(tasks["x"], dtype=torch.float64)
    hypers = {k: torch.as_tensor(tasks[k]) for k in ("lengthscale", "scale")}
    if kernel == "periodic":
        hypers["period"] = torch.as_tensor(tasks["period"])
    cov = kernel_matrix(kernel, x, hypers)
    n = x.shape[1]
    ctx = torch.arange(n)[None] < torch.as_tensor(tasks["num_context"])[:, None]  # (T, n)
    mask = (ctx[:, :, None] & ctx[:, None, :]).to(cov.dtype)
    eye = torch.eye(n, dtype=cov.dtype)
    # context block with noise; non-context rows and columns replaced by the identity
    k_cc = cov * mask + noise_var * eye * ctx[:, :, None] + eye * (~ctx)[:, :, None]
    k_xc = cov * ctx[:, None, :].to(cov.dtype)  # (T, n, n): every point against the context
    y = torch.as_tensor(tasks["y"], dtype=torch.float64) * ctx
    chol = torch.linalg.cholesky(k_cc)
    alpha = torch.cholesky_solve(y[..., None], chol)
    mean = (k_xc @ alpha)[..., 0]
    v = torch.linalg.solve_triangular(chol, k_xc.transpose(-1, -2), upper=False)
    var = cov.diagonal(dim1=-2, dim2=-1) - v.pow(2).sum(-2) + noise_var
    return mean.numpy(), var.clamp_min(1e-12).sqrt().numpy()
