"""The packaged models: found without importing their packages, converted once, loadable."""

import pytest

from synth_empathy.models import weights as models


def test_unknown_packaged_model_names_the_known_ones():
    with pytest.raises(models.ModelNotFoundError, match="packaged:smollm2"):
        models.resolve_model("packaged:gpt5")


def test_hub_ids_and_existing_folders_pass_through(tmp_path):
    assert models.resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    models.check_model(str(tmp_path))
    with pytest.raises(models.ModelNotFoundError, match="does not exist"):
        models.check_model(str(tmp_path / "missing"))


def test_smollm2_converts_once_into_a_folder_transformers_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_EMPATHY_CACHE", str(tmp_path))
    folder = models.packaged_smollm2()
    assert folder.parent == tmp_path
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert models.packaged_smollm2() == folder  # cached: not converted again
    assert (folder / "model.safetensors").stat().st_mtime == mtime

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "I feel sad today."}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
