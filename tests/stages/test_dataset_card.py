"""The run folder's dataset card: well-formed front matter that `datasets` loads."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from synth_empathy.config import load_config
from synth_empathy.stages.dataset_card import (
    corpus_license,
    licenses_section,
    model_license,
    size_category,
    write_dataset_card,
)
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
    # the packaged seeds and models: Apache-2.0 throughout
    assert header["license"] == "apache-2.0"
    assert "## Licenses" in text and "generator `packaged:smollm2`: Apache-2.0" in text


def test_the_corpus_license_comes_from_the_seeds():
    assert corpus_license(None, "", "auto")[0] == "apache-2.0"  # the packaged seeds, written for the project
    for layout in ("ed_csv", "ed_parquet", "ed_turns_csv"):
        assert corpus_license(None, "s3://b/ed/train.csv", layout)[0] == "cc-by-nc-4.0"
    license_id, why = corpus_license(None, "mine.jsonl", "pairs")
    assert license_id == "unknown" and "seeds.license=" in why  # tells the user how to name it
    assert corpus_license("CC-BY-4.0 ", "mine.jsonl", "pairs")[0] == "cc-by-4.0"  # set: it wins
    assert corpus_license("other", "", "shipped")[0] == "other"
    assert corpus_license("", "x.csv", "ed_csv")[0] == "cc-by-nc-4.0"  # empty = not set


def test_model_licenses():
    apache = ["packaged:smollm2", "packaged:all-minilm-l6-v2", "HuggingFaceTB/SmolLM2-1.7B-Instruct"]
    assert {model_license(m) for m in apache + ["sentence-transformers/all-MiniLM-L6-v2"]} == {"Apache-2.0"}
    assert model_license("meta-llama/Meta-Llama-3-70B-Instruct") == "Llama 3 Community License (`llama3`)"
    assert model_license("meta-llama/Meta-Llama-3.1-8B-Instruct") == "Llama 3.1 Community License (`llama3.1`)"
    assert model_license("meta-llama/Llama-3.2-1B-Instruct").startswith("Llama 3.2 Community")
    # a local fine-tune: its name is all there is to go by
    local = model_license("/models/llama-3-8b-ed-discriminator")
    assert local.startswith("Llama 3 Community License") and "going by its name" in local
    assert model_license("s3://b/models/llama3-ft").startswith("Llama 3 Community License")
    for other in ("mistralai/Mistral-7B-Instruct-v0.3", "meta-llama/Llama-2-7b-chat-hf", "huggyllama/llama-30b"):
        assert model_license(other) == "see the model's card"


def test_licenses_section_names_the_corpus_and_every_model():
    models = {"generator": "meta-llama/Meta-Llama-3-70B-Instruct", "embedder": "packaged:all-minilm-l6-v2"}
    text = "\n".join(licenses_section(corpus_license(None, "train.csv", "ed_csv"), models))
    assert text.startswith("## Licenses")
    assert "`cc-by-nc-4.0`" in text and "CC BY-NC 4.0" in text
    assert "generator `meta-llama/Meta-Llama-3-70B-Instruct`: Llama 3 Community License" in text
    assert "embedder `packaged:all-minilm-l6-v2`: Apache-2.0" in text


def test_card_license_follows_the_layout_the_seed_stage_read(tmp_path):
    store = RunStore(str(tmp_path), "run")
    run = tmp_path / "run"
    run.mkdir()
    (run / "seeds.json").write_text(json.dumps({"path": "train.csv", "layout": "ed_csv", "dropped": {}}))
    report = {"counts": {"selected": 0}, "dropped": {}, "plots": []}
    write_dataset_card(store, load_config("default", ["seeds.path=train.csv"]), report)  # layout auto
    header = yaml.safe_load((run / "README.md").read_text().split("---\n")[1])
    assert header["license"] == "cc-by-nc-4.0"
    write_dataset_card(store, load_config("default", ["seeds.path=train.csv", "seeds.license=cc-by-4.0"]), report)
    assert yaml.safe_load((run / "README.md").read_text().split("---\n")[1])["license"] == "cc-by-4.0"
