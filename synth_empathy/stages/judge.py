"""Method step 6 - judging the data: an LLM rates every selected row 1-3.

Three criteria, as in the paper; the rubrics below are written for this project:

* **naturalness** - the response reads like something a real person would say;
* **coherence** - it follows from the dialogue history and stays on its topic;
* **empathy** - it recognises the speaker's feelings and answers them with care.

The judge reads the sample's history (``history`` turns, or the ``instruction`` text
when a row has no turns) and the target ``output``, and is asked for three lines
``Naturalness: N`` / ``Coherence: N`` / ``Empathy: N``. (A placeholder such as
``Naturalness: <1, 2 or 3>`` in the prompt was copied verbatim by SmolLM2-135M, so the
prompt describes the lines in words instead.) As in
:mod:`synth_empathy.stages.generation`, the answer is started for the model with
:data:`ANSWER_PREFIX` (``Naturalness:``), an assistant message that the chat template
continues: a small model then writes a digit far more often than a paragraph.

:func:`~synth_empathy.core.judge_scores.parse_scores` reads the answer and never raises. A row gets all three scores
or none; when it gets none, ``judge_reason`` says why:

* ``judge_error`` - the engine failed on the request (``judge_error`` holds the message);
* ``judge_empty`` - the model wrote nothing;
* ``judge_out_of_range`` - a criterion was rated, but not with a whole number 1-3
  (``0``, ``4``, ``2.5``, ``4/5`` ...);
* ``judge_unparsable`` - one or more criteria have no rating at all.

in:  selected rows  ``sample_id, instruction, output, history, ...``
out: ``+ naturalness, coherence, empathy`` (int64, null when not parsed),
     ``judge_model, judge_num_tokens, judge_error, judge_reason``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from synth_empathy import schemas
from synth_empathy.core.judge_scores import ANSWER_PATTERN, ANSWER_PREFIX, CRITERIA, parse_scores  # noqa: F401
from synth_empathy.stages.contract import StageContract
from synth_empathy.stages.llm import LLMStage

CONTRACT = StageContract(
    name="judged",
    input="selected",
    requires=("sample_id", "output"),  # and a history or an instruction: judge_messages falls back
    produces=schemas.JUDGED,
    tokens="judge_num_tokens",
)

# Each criterion's rubric, one line per score (our words, after the paper's criteria).
RUBRICS: dict[str, str] = {
    "naturalness": (
        "Naturalness - does the response read like something a real person would say? "
        "1 = stiff, robotic, garbled or repetitive; 2 = understandable but with awkward "
        "or unnatural wording; 3 = fluent and sounds like a real person talking."
    ),
    "coherence": (
        "Coherence - does the response follow from the dialogue so far and stay on its "
        "topic? 1 = ignores, contradicts or drifts away from what the speaker said; "
        "2 = related but partly off topic or vague; 3 = answers what the speaker just "
        "said and fits the whole dialogue."
    ),
    "empathy": (
        "Empathy - does the response recognise the speaker's feelings and answer them "
        "with care? 1 = ignores or dismisses the feelings; 2 = mentions the feelings "
        "only in passing; 3 = clearly recognises the feelings and responds warmly and "
        "supportively."
    ),
}

SYSTEM_PROMPT = "You are a careful rater of empathetic conversations. You answer only with the ratings asked for."

USER_TEMPLATE = """Rate the listener's last response in the conversation below on three criteria. Give each criterion a whole number from 1 (poor) to 3 (good).

{rubrics}

Conversation:
{dialogue}

Listener's response to rate:
{response}

Answer with three lines and nothing else: each criterion's name, a colon and its rating as one digit (1, 2 or 3)."""


# --------------------------------------------------------------------------- prompt


def _role_name(role: str) -> str:
    return "Listener" if str(role).lower() in ("assistant", "listener") else "Speaker"


def dialogue_text(row: dict[str, Any]) -> str:
    """The history the judged response answers, as ``Speaker:`` / ``Listener:`` lines."""
    turns = row.get("history")
    if turns is not None and len(turns) > 0:
        return "\n".join(f"{_role_name(t['role'])}: {str(t['content']).strip()}" for t in turns)
    return str(row.get("instruction") or "").strip()


def judge_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages asking for the three ratings, the answer started with ANSWER_PREFIX."""
    user = USER_TEMPLATE.format(
        rubrics="\n".join(RUBRICS[c] for c in CRITERIA),
        dialogue=dialogue_text(row),
        response=str(row.get("output") or "").strip(),
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
        {"role": "assistant", "content": ANSWER_PREFIX},
    ]


class Judge(LLMStage):
    """The judge as a ``ray.data.llm`` processor over selected rows."""

    name = "judge"
    model_column = "judge_model"
    tokens_column = "judge_num_tokens"
    error_column = "judge_error"

    def __init__(
        self, engine, sampling, passthrough: Sequence[str] = ("seed_id", "sample_id"), constrained: bool = True
    ) -> None:
        super().__init__(engine, sampling)
        self.passthrough = tuple(passthrough)
        self.constrained = constrained

    def sampling_params(self) -> dict[str, Any]:
        params = super().sampling_params()
        if self.constrained:
            # The answer continues ANSWER_PREFIX, so the pattern starts after "Naturalness:".
            params["structured_outputs"] = {"regex": ANSWER_PATTERN}
        return params

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return judge_messages(row)

    def output_columns(self, row: dict[str, Any], text: str) -> dict[str, Any]:
        if row.get("__inference_error__"):
            scores, reason = None, "judge_error"
        else:
            # The prefix was written for the model, so it belongs to the answer.
            scores, reason = parse_scores(ANSWER_PREFIX + text)
        out: dict[str, Any] = {c: (scores[c] if scores else None) for c in CRITERIA}
        out["judge_reason"] = reason
        return out


# --------------------------------------------------------------------------- report


def judge_summary(table: pa.Table) -> dict[str, Any]:
    """What the report shows about the judged rows.

    ``{"rows", "parsed", "unparsable", "reasons": {reason: count},
    "criteria": {criterion: {"mean": float|None, "distribution": {"1": n, "2": n, "3": n}}},
    "mean_of_means": float|None}``; unparsable rows count under ``reasons`` only.
    """
    n = table.num_rows
    columns = {c: table.column(c).to_pylist() for c in CRITERIA}
    parsed_rows = [i for i in range(n) if all(columns[c][i] is not None for c in CRITERIA)]
    reasons = Counter(
        r
        for r in (table.column("judge_reason").to_pylist() if "judge_reason" in table.column_names else [])
        if r is not None
    )
    criteria: dict[str, Any] = {}
    for c in CRITERIA:
        values = [columns[c][i] for i in parsed_rows]
        counts = Counter(values)
        criteria[c] = {
            "mean": round(sum(values) / len(values), 4) if values else None,
            "distribution": {str(k): int(counts.get(k, 0)) for k in (1, 2, 3)},
        }
    means = [v["mean"] for v in criteria.values() if v["mean"] is not None]
    return {
        "rows": n,
        "parsed": len(parsed_rows),
        "unparsable": n - len(parsed_rows),
        "reasons": dict(sorted(reasons.items())),
        "criteria": criteria,
        "mean_of_means": round(sum(means) / len(means), 4) if means else None,
    }


def judge_stage(ds, cfg: Any, carry: Sequence[str], model_path: str | None = None, served=None):
    """Step 6 on a Ray Dataset of selected rows."""
    return Judge(cfg.engine, cfg.sampling, carry, cfg.constrained)(ds, model_path=model_path, served=served)
