"""Row-aligned data sets, their validation, and minibatches with subsample indices.

A data set is a ``dict[str, Tensor]`` whose tensors share their first dimension (rows:
data points, schools, episodes, trials). Models receive a :class:`Batch`: the rows of one
minibatch plus their indices and the full data size, which is what ``pyro.plate(...,
subsample=...)`` needs to scale the ELBO correctly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import constraints

__all__ = [
    "DATA_PLATE",
    "Batch",
    "DataError",
    "Field",
    "validate_data",
    "full_batch",
    "holdout_split",
    "Minibatches",
    "steps_per_epoch",
]

#: the name of the plate over rows: ``pyro.plate(DATA_PLATE, size, subsample=batch.index)``
DATA_PLATE = "data"


class DataError(ValueError):
    """Data that cannot be used: the message names the field and the problem."""


class Batch(dict):
    """The rows of one minibatch, keyed by field name.

    :param index: the rows' indices in the full data set (the plate's ``subsample``).
    :param size: the number of rows in the full data set (the plate's ``size``).
    """

    def __init__(self, data: Mapping[str, torch.Tensor], *, index: torch.Tensor, size: int):
        super().__init__(data)
        self.index = index
        self.size = int(size)

    @property
    def batch_size(self) -> int:
        return int(self.index.shape[0])


@dataclass(frozen=True)
class Field:
    """What one data field must look like, per row.

    :param shape: the shape of one row (``()`` for a scalar per row).
    :param dtype: ``"float"`` or ``"int"``.
    :param support: the values allowed, as a torch constraint.
    :param doc: what the field holds, for ``zoo info``.
    :param image: the shape of one picture, ``(H, W)`` or ``(C, H, W)``, when the field
        holds images (a row may hold several, e.g. one per time bin); ``None`` otherwise.
        Pictures of the data and of new rows are drawn from it.
    """

    shape: tuple[int, ...] = ()
    dtype: str = "float"
    support: constraints.Constraint = constraints.real
    doc: str = ""
    image: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.image is not None:
            per_row = math.prod(self.shape)
            if not self.image or per_row % math.prod(self.image):
                raise ValueError(
                    f"image shape {self.image} does not divide the field's shape {self.shape}"
                )


def _support_name(support: constraints.Constraint) -> str:
    return str(support).replace("()", "")


class SupportError(DataError):
    """A field's values outside its support; ``field`` and ``support`` say which, so a
    model can add advice (e.g. a likelihood for greyscale pixels)."""

    def __init__(self, field: str, support: constraints.Constraint, values: torch.Tensor):
        self.field, self.support = field, support
        bad = ~torch.as_tensor(support.check(values)).bool()
        message = (
            f"field '{field}' has values outside its support {_support_name(support)}: "
            f"{int(bad.sum())} of {bad.numel()} values, e.g. {float(values[bad][0]):g}"
        )
        self.greyscale = support is constraints.boolean and bool(
            ((values >= 0) & (values <= 1)).all()
        )
        if self.greyscale:
            message += " (values between 0 and 1: greyscale, where 0/1 pixels are expected)"
        super().__init__(message)


def validate_data(data: Mapping[str, object], spec: Mapping[str, Field]) -> dict[str, torch.Tensor]:
    """Check ``data`` against ``spec`` and return it as float32/int64 tensors.

    Raises :class:`DataError` naming the field and the problem (missing, unknown, empty,
    wrong shape or dtype, NaN/Inf, outside the support, rows of unequal count).
    """
    if not isinstance(data, Mapping):
        raise DataError(f"data must be a mapping of field name to array, got {type(data).__name__}")
    missing = [k for k in spec if k not in data]
    if missing:
        raise DataError(f"data is missing field(s) {missing}; expected fields {list(spec)}")
    unknown = [k for k in data if k not in spec]
    if unknown:
        raise DataError(f"data has unknown field(s) {unknown}; expected fields {list(spec)}")
    out: dict[str, torch.Tensor] = {}
    rows = None
    for key, field in spec.items():
        value = data[key]
        array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise DataError(f"field '{key}' must be numeric, got dtype {array.dtype}")
        expected = ("N",) + tuple(field.shape)
        if array.ndim != len(expected) or tuple(array.shape[1:]) != tuple(field.shape):
            raise DataError(
                f"field '{key}' has shape {tuple(array.shape)}; expected {expected} (N rows first)"
            )
        if array.shape[0] == 0:
            raise DataError(f"field '{key}' is empty (0 rows)")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise DataError(f"field '{key}' has {bad} NaN or infinite value(s)")
        if field.dtype == "int":
            if array.dtype.kind == "f" and not np.all(array == np.round(array)):
                raise DataError(f"field '{key}' must hold integers, got non-integer values")
            tensor = torch.as_tensor(array.astype(np.int64))
        else:
            tensor = torch.as_tensor(array.astype(np.float32))
        ok = field.support.check(tensor)
        if not bool(torch.as_tensor(ok).all()):
            raise SupportError(key, field.support, tensor)
        if rows is not None and tensor.shape[0] != rows:
            raise DataError(
                f"field '{key}' has {tensor.shape[0]} rows but other fields have {rows}"
            )
        rows = tensor.shape[0]
        out[key] = tensor
    return out


def full_batch(data: Mapping[str, torch.Tensor]) -> Batch:
    """The whole data set as one batch (no subsampling)."""
    size = len(next(iter(data.values())))
    device = next(iter(data.values())).device
    return Batch(data, index=torch.arange(size, device=device), size=size)


def holdout_split(
    data: Mapping[str, torch.Tensor], fraction: float, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """``(train, test)``: a seeded random ``fraction`` of the rows held out, both parts in
    row order; ``test`` is ``None`` when ``fraction`` leaves either part empty."""
    size = len(next(iter(data.values())))
    n_test = int(round(fraction * size))
    if fraction <= 0 or n_test < 1 or size - n_test < 1:
        return dict(data), None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    return (
        {k: v.index_select(0, train_idx) for k, v in data.items()},
        {k: v.index_select(0, test_idx) for k, v in data.items()},
    )


def steps_per_epoch(rows: int, batch_size: int | None) -> int:
    """Steps of ``batch_size`` rows that show each of ``rows`` rows at least once."""
    return max(1, math.ceil(rows / min(batch_size or rows, rows)))


class Minibatches:
    """Shuffled minibatches over a row-aligned data set, with a resumable position.

    Tensors are sliced directly (no per-item ``Dataset`` indexing, which costs more than a
    small model's step). An epoch is ``ceil(N / batch_size)`` steps and shows every row:
    its last, incomplete batch is topped up with rows from the start of the same shuffled
    order, so every step has the same shape and the same ELBO scale (what a traced,
    JIT-compiled loss needs) and is still a set of distinct rows. (Dropping that batch
    instead would show a 1,527-row set in 11 steps of 128 and leave 119 rows out of every
    epoch: fewer steps per epoch than other trainers take.)
    """

    def __init__(
        self,
        data: Mapping[str, torch.Tensor],
        batch_size: int | None,
        *,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.data = dict(data)
        self.size = len(next(iter(self.data.values())))
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.batch_size = self.size if batch_size is None else min(int(batch_size), self.size)
        self.shuffle = shuffle and self.batch_size < self.size
        self.device = next(iter(self.data.values())).device
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps_per_epoch = steps_per_epoch(self.size, self.batch_size)
        self.epoch = 0
        self.position = 0
        self._order = self._new_order()

    def _new_order(self) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.size, generator=self.generator)
        return torch.arange(self.size)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position >= self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = self._new_order()
        start = self.position * self.batch_size
        index = self._order[start : start + self.batch_size]
        if len(index) < self.batch_size:  # the epoch's last batch: top it up from its start
            index = torch.cat([index, self._order[: self.batch_size - len(index)]])
        index = index.to(self.device)
        self.position += 1
        if self.batch_size == self.size and not self.shuffle:
            rows = self.data
        else:
            rows = {k: v.index_select(0, index) for k, v in self.data.items()}
        return Batch(rows, index=index, size=self.size)

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.position / self.steps_per_epoch

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "position": self.position,
            "order": self._order.clone(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = state["order"].clone()
