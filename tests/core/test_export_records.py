"""The one reader of exported records: the judge command and training read a file alike."""

import json

from synth_empathy.cli.judge import rows_from_jsonl
from synth_empathy.core import sft_data
from synth_empathy.core.export_records import DROP_REASONS, read_records

HISTORY = [{"role": "user", "content": "I lost my job."}, {"role": "assistant", "content": "Oh no."}]
LINES = [
    json.dumps({"instruction": "Speaker: hi\nListener:", "input": "", "output": " fine "}),
    json.dumps({"messages": [{"role": "system", "content": "s"}, HISTORY[0], {"role": "assistant", "content": "x"}]}),
    "{not json",
    "",
    json.dumps({"text": "neither"}),
    json.dumps({"messages": [*HISTORY, {"role": "assistant", "content": "again"}]}),  # the user never asked
    json.dumps({"messages": [HISTORY[0]]}),  # ends with the user: no answer
    json.dumps({"instruction": "q", "output": "  "}),
    json.dumps({"messages": [HISTORY[0], {"role": "assistant", "content": ""}]}),
]


def test_every_reason_once_with_line_numbers():
    rows, dropped, unreadable = read_records(LINES)
    assert dropped == {"unreadable_line": 1, "unknown_record": 1, "no_answer_last": 1, "no_output": 2}
    assert set(dropped) <= set(DROP_REASONS) and unreadable == [3]
    assert [r["sample_id"] for r in rows] == ["line-1", "line-2", "line-6"]
    alpaca, chat, _ = rows
    assert alpaca == {"sample_id": "line-1", "instruction": "Speaker: hi\nListener:", "history": None, "output": "fine"}
    assert chat["history"] == [HISTORY[0]] and chat["instruction"] == "" and chat["output"] == "x"
    assert rows[2]["history"] == HISTORY


def test_the_judge_and_training_drop_the_same_lines_for_the_same_reasons():
    _, judge_dropped, _ = rows_from_jsonl(LINES)
    train_rows, train_dropped = sft_data.jsonl_rows(LINES)
    # training drops one more: a chat history that does not end with the user (its own reason)
    assert train_dropped == {**judge_dropped, "bad_roles": 1}
    assert set(train_dropped) <= set(sft_data.DROP_REASONS) and len(train_rows) == 2
    assert train_rows[1]["instruction"] == "Speaker: I lost my job.\nListener:"  # rebuilt from the history
