"""Small helpers shared by several test modules (importable: tests/ is on pythonpath)."""

from __future__ import annotations

import socket

from synth_empathy.core import rounds, turn_sampling

BUCKET = "synth-runs"  # the bucket the loopback S3 fixture creates

# The pipeline's stages up to the selection, in order (the judge is optional).
PIPELINE_STAGES = ("seeds", "generations", "samples", "discriminated", "scored", "selected")

# Drop reasons that come from what a model wrote, not from an error: a generation with no
# usable round (samples), a discriminator answer that is empty or points away from the
# target (scored, at quality.threshold=0). An end-to-end run may drop every row for these.
MODEL_TEXT_DROPS = {
    "samples": {
        rounds.REASON_EMPTY_OUTPUT,
        rounds.REASON_NO_ROUNDS,
        rounds.REASON_NO_COMPLETE_ROUND,
        turn_sampling.REASON_TOO_FEW_ROUNDS,
        turn_sampling.REASON_EMPTY_ROUND,
    },
    "scored": {"empty_discriminator_answer", "below_quality_threshold"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: each socket stays bound until all are chosen. Calling
    :func:`free_port` n times can return one port twice (the kernel may hand a just-closed
    port out again), which ``ray start`` refuses ("a port number ... that is used by other
    components")."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def s3fs_client(endpoint: str):
    """An s3fs filesystem on the loopback S3 endpoint, with no cached instance."""
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


# Short pipeline-like samples for the training tests: a few tokens each, so real
# training steps on the packaged model stay cheap.
TRAINING_SAMPLES = [
    ("i lost my job today.", "oh no, i am so sorry. what happened?"),
    ("my dog is sick again.", "that sounds scary. is he seeing a vet?"),
    ("i passed my exam!", "congratulations, you worked so hard for it!"),
    ("my sister moved away.", "you must miss her a lot already."),
]


def training_rows() -> list[dict]:
    """:data:`TRAINING_SAMPLES` as the pipeline's sample rows (one history turn each)."""
    return [
        {
            "sample_id": f"s{i}",
            "instruction": f"Speaker: {context}\nListener:",
            "history": [{"role": "user", "content": context}],
            "output": answer,
        }
        for i, (context, answer) in enumerate(TRAINING_SAMPLES)
    ]


def scored_run(tmp_path, n=300, parts=4, d=8, seed=1):
    """A run folder whose finished ``scored`` stage holds n rows (a fifth not kept) in
    several Parquet parts, written in shuffled order as Ray Data would."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth_empathy import schemas
    from synth_empathy.executor.runner import StageRunner
    from synth_empathy.storage.run_store import RunStore

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    kept = rng.random(n) > 0.2
    rows = pa.table(
        {
            "seed_id": [f"seed{i:04d}" for i in range(n)],
            "sample_id": [f"seed{i:04d}#g0" for i in range(n)],
            "emotion": ["sad", "proud", "afraid"] * (n // 3) + ["sad"] * (n % 3),
            "instruction": [f"Speaker: context {i}\nListener:" for i in range(n)],
            "output": [f"answer {i}" for i in range(n)],
            "n_history": [i % 3 for i in range(n)],
            "history": [[{"role": "user", "content": f"context {i}"}] for i in range(n)],
            "disc_response": [f"reply {i}" for i in range(n)],
            "disc_model": ["m"] * n,
            "disc_num_tokens": list(range(n)),
            "disc_error": [None] * n,
            "quality_score": rng.uniform(0, 100, n),
            "kept": kept,
            "drop_reason": [None if k else "below_quality_threshold" for k in kept],
            "embedding": pa.array([list(v) if k else None for v, k in zip(x, kept)], type=pa.list_(pa.float32())),
        }
    )
    rows = schemas.conform(rows.take(pa.array(rng.permutation(n))), schemas.SCORED)
    store = RunStore(str(tmp_path), "run")

    def write():
        folder = store.begin("scored")
        for p, chunk in enumerate(np.array_split(np.arange(n), parts)):
            pq.write_table(rows.take(pa.array(chunk)), f"{folder}/part-{p}.parquet")

    StageRunner(store).run("scored", write)
    return store, rows
