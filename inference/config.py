"""``TrainConfig``: the training settings every engine reads by attribute.

A zoo model's ``Config`` dataclass subclasses it, so one JSON-ready object holds both the
model's hyperparameters and how it trains; ``zoo train``, :func:`inference.svi.fit`
(``config=``) and the Lightning trainer read these fields and nothing else. A misspelt key
(``learning_rate``) is refused with the valid names, never read with a silent default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from inference.data import steps_per_epoch

__all__ = ["TrainConfig", "TrainConfigError", "OPTIMIZERS", "TRAIN_FIELDS"]

#: optimizers of :func:`inference.svi.fit`; ``auto`` is AdamW when ``weight_decay > 0``
#: (decoupled decay), else Adam
OPTIMIZERS = ("adam", "adamw", "clipped_adam")


class TrainConfigError(ValueError):
    """A training setting out of range: the message names the field."""


@dataclass
class TrainConfig:
    """How a model trains.

    :param batch_size: rows per SVI step (``None``: the whole data set).
    :param lr: the optimizer's learning rate.
    :param steps: SVI steps; takes precedence over ``epochs``.
    :param epochs: passes over the training rows, when ``steps`` is ``None``.
    :param optimizer: one of :data:`OPTIMIZERS`, or ``auto``.
    :param weight_decay: decoupled weight decay (AdamW).
    :param clip_norm: clip the global gradient norm to this value (``None``: no clipping).
    :param holdout: fraction of the rows held out from training for ``evaluate``.
    """

    batch_size: int | None = None
    lr: float = 0.02
    steps: int | None = None
    epochs: float | None = None
    optimizer: str = "auto"
    weight_decay: float = 0.0
    clip_norm: float | None = None
    holdout: float = 0.0

    #: steps when neither ``steps`` nor ``epochs`` is set
    DEFAULT_STEPS = 2000

    def check_training(self) -> None:
        """Refuse out-of-range training settings, naming the field."""
        if self.batch_size is not None and not _whole(self.batch_size):
            raise TrainConfigError(f"batch_size must be >= 1 or None, got {self.batch_size!r}")
        if not _positive(self.lr):
            raise TrainConfigError(f"lr must be positive, got {self.lr!r}")
        if self.steps is not None and not _whole(self.steps):
            raise TrainConfigError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.epochs is not None and not _positive(self.epochs):
            raise TrainConfigError(f"epochs must be positive or None, got {self.epochs!r}")
        if self.optimizer != "auto" and self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(
                f"unknown optimizer '{self.optimizer}'; valid: {['auto', *OPTIMIZERS]}"
            )
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise TrainConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.clip_norm is not None and not _positive(self.clip_norm):
            raise TrainConfigError(f"clip_norm must be positive or None, got {self.clip_norm!r}")
        if not _number(self.holdout) or not 0.0 <= self.holdout < 1.0:
            raise TrainConfigError(f"holdout must be in [0, 1), got {self.holdout!r}")

    def resolved_optimizer(self) -> str:
        """The optimizer ``auto`` stands for: AdamW with weight decay, else Adam."""
        if self.optimizer != "auto":
            return self.optimizer
        return "adamw" if self.weight_decay > 0 else "adam"

    def total_steps(self, rows: int) -> int:
        """SVI steps for ``rows`` training rows: ``steps``, else ``epochs`` passes of
        ``batch_size`` rows, else :attr:`DEFAULT_STEPS`."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * steps_per_epoch(rows, self.batch_size)))
        return self.DEFAULT_STEPS


#: the names of the training fields (every model's Config has them)
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive(value) -> bool:
    return _number(value) and value > 0
