"""Training pairs: the same prompts the discriminator gets at run time; the split."""

import json

import pytest

from helpers import training_rows
from synth_empathy.core import heldout
from synth_empathy.core.discriminator_input import discriminator_messages
from synth_empathy.core.sft_data import IGNORE_INDEX, encode, jsonl_rows, seed_row, template_length
from synth_empathy.core.turn_sampling import rng_for, sample_turns
from synth_empathy.stages.export import to_alpaca, to_chat_messages

SYSTEM = "you are a helpful assistant"


def _pipeline_rows():
    rounds = [("i lost my job.", "i am sorry."), ("my boss was rude.", "that is unfair."), ("now what?", "breathe.")]
    rows = []
    for i in range(6):
        s = sample_turns(rounds, rng_for(f"s{i}", 0), min_history=0, max_history=2)
        rows.append({"sample_id": f"s{i}", "instruction": s.instruction, "history": s.history, "output": s.output})
    return rows


@pytest.mark.parametrize("fmt", ["chat", "instruction"])
@pytest.mark.parametrize("export", ["alpaca", "chat"])
def test_export_records_give_exactly_the_discriminators_messages(fmt, export):
    rows = _pipeline_rows()
    records = to_alpaca(rows) if export == "alpaca" else to_chat_messages(rows, system="another prompt")
    got, dropped = jsonl_rows(json.dumps(r) for r in records)
    assert not dropped
    for row, back in zip(rows, got):
        assert discriminator_messages(back, SYSTEM, fmt) == discriminator_messages(row, SYSTEM, fmt)
        assert back["output"] == row["output"]


def test_seed_pair_reads_like_a_generated_sample():
    row = seed_row("Speaker: i lost my job.\nListener: i am sorry.\nSpeaker: my boss was rude.", "that is unfair.")
    assert row["instruction"] == "Speaker: i lost my job.\nListener: i am sorry.\nSpeaker: my boss was rude.\nListener:"
    assert [t["role"] for t in row["history"]] == ["user", "assistant", "user"]
    assert discriminator_messages(row, SYSTEM, "chat")[1:] == row["history"]


def test_the_prompt_is_masked_and_the_answer_learned(tokenizer):
    row = training_rows()[0]
    messages = discriminator_messages(row, SYSTEM, "chat") + [{"role": "assistant", "content": row["output"]}]
    example, n = encode(tokenizer, messages, 512)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt)["input_ids"]  # as Ray Data LLM's tokenize stage encodes it
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids and n == len(example["input_ids"])
    assert set(example["labels"][: len(prompt_ids)]) == {IGNORE_INDEX}
    learned = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert learned.startswith(row["output"]) and tokenizer.eos_token in learned
    assert encode(tokenizer, messages, n - 1) == (None, n)  # too long: dropped, not cut
    assert template_length(tokenizer, SYSTEM, "chat") < n


def test_heldout_split_is_by_opening_turn_and_deterministic():
    short = "Speaker: my car broke down.\nListener: oh no."
    longer = "Speaker: My  car broke down.\nListener: oh no.\nSpeaker: yes, again."
    assert heldout.split_key(short) == heldout.split_key(longer) == "my car broke down."
    assert heldout.bucket("x") == heldout.bucket("x") != heldout.bucket("x", salt="other")
    contexts = [f"Speaker: dialogue {i}" for i in range(2000)]
    share = sum(heldout.is_heldout(c, 0.1) for c in contexts) / len(contexts)
    assert 0.07 < share < 0.13


def test_the_limit_samples_ed_and_keeps_every_export_row(chat_jsonl, tmp_path):
    """ED + selection trains on the same ED pairs as ED alone, plus every selected row."""
    from pathlib import Path

    from synth_empathy.config import load_config
    from synth_empathy.training.run import prepare

    valid = Path(__file__).resolve().parents[3] / "shared" / "data" / "ed" / "valid.csv"
    if not valid.exists():
        pytest.skip("the ED split in ../shared is not beside this checkout")
    base = ["train.limit=10", "train.cutoff_len=512"]
    ed = prepare(load_config(overrides=[*base, f"train.data=[{valid}]", f"train.output={tmp_path}/a"]))
    mix = prepare(load_config(overrides=[*base, f"train.data=[{valid},{chat_jsonl}]", f"train.output={tmp_path}/b"]))
    n_export = mix["data_report"]["sources"][1]["rows"]
    assert n_export > 0 and ed["data_report"]["pairs_sampled"] == 10
    assert mix["data_report"]["pairs_sampled"] == 10 + n_export
    assert mix["examples"][: len(ed["examples"])] == ed["examples"]  # the same ED pairs, then the selection
