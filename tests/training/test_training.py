"""Real training steps on the packaged SmolLM2 with a handful of short pairs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth_empathy.config import load_config
from synth_empathy.training import loop
from synth_empathy.training.run import prepare


def _cfg(data, out, *more):
    return load_config("default", [f"train.data=[{data}]", f"train.output={out}", "train.use_ray=false", *more])


def test_loss_on_a_fixed_batch_falls_and_the_outputs_are_written(chat_jsonl, tmp_path):
    # Four pairs, batch 4: every step sees the same batch. Called without Ray, as a GPU
    # benchmark would call it.
    cfg = _cfg(
        chat_jsonl,
        tmp_path / "out",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.learning_rate=1e-4",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0",
        "train.save_steps=0",
        "train.dtype=float32",
    )
    p = prepare(cfg)
    report = loop.train_loop(p["settings"], p["examples"], p["out_dir"], p["data_report"])
    losses = [loss for _, loss in report["loss_curve"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert report["tokens"] > 0 and report["dtype"] == "float32" and report["rows_too_long"] == 0
    out = Path(p["out_dir"])
    assert json.loads((out / loop.REPORT).read_text())["steps"] == 3
    assert (out / loop.PLOT).stat().st_size > 0
    model = out / loop.MODEL
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    assert (model / "chat_template.jinja").is_file() or "chat_template" in (model / "tokenizer_config.json").read_text()


def _train_cmd(data, out):
    return [
        sys.executable,
        "-m",
        "synth_empathy",
        "train",
        "--no-ray",
        f"train.data=[{data}]",
        f"train.output={out}",
        "train.method=lora",
        "train.batch_size=2",
        "train.max_steps=6",
        "train.save_steps=1",
        "train.learning_rate=1e-3",
        "train.log_steps=1",
    ]


def test_a_killed_lora_run_resumes_from_its_checkpoint_and_the_merged_model_loads(chat_jsonl, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen(_train_cmd(chat_jsonl, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not loop.checkpoints(str(out)):
            assert first.poll() is None, "the first run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.5)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = int(loop.checkpoints(str(out))[-1].name.split("-")[1])
    assert not (out / loop.REPORT).exists()

    second = subprocess.run(_train_cmd(chat_jsonl, out), env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((out / loop.REPORT).read_text())
    assert report["resumed_from_step"] >= killed_at >= 1
    assert report["steps"] == 6 and [s for s, _ in report["loss_curve"]] == [1, 2, 3, 4, 5, 6]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = out / loop.MODEL
    assert not (folder / "adapter_config.json").exists()  # merged, a plain model folder
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "i lost my job."}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert new.shape[1] > len(ids)


@pytest.mark.e2e
def test_ray_train_runs_the_same_loop_and_evaluate_answers_with_the_result(chat_jsonl, tmp_path, capfd):
    """TorchTrainer with one CPU worker, then ``synth-empathy evaluate`` loads the model
    folder as a vLLM engine (the same Ray Data LLM stage as the pipeline) and answers
    held-out dialogues with it: a trained folder is what the engines load."""
    import ray

    from synth_empathy.logs import PG_CLEANER_WARNING
    from synth_empathy.training.run import run_training

    if ray.is_initialized():  # `train` starts its own local Ray (with its worker set-up hook)
        ray.shutdown()

    out = tmp_path / "out"
    cfg = load_config(
        "default",
        [
            f"train.data=[{chat_jsonl}]",
            f"train.output={out}",
            "train.method=lora",
            "train.batch_size=2",
            "train.max_steps=2",
            "train.save_steps=1",
            "train.cpus_per_worker=1",
        ],
    )
    report = run_training(cfg)
    assert report["use_ray"] and report["steps"] == 2 and report["workers"] == 1
    # Ray Train's PlacementGroupCleaner finds no state API on a local Ray: it says so
    # once, not once a second for the whole run (nor with a traceback where the machine
    # runs another Ray too).
    shown = capfd.readouterr()
    console = shown.out + shown.err
    assert console.count(PG_CLEANER_WARNING) <= 1, console[-3000:]
    assert "Exception in thread PlacementGroupCleanerMonitor" not in console, console[-3000:]
    assert "Started training worker group" not in console  # Ray Train's INFO lines: in its own logs
    model = out / loop.MODEL
    assert (model / "model.safetensors").is_file()

    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    evaluated = tmp_path / "eval"
    cmd = [sys.executable, "-m", "synth_empathy", "evaluate", str(evaluated), "--model", f"tuned={model}",
           "--limit", "4", "evaluate.sampling.max_tokens=24"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    tuned = json.loads((evaluated / "evaluation.json").read_text())["models"]["tuned"]
    assert tuned["rows"] == 4 and tuned["errors"] == 0 and tuned["empty_answers"] < 4
    assert 0 <= tuned["metrics"]["bleu_1"] <= 1 and 0 <= tuned["metrics"]["embedding_similarity"] <= 1
    assert "| metric | tuned |" in (evaluated / "evaluation.md").read_text()
