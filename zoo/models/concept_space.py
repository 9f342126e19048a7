r"""Hidden capabilities in concept space: a conditional VAE's learning trajectory on blobs with
two concepts (paper 6).

Park, Okawa, Lee, Lubana & Tanaka (NeurIPS 2024), "Emergence of Hidden Capabilities:
Exploring Learning Dynamics in Concept Space" (arXiv:2406.19370; code
cfpark00/concept-learning).

**An adaptation.** The paper trains a variational *diffusion* model (a U-Net) on 32x32
circles. Here a small conditional VAE stands in for it, on 12x12 blobs
(:mod:`zoo.datasets.blobs`), as the spec's Pyro analogue. What it keeps: a conditional
generator whose conditioning is the vector of *raw concept values* ``h`` (so it can be pushed
past the training range), two concepts (colour, size) whose pixel-space signal ``m_c``,
``m_s`` is set by the renderer, training on three of the four concept combinations, a fixed
probe trained on ground-truth renderer images that scores each concept of the generations at
checkpoints (the trajectory in concept space), and over-prompting / latent intervention to
elicit the held-out combination. What it drops: the diffusion sampler and the U-Net.

Generative story, for an image :math:`x_n \in \mathbb{R}^{3 \cdot 12 \cdot 12}` with
concept values :math:`h_n = (h_{colour}, h_{size}) \in \{0, 1\}^2` (an input, not modelled)::

    z_n ~ Normal(0, I_2)
    e_n = E_theta(h_n)                           (concept embedding: linear, or a small MLP)
    x_n ~ Normal(G_theta(z_n, e_n), s^2 I)       (MLP decoder, fixed pixel sd s)
    q(z_n | x_n, h_n) = Normal(mu_phi(x_n, h_n), diag sigma_phi(x_n, h_n)^2)

trained on the classes ``00`` (red, large), ``10`` (blue, large) and ``01`` (red, small);
``11`` (blue, small) is held out. Prompts at generation time: *naive* ``h = (1, 1)``;
*over-prompting* ``h = (1 + kappa, 1 + kappa)``; *latent intervention* in the embedding,
``e = E(0,0) + (1 + kappa) [(E(1,0) - E(0,0)) + (E(0,1) - E(0,0))]`` (each concept's
direction in embedding space, learned from the classes that show it alone, added and
amplified). With the default linear embedding (``embed_hidden=()``, the raw concept vector
entering through one linear layer, as in the paper's code) the intervention equals
over-prompting exactly; with an MLP embedding (``embed_hidden=(32,)``) it differs. z (the
blob's position jitter) is the only latent; decoder, embedding and encoder weights are point
estimates (AdamW with weight decay 0.01, as the paper trains; the spec notes it shifts the
timing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import Field
from inference.evaluation import elbo_per_row
from inference.representation import fit_linear_probe
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.datasets.blobs import CHANNELS, SIDE, blobs
from zoo.registry import register

PIXELS = CHANNELS * SIDE * SIDE
TRAIN_CLASSES = ("00", "10", "01")
CONCEPTS = ("colour", "size")
PROMPTS = ("naive", "over", "intervene")


class ConceptProbe:
    """One logistic regression per concept on pixels, fitted to ground-truth renderer
    images of all four classes (never to a model's samples): ``probs(x)`` gives
    ``(N, 2)`` probabilities of (blue, small)."""

    def __init__(self, m_c: float, m_s: float, *, per_class: int = 300, seed: int = 0):
        truth = blobs(("00", "10", "01", "11"), per_class, m_c=m_c, m_s=m_s, seed=10_000 + seed)
        # one fixed penalty (C = 0.1), not a cross-validated one: the probe is the judge
        self.heads = [
            fit_linear_probe(truth["x"], truth["h"][:, i].astype(int), penalties=(0.1,))
            for i in range(2)
        ]

    def probs(self, x) -> np.ndarray:
        x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
        return np.stack([head.predict_proba(x)[:, 1] for head in self.heads], -1)

    def scores(self, x, target=(1, 1)) -> dict[str, float]:
        """Mean P(concept = target) for each concept and the fraction of images whose both
        concepts the probe reads as ``target`` (the class accuracy)."""
        p = self.probs(x)
        t = np.asarray(target, dtype=float)
        hit = np.where(t == 1, p, 1 - p)
        return {
            "p_blue": float(p[:, 0].mean()),
            "p_small": float(p[:, 1].mean()),
            "accuracy": float(((hit > 0.5).all(-1)).mean()),
        }


@register
class ConceptSpace(ZooModel):
    """Conditional VAE on two-concept blobs, trained on 3 of 4 combinations. See the module
    doc."""

    name = "concept_space"
    summary = "CVAE on two-concept blobs: concept-space trajectory, over-prompting (adaptation)"
    paper = 6
    local_sites = ("z",)
    static_structure = True

    tiny = {"hidden": (16,), "embed_dim": 4, "per_class": 32, "steps": 20}

    @dataclass
    class Config(TrainConfig):
        m_c: float = 0.6  # colour signal (renderer channel separation)
        m_s: float = 0.1  # size signal (renderer radius separation)
        per_class: int = 512
        jitter: float = 1.0
        noise: float = 0.02
        latent_dim: int = 2
        embed_dim: int = 16
        embed_hidden: tuple[int, ...] = ()  # (): a linear embedding of h, as in the paper
        hidden: tuple[int, ...] = (128, 128)
        obs_scale: float = 0.1
        kappa: float = 1.0
        batch_size: int = 64
        lr: float = 1e-3
        optimizer: str = "adamw"
        weight_decay: float = 0.01
        steps: int = 1000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        hidden = list(c.hidden)
        self.embed = mlp([2, *c.embed_hidden, c.embed_dim])
        self.decoder = mlp([c.latent_dim + c.embed_dim, *hidden, PIXELS])
        self.encoder = NormalEncoder(PIXELS + 2, c.latent_dim, hidden)

    def check_config(self) -> None:
        c = self.config
        if not 0.0 <= c.m_c <= 1.0:
            raise ConfigError(f"m_c must be in [0, 1], got {c.m_c}")
        if not 0.0 <= c.m_s <= 0.8:
            raise ConfigError(f"m_s must be in [0, 0.8], got {c.m_s}")
        require_positive_ints(c, "per_class", "latent_dim", "embed_dim")
        require_positive_sizes(c, "hidden", "embed_hidden", allow_empty=True)
        require_positive_numbers(c, "obs_scale")
        require_non_negative_numbers(c, "jitter", "noise", "kappa")

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(shape=(PIXELS,), doc="RGB blob image, (3, 12, 12)", image=(3, SIDE, SIDE)),
            "h": Field(shape=(2,), doc="concept values (colour, size): the conditioning"),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z": dist.Normal(0.0, 1.0).expand([self.config.latent_dim]).to_event(1)}

    def decode(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        e = e.expand(z.shape[:-1] + e.shape[-1:])
        return self.decoder(torch.cat([z, e], -1))

    def model(self, batch) -> None:
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            loc = self.decode(z, self.embed(batch["h"]))
            pyro.sample("x", dist.Normal(loc, self.config.obs_scale).to_event(1), obs=batch["x"])

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, torch.cat([batch["x"], batch["h"]], -1))
            local.sample("z", loc, scale, context=context)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        c = self.config
        data = blobs(
            TRAIN_CLASSES,
            c.per_class,
            m_c=c.m_c,
            m_s=c.m_s,
            jitter=c.jitter,
            noise=c.noise,
            seed=seed,
        )
        return self.validate(data)

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["image", "latent"], "x": ["image", "pixel"], "h": ["image", "concept"]}

    # ----- generation in concept space ----------------------------------------------------

    def prompt_embedding(self, prompt: str, kappa: float | None = None) -> torch.Tensor:
        """The embedding fed to the decoder for the held-out class 11 under ``prompt``:
        ``naive`` E(1, 1), ``over`` E(1 + kappa, 1 + kappa), ``intervene`` the amplified sum
        of each concept's embedding direction (see the module doc)."""
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
        k = self.config.kappa if kappa is None else float(kappa)
        if prompt == "naive":
            return self.embed(torch.tensor([1.0, 1.0]))
        if prompt == "over":
            return self.embed(torch.tensor([1.0 + k, 1.0 + k]))
        base, colour, size = self.embed(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        return base + (1.0 + k) * ((colour - base) + (size - base))

    def generate(
        self, h=None, *, num: int = 200, prompt: str | None = None, seed: int = 0, kappa=None
    ) -> torch.Tensor:
        """Mean images ``(num, 432)`` of ``z ~ N(0, I)`` decoded at concept values ``h``
        (a pair), or at the embedding of a ``prompt`` for class 11."""
        if (h is None) == (prompt is None):
            raise ValueError("give exactly one of h (concept values) or prompt")
        generator = torch.Generator().manual_seed(int(seed))
        z = torch.randn(num, self.config.latent_dim, generator=generator)
        with self.inference_mode():
            if prompt is not None:
                e = self.prompt_embedding(prompt, kappa)
            else:
                h = torch.as_tensor(h, dtype=torch.float32)
                if h.shape != (2,) or not torch.isfinite(h).all():
                    raise ValueError(f"h must be 2 finite concept values, got {tuple(h.shape)}")
                e = self.embed(h)
            return self.decode(z, e)

    def probe(self, seed: int = 0) -> ConceptProbe:
        """The fixed concept probe for this config's renderer (ground-truth images)."""
        return ConceptProbe(self.config.m_c, self.config.m_s, seed=seed)

    def concept_scores(self, probe: ConceptProbe, *, num: int = 200, seed: int = 0) -> dict:
        """Probe scores of class-11 generations under every prompt, and the accuracy of
        each trained class's own generations: ``{"naive/p_blue", ..., "train_accuracy"}``."""
        out: dict[str, float] = {}
        for prompt in PROMPTS:
            for key, value in probe.scores(
                self.generate(prompt=prompt, num=num, seed=seed)
            ).items():
                out[f"{prompt}/{key}"] = value
        accuracies = []
        for name in TRAIN_CLASSES:
            target = (int(name[0]), int(name[1]))
            images = self.generate(target, num=num, seed=seed)
            accuracies.append(probe.scores(images, target)["accuracy"])
        out["train_accuracy"] = float(np.mean(accuracies))
        return out

    def evaluate(self, guide, data) -> dict:
        """The concept-space position of class-11 generations (P(blue), P(small) and
        accuracy for the naive, over-prompted and intervened prompts) with the probe on
        ground-truth images, the trained classes' generation accuracy, and the ELBO."""
        out = self.concept_scores(self.probe())
        out["elbo_per_image"] = float(elbo_per_row(self, guide, data, num_particles=4).mean())
        return out


def trajectory(
    model: ConceptSpace,
    data,
    *,
    steps: int,
    every: int,
    seed: int = 0,
    num: int = 100,
    probe: ConceptProbe | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` with its config's optimiser for ``steps`` steps on ``data`` and
    score its class-11 generations with a fixed probe every ``every`` steps: ``{"step":
    [...], "naive/p_blue": [...], ...}`` (the keys of :meth:`ConceptSpace.concept_scores`)."""
    from inference.svi import fit

    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be >= 1, got {steps} and {every}")
    probe = probe or model.probe()
    rows: dict[str, list[float]] = {"step": []}
    due = [every]

    def record(step: int, _loss: float) -> None:
        if step < due[0] and step != steps:
            return
        due[0] = (step // every + 1) * every
        rows["step"].append(step)
        for key, value in model.concept_scores(probe, num=num, seed=seed).items():
            rows.setdefault(key, []).append(value)

    fit(
        model,
        model.guide,
        data,
        config=model.config,
        steps=steps,
        seed=seed,
        progress=False,
        log_every=1,  # the callback sees every step: checkpoints exactly every `every`
        callback=record,
    )
    return rows


def steps_to(rows: dict[str, list[float]], key: str, level: float = 0.8) -> float:
    """First checkpoint step at which ``rows[key] >= level`` (inf if never)."""
    for step, value in zip(rows["step"], rows[key], strict=True):
        if value >= level:
            return float(step)
    return float("inf")


def hidden_checkpoints(
    rows: dict[str, list[float]], prompt: str = "over", trained: float | None = None
) -> int:
    """Checkpoints where the naive prompt's class-11 accuracy is < 50% while ``prompt``'s
    is >= 80% (the paper's hidden capability); with ``trained``, only those where the
    trained classes' own generations are also right at least that often (the capability
    hidden in a model that already makes its training classes, not in an early one)."""
    naive, other = rows["naive/accuracy"], rows[f"{prompt}/accuracy"]
    ok = rows["train_accuracy"] if trained is not None else [1.0] * len(naive)
    floor = 0.0 if trained is None else float(trained)
    return int(
        sum(n < 0.5 and o >= 0.8 and t >= floor for n, o, t in zip(naive, other, ok, strict=True))
    )
