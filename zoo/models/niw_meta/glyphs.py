"""NIW-Meta few-shot classification on synthetic glyphs: many base classes, so learned
features can transfer (the zoo's Omniglot setting).

Kim & Hospedales (ICLR 2024). The glyph classes are split in three disjoint blocks:
``base_classes`` for meta-training (and the supervised pre-training every method starts
from), ``val_classes`` for validation episodes (every tuned setting of every arm),
``test_classes`` for meta-test episodes. :meth:`NIWMetaGlyphs.digit_episodes` gives an
out-of-distribution test: the ten ``load_digits`` classes upsampled to the glyph frame.

**What theta is (``theta="adapter"``, the default).** In the paper theta is the network
(a ViT under PMF, whose classifier is ProtoNet's prototype readout), with a diagonal NIW
over it. Here theta_i is the network's top layer, an episode-wise linear adapter
``f_i(x) = scale * normalize(h(x) W_i + b_i)`` on the conv trunk's output ``h`` (``H = feat_dim``,
``D = H (H + 1)``), read out by prototypes::

    lambda_k ~ Gamma(nu0 / 2, psi0 / 2),  mu_k | lambda_k ~ Normal(mu0, (kappa0 lambda_k)^-1)
    theta_i | mu, lambda ~ Normal(mu, diag(lambda)^-1)                 (episode plate)
    y | x, support_i, theta_i ~ Categorical(-s |f_i(x) - c_ik|^2)      (c_ik: class-k mean
                                                                        of f_i over the support)

The trunk ``h`` and the readout's inverse temperature ``s`` are shared point estimates (like
a VAE decoder's weights). The local step is the paper's: a detached SGLD run on the support
likelihood times the prior ``N(m0, E_q[Lambda]^-1)`` (preconditioned by the prior variance,
chains started at prior draws), its Gaussian moments with the prior divided out as the
quadratic surrogate ``(mbar_i, Abar_i)``, and the closed form ``V_i = (Abar_i + P)^-1``,
``m_i = V_i (Abar_i mbar_i + P m0)``; q(phi) starts at the identity adapter with
``E_q[Lambda] = prior_precision_init`` (the paper's large ``gam0_init``). Prediction averages
the readout over ``test_samples`` draws of ``q_i`` (the paper's ``nsamps_test``).

**Why not the per-class softmax head (``theta="head"``, the digits model's head-only
step).** Measured on validation glyph episodes (5-way 1-shot, 200 episodes, pre-trained 32-d
features of norm 8, one seed): with the head's NIG prior at its initial unit variance, the
local posterior's *mean* head scores 0.886 accuracy (ECE 0.009), but the predictive that
averages sampled heads only 0.762 (ECE 0.28): a 1-shot support spans 5 of the 32 feature
directions, in the others the local posterior is the prior, and a query's component there
(norm ~6) times weights of sd ~1 gives logit noise of sd ~5, as large as the signal.
Shrinking the prior does not help (noise falls like its sd, signal like its variance): 300
steps of meta-training shrink it to 0.34 and leave 0.755; a smaller ``feat_dim`` gives worse
pre-trained features (8: 0.62 sampled / 0.71 mean; 16: 0.74 / 0.85). With the features
trained too, the head model collapses to chance (0.21 after 300 steps, KL only 6-19 nats per
episode): under logit noise of sd ~5 the expected query log-likelihood is below the uniform
guess's ``-log ways``, so the bound is best served by features that say nothing. A head
prior per class row is also not exchangeable across the episode's randomly ordered classes.
The adapter with a prototype readout has neither problem: its posterior lives in the
network, the readout needs no per-class parameters (one trained model serves 5- and 20-way
episodes), and at the same 300 steps it reaches 0.952 (ECE 0.013) on the same validation
episodes. ``theta="head"`` stays for comparison.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroParam
from torch import nn
from torch.distributions import constraints

from inference.data import full_batch
from zoo.base import ConfigError, require_positive_ints
from zoo.datasets.glyphs import MAX_CLASSES, glyph_set
from zoo.models.niw_meta.digits import (
    NIWMetaDigits,
    _digits_by_class,
    meta_train_inner_loop,
    sgld_moments,
    train_softmax_backbone,
)
from zoo.registry import register

__all__ = [
    "ConvFeatureNet",
    "NIWMetaGlyphs",
    "episodes_from_pool",
    "episode_logreg_logits",
    "train_anil",
]

DIGIT_CLASSES = 10
THETAS = ("adapter", "head")


def episodes_from_pool(
    images: np.ndarray, num: int, ways: int, shots: int, queries: int, seed: int
) -> dict[str, np.ndarray]:
    """``num`` ``ways``-way episodes from a class pool ``images`` ``(C, n, P)``: ``shots``
    support and ``queries`` query images per class (distinct images), labels ``0..ways-1``
    in a random class order."""
    classes, per_class, pixels = images.shape
    if ways > classes or shots + queries > per_class:
        raise ConfigError(
            f"an episode of ways={ways}, shots + queries={shots + queries} cannot be filled "
            f"from {classes} classes of {per_class} images each; valid range ways <= "
            f"{classes}, shots + queries <= {per_class}"
        )
    rng = np.random.default_rng(seed)
    cls = np.argsort(rng.random((num, classes)), axis=1)[:, :ways]  # (num, ways)
    pick = np.argsort(rng.random((num, ways, per_class)), axis=2)[..., : shots + queries]
    chosen = images[cls[..., None], pick]  # (num, ways, shots + queries, P)
    xs = chosen[:, :, :shots].reshape(num, ways * shots, pixels)
    xq = chosen[:, :, shots:].reshape(num, ways * queries, pixels)
    ys = np.repeat(np.arange(ways), shots)[None].repeat(num, 0)
    yq = np.repeat(np.arange(ways), queries)[None].repeat(num, 0)
    return {"x_support": np.ascontiguousarray(xs), "y_support": ys,
            "x_query": np.ascontiguousarray(xq), "y_query": yq}  # fmt: skip


@functools.lru_cache(maxsize=2)
def digit_pool(side: int) -> np.ndarray:
    """The ten ``load_digits`` classes upsampled (bilinear) to ``side x side``: ``(10, n,
    side * side)`` with ``n`` the smallest class's count (the classes are trimmed to it)."""
    pools = _digits_by_class()
    n = min(len(v) for v in pools.values())
    x = torch.as_tensor(np.stack([pools[k][:n] for k in range(DIGIT_CLASSES)]))
    up = nn.functional.interpolate(x.reshape(-1, 1, 8, 8), size=(side, side), mode="bilinear",
                                   align_corners=False)  # fmt: skip
    out = up.clamp(0, 1).reshape(DIGIT_CLASSES, n, side * side).numpy()
    out.setflags(write=False)
    return out


class ConvFeatureNet(nn.Module):
    """A small conv net: ``side x side`` image -> 3x3 conv (``channels``, stride 2) -> ReLU
    -> 3x3 conv (``2 channels``, stride 2) -> ReLU -> linear ``feat_dim``, L2-normalised and
    multiplied by ``scale`` (the digits model's cosine-type feature)."""

    def __init__(self, side: int, channels: int, feat_dim: int, scale: float):
        super().__init__()
        out = (((side + 1) // 2) + 1) // 2
        self.side, self.scale = side, scale
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * out * out, feat_dim),
        )

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output before the normalisation, ``(..., feat_dim)``."""
        lead = x.shape[:-1]
        h = self.net(x.reshape(-1, 1, self.side, self.side))
        return h.reshape(lead + h.shape[-1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.normalize(self.raw(x), dim=-1)


def _pretrained_state(key: tuple, images: np.ndarray, steps: int) -> dict:
    """Supervised pre-training on the base classes (a softmax over all of them, Adam,
    batches of 128), from seed 0; the state dict is cached by ``key``."""
    if key in _PRETRAINED:
        return _PRETRAINED[key]
    side, channels, feat_dim, scale = key[:4]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = ConvFeatureNet(side, channels, feat_dim, scale)
        if steps:
            classes, per_class, _ = images.shape
            x = torch.as_tensor(images.reshape(classes * per_class, -1).copy())
            y = torch.arange(classes).repeat_interleave(per_class)
            train_softmax_backbone(net, x, y, feat_dim, steps, seed=0)
    _PRETRAINED[key] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return _PRETRAINED[key]


_PRETRAINED: dict[tuple, dict] = {}


@register
class NIWMetaGlyphs(NIWMetaDigits):
    """NIW-Meta few-shot classifier on synthetic stroke glyphs (Kim & Hospedales, ICLR 2024):
    a diagonal NIW over an episode-wise top layer of a conv network with a prototype readout
    (``theta="adapter"``; ``"head"``: the digits model's per-class softmax head), the SGLD
    quadratic local step, meta-trained on hundreds of base glyph classes and tested on
    held-out glyph classes (and on load_digits as out-of-distribution classes). See the module
    doc of :mod:`zoo.models.niw_meta.glyphs`."""

    name = "niw_meta_glyphs"
    summary = "NIW-Meta few-shot glyphs: many base classes, conv features, SGLD local step"
    paper = 7

    tiny = {
        "base_classes": 30,
        "val_classes": 10,
        "test_classes": 10,
        "per_class": 8,
        "pretrain_steps": 5,
        "num_episodes": 40,
        "test_episodes": 10,
        "sgld_chains": 2,
        "channels": 4,
        "feat_dim": 4,
    }

    @dataclass
    class Config(NIWMetaDigits.Config):
        ways: int = 5
        shots: int = 1
        queries: int = 5
        side: int = 20  # glyph images are side x side
        base_classes: int = 600  # meta-training (and pre-training) glyph classes
        val_classes: int = 200  # validation episodes' classes
        test_classes: int = 300  # meta-test episodes' classes
        per_class: int = 20  # images per glyph class
        channels: int = 16  # first conv layer's channels (the second has twice as many)
        feat_dim: int = 32
        pretrain_steps: int = 300
        num_episodes: int = 1000
        test_episodes: int = 600
        baseline_steps: int = 0  # evaluate's ProtoNet / MAML steps (0: skip)
        train_features: bool = True  # False: the pre-trained conv trunk stays fixed
        theta: str = "adapter"  # "adapter" (top layer + prototype readout) or "head"
        psi0: float = 0.004  # E_p[precision] = nu0 / psi0 = 1000: theta starts near m0
        prior_precision_init: float = 1000.0  # the guide's initial E_q[precision]
        sgld_step_size: float = 0.1
        batch_size: int = 16
        epochs: float = 3.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        # the prototype readout's log inverse temperature (a point estimate, like the trunk)
        self.log_scale = nn.Parameter(torch.zeros(()))

    @property
    def dim(self) -> int:
        c = self.config
        if c.theta == "head":
            return super().dim
        return c.feat_dim * (c.feat_dim + 1)

    def coords(self, data) -> dict:
        c = self.config
        if c.theta == "head":
            return super().coords(data)
        names = [f"w{i}_{j}" for i in range(c.feat_dim) for j in range(c.feat_dim)]
        return {"head": names + [f"b{j}" for j in range(c.feat_dim)]}

    def default_guide(self):
        guide = super().default_guide()
        c = self.config
        if c.theta == "adapter" and c.local_step == "sgld" and c.covariance == "diag":
            # q(phi) starts at the identity adapter and prior precision prior_precision_init
            # (the paper's gam0_init: theta_i ~ m0 early), Gamma shape 3
            eye = torch.eye(c.feat_dim)
            guide.m0 = PyroParam(torch.cat([eye.flatten(), torch.zeros(c.feat_dim)]))
            guide.rate = PyroParam(torch.full((self.dim,), 3.0 / c.prior_precision_init),
                                   constraint=constraints.positive)  # fmt: skip
        return guide

    @property
    def pixels(self) -> int:
        return self.config.side**2

    @property
    def max_ways(self) -> int:
        c = self.config
        return min(c.base_classes, c.val_classes, c.test_classes)

    def check_config(self) -> None:
        c = self.config
        total = c.base_classes + c.val_classes + c.test_classes
        for key in ("base_classes", "val_classes", "test_classes"):
            if getattr(c, key) < 2:
                raise ConfigError(f"{key} must be >= 2, got {getattr(c, key)}")
        if total > MAX_CLASSES:
            raise ConfigError(
                f"base_classes + val_classes + test_classes = {total} exceeds the glyph "
                f"generator's {MAX_CLASSES} distinct classes; valid range [6, {MAX_CLASSES}]"
            )
        if not 8 <= c.side <= 64:
            raise ConfigError(f"side must be in [8, 64], got {c.side}")
        require_positive_ints(c, "channels")
        if c.theta not in THETAS:
            raise ConfigError(f"theta must be one of {THETAS}, got '{c.theta}'")
        if c.theta == "adapter" and c.covariance != "diag":
            raise ConfigError("theta='adapter' needs covariance='diag' (the paper's diagonal "
                              f"NIW at scale), got '{c.covariance}'")  # fmt: skip
        if c.shots + c.queries > c.per_class:
            raise ConfigError(
                f"shots + queries = {c.shots + c.queries} exceeds per_class = {c.per_class} "
                f"images per glyph class; valid range shots + queries <= {c.per_class}"
            )
        super().check_config()

    # ----- data ---------------------------------------------------------------------------

    def glyphs(self) -> np.ndarray:
        """The fixed glyph set ``(classes, per_class, side * side)`` (cached)."""
        c = self.config
        return glyph_set(c.base_classes + c.val_classes + c.test_classes, c.per_class, c.side)

    def pool(self, split: str) -> np.ndarray:
        """The images of the ``"base"``, ``"val"`` or ``"test"`` glyph classes."""
        c = self.config
        bounds = {"base": (0, c.base_classes),
                  "val": (c.base_classes, c.base_classes + c.val_classes),
                  "test": (c.base_classes + c.val_classes, None)}  # fmt: skip
        if split not in bounds:
            raise ConfigError(f"split must be one of {sorted(bounds)}, got '{split}'")
        start, stop = bounds[split]
        return self.glyphs()[start:stop]

    def episodes(self, split: str, num: int, seed: int, ways: int | None = None) -> dict:
        """``num`` validated episodes of the model's shape from the ``split`` class pool
        (``"base"``, ``"val"``, ``"test"`` glyphs or ``"digits"``)."""
        c = self.config
        images = digit_pool(c.side) if split == "digits" else self.pool(split)
        ways = c.ways if ways is None else ways
        return self.validate(episodes_from_pool(images, num, ways, c.shots, c.queries, seed))

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Meta-train episodes from the base glyph classes."""
        return self.episodes("base", self.config.num_episodes, seed)

    def novel_episodes(self, num: int | None = None, seed: int = 12345, images=None) -> dict:
        """Meta-test episodes from the held-out test glyph classes."""
        return self.episodes("test", self.config.test_episodes if num is None else num, seed)

    def digit_episodes(self, num: int | None = None, seed: int = 12345) -> dict:
        """Out-of-distribution test episodes: the ten load_digits classes in the glyph frame
        (a one-line error if ``ways`` > 10)."""
        c = self.config
        if c.ways > DIGIT_CLASSES:
            raise ConfigError(f"digit episodes need ways <= {DIGIT_CLASSES}, got {c.ways}")
        return self.episodes("digits", c.test_episodes if num is None else num, seed)

    # ----- features -----------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``theta="head"``: the normalised features of images ``x``; ``"adapter"``: the
        trunk's output before the episode's adapter. Constants unless ``train_features``."""
        out = self.features_net(x) if self.config.theta == "head" else self.features_net.raw(x)
        return out if self.config.train_features else out.detach()

    def adapt(self, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The episode's top layer: ``scale * normalize(h W + b)`` for trunk outputs ``h``
        ``(..., n, H)`` and flat adapters ``theta`` ``(..., H * H + H)``."""
        k = self.config.feat_dim
        w = theta[..., : k * k].reshape(theta.shape[:-1] + (k, k))
        out = h @ w + theta[..., k * k :].unsqueeze(-2)
        return self.config.feature_scale * nn.functional.normalize(out, dim=-1)

    def proto_logits(self, hs, ys, hq, theta) -> torch.Tensor:
        """Prototype readout (ProtoNet's classifier, as in the paper's PMF runs): ``-s |f(x)
        - c_k|^2`` with ``c_k`` the mean adapted support feature of class ``k`` and ``s`` the
        learned inverse temperature; ``hq`` may be the support itself."""
        fs, fq = self.adapt(hs, theta), self.adapt(hq, theta)
        onehot = nn.functional.one_hot(ys, self.config.ways).to(fs.dtype)
        protos = onehot.mT @ fs / onehot.sum(-2).unsqueeze(-1)
        dist2 = ((fq.unsqueeze(-2) - protos.unsqueeze(-3)) ** 2).sum(-1)
        return -self.log_scale.exp() * dist2

    def likelihood(self, batch, theta: torch.Tensor) -> None:
        if self.config.theta == "head":
            return super().likelihood(batch, theta)
        hs, ys = self.features(batch["x_support"]), batch["y_support"]
        for part in ("support", "query"):
            logits = self.proto_logits(hs, ys, self.features(batch[f"x_{part}"]), theta)
            pyro.sample(
                f"y_{part}", dist.Categorical(logits=logits).to_event(1), obs=batch[f"y_{part}"]
            )

    def support_moments(self, batch, prior_mean: torch.Tensor, prior_precision: torch.Tensor):
        """``theta="adapter"``: the SGLD run on the support's prototype likelihood times the
        prior ``N(m0, P^-1)``, preconditioned by ``P^-1``, its chains started at draws of
        the prior (so their spread is the prior's where the support says nothing), and the
        prior divided out (``Abar = 1/v - p``, ``Abar mbar = m/v - p m0``; where the run
        shows no information, ``Abar = 0`` and the local posterior is the prior)."""
        c = self.config
        if c.theta == "head":
            return super().support_moments(batch, prior_mean, prior_precision)
        hs, ys = self.features(batch["x_support"]).detach(), batch["y_support"]
        p = prior_precision.detach()
        m0 = prior_mean.detach()
        m0 = m0.expand(torch.broadcast_shapes(m0.shape, ys.shape[:1] + (self.dim,)))
        scale = self.log_scale.detach()

        def log_post(theta):  # (chains, B, D) -> (chains, B)
            fs = fq = self.adapt(hs, theta)  # the support scored on its own prototypes
            onehot = nn.functional.one_hot(ys, c.ways).to(fs.dtype)
            protos = onehot.mT @ fs / onehot.sum(-2).unsqueeze(-1)
            logits = -scale.exp() * ((fq.unsqueeze(-2) - protos.unsqueeze(-3)) ** 2).sum(-1)
            log_lik = dist.Categorical(logits=logits).log_prob(ys).sum(-1)
            return log_lik - 0.5 * ((theta - m0) ** 2 * p).sum(-1)

        mean, precision = sgld_moments(
            log_post, m0, steps=c.sgld_steps, burnin=c.sgld_burnin, step_size=c.sgld_step_size,
            chains=c.sgld_chains, a_min=1e-6, a_max=c.a_max + float(p.max()),
            preconditioner=p.reciprocal(), init_sd=p.rsqrt(),
        )  # fmt: skip
        raw = precision - p
        informed = raw > 1e-6 * p
        abar = torch.where(informed, raw, torch.zeros_like(raw)).clamp(1e-6, c.a_max)
        mbar = torch.where(informed, (precision * mean - p * m0) / raw.clamp_min(1e-12), m0)
        return mbar, abar

    def predict_proba(self, guide, data, num_samples: int | None = None, seed: int = 0):
        """Query class probabilities ``(N, ways * queries, ways)`` given each episode's
        support only: the mean over ``num_samples`` draws of the local posterior of the
        prototype (``"adapter"``) or softmax-head (``"head"``) probabilities."""
        if self.config.theta == "head":
            return super().predict_proba(guide, data, num_samples, seed)
        num_samples = self.config.test_samples if num_samples is None else num_samples
        batch = full_batch(data)
        total = 0.0
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            hs, hq = self.features(batch["x_support"]), self.features(batch["x_query"])
            for _ in range(num_samples):
                theta = poutine.trace(guide).get_trace(batch).nodes["theta"]["value"]
                total = total + self.proto_logits(hs, batch["y_support"], hq, theta).softmax(-1)
        return total / num_samples

    def initial_features(self) -> nn.Module:
        """The conv net every method starts from, pre-trained (supervised, all base classes,
        ``pretrain_steps``) once per configuration and copied."""
        c = self.config
        key = (c.side, c.channels, c.feat_dim, c.feature_scale, c.base_classes, c.per_class,
               c.pretrain_steps)  # fmt: skip
        net = ConvFeatureNet(c.side, c.channels, c.feat_dim, c.feature_scale)
        net.load_state_dict(_pretrained_state(key, self.pool("base"), c.pretrain_steps))
        return net


# ----- baselines that need a feature network but not a likelihood --------------------------


def episode_logreg_logits(
    fs: torch.Tensor, ys: torch.Tensor, fq: torch.Tensor, ways: int, l2: float, steps: int = 100
) -> torch.Tensor:
    """A linear softmax head fitted per episode (batched): L2-penalised (``l2`` times the
    squared weights) support cross-entropy minimised by L-BFGS from zero; returns query
    logits ``(N, Q, ways)``. The pooled network fine-tuned per episode (its head)."""
    fs, fq = fs.detach(), fq.detach()
    n, _, h = fs.shape
    w = torch.zeros(n, h + 1, ways, requires_grad=True)
    ones_s = torch.ones(fs.shape[:-1] + (1,))
    xs = torch.cat([fs, ones_s], -1)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xs @ w
        loss = nn.functional.cross_entropy(logits.mT, ys, reduction="none").mean(-1).sum()
        loss = loss + l2 * (w[:, :-1] ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    xq = torch.cat([fq, torch.ones(fq.shape[:-1] + (1,))], -1)
    return (xq @ w).detach()


def train_anil(model: NIWMetaGlyphs, data, *, steps: int, batch_size: int, inner_steps: int = 5,
               inner_lr: float = 0.5, lr: float = 1e-3, seed: int = 0):  # fmt: skip
    """MAML with the inner loop on the head (ANIL, Raghu et al. 2020): a linear ``ways``-way
    head (learned initial weights) adapted per episode by ``inner_steps`` gradient steps on
    the support cross-entropy with a meta-learned step size, differentiated through the
    inner loop (second order in the head); the outer loop trains the feature network, the
    head's initial value and the step size on query cross-entropy. Returns an
    :class:`~zoo.models.niw_meta.digits.EpisodePredictor` whose ``logits(episodes,
    inner_lr=None)`` adapts with the learned or a given step size."""
    torch.manual_seed(seed)
    c = model.config
    net = model.initial_features()
    w0 = torch.zeros(c.feat_dim + 1, c.ways, requires_grad=True)
    log_lr = torch.tensor(float(np.log(inner_lr)), requires_grad=True)
    opt = torch.optim.Adam([*net.parameters(), w0, log_lr], lr=lr)

    def with_bias(f):
        return torch.cat([f, torch.ones(f.shape[:-1] + (1,))], -1)

    def adapted(episodes, create_graph, step_size=None):
        step = log_lr.exp() if step_size is None else torch.as_tensor(step_size)
        fs, fq = with_bias(net(episodes["x_support"])), with_bias(net(episodes["x_query"]))
        w = w0.expand((len(fs),) + w0.shape)
        if not create_graph:
            w = w.detach().requires_grad_()
            fs = fs.detach()
        for _ in range(inner_steps):
            loss = nn.functional.cross_entropy((fs @ w).mT, episodes["y_support"],
                                               reduction="none").mean(-1).sum()  # fmt: skip
            (grad,) = torch.autograd.grad(loss, w, create_graph=create_graph)
            w = w - step * grad
        return fq @ w

    return meta_train_inner_loop(adapted, opt, log_lr, data, batch_size, steps, seed)
