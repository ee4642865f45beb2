"""The embedder's dtype choice (synth_empathy.models.embedder.embedder_dtype), no model loaded."""

from __future__ import annotations

import pytest

from synth_empathy.config import ConfigError, load_config
from synth_empathy.core import hardware as H
from synth_empathy.models.embedder import embedder_dtype

AVX2 = H.Hardware(cpu_model="AMD EPYC 7B13", cpu_flags=frozenset({"avx2"}), cuda=False)
ZEN4 = H.Hardware(cpu_model="AMD EPYC 9B14", cpu_flags=frozenset({"avx512f", "avx512_bf16"}), cuda=False)
A100 = H.Hardware(cpu_flags=frozenset({"avx2"}), cuda=True, cuda_bf16=True, cuda_name="NVIDIA A100")


def test_float32_unless_asked():
    assert embedder_dtype("float32", None, ZEN4) == "float32"
    assert load_config().quality.dtype == "float32"


def test_auto_is_bf16_only_where_native():
    assert embedder_dtype("auto", "cpu", ZEN4) == "bfloat16"
    assert embedder_dtype("auto", "cpu", AVX2) == "float32"
    assert embedder_dtype("auto", None, A100) == "bfloat16"  # sentence-transformers takes the GPU
    assert embedder_dtype("auto", "cpu", A100) == "float32"


def test_bad_embedder_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="quality.dtype must be one of"):
        load_config("default", ["quality.dtype=int8"])


def test_a_bf16_embedder_still_gives_float32_unit_vectors():
    import numpy as np

    from synth_empathy.models.embedder import encode

    texts = ["I lost my job today.", "That sounds really hard."]
    a, b = encode(texts, dtype="bfloat16"), encode(texts)
    assert a.dtype == np.float32 and a.shape == b.shape
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-3) and np.abs(a - b).max() < 0.02
