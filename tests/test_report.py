"""The report's diversity metrics at scale: bounded samples, and exact on small runs."""

import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from helpers import scored_run
from synth_empathy.config import DiversityConfig
from synth_empathy.core.arrow_matrix import list_matrix
from synth_empathy.core.diversity_metrics import diversity_report
from synth_empathy.report import _diversity
from synth_empathy.stages.selection import select_stage


def selected_run(tmp_path):
    store, rows = scored_run(tmp_path, n=200)
    select_stage(store, OmegaConf.merge(OmegaConf.structured(DiversityConfig), {"keep_ratio": 0.3}), seed=0)
    store.finish("selected", {})
    return store, rows


def test_small_run_reads_every_row_and_matches_the_whole_set_report(tmp_path):
    store, rows = selected_run(tmp_path)
    kept = rows.filter(pc.field("kept")).sort_by("sample_id")
    chosen = pq.read_table(store.parts("selected")).column("sample_id")
    sel = kept.filter(pc.is_in(kept.column("sample_id"), value_set=chosen))  # the picks, in id order
    expected = diversity_report(
        sel.column("output").to_pylist(), list_matrix(sel.column("embedding")),
        kept.column("output").to_pylist(), list_matrix(kept.column("embedding")), seed=3,
    )  # fmt: skip
    got = _diversity(store, seed=3)
    assert got.pop("sampled") == {
        "max_rows": 20_000,
        "kept": {"rows": kept.num_rows, "used": kept.num_rows},
        "selected": {"rows": len(chosen), "used": len(chosen)},
    }
    assert got == expected


def test_large_run_is_measured_on_bounded_samples_of_equal_size(tmp_path):
    store, rows = selected_run(tmp_path)
    got = _diversity(store, seed=3, max_rows=40)
    assert got["sampled"]["kept"]["used"] == 40 and got["sampled"]["selected"]["used"] == 20
    assert got["selected"]["n"] == got["random"]["n"] == 20 and got["kept"]["n"] == 40
    assert got == _diversity(store, seed=3, max_rows=40)  # a function of the rows and the seed


def test_near_duplicate_lines_say_how_they_were_found():
    from synth_empathy.report import near_duplicate_lines

    base = {"near_duplicate_cosine": 0.95, "dropped": {"near_duplicate": 7}, "rows_before_near_duplicates": 100}
    assert near_duplicate_lines({**base, "near_duplicate_cosine": None}) == []
    exact = near_duplicate_lines({**base, "near_duplicates": {"method": "exact/numpy"}})
    assert (
        exact[0].startswith("- near duplicates: 7 of 100 kept rows") and exact[1] == "  - found exactly (exact/numpy)"
    )
    audit = {"rows": 93, "missed": 1, "missed_share": 1 / 93, "estimated_missed_drops": 1}
    approx = near_duplicate_lines({**base, "near_duplicates": {"method": "ivf(nlist=2)", "audit": audit}})
    assert "approximate index (ivf(nlist=2)): of 93 kept rows checked exactly, 1 had" in approx[1]
