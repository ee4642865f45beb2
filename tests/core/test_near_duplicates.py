"""Near-duplicate removal: against a row-by-row brute force, the order rule, the errors."""

import numpy as np
import pytest

import synth_empathy.core.near_duplicates as ND
from synth_empathy.core.near_duplicates import drop_near_duplicates, near_duplicates
from synth_empathy.errors import SelectionError


def brute(x, t):
    """Row by row: keep unless cosine >= t to an earlier kept row; dup_of = lowest such row."""
    xu = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    keep, dup = [], np.full(len(x), -1)
    for i in range(len(x)):
        hits = [j for j in keep if float(xu[i] @ xu[j]) >= t - 1e-6]
        if hits:
            dup[i] = min(hits)
        else:
            keep.append(i)
    return np.array(keep), dup


def repeating(n=500, d=16, seed=0):
    r = np.random.default_rng(seed)
    base = r.normal(size=(n // 8, d)).astype(np.float32)
    return base[r.integers(0, len(base), n)] + 0.15 * r.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "faiss", "torch"])  # torch on the CPU: the GPU code
@pytest.mark.parametrize("t", [0.9, 0.97, 1.0])
def test_matches_brute_force_across_blocks(monkeypatch, backend, t):
    x = repeating()
    x[100] = x[3]  # an exact copy: dropped even at threshold 1.0
    monkeypatch.setattr(ND, "_ROWS", 64)  # many row blocks and column blocks on 500 rows
    monkeypatch.setattr(ND, "_COLS", 100)
    keep, dup = brute(x, t)
    got = near_duplicates(x, t, backend=backend, device="torch-cpu" if backend == "torch" else "cpu")
    np.testing.assert_array_equal(got.keep, keep)
    np.testing.assert_array_equal(got.dup_of, dup)
    assert got.dropped == len(x) - len(keep) and got.dup_of[100] == 3


def test_only_kept_rows_drop_others():
    # cos(a, b) and cos(b, c) are above 0.9, cos(a, c) below: b goes (near a), c stays,
    # because b, dropped, cannot drop c.
    ang = np.radians([0.0, 20.0, 40.0])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    got = near_duplicates(x, 0.9)
    assert got.keep.tolist() == [0, 2] and got.dup_of.tolist() == [-1, 0, -1]
    # Order decides: from the middle row first, both neighbours go.
    assert near_duplicates(x[[1, 0, 2]], 0.9).keep.tolist() == [0]


@pytest.mark.parametrize("t", [0, -0.5, 1.5, float("nan"), "high", True])
def test_bad_threshold(t):
    with pytest.raises(SelectionError, match="near_duplicate_cosine"):
        near_duplicates(np.eye(3), t)


def test_nan_row_is_named():
    x = np.eye(4, dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(SelectionError, match="row 2: embedding has NaN"):
        near_duplicates(x, 0.9)


def test_k_above_the_rows_left_is_one_line():
    x = np.repeat(np.eye(4, dtype=np.float32), 5, axis=0)  # 4 distinct rows, 5 copies each
    rows, nd, k = drop_near_duplicates(x, 0.99, ratio=0.5)
    assert rows.tolist() == [0, 5, 10, 15] and nd.dropped == 16 and k == 2
    with pytest.raises(SelectionError) as e:
        drop_near_duplicates(x, 0.99, k=5)
    msg = str(e.value)
    assert "\n" not in msg and "k=5" in msg and "4 rows left after near-duplicate removal" in msg
    rows, nd, k = drop_near_duplicates(x, None, k=5)  # off: every row, k unchanged
    assert len(rows) == 20 and nd is None and k == 5
