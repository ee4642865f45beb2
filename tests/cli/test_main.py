"""Bad input ends with one ``error:`` line and exit code 2, before any model loads.

"Before any model loads" is checked by pointing the model cache at an empty folder:
the packaged generator would be converted into it the moment an engine was built.
"""

import os
import subprocess
import sys

import pytest


def run_cli(args, tmp_path):
    env = dict(os.environ, SYNTH_EMPATHY_CACHE=str(tmp_path / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "synth_empathy", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def bad_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    few = tmp_path / "few.jsonl"  # 5 reference dialogues: the judge validation needs 50
    few.write_text("".join(f'{{"context": "I lost {i}.", "response": "Sorry about {i}."}}\n' for i in range(5)))
    return {
        "missing seed file": (["run", f"seeds.path={tmp_path}/missing.jsonl"], "seed file not found"),
        "empty seed file": (["run", f"seeds.path={empty}"], str(empty)),
        "unknown preset": (["run", "--preset", "huge"], "unknown preset 'huge'"),
        "unknown key": (["run", "generation.samples_per_sed=2"], "did you mean generation.samples_per_seed"),
        "unwritable output": (["run", f"output={a_file}/runs"], "is not writable"),
        "missing model folder": (["run", "discriminator.engine.model=/nonexistent/model"], "/nonexistent/model"),
        "too few judge references": (["run", f"calibration.data={few}"], "at least 50 are needed for an interval"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing seed file",
        "empty seed file",
        "unknown preset",
        "unknown key",
        "unwritable output",
        "missing model folder",
        "too few judge references",
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_models(case, tmp_path):
    args, expected = bad_inputs(tmp_path)[case]
    result = run_cli(args + [f"output={tmp_path}/out"] if "output=" not in " ".join(args) else args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr[-2000:]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (tmp_path / "cache").exists(), "a model was prepared before the input was checked"
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), f"a failed preflight left {list(out.iterdir())}"


def test_config_command_prints_the_resolved_config(tmp_path):
    result = run_cli(["config", "--preset", "paper", "quality.threshold=50"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "threshold: 50\n" in result.stdout and "Meta-Llama-3-70B-Instruct" in result.stdout


def test_config_docs_lists_every_option(tmp_path):
    result = run_cli(["config", "--docs"], tmp_path)
    assert result.returncode == 0
    assert "| `quality.threshold` | `'auto'` |" in result.stdout
