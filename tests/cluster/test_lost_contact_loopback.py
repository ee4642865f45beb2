"""``synth-empathy submit`` exits 3 when the cluster stops answering while it follows a
job that runs on: a real Ray head on loopback (token auth on), a small job that writes a
heartbeat, and the head's dashboard - the Jobs API a port-forward reaches - killed while
the job runs. The job itself lives on (its driver belongs to the head's raylet, not to
the dashboard), which the heartbeat shows after ``submit`` has returned.
"""

from __future__ import annotations

import threading
import time

import pytest

from loopback_ray import kill, start_head
from synth_empathy.cli.submit import main
from synth_empathy.cluster import submit as cs

pytestmark = pytest.mark.e2e

TOKEN = "lost-contact-test-token"
JOB = """\
import sys, time
with open(sys.argv[1], "a") as f:
    for _ in range(600):  # about a minute
        f.write("."); f.flush(); time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def head():
    head = start_head(num_cpus=1, token=TOKEN)
    try:
        yield head
    finally:
        head.stop()


def test_killed_dashboard_while_following_exits_3_and_the_job_runs_on(head, tmp_path, monkeypatch, capsys):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "run_pipeline.py").write_text(JOB)
    beat = tmp_path / "heartbeat"
    monkeypatch.setattr(cs, "LOST_AFTER_S", 3.0)
    monkeypatch.setattr(cs, "POLL_S", 0.2)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    [dashboard] = head.processes("dashboard/dashboard.py")
    killed = threading.Event()

    def kill_dashboard_once_the_job_runs():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (beat.exists() and beat.stat().st_size >= 5):
            time.sleep(0.2)
        kill(head.subtree(dashboard), grace=0.0)  # TERM then KILL at once: the Jobs API vanishes mid-stream
        killed.set()

    threading.Thread(target=kill_dashboard_once_the_job_runs, daemon=True).start()
    started = time.monotonic()
    code = main(["--address", head.url, "--working-dir", str(tmp_path), "--skip-resource-check", "--", str(beat)])
    took = time.monotonic() - started
    out, err = capsys.readouterr()
    assert killed.is_set(), err[-3000:]
    assert code == cs.EXIT_LOST == 3, err[-3000:]
    job_id = out.strip()
    assert job_id.startswith("raysubmit_") and "\n" not in job_id
    lost = [line for line in err.splitlines() if "lost contact" in line]
    assert len(lost) == 1 and f"ray job status {job_id}" in lost[0] and "the job may still be running" in lost[0]
    assert "FAILED" not in err and took < 60
    # The job runs on without the dashboard.
    size = beat.stat().st_size
    time.sleep(1.5)
    assert beat.stat().st_size > size
