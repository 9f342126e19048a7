"""T-JEPA: masked latent prediction across the columns of a table row, as a MAP analogue.

Thimonier, Melo, Chen & Bonnet (2025), "T-JEPA: Augmentation-Free Self-Supervised Learning
for Tabular Data", ICLR 2025 (arXiv:2410.05016); code github.com/jose-melo/t-jepa.

**An adaptation.** JEPA is not a likelihood model; this is the spec's MAP analogue, which
keeps the paper's mechanism. Per row x (D standardised columns), with column tokens
t_j = x_j w_j + b_j (width d), ``n_reg`` learned [REG] tokens r, a context encoder f_theta
(a small transformer), its EMA copy fbar (the target encoder) and a predictor g_phi::

    C ~ random context columns (share 0.136-0.368 of D)
    T_1..T_M ~ random target column sets, disjoint from C (share 0.156-0.622; M = 2)
    s_n = LayerNorm(fbar([r, t(x_n)]))_T          target latents, no gradient
    sigma ~ HalfNormal(1)
    s_n | x_n, sigma ~ Normal(g_phi(f_theta([r, t(x_n)_C]), T), sigma^2 I)

so -log p is the paper's MSE between predicted and target latents up to sigma (the site is
named ``x``: it scores the row through its latents, averaged over the target tokens).
The networks are point estimates (``pyro.module``); the default guide is a point mass on
sigma (``delta``), i.e. MAP, and every guide kind applies to sigma. After each optimiser
step the target encoder moves by EMA, fbar <- m fbar + (1 - m) f_theta, with m going
linearly from ``ema_start`` (0.98 here, the paper's 0.996 being for ~100x more steps) to 1
over the configured steps (run at the next call of the model, when the context encoder's
parameters have changed: ``fit`` has no per-step hook). The representation of a row is the
target encoder's output on the full row, every token's output concatenated as the paper's
downstream heads take it (:meth:`TJEPA.embed`). The Bayesian part lives downstream: a
linear or logistic read-out of the frozen embeddings sampled by NUTS
(:func:`inference.representation.bayesian_linear_probe`).

Kept from the paper: the feature tokenizer, [REG] tokens, context/target masking with the
paper's share ranges, several target masks per row, the EMA target encoder with its
momentum schedule, the transformer predictor given mask tokens at the target columns, the
MSE on stop-gradient latents. Changed for a 2-core CPU budget: 2 layers instead of 16 (the
spec's pitfall: tiny tables over-fit deep stacks), d = 32, 2 target masks per row instead
of 4, 600 steps of batch 64 at lr 1e-3 instead of 300 epochs of batch 512 at 3.7e-4, the
EMA start above; no categorical columns (the tables here are all numeric). A JEPA has no
decoder: ``zoo sample`` returns training rows resampled, not new rows
(:meth:`TJEPA.sample_new_rows`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from inference.data import Field
from inference.representation import effective_rank, embedding_spread, linear_probe
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    check_positive_int,
    require_non_negative_ints,
    require_positive_ints,
)
from zoo.datasets.tables import TABLES, load_table
from zoo.registry import register

__all__ = ["TJEPA", "column_attribution", "attribution_figure"]


def _check_share(name: str, share) -> None:
    if not isinstance(share, tuple) or len(share) != 2 or not 0.0 < share[0] <= share[1] < 1.0:
        raise ConfigError(f"{name} must be (low, high) with 0 < low <= high < 1, got {share!r}")


class Tokenizer(nn.Module):
    """Numeric feature tokenizer: column j's value x_j becomes x_j w_j + b_j (width d)."""

    def __init__(self, columns: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(columns, width) / width**0.5)
        self.bias = nn.Parameter(torch.randn(columns, width) / width**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias


class Encoder(nn.Module):
    """Tokenizer, [REG] tokens and a transformer: ``forward(x, columns)`` encodes the given
    columns of each row (``columns`` (B, K) indices; None: all), returning (B, n_reg + K, d)
    with the [REG] outputs first."""

    def __init__(self, columns: int, width: int, layers: int, heads: int, ff: int, n_reg: int):
        super().__init__()
        self.tokenizer = Tokenizer(columns, width)
        self.reg = nn.Parameter(0.02 * torch.randn(n_reg, width)) if n_reg else None
        layer = nn.TransformerEncoderLayer(
            width, heads, ff, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.tokenizer(x)
        if columns is not None:
            tokens = tokens.gather(1, columns.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if self.reg is not None:
            tokens = torch.cat([self.reg.expand(len(x), -1, -1), tokens], 1)
        return self.norm(self.transformer(tokens))


class Predictor(nn.Module):
    """g_phi: the context encoder's outputs (projected to ``width``) and one mask token per
    target column (a shared learned vector plus that column's learned embedding), through a
    transformer; the outputs at the mask tokens are projected back to the encoder width."""

    def __init__(self, columns, enc_width, width, layers, heads):
        super().__init__()
        self.inp = nn.Linear(enc_width, width)
        self.mask = nn.Parameter(0.02 * torch.randn(width))
        self.position = nn.Parameter(0.02 * torch.randn(columns, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, enc_width))

    def forward(self, context: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        queries = self.mask + self.position[targets]  # (B, K_t, width)
        h = torch.cat([self.inp(context), queries], 1)
        h = self.transformer(h)
        return self.out(h[:, -targets.shape[1] :])


@register
class TJEPA(ZooModel):
    """T-JEPA for tables, paper 31 (Thimonier et al., ICLR 2025), as the spec's MAP
    analogue: the Gaussian likelihood of target-encoder latents given the predictor's output
    (= the paper's MSE), with an EMA target encoder and [REG] tokens. See the module doc.

    ``n_reg = 0`` removes the regularisation tokens (the paper's collapse ablation);
    ``table`` picks the default data (:data:`zoo.datasets.tables.TABLES`).
    """

    name = "tjepa"
    summary = "T-JEPA: masked latent prediction across table columns, EMA target, [REG] tokens"
    paper = 31
    static_structure = False  # the mask sizes are drawn per step
    likelihood_is_estimate = True  # the masks are random: one draw of the masked objective

    tiny = {
        "rows": 96,
        "width": 8,
        "pred_width": 8,
        "layers": 1,
        "pred_layers": 1,
        "ff": 16,
        "target_masks": 1,
        "steps": 20,
        "batch_size": 32,
    }

    @dataclass
    class Config(TrainConfig):
        table: str = "synthetic"
        rows: int | None = 1200  # synthetic: rows drawn; real tables: a seeded subset (None: all)
        width: int = 32  # d, the token width
        layers: int = 2
        heads: int = 2
        ff: int = 64
        n_reg: int = 1  # [REG] tokens (0: the collapse ablation)
        pred_width: int = 16
        pred_layers: int = 2
        pred_heads: int = 4
        context_share: tuple[float, float] = (0.136, 0.368)
        target_share: tuple[float, float] = (0.156, 0.622)
        target_masks: int = 2
        ema_start: float = 0.98
        pool: str = "flat"  # the embedding: every output token concatenated, or "mean"
        holdout: float = 0.3
        batch_size: int = 64
        lr: float = 1e-3
        steps: int | None = 600

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.columns = self._columns()
        self.context_encoder = Encoder(self.columns, c.width, c.layers, c.heads, c.ff, c.n_reg)
        self.target_encoder = copy.deepcopy(self.context_encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.predictor = Predictor(self.columns, c.width, c.pred_width, c.pred_layers, c.pred_heads)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self._seen_value: torch.Tensor | None = None
        if priors:
            self.set_priors(priors)

    def _columns(self) -> int:
        c = self.config
        if c.table == "synthetic":
            return 32
        return {"breast_cancer": 30, "wine": 13, "diabetes": 10, "digits": 64}[c.table]

    @property
    def task(self) -> str:
        return "regression" if self.config.table == "diabetes" else "classification"

    def check_config(self) -> None:
        c = self.config
        if c.table not in TABLES:
            raise ConfigError(f"table must be one of {list(TABLES)}, got {c.table!r}")
        if c.rows is not None and (isinstance(c.rows, bool) or not isinstance(c.rows, int)):
            raise ConfigError(f"rows must be an integer or None, got {c.rows!r}")
        if c.rows is not None and c.rows < 16:
            raise ConfigError(f"rows must be >= 16, got {c.rows}")
        require_positive_ints(
            c, "width", "layers", "heads", "ff", "pred_width", "pred_layers", "pred_heads"
        )
        if c.width % c.heads or c.pred_width % c.pred_heads:
            raise ConfigError(
                f"width ({c.width}) and pred_width ({c.pred_width}) must be divisible by "
                f"heads ({c.heads}) and pred_heads ({c.pred_heads})"
            )
        require_non_negative_ints(c, "n_reg")
        require_positive_ints(c, "target_masks")
        _check_share("context_share", c.context_share)
        _check_share("target_share", c.target_share)
        if c.context_share[1] + c.target_share[1] > 1.0:
            raise ConfigError(
                "context_share and target_share upper ends must sum to <= 1 (disjoint masks), "
                f"got {c.context_share[1]} + {c.target_share[1]}"
            )
        if not 0.0 < c.ema_start <= 1.0:
            raise ConfigError(f"ema_start must be in (0, 1], got {c.ema_start}")
        if c.pool not in ("mean", "flat"):
            raise ConfigError(f"pool must be 'mean' or 'flat', got {c.pool!r}")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        y = (
            Field(doc="standardised target (regression), for the probe only")
            if self.task == "regression"
            else Field(
                dtype="int",
                support=constraints.nonnegative_integer,
                doc="class label, for the probe only; never used in pre-training",
            )
        )
        return {
            "x": Field(shape=(self.columns,), doc="standardised numeric columns of a row"),
            "y": y,
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def table(self, seed: int = 0):
        """The config's :class:`~zoo.datasets.tables.Table` (with its informative columns)."""
        return load_table(self.config.table, seed=seed, rows=self.config.rows)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        t = self.table(seed)
        return self.validate({"x": t.x, "y": t.y})

    def informative_columns(self) -> tuple[int, ...] | None:
        """The columns the label depends on (the synthetic table's first 8), else None."""
        return self.table(0).informative if self.config.table == "synthetic" else None

    # ----- priors, masks, the generative model ----------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"sigma": dist.HalfNormal(1.0)}

    def masks(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context, targets)``: per row, ``K_c`` context columns (B, K_c) and
        ``target_masks`` sets of ``K_t`` target columns each, disjoint from the context
        (B, M, K_t); the sizes are drawn from the configured shares for the whole batch
        (with gradients enabled; their middle otherwise)."""
        c, d = self.config, self.columns
        # sizes drawn in training; the middle of each range otherwise, so that repeated
        # runs of the model (posterior predictive draws, diagnostics) keep their shapes
        drawn = torch.is_grad_enabled()

        def share(lo: float, hi: float) -> float:
            return float(torch.empty(()).uniform_(lo, hi)) if drawn else 0.5 * (lo + hi)

        k_c = max(1, min(d - 1, round(d * share(*c.context_share))))
        k_t = max(1, min(d - k_c, round(d * share(*c.target_share))))
        order = torch.rand(rows, d, device=self.device).argsort(-1)
        context, rest = order[:, :k_c], order[:, k_c:]
        pick = torch.rand(rows, c.target_masks, d - k_c, device=self.device).argsort(-1)[..., :k_t]
        targets = rest.unsqueeze(1).expand(-1, c.target_masks, -1).gather(2, pick)
        return context, targets

    def _ema_update(self) -> None:
        """One EMA step of the target encoder, if the context encoder changed since the last
        call (one optimiser step)."""
        # (the fused Adam kernel does not bump tensor versions: compare a small parameter)
        probe = self.context_encoder.tokenizer.bias.detach()
        seen = self._seen_value
        if seen is not None and seen.shape == probe.shape and torch.equal(seen, probe):
            return
        self._seen_value = probe.clone()
        if seen is None:
            return
        c = self.config
        total = max(1, c.steps or 1)
        m = c.ema_start + (1.0 - c.ema_start) * min(1.0, float(self.ema_steps) / total)
        with torch.no_grad():
            for p_t, p in zip(
                self.target_encoder.parameters(), self.context_encoder.parameters(), strict=True
            ):
                p_t.mul_(m).add_(p.detach(), alpha=1.0 - m)
            self.ema_steps += 1

    def predict(self, x, context, targets):
        """(predicted, target) latents (B, M * K_t, d) of the masked objective."""
        c = self.config
        rows, m, k_t = targets.shape
        with torch.no_grad():
            full = self.target_encoder(x)[:, c.n_reg :]
            full = F.layer_norm(full, full.shape[-1:])
            flat = targets.reshape(rows, m * k_t)
            target = full.gather(1, flat.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        ctx = self.context_encoder(x, context)  # (B, n_reg + K_c, d)
        ctx = ctx.repeat_interleave(m, 0)
        pred = self.predictor(ctx, targets.reshape(rows * m, k_t))
        return pred.reshape(rows, m * k_t, -1), target

    def model(self, batch) -> None:
        if torch.is_grad_enabled():
            self._ema_update()
        sigma = pyro.sample("sigma", self.prior("sigma"))
        x = batch["x"]
        context, targets = self.masks(len(x))
        pred, target = self.predict(x, context, targets)
        with self.data_plate(batch), poutine.scale(scale=1.0 / target.shape[1]):
            # the per-row log-density averaged over the target tokens (the paper's MSE is
            # a mean): the loss keeps one scale whatever the drawn mask sizes
            pyro.sample(
                "x",
                dist.Normal(pred, sigma.unsqueeze(-1).unsqueeze(-1)).to_event(2),
                obs=target,
            )

    def default_guide(self) -> torch.nn.Module:
        import guides

        return guides.build("delta", self)

    # ----- representation -------------------------------------------------------------------

    def embed(self, x, *, encoder: str = "target", pool: str | None = None) -> torch.Tensor:
        """Frozen embeddings of rows ``x`` (N, D): the ``target`` (EMA) or ``context``
        encoder on the full row, pooled by the config's ``pool`` (mean over all output
        tokens, [REG] included; or ``flat``: every token's output concatenated)."""
        pool = pool or self.config.pool
        net = self.target_encoder if encoder == "target" else self.context_encoder
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            h = net(x)
        return h.mean(1) if pool == "mean" else h.flatten(1)

    def evaluate(self, guide, data) -> dict:
        """Collapse measures of the embeddings (spread, effective rank), a linear probe on
        them (a stratified 60/40 split of ``data``, accuracy or R^2) against the raw
        columns, and for the synthetic table the share of the embedding's attribution on the
        informative columns (uniform: 8/32 = 0.25)."""
        from sklearn.model_selection import train_test_split

        x, y = data["x"].cpu().numpy(), data["y"].cpu().numpy()
        z = self.embed(x).cpu().numpy()
        out = {"spread": embedding_spread(z), "effective_rank": effective_rank(z)}
        stratify = y if self.task == "classification" else None
        idx = np.arange(len(x))
        try:
            tr, te = train_test_split(idx, test_size=0.4, random_state=0, stratify=stratify)
            key = "accuracy" if self.task == "classification" else "r2"
            out[f"probe_{key}"] = linear_probe(z[tr], y[tr], z[te], y[te], task=self.task)[key]
            out[f"raw_probe_{key}"] = linear_probe(x[tr], y[tr], x[te], y[te], task=self.task)[key]
        except ValueError:
            pass  # too few rows or classes for a probe
        informative = self.informative_columns()
        if informative is not None:
            share = column_attribution(self, x)
            out["informative_attribution"] = float(share[list(informative)].sum())
        return out

    # ----- new rows, figures ----------------------------------------------------------------

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """A JEPA has no decoder and no density over rows: ``num`` training rows resampled
        with replacement (seeded), so ``zoo sample`` runs; not new data."""
        check_positive_int("num", num)
        size = len(next(iter(data.values())))
        rows = torch.randint(size, (num,), generator=torch.Generator().manual_seed(int(seed)))
        return {k: torch.as_tensor(v)[rows] for k, v in data.items()}

    def figures(self, guide, data, *, idata=None) -> dict:
        """The embedding's attribution over columns (informative ones marked, where known)."""
        return {"attribution": lambda: attribution_figure(self, data["x"])}


def column_attribution(model: TJEPA, x, *, encoder: str = "target") -> np.ndarray:
    """Share of the embedding's input-gradient attribution on each column: the mean over
    rows of ``|d z / d x_j|`` summed over the embedding's dimensions ``z``
    (:meth:`TJEPA.embed`'s mean pool), normalised to sum to 1."""
    net = model.target_encoder if encoder == "target" else model.context_encoder
    x = torch.as_tensor(x, dtype=torch.float32, device=model.device).clone().requires_grad_(True)
    total = torch.zeros(x.shape[1], device=model.device)
    with torch.enable_grad():
        z = net(x).mean(1)
        for k in range(z.shape[1]):
            (grad,) = torch.autograd.grad(z[:, k].sum(), x, retain_graph=True)
            total += grad.abs().mean(0)
    share = total / total.sum()
    return share.detach().cpu().numpy()


def attribution_figure(model: TJEPA, x, others: dict | None = None):
    """Bars of :func:`column_attribution` per column, informative columns shaded; ``others``
    (name -> share per column) drawn beside it."""
    import matplotlib.pyplot as plt

    shares = {"T-JEPA": column_attribution(model, x), **(others or {})}
    fig, ax = plt.subplots(figsize=(8, 2.8))
    width = 0.8 / len(shares)
    cols = np.arange(model.columns)
    for i, (name, share) in enumerate(shares.items()):
        ax.bar(cols + i * width, share, width, label=name)
    informative = model.informative_columns()
    if informative:
        ax.axvspan(min(informative) - 0.5, max(informative) + 0.5, color="0.9", zorder=0)
        ax.text(np.mean(informative), ax.get_ylim()[1] * 0.92, "informative", ha="center")
    ax.axhline(1.0 / model.columns, color="k", lw=0.8, ls=":", label="uniform")
    ax.set_xlabel("column")
    ax.set_ylabel("attribution share")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
