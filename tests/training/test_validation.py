"""Validation during training: the held-out loss in the report and plot, the best checkpoint kept."""

import json

from synth_empathy.config import load_config
from synth_empathy.training import loop
from synth_empathy.training.run import run_training


def test_the_held_out_loss_every_n_steps_is_in_the_report_and_the_plot(tiny_model, tmp_path):
    out = tmp_path / "out"
    cfg = load_config(
        "default",
        [f"train.model={tiny_model}", f"train.output={out}", "train.use_ray=false", "train.limit=8",
         "train.max_steps=5", "train.eval_steps=2", "train.eval_limit=4", "train.save_steps=2", "train.keep_best=true",
         "train.batch_size=2", "train.learning_rate=1e-2", "train.dtype=float32"],
    )  # fmt: skip
    report = run_training(cfg)
    assert report["eval_examples"] == 4
    assert [s for s, _ in report["eval_curve"]] == [2, 4, 5]  # every 2 steps and at the end
    best = min(report["eval_curve"], key=lambda c: c[1])
    assert report["eval_best"] == {"step": best[0], "eval_loss": best[1]}
    assert json.loads((out / loop.REPORT).read_text())["eval_curve"] == report["eval_curve"]
    assert (out / loop.PLOT).stat().st_size > 0


def test_best_checkpoint_is_the_lowest_validation_loss_among_the_steps_whose_weights_exist():
    curve = [[2, 3.0], [4, 1.0], [6, 0.5], [8, 2.0], [9, 2.5]]
    assert loop.best_checkpoint(curve, save_steps=4, total=9) == (4, 1.0)  # step 6: evaluated, not saved
    assert loop.best_checkpoint(curve, save_steps=2, total=9) == (6, 0.5)
    assert loop.best_checkpoint([[4, 2.0], [8, 1.0]], save_steps=4, total=8) == (8, 1.0)  # the last: in memory
    assert loop.best_checkpoint([[4, 1.0], [8, 1.0]], save_steps=4, total=10) == (4, 1.0)  # a tie: the earlier
    assert loop.best_checkpoint([[3, 1.0]], save_steps=4, total=10) is None
    nan, inf = float("nan"), float("inf")
    assert loop.best_checkpoint([[4, nan], [8, 2.0], [10, inf]], save_steps=4, total=10) == (8, 2.0)  # diverged
    assert loop.best_checkpoint([[4, nan]], save_steps=4, total=10) is None


def test_keep_best_writes_the_model_from_the_best_checkpoint_not_the_last_step(tiny_model, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    scripted = iter([3.0, 1.0, 2.0])  # validation losses at steps 2, 4 and 5: step 4 is the best
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(scripted))
    out = tmp_path / "out"
    cfg = load_config(
        "default",
        [f"train.model={tiny_model}", f"train.output={out}", "train.use_ray=false", "train.limit=8",
         "train.max_steps=5", "train.eval_steps=2", "train.eval_limit=4", "train.save_steps=2", "train.keep_best=true",
         "train.batch_size=2", "train.learning_rate=1e-2", "train.dtype=float32", "train.save_dtype=float32"],
    )  # fmt: skip
    report = run_training(cfg)
    assert report["eval_curve"] == [[2, 3.0], [4, 1.0], [5, 2.0]]
    assert (report["model_step"], report["model_eval_loss"]) == (4, 1.0)
    saved = AutoModelForCausalLM.from_pretrained(out / loop.MODEL).state_dict()
    best = loop._load_state(out / loop.CHECKPOINTS / "step-0000004")["model"]
    assert best and all(torch.equal(saved[k], v) for k, v in best.items())
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert not all(torch.equal(saved[k], base[k]) for k in best)  # trained weights, not the base's


def _state(step):
    return {"step": step}


def test_keep_best_keeps_the_lowest_validation_loss_besides_the_latest(tmp_path):
    store = loop.FolderCheckpoints(str(tmp_path), keep=1, keep_best=True)
    for step, eval_loss in [(2, 3.0), (4, 1.0), (6, 2.0), (8, 2.5)]:
        store.save(step, _state(step), {"step": step, "eval_loss": eval_loss}, rank=0)
    assert [p.name for p in loop.checkpoints(str(tmp_path))] == ["step-0000004", "step-0000008"]
    assert store.latest()[0] == "checkpoints/step-0000008"
    diverged = loop.FolderCheckpoints(str(tmp_path / "diverged"), keep=1, keep_best=True)
    for step, eval_loss in [(2, float("nan")), (4, 1.0), (6, 2.0)]:
        diverged.save(step, _state(step), {"step": step, "eval_loss": eval_loss}, rank=0)
    assert [p.name for p in loop.checkpoints(str(tmp_path / "diverged"))] == ["step-0000004", "step-0000006"]
    plain = loop.FolderCheckpoints(str(tmp_path / "plain"), keep=2)
    for step in (2, 4, 6):
        plain.save(step, _state(step), {"step": step, "eval_loss": 0.1 * step}, rank=0)
    assert [p.name for p in loop.checkpoints(str(tmp_path / "plain"))] == ["step-0000004", "step-0000006"]


def test_a_plain_run_resumes_from_checkpoints_ray_train_stored_in_the_same_folder(tmp_path):
    # use_ray switched between two starts of one run on a local folder: the newest of either kind
    loop.FolderCheckpoints(str(tmp_path), keep=1).save(4, _state(4), {}, rank=0)
    ray_stored = tmp_path / loop.RAY_RUN / "step-0000006"
    ray_stored.mkdir(parents=True)
    (ray_stored / loop.STATE).write_bytes(b"cut short")  # an upload killed half-way: skipped
    ray_stored = tmp_path / loop.RAY_RUN / "step-0000005"
    ray_stored.mkdir(parents=True)
    import torch

    torch.save(_state(5), ray_stored / loop.STATE)
    name, state = loop.FolderCheckpoints(str(tmp_path), keep=1).latest()
    assert name == "ray_train/step-0000005" and state["step"] == 5


def test_ray_train_storage_for_a_url_is_its_fsspec_filesystem_without_the_protocol(tmp_path):
    from pyarrow.fs import PyFileSystem

    from synth_empathy.training.ray_train import storage

    path, fs = storage("s3://bucket/runs/disc", {"anon": True})
    assert path == "bucket/runs/disc" and isinstance(fs, PyFileSystem)
    assert storage(str(tmp_path / "x"), None) == (str(tmp_path / "x"), None)


def test_keep_best_reads_ray_trains_checkpoint_of_a_step_from_its_storage(tmp_path):
    import torch

    folder = tmp_path / loop.RAY_RUN / "step-0000004"
    folder.mkdir(parents=True)
    torch.save(_state(4), folder / loop.STATE)
    assert loop.RayCheckpoints(None, f"file://{tmp_path}", None).load(4) == {"step": 4}
