"""Small helpers shared by several test modules (importable: tests/ is on pythonpath)."""

from __future__ import annotations

import socket

BUCKET = "synth-runs"  # the bucket the loopback S3 fixture creates


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
