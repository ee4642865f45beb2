"""Method step 4 inside the pipeline: diversity.select over the kept rows."""

import numpy as np
import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from helpers import scored_run
from synth_empathy.config import DiversityConfig
from synth_empathy.core.arrow_matrix import list_matrix
from synth_empathy.core.kcenter import select_k_center
from synth_empathy.errors import SelectionError
from synth_empathy.stages.selection import select


def kept_table(n=40, d=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return pa.table(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "output": [f"answer {i}" for i in range(n)],
            "embedding": pa.array(list(x), type=pa.list_(pa.float32())),
        }
    ), x


def cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(DiversityConfig), kw)


def test_selection_depends_on_rows_and_seed_not_on_row_order():
    table, _ = kept_table()
    shuffled = table.take(pa.array(np.random.default_rng(5).permutation(table.num_rows)))
    a, info_a = select(table, cfg(keep_ratio=0.25), seed=3)
    b, info_b = select(shuffled, cfg(keep_ratio=0.25), seed=3)
    assert a.column("sample_id").to_pylist() == b.column("sample_id").to_pylist()
    assert info_a["start_row"] == info_b["start_row"] and info_a["radius"] == info_b["radius"]
    c, _ = select(table, cfg(keep_ratio=0.25), seed=4)
    assert c.column("sample_id")[0] != a.column("sample_id")[0]  # the seed picks the start


def test_selected_rows_are_the_greedy_picks_in_order_with_their_distances():
    table, x = kept_table()
    chosen, info = select(table, cfg(keep_ratio=None, k=7, method="exact"), seed=0)
    ref = select_k_center(x, 7, method="exact", start=info["start_row"], seed=0)
    assert chosen.column("sample_id").to_pylist() == [f"s{i:03d}" for i in ref.indices]
    assert chosen.column("pick_order").to_pylist() == list(range(7))
    d = chosen.column("distance_at_pick").to_pylist()
    assert np.isinf(d[0]) and all(d[i] >= d[i + 1] - 1e-6 for i in range(1, 6))  # farthest first
    assert info["selected"] == 7 and info["candidates"] == 40
    np.testing.assert_array_equal(list_matrix(chosen.column("embedding")), x[ref.indices])


def test_no_kept_rows_selects_nothing():
    table, _ = kept_table(0)
    chosen, info = select(table, cfg(), seed=0)
    assert chosen.num_rows == 0 and "pick_order" in chosen.column_names and info["selected"] == 0


@pytest.mark.parametrize("near", [None, 0.8])  # with near-duplicates dropped, picks map back to the kept rows
def test_streaming_stage_writes_the_rows_and_columns_of_the_in_memory_selection(tmp_path, near):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synth_empathy import schemas
    from synth_empathy.stages.selection import select_stage

    store, rows = scored_run(tmp_path)
    c = cfg(keep_ratio=0.3, method="exact", near_duplicate_cosine=near)
    expected, info_mem = select(rows.filter(pc.field("kept")), c, seed=7)
    info = select_stage(store, c, seed=7, part_rows=25)  # several windows, several parts

    parts = store.parts("selected")
    assert len(parts) == -(-expected.num_rows // 25)
    got = pq.read_table(parts)  # the parts in name order: the selection in pick order
    assert got.schema.equals(schemas.SELECTED, check_metadata=False)
    assert got.equals(schemas.conform(expected, schemas.SELECTED))  # same ids, order, every column
    timeless = lambda i: {**i, "seconds": 0, "near_duplicates": {**i.get("near_duplicates", {}), "seconds": 0}}  # noqa: E731
    assert timeless(info) == timeless(info_mem)
    assert (info["dropped"]["near_duplicate"] > 0) == (near is not None)


def test_export_streams_the_selection_in_pick_order_whatever_the_part_order(tmp_path):
    import json

    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    from synth_empathy.stages.export import rows_in_pick_order, write_selected
    from synth_empathy.stages.selection import select_stage

    store, _ = scored_run(tmp_path, n=120)
    select_stage(store, cfg(keep_ratio=0.5), seed=0, part_rows=16)
    store.finish("selected", {})
    picked = pq.read_table(store.parts("selected")).column("sample_id").to_pylist()
    write_selected(store)
    alpaca = [json.loads(line) for line in (tmp_path / "run" / "selected.alpaca.jsonl").read_text().splitlines()]
    assert [r["output"] for r in alpaca] == [f"answer {int(s[4:8])}" for s in picked]
    # parts in reverse pick order (written by other means) still come out in pick order
    table = pq.read_table(store.parts("selected"))
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(table.num_rows)[::-1], 3)):
        pq.write_table(table.take(pa.array(chunk)), shuffled / f"part-{i}.parquet")
    rows = rows_in_pick_order(pds.dataset(shuffled), window=10)
    assert [r["sample_id"] for r in rows] == picked


def test_kept_row_without_an_embedding_is_a_one_line_error(tmp_path):
    import pyarrow.dataset as pds
    import pytest

    from synth_empathy.errors import SelectionError
    from synth_empathy.stages.selection import kept_matrix

    table, _ = kept_table(5)
    table = table.append_column("kept", pa.array([True] * 5)).set_column(
        2, "embedding", pa.array([[1.0, 0.0]] * 4 + [None], type=pa.list_(pa.float32()))
    )
    with pytest.raises(SelectionError, match=r"scored: column 'embedding', row s004: embedding is null"):
        kept_matrix(pds.dataset(table))


def with_copies(prefix: str, scale: float = 1.0):
    """30 kept rows and 10 more that repeat rows 0..9 (a corpus that repeats itself), ids
    ``<prefix>000..``; ``scale`` stretches the copies (same direction, cosine 1)."""
    table, x = kept_table(n=30)
    copies = pa.table(
        {
            "sample_id": [f"{prefix}{i:03d}" for i in range(10)],
            "output": [f"again {i}" for i in range(10)],
            "embedding": pa.array(list(x[:10] * scale), type=pa.list_(pa.float32())),
        }
    )
    return pa.concat_tables([table, copies])


def test_near_duplicates_dropped_before_k_center_and_counted():
    both = with_copies("t", scale=2.0)  # the copies sort after the rows they repeat
    chosen, info = select(both, cfg(keep_ratio=0.5, near_duplicate_cosine=0.999), seed=0)
    assert info["dropped"] == {"near_duplicate": 10} and info["rows_before_near_duplicates"] == 40
    assert info["candidates"] == 30 and info["selected"] == 15  # the ratio applies to the rows left
    assert not any(s.startswith("t") for s in chosen.column("sample_id").to_pylist())
    _, off = select(both, cfg(keep_ratio=0.5), seed=0)  # off by default
    assert off["dropped"] == {"near_duplicate": 0} and off["candidates"] == 40


@pytest.mark.parametrize("index", ["exact", "ivf", "hnsw"])
def test_near_duplicate_method_is_logged_and_recorded(caplog, index):
    both = with_copies("t", scale=2.0)
    with caplog.at_level("INFO", logger="synth_empathy.stages.selection"):
        chosen, info = select(both, cfg(keep_ratio=0.5, near_duplicate_cosine=0.999, near_duplicate_index=index), 0)
    assert info["dropped"] == {"near_duplicate": 10}
    nd = info["near_duplicates"]
    assert nd["index_requested"] == index and nd["method"].startswith(index)
    line = next(r.getMessage() for r in caplog.records if "near duplicates (" in r.getMessage())
    assert "10 of 40 rows dropped" in line
    if index == "exact":
        assert "audit" not in nd and "approximate" not in line
    else:  # the caveat and the audit, in the info and the log line
        assert nd["audit"] == {"rows": 30, "missed": 0, "missed_share": 0.0, "estimated_missed_drops": 0}
        assert "kept" in nd["caveat"] and "approximate: 0 of 30 kept rows audited" in line


def test_start_row_is_a_row_of_the_table_given_when_near_duplicates_are_dropped():
    both = with_copies("a")  # the copies sort first: s000..s009 (rows 10..19 in sample_id order) go
    ids = both.sort_by("sample_id").column("sample_id").to_pylist()
    for seed in range(5):
        chosen, info = select(both, cfg(keep_ratio=0.5, near_duplicate_cosine=0.999), seed=seed)
        assert info["dropped"] == {"near_duplicate": 10}
        assert ids[info["start_row"]] == chosen.column("sample_id")[0].as_py()  # the first pick is the start


def test_k_above_the_rows_left_after_near_duplicates_is_one_line():
    table, x = kept_table(n=6)
    dup = pa.table(
        {
            "sample_id": ["z0", "z1"],
            "output": ["a", "b"],
            "embedding": pa.array([x[0], x[1]], type=pa.list_(pa.float32())),
        }
    )
    with pytest.raises(SelectionError) as e:
        select(pa.concat_tables([table, dup]), cfg(keep_ratio=None, k=7, near_duplicate_cosine=0.99), seed=0)
    assert "\n" not in str(e.value) and "k=7 is larger than the 6 rows left" in str(e.value)
