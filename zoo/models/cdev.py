r"""CDEV (paper 26): a generator with featural binary codes and continuous noise, a
code-recovery network, and causal exploration of extreme code values; see :class:`CDEV`."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from guides import local
from guides.encoders import NormalEncoder, mlp
from inference.data import Field
from inference.diagnostics.extreme_effects import ExtremeEffects, extreme_effects
from inference.elbos import enumerating
from inference.evaluation import elbo_per_row
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)
from zoo.datasets.codas import (
    FACTOR_NAMES,
    FACTOR_OUTCOMES,
    LENGTH,
    NUISANCE_OUTCOMES,
    OUTCOMES,
    codas,
)
from zoo.registry import register

__all__ = ["CDEV", "EXTREME_VALUES", "exploration_scores"]

#: the treatment values of the causal exploration (0 is the baseline; 1 the code's only
#: other training value; 2, 3, 5 outside the training support)
EXTREME_VALUES = (1.0, 2.0, 3.0, 5.0)


@register
class CDEV(ZooModel):
    r"""fiwGAN-style featural codes explored by causal inference (CDEV), a probabilistic
    adaptation.

    Beguš, Leban & Gero (2023), "Approaching an unknown communication system by latent space
    exploration and causal inference", arXiv:2303.10931 (GAN code: the PyTorch fiwGAN port
    github.com/andleb/ciwganfiwgan-pytorch). The paper trains a WaveGAN generator
    :math:`G(c, z)` on sperm-whale codas with WGAN-GP plus an InfoGAN Q-network that must
    recover the binary code :math:`c` from :math:`G(c, z)`, then sets single bits of
    :math:`c` to values far outside {0, 1} and estimates their causal effect on measured
    properties of the generated audio. **Adaptation** (the spec's): GAN training is not
    probabilistic inference, so the generator is the decoder of a discrete-latent VAE; kept
    are the featural binary code plus continuous noise, the Q-network's code-recovery term
    on generated signals, and the CDEV stage (``poutine.do`` at extreme values, ATEs with a
    multiplicity correction) on the same decoder.

    Generative story, for 512-sample signals :math:`x_n`::

        c_n ~ Bernoulli(p_code)^K            featural bits (K = num_codes)
        z_n ~ Normal(0, I_dz)                continuous noise
        x_n ~ Normal(G(c_n, z_n), obs_scale^2 I)

    with an MLP :math:`G`. ``model`` sums :math:`c_n` out exactly over the :math:`2^K`
    configurations (a mixture likelihood); under an enumeration handler (``elbo="enum"``,
    TraceEnum_ELBO) it runs :meth:`enumerated_model`, with the code a site enumerated in
    parallel, which gives the same ELBO. The guide is amortized, :math:`q(z_n | x_n)`.
    The InfoGAN term is a ``pyro.factor`` inside the data plate:
    :math:`\lambda \log Q(\tilde c_n | G(\tilde c_n, \tilde z_n))` with
    :math:`(\tilde c_n, \tilde z_n)` fresh prior draws and :math:`Q(c | x)` a Bernoulli
    network (the spec's ``q(c|x)``), so every code must leave a mark on the output that Q
    can read (``info_weight = 0`` removes it: the ablation). :meth:`evaluate` reports the
    ELBO without it.

    CDEV: :meth:`generator` is the Pyro program :math:`(c, z) \to G(c, z)` with sites
    ``c`` and ``z``; :meth:`explore` runs
    :func:`~inference.diagnostics.extreme_effects.extreme_effects` on bit :math:`j` at
    :data:`EXTREME_VALUES` against ``do(c_j = 0)``, with the codas' outcome measurements
    (:mod:`zoo.datasets.codas`: click count, ICI trend, spectral mean, and the background
    noise level as the nuisance) and the data's spread as the scale. Values outside {0, 1}
    are fine for the decoder; never run inference on the intervened program.
    """

    name = "cdev"
    summary = "Featural binary codes + noise (fiwGAN as a VAE), explored by do() at extreme values"
    paper = 26
    local_sites = ("z",)
    #: the default data's ground-truth factors, checked when given and not modelled
    optional_fields = ("factors",)
    #: each row is a 512-sample signal scored under all 2^K code settings: the run report's
    #: draws and per-row k-hat (200 particles) use 20 codas, not the default 200
    idata_rows = 20

    tiny = {"num_rows": 200, "num_codes": 2, "hidden": (16, 32), "steps": 20, "batch_size": 64}

    @dataclass
    class Config(TrainConfig):
        num_rows: int = 3000
        num_codes: int = 5  # K: 2^K configurations are summed (at most 8)
        latent_dim: int = 3  # dz: continuous noise
        p_code: float = 0.5
        hidden: tuple[int, ...] = (32, 128)
        obs_scale: float = 0.05  # the data's noise sd
        info_weight: float = 1.0  # lambda of the code-recovery term (0: none)
        holdout: float = 0.1
        batch_size: int = 64
        lr: float = 3e-3
        steps: int | None = 1000

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.decoder = mlp([c.num_codes + c.latent_dim, *c.hidden, LENGTH])
        self.q_net = mlp([LENGTH, *reversed(c.hidden), c.num_codes])
        self.encoder = NormalEncoder(LENGTH, c.latent_dim, tuple(reversed(c.hidden)))
        codes = list(itertools.product((0.0, 1.0), repeat=c.num_codes))
        self.register_buffer("configs", torch.tensor(codes))  # (2^K, K)
        self._info = True

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "num_rows", "num_codes", "latent_dim")
        if c.num_codes > 8:
            raise ConfigError(
                f"num_codes must be at most 8 (2^K terms are summed), got {c.num_codes}"
            )
        require_positive_sizes(c, "hidden")
        if not (isinstance(c.p_code, int | float) and 0 < c.p_code < 1):
            raise ConfigError(f"p_code must lie in (0, 1), got {c.p_code!r}")
        require_positive_numbers(c, "obs_scale")
        require_non_negative_numbers(c, "info_weight")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(shape=(LENGTH,), doc="a coda: 512 samples of a click train"),
            "factors": Field(
                shape=(len(FACTOR_NAMES),),
                doc=f"ground-truth factors {FACTOR_NAMES} (not modelled; optional)",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        signals, factors = codas(self.config.num_rows, seed=int(seed))
        return self.validate({"x": signals, "factors": factors})

    # ----- model and guide ------------------------------------------------------------------

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z": dist.Normal(0.0, 1.0).expand([self.config.latent_dim]).to_event(1)}

    def code_prior(self) -> dist.Distribution:
        """p(c): independent Bernoulli(p_code) bits."""
        probs = torch.full((self.config.num_codes,), float(self.config.p_code), device=self.device)
        return dist.Bernoulli(probs).to_event(1)

    def decode(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """G(c, z): the mean signal ``(..., 512)``; ``c`` may hold any real values."""
        shape = torch.broadcast_shapes(c.shape[:-1], z.shape[:-1])
        c = c.to(z.dtype).expand(*shape, c.shape[-1])
        return self.decoder(torch.cat([c, z.expand(*shape, z.shape[-1])], -1))

    def _info_term(self, shape: torch.Size) -> torch.Tensor:
        """log Q(c~ | G(c~, z~)) per row for fresh prior draws of batch ``shape`` (InfoGAN's
        term)."""
        c = self.code_prior().sample(shape)
        z = self.prior("z").sample(shape)
        logits = self.q_net(self.decode(c, z))
        return dist.Bernoulli(logits=logits).to_event(1).log_prob(c)

    def _observe(self, z: torch.Tensor, batch, mean: torch.Tensor, mix=None) -> None:
        c = self.config
        if mix is None:
            fn = dist.Normal(mean, c.obs_scale).to_event(1)
        else:
            fn = dist.MixtureSameFamily(mix, dist.Normal(mean, c.obs_scale).to_event(1))
        pyro.sample("x", fn, obs=batch["x"])
        if self._info and c.info_weight > 0 and self.training:
            pyro.factor("code_recovery", c.info_weight * self._info_term(z.shape[:-1]))

    def model(self, batch) -> None:
        if enumerating():
            return self.enumerated_model(batch)
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            configs = self.configs.expand(*z.shape[:-1], *self.configs.shape)
            means = self.decode(configs, z.unsqueeze(-2))  # (..., 2^K, 512)
            mix = dist.Categorical(logits=self.code_prior().log_prob(self.configs))
            self._observe(z, batch, means, mix)

    def enumerated_model(self, batch) -> None:
        """The same joint with each signal's code a site, enumerated in parallel
        (TraceEnum_ELBO with max_plate_nesting=1): ``code`` indexes the 2^K configurations
        (Pyro enumerates a Categorical, not a vector of Bernoulli bits)."""
        with self.data_plate(batch):
            z = pyro.sample("z", self.prior("z"))
            k = pyro.sample(
                "code",
                dist.Categorical(logits=self.code_prior().log_prob(self.configs)),
                infer={"enumerate": "parallel"},
            )
            self._observe(z, batch, self.decode(self.configs[k], z))

    def local_guide(self, batch, global_values=None) -> None:
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, batch["x"])
            local.sample("z", loc, scale, context=context)

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["coda", "noise"], "x": ["coda", "sample"]}

    # ----- CDEV -----------------------------------------------------------------------------

    def generator(self, num: int) -> torch.Tensor:
        """The generative program of the exploration: ``c ~ p(c)``, ``z ~ p(z)`` (sites
        ``c`` and ``z``, batch ``(num,)``), returns ``G(c, z)`` ``(num, 512)``."""
        c = pyro.sample("c", self.code_prior().expand([num]))
        z = pyro.sample("z", self.prior("z").expand([num]))
        return self.decode(c, z)

    def explore(
        self,
        bit: int,
        *,
        values=EXTREME_VALUES,
        num_draws: int = 500,
        reference=None,
        seed: int = 0,
    ) -> ExtremeEffects:
        """CDEV on bit ``bit``: standardised ATEs of ``do(c_bit = v)`` against
        ``do(c_bit = 0)`` on the codas' outcomes (:data:`~zoo.datasets.codas.OUTCOMES`),
        ``reference`` (data signals) setting the scale, Benjamini-Hochberg over values x
        outcomes."""
        if (
            isinstance(bit, bool)
            or not isinstance(bit, int)
            or not 0 <= bit < self.config.num_codes
        ):
            raise ValueError(f"bit must be an integer in [0, {self.config.num_codes}), got {bit!r}")
        with self.inference_mode():
            return extreme_effects(
                self.generator,
                "c",
                OUTCOMES,
                values=values,
                baseline=0.0,
                index=bit,
                num_draws=num_draws,
                reference=reference,
                seed=seed,
            )

    @torch.no_grad()
    def code_accuracy(self, num: int = 1000, seed: int = 0) -> float:
        """Share of bits Q recovers from generated signals ``G(c, z)`` (chance 0.5)."""
        with self.inference_mode(), torch.random.fork_rng():
            torch.manual_seed(seed)
            c = self.code_prior().sample((num,))
            z = self.prior("z").sample((num,))
            guess = self.q_net(self.decode(c, z)) > 0
        return float((guess == c.bool()).float().mean())

    def probe_accuracy(self, *, steps: int = 300, num: int = 256, seed: int = 0) -> float:
        """Share of bits a *fresh* Q-network (Q's architecture, trained here for ``steps``
        Adam steps on ``num`` new generated codas each, the decoder frozen) recovers from
        generated codas: whether the bits are readable from the output at all, comparable
        between a model trained with the code-recovery term and one without (whose own Q
        never trained)."""
        c = self.config
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            probe = mlp([LENGTH, *reversed(c.hidden), c.num_codes]).to(self.device)
            optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)

            def draw():
                with torch.no_grad(), self.inference_mode():
                    code = self.code_prior().sample((num,))
                    return code, self.decode(code, self.prior("z").sample((num,)))

            for _ in range(steps):
                code, x = draw()
                loss = nn.functional.binary_cross_entropy_with_logits(probe(x), code)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            code, x = draw()
            with torch.no_grad():
                return float(((probe(x) > 0) == code.bool()).float().mean())

    def evaluate(self, guide, data) -> dict:
        """ELBO per signal (nats, 10 particles, without the code-recovery term), Q's bit
        accuracy on generated signals and the CDEV scores (:func:`exploration_scores`, 300
        draws per value, the data's spread as the scale)."""
        self._info = False
        try:
            elbo = elbo_per_row(self, guide, {"x": data["x"]}, num_particles=10)
        finally:
            self._info = True
        effects = [
            self.explore(j, num_draws=300, reference=data["x"])
            for j in range(self.config.num_codes)
        ]
        return {
            "elbo_per_signal": float(elbo.mean()),
            "code_accuracy": self.code_accuracy(),
            **exploration_scores(effects),
        }


def exploration_scores(effects: list[ExtremeEffects], *, large: float = 0.8) -> dict[str, float]:
    """The paper's check over one :class:`ExtremeEffects` per bit.

    A bit *moves* a true factor at value v when its flagged standardised effect on the
    factor's outcome (:data:`~zoo.datasets.codas.FACTOR_OUTCOMES`) reaches ``large``
    (Cohen's large effect, 0.8 sd of the data). Returned, at the in-support value 1 (the
    bit's own meaning) and at the most extreme value (``_extreme``): ``factors_found`` (true
    factors moved by some bit, of 3) and ``max_bits_per_factor`` (sparsity: the paper's map
    has at most 2); ``growth_share``: the share of (bit, factor) pairs moving at some value
    whose effect keeps growing over the values
    (:meth:`ExtremeEffects.grows_with_extremity`); ``nuisance_flags_in_support`` (flagged
    bits at value 1 on the nuisance outcomes), ``max_nuisance_effect`` (largest |std ATE|
    on a nuisance outcome at value 1) and ``nuisance_flags_extreme`` (flagged (bit, value)
    pairs on the nuisance outcomes at values outside {0, 1})."""
    out: dict[str, float] = {}
    grows = []
    for suffix, pick in (("", _at_one), ("_extreme", lambda r: int(np.argmax(r.values)))):
        found, bits = 0, []
        for outcome in FACTOR_OUTCOMES.values():
            moving = []
            for r in effects:
                col, i = r.outcomes.index(outcome), pick(r)
                if r.flags[i, col] and abs(r.std_ate[i, col]) >= large:
                    moving.append(r)
            found += bool(moving)
            bits.append(len(moving))
        out[f"factors_found{suffix}"] = float(found)
        out[f"max_bits_per_factor{suffix}"] = float(max(bits))
    for outcome in FACTOR_OUTCOMES.values():
        for r in effects:
            col = r.outcomes.index(outcome)
            if (r.flags[:, col] & (np.abs(r.std_ate[:, col]) >= large)).any():
                grows.append(r.grows_with_extremity(outcome))
    in_support = extreme = 0
    sizes = []
    for r in effects:
        cols = [r.outcomes.index(o) for o in NUISANCE_OUTCOMES]
        one = _at_one(r)
        in_support += int(r.flags[one, cols].sum())
        extreme += int(r.flags[np.abs(r.values) > 1][:, cols].sum())
        sizes.append(np.abs(r.std_ate[one, cols]).max())
    return {
        **out,
        "growth_share": float(np.mean(grows)) if grows else math.nan,
        "nuisance_flags_in_support": float(in_support),
        "max_nuisance_effect": float(max(sizes)),
        "nuisance_flags_extreme": float(extreme),
    }


def _at_one(r: ExtremeEffects) -> int:
    if not np.isclose(r.values, 1.0).any():
        raise ValueError("the exploration must include the in-support value 1")
    return int(np.argmin(np.abs(r.values - 1.0)))
