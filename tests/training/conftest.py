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
