"""Potential-flow traversals: a VAE whose latent traversals are gradient fields of K learned
potentials that obey a wave equation (paper 13).

Song, Keller, Sebe & Welling (ICML 2023), "Latent Traversals in Generative Models as
Potential Flows" (code: KingJamesSong/latent-flow, ``lib/WavePDE.py``,
``lib/trainer_vae*.py``). Generative story, for a pair of greyscale 8x8 digits one step apart
along a known transform ``k`` at stage ``t`` (the data carry ``k`` and ``t`` as inputs)::

    z_n      ~ Normal(0, I_D)
    x_n      ~ CB(sigmoid(f_theta(z_n)))                      (continuous Bernoulli pixels)
    z'_n     = z_n + grad_z u_{k_n}(z_n, t_n + 1)             (one step of flow k_n)
    x_next_n ~ CB(sigmoid(f_theta(z'_n)))                     (the traversed image, observed)

with K potentials ``u_k(z, tau) = tanh(MLP([z, emb(tau)]))_k`` (one tanh MLP with a
sinusoidal time embedding and K outputs, the code's design) and an amortized Gaussian
encoder ``q(z_n | x_n)``. While training, the flows are kept physical and distinct by a
factor of the joint, per row (so it scales with the data like the likelihood)::

    exp(-[ lam_pde (L_ic + L_wave) + lam_cls CE(c_psi(p_n, p~_n), j_n)
           - lam_change log(1 + |p'_n - p_n|^2) ])

(defaults lam_pde = 100, lam_cls = 10, lam_change = 0.1; in evaluation mode the model is
the joint of ``x`` and ``x_next`` alone)

- ``L_wave = (d^2 u_k / d tau^2 - c_k^2 Lap_z u_k)^2`` at ``(sg(z_n), tau ~ U(0, T))``, the
  wave equation with a learnable speed ``c_k`` (init 1); the Laplacian is **exact**, a loop
  of D second derivatives (the code's ``grad(u_z.sum(), z)`` sums Hessian rows instead);
- ``L_ic = |grad_z u_k(sg(z_n), 0)|^2``, the initial condition (flows start at rest at
  ``tau = 0``; the data steps use ``tau = 1..T``);
- ``c_psi`` is the classifier ("reconstructor") that reads a pair of decoded means
  ``p = sigmoid(f(z))``, ``p~ = sigmoid(f(sg(z) + grad_z u_j(sg(z), t + 1)))`` for a flow
  ``j_n`` drawn uniformly at random (as the paper's loop draws k), and names ``j``: every
  flow is kept distinct at every code, not only at codes of its own transform;
- the image-change term (the code's ``-L_jvp``, unbounded there) is ``log(1 + .)`` of the
  finite difference ``|p' - p|^2`` (``p' = sigmoid(f(z'))``: the decoder's JVP along the
  flow, to first order), so it is bounded in its pull and costs no extra decoder pass.

What it keeps and what it changes: the paper trains the VAE with ELBO(x) + ELBO(traversed
latent vs the next frame) + the PDE loss + MSEs matching encoded and flowed latents; here
the traversed image is a second observed site of one joint model (its log-likelihood is the
second ELBO term; the latent-matching MSEs are left out: the guide sees ``x`` only), and the
PDE and classifier losses are a ``pyro.factor``. The data are the spec's small check:
``load_digits`` with rotation (0-40 degrees), zoom (1.0-1.4) and intensity (0.6-1.4) from
``scipy.ndimage`` in T = 5 steps, K = 3, D = 8
(:func:`zoo.datasets.digits.transformed_digit_pairs`).
Evaluation scores ``x`` alone (ELBO and IWAE(50) of ``p(x)``, the potentials and the second
site left out), so it compares with a plain VAE on the same images.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import Field
from inference.evaluation import elbo_per_row, iwae_per_row
from inference.relative import latent_means
from zoo.base import (
    TrainConfig,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_sizes,
)
from zoo.datasets.digits import TRANSFORMS, image_field, transformed_digit_pairs
from zoo.models.vae_digits import DigitImageVAE
from zoo.registry import register


@functools.lru_cache(maxsize=4)
def _pairs(seed: int, steps: int, copies: int) -> dict[str, np.ndarray]:
    return transformed_digit_pairs(seed, steps=steps, copies=copies)


class Potentials(PyroModule):
    """K scalar potentials ``u_k(z, tau)``: one tanh MLP on ``[z, emb(tau)]`` with K outputs
    (tanh output, as the paper's code), and a learnable wave speed ``c_k`` per potential."""

    def __init__(self, latent_dim: int, num_flows: int, hidden, horizon: float, freqs: int = 4):
        super().__init__()
        self.num_flows = num_flows
        # sinusoidal time features: periods from 4 T down to T / 2
        omega = math.pi / (2.0 * horizon) * 2.0 ** torch.arange(freqs, dtype=torch.float32)
        self.register_buffer("omega", omega)
        self.net = mlp([latent_dim + 2 * freqs, *hidden, num_flows], activation=nn.Tanh)
        self.speed = PyroParam(torch.ones(num_flows))

    def forward(self, z: torch.Tensor, k: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``u_{k}(z, tau)`` with ``z (..., D)``, ``k`` and ``tau`` broadcast to ``z``'s batch."""
        shape = z.shape[:-1]
        tau = tau.expand(shape)
        emb = torch.cat(
            [torch.sin(tau[..., None] * self.omega), torch.cos(tau[..., None] * self.omega)], -1
        )
        out = torch.tanh(self.net(torch.cat([z, emb], -1)))
        return out.gather(-1, k.expand(shape)[..., None]).squeeze(-1)

    def velocity(self, z: torch.Tensor, k: torch.Tensor, tau) -> torch.Tensor:
        """``grad_z u_k(z, tau)``: differentiable (for training) where gradients are on,
        a plain value under ``torch.no_grad``."""
        create = torch.is_grad_enabled()
        tau = torch.as_tensor(tau, dtype=z.dtype, device=z.device)
        with torch.enable_grad():
            zz = z if (create and z.requires_grad) else z.detach().requires_grad_(True)
            u = self(zz, k, tau)
            (grad,) = torch.autograd.grad(u.sum(), zz, create_graph=create)
        return grad

    def derivatives(
        self, z: torch.Tensor, k: torch.Tensor, tau: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d^2 u_k / d tau^2, Lap_z u_k)`` per row at ``sg(z)``, the Laplacian exact: the
        sum of D second derivatives ``d^2 u / dz_d^2``, one backward pass each (not the
        code's ``grad(u_z.sum(), z)``, which sums whole Hessian rows)."""
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            tt = torch.as_tensor(tau, dtype=z.dtype, device=z.device)
            tt = tt.detach().expand(z.shape[:-1]).clone().requires_grad_(True)
            u = self(zz, k, tt)
            grad_z, grad_t = torch.autograd.grad(u.sum(), (zz, tt), create_graph=True)
            (u_tt,) = torch.autograd.grad(grad_t.sum(), tt, create_graph=create, retain_graph=True)
            laplacian = torch.zeros_like(u)
            for d in range(z.shape[-1]):
                (second,) = torch.autograd.grad(
                    grad_z[..., d].sum(), zz, create_graph=create, retain_graph=True
                )
                laplacian = laplacian + second[..., d]
        return u_tt, laplacian

    def wave_residual(self, z: torch.Tensor, k: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``(u_tautau - c_k^2 Lap_z u_k)^2`` per row (see :meth:`derivatives`)."""
        u_tt, laplacian = self.derivatives(z, k, tau)
        speed = self.speed[k].expand(u_tt.shape)
        return (u_tt - speed**2 * laplacian) ** 2


@register
class PotentialFlows(DigitImageVAE):
    """VAE with K potential-flow traversals on transformed digits. See the module doc."""

    name = "potential_flows"
    summary = "VAE whose traversals are gradient flows of K wave-equation potentials"
    paper = 13
    static_structure = False  # autograd.grad inside the model: no JIT

    tiny = {"latent_dim": 2, "hidden": (16,), "potential_hidden": (8,), "steps": 20}

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.15
        latent_dim: int = 8
        hidden: tuple[int, ...] = (128, 128)
        likelihood: str = "continuous_bernoulli"
        #: transform stages T (flow times tau = 1..T; the data's t in 0..T-1)
        flow_steps: int = 5
        #: rows per load_digits image in the default data
        copies: int = 2
        potential_hidden: tuple[int, ...] = (64, 64)
        classifier_hidden: tuple[int, ...] = (64,)
        pde_weight: float = 100.0
        classifier_weight: float = 10.0
        change_weight: float = 0.1
        batch_size: int = 64
        lr: float = 1e-3
        steps: int | None = 2000
        epochs: float | None = None

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        k = len(TRANSFORMS)
        self.encoder = NormalEncoder(64, c.latent_dim, c.hidden)
        self.decoder = mlp([c.latent_dim, *c.hidden, 64])
        self.potentials = Potentials(c.latent_dim, k, c.potential_hidden, float(c.flow_steps))
        self.classifier = mlp([128, *c.classifier_hidden, k], activation=nn.ReLU)
        self._x_only = False

    def check_config(self) -> None:
        super().check_config()  # likelihood, latent_dim, hidden
        c = self.config
        require_positive_ints(c, "flow_steps", "copies")
        require_positive_sizes(c, "potential_hidden", "classifier_hidden", allow_empty=True)
        require_non_negative_numbers(c, "pde_weight", "classifier_weight", "change_weight")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "x": image_field(c.likelihood),
            "x_next": image_field(c.likelihood),
            "k": Field(
                dtype="int",
                support=constraints.integer_interval(0, len(TRANSFORMS) - 1),
                doc=f"transform from x to x_next: {', '.join(TRANSFORMS)}",
            ),
            "t": Field(
                dtype="int",
                support=constraints.integer_interval(0, c.flow_steps - 1),
                doc="stage of x along the transform (x_next is stage t + 1)",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x", "x_next")

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Transformed load_digits pairs (:func:`~zoo.datasets.digits.transformed_digit_pairs`,
        ``copies`` rows per digit), binarised at 0.5 for the Bernoulli likelihood."""
        c = self.config
        pairs = _pairs(seed, c.flow_steps, c.copies)
        data = {key: pairs[key] for key in self.data_spec()}
        if c.likelihood == "bernoulli":
            data["x"] = (data["x"] > 0.5).astype("float32")
            data["x_next"] = (data["x_next"] > 0.5).astype("float32")
        return self.validate(data)

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["pair", "latent"], "x": ["pair", "pixel"], "x_next": ["pair", "pixel"]}

    # ----- model and guide --------------------------------------------------------------------

    @contextlib.contextmanager
    def x_only(self):
        """Run the model as the plain VAE of ``x``: no flow, no ``x_next``, no penalty (for
        scoring ``p(x)`` against a VAE)."""
        was, self._x_only = self._x_only, True
        try:
            yield
        finally:
            self._x_only = was

    def flow(self, z: torch.Tensor, k: torch.Tensor, tau) -> torch.Tensor:
        """One step of flow ``k`` at time ``tau``: ``z + grad_z u_k(z, tau)``."""
        return z + self.potentials.velocity(z, k, tau)

    def model(self, batch) -> None:
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            logits = self.decoder(z)
            pyro.sample("x", self.likelihood_of(logits), obs=batch["x"])
            if self._x_only:
                return
            k, t = batch["k"], batch["t"]
            z_next = self.flow(z, k, (t + 1).to(z.dtype))
            logits_next = self.decoder(z_next)
            pyro.sample("x_next", self.likelihood_of(logits_next), obs=batch["x_next"])
            if torch.is_grad_enabled() and self.training:
                pyro.factor("flow_penalty", -self.penalty(z, k, t, logits, logits_next))

    def likelihood_of(self, logits: torch.Tensor) -> dist.Distribution:
        if self.config.likelihood == "bernoulli":
            return dist.Bernoulli(logits=logits).to_event(1)
        return dist.ContinuousBernoulli(logits=logits).to_event(1)

    def penalty(self, z, k, t, logits, logits_next) -> torch.Tensor:
        """The per-row training penalty (the module doc's bracket)."""
        c = self.config
        shape = z.shape[:-1]
        k, t = k.expand(shape), t.expand(shape)
        total = torch.zeros(shape, device=z.device)
        if c.pde_weight > 0:
            tau = torch.rand(shape, device=z.device) * c.flow_steps
            wave = self.potentials.wave_residual(z, k, tau)
            initial = self.potentials.velocity(z.detach(), k, 0.0).pow(2).sum(-1)
            total = total + c.pde_weight * (initial + wave)
        p, p_next = torch.sigmoid(logits), torch.sigmoid(logits_next)
        if c.classifier_weight > 0:
            # the classifier names a flow drawn at random (not the row's transform), so every
            # flow is kept distinct at every code, as in the paper's training loop
            other = torch.randint(len(TRANSFORMS), shape, device=z.device)
            moved = self.flow(z.detach(), other, (t + 1).to(z.dtype))
            scores = self.classifier(
                torch.cat([p.detach(), torch.sigmoid(self.decoder(moved))], -1)
            )
            ce = nn.functional.cross_entropy(
                scores.reshape(-1, scores.shape[-1]), other.reshape(-1), reduction="none"
            )
            total = total + c.classifier_weight * ce.reshape(shape)
        if c.change_weight > 0:
            total = total - c.change_weight * torch.log1p((p_next - p).pow(2).sum(-1))
        return total

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            local.sample("z", loc, scale, context=context)

    # ----- the paper's checks -----------------------------------------------------------------

    def traverse(self, z: torch.Tensor, k: int, steps: int | None = None) -> torch.Tensor:
        """The latent path ``z_0 = z, z_tau = z_{tau-1} + grad u_k(z_{tau-1}, tau)``:
        ``(steps + 1, N, D)`` (default ``flow_steps`` steps)."""
        steps = self.config.flow_steps if steps is None else steps
        kk = torch.full(z.shape[:-1], int(k), dtype=torch.long, device=z.device)
        path = [z]
        with torch.no_grad():
            for tau in range(1, steps + 1):
                path.append(self.flow(path[-1], kk, float(tau)))
        return torch.stack(path)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.likelihood_of(self.decoder(z)).mean

    def pde_residual(self, z: torch.Tensor, taus=None, *, relative: bool = False) -> float:
        """Mean wave-equation residual ``(u_tautau - c_k^2 Lap u_k)^2`` over rows ``z``,
        every potential and ``taus`` (default ``0..T`` in 11 points). ``relative``: divided
        by the mean of ``u_tautau^2 + (c_k^2 Lap u_k)^2``, a scale-free residual (about 1
        for terms unrelated in size and sign, 0 for an exact wave), which a potential cannot
        lower by flattening itself."""
        taus = torch.linspace(0, self.config.flow_steps, 11) if taus is None else taus
        residual, size = [], []
        with torch.no_grad():
            for k in range(len(TRANSFORMS)):
                kk = torch.full(z.shape[:-1], k, dtype=torch.long)
                for tau in taus:
                    tt = torch.full(z.shape[:-1], float(tau))
                    u_tt, laplacian = self.potentials.derivatives(z, kk, tt)
                    wave = self.potentials.speed[kk] ** 2 * laplacian
                    residual.append(((u_tt - wave) ** 2).mean())
                    size.append((u_tt**2 + wave**2).mean())
        value = torch.stack(residual).mean()
        if relative:
            value = value / torch.stack(size).mean().clamp_min(1e-30)
        return float(value)

    def classify(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The classifier's transform for image pairs (means in [0, 1])."""
        with torch.no_grad():
            return self.classifier(torch.cat([first, second], -1)).argmax(-1)

    def evaluate(self, guide, data) -> dict:
        """ELBO and IWAE(50) of ``p(x)`` per image (nats; the flows and ``x_next`` left out,
        as for a plain VAE); the traversal NLL ``-log p(x_next | z + grad u_k)`` at the
        guide's mean; the classifier's accuracy on the flows' own pairs (every k from each
        row's code), on the real pairs ``(x, x_next)`` and on their reconstructions
        (decoded posterior means, the kind of image it was trained on); how often the flow that best
        explains ``x_next`` is the true one; the mean wave-equation residual."""
        was = self.training
        self.eval()
        try:
            return self._evaluate(guide, data)
        finally:
            self.train(was)

    def _evaluate(self, guide, data) -> dict:
        xs = {"x": data["x"]}
        with self.x_only():
            elbo = float(elbo_per_row(self, guide, xs, num_particles=10).mean())
            iwae = float(iwae_per_row(self, guide, xs, num_particles=50).mean())
        z = latent_means(self, guide, data, "z")
        k, t = data["k"], data["t"]
        n = len(k)
        with torch.no_grad():
            scores = []
            for j in range(len(TRANSFORMS)):
                moved = self.flow(z, torch.full_like(k, j), (t + 1).to(z.dtype))
                scores.append(self.likelihood_of(self.decoder(moved)).log_prob(data["x_next"]))
            scores = torch.stack(scores, -1)
            nll = float(-scores[torch.arange(n), k].mean())
            choice = float((scores.argmax(-1) == k).float().mean())
            real = float((self.classify(data["x"], data["x_next"]) == k).float().mean())
            hits = []
            p = self.decode_mean(z)
            for j in range(len(TRANSFORMS)):
                kk = torch.full_like(k, j)
                moved = self.decode_mean(self.flow(z, kk, (t + 1).to(z.dtype)))
                hits.append(self.classify(p, moved) == j)
            flows = float(torch.cat(hits).float().mean())
            z_next = latent_means(self, guide, {"x": data["x_next"]}, "z")
            recon = self.classify(p, self.decode_mean(z_next)) == k
        return {
            "elbo_per_image": elbo,
            "iwae50_per_image": iwae,
            "traversal_nll": nll,
            "classifier_accuracy_flows": flows,
            "classifier_accuracy_real": real,
            "classifier_accuracy_recon": float(recon.float().mean()),
            "flow_choice_accuracy": choice,
            "pde_residual": self.pde_residual(z),
            "pde_relative_residual": self.pde_residual(z, relative=True),
        }

    def figures(self, guide, data, *, idata=None) -> dict:
        """The default image figures, and the K flows traversed from a few encoded digits."""
        out = super().figures(guide, data, idata=idata)
        if guide is not None:
            out["traversals"] = lambda: self.traversal_figure(guide, data)
        return out

    def traversal_figure(self, guide, data, rows: int = 3):
        """One row per (digit, flow): the decoded path ``z_0 .. z_T`` from the digit's code."""
        import matplotlib.pyplot as plt

        z0 = latent_means(self, guide, {"x": data["x"][:rows]}, "z")
        steps = self.config.flow_steps
        fig, axes = plt.subplots(
            rows * len(TRANSFORMS),
            steps + 1,
            figsize=(0.8 * (steps + 1), 0.8 * rows * 3),
            squeeze=False,
        )
        for k, name in enumerate(TRANSFORMS):
            images = self.decode_mean(self.traverse(z0, k)).reshape(steps + 1, rows, 8, 8)
            for r in range(rows):
                row = r * len(TRANSFORMS) + k
                for s in range(steps + 1):
                    ax = axes[row, s]
                    ax.imshow(images[s, r].numpy(), cmap="gray", vmin=0, vmax=1)
                    ax.set_xticks([])
                    ax.set_yticks([])
                axes[row, 0].set_ylabel(name, fontsize=6)
        fig.tight_layout()
        return fig
