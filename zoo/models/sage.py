r"""SAGE failure search as posterior inference over a class-conditional digits VAE (paper 32).

Liu, Kortylewski, Bai, Bai & Yuille (2023), "Discovering Failure Modes of Text-guided
Diffusion Models via Adversarial Search" (SAGE), arXiv:2306.00974.

**An adaptation.** The paper searches the initial noise ``z`` and the prompt ``p`` of Stable
Diffusion for images that a robust classifier ensemble says lack the prompted object, with
``z`` kept a non-outlier of N(0, I). Stable Diffusion is not offline, so here the generator
is a class-conditional VAE on the 8x8 ``load_digits`` images (the class ``c`` is the
"prompt"), and the search is written as posterior inference (the spec's analogue)::

    generator (trained first, by the ELBO):
        z_n ~ Normal(0, I_d)                                    (declared prior, swappable)
        x_n ~ ContinuousBernoulli(sigmoid(f_theta(z_n, onehot(c_n))))

    failure search for a prompt c (the decoder and judges fixed):
        z ~ Normal(0, I_d)                                      (the non-outlier constraint)
        factor("fail", lambda * log(1 - p_ens(c | G(z, c))))    G(z, c) = E[x | z, c]

with ``p_ens`` the mean of the softmax probabilities of an ensemble of digit classifiers
(the surrogate judge ``D``, :mod:`inference.classifiers`), and the posterior sampled by NUTS
(:func:`inference.mcmc.quiet_nuts`), every prompt at once in one product posterior (the
classes are independent given the fixed networks). The discrete prompt search enumerates
the ten classes and ranks them by their Monte-Carlo failure rate. What it keeps: the
prior as the guard against outlier noise, the ensemble as the failure signal, and a held-out
check that the failures are real (a classifier outside the ensemble and the nearest real
digit, standing in for the paper's human study). The generator here is a few-layer MLP,
so the paper's residual-gradient trick for a long sampler is not needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from torch import nn

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import Field
from zoo.base import (
    TrainConfig,
    require_non_negative_ints,
    require_non_negative_numbers,
    require_positive_ints,
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
#: the ensemble judge D: hidden sizes of its classifiers (logistic regression and two MLPs)
ENSEMBLE = ((), (128,), (64, 64))
#: the held-out judge, not in the ensemble
HELD_OUT = (256, 32)


class Judges:
    """The surrogate judge ``D`` (an ensemble of classifiers) and the held-out judge (a
    classifier outside the ensemble plus the nearest real digit), all trained on real digits
    ``(x, y)`` by :func:`inference.classifiers.train_classifier`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, steps: int = 1500, seed: int = 0):
        from inference.classifiers import train_classifier

        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y).long()
        self.ensemble = [
            train_classifier(x, y, hidden=h, num_classes=NUM_CLASSES, steps=steps, seed=seed + i)
            for i, h in enumerate(ENSEMBLE)
        ]
        self.held_out = train_classifier(
            x, y, hidden=HELD_OUT, num_classes=NUM_CLASSES, steps=steps, seed=seed + 100
        )
        self.real_x, self.real_y = x, y

    def log_fail(self, images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``log(1 - p_ens(c | image))`` per row, computed stably: the log of the ensemble's
        mean probability of every class but ``c``."""
        logp = torch.stack([net(images).log_softmax(-1) for net in self.ensemble])
        mask = nn.functional.one_hot(c, NUM_CLASSES).bool()
        others = logp.masked_fill(mask, -math.inf).logsumexp(-1)  # (judges, rows)
        return others.logsumexp(0) - math.log(len(self.ensemble))

    @torch.no_grad()
    def verdict(self, images: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image: ``fail`` (every ensemble member says not ``c``), ``held_out`` (the
        held-out classifier says not ``c``), ``nearest_label`` / ``nearest_dist`` (the
        nearest real digit, Euclidean in pixels)."""
        fail = torch.stack([net(images).argmax(-1) != c for net in self.ensemble]).all(0)
        held = self.held_out(images).argmax(-1) != c
        dist_ = torch.cdist(images, self.real_x)
        near_d, near_i = dist_.min(-1)
        return {
            "fail": fail,
            "held_out": held,
            "nearest_label": self.real_y[near_i],
            "nearest_dist": near_d,
        }


@register
class SAGE(DigitImageVAE):
    """Class-conditional digits VAE and SAGE failure search by NUTS. See the module doc."""

    name = "sage"
    summary = "SAGE failure search: NUTS on a prior-guarded failure posterior of a digits CVAE"
    paper = 32
    local_sites = ("z",)
    static_structure = True

    tiny = {
        "latent_dim": 2,
        "hidden": (16,),
        "steps": 20,
        "judge_steps": 20,
        "search_chains": 2,
        "search_warmup": 4,
        "search_draws": 4,
    }

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.15
        latent_dim: int = 8
        hidden: tuple[int, ...] = (256, 256)
        likelihood: str = "continuous_bernoulli"
        batch_size: int = 128
        lr: float = 1e-3
        epochs: float = 100.0
        # the failure search of ``evaluate``
        fail_weight: float = 5.0  # lambda, the weight of the failure factor
        judge_steps: int = 1500
        search_chains: int = 5  # independent latents per class in one NUTS run
        search_warmup: int = 100
        search_draws: int = 30
        search_tree_depth: int = 6

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.decoder = mlp([c.latent_dim + NUM_CLASSES, *hidden, 64])
        self.encoder = NormalEncoder(64 + NUM_CLASSES, c.latent_dim, hidden)

    def check_config(self) -> None:
        super().check_config()
        c = self.config
        require_non_negative_numbers(c, "fail_weight")
        require_positive_ints(
            c, "judge_steps", "search_chains", "search_draws", "search_tree_depth"
        )
        require_non_negative_ints(c, "search_warmup")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        spec = super().data_spec()
        spec["label"] = digit_label_field(
            "digit class 0..9, the condition (the 'prompt'; not modelled)"
        )
        return spec

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.validate(digits_with_labels(self.config.likelihood))

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["image", "latent"], "x": ["image", "pixel"], "label": ["image"]}

    # ----- model ----------------------------------------------------------------------------

    def _logits(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(c.long(), NUM_CLASSES).to(z)
        return self.decoder(torch.cat([z, onehot.expand(*z.shape[:-1], NUM_CLASSES)], -1))

    def model(self, batch) -> None:
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            likelihood = pixel_likelihood(self._logits(z, batch["label"]), self.config.likelihood)
            pyro.sample("x", likelihood, obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            onehot = nn.functional.one_hot(batch["label"].long(), NUM_CLASSES).to(batch["x"])
            loc, scale, context = local.encode(self, torch.cat([batch["x"], onehot], -1))
            local.sample("z", loc, scale, context=context)

    def generate(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``G(z, c)``: the pixel means ``E[x | z, c]``."""
        return pixel_likelihood(self._logits(z, c), self.config.likelihood).mean

    # ----- failure search -------------------------------------------------------------------

    def failure_model(self, judges: Judges, fail_weight: float | None = None):
        """The failure posterior as a Pyro model of a batch ``{"c": prompts}``: one latent
        per row, ``z ~ prior`` and ``factor(lambda * log(1 - p_ens(c | G(z, c))))``. Counts
        its evaluations in ``.calls`` (the search budget)."""
        weight = self.config.fail_weight if fail_weight is None else float(fail_weight)

        def search(batch):
            search.calls += 1
            c = batch["c"]
            with pyro.plate("prompts", len(c)):
                z = pyro.sample("z", self.prior("z"))
                pyro.factor("fail", weight * judges.log_fail(self.generate(z, c), c))

        search.calls = 0
        return search

    def nuts_search(
        self,
        judges: Judges,
        classes: torch.Tensor,
        *,
        warmup: int,
        draws: int,
        fail_weight: float | None = None,
        seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """NUTS on the failure posterior of every row of ``classes`` at once (one chain; the
        rows are independent). Returns ``(z, c, calls)``: the draws flattened to rows
        ``(draws * len(classes), d)``, their prompts, and the model evaluations spent."""
        from inference.mcmc import quiet_nuts

        search = self.failure_model(judges, fail_weight)
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            mcmc = quiet_nuts(
                search,
                {"c": classes},
                chains=1,
                warmup=warmup,
                draws=draws,
                seed=seed,
                max_tree_depth=self.config.search_tree_depth,
                jit_compile=False,
                progress=False,
            )
        finally:
            for p in self.parameters():
                p.requires_grad_(True)
        z = mcmc.get_samples()["z"].detach()  # (draws, rows, d)
        return z.reshape(-1, z.shape[-1]), classes.repeat(draws), search.calls

    def ascent_search(
        self,
        judges: Judges,
        classes: torch.Tensor,
        *,
        steps: int,
        radius: float | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """The baseline: plain gradient ascent of ``log(1 - p_ens)`` on ``z`` from prior draws
        (:func:`inference.attacks.pgd`, L2 steps, no prior term), within an L2 ball of
        ``radius`` (default ``2 sqrt(d)``, wide enough to leave the typical set)."""
        from inference.attacks import pgd

        d = self.config.latent_dim
        generator = torch.Generator().manual_seed(int(seed))
        start = torch.randn(len(classes), d, generator=generator)
        radius = 2.0 * math.sqrt(d) if radius is None else float(radius)
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            z = pgd(
                lambda v: judges.log_fail(self.generate(v, classes), classes),
                start,
                radius,
                norm="l2",
                steps=int(steps),
                step_size=2.5 * radius / int(steps),
                random_start=False,
            )
        finally:
            for p in self.parameters():
                p.requires_grad_(True)
        return z

    @torch.no_grad()
    def score(
        self, judges: Judges, z: torch.Tensor, c: torch.Tensor, threshold: float
    ) -> dict[str, float]:
        """How many of the latents ``z`` (prompts ``c``) are failures: ``fail_rate`` (the
        whole ensemble says not ``c``), ``confirmed_rate`` (also the held-out classifier says
        not ``c``, the nearest real digit is not a ``c``, and it is no farther than
        ``threshold``: a natural image, not noise), ``confirmed_of_fail``, and the mean
        ``||z||^2 / d`` (near 1 in the prior's typical set)."""
        v = judges.verdict(self.generate(z, c), c)
        natural = v["nearest_dist"] <= threshold
        confirmed = v["fail"] & v["held_out"] & (v["nearest_label"] != c) & natural
        fail = v["fail"].float()
        return {
            "fail_rate": float(fail.mean()),
            "confirmed_rate": float(confirmed.float().mean()),
            "confirmed_of_fail": float(confirmed.float().sum() / fail.sum().clamp(min=1)),
            "natural_rate": float(natural.float().mean()),
            "z_norm2_per_dim": float(z.pow(2).sum(-1).mean() / z.shape[-1]),
        }

    @torch.no_grad()
    def natural_threshold(self, judges: Judges, draws: int = 100, seed: int = 0) -> float:
        """The 95th percentile of the nearest-real-digit distance of prior samples
        (``draws`` per class): images no farther than this count as natural."""
        generator = torch.Generator().manual_seed(int(seed) + 7)
        c = torch.arange(NUM_CLASSES).repeat(draws)
        z = torch.randn(len(c), self.config.latent_dim, generator=generator)
        dists = judges.verdict(self.generate(z, c), c)["nearest_dist"]
        return float(torch.quantile(dists, 0.95))

    def failure_report(self, judges: Judges, *, seed: int = 0) -> dict[str, float]:
        """The paper's check at this config: NUTS failure search over every prompt (with
        ``search_chains`` latents per prompt), against prior sampling and plain gradient
        ascent with the same number of latents and model evaluations. Keys
        ``<arm>/<score>`` (:meth:`score`), and ``nuts/calls``."""
        c = self.config
        classes = torch.arange(NUM_CLASSES).repeat(c.search_chains)
        threshold = self.natural_threshold(judges, seed=seed)
        z_nuts, c_nuts, calls = self.nuts_search(
            judges, classes, warmup=c.search_warmup, draws=c.search_draws, seed=seed
        )
        generator = torch.Generator().manual_seed(int(seed) + 1)
        z_prior = torch.randn(len(c_nuts), c.latent_dim, generator=generator)
        steps = max(1, calls // c.search_draws)  # the same evaluations per latent
        z_ascent = self.ascent_search(judges, c_nuts, steps=steps, seed=seed + 2)
        out: dict[str, float] = {"nuts/calls": float(calls), "ascent/steps": float(steps)}
        for arm, z in (("prior", z_prior), ("ascent", z_ascent), ("nuts", z_nuts)):
            for key, value in self.score(judges, z, c_nuts, threshold).items():
                out[f"{arm}/{key}"] = value
        return out

    # ----- evaluation -----------------------------------------------------------------------

    def evaluate(self, guide, data) -> dict:
        """ELBO per image, and the failure search (:meth:`failure_report`) with judges
        trained on ``data``'s real digits."""
        from inference.evaluation import elbo_per_row

        out = {"elbo_per_image": float(elbo_per_row(self, guide, data, num_particles=10).mean())}
        judges = Judges(data["x"].cpu(), data["label"].cpu(), steps=self.config.judge_steps)
        out.update(self.failure_report(judges))
        return out
