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


# -- approximate indexes ---------------------------------------------------------------


def clustered_copies(n=5000, d=32, seed=1):
    """Rows around n/50 centers, a fifth of them near copies (cosine ~0.97) of others, shuffled."""
    r = np.random.default_rng(seed)
    centers = r.normal(size=(n // 50, d)).astype(np.float32)
    m = n - n // 5
    x = centers[r.integers(0, len(centers), m)] + 0.4 * r.normal(size=(m, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = x[r.integers(0, m, n - m)]
    copies = src + 0.18 / np.sqrt(d) * r.normal(size=src.shape).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([x, copies])[r.permutation(n)]


@pytest.mark.parametrize("index", ["ivf", "ivf:nlist=64,nprobe=8", "hnsw"])
def test_approximate_keeps_what_exact_keeps_on_clustered_rows(monkeypatch, index):
    x = clustered_copies()
    monkeypatch.setattr(ND, "_APPROX_ROWS", 256)  # 20 blocks: most rows are found through the index
    exact = near_duplicates(x, 0.95, index="exact")
    got = near_duplicates(x, 0.95, index=index)
    assert exact.dropped > 900 and got.approximate and got.method.startswith(index.split(":")[0] + "(")
    c = ND.compare(exact, got)
    assert c["recall"] == 1.0 and c["precision"] == 1.0 and c["same_keep"]
    np.testing.assert_array_equal(got.keep, exact.keep)


def test_approximate_drops_only_with_a_kept_row_within_the_threshold(monkeypatch):
    # One probed cell of 64: misses are likely, wrong drops must never happen.
    x = clustered_copies(2000, seed=3)
    monkeypatch.setattr(ND, "_APPROX_ROWS", 128)
    got = near_duplicates(x, 0.9, index="ivf:nlist=64,nprobe=1")
    kept = np.zeros(len(x), dtype=bool)
    kept[got.keep] = True
    dropped = np.flatnonzero(got.dup_of >= 0)
    assert len(dropped) == got.dropped > 0
    assert kept[got.dup_of[dropped]].all() and (got.dup_of[dropped] < dropped).all()
    assert (np.einsum("ij,ij->i", x[dropped], x[got.dup_of[dropped]]) >= 0.9 - 1e-6).all()
    a = ND.audit(x, got, rows=len(got.keep))  # every kept row: the misses, counted exactly
    exact = near_duplicates(x, 0.9, index="exact")
    assert a["rows"] == len(got.keep) and a["missed"] == a["estimated_missed_drops"] > 0  # the audit sees misses
    c = ND.compare(exact, got)
    assert c["recall"] < 1.0 and c["both_dropped"] == c["recall"] * c["exact_dropped"]


def test_compare_and_audit_count_what_differs():
    ang = np.radians([0.0, 10.0, 40.0, 45.0, 90.0])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    exact = near_duplicates(x, 0.95, index="exact")
    assert exact.keep.tolist() == [0, 2, 4] and exact.dup_of.tolist() == [-1, 0, -1, 2, -1]
    # An approximate run that missed row 3's neighbour: kept it.
    missed = ND.NearDuplicates(np.array([0, 2, 3, 4]), np.array([-1, 0, -1, -1, -1]), 0.95, "ivf(test)")
    c = ND.compare(exact, missed)
    assert c["exact_dropped"] == 2 and c["approx_dropped"] == 1 and c["recall"] == 0.5
    assert c["precision"] == 1.0 and c["agreement"] == 0.8 and c["same_dup_of"] == 1.0 and not c["same_keep"]
    a = ND.audit(x, missed, rows=10)
    assert a == {"rows": 4, "missed": 1, "missed_share": 0.25, "estimated_missed_drops": 1}
    assert ND.audit(x, exact)["missed"] == 0
    with pytest.raises(ValueError, match="different row counts"):
        ND.compare(exact, near_duplicates(x[:3], 0.95))


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_on_tiny_inputs(index):
    ang = np.radians([0.0, 20.0, 40.0])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    assert near_duplicates(x, 0.9, index=index).keep.tolist() == [0, 2]
    assert near_duplicates(x[:1], 0.9, index=index).keep.tolist() == [0]
    assert near_duplicates(np.zeros((0, 4)), 0.9, index=index).keep.tolist() == []


def test_auto_is_exact_below_auto_rows_and_ivf_above(monkeypatch):
    assert ND.resolve_index("auto", ND.AUTO_ROWS - 1) == ("exact", {})
    assert ND.resolve_index("auto", ND.AUTO_ROWS)[0] == "ivf"
    assert ND.resolve_index("auto", ND.AUTO_ROWS, on_gpu=True) == ("exact", {})
    assert ND.resolve_index("hnsw:m=8", 10) == ("hnsw", {"m": 8, "ef_search": 64, "ef_construction": 64})
    x = clustered_copies(600)
    monkeypatch.setattr(ND, "AUTO_ROWS", 500)
    assert near_duplicates(x, 0.95).method.startswith("ivf(")
    assert near_duplicates(x[:499], 0.95).method == "exact/numpy"
    rows, nd, _ = drop_near_duplicates(x, 0.95, ratio=0.5)
    assert nd.approximate and nd.audit["rows"] == min(1000, len(nd.keep))


@pytest.mark.parametrize(
    "index, says",
    [
        ("annoy", "must be auto, exact, ivf"),
        (3, "must be auto, exact, ivf"),
        ("exact:nprobe=4", "exact takes no parameters"),
        ("ivf:nprobes=4", "ivf takes nlist=N, nprobe=N"),
        ("ivf:nprobe", "ivf takes nlist=N, nprobe=N"),
        ("ivf:nprobe=0", "nprobe must be a whole number in [1, 1000000]"),
        ("ivf:nlist=-3", "nlist must be a whole number"),
        ("ivf:nprobe=2.5", "nprobe must be a whole number"),
        ("hnsw:m=1", "m must be a whole number in [2, 1000000]"),
        ("hnsw:ef_search=x", "ef_search must be a whole number"),
    ],
)
def test_bad_index_is_one_line_naming_the_option(index, says):
    with pytest.raises(SelectionError, match="diversity.near_duplicate_index") as e:
        near_duplicates(np.eye(3), 0.9, index=index)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_bad_index_in_the_config_fails_at_load():
    from synth_empathy.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"diversity.near_duplicate_index: nprobe must be") as e:
        load_config(overrides=["diversity.near_duplicate_index=ivf:nprobe=0"])
    assert "\n" not in str(e.value)
    assert load_config(overrides=["diversity.near_duplicate_index=hnsw:m=16"]).diversity.near_duplicate_index == (
        "hnsw:m=16"
    )
