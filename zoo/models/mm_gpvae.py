r"""MM-GPVAE: a multi-modal Gaussian-process VAE for spikes and images (paper 2).

Gondur, Sikandar, Schaffer, Aoi & Keeley (ICLR 2024), "Multi-modal Gaussian Process
Variational Autoencoders for Neural and Behavioral Data" (code: RabiaGondur/MM-GPVAE).

Generative story, per trial :math:`n` of :math:`T` time bins :math:`t = 0..T-1`, with the
latents split into shared :math:`z^s` (:math:`L_s` columns), neural-only :math:`z^n`
(:math:`L_n`) and image-only :math:`z^b` (:math:`L_b`), :math:`L = L_s + L_n + L_b`::

    ell_g       ~ LogNormal(log 8, 0.5)           g in {s, n, b}  (sites "lengthscale_g")
    z_{n,j}(.)  ~ GP(0, k(t / ell_g, t' / ell_g))   column j of group g; k any stationary
                                                   GPyTorch kernel
    y_{n,t,i}   ~ Poisson(exp(c_i^T [z^n; z^s]_{n,t} + d_i))   spikes  (GPFA-style readout)
    x_{n,t}     ~ Normal(f_theta([z^s; z^b]_{n,t}), sigma_x^2 I)  images (ELU MLP decoder)

Two parameterizations of the GP prior (``parameterization``):

- ``"fourier"`` (the paper's): the grid is embedded in a circle of :math:`M = T + \lceil
  \text{pad}\cdot T \rceil` bins; the kernel's eigenvalues there are the FFT of its first row,
  :math:`c_f(\ell) = \mathrm{FFT}_f[k(\min(m, M-m)/\ell)]`, so *any* stationary kernel
  carries over. :math:`z_{n,j} = B_{1:T} \zeta_{n,j}`, :math:`\zeta_{n,j,f} \sim
  N(0, c_f(\ell_g) + \epsilon)` with :math:`B` the orthonormal real Fourier basis, keeping
  the :math:`F` lowest frequencies (those an RBF of length-scale ``min_lengthscale`` holds
  above :math:`c_{max}/10^8`: the paper's pruning). Sites ``zeta_s/n/b`` (shape (L_g, F));
  ``z_s/n/b`` are deterministic. The prior is diagonal: its KL costs O(F) per latent, the
  map to time O(T F).
- ``"time"`` (the GP-VAE baseline): :math:`z_{n,j} \sim N(0, K(\ell_g) + \epsilon I)`
  with :math:`K` the kernel on the grid; sites ``z_s/n/b`` (shape (L_g, T)); O(T^3).

The floor :math:`\epsilon` (``jitter``) is the paper's 1e-2. It matters for the learned
length-scales: an RBF spectrum falls as exp(-omega^2 ell^2 / 2), so any small
high-frequency content of q that the floor does not absorb is explained by a shorter ell.
On the paper preset (seed 0, 3000 steps) a floor of 1e-3 gave ell of about 2 for a truth
of 10, the paper's 1e-2 5.6-7.9; the image pathway is what pulls it down (a GP-VAE of the
spikes alone learned 9.5, one of the images alone 1.4-4.7; one "3" throughout instead of
a new one per frame did not help). ``zoo reproduce mm_gpvae`` has the figures over seeds.

Inference: one encoder per modality maps each bin to (mean, scale) of its latents
(spikes -> [z^n, z^s], images -> [z^s, z^b]); the two shared outputs are combined by a
product of experts (``shared_combine="poe"``, the default) or the paper's plain average of
means and log-scales (``"average"``; on our simulation it let one latent group collapse in
2 of 4 fits, the product of experts in none of 5);
a learned linear map over time (T -> F in the Fourier form, initialised at the projection
onto the basis; T -> T in the time form, initialised at the identity) gives q, a diagonal
Normal over zeta (Fourier) or z (time). ``elbo="auto"`` takes the meanfield ELBO: the
analytic KL of the latents (Normal-Normal, resp. MVN-MVN), the length-scales' sampled term
with their Jacobian: the authors' code evaluates its prior term at mu + exp(log sigma)
instead of E[zeta^2] = mu^2 + sigma^2; we use the proper KL.

**Kernel swap.** A kernel is not a distribution, so it is swapped as a config key,
``kernel="rbf" | "matern52" | "matern32" | "matern12" | "periodic" | "rq"`` (CLI:
``--set kernel=matern52``), or by passing any GPyTorch kernel object,
``zoo.create("mm_gpvae", kernel=gpytorch.kernels.MaternKernel(nu=2.5))`` (config then reads
``kernel="custom"``). The kernel's own length-scale is fixed at 1 and time is divided by
the global sites ``lengthscale_s/n/b`` (one per latent group, priors swappable,
diagnosed by ArviZ); its other hyperparameters (a period, an output scale) are learnable
parameters.
The Fourier form refuses a kernel that is not stationary.

Default data: the paper's simulation (``data_generator.py``), chosen by ``preset``
(:data:`PRESETS`; an unknown name is refused before any work). ``"paper"`` (the default):
300 trials, T = 60, 100 neurons, RBF GPs of length-scale 10 and variances 0.3 (shared),
0.5 (neural-only), 0.8 (image-only); the shared GP rotates a ``load_digits`` "3" (padded
to 12x12, in place of MNIST's 28x28 padded to 36x36) by z^s * 120 deg and drives the
spikes with the neural-only GP; the image-only GP sets the zoom |1 + z^b| (floored at
0.1); each frame shows the next "3", as the paper steps through its MNIST files. Weights
1.5 U(-1, 1), offsets 0.5 U(-1, 1). ``"small"`` is the zoo's earlier design: 200 trials,
T = 40, 50 neurons, unit variances, length-scale 8, rotation 60 deg * z^s, zoom
exp(0.3 z^b), one "3" throughout. ``trials``, ``time_bins``, ``neurons``,
``true_lengthscale`` and ``digits`` given explicitly override the preset's. Both add
pixel noise of sd 0.05 (the paper's spec is silent on it; its MNIST jpgs carry their
own). The generator's kernel is rho exp(-d^2 / (2 ell^2)), GPyTorch's RBF
parameterisation, so the learned ``lengthscale_g`` and ``true_lengthscale`` are on one
scale.
:meth:`MMGPVAE.simulate` returns the true latents too (:meth:`MMGPVAE.simulate_with_extras`
the firing rates); :meth:`MMGPVAE.evaluate`, given them, reports the R^2 of an affine fit
from inferred to true latents (matched and cross-assigned groups) and the
reconstructions. Trials must all have ``time_bins`` bins: masks for ragged trials are not
supported.

**Single-modality GP-VAEs** (the baselines): ``modalities="spikes"`` (with
``latent_image=0``) or ``"images"`` (with ``latent_neural=0``) observe one field only; the
shared group is then that modality's own encoder's opinion.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gpytorch
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from guides import local
from guides.encoders import mlp
from inference.data import DataError, Field, full_batch
from inference.metrics import affine_r2
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_non_negative_ints,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.registry import register

__all__ = ["MMGPVAE", "KERNELS", "PRESETS", "make_kernel", "is_stationary", "rbf_gram"]

GROUPS = ("s", "n", "b")  # shared, neural-only, behaviour(image)-only
ZOOM = 0.3  # simulation: zoom = exp(ZOOM * z_b)
KERNELS = ("rbf", "matern52", "matern32", "matern12", "periodic", "rq", "custom")
PARAMETERIZATIONS = ("fourier", "time")
COMBINES = ("average", "poe")
MODALITIES = ("both", "spikes", "images")
MIN_ZOOM = 0.1  # the paper preset's zoom |1 + z_b| is floored here (a zoom of 0 is no image)


@dataclass(frozen=True)
class Preset:
    """A simulation design: sizes (the config's defaults for ``trials``, ``time_bins``,
    ``neurons``, ``true_lengthscale``) and the generator's fixed parameters."""

    trials: int
    time_bins: int
    neurons: int
    true_lengthscale: float
    #: rotation angle in degrees per unit of z_s
    rotation_degrees: float
    #: GP variances (the kernel's amplitude rho) of z_s, z_n, z_b
    variances: tuple[float, float, float]
    #: "paper": zoom = |1 + z_b| (floored at MIN_ZOOM); "exp": zoom = exp(ZOOM z_b)
    zoom: str
    #: "cycle": each frame shows the next load_digits "3" (the paper's next MNIST "3");
    #: "one": one "3" per data set
    digits: str


#: ``preset="paper"`` is the paper's ``data_generator.py`` (300 trials, T = 60, 100 neurons,
#: rotation z_s * 120 deg, GP variances 0.3 / 0.5 / 0.8, length-scale 10, zoom |1 + z_b|,
#: a different "3" in each frame) with load_digits' 8x8 "3"s padded to 12x12 for MNIST's
#: 28x28 padded to 36x36; ``"small"`` is the zoo's earlier, smaller design.
PRESETS = {
    "paper": Preset(300, 60, 100, 10.0, 120.0, (0.3, 0.5, 0.8), "paper", "cycle"),
    "small": Preset(200, 40, 50, 8.0, 60.0, (1.0, 1.0, 1.0), "exp", "one"),
}
PRESET_SIZES = ("trials", "time_bins", "neurons", "true_lengthscale", "digits")
DIGITS = ("cycle", "one")


def make_kernel(name: str) -> gpytorch.kernels.Kernel:
    """A GPyTorch kernel by config name (length-scale in units of the site ``lengthscale``)."""
    k = gpytorch.kernels
    factories = {
        "rbf": lambda: k.RBFKernel(),
        "matern52": lambda: k.MaternKernel(nu=2.5),
        "matern32": lambda: k.MaternKernel(nu=1.5),
        "matern12": lambda: k.MaternKernel(nu=0.5),
        "periodic": lambda: k.PeriodicKernel(),
        "rq": lambda: k.RQKernel(),
    }
    if name not in factories:
        raise ConfigError(
            f"kernel must be one of {KERNELS[:-1]} or a GPyTorch kernel, got '{name}'"
        )
    return factories[name]()


def rbf_gram(time_bins: int, lengthscale: float) -> np.ndarray:
    """The generator's kernel on the grid 0..T-1 at unit variance, exp(-d^2 / (2 ell^2)):
    the same parameterisation as GPyTorch's ``RBFKernel`` (checked in the tests), so the
    model's ``lengthscale_g`` sites and ``true_lengthscale`` are on one scale."""
    grid = np.arange(time_bins, dtype=np.float64)
    return np.exp(-0.5 * (grid[:, None] - grid[None, :]) ** 2 / lengthscale**2)


def _fix_lengthscale(kernel: gpytorch.kernels.Kernel) -> None:
    """Fix every length-scale inside ``kernel`` at 1: time is scaled by the site instead."""
    for module in kernel.modules():
        if isinstance(module, gpytorch.kernels.Kernel) and module.has_lengthscale:
            module.lengthscale = 1.0
            module.raw_lengthscale.requires_grad_(False)


def _kernel_eval(kernel, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    out = kernel(x1, x2)
    return out.to_dense() if hasattr(out, "to_dense") else out


def is_stationary(kernel: gpytorch.kernels.Kernel, atol: float = 1e-5) -> bool:
    """Numerically: does k(t + s, t' + s) equal k(t, t') for a few shifts s?"""
    with torch.no_grad():
        t = torch.linspace(0.0, 5.0, 11).unsqueeze(-1)
        base = _kernel_eval(kernel, t, t)
        for shift in (0.37, 3.1, -2.3):
            moved = _kernel_eval(kernel, t + shift, t + shift)
            if not torch.allclose(base, moved, atol=atol, rtol=1e-4):
                return False
    return True


def fourier_basis(m: int, f_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal real Fourier basis on a circle of ``m`` points, frequencies 0..f_max:
    ``(basis (m, F), freq_index (F,))`` with columns [1, cos 1, sin 1, cos 2, sin 2, ...]."""
    j = torch.arange(m, dtype=torch.float64)
    cols = [torch.full((m,), 1.0 / math.sqrt(m), dtype=torch.float64)]
    index = [0]
    for f in range(1, f_max + 1):
        angle = 2 * math.pi * f * j / m
        if 2 * f == m:  # Nyquist: one real column
            cols.append(torch.cos(angle) / math.sqrt(m))
            index.append(f)
            continue
        cols += [math.sqrt(2.0 / m) * torch.cos(angle), math.sqrt(2.0 / m) * torch.sin(angle)]
        index += [f, f]
    return torch.stack(cols, -1).float(), torch.tensor(index)


class MMEncoder(PyroModule):
    """Per-bin encoders of both modalities, the shared combination and the temporal map.

    ``forward(spikes, images) -> (loc, scale)``, each ``(B, L, D)`` with D = F (Fourier)
    or T (time), latents ordered [s, n, b].
    """

    def __init__(
        self, neurons, pixels, dims, time_map: torch.Tensor, hidden, combine, modalities="both"
    ):
        super().__init__()
        self.ls, self.ln, self.lb = dims
        self.combine = combine
        self.modalities = modalities
        if modalities != "images":
            self.neural = mlp([neurons, hidden, hidden, 2 * (self.ln + self.ls)], nn.ELU)
        if modalities != "spikes":
            self.image = mlp([pixels, hidden, hidden, 2 * (self.ls + self.lb)], nn.ELU)
        d, t = time_map.shape
        self.loc_map = nn.Linear(t, d)
        self.scale_map = nn.Linear(t, d)
        with torch.no_grad():
            self.loc_map.weight.copy_(time_map)
            self.loc_map.bias.zero_()
            self.scale_map.weight.copy_(time_map.abs() / time_map.abs().sum(-1, keepdim=True))
            self.scale_map.bias.fill_(-1.0)

    def forward(self, spikes: torch.Tensor | None, images: torch.Tensor | None):
        ls, ln, lb = self.ls, self.ln, self.lb
        if self.modalities != "images":
            h_n = self.neural(torch.log1p(spikes))  # (B, T, 2 (ln + ls))
            mu_n, raw_n = h_n.split(ln + ls, -1)
            s_n, r_n = mu_n[..., ln:], raw_n[..., ln:]
        if self.modalities != "spikes":
            h_b = self.image(images)  # (B, T, 2 (ls + lb))
            mu_b, raw_b = h_b.split(ls + lb, -1)
            s_b, r_b = mu_b[..., :ls], raw_b[..., :ls]
        if self.modalities == "spikes":  # one modality: its own opinion on z_s
            mu_s, raw_s = s_n, r_n
            mu_b = raw_b = s_n[..., :0]
        elif self.modalities == "images":
            mu_s, raw_s = s_b, r_b
            mu_n = raw_n = s_b[..., :0]
        elif self.combine == "average":
            mu_s, raw_s = 0.5 * (s_n + s_b), 0.5 * (r_n + r_b)
        else:  # product of experts of the two Gaussian opinions on z_s
            p_n, p_b = torch.exp(-2 * r_n), torch.exp(-2 * r_b)
            mu_s = (s_n * p_n + s_b * p_b) / (p_n + p_b)
            raw_s = -0.5 * torch.log(p_n + p_b)
        mu = torch.cat([mu_s, mu_n[..., :ln], mu_b[..., ls:]], -1).transpose(-1, -2)
        raw = torch.cat([raw_s, raw_n[..., :ln], raw_b[..., ls:]], -1).transpose(-1, -2)
        loc = self.loc_map(mu)  # (B, L, D)
        scale = nn.functional.softplus(self.scale_map(raw)) + 1e-4
        return loc, scale


@register
class MMGPVAE(ZooModel):
    """Multi-modal GP-VAE (Gondur et al., ICLR 2024): shared and modality-specific GP
    latents over time, Poisson spikes and Gaussian images; Fourier- or time-domain GP prior
    from any stationary GPyTorch kernel. See the module doc for the generative story."""

    name = "mm_gpvae"
    summary = "Multi-modal GP-VAE: shared and modality-specific GP latents in the Fourier domain"
    paper = 2
    static_structure = False  # GPyTorch kernels are not traced by the JIT here
    max_plate_nesting = 1

    tiny = {
        "trials": 20,
        "time_bins": 16,
        "neurons": 10,
        "hidden": 16,
        "batch_size": 8,
        "steps": 10,
    }

    @dataclass
    class Config(TrainConfig):
        holdout: float = 0.2
        parameterization: str = "fourier"
        kernel: str = "rbf"
        shared_combine: str = "poe"
        preset: str = "paper"
        modalities: str = "both"
        latent_shared: int = 1
        latent_neural: int = 1
        latent_image: int = 1
        hidden: int = 64
        trials: int | None = None  # None: the preset's
        time_bins: int | None = None
        neurons: int | None = None
        image_side: int = 12
        fourier_pad: float = 0.5
        min_lengthscale: float = 3.0
        jitter: float = 1e-2  # the paper's floor on c_f; 1e-3 drags the learned ell short
        true_lengthscale: float | None = None
        digits: str | None = None  # "cycle" | "one"; None: the preset's
        batch_size: int = 32
        lr: float = 5e-3
        epochs: float = 300.0

    def __init__(self, config=None, *, priors=None, **overrides):
        kernel = overrides.get("kernel")
        custom = None
        if isinstance(kernel, gpytorch.kernels.Kernel):
            custom = kernel
            overrides["kernel"] = "custom"
        elif kernel is not None and not isinstance(kernel, str):
            raise ConfigError(
                f"kernel must be a name in {KERNELS[:-1]} or a gpytorch.kernels.Kernel, "
                f"got {type(kernel).__name__}"
            )
        object.__setattr__(self, "_custom_kernel", custom)  # read by check_config
        super().__init__(config, priors=priors, **overrides)
        c = self.config
        self.dims_ = (c.latent_shared, c.latent_neural, c.latent_image)
        self.latent_total = sum(self.dims_)
        kern = custom if custom is not None else make_kernel(c.kernel)
        _fix_lengthscale(kern)
        if c.parameterization == "fourier" and not is_stationary(kern):
            raise ConfigError(
                f"kernel {type(kern).__name__} is not stationary: the Fourier form needs "
                "k(t, t') to depend on t - t' only; use parameterization='time'"
            )
        self.kernel = kern
        t = c.time_bins
        self.register_buffer("times", torch.arange(t, dtype=torch.float32))
        if c.parameterization == "fourier":
            m = t + int(math.ceil(c.fourier_pad * t))
            f_max = int(m * math.sqrt(2 * math.log(1e8)) / (2 * math.pi * c.min_lengthscale))
            f_max = max(1, min(f_max, m // 2))
            basis, freq = fourier_basis(m, f_max)
            self.register_buffer("basis", basis[:t])  # (T, F)
            self.register_buffer("freq_index", freq)
            self.register_buffer("circle", torch.minimum(torch.arange(m), m - torch.arange(m)))
            self.circle_size = m
            time_map = basis[:t].T.contiguous()  # projection onto the basis
            self.local_sites = tuple(f"zeta_{g}" for g in GROUPS if self._dim(g))
        else:
            time_map = torch.eye(t)
            self.local_sites = tuple(f"z_{g}" for g in GROUPS if self._dim(g))
        pixels = c.image_side**2
        if self.observes("spikes"):
            self.readout = nn.Linear(c.latent_neural + c.latent_shared, c.neurons)
            with torch.no_grad():
                self.readout.weight.mul_(0.5)
        if self.observes("images"):
            width = c.latent_shared + c.latent_image
            self.decoder = mlp([width, c.hidden, c.hidden, pixels], nn.ELU)
            self.image_noise = PyroParam(torch.tensor(0.3), constraint=constraints.positive)
        self.encoder = MMEncoder(
            c.neurons, pixels, self.dims_, time_map, c.hidden, c.shared_combine, c.modalities
        )

    # ----- configuration ------------------------------------------------------------------

    def _dim(self, group: str) -> int:
        return self.dims_[GROUPS.index(group)]

    def observes(self, field: str) -> bool:
        """Whether ``field`` ("spikes" or "images") is a modality of this model (the
        single-modality GP-VAEs, ``modalities="spikes"`` or ``"images"``, see one)."""
        return self.config.modalities in ("both", field)

    def check_config(self) -> None:
        c = self.config
        if c.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got '{c.preset}'")
        design = PRESETS[c.preset]
        fill = {k: getattr(design, k) for k in PRESET_SIZES if getattr(c, k) is None}
        self.config = c = dataclasses.replace(c, **fill)
        if c.digits not in DIGITS:
            raise ConfigError(f"digits must be one of {DIGITS}, got '{c.digits}'")
        if c.modalities not in MODALITIES:
            raise ConfigError(f"modalities must be one of {MODALITIES}, got '{c.modalities}'")
        if c.modalities == "spikes" and c.latent_image:
            raise ConfigError("modalities='spikes' needs latent_image=0 (no images to drive it)")
        if c.modalities == "images" and c.latent_neural:
            raise ConfigError("modalities='images' needs latent_neural=0 (no spikes to drive it)")
        if c.parameterization not in PARAMETERIZATIONS:
            raise ConfigError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got '{c.parameterization}'"
            )
        if c.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {KERNELS[:-1]}, got '{c.kernel}'")
        if c.kernel == "custom" and getattr(self, "_custom_kernel", None) is None:
            raise ConfigError("kernel='custom' needs a GPyTorch kernel object: pass kernel=...")
        if c.shared_combine not in COMBINES:
            raise ConfigError(f"shared_combine must be one of {COMBINES}, got '{c.shared_combine}'")
        require_positive_ints(c, "latent_shared")
        require_non_negative_ints(c, "latent_neural", "latent_image")
        require_positive_ints(c, "trials", "time_bins", "neurons", "image_side", "hidden")
        if c.time_bins < 4:
            raise ConfigError(f"time_bins must be >= 4, got {c.time_bins}")
        if c.image_side < 8:  # the default data's digit (8x8 pixels) must fit in the frame
            raise ConfigError(f"image_side must be >= 8 (the digit is 8x8), got {c.image_side}")
        require_positive_numbers(c, "fourier_pad", "min_lengthscale", "jitter", "true_lengthscale")

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        spec = {
            "spikes": Field(
                shape=(c.time_bins, c.neurons),
                dtype="int",
                support=constraints.nonnegative_integer,
                doc="spike counts per trial, time bin and neuron",
            ),
            "images": Field(
                shape=(c.time_bins, c.image_side**2),
                doc=f"one {c.image_side}x{c.image_side} image per time bin, flattened",
                image=(c.image_side, c.image_side),
            ),
        }
        return {k: v for k, v in spec.items() if self.observes(k)}

    def validate(self, data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """:meth:`ZooModel.validate` plus messages naming this model's problems first."""
        if not isinstance(data, Mapping):
            return super().validate(data)
        c = self.config
        for key in ("spikes", "images"):
            value = data.get(key)
            if isinstance(value, list | tuple) and value:
                lengths = {len(np.asarray(v)) for v in value}
                if len(lengths) > 1:
                    raise DataError(
                        f"field '{key}' holds trials of different lengths {sorted(lengths)}; "
                        f"this model needs equal-length trials of time_bins={c.time_bins} "
                        "(no mask is supported: crop or split the trials)"
                    )
        arrays = {
            k: np.asarray(v.detach().cpu() if torch.is_tensor(v) else v) for k, v in data.items()
        }
        for key, array in arrays.items():
            if array.dtype.kind == "f" and np.isnan(array).any():
                raise DataError(f"field '{key}' has {int(np.isnan(array).sum())} NaN value(s)")
        spikes = arrays.get("spikes")
        if spikes is not None and spikes.dtype.kind in "biuf" and spikes.size:
            if (spikes < 0).any():
                raise DataError("field 'spikes' has negative counts; spike counts must be >= 0")
            if spikes.dtype.kind == "f" and not np.all(spikes == np.round(spikes)):
                raise DataError("field 'spikes' has counts that are not whole numbers")
        images = arrays.get("images")
        pixels = c.image_side**2
        if images is not None and images.ndim == 3 and images.shape[-1] != pixels:
            raise DataError(
                f"field 'images' has {images.shape[-1]} pixels per frame but the decoder "
                f"outputs {pixels} (image_side={c.image_side}); set image_side to match"
            )
        for key in ("spikes", "images"):
            array = arrays.get(key)
            if array is not None and array.ndim == 3 and array.shape[1] != c.time_bins:
                raise DataError(
                    f"field '{key}' has trials of {array.shape[1]} time bins but the model "
                    f"has time_bins={c.time_bins}; set time_bins to match"
                )
        return super().validate(data)

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        sizes = {"s": c.latent_shared, "n": c.latent_neural, "b": c.latent_image}
        return {f"lengthscale_{g}": dist.LogNormal(math.log(8.0), 0.5) for g in GROUPS if sizes[g]}

    # ----- GP prior -----------------------------------------------------------------------

    def spectrum(self, lengthscale: torch.Tensor) -> torch.Tensor:
        """Prior variances c_f(ell) of the kept Fourier coefficients: ``(..., L, F)``."""
        x = self.circle.to(lengthscale.dtype)
        x = x.unsqueeze(-1) / lengthscale[..., :, None, None]  # (..., L, M, 1)
        row = _kernel_eval(self.kernel, x[..., :1, :], x)[..., 0, :]  # (..., L, M)
        eig = torch.fft.rfft(row, dim=-1).real.clamp_min(0.0)  # (..., L, M//2+1)
        return eig[..., self.freq_index] + self.config.jitter

    def gram(self, lengthscale: torch.Tensor) -> torch.Tensor:
        """Prior covariance on the time grid: ``(..., L, T, T)``."""
        x = self.times.unsqueeze(-1) / lengthscale[..., :, None, None]
        k = _kernel_eval(self.kernel, x, x)
        return k + self.config.jitter * torch.eye(len(self.times), device=k.device)

    def _split_groups(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for g in GROUPS:
            d = self._dim(g)
            if d:
                out[g] = value[..., start : start + d, :]
            start += d
        return out

    # ----- model and guide ----------------------------------------------------------------

    def model(self, batch) -> None:
        c = self.config
        ells = []
        for g in GROUPS:  # one scalar length-scale per group, shared by its columns
            if self._dim(g):
                ell_g = pyro.sample(f"lengthscale_{g}", self.prior(f"lengthscale_{g}"))
                ells.append(ell_g.unsqueeze(-1).expand(ell_g.shape + (self._dim(g),)))
        ell = torch.cat(ells, -1)  # (..., L)
        if c.parameterization == "fourier":
            std = self._split_groups(self.spectrum(ell).sqrt())
        else:
            chol = torch.linalg.cholesky(self.gram(ell))  # (..., L, T, T)
            chol = {g: v for g, v in self._split_groups(chol.flatten(-2)).items()}
        z = {}
        with self.data_plate(batch):
            for g in GROUPS:
                if not self._dim(g):
                    continue
                if c.parameterization == "fourier":
                    s = std[g]
                    zeta = pyro.sample(f"zeta_{g}", dist.Normal(torch.zeros_like(s), s).to_event(2))
                    z[g] = pyro.deterministic(f"z_{g}", zeta @ self.basis.T, event_dim=2)
                else:
                    tril = chol[g].unflatten(-1, (c.time_bins, c.time_bins))
                    loc = torch.zeros(tril.shape[:-1], device=tril.device)
                    prior = dist.MultivariateNormal(loc, scale_tril=tril).to_event(1)
                    z[g] = pyro.sample(f"z_{g}", prior)
            zero = next(iter(z.values()))[..., :0, :]
            if self.observes("spikes"):
                neural = torch.cat([z.get("n", zero), z["s"]], -2).transpose(-1, -2)  # (B, T, .)
                log_rate = self.readout(neural)
                pyro.sample(
                    "spikes",
                    dist.Poisson(log_rate.clamp(max=15.0).exp()).to_event(2),
                    obs=batch["spikes"].to(log_rate.dtype),
                )
            if self.observes("images"):
                image = torch.cat([z["s"], z.get("b", zero)], -2).transpose(-1, -2)
                mean = self.decoder(image)
                pyro.sample(
                    "images",
                    dist.Normal(mean, self.image_noise.expand(mean.shape)).to_event(2),
                    obs=batch["images"],
                )

    def local_guide(self, batch, global_values=None) -> None:
        spikes, images = batch.get("spikes"), batch.get("images")
        spikes = spikes.float() if spikes is not None else None
        loc, scale, _ = local.encode(self, spikes, images)
        locs, scales = self._split_groups(loc), self._split_groups(scale)
        with self.data_plate(batch):
            for g in locs:
                # a group's latents (L_g, F or T) are one vector to the mvn and flow families
                if self.config.parameterization == "fourier":
                    local.sample(f"zeta_{g}", locs[g], scales[g], event_dim=2)
                else:  # the normal family as a diagonal MVN: analytic KL to the GP prior
                    q = dist.MultivariateNormal(locs[g], scale_tril=torch.diag_embed(scales[g]))
                    local.sample(f"z_{g}", locs[g], scales[g], event_dim=2, normal=q.to_event(1))

    # ----- data ---------------------------------------------------------------------------

    def simulate(self, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The paper's simulation at this config (the default data): ``(truth, data)``.
        Its GP latents follow the model's prior (an RBF kernel of length-scale
        ``true_lengthscale``, one latent per group); its observation maps are the paper's
        (a readout with random weights, a rotated and zoomed digit), not the model's
        networks. ``truth`` holds ``z_s``, ``z_n``, ``z_b`` (N, 1, T) for the groups the
        model has with one latent each, and, with the RBF kernel, the length-scales
        ``lengthscale_s/n/b``; :meth:`simulate_with_extras` adds the true firing rates."""
        truth, data, _ = self.simulate_with_extras(seed)
        return truth, data

    def simulate_with_extras(self, seed: int = 0) -> tuple[dict, dict, dict]:
        """:meth:`simulate` plus ``extras``: the true firing rates ``rates`` (N, T, neurons),
        which are not a site of the model."""
        c = self.config
        latents, rates, data = self._paper_simulation(seed)
        truth = {}
        if c.kernel == "rbf":
            ell = torch.tensor(float(c.true_lengthscale))
            truth.update({f"lengthscale_{g}": ell for g in GROUPS if self._dim(g)})
        truth.update({f"z_{g}": latents[g].unsqueeze(1) for g in GROUPS if self._dim(g) == 1})
        return truth, data, {"rates": rates}

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self._paper_simulation(seed)[2]

    def _paper_simulation(self, seed: int):
        """``(latents, rates, data)``: the true latents per group (N, T), the firing rates
        (N, T, neurons) and the validated data of the simulation of ``config.preset``
        (:data:`PRESETS`). Its GP kernel is rho exp(-d^2 / (2 ell^2)): GPyTorch's RBF (the
        model's prior) times the preset's variance rho."""
        c = self.config
        design = PRESETS[c.preset]
        rng = np.random.default_rng(seed)
        n, t = c.trials, c.time_bins
        chol = np.linalg.cholesky(rbf_gram(t, c.true_lengthscale) + 1e-6 * np.eye(t))
        z = {
            g: math.sqrt(rho) * rng.standard_normal((n, t)) @ chol.T
            for g, rho in zip(GROUPS, design.variances, strict=True)
        }
        weights = 1.5 * rng.uniform(-1, 1, size=(c.neurons, 2))
        offsets = 0.5 * rng.uniform(-1, 1, size=c.neurons)
        log_rate = z["n"][..., None] * weights[:, 0] + z["s"][..., None] * weights[:, 1] + offsets
        rates = np.exp(log_rate)
        spikes = rng.poisson(rates)
        angles = np.deg2rad(design.rotation_degrees * z["s"])
        if design.zoom == "paper":
            zooms = np.maximum(np.abs(1.0 + z["b"]), MIN_ZOOM)
        else:
            zooms = np.exp(ZOOM * z["b"])
        images = self._frames(rng, c.digits, angles, zooms)
        images += 0.05 * rng.standard_normal(images.shape)
        fields = {"spikes": spikes, "images": images}
        data = self.validate({k: v for k, v in fields.items() if self.observes(k)})
        latents = {g: torch.as_tensor(z[g], dtype=torch.float32) for g in GROUPS}
        return latents, torch.as_tensor(rates, dtype=torch.float32), data

    def _frames(self, rng, digits: str, angles: np.ndarray, zooms: np.ndarray) -> np.ndarray:
        """(N, T, pixels): a load_digits "3" padded to the frame, rotated by ``angles``
        (radians) and zoomed by ``zooms`` about the centre; ``digits="one"`` shows one "3"
        throughout, ``"cycle"`` the next "3" (in a shuffled order) in each frame, as the
        paper's generator steps through its MNIST "3" files."""
        from scipy import ndimage
        from sklearn.datasets import load_digits

        side = self.config.image_side
        bunch = load_digits()
        threes = bunch.images[bunch.target == 3] / 16.0
        n, t = angles.shape
        if digits == "one":
            order = np.full(n * t, rng.integers(len(threes)))
        else:
            order = np.resize(rng.permutation(len(threes)), n * t)
        off = (side - 8) // 2
        canvases = np.zeros((len(threes), side, side))
        canvases[:, off : off + 8, off : off + 8] = threes[:, : side - off, : side - off]
        center = (np.array([side, side]) - 1) / 2.0
        images = np.empty((n, t, side * side))
        for k, (a, s) in enumerate(zip(angles.reshape(-1), zooms.reshape(-1), strict=True)):
            inv = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
            frame = ndimage.affine_transform(
                canvases[order[k]], inv, offset=center - inv @ center, order=1, mode="constant"
            )
            images.flat[k * side * side : (k + 1) * side * side] = frame.reshape(-1)
        return images

    # ----- evaluation ---------------------------------------------------------------------

    def posterior_latents(self, guide, data) -> dict[str, torch.Tensor]:
        """Posterior-mean time-domain latents ``z_g`` (N, L_g, T) from the guide's q."""
        batch = full_batch(data)
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(guide).get_trace(batch)
        out = {}
        for g in GROUPS:
            if not self._dim(g):
                continue
            if self.config.parameterization == "fourier":
                out[g] = trace.nodes[f"zeta_{g}"]["fn"].mean @ self.basis.T
            else:
                out[g] = trace.nodes[f"z_{g}"]["fn"].mean
        return out

    def reconstruct(self, guide, data) -> dict[str, torch.Tensor]:
        """Firing rates (N, T, neurons) and image means (N, T, pixels) at the posterior mean."""
        z = self.posterior_latents(guide, data)
        zero = z["s"][..., :0, :]
        out = {}
        with torch.no_grad():
            if self.observes("spikes"):
                neural = torch.cat([z.get("n", zero), z["s"]], -2).transpose(-1, -2)
                out["rates"] = self.readout(neural).exp()
            if self.observes("images"):
                image = torch.cat([z["s"], z.get("b", zero)], -2).transpose(-1, -2)
                out["images"] = self.decoder(image)
        return out

    def evaluate(
        self,
        guide,
        data,
        truth: Mapping[str, torch.Tensor] | None = None,
        *,
        rates: torch.Tensor | None = None,
    ) -> dict:
        """The reconstructions of images on ``data``; the firing rates' R^2 against the true
        ``rates`` of ``data``'s rows; latent identification (R^2 of affine fits inferred ->
        true, matched and cross-assigned) against ``truth``, the true ``z_s``, ``z_n``,
        ``z_b`` (rows, 1, T) of ``data``'s rows. Both come from
        :meth:`simulate_with_extras`, indexed like ``data``."""
        data = {k: v.to(self.device) for k, v in data.items()}
        rec = self.reconstruct(guide, data)
        out = {}
        if "images" in rec:
            images = data["images"]
            sse = float(((rec["images"] - images) ** 2).sum())
            sst = float(((images - images.mean((0, 1))) ** 2).sum())
            out["image_r2"] = 1.0 - sse / sst
        if rates is not None and "rates" in rec:
            rates = rates.to(rec["rates"])
            out["rate_r2"] = 1.0 - float(((rec["rates"] - rates) ** 2).sum()) / float(
                ((rates - rates.mean()) ** 2).sum()
            )
        if truth is None:
            return out
        z = self.posterior_latents(guide, data)
        for g_inf, zi in z.items():
            inferred = zi.transpose(-1, -2).reshape(-1, zi.shape[-2]).cpu().numpy()
            for g_true in GROUPS:
                true = truth.get(f"z_{g_true}")
                if true is not None:
                    true = true.transpose(-1, -2).reshape(-1, true.shape[-2]).cpu().numpy()
                    out[f"r2_{g_inf}_to_{g_true}"] = affine_r2(inferred, true)
        return out

    def figures(self, guide, data, *, idata=None, truth=None) -> dict:
        """New trials and reconstructions as image frames over time (the default image
        figures), and ``latent_paths``: the posterior-mean latent of each group over time
        for three training trials, with the true latent dashed when the data are the
        model's simulation (inferred paths mapped to the truth by the affine fit over all
        rows that :meth:`evaluate` scores: latents are identified up to such a map)."""
        out = super().figures(guide, data, idata=idata)
        if guide is not None:
            out["latent_paths"] = lambda: self._latent_paths_figure(guide, data, truth)
        return out

    def _latent_paths_figure(self, guide, data, truth=None, trials: int = 3):
        from inference.diagnostics.plots import new_figure

        with self.inference_mode():
            inferred = self.posterior_latents(guide, data)
        groups = list(inferred)
        fig = new_figure(figsize=(4.2 * len(groups), 3.2))
        times = np.arange(self.config.time_bins)
        for j, g in enumerate(groups):
            ax = fig.add_subplot(1, len(groups), j + 1)
            z = inferred[g].cpu().numpy()  # (N, L_g, T)
            paths = z[:, 0, :]
            aligned = truth is not None
            if aligned:
                true = truth[f"z_{g}"].cpu().numpy()[:, 0, :]  # (N, 1, T) -> (N, T)
                design = np.concatenate(
                    [
                        z.transpose(0, 2, 1).reshape(-1, z.shape[1]),
                        np.ones((z.shape[0] * z.shape[2], 1)),
                    ],
                    1,
                )
                coef = np.linalg.lstsq(design, true.reshape(-1), rcond=None)[0]
                paths = (design @ coef).reshape(true.shape)
            for i in range(min(trials, len(paths))):
                line = ax.plot(times, paths[i], lw=1.5, label=f"trial {i}")[0]
                if aligned:
                    ax.plot(times, true[i], ls="--", lw=1, color=line.get_color())
            name = {"s": "shared", "n": "neural-only", "b": "image-only"}[g]
            ax.set_title(
                f"z_{g} ({name})" + (": inferred, true dashed" if aligned else ""), fontsize=9
            )
            ax.set_xlabel("time bin")
            if j == 0:
                ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        return fig

    def dims(self) -> dict[str, list[str]]:
        d = {"spikes": ["trial", "time", "neuron"]}
        d["images"] = ["trial", "time", "pixel"]
        for g in GROUPS:
            d[f"z_{g}"] = ["trial", f"latent_{g}", "time"]
            d[f"zeta_{g}"] = ["trial", f"latent_{g}", "frequency"]
        return d
