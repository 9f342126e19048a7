"""Extreme-value causal effects: what a generator does when one latent is set far outside
its training range (CDEV, Beguš, Leban & Gero 2023, as a zoo-wide diagnostic).

For a generative program ``generator(num) -> outputs`` (any Pyro callable that draws a
named latent ``site`` with batch shape ``(num,)`` and returns ``num`` outputs: a GAN's
``G(c, z)``, a VAE decoder run on prior draws, :func:`prior_generator` for a zoo model) and
outcome functions ``m_o`` that measure a property of each output, the treatment is the value
``v`` assigned to the site (or to one coordinate ``index`` of a vector site) by
``pyro.poutine.do``; it is randomised by the experimenter, so there is no confounding and the
average treatment effect is a difference of means::

    ATE_o(v)  = E[m_o(G) | do(site = v)] - E[m_o(G) | do(site = baseline)]
    std_o(v)  = ATE_o(v) / sd_o        (sd_o: the outcome's spread in ``reference`` outputs,
                                        real data, or else under the baseline intervention)

Every treatment value is run with the same random seed, so the other latents (the noise
``z``, the other coordinates) take the same draws at every value: the effect is estimated
from ``num_draws`` paired differences (common random numbers), tested with a paired t-test
(``scipy.stats.ttest_rel``; a difference that is exactly zero in every pair has p = 1), and
the ``values x outcomes`` p-values are corrected together for multiplicity with
``scipy.stats.false_discovery_control`` (Benjamini-Hochberg, or Benjamini-Yekutieli for
dependent tests). A (value, outcome) pair is *flagged* when its corrected p-value is below
``alpha`` and its standardised effect is at least ``min_effect`` in size: with hundreds of
draws a negligible shift is significant, so significance alone flags too much.

Values outside the prior's support (a Bernoulli code set to 3, a Gaussian latent set to 8)
are the point ("extreme values"), and are fine for a decoder; never run inference on the
intervened program. Effects may saturate or turn over out there (the spec's pitfall):
:meth:`ExtremeEffects.grows_with_extremity` says whether an effect's size rises with the
distance from the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from scipy import stats

__all__ = ["ExtremeEffects", "extreme_effects", "prior_generator"]

Array = np.ndarray | torch.Tensor
CORRECTIONS = ("bh", "by")


@dataclass
class ExtremeEffects:
    """The result of :func:`extreme_effects` (arrays indexed treatment value x outcome)."""

    site: str
    index: int | None
    baseline: float
    values: np.ndarray  # (V,) treatment values, the baseline excluded
    outcomes: tuple[str, ...]
    ate: np.ndarray  # (V, O) mean paired difference, in the outcome's units
    std_ate: np.ndarray  # (V, O) ATE / sd_ref
    se: np.ndarray  # (V, O) standard error of the ATE (paired)
    pvalues: np.ndarray  # (V, O) paired t-test, uncorrected
    qvalues: np.ndarray  # (V, O) corrected for multiplicity over all V x O tests
    flags: np.ndarray  # (V, O) bool: q < alpha and |std_ate| >= min_effect
    sd_ref: np.ndarray  # (O,) the outcome's reference spread
    baseline_mean: np.ndarray  # (O,) E[m_o | do(site = baseline)]
    alpha: float
    min_effect: float
    correction: str
    num_draws: int
    measured: np.ndarray = field(repr=False)  # (V + 1, N, O): baseline first

    def effect(self, outcome: str) -> np.ndarray:
        """The standardised ATE of ``outcome`` at each treatment value, ``(V,)``."""
        return self.std_ate[:, self._column(outcome)]

    def flagged(self, outcome: str) -> bool:
        """Whether any treatment value has a flagged effect on ``outcome``."""
        return bool(self.flags[:, self._column(outcome)].any())

    def grows_with_extremity(self, outcome: str, *, slack: float = 0.1) -> bool:
        """Whether ``|std_ate|`` never falls by more than ``slack`` (standardised units) as
        the treatment moves further from the baseline, on each side of it, and ends larger
        than it starts (a dose-response that grows; False where it saturates and turns)."""
        col = self._column(outcome)
        ok = True
        grew = False
        for side in (self.values > self.baseline, self.values < self.baseline):
            if not side.any():
                continue
            order = np.argsort(np.abs(self.values[side] - self.baseline))
            sizes = np.abs(self.std_ate[side, col])[order]
            ok &= bool(np.all(np.diff(sizes) >= -slack))
            grew |= bool(sizes[-1] > sizes[0]) or len(sizes) == 1
        return bool(ok and grew)

    def _column(self, outcome: str) -> int:
        if outcome not in self.outcomes:
            raise KeyError(f"unknown outcome '{outcome}'; measured: {list(self.outcomes)}")
        return self.outcomes.index(outcome)

    def table(self) -> list[dict[str, Any]]:
        """One row per (value, outcome): ATE, standardised ATE, p, q and the flag."""
        rows = []
        for i, v in enumerate(self.values):
            for j, name in enumerate(self.outcomes):
                rows.append(
                    {
                        "value": float(v),
                        "outcome": name,
                        "ate": float(self.ate[i, j]),
                        "std_ate": float(self.std_ate[i, j]),
                        "p": float(self.pvalues[i, j]),
                        "q": float(self.qvalues[i, j]),
                        "flag": bool(self.flags[i, j]),
                    }
                )
        return rows

    def summary(self) -> dict[str, Any]:
        """Per outcome: the largest standardised effect, whether it is flagged and whether
        the effect grows with the extremity of the treatment."""
        out: dict[str, Any] = {}
        for j, name in enumerate(self.outcomes):
            k = int(np.argmax(np.abs(self.std_ate[:, j])))
            out[name] = {
                "max_std_ate": float(self.std_ate[k, j]),
                "at_value": float(self.values[k]),
                "flagged": bool(self.flags[:, j].any()),
                "grows": self.grows_with_extremity(name),
            }
        return out


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _outputs_of(generator: Callable, num: int, seed: int, site: str, value=None):
    """``(site's natural draw, outputs)`` of one run, under ``do(site=value)`` if given."""
    program = generator if value is None else poutine.do(generator, data={site: value})
    pyro.set_rng_seed(seed)
    with torch.no_grad(), poutine.block(hide_fn=lambda msg: msg["type"] == "param"):
        trace = poutine.trace(program).get_trace(num)
    if site not in trace.nodes or trace.nodes[site]["type"] != "sample":
        raise ValueError(
            f"the generator has no sample site '{site}'; its sites: "
            f"{[n for n, s in trace.nodes.items() if s['type'] == 'sample']}"
        )
    return trace.nodes[site]["value"], trace.nodes["_RETURN"]["value"]


def _measure(fn: Callable[[Array], Array], outputs: Any, name: str, rows: int) -> np.ndarray:
    with torch.no_grad():
        m = fn(outputs)
    if torch.is_tensor(m):
        m = m.detach().cpu().numpy()
    m = np.asarray(m, dtype=np.float64).reshape(-1)
    if m.shape != (rows,):
        raise ValueError(
            f"outcome '{name}' must return one value per output ({rows}), got {m.shape}"
        )
    if not np.isfinite(m).all():
        raise ValueError(f"outcome '{name}' returned NaN or inf")
    return m


def extreme_effects(
    generator: Callable[[int], Any],
    site: str,
    outcomes: Mapping[str, Callable[[Array], Array]],
    *,
    values: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
    baseline: float = 0.0,
    index: int | None = None,
    num_draws: int = 500,
    reference: Any = None,
    alpha: float = 0.05,
    min_effect: float = 0.5,
    correction: str = "bh",
    seed: int = 0,
) -> ExtremeEffects:
    """Standardised average treatment effects of setting ``site`` to each of ``values``.

    :param generator: ``generator(num)`` runs a Pyro program drawing ``site`` (batch shape
        ``(num,)``) and returns ``num`` outputs; parameters are not changed and no
        gradients are kept.
    :param site: the latent sample site to intervene on.
    :param outcomes: outcome name -> function from outputs to ``(num,)`` finite values.
    :param values: treatment values (increasingly extreme; the baseline is dropped if
        listed). With ``index`` the coordinate ``index`` of the site's last dimension is set
        and the other coordinates keep their natural draws; without it the whole site is set
        to the value (a scalar site, or every coordinate at once).
    :param baseline: the control value, ``do(site = baseline)``.
    :param num_draws: paired draws per value.
    :param reference: outputs (real data) whose measured spread standardises the ATEs;
        default: the spread under the baseline intervention.
    :param alpha: false discovery rate of the flags.
    :param min_effect: smallest ``|std_ate|`` that is flagged.
    :param correction: ``"bh"`` (Benjamini-Hochberg) or ``"by"`` (Benjamini-Yekutieli).
    :param seed: the seed of every run (the same at each value: paired draws).
    """
    if not callable(generator):
        raise ValueError("generator must be callable: generator(num) -> outputs")
    if not isinstance(site, str) or not site:
        raise ValueError(f"site must be a site name, got {site!r}")
    if not isinstance(outcomes, Mapping) or not outcomes:
        raise ValueError("outcomes must be a non-empty mapping name -> function")
    for name, fn in outcomes.items():
        if not callable(fn):
            raise ValueError(f"outcome '{name}' is not callable")
    baseline = _number(baseline, "baseline")
    treat = [_number(v, "each treatment value") for v in values]
    treat = sorted({v for v in treat if v != baseline})
    if not treat:
        raise ValueError("values must hold at least one value other than the baseline")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 3:
        raise ValueError(f"num_draws must be an integer >= 3, got {num_draws!r}")
    if not 0 < _number(alpha, "alpha") < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if _number(min_effect, "min_effect") < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise ValueError(f"index must be an integer or None, got {index!r}")

    natural, _ = _outputs_of(generator, num_draws, seed, site)
    natural = torch.as_tensor(natural)
    if index is not None:
        if natural.ndim < 2:
            raise ValueError(
                f"index needs a vector site; '{site}' has shape {tuple(natural.shape)}"
            )
        if not -natural.shape[-1] <= index < natural.shape[-1]:
            raise ValueError(
                f"index {index} is out of range for '{site}' of size {natural.shape[-1]}"
            )

    def treated(v: float) -> torch.Tensor:
        if index is None:
            return torch.full_like(natural, v, dtype=torch.get_default_dtype())
        out = natural.clone().to(torch.get_default_dtype())
        out[..., index] = v
        return out

    names = tuple(outcomes)
    measured = []
    for v in [baseline, *treat]:
        _, outputs = _outputs_of(generator, num_draws, seed, site, treated(v))
        measured.append(
            np.stack([_measure(outcomes[n], outputs, n, num_draws) for n in names], axis=1)
        )
    measured = np.stack(measured)  # (V + 1, N, O)

    if reference is not None:
        rows = len(reference)
        ref = np.stack([_measure(outcomes[n], reference, n, rows) for n in names], axis=1)
        sd = ref.std(0, ddof=1)
    else:
        sd = measured[0].std(0, ddof=1)
    sd = np.where(sd > 0, sd, np.nan)

    diff = measured[1:] - measured[0]  # (V, N, O)
    ate = diff.mean(1)
    se = diff.std(1, ddof=1) / math.sqrt(num_draws)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = ate / se
    p = 2 * stats.t.sf(np.abs(t), df=num_draws - 1)
    p = np.where(se > 0, p, np.where(ate == 0, 1.0, 0.0))
    q = stats.false_discovery_control(p.ravel(), method=correction).reshape(p.shape)
    std = ate / sd
    flags = (q < alpha) & (np.abs(np.nan_to_num(std)) >= min_effect)
    return ExtremeEffects(
        site=site,
        index=index,
        baseline=baseline,
        values=np.asarray(treat),
        outcomes=names,
        ate=ate,
        std_ate=std,
        se=se,
        pvalues=p,
        qvalues=q,
        flags=flags,
        sd_ref=sd,
        baseline_mean=measured[0].mean(0),
        alpha=float(alpha),
        min_effect=float(min_effect),
        correction=correction,
        num_draws=num_draws,
        measured=measured,
    )


def prior_generator(
    model: Any, data: Mapping[str, torch.Tensor], *, site: str = "z", field: str = "x"
) -> Callable[[int], torch.Tensor]:
    """``generator(num)`` for a zoo model with a local latent ``site``: ``site`` drawn from
    the model's prior (a Pyro site of that name, so ``poutine.do`` can set it), decoded to
    the mean of the observed ``field`` (:func:`~inference.diagnostics.traversal.model_decoder`;
    other inputs resampled from ``data``)."""
    from inference.diagnostics.traversal import model_decoder

    decode = model_decoder(model, data, site=site, field=field)

    def generator(num: int) -> torch.Tensor:
        prior = model.prior(site)
        value = pyro.sample(site, prior.expand([num, *prior.batch_shape]))
        with poutine.block():  # the model's own run inside the decoder stays private
            return decode(value)

    return generator
