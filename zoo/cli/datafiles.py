"""Reading a user's data file (``.npz`` or ``.csv``) into a model's data fields.

The arrays returned here are only parsed, not checked: they then go through
``model.validate(...)``, which names NaN, shape, dtype and support problems.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from inference.data import DataError

__all__ = ["load_data_file", "SUFFIXES"]

SUFFIXES = (".npz", ".csv")


def load_data_file(path: str | os.PathLike, model: Any) -> dict[str, np.ndarray]:
    """Arrays keyed by ``model``'s data field names (``model.data_spec()``), from a file.

    ``.npz``: one array per field, stored under the field's name.
    ``.csv``: a header row, then one row per data point. A model with one data field takes
    all columns as that field, reshaped to the field's row shape; a model with several
    fields takes the columns named after the fields, one scalar per row each.

    :raises DataError: one line naming the file and the problem (missing, empty, unknown
        extension, unreadable or non-numeric CSV, wrong columns).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist")
    if not path.is_file():
        raise DataError(f"data file '{path}' is not a file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"data file '{path}' has unknown extension '{path.suffix or '(none)'}'; "
            f"use one of {list(SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"data file '{path}' is empty")
    spec = model.data_spec()
    if suffix == ".npz":
        return _load_npz(path, spec)
    return _load_csv(path, spec)


def _load_npz(path: Path, spec: dict) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataError(f"data file '{path}' is not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except ValueError as error:  # object arrays need pickle, which is refused
        raise DataError(
            f"data file '{path}' holds arrays that are not plain numbers ({error})"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"data file '{path}' is not a readable .npz archive ({error})") from None
    if not arrays:
        raise DataError(f"data file '{path}' is empty (no arrays); expected {list(spec)}")
    missing = [k for k in spec if k not in arrays]
    if missing:
        raise DataError(
            f"data file '{path}' lacks array(s) {missing}; it has {sorted(arrays)}, "
            f"the model expects {list(spec)}"
        )
    unknown = sorted(k for k in arrays if k not in spec)
    if unknown:
        raise DataError(
            f"data file '{path}' has unknown array(s) {unknown}; the model expects {list(spec)}"
        )
    for key, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise DataError(
                f"data file '{path}': array '{key}' must be numeric, got dtype {array.dtype}"
            )
    return arrays


def _load_csv(path: Path, spec: dict) -> dict[str, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"data file '{path}' is not a readable CSV file ({error})") from None
    if not rows:
        raise DataError(f"data file '{path}' is empty")
    header = [cell.strip() for cell in rows[0]]
    if all(_is_number(cell) for cell in header):
        # a first row of numbers is data: read as a header it would silently drop a row
        names = "any column names" if len(spec) == 1 else f"the field names {list(spec)}"
        raise DataError(
            f"data file '{path}' has no header row (line 1 holds only numbers); add a first "
            f"line naming the columns ({names})"
        )
    body = rows[1:]
    if not body:
        raise DataError(f"data file '{path}' has a header row but no data rows")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"data file '{path}' line {number} has {len(row)} column(s); "
                f"the header has {len(header)}"
            )
    try:
        values = np.array([[float(cell) for cell in row] for row in body], dtype=np.float64)
    except ValueError:
        line, column, cell = next(
            (n, c, cell)
            for n, row in enumerate(body, start=2)
            for c, cell in enumerate(row)
            if not _is_number(cell)
        )
        raise DataError(
            f"data file '{path}' line {line}, column '{header[column]}' (column {column + 1}) "
            f"holds non-numeric value '{cell.strip()}'"
        ) from None
    if len(spec) == 1:
        ((key, field),) = spec.items()
        width = int(np.prod(field.shape)) if field.shape else 1
        if values.shape[1] != width:
            raise DataError(
                f"data file '{path}' has {values.shape[1]} column(s); field '{key}' needs "
                f"{width} per row (row shape {tuple(field.shape)})"
            )
        return {key: values.reshape((len(values),) + tuple(field.shape))}
    missing = [k for k in spec if k not in header]
    if missing:
        raise DataError(
            f"data file '{path}' lacks column(s) {missing}; it has {header}, "
            f"the model expects columns {list(spec)}"
        )
    unknown = [h for h in header if h not in spec]
    if unknown:
        raise DataError(
            f"data file '{path}' has unknown column(s) {unknown}; "
            f"the model expects columns {list(spec)}"
        )
    if len(set(header)) != len(header):
        raise DataError(f"data file '{path}' repeats a column name in its header {header}")
    for key, field in spec.items():
        if tuple(field.shape):
            raise DataError(
                f"data file '{path}': field '{key}' has row shape {tuple(field.shape)}, which a "
                "CSV column cannot hold; use a .npz file"
            )
    return {key: values[:, header.index(key)] for key in spec}


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
