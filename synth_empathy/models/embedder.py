"""Sentence embeddings: the one place that turns texts into unit vectors.

Used by the quality score (target vs. discriminator answer) and by diversity selection
(instruction + output). ``standin:...`` gives a rehearsal's deterministic vectors
(:class:`synth_empathy.core.standin.StandinEmbedder`) through the same calls. Vectors are float32 and L2-normalised, so a dot product is the
cosine similarity and squared L2 distance is 2 - 2 cos.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from synth_empathy.core.standin import StandinEmbedder, is_standin
from synth_empathy.models.weights import resolve_model


def embedder_dtype(requested: str = "float32", device: str | None = None, hw=None) -> str:
    """The torch dtype name to load the embedder in, decided where it runs.

    ``auto`` asks :func:`synth_empathy.core.hardware.choose_dtype` (bfloat16 only where
    native); an explicit name is kept; float32 whenever the answer is left open.
    """
    from synth_empathy.core import hardware

    on_gpu = (device or "").startswith("cuda")
    if hw is None:
        hw = hardware.detect(with_cuda=requested == "auto" and (on_gpu or device is None))
    if device is None and hw.cuda:
        on_gpu = True  # sentence-transformers picks the GPU when it sees one
    choice = hardware.choose_dtype(requested, "cuda" if on_gpu else "cpu", hw, "quality.dtype")
    if choice.warning:
        hardware.warn_once(choice.warning)
    return "float32" if choice.dtype == "auto" else choice.dtype


@lru_cache(maxsize=4)
def load_embedder(model: str, device: str | None = None, dtype: str = "float32"):
    """A sentence-transformers model, loaded once per process (per Ray actor), in
    ``dtype`` (see :func:`embedder_dtype`); vectors come out float32 either way."""
    if is_standin(model):
        return StandinEmbedder.from_spec(model)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    # transformers draws a "Loading weights" bar on stderr, and sentence-transformers logs its
    # device and folder: in the driver (the calibration scores there) both would land among
    # the job's own console lines
    hf_logging.disable_progress_bar()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    dtype = embedder_dtype(dtype, device)
    if dtype == "float32":
        return SentenceTransformer(resolve_model(model), device=device)
    import torch

    return SentenceTransformer(resolve_model(model), device=device, model_kwargs={"torch_dtype": getattr(torch, dtype)})


def encode(
    texts: Sequence[str],
    model: str = "packaged:all-minilm-l6-v2",
    batch_size: int = 64,
    device: str | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """Embed ``texts`` as an (N, d) float32 array of unit vectors."""
    embedder = load_embedder(model, device, dtype)
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
