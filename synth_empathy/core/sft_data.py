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
* **alpaca and chat records** (the ``selected.alpaca.jsonl`` / ``selected.chat.jsonl``
  exports), read by the reader ``synth-empathy judge`` uses too
  (:mod:`synth_empathy.core.export_records`), with its drop reasons. An alpaca record's
  instruction (``instruction`` and ``input`` joined by a newline): when it is a
  ``Speaker:`` / ``Listener:`` transcript ending in an open ``Listener:`` the history
  is read back from it, otherwise it is one user turn. A chat record's history (system
  messages are replaced by the discriminator's system prompt) must alternate
  user/assistant, starting and ending with the user (else ``bad_roles``); the
  instruction is rebuilt from it as transcript lines.

Tokenising (:func:`encode`): the prompt is rendered with the tokenizer's chat template
and ``add_generation_prompt=True`` and encoded as Ray Data LLM's tokenize stage encodes
prompts at run time (``tokenizer(prompt)``); the answer is what the template adds after
that prompt when the target is appended (the text, then the end-of-turn markup),
encoded without special tokens. Labels are ``-100`` over the prompt: only the answer is
learned. A pair longer than ``cutoff_len`` tokens is dropped with reason ``too_long``,
never truncated.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from synth_empathy.core import export_records
from synth_empathy.core.discriminator_input import training_messages
from synth_empathy.core.turn_sampling import LISTENER, SPEAKER

IGNORE_INDEX = -100

#: Why a record did not become a training pair: the reader's reasons, then training's own.
DROP_REASONS: dict[str, str] = {
    **export_records.DROP_REASONS,
    "bad_roles": "a history that does not alternate user/assistant, starting and ending with user",
    "too_long": "prompt + answer longer than train.cutoff_len tokens (dropped, not truncated)",
}

_ROLE_LINE = re.compile(rf"^({SPEAKER}|{LISTENER}):\s?(.*)$")


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
    return {"instruction": f"{context}\n{LISTENER}:", "history": history, "output": export_records.text(response)}


def export_row(row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """A row read from an export (:func:`synth_empathy.core.export_records.record_row`) as a
    discriminator row, or ``(None, "bad_roles")``."""
    if row["history"] is not None:  # a chat record
        history = row["history"]
        if not _history_ok(history) or history[-1]["role"] != "user":
            return None, "bad_roles"
        return {"instruction": transcript(history), "history": history, "output": row["output"]}, None
    instruction = row["instruction"]
    history = parse_transcript(instruction)
    if history is None or history[-1]["role"] != "user":
        history = [{"role": "user", "content": instruction}]
    return {"instruction": instruction, "history": history, "output": row["output"]}, None


def jsonl_rows(lines: Iterable[str]) -> tuple[list[dict[str, Any]], Counter]:
    """Rows from JSONL text lines (alpaca or chat records, mixed freely) and the drops."""
    rows, dropped, _ = export_records.read_records(lines, then=export_row)
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
