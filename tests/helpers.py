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
