"""Training pairs for supervised fine-tuning of the discriminator (method step 0). Pure; no Ray.

Every source becomes *rows* of the shape the pipeline's turn sampling writes
(``instruction``, ``history``, ``output``; see :mod:`synth_empathy.core.discriminator_input`),
and every row becomes chat messages through
:func:`~synth_empathy.core.discriminator_input.training_messages`, the same builder the
discriminator stage uses at run time. Sources:

* **seed pairs** (``seed_id, context, response``, read from ED or any seed file by
  :func:`synth_empathy.stages.seed_sources.read_seeds`): ``context`` lines become the
  history (``Speaker`` = user, ``Listener`` = assistant) and the instruction
  (``context`` + ``"\\nListener:"``), ``response`` the target - exactly the layout a
  generated sample has;
* **alpaca records** (``instruction``, ``input``, ``output``; the ``selected.alpaca.jsonl``
  export): the instruction is ``instruction`` and ``input`` joined by a newline (as
  LLaMA-Factory joins them); when it is a ``Speaker:`` / ``Listener:`` transcript ending
  in an open ``Listener:`` the history is read back from it, otherwise it is one user turn;
* **chat records** (``{"messages": [...]}``; the ``selected.chat.jsonl`` export): the
  last message is the target and must be the assistant's; system messages are replaced
  by the discriminator's system prompt; the instruction is rebuilt as transcript lines.

Tokenising (:func:`encode`): the prompt is rendered with the tokenizer's chat template
and ``add_generation_prompt=True`` and encoded as Ray Data LLM's tokenize stage encodes
prompts at run time (``tokenizer(prompt)``); the answer is what the template adds after
that prompt when the target is appended (the text, then the end-of-turn markup),
encoded without special tokens. Labels are ``-100`` over the prompt: only the answer is
learned. A pair longer than ``cutoff_len`` tokens is dropped with reason ``too_long``,
never truncated.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from synth_empathy.core.discriminator_input import training_messages
from synth_empathy.core.turn_sampling import LISTENER, SPEAKER

IGNORE_INDEX = -100

#: Why a record did not become a training pair.
DROP_REASONS: dict[str, str] = {
    "unreadable_line": "a JSONL line that is not JSON",
    "unknown_record": "a record that is neither alpaca (instruction/output) nor chat (messages)",
    "no_output": "an empty target",
    "no_answer_last": "a chat record whose last message is not the assistant's",
    "bad_roles": "a history that does not alternate user/assistant, starting and ending with user",
    "too_long": "prompt + answer longer than train.cutoff_len tokens (dropped, not truncated)",
}

_ROLE_LINE = re.compile(rf"^({SPEAKER}|{LISTENER}):\s?(.*)$")


def _text(v: Any) -> str:
    return "" if v is None else str(v).strip()


def _history_ok(history: list[dict[str, str]]) -> bool:
    roles = [t["role"] for t in history]
    return bool(roles) and roles == ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]


def transcript(history: list[dict[str, str]]) -> str:
    """History turns as the instruction text: ``Speaker:`` / ``Listener:`` lines, then an
    open ``Listener:`` (the layout of :mod:`synth_empathy.core.turn_sampling`)."""
    lines = [f"{SPEAKER if t['role'] == 'user' else LISTENER}: {' '.join(t['content'].split())}" for t in history]
    return "\n".join(lines + [f"{LISTENER}:"])


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """``Speaker:`` / ``Listener:`` lines (optionally ending in an open ``Listener:``) as
    user/assistant turns; None when the text is not such a transcript."""
    lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
    if lines and lines[-1] == f"{LISTENER}:":
        lines = lines[:-1]
    turns = []
    for line in lines:
        m = _ROLE_LINE.match(line)
        if not m or not m.group(2).strip():
            return None
        turns.append({"role": "user" if m.group(1) == SPEAKER else "assistant", "content": m.group(2).strip()})
    return turns if _history_ok(turns) else None


def seed_row(context: str, response: str) -> dict[str, Any]:
    """A seed pair as a discriminator row (what a generated sample with that history is)."""
    history = parse_transcript(context)
    if history is None:  # seed readers always write Speaker/Listener lines; be safe anyway
        history = [{"role": "user", "content": " ".join(context.split())}]
    return {"instruction": f"{context}\n{LISTENER}:", "history": history, "output": _text(response)}


def record_row(record: Any) -> tuple[dict[str, Any] | None, str | None]:
    """An alpaca or chat record as a row, or ``(None, reason)``."""
    if not isinstance(record, Mapping):
        return None, "unknown_record"
    if isinstance(record.get("messages"), list):
        messages = [m for m in record["messages"] if isinstance(m, Mapping)]
        if not messages or messages[-1].get("role") != "assistant":
            return None, "no_answer_last"
        output = _text(messages[-1].get("content"))
        if not output:
            return None, "no_output"
        history = [
            {"role": str(m.get("role")), "content": _text(m.get("content"))}
            for m in messages[:-1]
            if m.get("role") != "system"
        ]
        if not _history_ok(history) or history[-1]["role"] != "user":
            return None, "bad_roles"
        return {"instruction": transcript(history), "history": history, "output": output}, None
    if "instruction" in record and "output" in record:
        output = _text(record.get("output"))
        if not output:
            return None, "no_output"
        instruction = "\n".join(p for p in (_text(record.get("instruction")), _text(record.get("input"))) if p)
        history = parse_transcript(instruction)
        if history is None or history[-1]["role"] != "user":
            history = [{"role": "user", "content": instruction}]
        return {"instruction": instruction, "history": history, "output": output}, None
    return None, "unknown_record"


def jsonl_rows(lines: Iterable[str]) -> tuple[list[dict[str, Any]], Counter]:
    """Rows from JSONL text lines (alpaca or chat records, mixed freely) and the drops."""
    rows, dropped = [], Counter()
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            dropped["unreadable_line"] += 1
            continue
        row, reason = record_row(record)
        if row is None:
            dropped[reason] += 1
        else:
            rows.append(row)
    return rows, dropped


# --------------------------------------------------------------------------- tokenising


def render(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    """``(prompt text, answer text)``: the prompt as the run-time chat template renders it
    (generation prompt added) and what the template appends when the answer follows."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template renders prompt+answer differently from the prompt alone; "
            "the prompt cannot be masked out of the loss"
        )
    return prompt, full[len(prompt) :]


def encode(tokenizer: Any, messages: list[dict[str, str]], cutoff_len: int) -> tuple[dict[str, list[int]] | None, int]:
    """``(example or None if longer than cutoff_len, length in tokens)``.

    ``example`` has ``input_ids`` and ``labels`` (``-100`` over the prompt)."""
    prompt, answer = render(tokenizer, messages)
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids) + len(answer_ids)
    if n > cutoff_len:
        return None, n
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}, n


def template_length(tokenizer: Any, system_prompt: str, input_format: str) -> int:
    """Tokens of the template alone: system prompt, one empty user turn, one empty answer."""
    row = {"instruction": "", "history": [{"role": "user", "content": ""}], "output": ""}
    _, n = encode(tokenizer, training_messages(row, system_prompt, input_format), 10**9)
    return n


def encode_rows(
    tokenizer: Any, rows: Iterable[Mapping[str, Any]], system_prompt: str, input_format: str, cutoff_len: int
) -> tuple[list[dict[str, list[int]]], Counter, list[int]]:
    """``(examples, dropped, lengths of the dropped-as-too-long pairs)``."""
    examples, dropped, long = [], Counter(), []
    for row in rows:
        example, n = encode(tokenizer, training_messages(dict(row), system_prompt, input_format), cutoff_len)
        if example is None:
            dropped["too_long"] += 1
            long.append(n)
        else:
            examples.append(example)
    return examples, dropped, long


def collate(examples: list[Mapping[str, list[int]]], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-padded ``input_ids``, ``labels`` (-100 on padding) and ``attention_mask``."""
    width = max(len(e["input_ids"]) for e in examples)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for e in examples:
        pad = width - len(e["input_ids"])
        out["input_ids"].append(list(e["input_ids"]) + [pad_id] * pad)
        out["labels"].append(list(e["labels"]) + [IGNORE_INDEX] * pad)
        out["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
    return out
