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
