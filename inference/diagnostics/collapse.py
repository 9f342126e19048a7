"""Posterior collapse: KL per latent dimension and active units, per latent level.

Active units (Burda, Grosse & Salakhutdinov 2016, "Importance weighted autoencoders"):
dimension d of z is active when ``Cov_x(E_q[z_d | x]) > threshold`` (0.01 in the paper);
a collapsed dimension has ``q(z_d | x) = p(z_d)`` for every x, so its KL is 0 and its
posterior mean does not move with x. Dang et al. (ICLR 2024, paper 17) count collapsed
dimensions by their KL (``KL_d < 0.01``) per latent level of conditional and hierarchical
VAEs; both counts are reported here for every local (data-plate) site of any model.

A hierarchical model's upper level has a conditional prior (``p(z1 | z2)``): the KL of
``q(z1 | x)`` is then taken against that prior at the guide's draw of ``z2``, which is a
Monte Carlo estimate over ``z2`` (``num_particles`` draws are averaged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pyro import poutine
from pyro.distributions import Delta, Independent
from torch import nn
from torch.distributions import kl_divergence

from inference.data import full_batch
from inference.traces import local_sites, rows_first, unwrap_independent

__all__ = ["latent_activity", "collapse_table"]


def _site_kl(q, p, num_draws: int) -> tuple[torch.Tensor, str]:
    """Per-dimension KL(q || p) with the dims of a joint (non-factorised) q kept as the
    event: analytic where torch knows it, else Monte Carlo; for a joint q the total KL is
    spread over its dims by the marginal Gaussian KLs (``kind='marginal'``)."""
    if q.event_shape:  # a joint density over the latent vector (e.g. a full-covariance q)
        try:
            total = kl_divergence(q, p)
        except NotImplementedError:
            z = q.sample((num_draws,))
            total = (q.log_prob(z) - p.log_prob(z)).mean(0)
        try:
            vq, vp = q.variance, p.variance
            marginal = 0.5 * (torch.log(vp / vq) + (vq + (q.mean - p.mean) ** 2) / vp - 1.0)
            share = marginal / marginal.sum(-1, keepdim=True).clamp_min(1e-12)
            return share * total.unsqueeze(-1), "marginal"
        except (NotImplementedError, AttributeError):
            return total.unsqueeze(-1), "joint"
    try:
        return kl_divergence(q, p), "analytic"
    except NotImplementedError:
        z = q.sample((num_draws,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0), "monte_carlo"


def _mean(q, num_draws: int) -> torch.Tensor:
    try:
        return q.mean
    except NotImplementedError:
        return q.sample((max(num_draws, 16),)).mean(0)


def latent_activity(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    sites: Sequence[str] | None = None,
    threshold: float = 0.01,
    kl_threshold: float = 0.01,
    informative_kl: float = 0.1,
    num_particles: int = 1,
) -> dict[str, dict]:
    """KL per latent dimension, active units and collapsed dimensions of each local
    (data-plate) latent site: one entry per latent level of a hierarchical model.

    The guide is traced on all of ``data`` as one batch and the model replayed on it; for
    each site the per-row ``q(z | x_n)`` and ``p(z | parents)`` (after unwrapping
    ``Independent``) give ``KL(q || p)`` per dimension, analytic where torch knows it and
    otherwise a Monte Carlo estimate, averaged over the rows and over ``num_particles``
    traces (which also average a conditional prior over the guide's draws of its parents).

    :param sites: the local sites to report (default: every latent site under the data plate).
    :param threshold: a dimension is active when the variance over rows of its posterior
        mean exceeds this (Burda et al. 2016).
    :param kl_threshold: a dimension is collapsed when its mean KL is below this (nats).
    :param informative_kl: a dimension is informative when it is active and its mean KL
        is at least this (nats per row): the one count to read. The looser criteria
        disagree on a trained VAE, where many dimensions move ``E[z | x]`` a little and
        carry a few hundredths of a nat each.
    :returns: ``{site: {"level", "dims", "kl_per_dim", "kl_kind", "activity", "active",
        "active_units", "active_directions", "collapsed", "collapsed_dims", "informative",
        "informative_dims", "total_kl"}}``.
        ``level`` is the site's position among the local sites in the model (0: drawn
        first, the top of a hierarchy); ``activity`` the variance of the posterior mean per
        dimension; ``active_directions`` the number of eigenvalues of the covariance of the
        posterior means above ``threshold`` (active units up to a rotation of the latent
        space); ``kl_kind`` says how the KL was computed (``analytic``, ``monte_carlo``, or
        for a joint q ``marginal``: its total KL shared out by the marginal Gaussian KLs,
        or ``joint``: one total value; for a point-mass guide ``point_mass``: no KL (NaN),
        and a dimension counts as collapsed when it is inactive);
        ``total_kl`` the sum over dimensions (nats per row).
    """
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    for label, value in (
        ("threshold", threshold),
        ("kl_threshold", kl_threshold),
        ("informative_kl", informative_kl),
    ):
        if not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{label} must be a non-negative number, got {value!r}")
    batch = full_batch(data)
    rows = batch.batch_size
    kls: dict[str, list[torch.Tensor]] = {}
    means: dict[str, list[torch.Tensor]] = {}
    kinds: dict[str, str] = {}
    order: list[str] = []
    for particle in range(num_particles):
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(batch)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
        if particle == 0:
            local = local_sites(guide_trace)
            if sites is None:
                sites = local
            else:
                unknown = [s for s in sites if s not in local]
                if unknown:
                    raise ValueError(
                        f"site(s) {unknown} are not local latent sites; local sites: {local}"
                    )
            if not sites:
                raise ValueError("the guide has no latent sites under the data plate")
            order = [name for name in model_trace.nodes if name in local]
        for name in sites:
            q, q_event = unwrap_independent(guide_trace.nodes[name]["fn"])
            p, _ = unwrap_independent(model_trace.nodes[name]["fn"])
            if p.event_shape and not q.event_shape and q_event >= len(p.event_shape):
                # a prior joint over the latent vector (a flow prior): compare the joints
                q = Independent(q, len(p.event_shape))
                q_event -= len(p.event_shape)
            with torch.no_grad():
                if isinstance(q, Delta):
                    # a point-mass (MAP) encoder: no KL, activity from its point estimate
                    mean = q.v
                    kl = torch.full_like(mean, float("nan"))
                    kinds[name] = "point_mass"
                    q_event = q_event + q.event_dim
                    kls.setdefault(name, []).append(rows_first(kl, q_event, rows).double())
                    means.setdefault(name, []).append(rows_first(mean, q_event, rows).double())
                    continue
                kl, kinds[name] = _site_kl(q, p, num_particles)
                mean = _mean(q, num_particles)
            joint = len(q.event_shape)
            kl_shape = q.batch_shape + kl.shape[len(q.batch_shape) :]
            kl = rows_first(kl.expand(kl_shape), q_event + (1 if joint else 0), rows)
            mean = rows_first(mean.expand(q.batch_shape + q.event_shape), q_event + joint, rows)
            kls.setdefault(name, []).append(kl.double())
            means.setdefault(name, []).append(mean.double())
    out: dict[str, dict] = {}
    for name in sites:
        kl_per_dim = torch.stack(kls[name]).mean((0, 1))
        posterior_means = torch.stack(means[name]).mean(0)
        activity = posterior_means.var(0, unbiased=False)
        # rotation-free count: a linear model's latent space is often identified only up to
        # a rotation, which spreads one active direction over several coordinates
        centred = posterior_means - posterior_means.mean(0)
        spectrum = torch.linalg.eigvalsh(centred.T @ centred / max(1, rows))
        active = (activity > threshold).tolist()
        if kinds[name] == "point_mass":  # no KL: a dimension is collapsed when inactive
            collapsed = [not a for a in active]
            informative = list(active)
        else:
            collapsed = (kl_per_dim < kl_threshold).tolist()
            if len(kl_per_dim) == len(active):
                carries = (kl_per_dim >= informative_kl).tolist()
            else:  # a joint q's one total KL: no per-dimension split to judge by
                carries = [float(kl_per_dim.sum()) >= informative_kl] * len(active)
            informative = [a and c for a, c in zip(active, carries, strict=True)]
        out[name] = {
            "level": order.index(name) if name in order else None,
            "dims": len(active),
            "kl_per_dim": kl_per_dim.tolist(),
            "kl_kind": kinds[name],
            "activity": activity.tolist(),
            "active": active,
            "active_units": int(sum(active)),
            "active_directions": int((spectrum > threshold).sum()),
            "collapsed": collapsed,
            "collapsed_dims": int(sum(collapsed)),
            "informative": informative,
            "informative_dims": int(sum(informative)),
            "informative_kl": informative_kl,
            "total_kl": float(kl_per_dim.sum()),
        }
    return out


def collapse_table(report: Mapping[str, Mapping]) -> list[dict]:
    """One row per latent level of a :func:`latent_activity` report, ordered by level:
    what ``zoo diagnose`` prints."""
    rows = [
        {
            "site": site,
            "level": info.get("level"),
            "dims": info.get("dims", len(info.get("kl_per_dim", []))),
            f"informative dims (active, KL >= {info.get('informative_kl', 0.1):g} nats)": info.get(
                "informative_dims"
            ),
            "active units (Var E[z|x] > 0.01)": info.get("active_units"),
            "active directions (eigenvalues of Cov E[z|x] > 0.01)": info.get("active_directions"),
            "collapsed dims (KL < 0.01 nats)": info.get("collapsed_dims"),
            "total KL (nats)": info.get("total_kl"),
            "criteria agree": _agreement(info),
        }
        for site, info in report.items()
    ]
    return sorted(rows, key=lambda r: (r["level"] is None, r["level"] or 0))


def _agreement(info: Mapping) -> str:
    """ "yes" when the three per-dimension criteria count the same number of dimensions;
    otherwise the counts, so a reader sees why they differ."""
    informative, active = info.get("informative_dims"), info.get("active_units")
    collapsed = info.get("collapsed_dims")
    if informative is None or active is None or collapsed is None:
        return "n/a"
    kept = info.get("dims", 0) - collapsed
    if informative == active == kept:
        return "yes"
    return (
        f"no: {active} move E[z|x] and {kept} have KL >= 0.01 nats, but only {informative} "
        f"carry {info.get('informative_kl', 0.1):g} nats or more"
    )
