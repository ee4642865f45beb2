import json

import pytest

from helpers import training_rows
from synth_empathy.stages.export import to_alpaca, to_chat_messages


@pytest.fixture
def chat_jsonl(tmp_path):
    path = tmp_path / "selected.chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in to_chat_messages(training_rows())))
    return str(path)


@pytest.fixture
def alpaca_jsonl(tmp_path):
    path = tmp_path / "selected.alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in to_alpaca(training_rows())))
    return str(path)


@pytest.fixture(scope="session")
def smollm2():
    from synth_empathy.models.weights import resolve_model

    return resolve_model("packaged:smollm2")


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="session")
def tiny_model(smollm2, tmp_path_factory):
    """A randomly initialised two-layer model of SmolLM2's architecture and tokenizer (its chat
    template included): a few milliseconds a step, for tests about the training machinery
    rather than about the weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-smollm2")
    config = AutoConfig.from_pretrained(smollm2)
    config.update(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 8}
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(folder)
    return str(folder)
