"""Mutual information each latent group carries about a model's output (paper 1's analysis).

Serez et al. (TMLR 2025), "A Mutual Information Perspective on Multiple Latent Variable
Generative Models for Positive View Generation", measure how much a latent chunk z_l shapes
the generator's output x = g(z) by perturbing it, z'_l = z_l + sigma * eps, and estimating
I(X; X') between the anchor output and the perturbed one with InfoNCE: a critic f is trained
to pick each anchor's own view among B candidates, and ``I_hat = log B - L_NCE``.

- If z_l barely shapes x, x' ~ x and I_hat stays at the estimator's ceiling (near log B)
  whatever sigma is: a dead (unused) group.
- The more x depends on z_l, the faster I_hat falls as sigma grows.

Here the "output" is the mean of the model's observed site(s) given all latents, and the
latents are drawn from the guide (the aggregate posterior over the data rows) or from the
prior. This works for any zoo model with local latent sites under the data plate. The
paper's adversarial learned walker is replaced by a fixed noise scale grid (its "random
walker"), and its ResNet critic by a small MLP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from pyro import poutine
from torch import nn
from torch.distributions import biject_to

from inference.data import Batch
from inference.traces import local_sites, rows_first, sample_sites, unwrap_independent

__all__ = ["LatentMI", "latent_mi", "info_nce"]

SOURCES = ("posterior", "prior")


@dataclass
class LatentMI:
    """Result of :func:`latent_mi` (all MI values in nats).

    :ivar reference: I_hat for identical pairs (sigma = 0): the estimator's ceiling here.
    :ivar mi: site -> I_hat per sigma.
    :ivar drop: site -> ``reference - I_hat`` per sigma (how much information perturbing the
        site destroys).
    :ivar score: site -> mean drop over the sigma grid (the ranking key).
    :ivar ranking: sites, most informative first.
    :ivar dead: sites whose drop at the largest sigma stays below ``dead_tol`` nats: moving
        them does not measurably change the output.
    :ivar underused: sites (dead ones included) whose drop at the largest sigma is below
        ``underused_fraction`` of the largest drop of any site: the paper's under-used chunks.
    :ivar output_change: site -> mean L2 distance between anchor and view outputs per sigma.
    """

    sites: list[str]
    sigmas: list[float]
    batch_size: int
    reference: float
    mi: dict[str, list[float]]
    drop: dict[str, list[float]]
    score: dict[str, float]
    ranking: list[str]
    dead: list[str]
    underused: list[str]
    dead_tol: float
    output_change: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ceiling(self) -> float:
        """``log B``: the most any InfoNCE estimate with batch size B can report."""
        return math.log(self.batch_size)

    def table(self) -> list[dict]:
        """One row per (site, sigma), for a DataFrame."""
        return [
            {
                "site": site,
                "sigma": sigma,
                "mi": self.mi[site][i],
                "drop": self.drop[site][i],
                "output_change": self.output_change[site][i],
                "dead": site in self.dead,
                "underused": site in self.underused,
            }
            for site in self.sites
            for i, sigma in enumerate(self.sigmas)
        ]


class _Critic(nn.Module):
    """x -> unit-norm embedding; the InfoNCE score of a pair is a scaled cosine similarity."""

    def __init__(self, input_dim: int, hidden: int, embed_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=-1)


def info_nce(anchor: torch.Tensor, view: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE loss of unit-norm embeddings (B, D): row i's positive is view i."""
    logits = anchor @ view.T / temperature
    return nn.functional.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


class _PairSampler:
    """Fresh (anchor output, view output) pairs on each call (continuous sampling); pairs are
    drawn ``pool`` batches at a time, each pair used once, to spread the tracing overhead."""

    def __init__(self, model, guide, data, source: str, batch_size: int, outputs, pool: int = 8):
        self.model, self.guide, self.data = model, guide, dict(data)
        self.source, self.batch_size, self.pool = source, batch_size, pool
        self.size = len(next(iter(self.data.values())))
        self.device = next(iter(self.data.values())).device
        self.outputs = outputs
        self._key: tuple | None = None
        self.output_dim = 0
        # the perturbation noise has its own stream: with the same seed, every (site, sigma)
        # run sees the same anchors as the reference, so an unused site gives a drop of 0
        self.noise = torch.Generator(device=self.device)
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _batch(self) -> Batch:
        parts = []
        for _ in range(self.pool):  # rows distinct within each InfoNCE batch when possible
            if self.size >= self.batch_size:
                parts.append(torch.randperm(self.size, device=self.device)[: self.batch_size])
            else:
                parts.append(torch.randint(self.size, (self.batch_size,), device=self.device))
        index = torch.cat(parts)
        return Batch({k: v[index] for k, v in self.data.items()}, index=index, size=self.size)

    def latents(self, batch: Batch):
        source = self.guide if self.source == "posterior" else self.model
        trace = poutine.trace(source).get_trace(batch)
        latent = sample_sites(trace, observed=False)
        return trace, {name: trace.nodes[name]["value"] for name in latent}

    def output(self, batch: Batch, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        trace = poutine.trace(poutine.condition(self.model, data=dict(values))).get_trace(batch)
        parts = []
        for name in self.outputs:
            fn = trace.nodes[name]["fn"]
            _, event = unwrap_independent(fn)
            try:
                mean = fn.mean
            except NotImplementedError:
                mean = fn.sample()
            mean = mean.expand(fn.batch_shape + fn.event_shape)
            parts.append(rows_first(mean, event, batch.batch_size))
        return torch.cat(parts, dim=-1).float()

    def _draw(self, site: str | None, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), poutine.block():
            batch = self._batch()
            trace, values = self.latents(batch)
            anchor = self.output(batch, values)
            if site is None or sigma == 0.0:
                return anchor, anchor.clone()
            transform = biject_to(trace.nodes[site]["fn"].support)
            unconstrained = transform.inv(values[site])
            eps = torch.randn(
                unconstrained.shape, generator=self.noise, device=unconstrained.device
            )
            moved = unconstrained + sigma * eps.to(unconstrained.dtype)
            view = self.output(batch, {**values, site: transform(moved)})
        return anchor, view

    def reset(self, seed: int) -> None:
        """Restart the draws: same anchors for every estimate run with the same seed."""
        torch.manual_seed(seed)
        self.noise.manual_seed(seed + 1)
        self._key, self._buffer = None, []

    def __call__(self, site: str | None, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self._key != (site, sigma) or not self._buffer:
            self._key = (site, sigma)
            anchors, views = self._draw(site, sigma)
            self._buffer = list(
                zip(anchors.split(self.batch_size), views.split(self.batch_size), strict=True)
            )
        return self._buffer.pop()


def _estimate(
    sampler, site, sigma, *, steps, eval_batches, temperature, hidden, embed_dim, lr
) -> tuple[float, float]:
    """Train a fresh critic on (site, sigma) pairs; return (I_hat, mean output change)."""
    critic = _Critic(sampler.output_dim, hidden, embed_dim).to(sampler.device)
    optim = torch.optim.Adam(critic.parameters(), lr=lr)
    for _ in range(steps):
        x, x_view = sampler(site, sigma)
        loss = info_nce(critic(x), critic(x_view), temperature)
        optim.zero_grad()
        loss.backward()
        optim.step()
    losses, changes = [], []
    with torch.no_grad():
        for _ in range(eval_batches):
            x, x_view = sampler(site, sigma)
            losses.append(float(info_nce(critic(x), critic(x_view), temperature)))
            changes.append(float((x - x_view).norm(dim=-1).mean()))
    return math.log(sampler.batch_size) - sum(losses) / len(losses), sum(changes) / len(changes)


def _run(model, guide, data, sites, sigmas, source, batch_size, seed, options):
    """The probe proper: validate sites, then one critic for the reference and per pair."""
    torch.manual_seed(seed)
    rows = len(next(iter(data.values())))
    index = torch.arange(min(2, rows), device=next(iter(data.values())).device)
    probe = Batch({k: v[index] for k, v in data.items()}, index=index, size=rows)
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(probe)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(probe)
    local = local_sites(guide_trace if source == "posterior" else model_trace)
    if sites is None:
        sites = local
    else:
        sites = list(sites)
        unknown = [s for s in sites if s not in local]
        if unknown:
            raise ValueError(f"site(s) {unknown} are not local latent sites; local: {local}")
    if not sites:
        raise ValueError("the model has no latent sites under the data plate to probe")
    outputs = sample_sites(model_trace, observed=True)
    if not outputs:
        raise ValueError("the model has no observed site to measure the output at")

    sampler = _PairSampler(model, guide, data, source, batch_size, outputs)
    sampler.output_dim = sampler(None, 0.0)[0].shape[-1]
    sampler.reset(seed)
    reference, _ = _estimate(sampler, None, 0.0, **options)
    mi: dict[str, list[float]] = {}
    change: dict[str, list[float]] = {}
    for site in sites:
        mi[site], change[site] = [], []
        for sigma in sigmas:
            sampler.reset(seed)
            value, moved = _estimate(sampler, site, sigma, **options)
            mi[site].append(value)
            change[site].append(moved)
    return sites, reference, mi, change


def latent_mi(
    model: nn.Module,
    guide: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    sites: Sequence[str] | None = None,
    sigmas: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    source: str = "posterior",
    batch_size: int = 256,
    steps: int = 300,
    eval_batches: int = 8,
    temperature: float = 0.1,
    critic_hidden: int = 128,
    embed_dim: int = 32,
    lr: float = 1e-3,
    dead_tol: float = 0.1,
    underused_fraction: float = 0.1,
    seed: int = 0,
) -> LatentMI:
    """Per-site InfoNCE estimate of I(X; X') when one local latent site is perturbed.

    For each site and noise scale sigma, anchors z are drawn (from the guide on random data
    rows, or from the prior), the site is moved by ``sigma * eps`` in its unconstrained
    space, and both latents are pushed through the model to the mean of its observed
    site(s). A fresh MLP critic is trained for ``steps`` steps on fresh pairs and scored on
    ``eval_batches`` more. The same recipe on identical pairs, with the same anchors and
    critic seeds, gives ``reference``: a site that never changes the output drops by 0.

    :param sites: local latent sites to probe (default: all under the data plate).
    :param sigmas: positive noise scales, in the site's unconstrained space.
    :param source: ``"posterior"`` (guide on the data) or ``"prior"`` (the model's priors).
    :param batch_size: InfoNCE batch B; estimates saturate at log B.
    :param dead_tol: a site is flagged dead when its drop at the largest sigma is below this
        (nats).
    :param underused_fraction: a site is flagged under-used when its drop at the largest
        sigma is below this fraction of the largest site's.
    :param seed: seeds the draws and critics; the caller's RNG state is restored afterwards.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not math.isfinite(s) or s <= 0 for s in sigmas):
        raise ValueError(f"sigmas must be a non-empty list of positive numbers, got {sigmas}")
    for key, value in (
        ("batch_size", batch_size),
        ("steps", steps),
        ("eval_batches", eval_batches),
        ("critic_hidden", critic_hidden),
        ("embed_dim", embed_dim),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (InfoNCE needs negatives), got {batch_size}")
    for key, value in (("temperature", temperature), ("lr", lr)):
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value!r}")
    if not dead_tol >= 0:
        raise ValueError(f"dead_tol must be >= 0, got {dead_tol!r}")
    if not 0 <= underused_fraction < 1:
        raise ValueError(f"underused_fraction must be in [0, 1), got {underused_fraction!r}")
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a non-empty mapping of field name to tensor")

    devices = [] if next(iter(data.values())).device.type == "cpu" else None
    modes = [(module, module.training) for module in (model, guide)]
    for module, _ in modes:
        module.eval()  # the generator as deployed: no dropout-like training noise
    try:
        with torch.random.fork_rng(devices=devices):
            result = _run(
                model,
                guide,
                data,
                sites,
                sigmas,
                source,
                batch_size,
                seed,
                dict(
                    steps=steps,
                    eval_batches=eval_batches,
                    temperature=temperature,
                    hidden=critic_hidden,
                    embed_dim=embed_dim,
                    lr=lr,
                ),
            )
    finally:
        for module, mode in modes:
            module.train(mode)
    sites, reference, mi, change = result
    drop = {site: [reference - v for v in values] for site, values in mi.items()}
    score = {site: sum(values) / len(values) for site, values in drop.items()}
    ranking = sorted(sites, key=lambda s: -score[s])
    largest = sigmas.index(max(sigmas))
    dead = [site for site in sites if drop[site][largest] < dead_tol]
    top = max(drop[site][largest] for site in sites)
    underused = [
        site for site in sites if site in dead or drop[site][largest] < underused_fraction * top
    ]
    return LatentMI(
        sites=list(sites),
        sigmas=sigmas,
        batch_size=batch_size,
        reference=reference,
        mi=mi,
        drop=drop,
        score=score,
        ranking=ranking,
        dead=dead,
        underused=underused,
        dead_tol=float(dead_tol),
        output_change=change,
    )
