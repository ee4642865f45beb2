"""A run that the cluster check refuses leaves no run folder behind, and never touches a
folder it did not make (a resumed run's)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import synth_empathy.pipeline as pipeline
from synth_empathy.cli import main
from synth_empathy.errors import ClusterError

CPU_RUN = ["seeds.limit=2", "ray.num_cpus=2", "calibration.enabled=false", "quality.threshold=50"]


def test_gpu_run_on_a_machine_without_gpus_leaves_no_folder(tmp_path):
    # The embedded default with its generator asking for a GPU: packaged models, no download,
    # and a local Ray that has no GPU to offer. In a process of its own: a Ray started in the
    # test process would stay in its logging and state for the tests after it.
    args = ["run", *CPU_RUN, "generation.engine.gpus_per_replica=1", f"output={tmp_path}", "run_id=r"]
    proc = subprocess.run([sys.executable, "-m", "synth_empathy", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "generation.engine.gpus_per_replica=1 but the cluster has no GPUs" in errors[0]
    assert not (tmp_path / "r").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_keeps_its_folder(tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 1\n")

    def refuse(cfg, *a, **kw):
        raise ClusterError("generation.engine.gpus_per_replica=1 but the cluster has no GPUs")

    monkeypatch.setattr(pipeline, "init_ray", refuse)
    assert main(["run", *CPU_RUN, f"output={tmp_path}", "run_id=r"]) == 2
    assert (run / "config.yaml").read_text() == "seed: 1\n"


@pytest.mark.parametrize("existing", [False, True])
def test_nothing_is_written_before_the_check(tmp_path, monkeypatch, existing):
    run = tmp_path / "r"
    if existing:
        run.mkdir()

    def refuse(cfg, *a, **kw):
        assert not run.exists() or list(run.iterdir()) == [], "something was written before the cluster check"
        raise ClusterError("refused")

    monkeypatch.setattr(pipeline, "init_ray", refuse)
    assert main(["run", *CPU_RUN, f"output={tmp_path}", "run_id=r"]) == 2
    assert not run.exists()
