"""SIE as a two-view latent model: a shared invariant part and equivariant parts tied by a
transformation that a hypernetwork predicts from the known group element (paper 16).

Garrido, Najman & LeCun (ICML 2023), "Self-supervised learning of Split Invariant
Equivariant representations" (code: facebookresearch/SIE). An adaptation: the paper is a
joint-embedding method (VICReg terms, a hypernetwork predictor between the equivariant
parts); here it is the spec's probabilistic analogue, a two-view latent variable model with
a likelihood in place of VICReg's anti-collapse terms. For pair n with views
:math:`x_{n1}, x_{n2} \\in R^{64}` and known relative group element :math:`g_n`::

    c_n    ~ Normal(0, I_{d_c})                       invariant part, shared by both views
    s_n1   ~ Normal(0, I_{d_s})                       equivariant part of view 1
    s_n2   ~ Normal(H(g_n) s_n1, tau^2 I)             view 2's, moved by the group element
    x_nv   ~ Normal(Dec([c_n, s_nv]), sigma^2 I)      v = 1, 2

with the paper's "linear" hypernetwork :math:`H(g) = \\sum_m \\phi_m(g) A_m`, the
:math:`A_m` learned :math:`d_s \\times d_s` matrices (``hyper``), on the features
:math:`\\phi(g) = (\\cos\\Delta\\theta, \\sin\\Delta\\theta, \\rho\\cos\\Delta\\theta,
\\rho\\sin\\Delta\\theta)`, :math:`\\rho = b_2 / b_1`, of the group element
:math:`g = (\\Delta\\theta, \\log b_2 / b_1)` (relative rotation in radians, log brightness
ratio). The paper's g is the relative rotation quaternion, fed to the same linear map; like
it, :math:`\\phi` has no constant component, so no subspace is left fixed by every
:math:`H(g)` and an invariant cannot ride through s unchanged (and a block
:math:`b_v(\\cos\\theta_v, \\sin\\theta_v)` is mapped exactly: :math:`A_3 = I`,
:math:`A_4 = J`). The guide is amortized by one encoder (the
paper's backbone, whose last ``equi_dim`` outputs are the equivariant part)::

    q(c_n | x_n1, x_n2) = Normal(mean of the two views' invariant means and scales)
    q(s_nv | x_nv)      = Normal(enc(x_nv)'s equivariant means and scales)

What it keeps: the split of one representation into an invariant and an equivariant part,
the invariant part matched across views (here: shared, so it must explain what the views
have in common), the equivariant part of view 1 mapped to view 2's by H(g) (the prior's
Gaussian around H(g) s_1 is the paper's equivariance MSE, tau its weight). The
representation of one image is the encoder's output (c, s): its mean, or a posterior draw
(what :meth:`SIE.evaluate` probes). With ``inv_dim=0`` the whole latent is equivariant:
the same model without the split, the spec's baseline.

Not kept: VICReg's variance and covariance terms (the likelihood prevents collapse) and
the paper's invariance MSE (as a factor of weight 100 on the two views' invariant
encodings it collapsed c to its prior in our fits: one of 16 dimensions stayed active).
The split size departs from the spec's 16 + 16: nothing in the ELBO makes c cheaper than s
for what the views share (a class can ride in the amplitude of a rotating pair of
dimensions of s), and with 16 dimensions in s our fits put the class there too and c
collapsed; the default gives s 4 dimensions, room for pose and brightness.
Data: the 1797 digits of ``sklearn.datasets.load_digits``, two views of each under
rotation by U[-45, 45] degrees and brightness U[0.6, 1.4]
(:func:`zoo.datasets.digits.rotated_digit_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import Field
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.datasets.digits import rotated_digit_pairs
from zoo.registry import register

__all__ = ["SIE", "group_features"]

#: number of features phi(g) the hypernetwork reads
NUM_FEATURES = 4


def group_features(g: torch.Tensor) -> torch.Tensor:
    """phi(g) = (cos dtheta, sin dtheta, rho cos dtheta, rho sin dtheta), rho = b2 / b1, of
    g = (dtheta, log b2/b1), (..., 4). No constant: H(g) = sum_m phi_m A_m has no subspace
    it leaves fixed for every g, so s cannot carry an invariant unchanged between views."""
    angle, rho = g[..., 0], g[..., 1].exp()
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([cos, sin, rho * cos, rho * sin], -1)


@register
class SIE(ZooModel):
    """Split invariant-equivariant two-view latent model, paper 16 (Garrido, Najman &
    LeCun, ICML 2023). See the module doc for the generative story. ``inv_dim=0``: the
    same model without the split (every latent dimension equivariant)."""

    name = "sie"
    summary = "Split invariant/equivariant two-view latents, hypernetwork H(g) between views"
    paper = 16
    static_structure = True
    optional_fields = ("label",)

    tiny = {"inv_dim": 2, "equi_dim": 2, "hidden": (16,), "steps": 20}

    @dataclass
    class Config(TrainConfig):
        #: d_c, the invariant part (0: no split, the baseline)
        inv_dim: int = 16
        #: d_s, the equivariant part (the spec's 16 lets s take everything and c collapse
        #: to its prior in our fits; 4 leaves s room for pose and brightness only)
        equi_dim: int = 4
        hidden: tuple[int, ...] = (128, 128)
        #: sigma, the pixel noise of the likelihood
        obs_scale: float = 0.1
        #: tau, how tightly s_2 follows H(g) s_1
        equi_scale: float = 0.1
        #: default data: pairs per load_digits image, rotation range, brightness range
        pairs_per_digit: int = 2
        max_degrees: float = 45.0
        brightness: tuple[float, float] = (0.6, 1.4)
        holdout: float = 0.15
        batch_size: int = 128
        lr: float = 1e-3
        steps: int | None = 3000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.encoder = NormalEncoder(64, c.inv_dim + c.equi_dim, hidden)
        self.decoder = mlp([c.inv_dim + c.equi_dim, *hidden, 64])
        eye = torch.eye(c.equi_dim)
        hyper = 0.01 * torch.randn(NUM_FEATURES, c.equi_dim, c.equi_dim)
        hyper[0] += eye  # H(g) starts at cos(dtheta) I, the identity at g = 0
        self.hyper = nn.Parameter(hyper)
        if priors:
            self.set_priors(priors)

    def check_config(self) -> None:
        c = self.config
        require_non_negative_ints(c, "inv_dim")  # 0: no invariant/equivariant split
        require_positive_ints(c, "equi_dim", "pairs_per_digit")
        require_positive_sizes(c, "hidden")
        require_positive_numbers(c, "obs_scale", "equi_scale")
        if not 0 <= c.max_degrees <= 180:
            raise ConfigError(f"max_degrees must be in [0, 180], got {c.max_degrees}")
        if len(c.brightness) != 2 or not 0 < c.brightness[0] <= c.brightness[1]:
            raise ConfigError(f"brightness must be (low, high), 0 < low <= high: {c.brightness}")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x1": Field(shape=(64,), doc="view 1: 8x8 image (pixels >= 0)", image=(8, 8)),
            "x2": Field(shape=(64,), doc="view 2 of the same digit", image=(8, 8)),
            "g": Field(
                shape=(2,),
                doc="known relative group element: (rotation theta2 - theta1 in radians, "
                "log brightness ratio log b2/b1)",
            ),
            "label": Field(
                dtype="int",
                support=constraints.integer_interval(-1, 9),
                doc="digit class for scoring only (-1: unknown); never used in training",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x1", "x2")

    def pairs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """The raw pairs (:func:`~zoo.datasets.digits.rotated_digit_pairs`) at this
        config's settings, with the true angles and brightnesses of each view."""
        c = self.config
        return rotated_digit_pairs(
            seed,
            pairs_per_digit=c.pairs_per_digit,
            max_degrees=c.max_degrees,
            brightness=tuple(c.brightness),
        )

    def rows(self, raw: dict) -> dict[str, torch.Tensor]:
        """The model's data fields of a :meth:`pairs` draw, validated."""
        angle = np.deg2rad(raw["theta2"] - raw["theta1"])
        g = np.stack([angle, np.log(raw["b2"] / raw["b1"])], -1).astype("float32")
        return self.validate({"x1": raw["x1"], "x2": raw["x2"], "g": g, "label": raw["label"]})

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Rotated and brightened pairs of every load_digits image (:meth:`pairs`)."""
        return self.rows(self.pairs(seed))

    # ----- model and guide --------------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        out = {"s1": dist.Normal(0.0, 1.0).expand([c.equi_dim]).to_event(1)}
        if c.inv_dim:
            out["c"] = dist.Normal(0.0, 1.0).expand([c.inv_dim]).to_event(1)
        return out

    def transform(self, g: torch.Tensor) -> torch.Tensor:
        """H(g), (..., d_s, d_s), from the linear hypernetwork."""
        return torch.einsum("...m,mij->...ij", group_features(g), self.hyper)

    def act(self, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """H(g) s (broadcast over leading particle dimensions of ``s``)."""
        return (self.transform(g) * s.unsqueeze(-2)).sum(-1)

    def decode(self, c: torch.Tensor | None, s: torch.Tensor) -> torch.Tensor:
        if c is None:
            return self.decoder(s)
        c, s = torch.broadcast_tensors(c, s) if c.shape == s.shape else (c, s)
        shape = torch.broadcast_shapes(c.shape[:-1], s.shape[:-1])
        return self.decoder(torch.cat([c.expand(*shape, -1), s.expand(*shape, -1)], -1))

    def model(self, batch) -> None:
        c = self.config
        with self.data_plate(batch):
            inv = pyro.sample("c", self.prior("c")) if c.inv_dim else None
            s1 = pyro.sample("s1", self.prior("s1"))
            s2 = pyro.sample("s2", dist.Normal(self.act(batch["g"], s1), c.equi_scale).to_event(1))
            for view, s in (("x1", s1), ("x2", s2)):
                mean = self.decode(inv, s)
                pyro.sample(view, dist.Normal(mean, c.obs_scale).to_event(1), obs=batch[view])

    @property
    def local_sites(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("c", "s1", "s2") if self.config.inv_dim else ("s1", "s2")

    def local_guide(self, batch, global_values=None) -> None:
        d = self.config.inv_dim
        rows = batch["x1"].shape[0]
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, torch.cat([batch["x1"], batch["x2"]]))
            loc1, loc2 = loc[:rows], loc[rows:]
            scale1, scale2 = scale[:rows], scale[rows:]
            ctx1, ctx2 = (None, None) if context is None else (context[:rows], context[rows:])
            if d:
                shared = None if context is None else (ctx1 + ctx2) / 2
                local.sample(
                    "c",
                    (loc1[:, :d] + loc2[:, :d]) / 2,
                    (scale1[:, :d] + scale2[:, :d]) / 2,
                    context=shared,
                )
            local.sample("s1", loc1[:, d:], scale1[:, d:], context=ctx1)
            local.sample("s2", loc2[:, d:], scale2[:, d:], context=ctx2)

    # ----- the representation and its checks --------------------------------------------------

    def represent(
        self, guide, x: torch.Tensor, *, draw: bool = False, seed: int = 0
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The representation of single images ``x`` (N, 64), ``(c, s)`` (``c`` None
        without the split), from the guide's encoder where it has one: its means, or with
        ``draw`` one seeded draw of its diagonal Normal. A probe on draws reads only what the
        posterior carries above its own noise: a dimension collapsed to the prior keeps a
        faint trace of x in its mean that a standardised linear probe can still read."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        with self.inference_mode(), local.using(guide):
            loc, scale = local.encode(self, x)[:2]
        if draw:
            generator = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(loc.shape, generator=generator).to(loc.device)
            loc = loc + scale * noise
        d = self.config.inv_dim
        return (loc[:, :d] if d else None), loc[:, d:]

    def equivariance_error(self, guide, data) -> dict[str, float]:
        """``||s_2 - H(g) s_1||^2`` of the encoder's means, averaged over pairs
        (``equivariance_mse``), and as a fraction of the spread of s_2
        (``equivariance_error``: 0 is exact, 1 is no better than predicting s_2 by its mean;
        invariant to the scale of s). ``identity_error``: the same fraction for s_2 ~ s_1."""
        _, s1 = self.represent(guide, data["x1"])
        _, s2 = self.represent(guide, data["x2"])
        with torch.no_grad():
            pred = self.act(torch.as_tensor(data["g"], device=self.device), s1)
        spread = float(((s2 - s2.mean(0)) ** 2).sum(-1).mean())
        mse = float(((s2 - pred) ** 2).sum(-1).mean())
        same = float(((s2 - s1) ** 2).sum(-1).mean())
        return {
            "equivariance_mse": mse,
            "equivariance_error": mse / max(spread, 1e-12),
            "identity_error": same / max(spread, 1e-12),
        }

    def evaluate(self, guide, data) -> dict:
        """The paper's checks on ``data`` (pairs in one random half train the linear
        probes, the other half scores them), on one draw of each image's posterior (see
        :meth:`represent`): ``angle_r2_s`` / ``angle_r2_c``: R^2 of the relative rotation
        from (s_1, s_2) and from (c_1, c_2) of the two views; where labels are known,
        ``class_accuracy_c`` / ``class_accuracy_s``: digit class from c and from s of view
        1; and ``equivariance_error`` of the means (:meth:`equivariance_error`). Without
        the split, the ``_s`` scores read the whole latent."""
        from inference.representation import linear_probe

        out = self.equivariance_error(guide, data)
        c1, s1 = self.represent(guide, data["x1"], draw=True, seed=1)
        c2, s2 = self.represent(guide, data["x2"], draw=True, seed=2)
        rows = len(s1)
        if rows < 8:
            return out
        order = np.random.default_rng(0).permutation(rows)
        train, test = order[: rows // 2], order[rows // 2 :]
        angle = data["g"][:, 0].cpu().numpy()
        parts = {"s": (s1, s2)} | ({"c": (c1, c2)} if c1 is not None else {})
        for name, (a, b) in parts.items():
            both = torch.cat([a, b], -1).cpu().numpy()
            fitted = linear_probe(
                both[train], angle[train], both[test], angle[test], task="regression"
            )
            out[f"angle_r2_{name}"] = fitted["r2"]
        labels = data["label"].cpu().numpy()
        tr, te = train[labels[train] >= 0], test[labels[test] >= 0]
        if len(tr) > 20 and len(te) and len(np.unique(labels[tr])) > 1:
            for name, (a, _) in parts.items():
                a = a.cpu().numpy()
                out[f"class_accuracy_{name}"] = linear_probe(a[tr], labels[tr], a[te], labels[te])[
                    "accuracy"
                ]
        return out

    # ----- new rows, names ----------------------------------------------------------------------

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """New pairs from the prior of c and s_1 at resampled group elements g; ``label``
        is -1 (a new digit's class is not drawn)."""
        rows = super().sample_new_rows(
            num, data=data, guide=guide, draws=draws, seed=seed, mean=mean
        )
        if "label" in rows:
            rows["label"] = torch.full_like(rows["label"], -1)
        return rows

    def dims(self) -> dict[str, list[str]]:
        return {
            "c": ["pair", "inv_dim"],
            "s1": ["pair", "equi_dim"],
            "s2": ["pair", "equi_dim"],
            "x1": ["pair", "pixel"],
            "x2": ["pair", "pixel"],
        }
