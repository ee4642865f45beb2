"""The device-resident greedy (synth_empathy.core.kcenter.device), run on the CPU through torch.

The GPU runs this same code (plus CUDA graphs over the same steps); here it is checked
pick by pick against the float64 brute force of test_kcenter, with small pools that
force many rounds, ties outside the pool and compaction of the chosen rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings

from synth_empathy.core import kcenter as K
from synth_empathy.core.kcenter import SelectionError

torch = pytest.importorskip("torch")
D = pytest.importorskip("synth_empathy.core.kcenter.device")

from core.test_kcenter import check_picks, clustered, problems, radius_matches  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(problems())
def test_device_greedy_matches_brute_force_pick_by_pick(p):
    x, k, start, pool = p
    idx, dist, got_radius, details, dev = D.greedy(x, k, start, device="torch-cpu", pool_size=pool)
    assert dev == "torch-cpu"
    assert idx.dtype == np.int64
    radius = check_picks(x, idx, k, start)
    assert radius_matches(got_radius, radius, x)
    assert math.isinf(dist[0]) and np.all(np.diff(dist[1:]) <= 1e-5)  # farthest-first


def test_rounds_pick_many_and_compaction_keeps_the_picks():
    x = clustered(1500, d=24, seed=3)
    idx, dist, got_radius, det, _ = D.greedy(x, 1350, 7, device="torch-cpu", pool_size=64)
    radius = check_picks(x, idx, 1350, 7)  # this data has float32 near-ties
    assert got_radius == pytest.approx(radius, abs=1e-5)
    assert det["compactions"] >= 1  # keep 90 %: the chosen rows left the live arrays
    assert det["rounds"] < 1350 / 4  # several exact picks per round, not one
    assert det["evaluated_fraction"] < 0.75  # compaction skipped part of the N x k work


def test_select_k_center_routes_torch_cpu_and_tensors():
    x = clustered(600, d=16, seed=1)
    a = K.select_k_center(x, 60, method="exact", device="cpu")
    b = K.select_k_center(x, 60, method="exact", device="torch-cpu")
    c = K.select_k_center(torch.from_numpy(x), 60, method="fast", device="torch-cpu")  # fast = exact on a CPU
    assert b.device == c.device == "torch-cpu"
    assert b.indices.tolist() == a.indices.tolist() == c.indices.tolist()
    assert b.radius == pytest.approx(a.radius, rel=1e-5)
    assert b.details["products"] == "float32"


def test_float16_storage_stays_within_its_bound():
    x = clustered(800, d=32, seed=2)
    exact = D.greedy(x, 80, 0, device="torch-cpu")
    half = D.greedy(x, 80, 0, device="torch-cpu", storage="float16")
    assert half[3]["storage_dtype"] == "float16"
    # Each stored row moves by at most 2**-11 |x| (unit rows): the radius by twice that,
    # plus the float32 rounding of the two computations.
    assert abs(half[2] - exact[2]) <= 2 * 2.0**-11 + 1e-5


def test_fast_radius_recheck_is_the_float32_radius():
    x = clustered(900, d=16, seed=4)
    idx, _, radius, _, _ = D.greedy(x, 90, 0, device="torch-cpu")
    eng = D.DeviceGreedy(torch.from_numpy(x), pool_size=32)
    live = eng.start(0)
    picks = [live]
    while sum(len(p) for p in picks) < 90:
        p, _ = eng.round(90 - sum(len(p) for p in picks), 32)
        picks.append(eng.pos.index_select(0, p))
        eng.update(p)
    r2, how = D._recheck_radius(eng, torch.from_numpy(x), torch.cat(picks), float(eng.md.max()) + 1e-3)
    assert math.sqrt(r2) == pytest.approx(radius, rel=1e-6)
    assert how.startswith("float32 re-check")


@pytest.mark.parametrize(
    "x,fragment",
    [
        (np.array([[0.0, 1.0], [np.nan, 0.0]], dtype=np.float32), "row 1: embedding has NaN"),
        (np.array([[0.0, 1.0], [1.0, np.inf]], dtype=np.float32), "row 1: embedding has NaN or infinite"),
    ],
)
def test_bad_values_are_one_line_errors(x, fragment):
    with pytest.raises(SelectionError, match=fragment):
        K.select_k_center(x, 1, device="torch-cpu")


def test_bad_settings_are_one_line_errors():
    x = clustered(20)
    with pytest.raises(SelectionError, match="storage dtype must be one of"):
        K.select_k_center(x, 2, device="torch-cpu", storage="int8")
    with pytest.raises(SelectionError, match="beyond float16's range"):
        K.select_k_center(x * 1e5, 2, device="torch-cpu", storage="float16")
    with pytest.raises(SelectionError, match="2-D array"):
        K.select_k_center(torch.zeros(3), 1, device="torch-cpu")
    with pytest.raises(SelectionError, match="empty"):
        K.select_k_center(torch.zeros((0, 4)), 1, device="torch-cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SelectionError, match="no GPU is visible"):
            K.select_k_center(torch.from_numpy(x), 2, device="cuda")


def test_out_of_memory_message_names_the_size_and_the_settings():
    e = D._oom(torch.device("cpu"), 3 * 2**30, "the 1,000,000 x 768 embeddings as float32", "float32")
    msg = str(e)
    assert "\n" not in msg and "needs 3.0 GiB" in msg
    assert "diversity.storage_dtype=float16" in msg and "diversity.shards=N" in msg
