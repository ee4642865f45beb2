"""``synth-empathy submit``'s contract with scripts: the job id alone on stdout, exit 0
when the job SUCCEEDED, 1 when it FAILED, 3 when the cluster stopped answering while
the job ran (a dropped port-forward), 2 for bad input before any job exists (a token
cluster and no token, ``--timeout`` with ``--no-follow``).

The cluster here is a stub of the dashboard's Jobs API (plain HTTP on loopback) driven
through Ray's real ``JobSubmissionClient``; "losing contact" is shutting that server
down while the job is RUNNING, which is what a dropped ``kubectl port-forward`` looks
like from the client. A real Ray head is not needed for any of this and would cost a
minute of the CI machine per start.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import ray
import yaml

from synth_empathy.cli.submit import main
from synth_empathy.cluster import submit as cs

TOKEN = "s3cr3t-token"
REPO = Path(__file__).resolve().parents[2]


class StubJobsApi:
    """The few Jobs API routes the SDK uses; every job reports the statuses in
    ``statuses`` one per status request, the last one for ever."""

    def __init__(
        self, statuses=("RUNNING", "SUCCEEDED"), token: str | None = None, message: str = "", ray_version=None
    ):
        self.statuses, self.token, self.message = list(statuses), token, message
        self.ray_version = ray_version or ray.__version__
        self.submitted: list[dict] = []
        self.stopped: list[str] = []
        self.job_exists = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep the test output clean
                pass

            def _send(self, code: int, body) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if stub.token is None or self.path == "/api/version":
                    return True
                got = self.headers.get("Authorization")
                if got is None:
                    self._send(401, b"Unauthorized: Missing authentication token")
                    return False
                if got != f"Bearer {stub.token}":
                    self._send(403, b"Forbidden: Invalid authentication token")
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == "/api/version":
                    return self._send(200, {"version": "4", "ray_version": stub.ray_version, "ray_commit": "x"})
                if self.path.startswith("/api/packages/"):
                    return self._send(404, {})
                if self.path == "/api/jobs/":
                    return self._send(200, [])
                if self.path.startswith("/api/jobs/raysubmit_stub"):
                    status = stub.statuses.pop(0) if len(stub.statuses) > 1 else stub.statuses[0]
                    if stub.stopped:
                        status = "STOPPED"
                    return self._send(
                        200,
                        {
                            "type": "SUBMISSION",
                            "submission_id": "raysubmit_stub",
                            "status": status,
                            "entrypoint": stub.submitted[0]["entrypoint"],
                            "message": stub.message if status == "FAILED" else "",
                        },
                    )
                self._send(404, {})

            def do_PUT(self):  # the working_dir package upload
                if self._authorized():
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    self._send(200, {})

            def do_POST(self):
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/api/jobs/":
                    stub.submitted.append(body)
                    stub.job_exists.set()
                    return self._send(200, {"job_id": "raysubmit_stub", "submission_id": "raysubmit_stub"})
                if self.path.endswith("/stop"):
                    stub.stopped.append(self.path)
                    return self._send(200, {"stopped": True})
                self._send(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kill(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "run_pipeline.py").write_text("print('hi')\n")
    return tmp_path


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(cs, "POLL_S", 0.05)
    monkeypatch.setattr(cs, "LOST_AFTER_S", 1.0)
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-home")  # no ~/.ray/auth_token of the machine's user


def _submit(stub, workdir, *extra):
    return main(["--address", stub.url, "--working-dir", str(workdir), "--skip-resource-check", *extra, "--"])


@pytest.mark.parametrize("final,code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_exit_code_follows_the_final_status_and_stdout_is_the_job_id(final, code, workdir, capsys):
    stub = StubJobsApi(["PENDING", "RUNNING", final], message="exit code 1")
    try:
        assert _submit(stub, workdir) == code
    finally:
        stub.kill()
    out, err = capsys.readouterr()
    assert out == "raysubmit_stub\n"
    assert f"raysubmit_stub: {final}" in err
    assert stub.submitted[0]["entrypoint"] == "python -P jobs/run_pipeline.py"


def test_lost_contact_while_running_exits_3_and_says_the_job_may_run_on(workdir, capsys):
    stub = StubJobsApi(["RUNNING"])
    killer = threading.Thread(target=lambda: stub.job_exists.wait(30) and stub.kill(), daemon=True)
    killer.start()
    assert _submit(stub, workdir) == cs.EXIT_LOST == 3
    out, err = capsys.readouterr()
    assert out == "raysubmit_stub\n"  # printed before contact was lost: a script can ask about it later
    assert "lost contact" in err and "ray job status raysubmit_stub" in err
    assert "FAILED" not in err


def test_no_follow_prints_the_job_id_and_returns(workdir, capsys):
    stub = StubJobsApi(["PENDING"])
    try:
        assert _submit(stub, workdir, "--no-follow") == 0
    finally:
        stub.kill()
    assert capsys.readouterr().out == "raysubmit_stub\n"


def test_timeout_with_no_follow_is_refused_before_anything_is_submitted(workdir, capsys):
    stub = StubJobsApi()
    try:
        assert _submit(stub, workdir, "--no-follow", "--timeout", "60") == 2
    finally:
        stub.kill()
    out, err = capsys.readouterr()
    assert out == "" and not stub.submitted
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --timeout needs the job followed")


def test_timeout_while_following_stops_the_job(workdir, capsys):
    stub = StubJobsApi(["RUNNING"])
    try:
        assert _submit(stub, workdir, "--timeout", "0.5") == 1
    finally:
        stub.kill()
    assert stub.stopped == ["/api/jobs/raysubmit_stub/stop"]
    assert "timed out after 0.5 s; stopping it" in capsys.readouterr().err


def test_token_cluster_without_a_token_is_one_line_before_submitting(workdir, capsys):
    stub = StubJobsApi(token=TOKEN)
    try:
        assert _submit(stub, workdir) == 2
    finally:
        stub.kill()
    out, err = capsys.readouterr()
    assert not stub.submitted and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "requires a token and none was found" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]


def test_a_wrong_token_is_refused_in_one_line(workdir, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    stub = StubJobsApi(token=TOKEN)
    try:
        assert _submit(stub, workdir) == 2
    finally:
        stub.kill()
    err = capsys.readouterr().err
    assert not stub.submitted and "refused the token from RAY_AUTH_TOKEN (HTTP 403)" in err


@pytest.mark.parametrize("source", ["env", "file"])
def test_the_token_is_sent_on_every_request(source, workdir, capsys, monkeypatch, tmp_path):
    if source == "env":
        monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    else:
        (tmp_path / "token").write_text(TOKEN + "\n")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    stub = StubJobsApi(["RUNNING", "SUCCEEDED"], token=TOKEN)
    try:
        assert _submit(stub, workdir) == 0  # the stub answers 401/403 to any request without it
    finally:
        stub.kill()
    assert stub.submitted


# --------------------------------------------------------------------------- versions


def _refused(stub, workdir, capsys, *extra) -> str:
    try:
        assert _submit(stub, workdir, *extra) == 2
    finally:
        stub.kill()
    out, err = capsys.readouterr()
    assert out == "" and not stub.submitted
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _edited(src: str, tmp_path, edit) -> str:
    docs = list(yaml.safe_load_all((REPO / src).read_text()))
    edit(docs[-1])
    path = tmp_path / Path(src).name
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def test_the_shipped_cluster_files_name_the_packages_versions():
    from synth_empathy.cluster.image import cluster_file_mismatches

    for name in ("cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml", "cluster/aws-gpu.yaml"):
        assert cluster_file_mismatches(yaml.safe_load_all((REPO / name).read_text())) == [], name


def test_a_manifest_naming_an_image_of_another_version_is_refused_before_the_job_exists(workdir, tmp_path, capsys):
    def old_workers(doc):
        doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "r.io/synth-empathy:0.0.9"

    path = _edited("cluster/kuberay/raycluster.yaml", tmp_path, old_workers)
    line = _refused(StubJobsApi(), workdir, capsys, "--cluster-file", path)
    assert line.startswith(f"error: {path}: spec.workerGroupSpecs.0.template.spec.containers.0.image: ")
    assert "r.io/synth-empathy:0.0.9 is the image of synth-empathy 0.0.9 but pyproject.toml is version 0.1.0" in line


def test_a_rayjob_whose_runtime_env_pins_another_vllm_is_refused(workdir, tmp_path, capsys):
    def old_vllm(doc):
        doc["spec"]["runtimeEnvYAML"] = "pip:\n  - vllm==0.29.0\n"

    path = _edited("cluster/kuberay/rayjob.yaml", tmp_path, old_vllm)
    line = _refused(StubJobsApi(), workdir, capsys, "--cluster-file", path)
    assert f"{path}: spec.runtimeEnvYAML: pip pins vllm==0.29.0 but pyproject.toml pins vllm==0.32.0" in line


def test_a_launcher_on_a_stock_image_of_another_ray_is_refused(workdir, tmp_path, capsys):
    def stock(doc):
        doc["docker"]["image"] = "rayproject/ray:2.59.0-py311-gpu"

    path = _edited("cluster/aws-gpu.yaml", tmp_path, stock)
    line = _refused(StubJobsApi(), workdir, capsys, "--cluster-file", path)
    assert (
        f"{path}: docker.image: rayproject/ray:2.59.0-py311-gpu runs ray 2.59.0 but pyproject.toml pins ray==2." in line
    )


def test_a_cluster_running_another_ray_is_refused_before_the_job_exists(workdir, capsys):
    line = _refused(StubJobsApi(ray_version="2.59.0"), workdir, capsys)
    assert line.startswith(f"error: the cluster runs ray 2.59.0 but pyproject.toml pins ray=={ray.__version__}")
