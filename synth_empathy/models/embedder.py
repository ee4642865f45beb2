"""Sentence embeddings: the one place that turns texts into unit vectors.

Used by the quality score (target vs. discriminator answer) and by diversity selection
(instruction + output). Vectors are float32 and L2-normalised, so a dot product is the
cosine similarity and squared L2 distance is 2 - 2 cos.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from synth_empathy.models.weights import resolve_model


@lru_cache(maxsize=4)
def load_embedder(model: str, device: str | None = None):
    """A sentence-transformers model, loaded once per process (per Ray actor)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model(model), device=device)


def encode(
    texts: Sequence[str],
    model: str = "packaged:all-minilm-l6-v2",
    batch_size: int = 64,
    device: str | None = None,
) -> np.ndarray:
    """Embed ``texts`` as an (N, d) float32 array of unit vectors."""
    embedder = load_embedder(model, device)
    if len(texts) == 0:
        return np.zeros((0, embedder.get_sentence_embedding_dimension()), dtype=np.float32)
    vectors = embedder.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)
