"""The one Arrow list column -> float32 matrix converter (synth_empathy.core.arrow_matrix)."""

import numpy as np
import pyarrow as pa
import pytest

from synth_empathy.core.arrow_matrix import list_matrix
from synth_empathy.errors import SelectionError

X = np.arange(12, dtype=np.float32).reshape(4, 3)


@pytest.mark.parametrize(
    "column",
    [
        pa.array(list(X), type=pa.list_(pa.float32())),
        pa.array(list(X), type=pa.large_list(pa.float64())),
        pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 3),
        pa.array([list(map(int, r)) for r in X], type=pa.list_(pa.int64())),
        pa.chunked_array(
            [pa.array(list(X[:1]), pa.list_(pa.float32())), pa.array(list(X[1:]), pa.list_(pa.float32()))]
        ),
        pa.array(list(np.vstack([X[:1] * 0, X])), type=pa.list_(pa.float32())).slice(1),  # offsets honoured
    ],
    ids=["list", "large_list", "fixed_size_list", "ints", "chunked", "sliced"],
)
def test_every_list_layout_gives_the_same_float32_matrix(column):
    got = list_matrix(column)
    assert got.dtype == np.float32 and got.shape == (4, 3)
    np.testing.assert_array_equal(got, X)


def test_zero_rows_give_an_empty_matrix():
    assert list_matrix(pa.array([], type=pa.list_(pa.float32()))).shape == (0, 0)
    assert list_matrix(pa.chunked_array([], type=pa.list_(pa.float32())), dim=5).shape == (0, 5)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([[1.0, 2.0], None, [3.0, 4.0]], "column 'embedding', row 1: embedding is null"),
        (
            [[1.0, 2.0], [3.0, 4.0], [5.0]],
            "column 'embedding', row 2: embedding has 1 values, row 0 has 2 (mixed dimensions)",
        ),
        ([[1.0, 2.0], [3.0, None]], "column 'embedding', row 1: embedding has null values"),
        ([[], []], "column 'embedding', row 0: embedding is empty"),
    ],
    ids=["null_row", "ragged", "null_value", "empty"],
)
def test_a_bad_row_is_a_one_line_error_naming_it(rows, message):
    with pytest.raises(SelectionError, match=rf"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        list_matrix(pa.array(rows, type=pa.list_(pa.float32())))


def test_rows_named_by_id_and_checked_against_an_earlier_batch():
    col = pa.array([[1.0, 2.0, 3.0], [4.0, 5.0]], type=pa.list_(pa.float32()))
    with pytest.raises(SelectionError, match=r"^scored: column 'vec', row b: embedding has 2 values, row a has 3"):
        list_matrix(col, "vec", ids=pa.array(["a", "b"]), where="scored: ")
    with pytest.raises(SelectionError, match=r"row c: embedding has 3 values, row z has 2"):
        list_matrix(col, ids=["c", "d"], dim=2, dim_row="row z")


def test_not_a_list_of_numbers_is_an_error():
    with pytest.raises(SelectionError, match="expected a list of numbers per row, got string"):
        list_matrix(pa.array(["a"]), "text")
    with pytest.raises(SelectionError, match="expected numbers in the lists, got string"):
        list_matrix(pa.array([["a"]]))
