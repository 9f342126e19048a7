"""Met2Net (paper 15) as a latent state-space model with decoupled two-stage training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.func import functional_call

from guides import local
from inference.data import Field
from inference.metrics import interval_coverage
from inference.svi import fit
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_numbers,
    require_positive_ints,
)
from zoo.models.met2net.data import VARIABLES, coupled_fields
from zoo.models.met2net.nets import Translator, WindowDecoder, WindowEncoder
from zoo.registry import register

__all__ = ["Met2Net", "STAGES"]

#: what ``model`` computes: the joint ELBO (end-to-end), stage I (autoencoders, the EMA
#: translator frozen) or stage II (the translator on the encoder's detached codes)
STAGES = ("joint", "autoencoder", "transition")


@register
class Met2Net(ZooModel):
    """Met2Net as a latent Gaussian state-space model over two windows of frames, paper 15:
    Li, Yang, Chen & Qin, "Met2Net: A Decoupled Two-Stage Spatio-Temporal Forecasting Model
    for Complex Meteorological Systems", ICCV 2025 (github.com/ShremG/Met2Net).

    **An adaptation.** The paper is a deterministic forecaster (12 -> 12 frames, MSE).
    This keeps its architecture and its training scheme and makes the latent codes random
    variables. A sequence is one row of ``2W`` frames of C variables on a G x G grid:
    the past window x (frames 1..W) and the future window y (frames W+1..2W). For each
    sequence n::

        z_past_n ~ Normal(0, I)                                (code of the past window)
        z_next_n ~ Normal(Trans(z_past_n), sigma_z^2 I)        (latent transition)
        x_n^c    ~ Normal(Dec_c(z_past_n^c), sigma_c^2 I)      c = 1..C
        y_n^c    ~ Normal(Dec_c(z_next_n^c), sigma_c^2 I)

    with per-variable decoders Dec_c (the paper's "variables as modalities"), and a
    translator Trans that mixes the variables by cross-variable self-attention and a 3x3
    convolution (the paper's CIMidNet, much smaller). The guide encodes each window with
    the per-variable encoders: q(z_past | x) = N(Enc(x), s(x)^2), q(z_next | y) =
    N(Enc(y), s(y)^2). The forecast is Dec(Trans(Enc(x))); predictive draws add the code
    noise s, sigma_z and sigma_c.

    Training (:meth:`fit_decoupled`), the paper's two stages as two SVI fits over the same
    model and guide per round, each training only its parts (``fit(trainable=...)``):

    - stage I (``stage="autoencoder"``): the ELBO above with the translator replaced by
      its EMA copy Trans_k (buffers, never trained); encoders, decoders and sigma_c train;
    - stage II (``stage="transition"``): ``Enc(y) ~ N(Trans(Enc(x)), sigma_z^2 I)``
      observed on the encoder's detached means (the paper's Enc_k, a plain copy: nothing
      changes the encoder during stage II, so the copy is the encoder itself under
      ``no_grad``); only Trans and sigma_z train;
    - then Trans_k <- m Trans_k + (1 - m) Trans (``momentum`` m = 0.9 as the paper's
      its.py; m = 0: a hard copy, no EMA).

    One round here stands for one of the paper's alternating steps. What differs: the
    paper's stage I trains on the forecast through Trans_k, here on the ELBO (both windows
    reconstructed through their codes, plus the KL of z_next to Trans_k's prediction); the
    paper alternates per minibatch with one optimizer, here per round with a fresh Adam in
    each fit. ``zoo train`` trains the joint ELBO (``stage="joint"``: all parts at once,
    end to end); ``per_variable=False`` gives the end-to-end baseline with the variables as
    channels of one encoder and decoder.
    """

    name = "met2net"
    summary = "Latent state-space forecaster: per-variable codes, two-stage training, EMA"
    paper = 15
    local_sites = ("z_past", "z_next")

    tiny = {"num_sequences": 48, "hid": 2, "heads": 1, "blocks": 1, "steps": 20}

    @dataclass
    class Config(TrainConfig):
        num_vars: int = 3
        window: int = 6  # frames in and frames out (6 -> 6)
        grid: int = 16
        hid: int = 8  # code channels per variable (the code map is G/2 x G/2)
        blocks: int = 1  # translator blocks
        heads: int = 2  # cross-variable attention heads (divide hid)
        per_variable: bool = True  # False: the variables as channels of one encoder/decoder
        momentum: float = 0.9  # EMA of the frozen translator (0: a hard copy)
        rounds: int = 10  # stage I / stage II alternations of fit_decoupled
        num_sequences: int = 1000  # default data
        wind: float = 0.8  # default data: rms wind speed (cells per frame)
        diffusion: float = 0.1
        noise: float = 0.05
        batch_size: int = 32
        lr: float = 2e-3
        steps: int | None = 1000
        holdout: float = 0.2

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.encoder = WindowEncoder(c.num_vars, c.window, c.hid, c.per_variable)
        self.decoder = WindowDecoder(c.num_vars, c.window, c.hid, c.grid, c.per_variable)
        self.decoder_log_scale = nn.Parameter(torch.full((c.num_vars,), -1.0))
        self.trans = Translator(c.num_vars, c.hid, c.grid, c.blocks, c.heads)
        self.trans_log_scale = nn.Parameter(torch.tensor(-1.0))
        for name, value in self.trans.named_parameters():
            self.register_buffer(_ema_name(name), value.detach().clone())
        self.stage = "joint"

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(c, "num_vars", "window", "grid", "hid", "blocks",
                              "heads", "rounds", "num_sequences", "batch_size")  # fmt: skip
        if c.grid % 2:
            raise ConfigError(f"grid must be even (codes are grid/2 maps), got {c.grid}")
        if c.hid % c.heads:
            raise ConfigError(f"heads ({c.heads}) must divide hid ({c.hid})")
        if not isinstance(c.per_variable, bool):
            raise ConfigError(f"per_variable must be true or false, got {c.per_variable!r}")
        if not 0.0 <= c.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {c.momentum}")
        require_non_negative_numbers(c, "wind", "diffusion", "noise")
        if c.diffusion > 0.25:
            raise ConfigError(f"diffusion must be <= 0.25 (explicit step), got {c.diffusion}")

    # ----- data -----------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "frames": Field(
                shape=(2 * c.window, c.num_vars, c.grid, c.grid),
                image=(c.grid, c.grid),
                doc=f"a sequence: {c.window} past then {c.window} future frames of "
                f"{c.num_vars} variables (default data: {', '.join(VARIABLES)})",
            )
        }

    def data_error_hint(self, error) -> str | None:
        c = self.config
        if "shape" in str(error):
            return (
                f"a row is {2 * c.window} frames ({c.window} in, {c.window} out) x num_vars x "
                "grid x grid; set window, num_vars and grid to fit your data"
            )
        return None

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """:func:`~zoo.models.met2net.data.coupled_fields`: temperature advected by an
        evolving wind (u, v), diffusion, noise; ``num_sequences`` rows."""
        c = self.config
        if c.num_vars != len(VARIABLES):
            raise ConfigError(
                f"the default data have {len(VARIABLES)} variables; num_vars is {c.num_vars}"
            )
        frames = coupled_fields(
            c.num_sequences,
            grid=c.grid,
            frames=2 * c.window,
            wind=c.wind,
            diffusion=c.diffusion,
            noise=c.noise,
            seed=seed,
        )
        return self.validate({"frames": frames})

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"z_past": dist.Normal(0.0, 1.0).expand([self.code_size]).to_event(1)}

    @property
    def code_size(self) -> int:
        c = self.config
        return c.num_vars * c.hid * (c.grid // 2) ** 2

    # ----- the model ------------------------------------------------------------------------

    def windows(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.config.window
        return frames[..., :w, :, :, :], frames[..., w:, :, :, :]

    def ema_trans(self, code: torch.Tensor) -> torch.Tensor:
        """Trans_k: the translator run with its EMA weights (buffers, no gradient)."""
        weights = {n: getattr(self, _ema_name(n)) for n, _ in self.trans.named_parameters()}
        return functional_call(self.trans, weights, (code,))

    @torch.no_grad()
    def update_ema(self, momentum: float | None = None) -> None:
        """Trans_k <- m Trans_k + (1 - m) Trans (``momentum`` m; default the config's)."""
        m = self.config.momentum if momentum is None else momentum
        for name, value in self.trans.named_parameters():
            getattr(self, _ema_name(name)).mul_(m).add_(value.detach(), alpha=1 - m)

    def _obs_scale(self) -> torch.Tensor:
        return self.decoder_log_scale.exp()[:, None, None]

    def model(self, batch) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.stage == "transition":
            return self._transition_model(batch)
        trans = self.trans if self.stage == "joint" else self.ema_trans
        with self.data_plate(batch):
            z_past = pyro.sample("z_past", self.prior("z_past"))
            z_scale = self.trans_log_scale.exp()
            z_next = pyro.sample("z_next", dist.Normal(trans(z_past), z_scale).to_event(1))
            mean = torch.cat([self.decoder(z_past), self.decoder(z_next)], -4)
            obs = dist.Normal(mean, self._obs_scale().expand(mean.shape[-3:])).to_event(4)
            pyro.sample("frames", obs, obs=batch["frames"])

    def _transition_model(self, batch) -> None:
        """Stage II: the encoder's codes of both windows, detached, and the transition's
        likelihood of the future code given the past one."""
        past, future = self.windows(batch["frames"])
        with torch.no_grad():
            code_past, code_next = self.encoder(past)[0], self.encoder(future)[0]
        with self.data_plate(batch):
            pred = dist.Normal(self.trans(code_past), self.trans_log_scale.exp()).to_event(1)
            pyro.sample("code_next", pred, obs=code_next)

    def local_guide(self, batch, global_values=None) -> None:
        if self.stage == "transition":
            return  # stage II observes the codes: no latent site
        past, future = self.windows(batch["frames"])
        with self.data_plate(batch):
            loc, scale, context = local.encode(self, past)
            local.sample("z_past", loc, scale, context=context)
            loc, scale, context = local.encode(self, future)
            local.sample("z_next", loc, scale, context=context)

    def dims(self) -> dict[str, list[str]]:
        return {
            "z_past": ["sequence", "code"],
            "z_next": ["sequence", "code"],
            "frames": ["sequence", "frame", "variable", "row", "col"],
        }

    # ----- training: the paper's two stages -------------------------------------------------

    def fit_decoupled(self, guide, data, *, steps=None, rounds=None, momentum=None,
                      seed: int = 0, progress: bool = False, **options) -> dict:  # fmt: skip
        """Two-stage decoupled training: ``rounds`` times, stage I (``steps / rounds`` SVI
        steps on the encoders and decoders, the translator frozen at its EMA copy) then
        stage II (as many steps on the translator alone, on the detached codes), then the
        EMA update. Each part gets ``steps`` updates in all, as in a joint fit of
        ``steps``. ``options`` go to :func:`inference.svi.fit` (the config's training
        settings otherwise). Returns the per-stage losses."""
        c = self.config
        steps = c.total_steps(len(data["frames"])) if steps is None else steps
        rounds = c.rounds if rounds is None else rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= steps:
            raise ConfigError(f"rounds must be an integer in [1, steps={steps}], got {rounds!r}")
        per = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
        losses = {"autoencoder": [], "transition": []}
        self.update_ema(0.0)  # Trans_k starts as the translator
        try:
            for r, n in enumerate(per):
                for stage, trainable in (("autoencoder", _not_translator),
                                         ("transition", ["model.trans"])):  # fmt: skip
                    self.stage = stage
                    # stage II has no latent site for a guide family to reach
                    self.local_sites = () if stage == "transition" else type(self).local_sites
                    result = fit(self, guide, data, config=c, steps=n, seed=seed + 7919 * r,
                                 progress=progress, trainable=trainable, **options)  # fmt: skip
                    losses[stage].extend(result.losses)
                self.update_ema(momentum)
        finally:
            self.stage = "joint"
            self.local_sites = type(self).local_sites
        return losses

    # ----- forecasting and evaluation -------------------------------------------------------

    @torch.no_grad()
    def forecast(self, past: torch.Tensor, *, num_draws: int = 0, seed: int = 0):
        """The future window given the past ``(N, W, C, G, G)``: the mean forecast
        Dec(Trans(Enc(x))) (``num_draws=0``), or ``(S, N, W, C, G, G)`` predictive draws
        (the code from q(z_past | x), the transition noise sigma_z, the pixel noise)."""
        loc, scale = self.encoder(past)
        if num_draws == 0:
            return self.decoder(self.trans(loc))
        gen = torch.Generator(device=loc.device).manual_seed(int(seed))

        def noise(shape):
            return torch.randn(shape, generator=gen, device=loc.device)

        shape = (num_draws, *loc.shape)
        z_past = loc + scale * noise(shape)
        z_next = self.trans(z_past) + self.trans_log_scale.exp() * noise(shape)
        mean = self.decoder(z_next)
        return mean + self._obs_scale() * noise(mean.shape)

    def evaluate(self, guide, data, *, num_draws: int = 50, level: float = 0.9) -> dict:
        """Held-out forecast scores: MSE of the mean forecast per variable and overall, the
        persistence forecast's MSE on the same rows, and the coverage of the central
        ``level`` interval of ``num_draws`` predictive draws."""
        was = self.training
        self.eval()
        try:
            past, future = self.windows(data["frames"].to(self.device))
            mean = self.forecast(past)
            draws = self.forecast(past, num_draws=num_draws)
        finally:
            self.train(was)
        out = per_variable_mse(mean, future, prefix="mse")
        last = past[:, -1:].expand_as(future)
        out.update(per_variable_mse(last, future, prefix="persistence_mse"))
        out["coverage90" if level == 0.9 else f"coverage{level:g}"] = interval_coverage(
            draws.cpu().numpy(), future.cpu().numpy(), level
        )
        return out


def per_variable_mse(pred: torch.Tensor, true: torch.Tensor, *, prefix: str) -> dict:
    """``{prefix}_<variable>`` and ``{prefix}`` (all variables): mean squared error over
    rows, frames and pixels; frames ``(N, W, C, G, G)``."""
    err = (pred - true).square().mean((0, 1, 3, 4)).cpu().numpy()
    names = VARIABLES if len(err) == len(VARIABLES) else [f"var{i}" for i in range(len(err))]
    out = {f"{prefix}_{n}": float(e) for n, e in zip(names, err, strict=True)}
    out[prefix] = float(np.mean(err))
    return out


def _ema_name(param: str) -> str:
    return "trans_ema__" + param.replace(".", "__")


def _not_translator(name: str) -> bool:
    """Stage I: everything but the translator and its noise scale (model.trans*)."""
    return not name.startswith("model.trans")
