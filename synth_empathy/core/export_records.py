"""Reading exported records back: the one reader of alpaca and chat JSONL. Pure; no Ray.

The pipeline exports its selection as alpaca records (``instruction``, ``input``,
``output``) and chat records (``{"messages": [...]}``), see
:mod:`synth_empathy.stages.export`; LLaMA-Factory datasets use the same two layouts.
``synth-empathy judge`` rates such a file and ``synth-empathy train`` learns from it;
both read it here, so a record is understood, or dropped for a reason from
:data:`DROP_REASONS`, the same way by both.

A record becomes a row ``{"sample_id", "instruction", "history", "output"}`` (the
columns of a run's selected rows that both commands read):

* **alpaca**: ``instruction`` is the record's ``instruction`` and ``input`` joined by a
  newline (as LLaMA-Factory joins them), ``history`` is None (the dialogue is that text);
* **chat**: the last message is the answer and must be the assistant's; ``history`` is
  the messages before it (``role``, ``content``), system messages left out, and
  ``instruction`` is empty.

``output`` and every turn's content are stripped of surrounding white space; an empty
answer is dropped. ``sample_id`` is the record's own, else ``line-<n>`` (1-based).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: Why a record did not become a row.
DROP_REASONS: dict[str, str] = {
    "unreadable_line": "a JSONL line that is not JSON",
    "unknown_record": "a record that is neither alpaca (instruction/output) nor chat (messages)",
    "no_output": "an empty or missing answer (alpaca output, the last chat message, an output column)",
    "no_answer_last": "a chat record whose last message is not the assistant's",
}


def text(v: Any) -> str:
    """A value as stripped text ('' for None)."""
    return "" if v is None else str(v).strip()


def record_row(record: Any, line: int) -> tuple[dict[str, Any] | None, str | None]:
    """One alpaca or chat record (line ``line`` of its file) as a row, or ``(None, reason)``."""
    if not isinstance(record, Mapping):
        return None, "unknown_record"
    sample_id = str(record.get("sample_id") or f"line-{line}")
    if isinstance(record.get("messages"), list):
        messages = [m for m in record["messages"] if isinstance(m, Mapping)]
        if not messages or messages[-1].get("role") != "assistant":
            return None, "no_answer_last"
        output = text(messages[-1].get("content"))
        if not output:
            return None, "no_output"
        history = [
            {"role": str(m.get("role", "")), "content": text(m.get("content"))}
            for m in messages[:-1]
            if m.get("role") != "system"
        ]
        return {"sample_id": sample_id, "instruction": "", "history": history, "output": output}, None
    if "instruction" in record and "output" in record:
        output = text(record.get("output"))
        if not output:
            return None, "no_output"
        instruction = "\n".join(p for p in (text(record.get("instruction")), text(record.get("input"))) if p)
        return {"sample_id": sample_id, "instruction": instruction, "history": None, "output": output}, None
    return None, "unknown_record"


def read_records(
    lines: Iterable[str], then: Callable[[dict[str, Any]], tuple[Any, str | None]] | None = None
) -> tuple[list[Any], Counter, list[int]]:
    """Rows from JSONL text lines (alpaca and chat records, mixed freely): ``(rows, dropped
    by reason, numbers of the lines that are not JSON)``. Blank lines are skipped.

    ``then`` takes each row further (a command's own step, e.g. training's role check):
    it returns the row to keep, or ``(None, reason)``, counted with the reader's drops."""
    rows, dropped, unreadable = [], Counter(), []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            dropped["unreadable_line"] += 1
            unreadable.append(number)
            continue
        row, reason = record_row(record, number)
        if row is not None and then is not None:
            row, reason = then(row)
        if row is None:
            dropped[reason] += 1
        else:
            rows.append(row)
    return rows, dropped, unreadable
