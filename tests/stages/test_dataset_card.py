"""The run folder's dataset card: well-formed front matter that `datasets` loads."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from synth_empathy.config import load_config
from synth_empathy.stages.dataset_card import size_category, write_dataset_card
from synth_empathy.storage.run_store import RunStore


def test_size_buckets():
    assert [size_category(n) for n in (0, 999, 1000, 99_999, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M",
    ]  # fmt: skip


def test_card_names_the_tables_present_and_datasets_loads_them(tmp_path):
    store = RunStore(str(tmp_path), "run")
    run = tmp_path / "run"
    (run / "selected").mkdir(parents=True)
    pq.write_table(pa.table({"sample_id": ["a#g0", "b#g0"], "output": ["x", "y"]}), run / "selected" / "p0.parquet")
    (run / "selected.alpaca.jsonl").write_text(
        "".join(json.dumps({"instruction": "i", "input": "", "output": o}) + "\n" for o in "xy")
    )
    report = {"counts": {"seeds": 2, "selected": 2}, "dropped": {"samples": {"no_rounds": 1}}, "plots": []}
    write_dataset_card(store, load_config(), report)

    text = (run / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["selected"]  # only what exists
    assert header["size_categories"] == ["n<1K"] and "no_rounds: 1" in text
    assert "quality:" in text  # the resolved config is in the card
    selected = datasets.load_dataset(str(run), "selected", split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(selected["sample_id"]) == ["a#g0", "b#g0"]
    assert "selected.alpaca.jsonl" in text
