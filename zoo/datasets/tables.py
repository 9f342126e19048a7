"""Small offline tables for tabular representation learning: four of scikit-learn's bundled
data sets (``load_breast_cancer``, ``load_wine``, ``load_diabetes``, ``load_digits`` as a
64-column table) and a synthetic table whose label depends on a few informative columns
hidden among noise columns, so that what a representation attends to can be checked
against the truth.

Every table comes standardised column by column (mean 0, sd 1 over all rows: no label is
used) with its labels, the task (``classification`` or ``regression``) and, for the
synthetic table, the indices of its informative columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TABLES", "Table", "load_table", "synthetic_table"]

#: the tables :func:`load_table` knows
TABLES = ("synthetic", "breast_cancer", "wine", "diabetes", "digits")


@dataclass(frozen=True)
class Table:
    """A standardised table: ``x`` (rows, columns) float32, ``y`` (rows,) int64 classes or
    float32 targets (a regression's standardised), ``task``, and ``informative``: the
    columns the label depends on (known for the synthetic table only, else ``None``)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    task: str
    informative: tuple[int, ...] | None = None

    @property
    def columns(self) -> int:
        return self.x.shape[1]

    @property
    def classes(self) -> int:
        return int(self.y.max()) + 1 if self.task == "classification" else 0


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return ((x - x.mean(0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def synthetic_table(
    rows: int = 1500,
    *,
    informative: int = 8,
    noise: int = 24,
    factor_noise: float = 0.35,
    column_noise: float = 0.3,
    seed: int = 0,
) -> Table:
    """A table with ``informative`` columns driven by a shared 2-D factor and ``noise``
    columns of independent noise (the informative ones first).

    Each row draws a quadrant ``c`` in {0, 1, 2, 3} and a factor ``u ~ N(m_c,
    factor_noise^2 I)`` with ``m_c`` at (+-1, +-1); informative column ``j`` is
    ``tanh(a_j . u + b_j) + column_noise * eps`` with random ``a_j`` and ``b_j`` (seeded),
    noise columns are ``N(0, 1)`` (heavy-tailed t_3 for half of them, so their scale alone
    does not give them away). The label is the XOR of the factor's signs (``c`` in {1, 2}),
    which no linear read-out of the raw columns separates: a representation must learn the
    factor the informative columns share to expose it. Informative columns are predictable
    from each other; noise columns from nothing.
    """
    if informative < 2 or noise < 0 or rows < 8:
        raise ValueError(
            f"need informative >= 2, noise >= 0 and rows >= 8, got {informative}, {noise}, {rows}"
        )
    structure = np.random.default_rng(12345)  # the columns' map is fixed across seeds
    a = structure.normal(0.0, 1.2, size=(informative, 2))
    b = structure.normal(0.0, 0.3, size=informative)
    rng = np.random.default_rng(seed)
    c = rng.integers(4, size=rows)
    centres = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    u = centres[c] + factor_noise * rng.normal(size=(rows, 2))
    x_inf = np.tanh(u @ a.T + b) + column_noise * rng.normal(size=(rows, informative))
    x_noise = rng.normal(size=(rows, noise))
    heavy = noise // 2
    x_noise[:, :heavy] = rng.standard_t(3, size=(rows, heavy))
    x = np.concatenate([x_inf, x_noise], 1)
    y = ((c == 1) | (c == 2)).astype(np.int64)
    return Table("synthetic", _standardise(x), y, "classification", tuple(range(informative)))


def load_table(name: str = "synthetic", *, seed: int = 0, rows: int | None = None) -> Table:
    """Table ``name`` (one of :data:`TABLES`), standardised; ``rows`` keeps a seeded random
    subset of that many rows (all rows when None; the synthetic table draws that many)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; valid tables: {list(TABLES)}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 8):
        raise ValueError(f"rows must be an integer >= 8, got {rows!r}")
    if name == "synthetic":
        return synthetic_table(1500 if rows is None else rows, seed=seed)
    from sklearn import datasets

    loader = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
        "digits": datasets.load_digits,
    }[name]
    bunch = loader()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    if rows is not None and rows < len(x):
        keep = np.sort(np.random.default_rng(seed).choice(len(x), rows, replace=False))
        x, y = x[keep], y[keep]
    if name == "diabetes":
        y = ((y - y.mean()) / y.std()).astype(np.float32)
        return Table(name, _standardise(x), y, "regression")
    return Table(name, _standardise(x), y.astype(np.int64), "classification")
