"""An Arrow column of number lists as an (N, d) float32 matrix: the one converter.

The embeddings of the scored stage, of a Parquet file given to ``synth-empathy select``
and of the report's samples all come as a column of lists (list, large list or
fixed-size list of floats or ints, in one chunk or several). :func:`list_matrix`
turns such a column into a C-ordered float32 matrix without a Python loop over rows,
and checks every row on the way: a null row, a row of another length than the others,
an empty first row or a null value inside a row is a one-line
:class:`~synth_empathy.errors.SelectionError` naming the column and the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth_empathy.errors import SelectionError


def list_matrix(
    column: pa.Array | pa.ChunkedArray,
    name: str = "embedding",
    *,
    ids: Sequence[Any] | pa.Array | None = None,
    where: str = "",
    dim: int | None = None,
    dim_row: str = "row 0",
) -> np.ndarray:
    """The (N, d) float32 matrix of ``column``; zero rows give a (0, ``dim`` or 0) matrix.

    Every row must hold the same number of non-null numbers: ``dim`` when given (the
    width of earlier batches of the same data, taken from ``dim_row``), else that of the
    first row. Errors name a row by its position in ``column``, or by ``ids[i]`` when
    ``ids`` is given, after ``where`` (e.g. ``"scored: "``).
    """
    t = column.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise SelectionError(f"{where}column {name!r}: expected a list of numbers per row, got {t}")
    vt = t.value_type
    if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
        raise SelectionError(f"{where}column {name!r}: expected numbers in the lists, got {vt}")

    def row(i: int) -> str:
        label = i if ids is None else ids[i]
        return f"row {label.as_py() if isinstance(label, pa.Scalar) else label}"

    at = f"{where}column {name!r}, "

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    n = len(column)
    out: np.ndarray | None = None
    row0 = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            i = row0 + int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
            raise SelectionError(f"{at}{row(i)}: embedding is null")
        lens = pc.list_value_length(chunk).to_numpy(zero_copy_only=False)
        if dim is None:
            dim, dim_row = int(lens[0]), row(row0)
            if dim == 0:
                raise SelectionError(f"{at}{row(row0)}: embedding is empty")
        bad = np.flatnonzero(lens != dim)
        if bad.size:
            i = int(bad[0])
            raise SelectionError(
                f"{at}{row(row0 + i)}: embedding has {int(lens[i])} values, {dim_row} has {dim} (mixed dimensions)"
            )
        values = chunk.flatten()  # honours slicing and offsets
        if values.null_count:
            i = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise SelectionError(f"{at}{row(row0 + i // dim)}: embedding has null values")
        block = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(chunk), dim)
        if len(chunk) == n:
            return block  # one chunk: no second copy
        if out is None:
            out = np.empty((n, dim), dtype=np.float32)
        out[row0 : row0 + len(chunk)] = block
        row0 += len(chunk)
    return out if out is not None else np.zeros((0, dim or 0), dtype=np.float32)
