"""The stand-in engine's actor on a batch as Ray Data hands it over (no Ray started), and
that the stand-in path needs neither vLLM nor sentence-transformers."""

import subprocess
import sys

import pyarrow as pa

from synth_empathy.config import load_config
from synth_empathy.core.rounds import parse_rounds
from synth_empathy.stages.generation import Generation, expand_seeds
from synth_empathy.stages.standin_engine import StandinEngine

SEEDS = {
    "seed_id": ["a", "b"],
    "emotion": ["proud", "sad"],
    "context": ["I won the race.", "My cat died."],
    "response": ["Well done!", "I am so sorry."],
}


def _generation_batch(cfg):
    stage = Generation(cfg.generation.engine, cfg.generation.sampling, 3)
    rows = expand_seeds(SEEDS, 3)
    requests = [stage.preprocess({k: rows[k][i] for k in rows}) for i in range(len(rows["seed_id"]))]
    return stage, pa.Table.from_pylist(requests)


def test_the_actor_answers_every_row_and_postprocess_reads_it_as_vllms():
    cfg = load_config("default", ["generation.engine.model=standin", "generation.sampling.max_tokens=400"])
    stage, batch = _generation_batch(cfg)
    out = StandinEngine("generation", "standin")(batch)
    assert out.num_rows == 6 and out.column_names == batch.column_names + ["generated_text", "num_generated_tokens"]
    rows = [stage.postprocess(r) for r in out.to_pylist()]
    assert [r["sample_id"] for r in rows] == [f"{s}#g{i}" for s in "ab" for i in range(3)]
    assert all(parse_rounds(r["raw_text"]).ok and r["num_generated_tokens"] > 0 for r in rows)
    assert {r["model"] for r in rows} == {"standin"} and not any(r["error"] for r in rows)
    # deterministic per request: the same batch again, the same answers
    again = StandinEngine("generation", "standin")(batch)
    assert again.column("generated_text").equals(out.column("generated_text"))
    assert len(set(out.column("generated_text").to_pylist())) == 6


def test_the_stand_in_path_imports_neither_vllm_nor_sentence_transformers():
    code = (
        "import sys\n"
        "from synth_empathy.config import load_config\n"
        "from synth_empathy.models.embedder import encode\n"
        "from synth_empathy.models.weights import check_model, resolve_model\n"
        "from synth_empathy.stages.standin_engine import StandinEngine\n"
        "check_model('standin'); assert resolve_model('standin') == 'standin'\n"
        "v = encode(['a b', 'c'], 'standin:dim=16')\n"
        "assert v.shape == (2, 16)\n"
        "print(sorted(m for m in ('vllm', 'sentence_transformers', 'torch') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_paced_replica_takes_its_batchs_tokens_over_the_rate(monkeypatch):
    import synth_empathy.stages.standin_engine as engine

    slept = []
    monkeypatch.setattr(engine.time, "sleep", slept.append)
    cfg = load_config("default", ["generation.sampling.max_tokens=400"])
    _, batch = _generation_batch(cfg)
    out = StandinEngine("generation", "standin:tokens_per_s=10")(batch)
    tokens = sum(out.column("num_generated_tokens").to_pylist())
    # the wait is what is left of tokens / rate after the answers were made (a few ms)
    assert len(slept) == 1 and tokens / 10 - 1 < slept[0] <= tokens / 10
    StandinEngine("generation", "standin")(batch)
    assert len(slept) == 1  # unpaced: no wait
