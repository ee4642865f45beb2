"""Method step 2 as a stage: parse each generation into rounds, then sample turns.

The pure pieces live in :mod:`synth_empathy.core.rounds` (rounds out of free text) and
:mod:`synth_empathy.core.turn_sampling` (history + aligned target); this module joins them per
row and wraps them for Ray Data. Every generation gives exactly one row here: either a
sample, or a row with a ``drop_reason`` (``generation_error``, ``empty_output``,
``no_rounds``, ``no_complete_round``, ``too_few_rounds``, ...), so drops are counted
from the table itself and nothing disappears silently.

in:  generations ``seed_id, sample_id, emotion, raw_text, num_generated_tokens, error``
out: samples ``seed_id, sample_id, emotion, rounds, n_rounds, instruction, output,
     n_history, history, drop_reason, incomplete_rounds, overlong_responses``
"""

from __future__ import annotations

from typing import Any

from synth_empathy import schemas
from synth_empathy.core.rounds import parse_rounds
from synth_empathy.core.turn_sampling import rng_for, sample_turns_result
from synth_empathy.stages.contract import StageContract

CONTRACT = StageContract(
    name="samples",
    input="generations",
    requires=("seed_id", "sample_id", "emotion", "raw_text", "error"),
    produces=schemas.SAMPLES,
)


def sample_row(
    row: dict[str, Any], *, seed: int, min_history: int, max_history: int, max_tokens: int
) -> dict[str, Any]:
    """One generation -> one sample row (or one dropped row with its reason)."""
    out: dict[str, Any] = {
        "seed_id": row["seed_id"],
        "sample_id": row["sample_id"],
        "emotion": row.get("emotion") or "",
        "rounds": [],
        "n_rounds": 0,
        "instruction": "",
        "output": "",
        "n_history": 0,
        "history": [],
        "drop_reason": None,
        "incomplete_rounds": 0,
        "overlong_responses": 0,
    }
    if row.get("error"):
        out["drop_reason"] = "generation_error"
        return out
    # An answer that used every allowed token was cut off: its last response may
    # stop mid-sentence, so the parser drops a response still open at the end.
    truncated = int(row.get("num_generated_tokens") or 0) >= max_tokens
    parsed = parse_rounds(row.get("raw_text") or "", truncated=truncated)
    out.update(
        rounds=[r.as_dict() for r in parsed.rounds],
        n_rounds=len(parsed.rounds),
        incomplete_rounds=parsed.incomplete_rounds,
        overlong_responses=parsed.overlong_responses,
    )
    if not parsed.ok:
        out["drop_reason"] = parsed.reason
        return out
    result = sample_turns_result(
        parsed.rounds, rng_for(str(row["sample_id"]), seed), min_history=min_history, max_history=max_history
    )
    if not result.ok:
        out["drop_reason"] = result.reason
        return out
    s = result.sample
    out.update(instruction=s.instruction, output=s.output, n_history=s.n_history, history=s.history)
    return out


def sample_batch(batch: dict[str, Any], **kwargs: Any) -> dict[str, list[Any]]:
    n = len(batch["sample_id"])
    rows = [sample_row({k: v[i] for k, v in batch.items()}, **kwargs) for i in range(n)]
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def turns_stage(ds, *, seed: int, turns_cfg: Any, max_tokens: int):
    """Apply step 2 to a Ray Dataset of generations."""
    return ds.map_batches(
        sample_batch,
        fn_kwargs=dict(
            seed=seed, min_history=turns_cfg.min_history, max_history=turns_cfg.max_history, max_tokens=max_tokens
        ),
        batch_format="numpy",
    )
