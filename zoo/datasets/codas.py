"""Synthetic "codas": 1-D click trains with known factors, and the outcome measurements
that read them back (the CDEV spec's offline stand-in for sperm-whale codas, which are not
public).

A coda is ``LENGTH = 512`` samples: ``n_clicks`` in 3..8 Gabor clicks (a Gaussian envelope
of width ``CLICK_WIDTH`` samples on a cosine carrier of frequency ``f0`` cycles/sample, in
phase at each click's centre), the first at ``ONSET`` +- 3 samples, then inter-click
intervals of ``BASE_ICI`` samples (``rhythm = 0``, regular) or shrinking by ``ACCELERATION``
each click (``rhythm = 1``, accelerating), each jittered by +-1.5 samples; each click's
amplitude is drawn in [0.6, 1] (amplitude noise) and white noise is added, its sd drawn
per coda in ``NOISE_RANGE`` (background noise).

Factors (``factors`` columns, :data:`FACTOR_NAMES`): the number of clicks, the rhythm
(0/1), ``f0``, and two nuisances: the mean click amplitude and the noise sd. Outcomes
(:data:`OUTCOMES`, the same detector on real and generated signals): the click count, the
ICI trend (mean log ratio of consecutive inter-click intervals: 0 regular, log 0.8
accelerating), the spectral mean (power-weighted mean frequency), and a nuisance outcome
that the data vary by noise alone: the background noise level (RMS above 0.375
cycles/sample, where clicks have no power). (The clicks' amplitude jitter is not read: a
decoder's mean signal lowers its peaks wherever it is unsure of a click's timing, so a
peak-height reading would mix the jitter with the decoder's blur.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

__all__ = [
    "FACTOR_NAMES",
    "FACTOR_OUTCOMES",
    "LENGTH",
    "NUISANCE_OUTCOMES",
    "OUTCOMES",
    "codas",
    "measure",
]

LENGTH = 512
ONSET = 40
BASE_ICI = 48.0
ACCELERATION = 0.8
CLICK_WIDTH = 3.0
F0_RANGE = (0.06, 0.18)
NOISE_RANGE = (0.03, 0.07)
HF_CUTOFF = 0.375

FACTOR_NAMES = ("n_clicks", "rhythm", "f0", "amplitude", "noise")


def codas(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(signals (n, 512) float32, factors (n, 4) float32)`` drawn with ``seed``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH, dtype=np.float64)
    signals = np.zeros((n, LENGTH))
    factors = np.zeros((n, len(FACTOR_NAMES)))
    clicks = rng.integers(3, 9, size=n)
    rhythm = rng.integers(0, 2, size=n)
    f0 = rng.uniform(*F0_RANGE, size=n)
    noise = rng.uniform(*NOISE_RANGE, size=n)
    for i in range(n):
        k = np.arange(clicks[i] - 1)
        ici = BASE_ICI * (ACCELERATION**k if rhythm[i] else np.ones_like(k, dtype=float))
        ici = ici + rng.uniform(-1.5, 1.5, size=len(k))
        centres = ONSET + rng.uniform(-3, 3) + np.concatenate([[0.0], np.cumsum(ici)])
        amps = rng.uniform(0.6, 1.0, size=clicks[i])
        d = t[None, :] - centres[:, None]
        wave = amps[:, None] * np.exp(-0.5 * (d / CLICK_WIDTH) ** 2) * np.cos(2 * np.pi * f0[i] * d)
        signals[i] = wave.sum(0)
        factors[i] = (clicks[i], rhythm[i], f0[i], amps.mean(), noise[i])
    signals += noise[:, None] * rng.standard_normal(signals.shape)
    return signals.astype(np.float32), factors.astype(np.float32)


def _rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    a = a.astype(np.float64).reshape(-1, a.shape[-1] if a.ndim else 1)
    if a.shape[-1] != LENGTH:
        raise ValueError(f"codas have {LENGTH} samples, got rows of {a.shape[-1]}")
    return a


def _envelope(a: np.ndarray) -> np.ndarray:
    return np.sqrt(gaussian_filter1d(a**2, CLICK_WIDTH, axis=-1))


def _peaks(row_env: np.ndarray) -> np.ndarray:
    height = max(0.3 * row_env.max(), 0.15)
    return find_peaks(row_env, height=height, distance=8)[0]


def measure_clicks(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The number of clicks: peaks of the energy envelope above 30% of the row's largest
    (and above 0.15, twice the largest noise sd), at least 8 samples apart."""
    env = _envelope(_rows(x))
    return np.array([len(_peaks(e)) for e in env], dtype=np.float64)


def measure_ici_trend(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean log ratio of consecutive inter-click intervals (0: regular; log 0.8 = -0.22:
    accelerating), 0 where fewer than 3 clicks are found."""
    env = _envelope(_rows(x))
    out = np.zeros(len(env))
    for i, e in enumerate(env):
        peaks = _peaks(e)
        if len(peaks) >= 3:
            out[i] = np.diff(np.log(np.diff(peaks).astype(np.float64))).mean()
    return out


def measure_spectral_mean(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Power-weighted mean frequency (cycles/sample) of the row's spectrum."""
    a = _rows(x)
    power = np.abs(np.fft.rfft(a, axis=-1)) ** 2
    freq = np.fft.rfftfreq(LENGTH)
    return (power * freq).sum(-1) / np.maximum(power.sum(-1), 1e-12)


def measure_noise(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Background noise sd: the RMS of the spectrum above ``HF_CUTOFF`` cycles/sample,
    scaled to the sd of white noise (nuisance: drawn per coda, no click has power there)."""
    a = _rows(x)
    spectrum = np.fft.rfft(a, axis=-1)
    high = np.fft.rfftfreq(LENGTH) > HF_CUTOFF
    return np.sqrt(2 * (np.abs(spectrum[:, high]) ** 2).mean(-1) / LENGTH)


Measurement = Callable[[np.ndarray | torch.Tensor], np.ndarray]

#: outcome name -> measurement, the true factors' first
OUTCOMES: dict[str, Measurement] = {
    "n_clicks": measure_clicks,
    "ici_trend": measure_ici_trend,
    "spectral_mean": measure_spectral_mean,
    "noise": measure_noise,
}
#: true factor -> the outcome that reads it
FACTOR_OUTCOMES = {"n_clicks": "n_clicks", "rhythm": "ici_trend", "f0": "spectral_mean"}
#: outcomes that the data vary by jitter alone
NUISANCE_OUTCOMES = ("noise",)


def measure(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """All outcomes, ``(N, 4)`` in the order of :data:`OUTCOMES`."""
    return np.stack([fn(x) for fn in OUTCOMES.values()], axis=1)
