"""Neural snowflakes: a trainable latent geometry for a latent-space network model (paper 24).

Sáez de Ocáriz Borde & Kratsios (ICLR 2024), "Neural Snowflakes: Universal Latent Graph
Inference via Trainable Latent Geometries". A neural snowflake is a trainable distance on
:math:`\\mathbb{R}^d`, :math:`\\rho(u, v) = f(\\lVert u - v \\rVert)`, where :math:`f` is a
small network with non-negative weights and concave, increasing activations
(:math:`t^p` with :math:`0 < p \\le 1`, :math:`1 - e^{-t}`, :math:`\\log(1 + t)`), so
:math:`f(0) = 0`, :math:`f` is concave and increasing, and :math:`\\rho` is again a metric.
The paper shows that such geometries embed finite weighted graphs that Euclidean space cannot
(trees, stars) and uses them as the latent geometry of differentiable graph inference.

The paper is not probabilistic at heart: it fits the snowflake and the positions by least
squares on the graph's distances. This model is the spec's probabilistic analogue, a
latent-space network model in which a weighted graph on ``num_nodes`` nodes is observed
through the snowflake distances of latent positions. For the pairs :math:`i < j` (the rows)::

    z_k     ~ Normal(0, I_d)                    k = 1..num_nodes (one global (n, d) site)
    sigma   ~ HalfNormal(1)                     observation noise of the distances
    w_ij    ~ Normal(rho_theta(z_i, z_j), sigma)

    rho_theta(u, v) = f_theta(||u - v||),   f_theta(t) = a_0 t + sum_k a_k h_k(t),
    h = phi(B phi(C t)),   phi = [(s + eps)^p - eps^p, 1 - exp(-s), log(1 + s)] per unit,

with every weight (:math:`a, B, C`) kept non-negative by a softplus and the exponents
:math:`p = \\mathrm{sigmoid}(q) \\in (0, 1)` (the ``eps`` keeps the gradient of :math:`t^p`
finite at 0). The network's weights are point estimates (parameters of the model); the
positions and the noise are latent. It keeps the paper's geometry and its claim (distortion
of a graph metric in d = 2, snowflake against Euclidean); least squares becomes the Gaussian
likelihood, and the positions get a posterior. ``geometry="euclidean"`` is the baseline
geometry, :math:`\\rho = s \\lVert u - v \\rVert` with a learned scale :math:`s > 0` (the
snowflake contains it: :math:`a_0 t`).

Default data: the shortest-path metric of a balanced binary tree on 31 nodes
(``graph="tree"``) or of a 12-cycle with a star of 8 leaves hung from one of its nodes
(``graph="cycle_star"``, 21 nodes). The paper's second use, graph inference on data with no
graph (a differentiable graph module, Gumbel top-k neighbours on :math:`\\rho` of encoded
features, a GCN for node labels), is :class:`SnowflakeDGM` below: a deterministic classifier
as in the paper (not a Pyro model), run by the ``snowflake`` recipe on ``load_digits``.

What reproduced (``results/snowflake.md``, 3 seeds): in d = 2 the snowflake's maximum
distortion is an order of magnitude below the Euclidean one (tree 5.7 against 112), but its
MSE only 0.70x (tree) and 0.95x (cycle+star) the Euclidean, not the paper's orders of
magnitude (its Table 2 is metric learning from features, a different task); on digits the
snowflake DGM, the Euclidean DGM and the MLP are within their seed spread (about 0.90).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from inference.data import DataError, Field, full_batch
from zoo.base import ConfigError, TrainConfig, ZooModel, require_positive_ints
from zoo.registry import register

GRAPHS = ("tree", "cycle_star")
GEOMETRIES = ("snowflake", "euclidean")

__all__ = [
    "Snowflake",
    "SnowflakeMetric",
    "SnowflakeDGM",
    "graph_edges",
    "shortest_paths",
    "distortion",
]


# ----- graphs ------------------------------------------------------------------------------


def graph_edges(graph: str) -> tuple[int, list[tuple[int, int]]]:
    """``(num_nodes, edges)`` of a named unweighted graph: ``tree`` (balanced binary, 31
    nodes, node k's children 2k+1 and 2k+2) or ``cycle_star`` (a 12-cycle, a hub joined to
    cycle node 0 and 8 leaves on the hub: 21 nodes)."""
    if graph == "tree":
        return 31, [(k, c) for k in range(15) for c in (2 * k + 1, 2 * k + 2)]
    if graph == "cycle_star":
        cycle = [(k, (k + 1) % 12) for k in range(12)]
        return 21, [*cycle, (0, 12), *[(12, leaf) for leaf in range(13, 21)]]
    raise ValueError(f"unknown graph {graph!r}; valid graphs: {list(GRAPHS)}")


def shortest_paths(num_nodes: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """All-pairs shortest-path lengths of an unweighted graph (Floyd-Warshall)."""
    d = np.full((num_nodes, num_nodes), np.inf)
    np.fill_diagonal(d, 0.0)
    for i, j in edges:
        d[i, j] = d[j, i] = 1.0
    for k in range(num_nodes):
        d = np.minimum(d, d[:, k : k + 1] + d[k : k + 1, :])
    if not np.isfinite(d).all():
        raise ValueError("the graph is not connected")
    return d


def distortion(rho: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """How well distances ``rho`` match ``target`` (both over the same pairs, target > 0):
    ``mse``, ``max_distortion`` = max(rho / d) * max(d / rho) (1 for an isometry up to
    scale, the classical bi-Lipschitz distortion) and ``mean_relative_error`` of |rho - d| / d."""
    rho, target = rho.detach().double(), target.detach().double()
    ratio = rho.clamp_min(1e-12) / target
    return {
        "mse": float(((rho - target) ** 2).mean()),
        "max_distortion": float(ratio.max() / ratio.min()),
        "mean_relative_error": float(((rho - target).abs() / target).mean()),
    }


# ----- the snowflake -----------------------------------------------------------------------


def _norm(diff: torch.Tensor, eps: float) -> torch.Tensor:
    """||diff|| over the last dimension, smoothed at 0 (finite gradient), exactly 0 at 0."""
    return (diff.pow(2).sum(-1) + eps**2).sqrt() - eps


class SnowflakeMetric(nn.Module):
    """rho(u, v) = f(||u - v||): ``geometry="snowflake"`` (a concave, increasing network with
    non-negative weights, ``depth`` layers of ``width`` units of each activation) or
    ``"euclidean"`` (a learned positive scale). Call as ``metric(u, v)`` on broadcastable
    ``(..., d)`` tensors, or ``metric.profile(t)`` on Euclidean distances ``t >= 0``."""

    def __init__(
        self, geometry: str = "snowflake", width: int = 8, depth: int = 2, eps: float = 1e-4
    ):
        super().__init__()
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; valid: {list(GEOMETRIES)}")
        self.geometry, self.eps = geometry, eps
        self.log_scale = nn.Parameter(torch.zeros(()))
        if geometry == "euclidean":
            return
        g = torch.Generator().manual_seed(0)
        sizes = [1] + [3 * width] * depth
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(m, 3 * width, generator=g) * 0.5 - 0.5) for m in sizes[:-1]
        )
        self.powers = nn.ParameterList(
            nn.Parameter(torch.randn(width, generator=g)) for _ in range(depth)
        )
        self.out = nn.Parameter(torch.randn(3 * width, generator=g) * 0.5 - 1.0)

    def profile(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) for Euclidean distances ``t >= 0`` (any shape)."""
        scale = F.softplus(self.log_scale) / F.softplus(torch.zeros(()))
        if self.geometry == "euclidean":
            return scale * t
        h = t.unsqueeze(-1)
        for weight, power in zip(self.weights, self.powers, strict=True):
            s = h @ F.softplus(weight)
            a, b, c = s.chunk(3, dim=-1)
            p = torch.sigmoid(power)
            h = torch.cat([(a + self.eps) ** p - self.eps**p, -torch.expm1(-b), torch.log1p(c)], -1)
        return scale * t + h @ F.softplus(self.out)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.profile(_norm(u - v, self.eps))

    def pairwise(self, u: torch.Tensor) -> torch.Tensor:
        """(n, n) distances between the rows of ``u`` (n, d)."""
        return self(u.unsqueeze(-2), u.unsqueeze(-3))


# ----- the latent-space network model ------------------------------------------------------


@register
class Snowflake(ZooModel):
    """Latent-space network model with a neural-snowflake (or Euclidean) geometry: a graph's
    pairwise distances observed through rho(z_i, z_j). See the module doc."""

    name = "snowflake"
    summary = "Neural snowflake: graph distances observed through a trainable latent metric"
    paper = 24
    static_structure = True

    tiny = {"steps": 30}

    @dataclass
    class Config(TrainConfig):
        #: the default graph whose shortest-path metric is the data
        graph: str = "tree"
        #: ``snowflake`` (the paper's) or ``euclidean`` (the baseline geometry)
        geometry: str = "snowflake"
        #: dimension d of the latent positions
        latent_dim: int = 2
        #: units of each activation per snowflake layer, and the number of layers
        width: int = 8
        depth: int = 2
        #: smoothing of sqrt and t^p at 0
        eps: float = 1e-4
        steps: int = 3000
        batch_size: int = 512
        lr: float = 0.02
        holdout: float = 0.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.metric = SnowflakeMetric(c.geometry, c.width, c.depth, c.eps)

    @property
    def num_nodes(self) -> int:
        return graph_edges(self.config.graph)[0]

    @property
    def edges(self) -> list[tuple[int, int]]:
        return graph_edges(self.config.graph)[1]

    def check_config(self) -> None:
        c = self.config
        if c.graph not in GRAPHS:
            raise ConfigError(f"graph must be one of {list(GRAPHS)}, got {c.graph!r}")
        if c.geometry not in GEOMETRIES:
            raise ConfigError(f"geometry must be one of {list(GEOMETRIES)}, got {c.geometry!r}")
        require_positive_ints(c, "latent_dim", "width", "depth")
        if not (isinstance(c.eps, int | float) and 0 < c.eps < 0.1):
            raise ConfigError(f"eps must be in (0, 0.1), got {c.eps!r}")

    # ----- data --------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        nodes = constraints.integer_interval(0, self.num_nodes - 1)
        return {
            "i": Field(dtype="int", support=nodes, doc="first node of the pair"),
            "j": Field(dtype="int", support=nodes, doc="second node of the pair (j != i)"),
            "w": Field(support=constraints.positive, doc="observed distance (edge weight)"),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("w",)

    def validate(self, data):
        out = super().validate(data)
        if bool((out["i"] == out["j"]).any()):
            raise DataError("'i' equals 'j' in some rows: a pair must join two different nodes")
        return out

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Every pair i < j of the config's graph with its shortest-path distance (no noise:
        the data do not depend on the seed)."""
        d = shortest_paths(self.num_nodes, self.edges)
        i, j = np.triu_indices(self.num_nodes, k=1)
        return self.validate({"i": i, "j": j, "w": d[i, j].astype("float32")})

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """``(truth, data)``: positions z from the prior, sigma = 0.1, and every pair's distance
        drawn around this model's (initial) metric of them, kept positive by |.|."""
        generator = torch.Generator().manual_seed(seed)
        n, d = self.num_nodes, self.config.latent_dim
        z = torch.randn(n, d, generator=generator)
        sigma = torch.tensor(0.1)
        i, j = torch.triu_indices(n, n, offset=1)
        with torch.no_grad():
            rho = self.metric(z[i], z[j])
        w = (rho + sigma * torch.randn(rho.shape, generator=generator)).abs() + 1e-3
        return {"z": z, "sigma": sigma}, self.validate({"i": i, "j": j, "w": w})

    # ----- model -------------------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        n, d = self.num_nodes, self.config.latent_dim
        return {
            "z": dist.Normal(0.0, 1.0).expand([n, d]).to_event(2),
            "sigma": dist.HalfNormal(1.0),
        }

    def model(self, batch) -> None:
        z = pyro.sample("z", self.prior("z"))
        sigma = pyro.sample("sigma", self.prior("sigma"))
        with self.data_plate(batch):
            rho = self.metric(z[..., batch["i"], :], z[..., batch["j"], :])
            if rho.dim() > 1:  # vectorized draws (S, 1, n, d): drop the data plate's slot
                rho = rho.squeeze(-2)
            pyro.sample("w", dist.Normal(rho, sigma), obs=batch["w"])

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["node", "latent"]}

    # ----- evaluation --------------------------------------------------------------------

    def positions(self, guide, data=None) -> torch.Tensor:
        """The guide's posterior median of the positions (n, d), or the mean of 64 draws for
        a guide without a median."""
        batch = full_batch(data if data is not None else self.default_data())
        with torch.no_grad():
            try:
                return guide.median(batch)["z"].detach()
            except (AttributeError, NotImplementedError, KeyError):
                draws = [
                    poutine.trace(guide).get_trace(batch).nodes["z"]["value"] for _ in range(64)
                ]
                return torch.stack(draws).mean(0)

    def evaluate(self, guide, data) -> dict:
        """Embedding error of the graph metric at the posterior median of the positions:
        MSE, maximum distortion max(rho/d) max(d/rho) and mean relative error over the pairs,
        and the posterior median of sigma."""
        data = self.validate(data)
        z = self.positions(guide, data)
        with torch.no_grad():
            rho = self.metric(z[data["i"]], z[data["j"]])
        out = distortion(rho, data["w"])
        try:
            out["sigma"] = float(guide.median(full_batch(data))["sigma"])
        except (AttributeError, NotImplementedError, KeyError):
            pass
        return out

    def figures(self, guide, data, *, idata=None) -> dict:
        if guide is None:
            return {}
        return {"embedding": lambda: self.embedding_figure(guide, data)}

    def embedding_figure(self, guide, data):
        """Latent positions with the graph's edges, and fitted against true distances."""
        import matplotlib.pyplot as plt

        z = self.positions(guide, data)
        with torch.no_grad():
            rho = self.metric(z[data["i"]], z[data["j"]])
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 4))
        zp = z[:, :2].numpy()
        for a, b in self.edges:
            ax0.plot(*zp[[a, b]].T, color="0.6", lw=0.8)
        ax0.scatter(*zp.T, s=18, zorder=3)
        ax0.set_title(f"latent positions ({self.config.geometry}, {self.config.graph})")
        ax0.set_aspect("equal")
        ax1.scatter(data["w"].numpy(), rho.numpy(), s=6, alpha=0.5)
        top = float(data["w"].max())
        ax1.plot([0, top], [0, top], color="k", lw=0.8)
        ax1.set_xlabel("graph distance")
        ax1.set_ylabel("rho(z_i, z_j)")
        fig.tight_layout()
        return fig


# ----- differentiable graph inference (the paper's DGM use) --------------------------------


class SnowflakeDGM(nn.Module):
    """Latent graph inference for node classification (Kazi et al.'s DGM with the paper's
    geometry): an MLP encoder u = E(x) in R^d, distances rho(u_i, u_j) under a
    ``snowflake`` or ``euclidean`` geometry, each node's ``k`` neighbours drawn by Gumbel
    top-k on logits -T rho (T learned), the drawn edges weighted by softmax(-T rho) over
    them (so the loss reaches the geometry through the weights), and a two-layer GCN on the
    symmetrised graph with self-loops. ``geometry="none"`` is the MLP baseline (no graph).
    A deterministic classifier as in the paper (trained by cross-entropy), not a Pyro model.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        geometry: str = "snowflake",
        latent_dim: int = 8,
        hidden: int = 32,
        k: int = 7,
        candidates: int = 28,
        width: int = 8,
        depth: int = 2,
        dropout: float = 0.3,
    ):
        super().__init__()
        if geometry not in (*GEOMETRIES, "none"):
            raise ValueError(f"unknown geometry {geometry!r}; valid: {[*GEOMETRIES, 'none']}")
        self.geometry, self.k, self.dropout = geometry, k, dropout
        self.candidates = candidates
        self.lin1 = nn.Linear(in_dim, hidden)
        self.lin2 = nn.Linear(hidden, num_classes)
        if geometry != "none":
            self.encoder = nn.Sequential(
                nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, latent_dim)
            )
            self.metric = SnowflakeMetric(geometry, width, depth)
            self.log_temperature = nn.Parameter(torch.tensor(math.log(4.0)))

    def graph(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """One draw of the latent graph as ``(index (2, E), weight (E,))``: each node's drawn
        neighbours, symmetrised, with self-loops, rows normalised to sum 1 (``sample=False``:
        the top-k of the logits without Gumbel noise).

        rho is an increasing function of ||u_i - u_j||, so each node's ``candidates``
        nearest nodes in the Euclidean norm are its nearest in rho too: the Gumbel top-k is
        drawn among them (the far nodes' edge probabilities are negligible), which keeps the
        cost at n * candidates distances instead of n^2."""
        n = x.shape[0]
        u = self.encoder(x)
        m = min(self.candidates, n - 1)
        with torch.no_grad():
            near = torch.cdist(u, u).fill_diagonal_(float("inf")).topk(m, largest=False).indices
        logits = -self.log_temperature.exp() * self.metric(u.unsqueeze(1), u[near])
        noisy = logits
        if sample:
            gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)))
            noisy = logits + gumbel
        pick = noisy.topk(min(self.k, m), dim=-1).indices
        weights = torch.softmax(logits.gather(-1, pick), dim=-1)
        rows = torch.arange(n, device=x.device)
        src = rows.repeat_interleave(pick.shape[1])
        dst = near.gather(-1, pick).reshape(-1)
        # symmetrised (each drawn edge both ways at half weight) plus self-loops
        index = torch.stack([torch.cat([src, dst, rows]), torch.cat([dst, src, rows])])
        value = torch.cat([0.5 * weights.reshape(-1), 0.5 * weights.reshape(-1), torch.ones(n)])
        degree = torch.zeros(n, device=x.device).index_add(0, index[0], value)
        return index, value / degree[index[0]]

    def dense_graph(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """The graph of :meth:`graph` as a dense (n, n) matrix (rows sum to 1)."""
        index, value = self.graph(x, sample)
        n = x.shape[0]
        return torch.zeros(n, n, device=x.device).index_put((index[0], index[1]), value, True)

    @staticmethod
    def _propagate(graph: tuple[torch.Tensor, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        index, value = graph
        return torch.zeros_like(h).index_add(0, index[0], value.unsqueeze(-1) * h[index[1]])

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> torch.Tensor:
        sample = self.training if sample is None else sample
        h = F.dropout(x, self.dropout, self.training)
        graph = None if self.geometry == "none" else self.graph(x, sample)
        h = self.lin1(h)
        h = F.relu(h if graph is None else self._propagate(graph, h))
        h = F.dropout(h, self.dropout, self.training)
        h = self.lin2(h)
        return h if graph is None else self._propagate(graph, h)


def train_dgm(
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    val: torch.Tensor,
    test: torch.Tensor,
    *,
    geometry: str = "snowflake",
    epochs: int = 300,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    seed: int = 0,
    **options,
) -> dict[str, float]:
    """Fit :class:`SnowflakeDGM` transductively (all nodes' features seen, labels of
    ``train`` only) by full-batch Adam; the epoch of best validation accuracy is kept and
    its test accuracy reported (evaluated without Gumbel noise)."""
    torch.manual_seed(seed)
    net = SnowflakeDGM(x.shape[1], int(y.max()) + 1, geometry=geometry, **options)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    best = (-1.0, 0.0)
    for epoch in range(epochs):
        net.train()
        opt.zero_grad()
        loss = F.cross_entropy(net(x)[train], y[train])
        loss.backward()
        opt.step()
        if epoch % 5 == 4 or epoch == epochs - 1:
            net.eval()
            with torch.no_grad():
                pred = net(x).argmax(-1)
            val_acc = float((pred[val] == y[val]).float().mean())
            if val_acc > best[0]:
                best = (val_acc, float((pred[test] == y[test]).float().mean()))
    return {"val_accuracy": best[0], "test_accuracy": best[1]}
