"""Shard splits of the sharded k-center: random and k-means (locality), balance, bound."""

import numpy as np
import pytest

from synth_empathy.core import kcenter as K
from synth_empathy.core.shard_split import balanced_assign, kmeans_split, split
from synth_empathy.errors import SelectionError


def blobs(n=1200, d=8, centers=6, seed=0, sizes=None):
    r = np.random.default_rng(seed)
    c = 4.0 * r.normal(size=(centers, d))
    lab = r.choice(centers, n, p=sizes)
    return (c[lab] + r.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_kmeans_split_gives_the_shards_asked_for(backend):
    x = blobs()
    parts, info = kmeans_split(x, 4, seed=1, backend=backend)
    assert len(parts) == 4 and all(len(p) for p in parts)
    allrows = np.concatenate(parts)
    assert np.array_equal(np.sort(allrows), np.arange(len(x)))  # every row once
    assert all(np.all(np.diff(p) > 0) for p in parts)
    assert max(info["sizes"]) <= np.ceil(1.5 * len(x) / 4)
    again, _ = kmeans_split(x, 4, seed=1, backend=backend)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))  # seeded


def test_lopsided_regions_are_balanced():
    x = blobs(sizes=[0.7, 0.1, 0.05, 0.05, 0.05, 0.05])
    parts, info = kmeans_split(x, 4, seed=0, balance=1.2)
    assert max(info["sizes_before_balance"]) > 360  # one region would hold most rows
    assert max(info["sizes"]) <= 360 and min(info["sizes"]) > 0


def test_balanced_assign_respects_the_cap_and_keeps_the_closest():
    d2 = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 1.0], [3.0, 9.0]])
    lab = balanced_assign(d2, cap=2)
    assert lab.tolist() == [0, 0, 1, 1]  # row 3 wanted 0, which kept its two closest
    with pytest.raises(SelectionError):
        balanced_assign(d2, cap=1)


def test_split_names():
    parts, info = split(np.zeros((10, 2), np.float32), 3, 0, "random")
    assert [len(p) for p in parts] == [4, 3, 3] and info["split"] == "random"
    with pytest.raises(SelectionError, match="shard_by"):
        split(np.zeros((10, 2), np.float32), 3, 0, "hash")


@pytest.mark.parametrize("per_shard", ["full", "proportional"])
def test_sharded_kmeans_against_exact(per_shard):
    x = blobs(n=1500, d=8, centers=12, seed=3)
    k = 60
    exact = K.select_k_center(x, k, method="exact", start=7)
    res = K.select_k_center(x, k, method="sharded", start=7, shards=4, shard_by="kmeans", per_shard=per_shard)
    assert res.indices[0] == 7 and len(np.unique(res.indices)) == k
    assert res.radius == pytest.approx(K.covering_radius(x, res.indices), rel=1e-6)
    d = res.details
    assert d["shard_by"] == "kmeans" and len(d["split"]["sizes"]) == 4
    if per_shard == "full":
        assert res.radius <= 4 * exact.radius  # 4 x OPT, and OPT <= the exact greedy's radius
        assert d["centers_per_shard"] == [min(k, s) for s in d["split"]["sizes"]]
    else:
        assert d["union_rows"] < 4 * k
    # The certificate bounds radius / OPT, and OPT <= the exact greedy's radius.
    assert d["certified_ratio_to_opt"] >= res.radius / exact.radius - 1e-6


def test_bad_per_shard():
    with pytest.raises(SelectionError, match="per_shard"):
        K.select_k_center(np.eye(4), 2, method="sharded", shards=2, per_shard="half")
