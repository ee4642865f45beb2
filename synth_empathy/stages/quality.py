"""Method step 3b - the quality score and the threshold.

An embedding model embeds the generated target (``output``) and the discriminator's
answer (``disc_response``); the quality score is 100 x their cosine similarity. Rows
scoring below the threshold T are dropped (kept in the table, marked with a reason).
A row that would be kept but whose target or discriminator answer repeats a line of its
history (:mod:`synth_empathy.core.repetition`) is dropped too, with the reason
``target_repeats_history`` or ``answer_repeats_history``: that agreement is copying,
not empathy. The same pass embeds ``instruction + output`` of the rows it keeps: the vectors that
diversity selection (step 4) works on, so no row is embedded twice.

in:  discriminated samples ``sample_id, instruction, output, disc_response, disc_error, ...``
out: ``+ quality_score`` (0-100, null when there was nothing to compare), ``kept``,
     ``drop_reason``, ``embedding`` (list<float32>, kept rows only); drop reasons
     ``discriminator_error``, ``empty_discriminator_answer``, ``below_quality_threshold``,
     ``target_repeats_history``, ``answer_repeats_history``
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from synth_empathy import schemas
from synth_empathy.core.repetition import max_similarity, repetition_reason
from synth_empathy.core.standin import is_standin
from synth_empathy.models.embedder import encode
from synth_empathy.stages.contract import StageContract

CONTRACT = StageContract(
    name="scored",
    input="discriminated",
    requires=("sample_id", "instruction", "output", "history", "disc_response", "disc_error"),
    produces=schemas.SCORED,
)


def quality_scores(targets: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """100 x cosine similarity of matching rows of two arrays of unit vectors."""
    cos = np.einsum("ij,ij->i", targets, answers)
    # Unit vectors can give 1.0000001; the score's documented range is 0-100 only for
    # non-negative cosines, so clip the top and leave genuine negatives visible.
    return np.minimum(cos, 1.0) * 100.0


def drop_reason(disc_error: str | None, disc_response: str) -> str | None:
    """Why a row cannot be scored at all, or None."""
    if disc_error:
        return "discriminator_error"
    if not disc_response.strip():
        return "empty_discriminator_answer"
    return None


def diversity_text(instruction: str, output: str) -> str:
    """What step 4 embeds for a row: its instruction and its target together."""
    return f"{instruction} {output}"


def score_batch(
    batch: pa.Table,
    embedder: str,
    threshold: float,
    batch_size: int = 64,
    drop_repeats: bool = True,
    repeat_similarity: float | None = 0.95,
    dtype: str = "float32",
) -> pa.Table:
    """The whole step for one batch: the batch with the four new columns appended."""
    n = batch.num_rows
    outputs = [str(x or "") for x in batch.column("output").to_pylist()]
    answers = [str(x or "") for x in batch.column("disc_response").to_pylist()]
    errors = batch.column("disc_error").to_pylist()
    reasons: list[str | None] = [drop_reason(errors[i], answers[i]) for i in range(n)]
    scorable = [i for i in range(n) if reasons[i] is None]

    scores: list[float | None] = [None] * n
    vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if scorable:
        both = encode(
            [outputs[i] for i in scorable] + [answers[i] for i in scorable], embedder, batch_size, dtype=dtype
        )
        m = len(scorable)
        for j, (i, s) in enumerate(zip(scorable, quality_scores(both[:m], both[m:]))):
            scores[i] = float(s)
            vectors[i] = (both[j], both[m + j])
    kept = [scores[i] is not None and scores[i] >= threshold for i in range(n)]
    for i in scorable:
        if not kept[i]:
            reasons[i] = "below_quality_threshold"
    if drop_repeats:
        for i, reason in _repeats(
            batch,
            [i for i in range(n) if kept[i]],
            outputs,
            answers,
            vectors,
            embedder,
            batch_size,
            repeat_similarity,
            dtype,
        ).items():
            kept[i], reasons[i] = False, reason

    embeddings: list[list[float] | None] = [None] * n
    keep_idx = [i for i in range(n) if kept[i]]
    if keep_idx:
        instructions = batch.column("instruction").to_pylist()
        vecs = encode(
            [diversity_text(instructions[i], outputs[i]) for i in keep_idx], embedder, batch_size, dtype=dtype
        )
        for i, v in zip(keep_idx, vecs):
            embeddings[i] = v.tolist()

    for name, values in (
        ("quality_score", scores),
        ("kept", kept),
        ("drop_reason", reasons),
        ("embedding", embeddings),
    ):
        batch = batch.append_column(name, pa.array(values, type=schemas.SCORED.field(name).type))
    return batch


def _history_lines(value) -> list[str]:
    return [str(turn["content"]) for turn in (value or []) if turn and turn.get("content")]


def _repeats(batch, rows, outputs, answers, vectors, embedder, batch_size, similarity, dtype) -> dict[int, str]:
    """{row: reason} for the candidate ``rows`` whose target or answer repeats their history.

    Only rows that would be kept are checked (the others are dropped anyway), so the
    history lines embedded here are those of a few rows, not of the whole batch.
    """
    if not rows:
        return {}
    histories = batch.column("history").to_pylist()
    lines = {i: _history_lines(histories[i]) for i in rows}
    line_vecs: dict[int, np.ndarray] = {}
    if similarity is not None:
        flat = [line for i in rows for line in lines[i]]
        vecs = encode(flat, embedder, batch_size, dtype=dtype) if flat else np.zeros((0, 0), dtype=np.float32)
        at = 0
        for i in rows:
            line_vecs[i] = vecs[at : at + len(lines[i])]
            at += len(lines[i])
    found = {}
    for i in rows:
        target_sim = answer_sim = None
        if similarity is not None:
            target_sim = max_similarity(vectors[i][0], line_vecs[i])
            answer_sim = max_similarity(vectors[i][1], line_vecs[i])
        reason = repetition_reason(
            outputs[i],
            answers[i],
            lines[i],
            target_similarity=target_sim,
            answer_similarity=answer_sim,
            threshold=similarity,
        )
        if reason:
            found[i] = reason
    return found


class QualityScorer:
    """Ray Data actor: loads the embedder once, then scores batch after batch."""

    def __init__(
        self,
        embedder: str,
        threshold: float,
        batch_size: int = 64,
        drop_repeats: bool = True,
        repeat_similarity: float | None = 0.95,
        dtype: str = "float32",
    ) -> None:
        from synth_empathy.models.embedder import load_embedder

        load_embedder(embedder, None, dtype)  # at actor start; same cache key as encode() uses
        self.embedder, self.threshold, self.batch_size, self.dtype = embedder, threshold, batch_size, dtype
        self.drop_repeats, self.repeat_similarity = drop_repeats, repeat_similarity

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_batch(
            batch,
            self.embedder,
            self.threshold,
            self.batch_size,
            self.drop_repeats,
            self.repeat_similarity,
            self.dtype,
        )


STANDIN_CPUS = 0.5


def score_stage(ds, cfg: Any, threshold: float):
    """Apply step 3b to a Ray Dataset of discriminated samples; ``threshold`` is T as a number
    (``cfg.threshold`` may say ``auto``: the calibration gives the number)."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        QualityScorer,
        fn_constructor_kwargs=dict(
            embedder=cfg.embedder,
            threshold=float(threshold),
            batch_size=cfg.batch_size,
            drop_repeats=cfg.drop_repeats,
            repeat_similarity=cfg.repeat_similarity,
            dtype=cfg.dtype,
        ),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        # a fixed pool of scorers (``concurrency=n`` said the same, deprecated since Ray 2.51)
        compute=ActorPoolStrategy(size=cfg.replicas),
        # A stand-in embedder computes in one thread: a preset's reservation, sized for a model
        # (the paper's 2 x 2 CPUs), would keep its pool from starting on a small rehearsal machine.
        num_cpus=STANDIN_CPUS if is_standin(cfg.embedder) else cfg.cpus_per_replica,
        # A stand-in embedder computes on no GPU: a GPU preset rehearses on a CPU machine.
        num_gpus=None if is_standin(cfg.embedder) else cfg.gpus_per_replica or None,
    )
