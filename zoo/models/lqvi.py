"""Latent-quantised variational inference (LQVI) as an adversarial filter: a VAE with a
Lipschitz (spectral-norm) encoder and a quantised latent, put in front of any classifier
(paper 37).

Kyatham, Mishra, Yadav, Mishra & Prathosh (2019), "Variational Inference with Latent Space
Quantization for Adversarial Resilience", arXiv:1903.09940 (no official code found). The
paper's model is a VAE, so this is the model itself, at zoo scale: the 8x8 ``load_digits``
images scaled to [0, 1] instead of MNIST, an MLP encoder and decoder, and a continuous
Bernoulli pixel likelihood (pixels are greyscale).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from torch import nn

from guides import local
from guides.encoders import LipschitzNormalEncoder, mlp
from guides.quantize import grid_quantize, grid_round
from inference.data import Field
from zoo.base import (
    ConfigError,
    TrainConfig,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.datasets.digits import (
    NUM_DIGIT_CLASSES,
    digit_label_field,
    digits_with_labels,
    pixel_likelihood,
)
from zoo.models.vae_digits import DigitImageVAE
from zoo.registry import register

NUM_CLASSES = NUM_DIGIT_CLASSES


@register
class LQVI(DigitImageVAE):
    """Latent-quantised VAE with a Lipschitz encoder, used as a filter before a classifier.

    Generative story for an image :math:`x_n \\in [0, 1]^{64}` with :math:`d` latent
    dimensions and grid spacing :math:`\\Delta`::

        z_n ~ Normal(0, I_d)                                   (declared prior, swappable)
        Q(z) = Delta * round(z / Delta)                        (per-dimension grid)
        x_n ~ ContinuousBernoulli(sigmoid(f_theta(Q(z_n))))    (or Bernoulli on binary x)

    The decoder sees ``Q(z)`` in value with the gradient passed straight through to ``z``
    (:func:`guides.quantize.grid_quantize`). The guide is Gaussian,
    :math:`q_\\phi(z_n | x_n) = N(\\mu_\\phi(x_n), \\sigma^2_\\phi(x_n) + \\tau^2)`, its
    network built from spectrally normalised layers so that
    :math:`\\|\\mu_\\phi(x + \\delta) - \\mu_\\phi(x)\\|_2 \\le L \\|\\delta\\|_2` for every
    :math:`\\delta` (:class:`guides.encoders.LipschitzNormalEncoder`): a perturbation with
    :math:`L \\|\\delta\\| < \\Delta / 2` cannot move the code out of its cell by more than
    one step. The scale floor :math:`\\tau` is the paper's latent-noise augmentation: the
    decoder is trained on quantised *perturbed* latents, so it learns to decode a cell's
    neighbourhood back onto the data. Trained by the ELBO (``Trace_ELBO``).

    As a filter (:meth:`purify`): ``x -> mu_phi(x) -> Q -> E[x | Q(mu)]``, then any
    classifier trained on clean images. Its robustness is measured twice
    (:meth:`robustness`): against an attack on the classifier alone (the paper's gray-box
    setting) and against an adaptive end-to-end attack through the filter (BPDA with the
    straight-through estimator, BPDA with the whole filter as identity, and EOT over the
    posterior's noise; the worst per image), so that robustness from masked gradients is
    not claimed.

    Baselines as configs: ``quantize=False, spectral_norm=False, latent_noise=0`` is the
    plain VAE filter; no filter at all is the bare classifier.
    """

    name = "lqvi"
    summary = "Latent-quantised Lipschitz VAE as an adversarial filter (PGD, BPDA/EOT)"
    paper = 37
    local_sites = ("z",)
    optional_fields = ("label",)
    static_structure = True

    tiny = {
        "latent_dim": 2,
        "hidden": (16,),
        "steps": 20,
        "classifier_steps": 20,
        "attack_steps": 2,
        "eot_samples": 1,
    }

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.15
        latent_dim: int = 8
        hidden: tuple[int, ...] = (128, 128)
        likelihood: str = "continuous_bernoulli"
        quantize: bool = True
        spacing: float = 0.5  # Delta, the grid spacing of Q
        spectral_norm: bool = True
        lipschitz: float = 5.0  # L2 Lipschitz bound of the encoder (spectral_norm only)
        latent_noise: float = 0.2  # tau, the floor of q's scale
        batch_size: int = 128
        lr: float = 1e-3
        epochs: float = 100.0
        # the robustness check of ``evaluate`` (when the data carry labels)
        eval_eps: float = 0.2
        attack_steps: int = 40
        eot_samples: int = 4
        classifier_steps: int = 1500

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.decoder = mlp([c.latent_dim, *hidden, 64])
        self.encoder = LipschitzNormalEncoder(
            64,
            c.latent_dim,
            hidden,
            lipschitz=c.lipschitz if c.spectral_norm else None,
            min_scale=c.latent_noise,
        )

    def check_config(self) -> None:
        super().check_config()
        c = self.config
        for key in ("quantize", "spectral_norm"):
            if not isinstance(getattr(c, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(c, key)!r}")
        require_positive_numbers(c, "spacing", "lipschitz")
        if not (isinstance(c.latent_noise, int | float) and 0 <= c.latent_noise < 10):
            raise ConfigError(f"latent_noise must be in [0, 10), got {c.latent_noise!r}")
        if not (isinstance(c.eval_eps, int | float) and 0 < c.eval_eps <= 1):
            raise ConfigError(f"eval_eps must be in (0, 1], got {c.eval_eps!r}")
        require_positive_ints(c, "attack_steps", "classifier_steps")
        require_non_negative_ints(c, "eot_samples")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        spec = super().data_spec()
        spec["label"] = digit_label_field(
            "digit class 0..9 (not modelled; for the classifier and the attacks; optional)"
        )
        return spec

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.validate(digits_with_labels(self.config.likelihood))

    # ----- model ----------------------------------------------------------------------------

    def code(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's input: ``Q(z)`` (straight-through), or ``z`` when not quantised."""
        return grid_quantize(z, self.config.spacing) if self.config.quantize else z

    def model(self, batch) -> None:
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            likelihood = pixel_likelihood(self.decoder(self.code(z)), self.config.likelihood)
            pyro.sample("x", likelihood, obs=batch["x"])

    # ----- the filter -----------------------------------------------------------------------

    def decode_mean(self, code: torch.Tensor) -> torch.Tensor:
        """The pixel means ``E[x | code]`` (the likelihood's mean)."""
        return pixel_likelihood(self.decoder(code), self.config.likelihood).mean

    def purify(self, x: torch.Tensor, *, noise: bool = False) -> torch.Tensor:
        """The filter: ``E[x | Q(mu(x))]``, differentiable in ``x`` (the straight-through
        estimator through ``Q``). ``noise=True`` encodes a draw ``z ~ q(z | x)`` instead of
        the mean (for EOT). Reads the running guide's encoder inside ``local.using``."""
        loc, scale = local.encoder(self)(x.to(self.device))[:2]
        z = loc + scale * torch.randn_like(loc) if noise else loc
        return self.decode_mean(self.code(z))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The hard codes ``Q(mu(x))`` (or ``mu(x)`` unquantised)."""
        loc = local.encoder(self)(x.to(self.device))[0]
        return grid_round(loc, self.config.spacing) if self.config.quantize else loc

    def robustness(
        self,
        classifier: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        *,
        steps: int | None = None,
        eot_samples: int | None = None,
        seed: int = 0,
        x_transfer: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Accuracy of ``classifier(purify(.))`` on clean ``x``, under an L-inf PGD attack
        of radius ``eps`` on the classifier alone (``x_transfer``, computed when not given),
        and under the adaptive attack through the filter: the worst per image of PGD with
        the straight-through gradient of ``Q``, PGD with the whole filter replaced by the
        identity on the backward pass (BPDA), and PGD on the expected loss over
        ``eot_samples`` posterior draws (EOT; skipped at 0). ``code_kept`` is the fraction
        of images whose hard code the classifier-only attack leaves unchanged."""
        from inference.attacks import eot, margin_loss, pgd_linf, straight_through

        steps = int(steps or self.config.attack_steps)
        eot_samples = self.config.eot_samples if eot_samples is None else int(eot_samples)
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        y = torch.as_tensor(y).long().to(self.device)

        def ce(logits):  # the Carlini-Wagner margin: positive exactly when fooled
            return margin_loss(logits, y)

        def attack(loss_fn, offset):
            generator = torch.Generator().manual_seed(int(seed) * 100 + offset)
            return pgd_linf(
                loss_fn,
                x,
                eps,
                steps=steps,
                step_size=2.5 * eps / steps,
                clamp=(0.0, 1.0),
                random_start=True,
                generator=generator,
            )

        @torch.no_grad()
        def correct(inputs):
            return classifier(self.purify(inputs)).argmax(-1) == y

        if x_transfer is None:
            x_transfer = attack(lambda v: ce(classifier(v)), 0)
        clean = correct(x)
        transfer = correct(x_transfer)
        adaptive = transfer & clean
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            attacks = [
                lambda v: ce(classifier(self.purify(v))),
                lambda v: ce(classifier(straight_through(self.purify)(v))),
            ]
            if eot_samples > 0:
                noisy = lambda v: ce(classifier(self.purify(v, noise=True)))  # noqa: E731
                attacks.append(eot(noisy, eot_samples))
            for i, loss_fn in enumerate(attacks, start=1):
                adaptive &= correct(attack(loss_fn, i))
        kept = (self.codes(x_transfer) == self.codes(x)).all(-1)
        return {
            "clean": float(clean.float().mean()),
            "transfer": float(transfer.float().mean()),
            "adaptive": float(adaptive.float().mean()),
            "code_kept": float(kept.float().mean()),
        }

    # ----- evaluation -----------------------------------------------------------------------

    def evaluate(self, guide, data) -> dict:
        """ELBO per image, the filter's reconstruction MSE per pixel and, when the data carry
        labels: an MLP classifier trained on a seeded half of the rows (clean images), and
        on the other half its accuracy bare and behind the filter, clean, under an L-inf PGD
        attack of radius ``eval_eps`` on the classifier alone, and under the adaptive
        attack through the filter (:meth:`robustness`)."""
        from inference.attacks import margin_loss, pgd_linf
        from inference.classifiers import accuracy, train_classifier
        from inference.evaluation import elbo_per_row

        c = self.config
        x = data["x"].to(self.device)
        out = {"elbo_per_image": float(elbo_per_row(self, guide, data, num_particles=10).mean())}
        with local.using(guide):
            with torch.no_grad():
                out["filter_mse_per_pixel"] = float((self.purify(x) - x).pow(2).mean())
            if "label" not in data:
                return out
            y = data["label"].to(self.device).long()
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
            train, test = order[: len(x) // 2], order[len(x) // 2 :]
            classifier = train_classifier(x[train].cpu(), y[train].cpu(), steps=c.classifier_steps)
            classifier.to(self.device)
            xt, yt = x[test], y[test]
            eps = c.eval_eps
            generator = torch.Generator().manual_seed(0)
            x_adv = pgd_linf(
                lambda v: margin_loss(classifier(v), yt),
                xt,
                eps,
                steps=c.attack_steps,
                step_size=2.5 * eps / c.attack_steps,
                clamp=(0.0, 1.0),
                random_start=True,
                generator=generator,
            )
            report = self.robustness(classifier, xt, yt, eps, x_transfer=x_adv)
        out["bare_clean_accuracy"] = accuracy(classifier, xt, yt)
        out["bare_robust_accuracy"] = accuracy(classifier, x_adv, yt)
        out["filtered_clean_accuracy"] = report["clean"]
        out["filtered_robust_accuracy"] = report["transfer"]
        out["filtered_adaptive_accuracy"] = report["adaptive"]
        out["code_kept"] = report["code_kept"]
        return out
