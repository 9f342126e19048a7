"""A paper's claims tested on a results file: each claim a comparison of two figures (or of a
figure and a bound) paired by seed, read as met, not met, or level within noise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zoo.evidence.results import summarise

__all__ = ["Check", "Verdict", "evaluate_check"]

_OPS = (">=", "<=")


@dataclass(frozen=True)
class Check:
    """The claim ``left op factor * right`` over seeds, in words for the README.

    :param claim: the paper's claim in words (no figures: they come from the results file).
    :param left: a figure key of the model's results.
    :param op: ``">="`` or ``"<="``.
    :param right: another figure key (compared seed by seed: both arms ran on the same data)
        or a number (a bound).
    :param factor: multiplies ``right`` (``child MAE <= 0.8 x the baseline's``).
    :param why: where the claim is not met, the reason as far as it is known.
    """

    claim: str
    left: str
    op: str
    right: str | float
    factor: float = 1.0
    why: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"check {self.claim!r}: op must be one of {_OPS}, got {self.op!r}")


@dataclass(frozen=True)
class Verdict:
    """A check read on a results file: the two sides as printed, the seed-paired margin
    (``left - factor * right``, signed so that positive means the claim holds) with its 95%
    interval, and the verdict."""

    left: str
    right: str
    margin: float
    interval: tuple[float, float] | None
    verdict: str


def _side(figures: Mapping[str, Any], key: str) -> list[float]:
    if key not in figures:
        raise KeyError(f"the results have no figure {key!r}")
    return [float("nan") if v is None else float(v) for v in figures[key]["values"]]


def _printed(values: list[float], digits: int) -> str:
    s = summarise(values)
    if s["sd"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def evaluate_check(check: Check, figures: Mapping[str, Any], digits: int = 3) -> Verdict:
    """Read ``check`` on a results file's ``figures``. Met: the 95% interval of the paired
    margin lies on the claimed side of 0; not met: on the other side; otherwise level within
    noise (the seeds cannot tell)."""
    left = _side(figures, check.left)
    if isinstance(check.right, str):
        right = _side(figures, check.right)
        if len(right) != len(left):
            raise ValueError(f"{check.left} and {check.right} have different numbers of seeds")
        right_text = _printed(right, digits)
    else:
        right = [float(check.right)] * len(left)
        right_text = f"{float(check.right):g}"
    if check.factor != 1.0:
        right_text = f"{check.factor:g} × {right_text}"
    sign = 1.0 if check.op == ">=" else -1.0
    margin = summarise([sign * (a - check.factor * b) for a, b in zip(left, right, strict=True)])
    if margin["mean"] is None:
        raise ValueError(f"check {check.claim!r}: no seed has both figures")
    interval = tuple(margin["ci95"]) if margin["ci95"] is not None else None
    low, high = interval if interval is not None else (margin["mean"], margin["mean"])
    verdict = "met" if low >= 0 else "not met" if high < 0 else "level within noise"
    return Verdict(_printed(left, digits), right_text, margin["mean"], interval, verdict)
