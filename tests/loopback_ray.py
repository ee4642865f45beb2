"""A Ray head on loopback for tests that need a real cluster, started so that it never
meets another Ray on this machine (its own temp dir, free ports for everything a head
listens on, the autoscaler's metrics port included) and stopped by ending exactly the
processes it started: its process group and their descendants, never ``ray stop``,
which would end every Ray on the machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_ports

BIN = Path(sys.executable).parent


def descendants(groups: set) -> set:
    """Processes in the given process groups, and everything below them."""
    procs = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                procs[int(p)] = (int(rest[1]), int(rest[2]))  # ppid, pgid
            except (OSError, ValueError):
                pass
    chosen = {p for p, (_, pgid) in procs.items() if pgid in groups}
    grew = True
    while grew:
        grew = False
        for p, (ppid, _) in procs.items():
            if ppid in chosen and p not in chosen:
                chosen.add(p)
                grew = True
    return chosen


def kill(pids: set, grace: float = 5.0) -> None:
    """SIGTERM, a grace period, then SIGKILL for what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


def stop_groups(groups: set) -> None:
    """End the processes of these process groups and all below them, those started during
    the grace period too."""
    kill(descendants(groups))
    kill(descendants(groups), grace=0.0)


@dataclass
class Head:
    gcs: str  # 127.0.0.1:port, for ray.init / RAY_ADDRESS
    url: str  # the dashboard and its Jobs API
    env: dict  # what a client of this cluster runs with (its token included)
    temp_dir: str
    groups: set = field(default_factory=set)

    def processes(self, needle: str) -> list[int]:
        """This cluster's processes whose command line contains ``needle``."""
        found = []
        for pid in descendants(self.groups):
            try:
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(pid)
            except OSError:
                pass
        return found

    def subtree(self, pid: int) -> set:
        """``pid`` and every process below it."""
        return {pid} | {p for p in descendants(self.groups) if _below(p, pid)}

    def stop(self) -> None:
        stop_groups(self.groups)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _below(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


def start_head(
    num_cpus: int = 1,
    env: dict | None = None,
    args: list | None = None,
    token: str | None = None,
    port: int | None = None,
    tries: int = 3,
) -> Head:
    """``ray start --head`` on loopback (GCS on ``port``, a free one by default); with
    ``token``, token auth on and that token the cluster's (``Head.env`` has it in
    ``RAY_AUTH_TOKEN``, where clients look first).

    The ports are free when chosen, not when Ray's processes bind them: another process
    (one of Ray's own, binding port 0) can take one in between. Then ``ray start`` refuses,
    or its runtime-env agent fails a moment later and the raylet exits with it (seen in CI:
    "Address already in use"; the job then waited forever). Such a head is stopped and
    started again on new ports, ``tries`` times in all."""
    for attempt in range(tries):
        try:
            head = _start_head_once(num_cpus, env, args, token, port)
        except AssertionError:
            if attempt == tries - 1:
                raise
            continue
        if _stays_up(head):
            return head
        head.stop()
    raise AssertionError(f"ray start --head: the raylet did not stay up ({tries} tries, new ports each)")


def _stays_up(head: Head, seconds: float = 5.0) -> bool:
    """Whether the head's raylet is still running ``seconds`` after ``ray start`` returned
    (it exits with an agent that could not bind its port)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not head.processes("raylet/raylet"):
            return False
        time.sleep(0.5)
    return True


def _start_head_once(num_cpus, env, args, token, port) -> Head:
    tmp = tempfile.mkdtemp(prefix="se-ray-", dir="/tmp")  # Unix socket paths stay < 108 chars
    # distinct from each other and from a given GCS port (ray start refuses a repeat)
    gcs, dash, autoscaler, client, agent, metrics, runtime_env = [p for p in free_ports(8) if p != port][:7]
    port = port or gcs
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"}
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "AUTOSCALER_METRIC_PORT": str(autoscaler),
        **auth,
        **(env or {}),
    }
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--temp-dir={tmp}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--num-cpus={num_cpus}",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
        *(args or []),
    ]
    head = Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", dict(full_env), tmp)
    proc = subprocess.Popen(
        cmd, env=full_env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    head.groups.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"ray start --head failed:\n{out[-3000:]}"
    except BaseException:
        head.stop()
        raise
    return head
