"""Data parallel, run: two gloo processes train together through the loop's DDP path.

Two workers at micro-batch b take every optimizer step on the same examples as one worker
at 2b (the plan splits each step's examples between ranks) and the loss is the mean over all
the step's answer tokens, so the loss curves must agree up to float32 summation order.
Tolerance: 1e-3 relative on every step's training and validation loss; the steps themselves
move the loss by far more (asserted), so agreement is not trivially met."""

import json
import os
import subprocess
import sys
from pathlib import Path

from synth_empathy.config import load_config
from synth_empathy.training import loop
from synth_empathy.training.run import prepare

TOLERANCE = 1e-3


def _close(a, b):
    return all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(a, b)) and len(a) == len(b)


def _losses(report, key="loss_curve"):
    return [v for _, v in report[key]]


def _prepared(tiny_model, tmp_path, max_steps=3):
    cfg = load_config(
        "default",
        [
            f"train.model={tiny_model}",
            f"train.output={tmp_path / 'prepare'}",
            "train.use_ray=false",
            "train.limit=12",
            f"train.max_steps={max_steps}",
            "train.learning_rate=3e-2",
            "train.lr_scheduler=constant",
            "train.warmup_ratio=0",
            "train.save_steps=0",
            "train.dtype=float32",
            "train.eval_steps=1",
            "train.eval_limit=6",
        ],
    )
    p = prepare(cfg)
    assert len(p["examples"]) >= 12 and len(p["eval_examples"]) == 6
    return p


def _two_ranks(tmp_path, p, runs):
    """``runs`` ({"settings", "output"}) in turn in one two-process gloo group (ddp_rank.py)."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"examples": p["examples"], "eval_examples": p["eval_examples"], "runs": runs}))
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = str(Path(__file__).with_name("ddp_rank.py"))
    init = str(tmp_path / "pg-init")
    ranks = [
        subprocess.Popen(
            [sys.executable, script, str(r), "2", init, str(job)], env=env, stderr=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    for r in ranks:
        _, err = r.communicate(timeout=600)
        assert r.returncode == 0, err[-3000:]


def _report(folder):
    return json.loads((Path(folder) / loop.REPORT).read_text())


def test_two_workers_at_b_take_the_steps_of_one_worker_at_2b_and_accumulation_with_no_sync(tiny_model, tmp_path):
    p = _prepared(tiny_model, tmp_path)

    def settings(batch, accumulation):
        return {**p["settings"], "batch_size": batch, "gradient_accumulation": accumulation}

    # one worker, here: 4 pairs a step in one micro-batch, then in four accumulated ones
    one = {
        name: loop.train_loop(
            settings(b, a), p["examples"], str(tmp_path / f"one-{name}"), eval_examples=p["eval_examples"]
        )
        for name, (b, a) in {"batch": (4, 1), "accumulated": (1, 4)}.items()
    }
    # two workers: 2 pairs each in one micro-batch; then 1 pair twice, the first under no_sync
    runs = [
        {"settings": settings(2, 1), "output": str(tmp_path / "two-batch")},
        {"settings": settings(1, 2), "output": str(tmp_path / "two-accumulated")},
    ]
    _two_ranks(tmp_path, p, runs)

    for name in ("batch", "accumulated"):
        two = _report(tmp_path / f"two-{name}")
        assert two["workers"] == 2 and one[name]["workers"] == 1
        assert two["tokens"] == one[name]["tokens"] and two["target_tokens"] == one[name]["target_tokens"]
        assert _close(_losses(two), _losses(one[name])), (name, two["loss_curve"], one[name]["loss_curve"])
        assert _close(_losses(two, "eval_curve"), _losses(one[name], "eval_curve")), name
        first, last = _losses(one[name])[0], _losses(one[name])[-1]
        assert abs(first - last) > 50 * TOLERANCE * first  # the steps move the loss
    # and the two layouts of one worker agree with each other (accumulation = one big batch)
    assert _close(_losses(one["accumulated"]), _losses(one["batch"]))


def test_fsdp_takes_the_steps_of_ddp_resumes_from_its_checkpoint_and_saves_a_plain_model(tiny_model, tmp_path):
    """FSDP2 on two gloo workers against DDP, both with two accumulated micro-batches a step
    (FSDP's gradient sync off on the first): the same loss curves within TOLERANCE, the same
    weights in the saved model (float32, 1e-4 absolute), a model folder transformers loads,
    and a run cut after a step-1 checkpoint resumes onto the same curve; keep_best's model is
    its best checkpoint's. One bfloat16 run
    (FSDP's mixed-precision policy) stays within 1e-2 relative of the float32 curve: bf16
    rounding of weights and activations, nothing more."""
    import torch
    from transformers import AutoModelForCausalLM

    p = _prepared(tiny_model, tmp_path, max_steps=4)

    def settings(strategy, **kw):
        base = {"batch_size": 1, "gradient_accumulation": 2, "save_dtype": "float32"}
        return {**p["settings"], **base, "strategy": strategy, **kw}

    resumed = str(tmp_path / "fsdp-resumed")
    runs = [
        {"settings": settings("ddp"), "output": str(tmp_path / "ddp")},
        {"settings": settings("fsdp"), "output": str(tmp_path / "fsdp")},
        # cut after step 2 with a checkpoint at step 1, then the full four steps on the same folder
        {"settings": settings("fsdp", max_steps=2, save_steps=1), "output": resumed},
        {"settings": settings("fsdp"), "output": resumed},
        {"settings": settings("fsdp", dtype="bfloat16"), "output": str(tmp_path / "fsdp-bf16")},
        # keep_best under FSDP: step 2 of 3 scripted best, its checkpoint sent from rank 0 to the shards
        {
            "settings": settings("fsdp", max_steps=3, save_steps=1, keep_best=True),
            "output": str(tmp_path / "fsdp-best"),
            "eval_losses": [3.0, 1.0, 2.0],
        },
    ]
    _two_ranks(tmp_path, p, runs)

    ddp, fsdp, again, bf16 = (_report(tmp_path / n) for n in ("ddp", "fsdp", "fsdp-resumed", "fsdp-bf16"))
    assert (ddp["strategy"], fsdp["strategy"]) == ("ddp", "fsdp")
    assert fsdp["tokens"] == ddp["tokens"] and len(fsdp["loss_curve"]) == 4
    assert _close(_losses(fsdp), _losses(ddp)), (fsdp["loss_curve"], ddp["loss_curve"])
    assert _close(_losses(fsdp, "eval_curve"), _losses(ddp, "eval_curve"))
    first, last = _losses(ddp)[0], _losses(ddp)[-1]
    assert abs(first - last) > 50 * TOLERANCE * first  # the steps move the loss

    assert again["resumed_from_step"] == 1 and again["starts"] == [0, 1]
    assert _close(_losses(again), _losses(fsdp)), (again["loss_curve"], fsdp["loss_curve"])

    assert bf16["dtype"] == "bfloat16"
    assert all(abs(x - y) <= 1e-2 * y for x, y in zip(_losses(bf16), _losses(fsdp)))

    models = {n: AutoModelForCausalLM.from_pretrained(tmp_path / n / loop.MODEL) for n in ("ddp", "fsdp")}
    a, b = (m.state_dict() for m in models.values())
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    ids = torch.tensor([p["examples"][0]["input_ids"]])
    assert torch.isfinite(models["fsdp"](input_ids=ids).logits).all()

    best = _report(tmp_path / "fsdp-best")
    assert (best["model_step"], best["model_eval_loss"]) == (2, 1.0)
    kept = loop._load_state(tmp_path / "fsdp-best" / loop.CHECKPOINTS / "step-0000002")["model"]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp-best" / loop.MODEL).state_dict()
    assert kept.keys() <= saved.keys() and all(torch.equal(saved[k], v) for k, v in kept.items())
