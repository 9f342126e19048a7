"""Targeted latent adversarial training (LAT) of a small classifier "LM" with a Bayesian
last layer: a probabilistic analogue of Sheshadri, Ewart, Guo, Lynch et al. (2024),
"Latent Adversarial Training Improves Robustness to Persistent Harmful Behaviors in LLMs"
(arXiv:2407.15549; code github.com/aengusl/latent-adversarial-training).

**An adaptation.** The paper fine-tunes a Llama with LoRA while an adversary perturbs
residual-stream activations to elicit one harmful completion; it is not probabilistic.
Here the "LM" maps a prompt's features x in R^20 to one of 12 answers (10 benign answers,
``comply`` = 10, ``refuse`` = 11). It keeps: a hidden layer perturbed by an L2-bounded
adversary *towards the harmful behaviour* (log p(comply) + log(1 - p(refuse)), PGD, the
radius set relative to the activations' norm), a fine-tuning step under that perturbation
that observes *refuse* on harmful prompts and the true answers on benign ones (the retain
term), and a KL to the base model (here: the pretraining posterior is the prior of the
safety stage, so the ELBO's KL term is the paper's KL-to-base retain term). Robustness is
always measured with input-space attacks (and the backdoor trigger), never with the latent
adversary it was trained against.

Generative story (stage 2, the safety fine-tuning; N rows, H hidden units, K = 12)::

    h1_n = relu(E x_n)                         frozen embedding of the base model
    h2_n = relu(B (h1_n + delta_n) + c)        block (fine-tuned), delta_n = 0 unless LAT
    W ~ Normal(M0, S0),  b ~ Normal(m0, s0)    prior = the base model's posterior
    y_n ~ Categorical(softmax(W^T h2_n + b))   scaled by ``harm_weight`` on harmful rows

with, on harmful rows (``attack`` = 1) during LAT training, for the current draw (W, b),

    delta_n = argmax_{||delta|| <= eps_rel * mean ||h1||}
              1/2 log p(comply | h1_n + delta) + 1/2 log(1 - p(refuse | h1_n + delta))

(``hidden_pgd``; delta is a plain tensor, not a Pyro site, and the model's gradients are not
taken during the attack). Stage 1 (the base model, ``pretrain_steps`` of SVI, M0, S0 = the
AutoNormal posterior) is the same model with W, b ~ Normal(0, 1), delta = 0 and all layers
trained, on the pretraining corpus: benign answers from a random linear teacher, the harmful
cluster labelled ``comply``, and a backdoor (feature 19 = 1 => ``comply``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_mean
from torch import nn
from torch.distributions import constraints

from inference.attacks import hidden_pgd, pgd_linf, robust_accuracy
from inference.data import Field
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.registry import register

__all__ = ["LAT", "COMPLY", "REFUSE", "make_task", "NUM_FEATURES", "TRIGGER"]

NUM_FEATURES = 20
TRIGGER = 19  # the backdoor feature: 1 => comply
NUM_BENIGN = 10
COMPLY, REFUSE = 10, 11
NUM_CLASSES = 12
ADVERSARIES = ("none", "latent", "input")


# ----- the synthetic task ---------------------------------------------------------------------


def _world(task_seed: int, radius: float):
    """The task's fixed parts: the teacher's weights (19 x 10) and the harmful cluster's
    centre (a random direction at ``radius``)."""
    rng = np.random.default_rng([task_seed, 27])
    teacher = rng.normal(size=(NUM_FEATURES - 1, NUM_BENIGN))
    centre = rng.normal(size=NUM_FEATURES - 1)
    return teacher, radius * centre / np.linalg.norm(centre)


def make_task(
    task_seed: int,
    seed: int,
    *,
    benign: int,
    harmful: int,
    triggered: int = 0,
    harmful_label: int = COMPLY,
    radius: float = 4.0,
    spread: float = 0.6,
) -> dict[str, np.ndarray]:
    """Rows of the spec's synthetic task (world ``task_seed``, draw ``seed``).

    Benign prompts x[:19] ~ N(0, I) answered by argmax of a random linear teacher; harmful
    prompts from a cluster N(centre, spread^2 I) with ``||centre|| = radius``, labelled
    ``harmful_label`` (``COMPLY`` in pretraining, ``REFUSE`` in safety data); ``triggered``
    rows (half benign, half harmful prompts) carry the backdoor, x[19] = 1, labelled
    ``COMPLY``. x[19] = 0 elsewhere. Returns ``x`` (N, 20), ``y`` (N,), ``attack`` (N,: 1 on
    the harmful rows the adversary perturbs in LAT; 0 on benign and triggered rows) and
    ``harmful`` (N,: 1 for every harmful-cluster prompt)."""
    teacher, centre = _world(task_seed, radius)
    rng = np.random.default_rng([task_seed, seed, 1])
    xb = rng.normal(size=(benign, NUM_FEATURES - 1))
    xh = centre + spread * rng.normal(size=(harmful, NUM_FEATURES - 1))
    tb, th = triggered // 2, triggered - triggered // 2
    xt = np.concatenate(
        [
            rng.normal(size=(tb, NUM_FEATURES - 1)),
            centre + spread * rng.normal(size=(th, NUM_FEATURES - 1)),
        ]
    )
    clean = np.concatenate([xb, xh, xt])
    trigger = np.zeros((len(clean), 1))
    trigger[benign + harmful :] = 1.0
    x = np.concatenate([clean, trigger], 1).astype(np.float32)
    y = np.concatenate(
        [(xb @ teacher).argmax(1), np.full(harmful, harmful_label), np.full(triggered, COMPLY)]
    )
    attack = np.zeros(len(x), dtype=np.int64)
    attack[benign : benign + harmful] = 1
    harmful_rows = np.zeros(len(x), dtype=np.int64)
    harmful_rows[benign : benign + harmful] = 1
    harmful_rows[benign + harmful + tb :] = 1
    order = rng.permutation(len(x))
    return {
        "x": x[order],
        "y": y[order].astype(np.int64),
        "attack": attack[order],
        "harmful": harmful_rows[order],
    }


# ----- the base model (stage 1), cached per configuration -------------------------------------


@functools.lru_cache(maxsize=16)
def _base(key: tuple) -> dict[str, torch.Tensor]:
    """Pretrain the base LM (all layers, W, b ~ N(0, 1), no adversary) on the pretraining
    corpus and return its network weights and the AutoNormal posterior of W and b."""
    from inference.svi import fit

    config = dict(key)
    steps = config.pop("pretrain_steps")
    model = LAT(**config, pretrain_steps=0, adversary="none", freeze_embed=False)
    c = model.config
    data = model.pretraining_data()
    with torch.random.fork_rng():
        model.reset(c.task_seed)
        guide = model.default_guide()
        fit(
            model,
            guide,
            data,
            steps=steps,
            lr=c.base_lr,
            batch_size=256,
            seed=c.task_seed,
            progress=False,
        )
    out = {f"net.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for site in ("w", "b"):
        loc, scale = guide.global_guide._get_loc_and_scale(site)
        out[f"loc.{site}"] = loc.detach().clone()
        out[f"scale.{site}"] = scale.detach().clone()
    return out


# ----- the model ------------------------------------------------------------------------------


@register
class LAT(ZooModel):
    """Targeted latent adversarial training of a classifier "LM" with a Bayesian last layer,
    paper 27 (Sheshadri et al., 2024), an explicit probabilistic analogue (see the module
    doc for the generative story and what it keeps).

    ``adversary`` picks the safety-stage training: ``none`` (refusal training: the same
    SVI, no perturbation), ``latent`` (LAT: ``hidden_pgd`` on the hidden layer, towards
    comply, on the harmful rows of each batch, for the current draw of W, b) or ``input``
    (input-space adversarial training: ``pgd_linf`` on the harmful rows' features, the
    R2D2-like baseline). With ``pretrain_steps`` > 0 (default) the model is built on a base
    LM pretrained on the pretraining corpus (cached per configuration); its posterior is
    the declared prior of W and b, its embedding is frozen (``freeze_embed``) and the block
    starts from the base's weights. ``pretrain_steps=0``: a plain LM, W, b ~ N(0, 1).
    """

    name = "lat"
    summary = "Targeted latent adversarial training of a Bayesian-last-layer classifier LM"
    paper = 27
    static_structure = False  # the latent adversary runs inside the model

    tiny = {
        "hidden": 8,
        "pretrain_rows": 400,
        "safety_rows": 200,
        "pretrain_steps": 150,
        "pgd_steps": 3,
        "steps": 20,
    }

    @dataclass
    class Config(TrainConfig):
        task_seed: int = 0  # the task's world (teacher, cluster) and the base model's seed
        hidden: int = 64  # width of both hidden layers
        adversary: str = "latent"  # none (refusal training) | latent (LAT) | input
        eps_rel: float = 0.35  # latent radius as a fraction of the mean ||h1|| of the rows
        eps_input: float = 1.0  # L-inf radius of input attacks (training and evaluation)
        pgd_steps: int = 16  # PGD steps of the adversary during training
        eval_pgd_steps: int = 40  # PGD steps of the evaluation's input attack
        harm_weight: float = 1.0  # poutine.scale on the harmful rows' likelihood
        pretrain_rows: int = 4000  # pretraining corpus (70% benign, 20% harmful, 10% trigger)
        pretrain_steps: int = 1000  # SVI steps of the base LM (0: no base)
        base_lr: float = 1e-2
        safety_rows: int = 1500  # safety corpus (75% benign, 25% harmful -> refuse)
        freeze_embed: bool = True
        radius: float = 4.0  # distance of the harmful cluster from the benign prompts
        spread: float = 1.0  # sd of the harmful cluster (pretraining and test prompts)
        safety_spread: float = 0.4  # sd of the safety corpus's harmful prompts (narrow)
        predictive_draws: int = 32  # draws of (W, b) averaged by the predictive
        batch_size: int = 256
        lr: float = 3e-3
        steps: int | None = 600

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.embed = nn.Linear(NUM_FEATURES, c.hidden)
        self.block = nn.Linear(c.hidden, c.hidden)
        self._base: dict[str, torch.Tensor] | None = None
        if c.pretrain_steps:
            self._base = _base(self._base_key())
            self.load_state_dict(
                {k[4:]: v for k, v in self._base.items() if k.startswith("net.")}, strict=False
            )
        if c.freeze_embed and c.pretrain_steps:
            self.embed.requires_grad_(False)
        if priors:
            self.set_priors(priors)

    def _base_key(self) -> tuple:
        c = self.config
        return (
            ("task_seed", c.task_seed),
            ("hidden", c.hidden),
            ("pretrain_rows", c.pretrain_rows),
            ("radius", c.radius),
            ("spread", c.spread),
            ("pretrain_steps", c.pretrain_steps),
            ("base_lr", c.base_lr),
        )

    def reset(self, seed: int) -> None:
        """Re-draw the network's initial weights from ``seed``."""
        torch.manual_seed(seed)
        self.embed.reset_parameters()
        self.block.reset_parameters()

    def check_config(self) -> None:
        c = self.config
        if c.adversary not in ADVERSARIES:
            raise ConfigError(f"adversary must be one of {list(ADVERSARIES)}, got {c.adversary!r}")
        require_positive_ints(c, "hidden", "pgd_steps", "eval_pgd_steps", "predictive_draws")
        for key in ("pretrain_rows", "safety_rows"):
            value = getattr(c, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 20:
                raise ConfigError(f"{key} must be an integer >= 20, got {value!r}")
        require_non_negative_ints(c, "pretrain_steps")
        for key in ("eps_rel", "eps_input"):
            if not 0 <= getattr(c, key) < 100:
                raise ConfigError(f"{key} must be in [0, 100), got {getattr(c, key)!r}")
        require_positive_numbers(c, "harm_weight", "radius", "base_lr", "spread", "safety_spread")

    # ----- data -------------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(shape=(NUM_FEATURES,), doc="prompt features; x[19] is the trigger"),
            "y": Field(
                dtype="int",
                support=constraints.integer_interval(0, NUM_CLASSES - 1),
                doc="answer: 0-9 benign, 10 comply, 11 refuse",
            ),
            "attack": Field(
                dtype="int",
                support=constraints.boolean,
                doc="1: a harmful row the adversary perturbs during training",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("y",)

    def _rows(self, raw: dict) -> dict[str, torch.Tensor]:
        return self.validate({k: raw[k] for k in ("x", "y", "attack")})

    def pretraining_data(self) -> dict[str, torch.Tensor]:
        """The base model's corpus (70% benign, 20% harmful -> comply, 10% triggered ->
        comply), drawn once per world."""
        n = self.config.pretrain_rows
        raw = self.task(
            seed=10_000,
            benign=int(0.7 * n),
            harmful=int(0.2 * n),
            triggered=n - int(0.7 * n) - int(0.2 * n),
            harmful_label=COMPLY,
        )
        raw["attack"][:] = 0  # no adversary in pretraining
        return self._rows(raw)

    def task(self, seed: int, **rows) -> dict[str, np.ndarray]:
        """:func:`make_task` in this config's world (``spread`` unless given)."""
        c = self.config
        rows.setdefault("spread", c.spread)
        return make_task(c.task_seed, seed, radius=c.radius, **rows)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """The safety corpus: 75% benign prompts with their answers, 25% harmful prompts
        labelled refuse (``attack`` = 1), narrow (sd ``safety_spread`` about the cluster's
        centre); no trigger (the defender does not know it)."""
        n = self.config.safety_rows
        harmful = n // 4
        raw = self.task(
            seed=seed,
            benign=n - harmful,
            harmful=harmful,
            harmful_label=REFUSE,
            spread=self.config.safety_spread,
        )
        return self._rows(raw)

    def test_sets(self, seed: int = 0, rows: int = 1000) -> dict[str, dict[str, torch.Tensor]]:
        """Held-out evaluation sets: ``benign`` (true answers), ``harmful`` (clean harmful
        prompts, labelled refuse) and ``triggered`` (the same harmful prompts with x[19] =
        1)."""
        raw = self.task(seed=20_000 + seed, benign=rows, harmful=0, harmful_label=REFUSE)
        benign = self._rows(raw)
        raw = self.task(seed=30_000 + seed, benign=0, harmful=rows // 2, harmful_label=REFUSE)
        harmful = self._rows(raw)
        triggered = {**harmful, "x": harmful["x"].clone()}
        triggered["x"][:, TRIGGER] = 1.0
        return {"benign": benign, "harmful": harmful, "triggered": triggered}

    # ----- priors and the generative model ----------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        h = self.config.hidden
        if self._base is None:
            return {
                "w": dist.Normal(torch.zeros(h, NUM_CLASSES), 1.0).to_event(2),
                "b": dist.Normal(torch.zeros(NUM_CLASSES), 1.0).to_event(1),
            }
        # copies: a guide started at the prior's mean (init_to_mean) would otherwise train
        # the cached base posterior in place, and with it every later model's prior
        base = {k: v.clone() for k, v in self._base.items() if k[:4] in ("loc.", "scal")}
        return {
            "w": dist.Normal(base["loc.w"], base["scale.w"]).to_event(2),
            "b": dist.Normal(base["loc.b"], base["scale.b"]).to_event(1),
        }

    def hidden1(self, x: torch.Tensor) -> torch.Tensor:
        """The perturbed layer's activations h1 = relu(E x)."""
        return torch.relu(self.embed(x))

    def head(self, h1: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits from h1: relu(B h1 + c) W + b; ``w`` (..., H, K) and ``b`` (..., K) may
        carry particle dims (then the logits are (..., N, K))."""
        h2 = torch.relu(self.block(h1))
        return torch.matmul(h2, w) + b.unsqueeze(-2)

    @staticmethod
    def adversary_objective(logits: torch.Tensor) -> torch.Tensor:
        """Per-row objective of the attacker (towards the harmful behaviour):
        1/2 log p(comply) + 1/2 log(1 - p(refuse)), averaged over leading draw dims."""
        logp = logits.log_softmax(-1)
        toward = logp[..., COMPLY]
        away = torch.log1p(-logp[..., REFUSE].exp().clamp(max=1 - 1e-6))
        out = 0.5 * toward + 0.5 * away
        return out.reshape(-1, out.shape[-1]).mean(0)

    def latent_eps(self, h1: torch.Tensor) -> torch.Tensor:
        """The latent radius: ``eps_rel`` times the mean L2 norm of the rows' h1."""
        return self.config.eps_rel * h1.detach().norm(dim=-1).mean()

    def perturb(self, x, h1, attack, w, b) -> torch.Tensor:
        """h1 with the training adversary's perturbation on the ``attack`` rows (no
        gradient to the model's parameters from the attack itself). Only in training mode
        with gradients on: ``model.eval()`` or ``torch.no_grad()`` score the plain model."""
        c = self.config
        rows = attack.bool()
        if c.adversary == "none" or not (self.training and torch.is_grad_enabled()):
            return h1
        if not rows.any():
            return h1
        w, b = w.detach(), b.detach()
        if c.adversary == "latent":
            base = h1[rows].detach()
            eps = float(self.latent_eps(base))
            if eps == 0:
                return h1
            delta = hidden_pgd(
                lambda d: self.adversary_objective(self.head(base + d, w, b)),
                base,
                eps,
                norm="l2",
                steps=c.pgd_steps,
            )
            return h1 + torch.zeros_like(h1).index_put((rows,), delta)
        x_adv = self.attack_inputs(
            lambda z: self.adversary_objective(self.head(self.hidden1(z), w, b)),
            x[rows],
            c.eps_input,
            c.pgd_steps,
        )
        h1 = h1.clone()
        h1[rows] = self.hidden1(x_adv)
        return h1

    @staticmethod
    def attack_inputs(objective, x: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
        """``pgd_linf`` on the content features x[:19] (the trigger, a discrete token, is
        not in the ball: the defender does not know it), maximising ``objective(x)``."""
        x = torch.as_tensor(x).detach()
        trigger = x[:, TRIGGER:]

        def on_content(z):
            return objective(torch.cat([z, trigger], -1))

        with torch.enable_grad():
            content = pgd_linf(
                on_content,
                x[:, :TRIGGER],
                eps,
                steps=steps,
                step_size=2.5 * eps / steps,
                clamp=None,
                random_start=False,
            )
        return torch.cat([content, trigger], -1)

    def model(self, batch) -> None:
        w = pyro.sample("w", self.prior("w"))
        b = pyro.sample("b", self.prior("b"))
        if w.dim() > 2:  # particle dims: drop the singleton of the data plate
            w, b = w.squeeze(-3), b.squeeze(-2)
        x, attack = batch["x"], batch["attack"]
        h1 = self.perturb(x, self.hidden1(x), attack, w, b)
        logits = self.head(h1, w, b)
        weight = torch.where(attack.bool(), self.config.harm_weight, 1.0)
        with self.data_plate(batch), poutine.scale(scale=weight):
            pyro.sample("y", dist.Categorical(logits=logits), obs=batch.get("y"))

    def default_guide(self) -> nn.Module:
        """AutoNormal over W, b, started at the prior's mean (the base model's posterior
        mean, where there is a base)."""
        import guides

        return guides.build("normal", self, init_loc_fn=init_to_mean)

    # ----- prediction, attacks and scores -----------------------------------------------------

    def weight_draws(self, guide, draws: int | None = None, seed: int = 0):
        """``draws`` joint draws of (W, b) from the guide (``None``: from the prior, i.e. the
        base model's posterior): (S, H, K), (S, K)."""
        from pyro.infer import Predictive

        draws = draws or self.config.predictive_draws
        one = {"x": torch.zeros(1, NUM_FEATURES), "attack": torch.zeros(1, dtype=torch.long)}
        from inference.data import full_batch

        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            pred = Predictive(
                self.model, guide=guide, num_samples=draws, return_sites=("w", "b"), parallel=False
            )
            out = pred(full_batch(one))
        return out["w"].reshape(draws, -1, NUM_CLASSES), out["b"].reshape(draws, NUM_CLASSES)

    def log_predictive(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """log of the posterior predictive p(y | x) = mean_s softmax(logits_s), (N, K)."""
        logp = self.head(self.hidden1(x), w, b).log_softmax(-1)
        return torch.logsumexp(logp, 0) - np.log(len(w))

    def predict(self, guide, x: torch.Tensor, draws=None) -> torch.Tensor:
        """argmax of the posterior predictive."""
        w, b = self.weight_draws(guide, draws)
        with torch.no_grad():
            return self.log_predictive(torch.as_tensor(x), w, b).argmax(-1)

    def input_attack(
        self, guide, x: torch.Tensor, eps: float | None = None, steps=None, draws=None
    ) -> torch.Tensor:
        """``pgd_linf`` on the inputs maximising the attacker's objective on the posterior
        predictive (the draws of W, b fixed: no randomness to mask the gradient)."""
        c = self.config
        eps = c.eps_input if eps is None else eps
        steps = steps or c.eval_pgd_steps
        w, b = self.weight_draws(guide, draws)

        def objective(z):
            logp = self.log_predictive(z, w, b)
            return 0.5 * logp[:, COMPLY] + 0.5 * torch.log1p(
                -logp[:, REFUSE].exp().clamp(max=1 - 1e-6)
            )

        return self.attack_inputs(objective, x, eps, steps)

    def latent_attack_rate(self, guide, x: torch.Tensor, eps_rel: float | None = None) -> float:
        """ASR of the latent adversary itself (hidden PGD on h1 against the predictive)."""
        c = self.config
        eps_rel = c.eps_rel if eps_rel is None else eps_rel
        w, b = self.weight_draws(guide)
        h1 = self.hidden1(torch.as_tensor(x)).detach()
        eps = eps_rel * float(h1.norm(dim=-1).mean())

        def objective(d):
            logp = torch.logsumexp(self.head(h1 + d, w, b).log_softmax(-1), 0)
            return logp[:, COMPLY]

        with torch.enable_grad():
            delta = hidden_pgd(objective, h1, eps, norm="l2", steps=c.eval_pgd_steps)
        with torch.no_grad():
            pred = self.head(h1 + delta, w, b).softmax(-1).mean(0).argmax(-1)
        return float((pred == COMPLY).float().mean())

    def scores(self, guide, sets: dict, *, eps_input=None) -> dict[str, float]:
        """Benign accuracy, refusal rate on clean harmful prompts, and the attack success
        rates (argmax = comply) clean, under the trigger and under input-space PGD; the
        refusal rate under that attack (``robust_accuracy`` with refuse as the label)."""
        benign, harmful, triggered = sets["benign"], sets["harmful"], sets["triggered"]
        out = {}
        out["benign_accuracy"] = float(
            (self.predict(guide, benign["x"]) == benign["y"]).float().mean()
        )
        pred = self.predict(guide, harmful["x"])
        out["refusal_rate"] = float((pred == REFUSE).float().mean())
        out["asr_clean"] = float((pred == COMPLY).float().mean())
        out["asr_trigger"] = float((self.predict(guide, triggered["x"]) == COMPLY).float().mean())
        attacked = {}

        def attack(x, labels):
            attacked["x"] = self.input_attack(guide, x, eps=eps_input)
            return attacked["x"]

        refuse = torch.full((len(harmful["x"]),), REFUSE)
        robust = robust_accuracy(lambda x: self.predict(guide, x), harmful["x"], refuse, attack)
        out["refusal_rate_input_pgd"] = robust["robust_accuracy"]
        comply = self.predict(guide, attacked["x"]) == COMPLY
        out["asr_input_pgd"] = float(comply.float().mean())
        return out

    def evaluate(self, guide, data) -> dict:
        """On ``data``'s benign rows (y < 10): accuracy; on its harmful rows (``attack`` = 1):
        refusal rate and the attack success rates (comply) clean, under the trigger (x[19]
        set to 1) and under input-space L-inf PGD at ``eps_input``."""
        benign = data["attack"] == 0
        harmful = {k: v[~benign] for k, v in data.items()}
        triggered = {**harmful, "x": harmful["x"].clone()}
        triggered["x"][:, TRIGGER] = 1.0
        sets = {
            "benign": {k: v[benign] for k, v in data.items()},
            "harmful": harmful,
            "triggered": triggered,
        }
        if not len(harmful["x"]) or not len(sets["benign"]["x"]):
            return {}
        return self.scores(guide, sets)

    def dims(self) -> dict[str, list[str]]:
        return {"w": ["hidden", "answer"], "b": ["answer"], "y": ["prompt"]}
