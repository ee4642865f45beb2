"""Method step 6 - judging the data: an LLM rates every selected row on three criteria.

Three criteria, as in the paper; the rubrics below are written for this project:

* **naturalness** - the response reads like something a real person would say;
* **coherence** - it follows from the dialogue history and stays on its topic;
* **empathy** - it recognises the speaker's feelings and answers them with care.

Each row is judged with **one request per criterion** (the rows are expanded to
(row, criterion) before the engine and folded back after it). The judge reads the
sample's history (``history`` turns, or the ``instruction`` text when a row has no turns),
the target ``output`` and one rubric, and answers with a single token after
:data:`~synth_empathy.core.judge_scores.ANSWER_PREFIX` (``Rating: ``, an assistant message
that the chat template continues). The engine returns that token's top alternatives with
their log-probabilities; the rating is the expected value over the tokens ``1``, ``2``,
``3`` (:func:`~synth_empathy.core.judge_scores.expected_rating`), a float in [1, 3]. Asked
for three lines at once, SmolLM2-135M wrote ``1, 2, 3`` for every row (the order of the
scale); one digit per request, read as probabilities, leaves no order to copy.

Whether the ratings mean anything is measured, not assumed:
:mod:`synth_empathy.stages.judge_validation` judges human replies against degraded ones.

A criterion without a rating is null, and ``judge_reason`` says why (the first reason in
criterion order; ``judge_error`` wins):

* ``judge_error`` - the engine failed on a request (``judge_error`` holds the message);
* ``judge_no_rating_token`` - none of ``1``, ``2``, ``3`` was among the token's alternatives;
* ``judge_no_logprobs`` - the engine returned no alternatives.

in:  selected rows  ``sample_id, instruction, output, history, ...``
out: ``+ naturalness, coherence, empathy`` (float64 in [1, 3], null when not rated),
     ``judge_model, judge_num_tokens, judge_error, judge_reason``
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from synth_empathy import schemas
from synth_empathy.core.judge_scores import (
    ANSWER_PREFIX,
    CRITERIA,
    ENGINE_ERROR,
    TOP_LOGPROBS,
    expected_rating,
    first_token_alternatives,
)
from synth_empathy.stages.contract import StageContract
from synth_empathy.stages.llm import ALTERNATIVES, LLMStage

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

SYSTEM_PROMPT = "You are a careful rater of empathetic conversations. You answer with one digit."

USER_TEMPLATE = """Rate the listener's last response in the conversation below on one criterion, with a whole number from 1 (poor) to 3 (good).

{rubric}

Conversation:
{dialogue}

Listener's response to rate:
{response}

Answer with one digit: 1, 2 or 3."""


# --------------------------------------------------------------------------- prompt


def _role_name(role: str) -> str:
    return "Listener" if str(role).lower() in ("assistant", "listener") else "Speaker"


def dialogue_text(row: dict[str, Any]) -> str:
    """The history the judged response answers, as ``Speaker:`` / ``Listener:`` lines."""
    turns = row.get("history")
    if turns is not None and len(turns) > 0:
        return "\n".join(f"{_role_name(t['role'])}: {str(t['content']).strip()}" for t in turns)
    return str(row.get("instruction") or "").strip()


def judge_messages(row: dict[str, Any], criterion: str) -> list[dict[str, str]]:
    """Chat messages asking for one criterion's rating, the answer started with ANSWER_PREFIX."""
    user = USER_TEMPLATE.format(
        rubric=RUBRICS[criterion], dialogue=dialogue_text(row), response=str(row.get("output") or "").strip()
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
        {"role": "assistant", "content": ANSWER_PREFIX},
    ]


# The columns a (row, criterion) request carries through the engine.
_REQUEST_CARRY = ("sample_id", "criterion")


def expand_criteria(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One request row per criterion: the id, the criterion and what the prompt reads."""
    base = {k: row.get(k) for k in ("sample_id", "instruction", "output", "history")}
    return [{**base, "criterion": c} for c in CRITERIA]


class Judge(LLMStage):
    """The judge as a ``ray.data.llm`` processor over (row, criterion) request rows."""

    name = "judge"
    model_column = "judge_model"
    tokens_column = "judge_num_tokens"
    error_column = "judge_error"
    passthrough = _REQUEST_CARRY

    def sampling_params(self) -> dict[str, Any]:
        params = super().sampling_params()
        # One token is the answer; its alternatives give the rating (not the sampled digit).
        params["max_tokens"] = 1
        params["logprobs"] = TOP_LOGPROBS
        return params

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return judge_messages(row, row["criterion"])

    def output_columns(self, row: dict[str, Any], text: str) -> dict[str, Any]:
        if row.get("__inference_error__"):
            return {"rating": None, "judge_reason": ENGINE_ERROR}
        # The served path hands the alternatives over already read; vLLM's processor its logprobs.
        alts = row[ALTERNATIVES] if ALTERNATIVES in row else first_token_alternatives(row.get("logprobs"))
        rating, reason = expected_rating(alts)
        return {"rating": rating, "judge_reason": reason}


def fold_ratings(requests: pa.Table) -> dict[str, dict[str, Any]]:
    """Per ``sample_id``, the judge's columns from its criterion requests (one row each)."""
    out: dict[str, dict[str, Any]] = {}
    for r in requests.to_pylist():
        row = out.setdefault(
            r["sample_id"],
            {**dict.fromkeys(CRITERIA), "judge_model": r.get("judge_model"), "judge_num_tokens": 0}
            | {"judge_error": None, "_reasons": {}},
        )
        row[r["criterion"]] = r.get("rating")
        row["judge_num_tokens"] += int(r.get("judge_num_tokens") or 0)
        if r.get("judge_error") and row["judge_error"] is None:
            row["judge_error"] = r["judge_error"]
        if r.get("judge_reason"):
            row["_reasons"][r["criterion"]] = r["judge_reason"]
    for row in out.values():
        reasons = row.pop("_reasons")
        ordered = [reasons[c] for c in CRITERIA if c in reasons]
        row["judge_reason"] = ENGINE_ERROR if ENGINE_ERROR in ordered else (ordered[0] if ordered else None)
    return out


_JUDGE_NAMES = [name for name, _ in schemas.JUDGED_COLUMNS]


def join_ratings(batch: pa.Table, folded: list, carry: Sequence[str]) -> pa.Table:
    """The batch's carried columns plus the judge's, looked up by ``sample_id``
    (``folded`` = [ObjectRef of :func:`fold_ratings`'s dict]). A row with no request
    back (none should be) gets nulls and the reason ``judge_error``."""
    import ray

    ratings = ray.get(folded[0])
    ids = batch.column("sample_id").to_pylist()
    missing = {**dict.fromkeys(_JUDGE_NAMES), "judge_num_tokens": 0, "judge_reason": ENGINE_ERROR}
    rows = [ratings.get(i, missing) for i in ids]
    columns = {c: batch.column(c) for c in carry if c in batch.column_names}
    fields = dict(schemas.JUDGED_COLUMNS)
    for name in _JUDGE_NAMES:
        columns[name] = pa.array([r.get(name) for r in rows], type=fields[name])
    return pa.table(columns)


# --------------------------------------------------------------------------- report


def judge_summary(table: pa.Table) -> dict[str, Any]:
    """What the report shows about the judged rows.

    ``{"rows", "parsed", "unparsable", "reasons": {reason: count},
    "criteria": {criterion: {"mean", "sd", "min", "max", "varies",
    "distribution": {"1": n, "2": n, "3": n}}}, "mean_of_means"}`` over the rows rated on
    all three criteria (``parsed``); ``distribution`` counts ratings rounded to the nearest
    whole number; ``varies`` is false when every rating is the same. Rows without all
    three ratings count under ``reasons`` only.
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
        values = [float(columns[c][i]) for i in parsed_rows]
        counts = Counter(min(3, max(1, int(v + 0.5))) for v in values)
        criteria[c] = {
            "mean": round(statistics.fmean(values), 4) if values else None,
            "sd": round(statistics.pstdev(values), 4) if values else None,
            "min": round(min(values), 4) if values else None,
            "max": round(max(values), 4) if values else None,
            "varies": len(set(values)) > 1,
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


def row_progress(progress: Any) -> Any:
    """A shared engine's progress reader (``SharedEngines.progress``) counting judged rows,
    not requests: each row is one request per criterion."""
    if progress is None:
        return None

    def read():
        snap = progress()
        if not isinstance(snap, dict):
            return snap
        n = len(CRITERIA)
        return {**snap, "answered": snap["answered"] // n, "failed": -(-snap["failed"] // n)}

    return read


def judge_stage(ds, cfg: Any, carry: Sequence[str], model_path: str | None = None, served=None, name: str = "judge"):
    """Step 6 on a Ray Dataset of rows to judge: the rows' ``carry`` columns plus the judge's.

    The (row, criterion) requests go through the engine and their ratings are collected
    before the rows are written: a row's three answers come back from the engine in any
    order, and folding them in the driver (a few scalars per row) avoids a shuffle. The
    cost: the stage's output parts are written after its last request, so a crash during
    the judging loses that stage's requests (nothing finished, nothing doubled). ``name``
    tags the requests on a shared engine (its progress counts are per name).
    """
    import ray

    requests = ds.flat_map(expand_criteria, num_cpus=cfg.engine.helper_cpus)
    stage = Judge(cfg.engine, cfg.sampling)
    stage.name = name
    rated = stage(requests, model_path=model_path, served=served)
    keep = ["sample_id", "criterion", "rating", "judge_reason", "judge_model", "judge_num_tokens", "judge_error"]
    blocks = [t for t in ray.get(rated.select_columns(keep).to_arrow_refs()) if t.num_rows]
    table = pa.concat_tables(blocks, promote_options="permissive") if blocks else pa.table({k: [] for k in keep})
    folded = ray.put(fold_ratings(table))
    return ds.map_batches(
        join_ratings,
        fn_args=([folded],),
        fn_kwargs={"carry": tuple(carry)},
        batch_format="pyarrow",
        num_cpus=cfg.engine.helper_cpus,
    )
