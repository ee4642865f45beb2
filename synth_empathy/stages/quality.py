"""Method step 3b - the quality score and the threshold.

An embedding model embeds the generated target (``output``) and the discriminator's
answer (``disc_response``); the quality score is 100 x their cosine similarity. Rows
scoring below the threshold T are dropped (kept in the table, marked with a reason).
The same pass embeds ``instruction + output`` of the rows it keeps: the vectors that
diversity selection (step 4) works on, so no row is embedded twice.

in:  discriminated samples ``sample_id, instruction, output, disc_response, disc_error, ...``
out: ``+ quality_score`` (0-100, null when there was nothing to compare), ``kept``,
     ``drop_reason``, ``embedding`` (list<float32>, kept rows only)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from synth_empathy.models.embedder import encode


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
    batch: pa.Table, embedder: str, threshold: float, batch_size: int = 64, dtype: str = "float32"
) -> pa.Table:
    """The whole step for one batch: the batch with the four new columns appended."""
    n = batch.num_rows
    outputs = [str(x or "") for x in batch.column("output").to_pylist()]
    answers = [str(x or "") for x in batch.column("disc_response").to_pylist()]
    errors = batch.column("disc_error").to_pylist()
    reasons: list[str | None] = [drop_reason(errors[i], answers[i]) for i in range(n)]
    scorable = [i for i in range(n) if reasons[i] is None]

    scores: list[float | None] = [None] * n
    if scorable:
        both = encode(
            [outputs[i] for i in scorable] + [answers[i] for i in scorable], embedder, batch_size, dtype=dtype
        )
        m = len(scorable)
        for i, s in zip(scorable, quality_scores(both[:m], both[m:])):
            scores[i] = float(s)
    kept = [scores[i] is not None and scores[i] >= threshold for i in range(n)]
    for i in scorable:
        if not kept[i]:
            reasons[i] = "below_quality_threshold"

    embeddings: list[list[float] | None] = [None] * n
    keep_idx = [i for i in range(n) if kept[i]]
    if keep_idx:
        instructions = batch.column("instruction").to_pylist()
        vecs = encode(
            [diversity_text(instructions[i], outputs[i]) for i in keep_idx], embedder, batch_size, dtype=dtype
        )
        for i, v in zip(keep_idx, vecs):
            embeddings[i] = v.tolist()

    for name, values, type_ in (
        ("quality_score", scores, pa.float64()),
        ("kept", kept, pa.bool_()),
        ("drop_reason", reasons, pa.string()),
        ("embedding", embeddings, pa.list_(pa.float32())),
    ):
        batch = batch.append_column(name, pa.array(values, type=type_))
    return batch


class QualityScorer:
    """Ray Data actor: loads the embedder once, then scores batch after batch."""

    def __init__(self, embedder: str, threshold: float, batch_size: int = 64, dtype: str = "float32") -> None:
        from synth_empathy.models.embedder import load_embedder

        load_embedder(embedder, None, dtype)  # at actor start; same cache key as encode() uses
        self.embedder, self.threshold, self.batch_size, self.dtype = embedder, threshold, batch_size, dtype

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_batch(batch, self.embedder, self.threshold, self.batch_size, self.dtype)


def score_stage(ds, cfg: Any):
    """Apply step 3b to a Ray Dataset of discriminated samples."""
    return ds.map_batches(
        QualityScorer,
        fn_constructor_kwargs=dict(
            embedder=cfg.embedder,
            threshold=cfg.threshold,
            batch_size=cfg.batch_size,
            dtype=getattr(cfg, "dtype", "float32"),
        ),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        concurrency=cfg.replicas,
        num_cpus=cfg.cpus_per_replica,
        num_gpus=cfg.gpus_per_replica or None,
    )
