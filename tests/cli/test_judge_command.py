"""``synth-empathy judge``: reading any corpus into the judge's rows, and its bad input.

The real engine over a run's export is in test_e2e.py.
"""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth_empathy import schemas
from synth_empathy.cli.judge import (
    JudgeInputError,
    output_store,
    read_input,
    rows_from_jsonl,
    rows_from_table,
    sample_rows,
)
from synth_empathy.core.export_records import record_row
from synth_empathy.stages.judge import judge_messages

HISTORY = [
    {"role": "user", "content": "I lost my job today."},
    {"role": "assistant", "content": "Oh no, what happened?"},
    {"role": "user", "content": "They closed the whole office."},
]
ANSWER = "That is hard. I'm sorry, it must feel so unfair."


def selected_like(n=3):
    return pa.table(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "instruction": ["Speaker: hi\nListener:"] * n,
            "output": [ANSWER] * n,
            "history": [HISTORY] * n,
            "quality_score": [80.0] * n,
        }
    )


def test_a_runs_selected_table_reads_unchanged():
    rows, dropped = rows_from_table(selected_like())
    assert rows.schema.equals(schemas.JUDGE_INPUT) and rows.num_rows == 3 and not dropped
    assert rows.column("sample_id").to_pylist() == ["s0", "s1", "s2"]
    assert rows.to_pylist()[0]["history"] == HISTORY


def test_rows_without_an_answer_are_counted_not_lost():
    t = selected_like(4)
    t = t.set_column(t.column_names.index("output"), "output", pa.array([ANSWER, None, "  ", ANSWER]))
    rows, dropped = rows_from_table(t)
    assert rows.column("sample_id").to_pylist() == ["s0", "s3"]
    assert dropped == {"no_output": 2}


def test_without_an_id_column_rows_are_numbered():
    t = pa.table({"instruction": ["Speaker: a\nListener:", "Speaker: b\nListener:"], "output": ["x", "y"]})
    rows, _ = rows_from_table(t)
    assert rows.column("sample_id").to_pylist() == ["row-0", "row-1"]
    assert rows.column("history").to_pylist() == [None, None]


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"instruction": ["a"]}, "no column 'output'"),
        ({"output": ["a"], "emotion": ["sad"]}, "needs a 'history' or an 'instruction'"),
    ],
)
def test_missing_columns_are_one_line_errors(columns, message):
    with pytest.raises(JudgeInputError, match=message):
        rows_from_table(pa.table(columns), where="input x.parquet")


def test_doubled_ids_are_an_error_because_resume_goes_by_id():
    t = pa.table({"sample_id": ["a", "a"], "instruction": ["q", "q"], "output": ["x", "y"]})
    with pytest.raises(JudgeInputError, match=r"ids must be unique.*\['a'\]"):
        rows_from_table(t)


def test_jsonl_reads_both_export_formats_and_counts_the_rest():
    lines = [
        json.dumps({"instruction": "Speaker: hi\nListener:", "input": "", "output": ANSWER}),
        json.dumps(
            {"messages": [{"role": "system", "content": "be kind"}, *HISTORY, {"role": "assistant", "content": ANSWER}]}
        ),
        "{not json",
        json.dumps({"text": "neither format"}),
        json.dumps({"messages": HISTORY}),  # ends with the user: nothing to judge
        json.dumps({"instruction": "q", "input": "", "output": ""}),
        "",
    ]
    rows, dropped, bad = rows_from_jsonl(lines)
    assert rows.column("sample_id").to_pylist() == ["line-1", "line-2"]
    assert dropped == {"unreadable_line": 1, "unknown_record": 1, "no_answer_last": 1, "no_output": 1}
    assert bad == [3]
    chat = rows.to_pylist()[1]
    assert chat["history"] == HISTORY  # the system message is not part of the dialogue
    assert chat["output"] == ANSWER


def test_a_chat_export_gives_the_judge_the_same_prompt_as_the_run():
    """The judge sees the same dialogue whether it rates a run's row or its export."""
    run_row = {"instruction": "Speaker: x\nListener:", "output": ANSWER, "history": HISTORY}
    row, reason = record_row({"messages": [*HISTORY, {"role": "assistant", "content": ANSWER}]}, 1)
    assert reason is None
    assert judge_messages(row, "empathy") == judge_messages(run_row, "empathy")


def test_alpaca_input_field_joins_the_dialogue():
    row, _ = record_row({"instruction": "Speaker: a", "input": "Listener: b", "output": "c"}, 7)
    assert row["instruction"] == "Speaker: a\nListener: b" and row["sample_id"] == "line-7"


def test_sample_is_seeded_and_a_subset():
    rows, _ = rows_from_table(selected_like(50))
    a, b, c = sample_rows(rows, 10, 1), sample_rows(rows, 10, 1), sample_rows(rows, 10, 2)
    assert a.equals(b) and not a.equals(c)
    assert set(a.column("sample_id").to_pylist()) <= set(rows.column("sample_id").to_pylist())
    assert sample_rows(rows, 500, 0).num_rows == 50


def test_read_input_parquet_folder_and_jsonl(tmp_path):
    folder = tmp_path / "selected"
    folder.mkdir()
    pq.write_table(selected_like(2), folder / "part-0.parquet")
    pq.write_table(selected_like(3).slice(2), folder / "part-1.parquet")
    rows, info = read_input(str(folder))
    assert rows.num_rows == 3 and info["format"] == "parquet" and info["rows_read"] == 3
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"instruction": "q", "input": "", "output": "a"}) + "\n{bad\n")
    rows, info = read_input(str(path))
    assert rows.num_rows == 1 and info["dropped"] == {"unreadable_line": 1} and info["unreadable_lines"] == [2]


def test_read_input_errors_name_the_input(tmp_path):
    with pytest.raises(JudgeInputError, match="no such file"):
        read_input(str(tmp_path / "missing.parquet"))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(JudgeInputError, match=r"junk.parquet: cannot read as Parquet"):
        read_input(str(junk))


def test_output_schema_extends_the_input_with_the_judge_columns():
    assert schemas.JUDGE_OUTPUT.names == schemas.JUDGE_INPUT.names + [c for c, _ in schemas.JUDGED_COLUMNS]


def test_output_store_writes_into_the_named_folder(tmp_path):
    store = output_store(str(tmp_path / "judged-seeds"))
    assert store.url == str(tmp_path / "judged-seeds")
    store.check_writable()  # creates the folder, as run_judging does before writing
    store.write_json("probe.json", {"ok": 1})
    assert (tmp_path / "judged-seeds" / "probe.json").exists()
    assert output_store("s3://bucket/judged/seeds/").url == "s3://bucket/judged/seeds"
    for bad in ("s3://", "s3://bucket", "/"):
        with pytest.raises(JudgeInputError, match="name a folder"):
            output_store(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing.jsonl", "{tmp}/out"], "no such file"),
        (["{tmp}/in.jsonl", "{tmp}/out", "judge.engine.replica=2"], "unknown config key 'judge.engine.replica'"),
        (["{tmp}/in.jsonl", "{tmp}/out", "--sample", "0"], "--sample must be at least 1"),
        (["{tmp}/in.jsonl"], "the following arguments are required: output"),
        (["{tmp}/empty.jsonl", "{tmp}/out"], "no row to judge (dropped: {'no_output': 1})"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "in.jsonl").write_text(json.dumps({"instruction": "q", "input": "", "output": "a"}) + "\n")
    (tmp_path / "empty.jsonl").write_text(json.dumps({"instruction": "q", "input": "", "output": ""}) + "\n")
    cmd = [sys.executable, "-m", "synth_empathy", "judge", *[a.format(tmp=tmp_path) for a in args]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # nothing written before the input is checked
