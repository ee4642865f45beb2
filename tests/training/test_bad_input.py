"""Bad training input ends in one ``error:`` line and exit 2, before any weights load."""

import json

import pytest

from synth_empathy.cli.main import main


def _train(capsys, *overrides):
    code = main(["train", "--no-ray", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_a_dataset_with_none_of_the_expected_columns(tmp_path, capsys):
    data = _jsonl(tmp_path / "x.jsonl", [{"prompt": "hi", "completion": "hello"}])
    code, err = _train(capsys, f"train.data=[{data}]", f"train.output={tmp_path / 'out'}")
    assert code == 2 and len(err) == 1 and "none of the expected columns" in err[0]
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    code, err = _train(capsys, f"train.data=[{csv}]", f"train.output={tmp_path / 'out'}")
    assert code == 2 and len(err) == 1 and str(csv) in err[0]


def test_a_dataset_left_empty_by_the_readers_drops(tmp_path, capsys):
    records = [{"messages": [{"role": "user", "content": "hi"}]}, {"instruction": "Speaker: hi", "output": ""}]
    data = _jsonl(tmp_path / "x.jsonl", records)
    code, err = _train(capsys, f"train.data=[{data}]", f"train.output={tmp_path / 'out'}")
    assert code == 2 and len(err) == 1 and "no training pair left" in err[0] and "no_answer_last" in err[0]


def test_a_cutoff_shorter_than_the_prompt_template(chat_jsonl, tmp_path, capsys):
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", "train.cutoff_len=8", f"train.output={tmp_path / 'o'}")
    assert code == 2 and len(err) == 1 and "prompt template alone" in err[0]


def test_an_output_folder_holding_another_model(chat_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", f"train.output={out}")
    assert code == 2 and len(err) == 1 and "not a training run" in err[0]


def test_an_output_folder_holding_a_different_training_run(chat_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_run.json").write_text(json.dumps({"fingerprint": {"settings": {"learning_rate": 1.0}}}))
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", f"train.output={out}")
    assert code == 2 and len(err) == 1 and "different training run" in err[0]


def test_a_lora_target_the_model_does_not_have(chat_jsonl, tmp_path, capsys):
    code, err = _train(
        capsys,
        f"train.data=[{chat_jsonl}]",
        "train.method=lora",
        "train.lora.target_modules=[q_proj,qkv_proj]",
        f"train.output={tmp_path / 'o'}",
    )
    assert code == 2 and len(err) == 1 and "qkv_proj" in err[0] and "q_proj," not in err[0].split("not in")[0]


@pytest.mark.parametrize("override", ["train.method=qlora", "train.heldout_fraction=1.5", "train.batch_size=0"])
def test_impossible_train_settings(override, chat_jsonl, tmp_path, capsys):
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", override, f"train.output={tmp_path / 'o'}")
    assert code == 2 and len(err) == 1 and override.split("=")[0] in err[0]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.max_failures=-2"], "train.max_failures"),
        (["train.keep_best=true", "train.eval_steps=0"], "train.keep_best needs train.eval_steps > 0"),
        (["train.keep_best=true", "train.save_steps=10"], "save_steps a multiple of train.eval_steps"),
    ],
)
def test_impossible_retry_and_validation_settings(overrides, words, chat_jsonl, tmp_path, capsys):
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", *overrides, f"train.output={tmp_path / 'o'}")
    assert code == 2 and len(err) == 1 and words in err[0]


def test_keep_best_without_a_held_out_split(chat_jsonl, tmp_path, capsys):
    # an export (chat JSONL) has no held-out split, so there is no validation loss to keep the best by
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", "train.keep_best=true", "train.save_steps=25",
                       f"train.output={tmp_path / 'o'}")  # fmt: skip
    assert code == 2 and len(err) == 1 and "keep_best needs held-out pairs" in err[0]


def test_an_output_that_cannot_be_written(chat_jsonl, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", f"train.output={tmp_path / 'file' / 'out'}")
    assert code == 2 and len(err) == 1 and "is not writable" in err[0]


def test_an_unreachable_output_store(chat_jsonl, capsys):
    """An S3 endpoint where nothing listens (a closed loopback port): one line naming the
    output and the cause once boto's retries give up (~20 s here), before any model loads."""
    from helpers import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", "train.output=s3://bucket/out",
                       f"storage.endpoint_url={endpoint}", "storage.key=k", "storage.secret=s")  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert "train.output s3://bucket/out" in err[0] and "Could not connect" in err[0] and endpoint in err[0]


def test_bf16_on_a_cpu_without_it(chat_jsonl, tmp_path, capsys, monkeypatch):
    from synth_empathy.core import hardware

    avx2 = hardware.Hardware(cpu_model="AMD EPYC 7B13", cpu_flags=frozenset({"avx2"}))
    monkeypatch.setattr(hardware, "detect", lambda with_cuda=False: avx2)
    code, err = _train(capsys, f"train.data=[{chat_jsonl}]", "train.dtype=bfloat16", f"train.output={tmp_path / 'o'}")
    assert code == 2 and len(err) == 1 and "without native bf16 (AMD EPYC 7B13" in err[0]


def test_the_bf16_decision_reads_the_cpu_flags_it_is_given():
    from synth_empathy.core.hardware import Hardware
    from synth_empathy.training.run import bf16_refusal

    avx2 = Hardware(cpu_model="AMD EPYC 7B13", cpu_flags=frozenset({"avx2", "fma"}))
    zen4 = Hardware(cpu_model="AMD EPYC 9B14", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
    spr = Hardware(cpu_model="Intel Xeon 8480", cpu_flags=frozenset({"avx512f", "amx_bf16"}))
    assert "without native bf16" in bf16_refusal("bfloat16", False, False, avx2)
    assert bf16_refusal("bfloat16", False, False, zen4) is None and bf16_refusal("bfloat16", False, False, spr) is None
    assert bf16_refusal("bfloat16", True, False, avx2) is None  # GPU workers: the card decides
    assert bf16_refusal("bfloat16", False, True, avx2) is None  # a remote cluster's CPUs are not these
    assert bf16_refusal("auto", False, False, avx2) is None and bf16_refusal("float32", False, False, avx2) is None


@pytest.mark.parametrize(
    "overrides, words",
    [
        (
            ["train.strategy=fsdp", "train.num_workers=1"],
            "train.strategy=fsdp shards the model over workers but num_workers=1",
        ),
        (["train.strategy=fsdp", "train.num_workers=2", "train.use_ray=false"], "but use_ray=false (one process)"),
        (["train.strategy=fsdp", "train.num_workers=2", "train.method=lora"], "train.strategy=fsdp is for method=full"),
        (["train.strategy=zero3"], "train.strategy must be ddp or fsdp"),
    ],
)
def test_a_strategy_the_run_cannot_use(overrides, words, chat_jsonl, tmp_path, capsys):
    # before any worker starts: use_ray is on where asked, yet nothing of Ray is reached
    code = main(["train", f"train.data=[{chat_jsonl}]", *overrides, f"train.output={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0]


@pytest.mark.parametrize(
    "use_gpu, workers, cpus, words",
    [(False, 3, 2.0, "6 CPUs but the cluster has 4"), (True, 2, 1.0, "cluster has 0 GPUs"), (False, 2, 2.0, None)],
)
def test_workers_asking_for_more_than_the_cluster_has(use_gpu, workers, cpus, words, monkeypatch):
    import ray

    from synth_empathy.errors import ClusterError
    from synth_empathy.training.ray_train import check_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    if words is None:
        check_resources(use_gpu, workers, cpus)
        return
    with pytest.raises(ClusterError, match=words) as e:
        check_resources(use_gpu, workers, cpus)
    assert "\n" not in str(e.value)
