"""A trained discriminator's folder is what the engines load: train a few steps, then
`synth-empathy evaluate` answers held-out dialogues with it through vLLM (Ray Data LLM)."""

import json
import subprocess
import sys

import pytest

from helpers import training_rows
from synth_empathy.stages.export import to_chat_messages

pytestmark = pytest.mark.e2e


@pytest.fixture
def chat_jsonl(tmp_path):
    path = tmp_path / "selected.chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in to_chat_messages(training_rows())))
    return str(path)


def test_a_trained_model_folder_loads_in_vllm_and_answers(chat_jsonl, tmp_path):
    model = tmp_path / "disc"
    train = [sys.executable, "-m", "synth_empathy", "train", "--no-ray", f"train.output={model}",
             f"train.data=[{chat_jsonl}]", "train.max_steps=3", "train.batch_size=4", "train.save_steps=0"]  # fmt: skip
    done = subprocess.run(train, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "eval"
    evaluate = [sys.executable, "-m", "synth_empathy", "evaluate", str(out), "--model", f"tuned={model}/model",
                "--limit", "4", "evaluate.sampling.max_tokens=24"]  # fmt: skip
    done = subprocess.run(evaluate, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    tuned = report["models"]["tuned"]
    assert tuned["rows"] == 4 and tuned["errors"] == 0 and tuned["empty_answers"] < 4
    assert 0 <= tuned["metrics"]["bleu_1"] <= 1 and 0 <= tuned["metrics"]["embedding_similarity"] <= 1
    assert "| metric | tuned |" in (out / "evaluation.md").read_text()
