"""Ray Train's checkpoints and failure handling on a local Ray with two CPU workers (gloo).

One driver subprocess (one Ray start; see ray_restart_driver.py) kills a worker mid-run
twice, once with the run on a local folder, once on S3 (moto's server on loopback: no
folder shared between driver and workers): without retries the run fails and a new run on the same storage resumes from Ray
Train's latest checkpoint; with ``max_failures=1`` Ray Train restarts the group from it on
its own. Either way the steps up to that checkpoint are not trained again: the report's
``starts`` says where each start began, and the workers' step lines show every step up to
it once."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import s3fs

from helpers import BUCKET
from synth_empathy.training import loop

STEP = re.compile(r"\[train\] step (\d+)/40 ")


def _phases(stdout):
    out, phase = {}, None
    for line in stdout.splitlines():
        if line.startswith("PHASE "):
            phase = line.split()[1]
        elif phase and (m := STEP.search(line)):
            out.setdefault(phase, Counter())[int(m.group(1))] += 1
    return out


def _check_resumed(report, steps):
    assert report["steps"] == 40 and report["workers"] == 2
    assert [s for s, _ in report["loss_curve"]] == list(range(1, 41))
    first, resumed = report["starts"]
    assert first == 0 and resumed % 5 == 0 and 5 <= resumed < 40, report["starts"]
    assert report["resumed_from_step"] == resumed
    # the steps up to the checkpoint ran once (before the kill), the rest at least once
    assert all(steps[s] == 1 for s in range(1, resumed + 1)), (resumed, steps)
    assert all(steps[s] >= 1 for s in range(resumed + 1, 41)), (resumed, steps)


@pytest.mark.e2e
def test_a_killed_worker_resumes_from_ray_trains_last_checkpoint(tiny_model, tmp_path, s3):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = str(Path(__file__).with_name("ray_restart_driver.py"))
    done = subprocess.run([sys.executable, script, tiny_model, str(tmp_path), s3, BUCKET], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    (tmp_path / "driver.log").write_text(done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "A FAILED WorkerGroupError" in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("KILLED") == 2
    steps = _phases(done.stderr)

    a = tmp_path / "a"
    report = json.loads((a / loop.REPORT).read_text())
    assert (a / loop.MODEL / "model.safetensors").is_file() and report["use_ray"]
    # B: a new run on the same storage; its steps are B's lines plus A's up to the checkpoint
    _check_resumed(report, steps["A"] + Counter({s: n for s, n in steps["B"].items()}) - Counter(
        {s: steps["A"][s] for s in range(report["resumed_from_step"] + 1, 41)}))  # fmt: skip
    assert min(steps["B"]) == report["resumed_from_step"] + 1  # B started after the checkpoint

    # C: on S3 alone - Ray Train's checkpoints, the model, the report
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3})
    c = f"{BUCKET}/c"
    report = json.loads(fs.cat_file(f"{c}/{loop.REPORT}"))
    assert fs.isfile(f"{c}/{loop.MODEL}/model.safetensors") and fs.isfile(f"{c}/{loop.MODEL}/tokenizer.json")
    assert report["model"] == f"s3://{c}/{loop.MODEL}"
    _check_resumed(report, steps["C"])
    # keep_checkpoints=1: the newest is 35 (Ray Train leaves the ones from before a restart)
    assert max(n.rsplit("/", 1)[1] for n in fs.ls(f"{c}/ray_train") if "step-" in n) == "step-0000035"
