"""Rel-VAE: a VAE whose encoder reads a relative representation (paper 9).

Moschella, Maiorca, Fumero, Norelli, Locatello & Rodolà (ICLR 2023), "Relative
representations enable zero-shot latent space communication" (code: lucmos/relreps,
``VanillaRelVAE``). Generative story, for binarized 8x8 digits :math:`x_n \\in \\{0,1\\}^{64}`::

    z_n ~ Normal(0, I_d)                                   (d = latent_dim, 64 = K)
    x_n ~ Bernoulli(sigmoid(f_theta(z_n)))

and the guide, where the paper's idea lives: an MLP trunk embeds every row,
:math:`e_n = E_\\phi(x_n)`, and K fixed anchor images :math:`a_1..a_K` (the same digits,
at the same indices of ``load_digits``, in every run); the heads read

    r(x_n) = LayerNorm([cos(e_n, sg(E_phi(a_k)))]_{k=1..K})
    q(z_n | x_n) = Normal(W_mu r + b_mu, softplus(W_s r + b_s))

(the spec's ``sg``, no gradient through the anchors' embeddings, is the option
``detach_anchors=True``; it is off by default: in our fits on digits it collapsed the
posterior to q(z | x) = p(z) at 100 epochs, ELBO at the independent-pixel level, and at 200
epochs reached -23.8 nats per image against -18.7 with gradients through the anchors). ``r`` is
invariant to any orthogonal map and positive scale of the embedding space, so the heads and
decoder of one run can be fed the relative representation computed by the trunk of another
run trained from another seed: zero-shot stitching. With ``relative=False`` the heads read
``e`` itself: the absolute VAE of the same widths (``embed_dim = K``), the paper's baseline.

The paper's Rel-VAE is a deterministic encoder plus a variational bottleneck; here it is a
VAE whose amortized guide has that encoder (the same thing as a Pyro model and guide).
Data: the 1797 digits of ``sklearn.datasets.load_digits`` (UCI), binarized at half
intensity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from guides.encoders import RelativeEncoder, mlp
from inference.relative import anchor_indices, latent_means
from zoo.base import ConfigError, TrainConfig, require_positive_ints
from zoo.datasets.digits import (
    digit_images,
)
from zoo.models.vae_digits import DigitImageVAE
from zoo.registry import register

#: rows of load_digits the anchors are drawn from
NUM_DIGITS = 1797


@register
class RelRep(DigitImageVAE):
    """Rel-VAE (relative-representation encoder) on load_digits. See the module doc."""

    name = "relrep"
    summary = "Rel-VAE: encoder reads cosines to fixed anchor digits (stitchable across runs)"
    paper = 9

    tiny = {
        "num_anchors": 8,
        "embed_dim": 8,
        "latent_dim": 2,
        "hidden": (16,),
        "steps": 20,
    }

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.15
        #: K anchors: load_digits rows at ``anchor_indices(1797, K, anchor_seed)``
        num_anchors: int = 64
        anchor_seed: int = 0
        #: width of the trunk's embedding e = E(x); K >= embed_dim (r spans e)
        embed_dim: int = 64
        latent_dim: int = 64
        hidden: tuple[int, ...] = (256, 256)
        #: False: the heads read e (the absolute VAE of the same size)
        relative: bool = True
        layer_norm: bool = True
        #: no gradient through the anchors' embeddings (the spec's sg); off by default: with
        #: it on, our fits collapsed or trained far worse (see the module doc)
        detach_anchors: bool = False
        likelihood: str = "bernoulli"
        batch_size: int = 128
        lr: float = 1e-3
        epochs: float = 200.0

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        images = torch.as_tensor(digit_images(c.likelihood))
        anchors = images[anchor_indices(NUM_DIGITS, c.num_anchors, c.anchor_seed)]
        self.encoder = RelativeEncoder(
            64,
            c.latent_dim,
            anchors,
            c.hidden,
            c.embed_dim,
            relative=c.relative,
            layer_norm=c.layer_norm,
            detach_anchors=c.detach_anchors,
        )
        self.decoder = mlp([c.latent_dim, *c.hidden, 64])

    def check_config(self) -> None:
        super().check_config()  # likelihood, latent_dim, hidden
        c = self.config
        if not 2 <= c.num_anchors <= NUM_DIGITS:
            raise ConfigError(f"num_anchors must be in 2..{NUM_DIGITS}, got {c.num_anchors}")
        require_positive_ints(c, "embed_dim")
        if c.relative and c.num_anchors < c.embed_dim:
            raise ConfigError(
                f"num_anchors ({c.num_anchors}) must be >= embed_dim ({c.embed_dim}): fewer "
                "anchors than embedding dimensions lose directions of e"
            )

    # ----- stitching --------------------------------------------------------------------------

    def reconstruct(
        self,
        x: torch.Tensor,
        *,
        encoder: RelativeEncoder | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Pixel means ``sigmoid(f(mu(rep)))`` of this model's heads and decoder, the
        representation ``rep`` computed by ``encoder`` (another run's, for zero-shot
        stitching; default this model's own) and passed through ``transform`` (e.g. a
        fitted alignment) first. Deterministic: the posterior mean, no draw."""
        encoder = encoder or self.encoder
        if not isinstance(encoder, RelativeEncoder):
            raise TypeError(f"encoder must be a RelativeEncoder, got {type(encoder).__name__}")
        if encoder.relative != self.encoder.relative:
            raise ValueError("cannot stitch a relative encoder to an absolute decoder (or back)")
        x = self.validate({"x": x})["x"]
        with self.inference_mode():
            rep = encoder.represent(x)
            if transform is not None:
                rep = transform(rep)
            if rep.shape[-1] != self.encoder.head.in_features:
                raise ValueError(
                    f"the representation has width {rep.shape[-1]}; this model's heads read "
                    f"{self.encoder.head.in_features}"
                )
            loc, _ = self.encoder.heads(rep)
            return torch.sigmoid(self.decoder(loc))

    def reconstruction_mse(self, x: torch.Tensor, **stitch) -> float:
        """Mean squared error per pixel of :meth:`reconstruct` against ``x``."""
        return float(((self.reconstruct(x, **stitch) - torch.as_tensor(x)) ** 2).mean())

    def evaluate(self, guide, data) -> dict:
        """ELBO and 100-sample IWAE per image (nats); reconstruction MSE per pixel of the
        decoder's means at the guide's posterior mean of z (whatever the guide)."""
        with self.inference_mode():
            probs = torch.sigmoid(self.decoder(latent_means(self, guide, data, "z")))
        mse = float(((probs - data["x"]) ** 2).mean())
        return super().evaluate(guide, data) | {"reconstruction_mse": mse}
