"""The closed-form latent flow of latent zoning networks: a batch of anchors <-> N(0, I).

Lin et al. (2025), "Latent Zoning Network: A Unified Principle for Generative Modeling,
Representation Learning, and Classification", NeurIPS 2025 (code:
github.com/microsoft/latent-zoning-networks, ``lzn/latent_flow/euler_latent_flow.py``).

Given anchors :math:`a_1..a_N \\in R^d` (the empirical mixture :math:`\\frac1N \\sum_j
\\delta_{a_j}`) and :math:`\\varepsilon \\sim N(0, I)`, the straight interpolation
:math:`x_t = (1 - t) a + t \\varepsilon` has the marginal velocity, with no parameters::

    v(x, t) = sum_j w_j(x, t) (eps_j - a_j) = (x - sum_j w_j a_j) / t,
    eps_j = (x - (1 - t) a_j) / t,   w_j ∝ N(eps_j; 0, I)

Integrating ``dx/dt = v`` from :math:`t_0` (start :math:`t_0 \\varepsilon + (1 - t_0) a_i`)
to 1 carries anchor ``i`` to a latent :math:`z_i`; the latents of the whole batch follow
N(0, I) and each Gaussian point flows back (t from 1 to 0) to exactly one anchor: its
*zone*. The weights are computed in log space (a softmax of ``-|eps_j|^2 / 2``): the
unnormalised Gaussian pdfs of the authors' code underflow in high dimension or at small t.
Distances are taken without the ``|x|^2 - 2 x.a + |a|^2`` expansion, whose cancellation at
``t0 = 1e-4`` would swamp the ``1 / t^2`` logits in float32.

Any model with deterministic codes of a batch (an autoencoder's, a contrastive encoder's)
can use it to put them on a Gaussian latent (:func:`to_gaussian`), to read a Gaussian point's
zone among any anchor set (:func:`to_anchors`, :func:`zone_assignment`) and to test batch
latents against N(0, I) (:func:`gaussian_moment_test`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from scipy import stats
from torch.distributions import constraints, register_kl

__all__ = [
    "LatentFlowError",
    "log_weights",
    "velocity",
    "to_gaussian",
    "to_anchors",
    "flow_times",
    "anchor_mean",
    "SOLVERS",
    "zone_assignment",
    "ZoneLatent",
    "MomentTest",
    "gaussian_moment_test",
]


class LatentFlowError(ValueError):
    """Inputs the latent flow cannot use: the message names the argument."""


def _check_matrix(
    name: str, value: torch.Tensor, dim: int | None = None, batched: bool = False
) -> None:
    if not torch.is_tensor(value) or not torch.is_floating_point(value):
        raise LatentFlowError(f"{name} must be a floating-point tensor, got {type(value).__name__}")
    if (value.dim() < 2 if batched else value.dim() != 2) or value.shape[0] < 1:
        raise LatentFlowError(f"{name} must have shape (rows, d), got {tuple(value.shape)}")
    if dim is not None and value.shape[-1] != dim:
        raise LatentFlowError(f"{name} has dimension {value.shape[-1]}; the anchors have {dim}")
    if not bool(torch.isfinite(value).all()):
        raise LatentFlowError(f"{name} holds NaN or infinite values")


def _check_steps(steps: int, t0: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LatentFlowError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 < t0 < 1.0:
        raise LatentFlowError(f"t0 must be in (0, 1), got {t0!r}")


def log_weights(
    x: torch.Tensor, t: float, anchors: torch.Tensor, own: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised log weights ``log w_j(x, t)`` of the anchors (N, d) at points ``x``
    (..., B, d): shape (..., B, N), or (..., B, N + 1) with ``own`` (B, d), each row's own
    extra anchor, last."""
    scaled = (1.0 - t) * anchors
    if x.dim() > 2:  # leading sample dimensions (vectorized particles): same anchors
        scaled = scaled.expand(x.shape[:-2] + scaled.shape)
    sq = torch.cdist(x, scaled, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    if own is not None:
        sq = torch.cat([sq, (x - (1.0 - t) * own).pow(2).sum(-1, keepdim=True)], -1)
    logits = -0.5 * sq / (t * t)
    return logits - logits.logsumexp(-1, keepdim=True)


def anchor_mean(
    x: torch.Tensor, t: float, anchors: torch.Tensor, own: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_j w_j a_j, log w)``: the weighted anchor mean at ``(x, t)`` and the log
    weights (see :func:`log_weights`)."""
    logw = log_weights(x, t, anchors, own)
    w = logw.exp()
    mean = w[..., : anchors.shape[0]] @ anchors
    if own is not None:
        mean = mean + w[..., -1:] * own
    return mean, logw


def velocity(
    x: torch.Tensor, t: float, anchors: torch.Tensor, own: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v(x, t), log w)``: the flow's velocity ``(x - sum_j w_j a_j) / t`` and the log
    weights it used (see :func:`log_weights`)."""
    mean, logw = anchor_mean(x, t, anchors, own)
    return (x - mean) / t, logw


def _step(x, t, t_next, anchors, own, solver):
    """One step of the flow from ``t`` to ``t_next``, in the variables ``y = x / t`` and
    ``s = 1 / t``, where it reads ``dy/ds = m(x, t)`` (the anchor mean). ``"euler"``: ``m``
    held at its value at ``t``, ``x' = m + (t_next / t) (x - m)`` (the authors' Euler step
    in ``t``, which is the same update); ``"heun"``: ``m`` averaged between ``t`` and the
    Euler end point (a second-order step, as DPM-Solver-2 for diffusion ODEs). The step to
    ``t_next = 0`` (where ``x' = m``) and a step that more than doubles t (the first, from
    t0, which the trapezoid would weigh by the far end's mean, ratio t_next / t ~ 1000)
    stay first order: exact while one anchor holds all the weight. Returns
    ``(x', log w at t)``."""
    mean, logw = anchor_mean(x, t, anchors, own)
    ratio = t_next / t
    x_next = mean + ratio * (x - mean)
    if solver == "heun" and t_next > 0 and t_next < 2.0 * t:
        mean = 0.5 * (mean + anchor_mean(x_next, t_next, anchors, own)[0])
        x_next = mean + ratio * (x - mean)
    return x_next, logw


SOLVERS = ("heun", "euler")


def flow_times(steps: int, t0: float = 0.0, power: float = 2.0) -> list[float]:
    """The ``steps + 1`` times of the flow from ``t0`` to 1: ``t0 + (1 - t0) (k / steps)^power``
    (``power = 1``: the authors' uniform steps). Steps denser at small t resolve anchors
    that sit close together (zones split late in the reverse flow, at t ~ their distance):
    over 512 anchors in 10 clusters of spread 0.05 in d = 8, 20 Heun steps return 43% of the
    latents to their own anchor at power 1 and 93% at power 2."""
    return [t0 + (1.0 - t0) * (k / steps) ** power for k in range(steps + 1)]


def _check_power(power: float) -> None:
    if not 1.0 <= power <= 4.0:
        raise LatentFlowError(f"power must be in [1, 4], got {power!r}")


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise LatentFlowError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")


def to_gaussian(
    anchors: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    steps: int = 20,
    t0: float = 1e-4,
    reference: torch.Tensor | None = None,
    solver: str = "heun",
    power: float = 2.0,
) -> torch.Tensor:
    """Latents of ``anchors`` (B, d): ``steps`` steps of the flow from ``t0`` to 1 at the
    times of :func:`flow_times`, each row starting at ``t0 * noise + (1 - t0) * anchor``.
    Differentiable in the anchors.

    :param noise: the start noise (B, d); ``None`` draws it from N(0, I). A row's latent is
        a draw from its zone, N(0, I) restricted to the zone, picked by its noise.
    :param reference: anchors (N, d) of a reference set (the training set's): each row then
        flows among the reference anchors and its own, not among the other rows.
    :param solver: ``"heun"`` (default, two velocity evaluations a step) or ``"euler"``, the
        authors' (see :func:`_step`). Forward and back over 512 random anchors in d = 8, 10
        uniform Heun steps return every latent to its own anchor; 20 Euler steps about 65%.
    :param power: the time grid's exponent (:func:`flow_times`; 1: the authors' uniform).
    """
    _check_matrix("anchors", anchors)
    _check_steps(steps, t0)
    _check_solver(solver)
    _check_power(power)
    d = anchors.shape[1]
    if noise is None:
        noise = torch.randn_like(anchors)
    _check_matrix("noise", noise, d)
    if noise.shape != anchors.shape:
        raise LatentFlowError(
            f"noise has shape {tuple(noise.shape)}; anchors {tuple(anchors.shape)}"
        )
    if reference is not None:
        _check_matrix("reference", reference, d)
    return _forward(anchors, noise, reference, steps, t0, solver, power)[0]


def _forward(anchors, noise, reference, steps, t0, solver, power):
    """``(z, log r)``: the forward flow (no checks; ``noise`` may have leading sample
    dimensions) and each row's log weight on its own anchor at the start (its
    responsibility, about 0 unless another anchor sits within ~t0 of it)."""
    x = t0 * noise + (1.0 - t0) * anchors
    pool, own = (anchors, None) if reference is None else (reference, anchors)
    times = flow_times(steps, t0, power)
    log_r = None
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        x, logw = _step(x, t, t_next, pool, own, solver)
        if log_r is None:
            log_r = _own_entry(logw, own is not None)
    return x, log_r


def _own_entry(logw: torch.Tensor, extra: bool) -> torch.Tensor:
    """Each row's entry on its own anchor: the last column with an extra own anchor,
    else the diagonal (row i of the batch is anchor i)."""
    if extra:
        return logw[..., -1]
    return logw.diagonal(dim1=-2, dim2=-1)


def to_anchors(
    z: torch.Tensor,
    anchors: torch.Tensor,
    *,
    steps: int = 20,
    solver: str = "heun",
    power: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse flow of latents ``z`` (..., B, d) over ``anchors`` (N, d): ``steps``
    steps from t = 1 down to 0 at the times of :func:`flow_times` (the last weights read at
    its first nonzero time).

    :returns: ``(end, log_w)``: the end points (B, d), at (a weighted mean of) the
        anchors of the zones the latents lie in, and the log weights at every step,
        (steps, B, N), t falling.
    """
    _check_matrix("anchors", anchors)
    _check_matrix("z", z, anchors.shape[1], batched=True)
    _check_steps(steps, 0.5)
    _check_solver(solver)
    _check_power(power)
    return _reverse(z, anchors, None, steps, solver, power)


def _reverse(z, anchors, own, steps, solver, power):
    times = flow_times(steps, 0.0, power)[::-1]
    x, out = z, []
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        x, logw = _step(x, t, t_next, anchors, own, solver)
        out.append(logw)
    return x, torch.stack(out)


def zone_assignment(
    z: torch.Tensor,
    anchors: torch.Tensor,
    *,
    steps: int = 20,
    cutoff: float = 0.2,
    solver: str = "heun",
    power: float = 2.0,
) -> torch.Tensor:
    """Log probabilities (B, N) that each latent lies in each anchor's zone: the mean over
    the reverse flow's steps past the first ``cutoff`` fraction (where t is near 1 and the
    weights are still near uniform) of the normalised weights. The authors' label loss
    takes the max over those steps; the mean is a proper distribution below it, and its
    argmax is the zone the latent flows back to."""
    if not 0.0 <= cutoff < 1.0:
        raise LatentFlowError(f"cutoff must be in [0, 1), got {cutoff!r}")
    _, logw = to_anchors(z, anchors, steps=steps, solver=solver, power=power)
    kept = logw[int(cutoff * steps) :]
    return kept.logsumexp(0) - math.log(kept.shape[0])


class ZoneLatent(dist.TorchDistribution):
    """The zone posterior of latent zoning networks, q(z | x_i, anchors): the forward flow of
    ``N(a_i, t0^2 I)`` (start ``t0 eps + (1 - t0) a_i``, ``eps ~ N(0, I)``), one row per
    anchor (batch shape (B,), event (d,)), reparameterised through the flow.

    Its density: the flow carries the anchor mixture (1/N) sum_j N((1 - t0) a_j, t0^2 I)
    to N(0, I) and component i to ``N * N(z; 0, I) * r_i``, with ``r_i`` the responsibility
    of anchor i at the start point: N(0, I) restricted to anchor i's zone, of mass 1/N
    (``r_i`` is 0 or 1 but where anchors are within ~t0 of each other). So
    ``log q(z) = log N(z; 0, I) + log N + log r_i``, exact for the exact flow, up to the
    solver's error here. ``log_prob`` of the distribution's own draw reads ``r_i`` from
    the start; of any other value, from the reverse flow's last step.

    :param anchors: (B, d), row i's anchor a_i; the N anchors of the flow are these rows
        (``N = B``), or with ``reference`` (R, d) the reference and the row's own
        (``N = R + 1``).
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True
    #: its registered KLs are Monte Carlo estimates (16 flows a call), not closed forms:
    #: ``inference.elbos.kl_forms`` counts such a site as sampled
    closed_form_kl = False

    def __init__(
        self,
        anchors: torch.Tensor,
        *,
        reference: torch.Tensor | None = None,
        steps: int = 20,
        t0: float = 1e-4,
        solver: str = "heun",
        power: float = 2.0,
        batch_shape: torch.Size | None = None,
        validate_args: bool | None = None,
    ):
        _check_matrix("anchors", anchors)
        _check_steps(steps, t0)
        _check_solver(solver)
        _check_power(power)
        if reference is not None:
            _check_matrix("reference", reference, anchors.shape[1])
        self.anchors, self.reference = anchors, reference
        self.steps, self.t0, self.solver, self.power = steps, t0, solver, power
        self._draw: tuple[torch.Tensor, torch.Tensor] | None = None
        batch_shape = anchors.shape[:1] if batch_shape is None else torch.Size(batch_shape)
        super().__init__(batch_shape, anchors.shape[1:], validate_args=False)

    @property
    def num_anchors(self) -> int:
        """N, the anchors of the flow (each zone's mass is 1/N)."""
        rows = self.anchors.shape[0]
        return rows if self.reference is None else self.reference.shape[0] + 1

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape[-1:] != self.anchors.shape[:1]:
            raise LatentFlowError(
                f"a ZoneLatent of {self.anchors.shape[0]} rows cannot expand to {batch_shape}"
            )
        return ZoneLatent(
            self.anchors,
            reference=self.reference,
            steps=self.steps,
            t0=self.t0,
            solver=self.solver,
            power=self.power,
            batch_shape=batch_shape,
        )

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        noise = torch.randn(shape, dtype=self.anchors.dtype, device=self.anchors.device)
        z, log_r = _forward(
            self.anchors, noise, self.reference, self.steps, self.t0, self.solver, self.power
        )
        self._draw = (z, log_r)
        return z

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_responsibility(self, value: torch.Tensor) -> torch.Tensor:
        """``log r_i``: for the distribution's own last draw from its start, else the
        row's own-anchor weight at the last step of the reverse flow."""
        if self._draw is not None and value is self._draw[0]:
            return self._draw[1]
        pool, own = (
            (self.anchors, None) if self.reference is None else (self.reference, self.anchors)
        )
        _, logw = _reverse(value, pool, own, self.steps, self.solver, self.power)
        return _own_entry(logw[-1], own is not None)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        gauss = -0.5 * value.pow(2).sum(-1) - 0.5 * value.shape[-1] * math.log(2 * math.pi)
        return gauss + math.log(self.num_anchors) + self.log_responsibility(value)


@register_kl(ZoneLatent, dist.Normal)
def _kl_zone_normal(q: ZoneLatent, p: dist.Normal) -> torch.Tensor:
    """KL(q || p) per row for a factorised Normal ``p`` over the latent's coordinates (as
    diagnostics unwrap it): ``log N + E[log r] + E[log N(z; 0, I) - log p(z)]``, estimated
    by 16 reparameterised draws (so a fit's gradient reaches the anchors through them): not
    a closed form, so ``elbo="auto"`` takes the sampled KL (``ZoneLatent.closed_form_kl``)."""
    z = q.rsample((16,))
    log_p = p.log_prob(z)
    log_p = log_p.sum(-1) if log_p.shape == z.shape else log_p
    return (q.log_prob(z) - log_p).mean(0)


@register_kl(ZoneLatent, dist.Independent)
def _kl_zone_independent(q: ZoneLatent, p: dist.Independent) -> torch.Tensor:
    z = q.rsample((16,))
    return (q.log_prob(z) - p.log_prob(z)).mean(0)


@dataclass(frozen=True)
class MomentTest:
    """The first two moments of a batch of latents against N(0, I).

    ``mean_p``: p-value of ``B |mean|^2 ~ chi2(d)``; ``cov_p``: p-value of the likelihood
    ratio statistic ``B (tr S - log det S - d) ~ chi2(d (d + 1) / 2)`` for covariance I
    (S the sample second moment about zero, Bartlett-free: B large);
    ``passed``: both above ``level``."""

    mean_norm: float
    max_cov_error: float
    mean_p: float
    cov_p: float
    level: float

    @property
    def passed(self) -> bool:
        return self.mean_p > self.level and self.cov_p > self.level


def gaussian_moment_test(z: torch.Tensor, level: float = 0.01) -> MomentTest:
    """Test whether latents ``z`` (B, d) have mean 0 and covariance I (see
    :class:`MomentTest`); needs more rows than dimensions."""
    _check_matrix("z", z)
    b, d = z.shape
    if b <= d:
        raise LatentFlowError(f"the moment test needs more rows than dimensions, got {b} <= {d}")
    if not 0.0 < level < 1.0:
        raise LatentFlowError(f"level must be in (0, 1), got {level!r}")
    z = z.detach().double()
    mean = z.mean(0)
    second = z.T @ z / b
    mean_stat = float(b * mean.pow(2).sum())
    sign, logdet = torch.linalg.slogdet(second)
    lr = float(b * (second.trace() - logdet - d)) if sign > 0 else math.inf
    return MomentTest(
        mean_norm=float(mean.norm()),
        max_cov_error=float((second - torch.eye(d, dtype=z.dtype)).abs().max()),
        mean_p=float(stats.chi2.sf(mean_stat, d)),
        cov_p=float(stats.chi2.sf(lr, d * (d + 1) // 2)),
        level=level,
    )
