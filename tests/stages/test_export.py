"""Alpaca / chat-messages records, atomic JSONL writing, LLaMA-Factory dataset_info."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from synth_empathy.core.rounds import Round
from synth_empathy.core.turn_sampling import sample_turns
from synth_empathy.stages.export import (
    dataset_info_entry,
    to_alpaca,
    to_chat_messages,
    write_jsonl,
)


def make_row(n_history: int, sample_id: str = "s-0") -> dict[str, Any]:
    rounds = [Round(f"context {i} ✨", f"response {i} “quoted”") for i in range(1, 5)]
    sample = sample_turns(rounds, random.Random(0), min_history=n_history, max_history=n_history)
    assert sample is not None
    return {
        "seed_id": "seed-0",
        "sample_id": sample_id,
        "instruction": sample.instruction,
        "output": sample.output,
        "history": sample.history,
        "quality_score": 71.5,
    }


ROWS = [make_row(k, f"s-{k}") for k in (0, 1, 2, 3)]


def test_alpaca_has_exactly_the_three_keys() -> None:
    records = to_alpaca(ROWS)
    assert len(records) == len(ROWS)
    for record, row in zip(records, ROWS):
        assert set(record) == {"instruction", "input", "output"}
        assert record["instruction"] == row["instruction"]
        assert record["input"] == ""
        assert record["output"] == row["output"]
        assert record["instruction"].endswith("Listener:")


def test_chat_messages_alternate_and_end_with_the_target() -> None:
    for record, row in zip(to_chat_messages(ROWS), ROWS):
        messages = record["messages"]
        assert list(record) == ["messages"]
        roles = [m["role"] for m in messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert messages[-1] == {"role": "assistant", "content": row["output"]}
        assert messages[:-1] == row["history"]


def test_chat_messages_with_system_prompt() -> None:
    messages = to_chat_messages(ROWS[:1], system="You are an empathetic listener.")[0]["messages"]
    assert messages[0] == {"role": "system", "content": "You are an empathetic listener."}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"]


def test_chat_history_read_back_from_tables() -> None:
    """Parquet via pandas gives arrays of dicts; a JSON column gives a string."""
    row = ROWS[2]
    as_json = dict(row, history=json.dumps(row["history"]))
    as_tuple = dict(row, history=tuple(row["history"]))
    expected = to_chat_messages([row])
    assert to_chat_messages([as_json]) == expected
    assert to_chat_messages([as_tuple]) == expected


@pytest.mark.parametrize(
    "history",
    [
        [],
        [{"role": "assistant", "content": "x"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    ],
)
def test_malformed_history_is_a_clear_error(history: list[dict[str, str]]) -> None:
    with pytest.raises(ValueError, match="s-bad"):
        to_chat_messages([dict(ROWS[0], sample_id="s-bad", history=history)])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    # splitlines() also splits on U+2028 etc.; the writer must escape those.
    return [json.loads(line) for line in text.splitlines()]


def test_jsonl_round_trips_line_by_line(tmp_path: Path) -> None:
    tricky = {"instruction": 'a\nb\u2028c\u2029d\x85e "q" \\ ✨', "input": "", "output": "ok"}
    records = to_alpaca(ROWS) + [tricky]
    path = tmp_path / "out" / "alpaca.jsonl"  # parent is created
    assert write_jsonl(records, path) == len(records)
    assert _read_jsonl(path) == records
    assert "✨" in path.read_text(encoding="utf-8")  # readable, not \u-escaped


def test_jsonl_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    write_jsonl([{"a": 1}], str(path))
    write_jsonl(to_chat_messages(ROWS), str(path))
    assert _read_jsonl(path) == to_chat_messages(ROWS)
    assert os.listdir(tmp_path) == ["chat.jsonl"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.jsonl"
    write_jsonl([{"old": True}], path)

    def broken() -> Any:
        yield {"new": 1}
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        write_jsonl(broken(), path)
    assert _read_jsonl(path) == [{"old": True}]
    assert os.listdir(tmp_path) == ["alpaca.jsonl"]


def test_write_to_open_file_object() -> None:
    buffer = io.StringIO()
    assert write_jsonl(to_alpaca(ROWS[:2]), buffer) == 2
    assert [json.loads(line) for line in buffer.getvalue().splitlines()] == to_alpaca(ROWS[:2])


def test_write_through_fsspec_filesystem(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")  # process-global store: use a unique folder
    base = f"/export-{tmp_path.name}"
    try:
        write_jsonl(to_alpaca(ROWS), f"{base}/alpaca.jsonl", fs=memory)
        with memory.open(f"{base}/alpaca.jsonl", "r", encoding="utf-8") as f:
            assert [json.loads(line) for line in f] == to_alpaca(ROWS)

        # A failed remote write publishes nothing.
        def broken() -> Any:
            yield {"new": 1}
            raise RuntimeError("worker died")

        with pytest.raises(RuntimeError):
            write_jsonl(broken(), f"{base}/broken.jsonl", fs=memory)
        assert not memory.exists(f"{base}/broken.jsonl")

        # A URL picks its filesystem by itself.
        write_jsonl([{"x": 1}], f"memory://{base}/by-url.jsonl")
        assert memory.cat_file(f"{base}/by-url.jsonl") == b'{"x": 1}\n'
    finally:
        if memory.exists(base):
            memory.rm(base, recursive=True)

    # A local fsspec filesystem still gets the temp-file-and-rename write.
    write_jsonl([{"y": 2}], str(tmp_path / "local.jsonl"), fs=fsspec.filesystem("file"))
    assert os.listdir(tmp_path) == ["local.jsonl"]


def test_dataset_info_entries() -> None:
    info: dict[str, Any] = {}
    info.update(dataset_info_entry("synth_empathy_alpaca", "alpaca.jsonl", "alpaca"))
    info.update(dataset_info_entry("synth_empathy_chat", "chat.jsonl", "chat"))
    assert info == {
        "synth_empathy_alpaca": {
            "file_name": "alpaca.jsonl",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        },
        "synth_empathy_chat": {
            "file_name": "chat.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        },
    }
    json.dumps(info)  # a dataset_info.json is plain JSON
    # The columns and tags name exactly the keys the writers produce.
    alpaca_cols = info["synth_empathy_alpaca"]["columns"]
    assert set(alpaca_cols.values()) == set(to_alpaca(ROWS)[0])
    chat = to_chat_messages(ROWS, system="s")[0]
    tags = info["synth_empathy_chat"]["tags"]
    assert set(chat) == {info["synth_empathy_chat"]["columns"]["messages"]}
    assert {m["role"] for m in chat["messages"]} == {tags["system_tag"], tags["user_tag"], tags["assistant_tag"]}
    assert all(set(m) == {tags["role_tag"], tags["content_tag"]} for m in chat["messages"])


def test_dataset_info_unknown_kind() -> None:
    with pytest.raises(ValueError, match="sharegpt|alpaca|chat"):
        dataset_info_entry("x", "x.jsonl", "sharegpt")
