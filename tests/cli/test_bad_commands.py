"""Every command's bad input, as a new user types it: one ``error:`` line, exit code 2,
and nothing started (no Ray, no job submitted, no training, no output written).

In-process through the ``synth-empathy`` entry point (``synth_empathy.cli.main.main``),
with tripwires on what must not run (the ``guarded`` fixture of conftest.py): Ray's
start, the cluster connection, the training stack. The tests of ``run``'s bad seeds, outputs and models in a fresh process (models
never prepared) are in test_main.py.
"""

from __future__ import annotations

import shlex

import pytest

from synth_empathy.cli.main import main

# (command line, what its one error line must name). "out" is an output folder that
# need not exist; in.jsonl and in.parquet exist; missing.* do not.
BAD = {
    # submit: its own flags (the job's arguments are the job's)
    "submit unknown flag": ("submit --bogus-flag", "unrecognized arguments: --bogus-flag"),
    "submit zero timeout": ("submit --timeout 0", "argument --timeout: must be a number > 0, got 0"),
    "submit text timeout": ("submit --timeout soon", "argument --timeout: expected a number > 0, got 'soon'"),
    "submit unknown job": ("submit --job nosuch", "argument --job: invalid choice: 'nosuch'"),
    "submit missing working dir": ("submit --working-dir missing", "--working-dir 'missing' is not a folder"),
    # judge-validate: too few reference dialogues for an interval, before Ray
    "judge-validate small limit": ("judge-validate out --limit 10", "--limit: calibration.limit must be >= 50"),
    "judge-validate few dialogues": (
        "judge-validate out --data few.jsonl",
        "10 reference dialogues, at least 50 are needed for an interval: raise calibration.limit",
    ),
    "judge-validate no output": ("judge-validate", "the following arguments are required: output"),
    # evaluate
    "evaluate negative limit": ("evaluate out --limit -3", "--limit: evaluate.limit must be >= 1 or null, got -3"),
    "evaluate zero limit": ("evaluate out --limit 0", "--limit: evaluate.limit must be >= 1 or null, got 0"),
    "evaluate text limit": ("evaluate out --limit many", "argument --limit: invalid int value: 'many'"),
    "evaluate missing data": ("evaluate out --data missing.csv", "evaluate.data missing.csv: no such file"),
    "evaluate bad top_p": ("evaluate out evaluate.sampling.top_p=0", "evaluate.sampling.top_p must be in (0, 1]"),
    "evaluate no output": ("evaluate", "the following arguments are required: output"),
    # train: counts, shares, choices, sources
    "train zero batch": ("train train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    "train negative limit": ("train train.limit=-5", "train.limit must be >= 1 or null, got -5"),
    "train zero steps": ("train train.max_steps=0", "train.max_steps must be >= 1 or null, got 0"),
    "train zero epochs": ("train train.epochs=0", "train.epochs must be > 0"),
    "train zero learning rate": ("train train.learning_rate=0", "train.learning_rate must be > 0, got 0.0"),
    "train held-out share 1.5": ("train train.heldout_fraction=1.5", "train.heldout_fraction must be in [0, 1)"),
    "train held-out share 1": ("train train.heldout_fraction=1", "train.heldout_fraction must be in [0, 1), got 1.0"),
    "train negative share": ("train train.heldout_fraction=-0.1", "train.heldout_fraction must be in [0, 1)"),
    "train warmup share 1.5": ("train train.warmup_ratio=1.5", "train.warmup_ratio must be in [0, 1], got 1.5"),
    "train lora dropout 1": ("train train.lora.dropout=1", "train.lora.dropout must be in [0, 1), got 1.0"),
    "train unknown method": ("train train.method=qlora", "train.method must be full or lora, got 'qlora'"),
    "train missing ED file": ("train train.data=[missing.csv]", "facebook/empathetic_dialogues"),
    "train missing export": ("train train.data=[missing.jsonl]", "train.data missing.jsonl: no such file"),
    "train unknown flag": ("train --epochs 3", "unrecognized arguments: --epochs"),
    # judge
    "judge missing input": ("judge missing.jsonl out", "input missing.jsonl: no such file or folder"),
    "judge zero sample": ("judge in.jsonl out --sample 0", "--sample must be at least 1, got 0"),
    "judge no output": ("judge in.jsonl", "the following arguments are required: output"),
    "judge unknown key": ("judge in.jsonl out judge.engine.replica=2", "unknown config key 'judge.engine.replica'"),
    # select
    "select share 1.5": ("select in.parquet out --ratio 1.5", "--ratio: diversity.keep_ratio must be in (0, 1]"),
    "select share 0": ("select in.parquet out --ratio 0", "--ratio: diversity.keep_ratio must be in (0, 1]"),
    "select zero k": ("select in.parquet out --k 0", "--k: diversity.k must be >= 1 or null, got 0"),
    "select zero shards": ("select in.parquet out --k 1 --shards 0", "--shards: diversity.shards must be >= 1"),
    "select unknown method": ("select in.parquet out --k 1 --method best", "argument --method: invalid choice"),
    "select missing input": ("select missing.parquet out --k 1", "input missing.parquet: no such file or folder"),
    # calibrate
    "calibrate too few references": ("calibrate out --data few.jsonl", "10 reference dialogues, at least 50 are"),
    "calibrate limit under 50": ("calibrate out --limit 10", "--limit: calibration.limit must be >= 50"),
    "calibrate share 1.5": ("calibrate out calibration.share=1.5", "calibration.share must be in (0, 1), got 1.5"),
    "calibrate no output": ("calibrate", "the following arguments are required: output"),
    # config and run
    "run too few references": ("run seeds.path=few.jsonl", "the seed file (seeds.path; or give calibration.data)"),
    "config unknown key": ("config nosuch.key=1", "unknown config key 'nosuch.key'"),
    "config unknown preset": ("config --preset nosuch", "unknown preset 'nosuch'; known presets: default"),
    "config bad value": ("config train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1, got 0"),
    "run unknown flag": ("run --bogus", "unrecognized arguments: --bogus"),
    "run zero top_p": ("run generation.sampling.top_p=0", "generation.sampling.top_p must be in (0, 1], got 0.0"),
    "run zero seed limit": ("run seeds.limit=0", "seeds.limit must be >= 1 or null, got 0"),
    "run zero replicas": ("run judge.engine.replicas=0", "judge.engine.replicas must be >= 1, got 0"),
    "unknown command": ("trian", "argument command: invalid choice: 'trian'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_command_is_one_error_line_exit_2_and_nothing_runs(case, guarded, capsys):
    line, names = BAD[case]
    code = main(shlex.split(line))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert names in lines[0], lines[0]
    assert captured.out == ""
    assert not (guarded / "out").exists() and not (guarded / "cache").exists()
    assert not (guarded / "runs").exists()  # train's default output folder


@pytest.mark.parametrize("override", ["train.heldout_fraction=0", "train.warmup_ratio=0", "train.save_steps=0"])
def test_a_share_or_count_of_0_that_means_none_is_accepted(override):
    """0 is documented for these (no held-out split, no warmup, no checkpoints): not bad input."""
    from synth_empathy.config import load_config

    load_config("default", [override])
