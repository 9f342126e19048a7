"""DNIS as Bayesian matrix factorisation with block-ARD scales (an adaptation).

Cheng, Shen and Huang (2020), "Differentiable Neural Input Search for Recommender Systems",
arXiv:2006.04466. The paper learns a soft selection weight per (frequency block of features,
block of embedding dimensions) on the validation loss (a DARTS-like bi-level problem), then
prunes the dimensions whose weight is small. DNIS is not probabilistic; this is the spec's
probabilistic analogue, and it keeps the paper's three parts: frequency-sorted feature blocks,
dimension blocks scaled by a weight per (feature block, dimension block), and the bi-level
split (embeddings fitted on training batches, the scales on validation batches), followed by
pruning and retraining.

Generative story, for users ``u`` and items ``i`` whose ids are sorted by descending
frequency, feature blocks ``b(.)`` (fractions ``block_fractions`` of the ids) and ``M``
dimension blocks of ``d / M`` dimensions each::

    mu            ~ Normal(0, 5)                        global mean rating
    sigma         ~ HalfNormal(1)                       rating noise
    alpha^U_{k,m} ~ HalfCauchy(1),  alpha^I_{k,m} ~ HalfCauchy(1)     block-ARD scales
    e_u ~ Normal(0, s^2 diag(a^U_{b(u)}^2)), e_i ~ Normal(0, s^2 diag(a^I_{b(i)}^2))
    c_u, c_i      ~ Normal(0, s^2)                      (embeddings, biases: MAP)
    r_ui          ~ Normal(mu + c_u + c_i + <e_u * z_{b(u)}, e_i * z_{b(i)}>, sigma^2)

where ``a_k`` repeats ``alpha_{k,m}`` over the ``d / M`` dimensions of block ``m`` and
``z_k`` is the kept-block mask (all ones until :meth:`DNIS.prune`). The scales enter as the
prior sd of the embeddings (centred ARD), not as a multiplier of them as the spec's sketch
``e * alpha`` with ``e ~ N(0, I)`` has it: with MAP embeddings that form has no pressure to
shrink any block (the product is rotation- and scale-free; measured: no block fell below
0.1 of the largest), while the centred form prunes. So the alphas are learned from the
embeddings' fit, and the validation rows of the bi-level split move them only through the
ELBO's prior term: the split is kept as a schedule, the paper's gradient of the validation
loss through the scales is not. The
embeddings and biases are point estimates (the spec's ``AutoDelta``), carried as module
parameters with their Normal prior as a ``pyro.factor``; ``mu``, ``sigma`` and the alphas are
the sample sites every guide kind covers. :meth:`DNIS.fit_bilevel` alternates steps on the
embeddings (training rows) with steps on the guide of the scales (validation rows);
:meth:`DNIS.prune` then drops dimension blocks whose effective scale (the block's embedding
RMS times the alpha's posterior median, as the spec's pitfall on identifiability advises) is
below ``prune_threshold`` of the largest (each feature block keeps its strongest one), and
the embeddings are refitted with the mask.
``ard=False`` gives the uniform-dimension MF baselines (``dim=0``: the global mean plus
biases predictor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from inference.data import Field, full_batch
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.registry import register


def block_index(n: int, fractions: tuple[float, ...]) -> torch.Tensor:
    """The feature block of each of ``n`` frequency-sorted ids (block 0 the most frequent)."""
    edges = torch.tensor(fractions, dtype=torch.float64).cumsum(0) * n
    ids = torch.arange(n, dtype=torch.float64) + 0.5
    return torch.bucketize(ids, edges).clamp(max=len(fractions) - 1)


def reindex_by_frequency(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_ids, order)``: ids renumbered by descending frequency (block membership assumes
    this); ``order[new] = old``."""
    counts = torch.bincount(torch.as_tensor(ids).long(), minlength=n)
    order = torch.argsort(counts, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    return rank[torch.as_tensor(ids).long()], order


@register
class DNIS(ZooModel):
    """Block-ARD Bayesian matrix factorisation, the probabilistic analogue of DNIS (paper 5).
    See the module doc for the generative story."""

    name = "dnis"
    summary = "DNIS: block-ARD matrix factorisation, bi-level scales, pruned mixed dims"
    paper = 5
    static_structure = True

    tiny = {
        "n_users": 60,
        "n_items": 50,
        "n_ratings": 2000,
        "dim": 8,
        "steps": 30,
        "rounds": 2,
        "batch_size": 256,
    }

    @dataclass
    class Config(TrainConfig):
        n_users: int = 500
        n_items: int = 400
        dim: int = 16  # embedding dimensions d (uniform baselines: 8 or 16; 0: biases only)
        dim_blocks: int = 4  # M
        block_fractions: tuple = (0.1, 0.2, 0.2, 0.2, 0.3)  # K feature blocks by frequency
        ard: bool = True  # block-ARD scales (False: uniform-dimension MF)
        embedding_scale: float = 1.0  # prior sd s of the MAP embeddings and biases
        prune_threshold: float = 0.05  # keep a block whose effective scale >= this x max
        rounds: int = 10  # bi-level rounds of fit_bilevel
        alpha_steps: int = 0  # scale steps per round (0: as many as the embedding steps)
        # the spec's simulation (default_data / simulate)
        n_ratings: int = 50_000
        zipf: float = 1.1
        noise: float = 0.5
        frequent_fraction: float = 0.1
        rank_frequent: int = 8
        rank_rare: int = 2
        # training
        steps: int = 300  # embedding steps per round in fit_bilevel; total for plain fit
        batch_size: int | None = 2048
        lr: float = 0.05
        holdout: float = 0.2

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "n_users", "n_items", "dim_blocks", "n_ratings", "rounds",
                              "rank_frequent")  # fmt: skip
        require_non_negative_ints(c, "dim")
        if c.ard and (c.dim == 0 or c.dim % c.dim_blocks):
            raise ConfigError(f"dim ({c.dim}) must be a positive multiple of dim_blocks "
                              f"({c.dim_blocks}) when ard is on")  # fmt: skip
        fr = tuple(c.block_fractions)
        if not fr or any(f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ConfigError(f"block_fractions must be positive and sum to 1, got {fr}")
        require_positive_numbers(c, "embedding_scale", "noise", "zipf")
        if not 0 <= c.prune_threshold < 1:
            raise ConfigError(f"prune_threshold must be in [0, 1), got {c.prune_threshold!r}")
        if not 0 < c.frequent_fraction < 1:
            raise ConfigError(f"frequent_fraction must be in (0, 1), got {c.frequent_fraction}")
        require_non_negative_ints(c, "alpha_steps")
        if not 1 <= c.rank_rare <= c.rank_frequent:
            raise ConfigError("rank_rare must be in [1, rank_frequent]")

    def __init__(self, config: Any = None, *, priors=None, **overrides: Any):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        gen = torch.Generator().manual_seed(0)
        self.user_emb = nn.Parameter(0.1 * torch.randn(c.n_users, c.dim, generator=gen))
        self.item_emb = nn.Parameter(0.1 * torch.randn(c.n_items, c.dim, generator=gen))
        self.user_bias = nn.Parameter(torch.zeros(c.n_users))
        self.item_bias = nn.Parameter(torch.zeros(c.n_items))
        fr = tuple(c.block_fractions)
        self.register_buffer("user_block", block_index(c.n_users, fr))
        self.register_buffer("item_block", block_index(c.n_items, fr))
        self.register_buffer("user_mask", torch.ones(len(fr), c.dim_blocks))
        self.register_buffer("item_mask", torch.ones(len(fr), c.dim_blocks))

    # ----- data and priors ----------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "user": Field(dtype="int", support=constraints.integer_interval(0, c.n_users - 1),
                          doc="user id, sorted by descending frequency"),
            "item": Field(dtype="int", support=constraints.integer_interval(0, c.n_items - 1),
                          doc="item id, sorted by descending frequency"),
            "rating": Field(doc="observed rating"),
        }  # fmt: skip

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("rating",)

    def default_priors(self) -> dict[str, dist.Distribution]:
        priors = {"mu": dist.Normal(0.0, 5.0), "sigma": dist.HalfNormal(1.0)}
        if self.config.ard:
            shape = (len(self.config.block_fractions), self.config.dim_blocks)
            priors["alpha_user"] = dist.HalfCauchy(1.0).expand(shape).to_event(2)
            priors["alpha_item"] = dist.HalfCauchy(1.0).expand(shape).to_event(2)
        return priors

    # ----- the model ----------------------------------------------------------------------

    def _scales(self, alpha: torch.Tensor, mask: torch.Tensor, block: torch.Tensor):
        """Per-row dimension scales ``(L, B, d)`` from ``alpha (L, K, M)`` and the rows'
        feature blocks ``(B,)``."""
        a = (alpha * mask)[:, block, :]
        return a.repeat_interleave(self.config.dim // self.config.dim_blocks, dim=-1)

    def predict(self, user, item, mu, alpha_user=None, alpha_item=None) -> torch.Tensor:
        """Mean rating of the (user, item) rows; the sites' leading (particle) dims kept."""
        mean = self.user_bias[user] + self.item_bias[item]
        if self.config.dim:
            eu, ei = self.user_emb[user], self.item_emb[item]
            if self.config.ard:
                inner = (
                    eu
                    * ei
                    * self._dim_mask(self.user_mask, self.user_block[user])
                    * self._dim_mask(self.item_mask, self.item_block[item])
                ).sum(-1)
            else:
                inner = (eu * ei).sum(-1)
            mean = mean + inner
        return mu + mean

    def _dim_mask(self, mask, block):
        return mask[block].repeat_interleave(self.config.dim // self.config.dim_blocks, -1)

    def embedding_log_prior(self, alpha_user=None, alpha_item=None) -> torch.Tensor:
        s = self.config.embedding_scale
        prior = dist.Normal(0.0, s)
        total = prior.log_prob(self.user_bias).sum() + prior.log_prob(self.item_bias).sum()
        if not self.config.dim:
            return total
        if not self.config.ard:
            return total + prior.log_prob(self.user_emb).sum() + prior.log_prob(self.item_emb).sum()
        k, m = alpha_user.shape[-2:]
        for alpha, emb, block in (
            (alpha_user, self.user_emb, self.user_block),
            (alpha_item, self.item_emb, self.item_block),
        ):
            scale = self._scales(alpha.reshape(-1, k, m), torch.ones(k, m), block) * s
            lp = dist.Normal(0.0, scale).log_prob(emb).sum((-1, -2))
            total = total + (lp.reshape(alpha.shape[:-2]) if alpha.dim() > 2 else lp[0])
        return total

    def model(self, batch) -> None:
        mu = pyro.sample("mu", self.prior("mu"))
        sigma = pyro.sample("sigma", self.prior("sigma"))
        alphas = {}
        if self.config.ard:
            alphas["alpha_user"] = pyro.sample("alpha_user", self.prior("alpha_user"))
            alphas["alpha_item"] = pyro.sample("alpha_item", self.prior("alpha_item"))
        pyro.factor("embedding_prior", self.embedding_log_prior(**alphas))
        with self.data_plate(batch):
            mean = self.predict(batch["user"], batch["item"], mu, **alphas)
            pyro.sample("rating", dist.Normal(mean, sigma), obs=batch["rating"])

    # ----- data ---------------------------------------------------------------------------

    def true_ranks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The simulation's true rank of each user and each item (frequent ids: the top
        ``frequent_fraction`` by popularity)."""
        c = self.config

        def ranks(n):
            r = torch.full((n,), c.rank_rare)
            r[: max(1, round(c.frequent_fraction * n))] = c.rank_frequent
            return r

        return ranks(c.n_users), ranks(c.n_items)

    def true_block_dims(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dimension blocks each feature block needs to hold its true rank:
        ``ceil(max rank in block / (d / M))`` for users and items."""
        c = self.config
        width = max(1, c.dim // c.dim_blocks)
        out = []
        for ranks, block in zip(self.true_ranks(), (self.user_block, self.item_block), strict=True):
            k = len(c.block_fractions)
            top = torch.zeros(k, dtype=torch.long).scatter_reduce(0, block, ranks, "amax")
            out.append(torch.div(top + width - 1, width, rounding_mode="floor"))
        return out[0], out[1]

    def simulate(self, seed: int = 0):
        """``(truth, data)``: Zipf popularity over ids (id 0 the most popular), true factors
        of rank ``rank_frequent`` for the frequent ids and ``rank_rare`` otherwise, biases,
        and ``n_ratings`` noisy ratings. ``truth`` holds mu, sigma and (with ``ard``) the
        ARD scales the true factors imply; the true ranks are :meth:`true_ranks`."""
        c = self.config
        g = torch.Generator().manual_seed(int(seed))
        ranks_u, ranks_i = self.true_ranks()
        rank = c.rank_frequent

        def factors(ranks):
            f = torch.randn(len(ranks), rank, generator=g) / rank**0.25
            return f * (torch.arange(rank) < ranks[:, None])

        fu, fi = factors(ranks_u), factors(ranks_i)
        bu = 0.3 * torch.randn(c.n_users, generator=g)
        bi = 0.3 * torch.randn(c.n_items, generator=g)
        pu = 1.0 / torch.arange(1, c.n_users + 1, dtype=torch.float64) ** c.zipf
        pi = 1.0 / torch.arange(1, c.n_items + 1, dtype=torch.float64) ** c.zipf
        user = torch.multinomial(pu, c.n_ratings, replacement=True, generator=g)
        item = torch.multinomial(pi, c.n_ratings, replacement=True, generator=g)
        mu = 3.5
        mean = mu + bu[user] + bi[item] + (fu[user] * fi[item]).sum(-1)
        rating = mean + c.noise * torch.randn(c.n_ratings, generator=g)
        truth = {"mu": torch.tensor(mu), "sigma": torch.tensor(c.noise)}
        if c.ard:
            truth["alpha_user"] = self._true_alpha(fu, self.user_block)
            truth["alpha_item"] = self._true_alpha(fi, self.item_block)
        return truth, self.validate({"user": user, "item": item, "rating": rating})

    def _true_alpha(self, factors: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """The ARD scales the simulation implies: the RMS of the true factors (padded with
        zeros to ``dim``) in each (feature block, dimension block), over the prior's
        ``embedding_scale``; blocks the truth leaves empty get 1e-3 (their true spread is 0,
        outside the HalfCauchy's support). The true ranks: :meth:`true_ranks`."""
        c = self.config
        padded = torch.zeros(len(factors), c.dim)
        used = min(c.dim, factors.shape[1])
        padded[:, :used] = factors[:, :used]
        width = c.dim // c.dim_blocks
        per_dim_block = padded.pow(2).reshape(len(factors), c.dim_blocks, width).mean(-1)
        k = len(c.block_fractions)
        sums = torch.zeros(k, c.dim_blocks).index_add_(0, block, per_dim_block)
        counts = torch.bincount(block, minlength=k).clamp_min(1).unsqueeze(-1)
        return ((sums / counts).sqrt() / c.embedding_scale).clamp_min(1e-3)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.simulate(seed)[1]

    # ----- bi-level fit, pruning, evaluation ----------------------------------------------

    def fit_bilevel(self, guide, train, val, *, seed: int = 0, **options: Any) -> list[float]:
        """Alternate ``rounds`` of ``steps`` SVI steps on the embeddings and biases (model
        parameters, training rows) with ``alpha_steps`` steps on the guide (the scales, mu,
        sigma; validation rows), each through :func:`inference.svi.fit` with ``trainable``.
        Returns the training losses."""
        from inference.svi import fit

        c = self.config
        losses: list[float] = []
        opts = {"batch_size": c.batch_size, "lr": c.lr, "progress": False, **options}
        for r in range(c.rounds):
            out = fit(self, guide, train, steps=c.steps, trainable=["model."],
                      seed=seed * 1000 + 2 * r, **opts)  # fmt: skip
            losses += out.losses
            fit(self, guide, val, steps=c.alpha_steps or c.steps, trainable=["guide."],
                seed=seed * 1000 + 2 * r + 1, **opts)  # fmt: skip
        return losses

    def alpha_medians(self, guide, data) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {k: v.detach() for k, v in guide.median(full_batch(data)).items()}

    def effective_scales(self, guide, data) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, M)`` effective scales per side: alpha's posterior median times the RMS of
        the embeddings of the block's features over the block's dimensions."""
        med = self.alpha_medians(guide, data)
        c = self.config
        k, m, w = len(c.block_fractions), c.dim_blocks, c.dim // c.dim_blocks
        out = []
        for side, emb, block in (("user", self.user_emb, self.user_block),
                                 ("item", self.item_emb, self.item_block)):  # fmt: skip
            sq = emb.detach().pow(2).reshape(-1, m, w).mean(-1)  # (n, M)
            ms = torch.zeros(k, m).index_add(0, block, sq) / torch.bincount(block, minlength=k)[
                :, None
            ].clamp(min=1)
            out.append(med[f"alpha_{side}"] * ms.sqrt())
        return out[0], out[1]

    def prune(self, guide, data) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero the dimension blocks whose effective scale is below ``prune_threshold`` of
        the side's largest (each feature block keeps at least its strongest); returns the
        kept-block masks ``(K, M)`` for users and items."""
        if not self.config.ard:
            raise ValueError("prune needs ard=True (the uniform model has no scales)")
        su, si = self.effective_scales(guide, data)
        t = self.config.prune_threshold
        for mask, scale in ((self.user_mask, su), (self.item_mask, si)):
            keep = scale >= t * scale.max()
            keep |= scale == scale.max(-1, keepdim=True).values  # each block keeps its best
            mask.copy_(keep.float())
        return self.user_mask.clone(), self.item_mask.clone()

    def embedding_params(self) -> int:
        """Embedding parameters in use (kept dimensions of every user and item)."""
        c = self.config
        if not c.ard:
            return (c.n_users + c.n_items) * c.dim
        w = c.dim // c.dim_blocks
        kept_u = self.user_mask.sum(-1)[self.user_block].sum()
        kept_i = self.item_mask.sum(-1)[self.item_block].sum()
        return int((kept_u + kept_i) * w)

    def rmse(self, guide, data) -> float:
        med = self.alpha_medians(guide, data)
        alphas = {k: med[k] for k in ("alpha_user", "alpha_item") if k in med}
        with torch.no_grad():
            pred = self.predict(data["user"], data["item"], med["mu"], **alphas)
            return float((pred - data["rating"]).pow(2).mean().sqrt())

    def evaluate(self, guide, data) -> dict:
        """Rating RMSE (the paper's MovieLens metric), embedding parameters in use and, with
        ARD, the dimension blocks kept per feature block."""
        out = {"rmse": self.rmse(guide, data), "embedding_params": self.embedding_params()}
        if self.config.ard:
            for side in ("user", "item"):
                kept = getattr(self, f"{side}_mask").sum(-1)
                for k, v in enumerate(kept.tolist()):
                    out[f"kept_blocks_{side}_{k}"] = v
        return out

    def dims(self) -> dict[str, list[str]]:
        return {"alpha_user": ["feature_block", "dim_block"],
                "alpha_item": ["feature_block", "dim_block"]}  # fmt: skip


def three_way_split(data, seed: int = 0, *, val: float = 0.1, test: float = 0.2):
    """``(train, val, test)`` rows of ``data``, seeded (the bi-level split's three sets)."""
    n = len(data["rating"])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_test, n_val = int(round(test * n)), int(round(val * n))
    parts = perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]
    return tuple({k: v[idx] for k, v in data.items()} for idx in parts)
