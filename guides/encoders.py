"""Encoder networks for amortized local guides, shared by the zoo's models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn

from inference.relative import relative_projection

__all__ = [
    "mlp",
    "NormalEncoder",
    "SpectralLinear",
    "lipschitz_mlp",
    "LipschitzNormalEncoder",
    "GaussianEncoder",
    "SequenceEncoder",
    "RelativeEncoder",
    "SCALE_MODES",
    "as_pyro_module",
    "split_last",
]


def as_pyro_module(module: nn.Module) -> nn.Module:
    """Convert a plain torch module (and its children) to a PyroModule in place."""
    if not isinstance(module, PyroModule):
        to_pyro_module_(module, recurse=True)
    return module


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.Softplus) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` (no final activation)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return as_pyro_module(nn.Sequential(*layers))


def split_last(net: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(net(x), h)`` with ``h`` the input of ``net``'s last layer (its last hidden
    features, or ``x`` itself for a single layer): the same computation as ``net(x)``."""
    layers = list(net)
    hidden = x
    for layer in layers[:-1]:
        hidden = layer(hidden)
    return layers[-1](hidden), hidden


class NormalEncoder(PyroModule):
    """x -> (loc, scale) of a diagonal Normal over a ``latent_dim`` latent; ``encode(x)``
    adds the last hidden features, the context of the local guide families
    (:mod:`guides.local`)."""

    def __init__(self, input_dim: int, latent_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = mlp([input_dim, *hidden, 2 * latent_dim])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, scale, context)``."""
        out, hidden = split_last(self.net, x)
        loc, raw_scale = out.split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4, hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, _ = self.encode(x)
        return loc, scale


class SpectralLinear(nn.Linear):
    """A linear layer whose weight is divided by ``max(1, ||W||_2 / bound)`` at every call,
    so the layer is ``bound``-Lipschitz in the L2 norm (spectral normalisation, Miyato et
    al. 2018, with the exact largest singular value instead of a power iteration: the
    bound then holds at every step, not only after the iteration has converged)."""

    def __init__(self, in_features: int, out_features: int, bound: float = 1.0):
        super().__init__(in_features, out_features)
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound!r}")
        self.bound = float(bound)

    def normalised_weight(self) -> torch.Tensor:
        sigma = torch.linalg.matrix_norm(self.weight, ord=2)
        return self.weight / torch.clamp(sigma / self.bound, min=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.normalised_weight(), self.bias)


def lipschitz_mlp(
    sizes: Sequence[int], lipschitz: float = 1.0, activation: type[nn.Module] = nn.Softplus
) -> nn.Sequential:
    """:func:`mlp` with :class:`SpectralLinear` layers, each ``lipschitz ** (1 / layers)``
    -Lipschitz, so the whole map is ``lipschitz``-Lipschitz in L2 (the activation must be
    1-Lipschitz: Softplus, ReLU, Tanh)."""
    if not lipschitz > 0:
        raise ValueError(f"lipschitz must be positive, got {lipschitz!r}")
    count = len(sizes) - 1
    bound = float(lipschitz) ** (1.0 / count)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(SpectralLinear(n_in, n_out, bound))
        if i < count - 1:
            layers.append(activation())
    return as_pyro_module(nn.Sequential(*layers))


class LipschitzNormalEncoder(PyroModule):
    """x -> (loc, scale) of a diagonal Normal, like :class:`NormalEncoder`, with two
    options: ``lipschitz=L`` builds the network from :class:`SpectralLinear` layers, so
    ``||loc(x + d) - loc(x)||_2 <= L ||d||_2`` for every ``d`` (``None``: unconstrained);
    ``min_scale=tau`` floors the scale, ``scale = sqrt(softplus(s)^2 + tau^2)``, so latent
    draws always carry noise of at least ``tau`` (the latent-noise augmentation of a
    quantised VAE's decoder). ``encode(x)`` adds the last hidden features as context."""

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        lipschitz: float | None = 1.0,
        min_scale: float = 0.0,
    ):
        super().__init__()
        if not min_scale >= 0:
            raise ValueError(f"min_scale must be >= 0, got {min_scale!r}")
        self.latent_dim = latent_dim
        self.lipschitz = lipschitz
        self.min_scale = float(min_scale)
        sizes = [input_dim, *hidden, 2 * latent_dim]
        self.net = mlp(sizes) if lipschitz is None else lipschitz_mlp(sizes, lipschitz)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, scale, context)``."""
        out, hidden = split_last(self.net, x)
        loc, raw_scale = out.split(self.latent_dim, dim=-1)
        scale = nn.functional.softplus(raw_scale) + 1e-4
        if self.min_scale > 0:
            scale = torch.sqrt(scale.square() + self.min_scale**2)
        return loc, scale, hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, _ = self.encode(x)
        return loc, scale


#: how a :class:`GaussianEncoder` sets the scale of q(z | x)
SCALE_MODES = ("amortized", "learnable", "fixed")


class GaussianEncoder(PyroModule):
    """x -> (loc, scale) of a diagonal Normal whose scale is amortized (a function of x),
    learnable (one free value per latent dimension, the same for every x) or fixed.

    The encoder variance mode matters for posterior collapse (Dang et al., ICLR 2024):
    ``hidden=()`` gives the linear encoder ``loc = W x + b`` of their linear analysis.

    :param scale: one of :data:`SCALE_MODES`.
    :param init_scale: the fixed scale, or the starting value of a learnable one.
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (),
        *,
        scale: str = "amortized",
        init_scale: float = 1.0,
        activation: type[nn.Module] = nn.Softplus,
    ):
        super().__init__()
        if scale not in SCALE_MODES:
            raise ValueError(f"scale must be one of {SCALE_MODES}, got {scale!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.latent_dim = latent_dim
        self.scale_mode = scale
        out = 2 * latent_dim if scale == "amortized" else latent_dim
        self.net = mlp([input_dim, *hidden, out], activation)
        raw = torch.full((latent_dim,), float(init_scale)).log()
        if scale == "learnable":
            self.log_scale = nn.Parameter(raw)
        else:
            self.register_buffer("log_scale", raw)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, scale, context)``, the context being the last hidden features."""
        out, hidden = split_last(self.net, x)
        if self.scale_mode == "amortized":
            loc, raw_scale = out.split(self.latent_dim, dim=-1)
            return loc, nn.functional.softplus(raw_scale) + 1e-4, hidden
        return out, self.log_scale.exp().expand(out.shape), hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, _ = self.encode(x)
        return loc, scale


class SequenceEncoder(PyroModule):
    """A sequence ``x`` (batch, time, input_dim) -> (loc, scale) of a diagonal Normal per
    step (``per_step=True``: (batch, time, latent_dim), each step seeing the steps up to it)
    or one per sequence (the last step's summary: (batch, latent_dim)), by a GRU. The
    shared encoder of the zoo's sequential models: a VRNN's filtering guide, a summary of a
    past trajectory. ``encode`` adds the GRU's hidden states as context."""

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden_dim: int = 64,
        *,
        per_step: bool = False,
        num_layers: int = 1,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.per_step = per_step
        self.rnn = nn.GRU(input_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, scale, context)``."""
        if x.dim() != 3:
            raise ValueError(f"expected a (batch, time, features) sequence, got {tuple(x.shape)}")
        states, _ = self.rnn(x)
        hidden = states if self.per_step else states[:, -1]
        loc, raw_scale = self.head(hidden).split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4, hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, _ = self.encode(x)
        return loc, scale


class RelativeEncoder(PyroModule):
    """x -> (loc, scale) of a diagonal Normal read from a *relative representation* of x
    (Moschella et al., ICLR 2023): a trunk embeds x, ``e = E(x)``, and the heads see

        r(x) = LayerNorm([cos(e, sg(E(a_k)))]_k),   k = 1..K,

    the cosine similarities of ``e`` to the embeddings of K fixed anchor samples (a buffer,
    the same samples in every run; ``sg``: no gradient through the anchors, as in the
    paper's code). ``r`` is unchanged by any orthogonal map and positive scale of the
    embedding space (:func:`inference.relative.relative_projection`), so what a decoder
    learns from it transfers between training runs. With ``relative=False`` the heads see
    ``e`` itself: the absolute encoder of the same widths (``embed_dim = K`` makes the two
    the same size). ``encode`` returns the representation the heads read as context.

    Keep the trunk free of BatchNorm: anchors and rows must be embedded by the same function
    (batch statistics would differ between the anchor batch and the data batch).
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        anchors: torch.Tensor,
        hidden: Sequence[int] = (256, 256),
        embed_dim: int = 64,
        *,
        relative: bool = True,
        layer_norm: bool = True,
        detach_anchors: bool = True,
    ):
        super().__init__()
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        if anchors.dim() != 2 or anchors.shape[1] != input_dim or len(anchors) < 2:
            raise ValueError(
                f"anchors must be (K >= 2, {input_dim}) rows of data, got {tuple(anchors.shape)}"
            )
        self.latent_dim = latent_dim
        self.relative = relative
        self.detach_anchors = detach_anchors
        self.register_buffer("anchors", anchors.clone())
        self.trunk = mlp([input_dim, *hidden, embed_dim])
        width = len(anchors) if relative else embed_dim
        self.norm = as_pyro_module(nn.LayerNorm(width)) if relative and layer_norm else None
        self.head = as_pyro_module(nn.Linear(width, 2 * latent_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The absolute embedding ``e = E(x)``, (batch, embed_dim)."""
        return self.trunk(x)

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """What the heads read: ``r(x)`` (batch, K), or ``e`` when not relative."""
        e = self.trunk(x)
        if not self.relative:
            return e
        a = self.trunk(self.anchors)
        r = relative_projection(e, a.detach() if self.detach_anchors else a)
        return self.norm(r) if self.norm is not None else r

    def heads(self, rep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` from a representation (another run's, for stitching)."""
        loc, raw_scale = self.head(rep).split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, scale, representation)``."""
        rep = self.represent(x)
        return (*self.heads(rep), rep)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, _ = self.encode(x)
        return loc, scale
