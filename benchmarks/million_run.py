"""A million seeds through every stage to the selection, with stand-ins for the models.

    .venv/bin/python benchmarks/million_run.py [--seeds 1000000] [--samples 1] [--out DIR]
        [--where local|cluster] [--kill-at 0.5 | --no-kill] [key=value ...]

A rehearsal, not a model run: ``engine.model=standin`` for the generator and the
discriminator and ``quality.embedder=standin`` (:mod:`synth_empathy.core.standin`), with
the ``paper`` preset's replicas, batches and parts. Everything else is the product's own
code: ``python -m synth_empathy run`` on a real Ray, Parquet parts, resume, selection.
Its figures are the pipeline's own costs around the engines, never model throughput.

1. Seeds: ``--seeds`` distinct seed pairs written as one JSONL file (the EmpatheticDialogues
   validation pairs when ``--ed`` names them, else the packaged seeds, repeated, each copy's
   reply marked with its copy number so that no pair repeats).
2. The run (``run_id=full``), watched from outside: per stage (read from the driver's
   ``[stage] running`` / ``done in`` lines) wall time, rows/s, CPU seconds of every process
   of the run (driver, Ray's own processes, workers) per row, peak RSS of the driver and
   of the workers together, objects and bytes written.
3. The kill (``run_id=killed``): the same command, SIGKILL of the driver's process group
   and of every process of the run once the discriminator's parts hold ``--kill-at`` of its
   rows, then the resume: seconds from the stage's start to its salvage line, rows kept,
   rows computed twice (the stand-in engines count the rows they answer: the killed
   attempt's answers less the rows its parts kept), and every id once at the end.

``--where cluster`` runs the same on a head and a worker node on loopback (``ray start``,
2 CPUs each) writing to a loopback S3 (moto's server); there the kill takes only the
driver's process group, and the resume runs on the same cluster. The processes are found by a tag in
their environment, never by name, so another Ray on the machine is left alone.

Writes ``million_run.json`` into ``--out`` and one record per phase to
``benchmarks/results/million_run.jsonl``; prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos import TAG_VAR, kill_all, tagged  # noqa: E402  (processes found by a tag in their environment)
from machine import cpu_name, record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def standins(counts: Path, pace: float | None = None) -> list[str]:
    """The stand-in overrides; the engines count the rows they answer under ``counts``, and
    the discriminator's replicas answer ``pace`` tokens/s each when given."""
    engine = f"standin:count_dir={counts}"
    paced = engine + (f",tokens_per_s={pace}" if pace else "")
    return [
        f"generation.engine.model={engine}",
        f"discriminator.engine.model={paced}",
        "quality.embedder=standin",
        "judge.enabled=false",  # the rehearsal ends at the selection
    ]


def answered(counts: Path, stage: str) -> int:
    """Rows the stand-in engines of ``stage`` answered so far, every attempt together."""
    return sum(int(n) for f in (counts / stage).glob("*.txt") for n in f.read_text().split())


KEYED = ["generations", "samples", "discriminated", "scored"]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- seeds ------------------------------------------------------------------------------
def write_seeds(n: int, path: Path, ed: str | None) -> None:
    """``n`` distinct seed pairs as JSONL (pairs layout)."""
    from synth_empathy.stages.seed_sources import default_seed_path, read_seeds

    base = read_seeds(ed or default_seed_path()).frame
    contexts, responses, emotions = list(base.context), list(base.response), list(base.emotion)
    with open(path, "w") as f:
        for i in range(n):
            k, copy = i % len(contexts), i // len(contexts)
            response = responses[k] if copy == 0 else f"{responses[k]} ({copy})"
            f.write(json.dumps({"context": contexts[k], "response": response, "emotion": emotions[k]}) + "\n")


# -- the processes of a run, read from /proc ---------------------------------------------
def _cpu_rss(pid: int) -> tuple[float, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None
    return (int(rest[11]) + int(rest[12])) / TICK, rss  # utime + stime; resident bytes


class Watch:
    """Polls every process of a run once a second: CPU seconds (a process's last reading
    counts after it exits), peak RSS of the driver and of all the others together."""

    def __init__(self, tag: str, driver_pid: int, interval: float = 1.0):
        self.tag, self.driver, self.interval = tag, driver_pid, interval
        self.cpu: dict[int, float] = {}
        self.peak_driver = self.peak_workers = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self):
        driver = workers = 0
        for pid in set(tagged(self.tag)) | {self.driver}:
            got = _cpu_rss(pid)
            if got is None:
                continue
            with self._lock:
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), got[0])
            if pid == self.driver:
                driver = got[1]
            else:
                workers += got[1]
        with self._lock:
            self.peak_driver, self.peak_workers = max(self.peak_driver, driver), max(self.peak_workers, workers)

    def mark(self) -> dict:
        """CPU seconds so far and the peaks since the last mark (the peaks restart)."""
        self.poll()
        with self._lock:
            out = {
                "cpu_s": sum(self.cpu.values()),
                "peak_driver_rss": self.peak_driver,
                "peak_workers_rss": self.peak_workers,
            }
            self.peak_driver = self.peak_workers = 0
        return out

    def stop(self):
        self._stop.set()
        self.thread.join()


# -- one attempt of the pipeline ---------------------------------------------------------
STAGE_LINE = re.compile(r"\[(\w+)\] (running|done in|finished in an earlier attempt|resuming)")


class Attempt:
    """``python -m synth_empathy run ...`` in its own process group, its log read line by
    line for the stage boundaries."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, tag: str):
        self.tag = tag
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synth_empathy", "run", *args],
            env={**env, TAG_VAR: tag},
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.watch = Watch(tag, self.proc.pid)
        self.stages: dict[str, dict] = {}
        self.events: list[tuple[float, str, str]] = []
        self.current: str | None = None
        self.t0 = time.time()
        self.log = open(log, "a")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            m = STAGE_LINE.search(line)
            if not m:
                continue
            stage, what = m.group(1), m.group(2)
            now = time.time()
            self.events.append((now, stage, what))
            if what == "running":
                self.current = stage
                self.stages[stage] = {"start": now, **{f"{k}_0": v for k, v in self.watch.mark().items()}}
            elif what == "done in" and stage in self.stages:
                s = self.stages[stage]
                m1 = self.watch.mark()
                s.update(
                    seconds=round(now - s["start"], 2),
                    cpu_s=round(m1["cpu_s"] - s["cpu_s_0"], 1),
                    peak_driver_rss=m1["peak_driver_rss"],
                    peak_workers_rss=m1["peak_workers_rss"],
                )
                self.current = None

    def wait(self) -> int:
        rc = self.proc.wait()
        self.reader.join()
        self.watch.stop()
        self.log.close()
        return rc

    def kill(self, cluster: bool = False) -> float:
        """SIGKILL the driver's group and every process of the run; seconds until none is left.
        On the loopback cluster only the driver's group: the nodes stay up, as a cluster does
        when the machine that submitted the run dies."""
        t0 = time.time()
        if cluster:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            kill_all(self.proc, self.tag)
        self.wait()
        return time.time() - t0


# -- the run folder ----------------------------------------------------------------------
class Folder:
    """The run folder on the local disk or the loopback S3."""

    def __init__(self, url: str, storage_options: dict):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)

    def objects(self, stage: str) -> tuple[int, int]:
        try:
            info = self.fs.find(f"{self.root}/{stage}", detail=True)
        except FileNotFoundError:
            return 0, 0
        return len(info), sum(int(v.get("size") or 0) for v in info.values())

    def parts(self, stage: str) -> list[str]:
        self.fs.invalidate_cache(f"{self.root}/{stage}")  # s3fs would answer from a stale listing
        try:
            return [p for p in self.fs.find(f"{self.root}/{stage}") if p.endswith(".parquet")]
        except FileNotFoundError:
            return []

    def rows_in_parts(self, stage: str, known: dict[str, int]) -> int:
        """Rows of the parts that read back (footers; ``known`` caches a part's count)."""
        for part in self.parts(stage):
            if part not in known:
                try:
                    with self.fs.open(part, "rb") as f:
                        known[part] = pq.ParquetFile(f).metadata.num_rows
                except Exception:  # being written: no footer yet
                    continue
        return sum(known.values())

    def done(self, stage: str) -> bool:
        return self.fs.exists(f"{self.root}/{stage}.done.json")

    def json(self, name: str):
        with self.fs.open(f"{self.root}/{name}") as f:
            return json.load(f)

    def ids(self, stage: str, key: str = "sample_id") -> list:
        import pyarrow.dataset as pads

        self.fs.invalidate_cache(f"{self.root}/{stage}")  # parts may have gone since the last listing
        data = pads.dataset(f"{self.root}/{stage}", filesystem=self.fs, format="parquet")
        return data.to_table(columns=[key]).column(key).to_pylist()


def stage_rows(attempt: Attempt, folder: Folder) -> list[dict]:
    rows = []
    manifest = folder.json("manifest.json")
    for name, s in attempt.stages.items():
        if "seconds" not in s:
            continue
        marker = manifest.get("stages", {}).get(name, {})
        n = int(marker.get("rows") or 0)
        objects, size = folder.objects(name)
        rows.append(
            {
                "stage": name,
                "rows": n,
                "seconds": s["seconds"],
                "rows_per_s": round(n / s["seconds"], 1) if s["seconds"] else None,
                "cpu_s": s["cpu_s"],
                "cpu_ms_per_row": round(1000 * s["cpu_s"] / n, 3) if n else None,
                "peak_driver_mib": round(s["peak_driver_rss"] / 2**20),
                "peak_workers_mib": round(s["peak_workers_rss"] / 2**20),
                "objects": objects,
                "mib_written": round(size / 2**20, 1),
            }
        )
    return rows


def check_ids(folder: Folder, n_expected: int) -> dict:
    """Every id once in every keyed stage; the generations hold every expected row."""
    out = {}
    for stage in KEYED:
        ids = folder.ids(stage)
        out[stage] = {"rows": len(ids), "unique": len(set(ids))}
    out["ok"] = all(v["rows"] == v["unique"] for v in out.values()) and out["generations"]["rows"] == n_expected
    return out


# -- the loopback cluster and S3 ---------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A head and a worker node (2 CPUs each) on loopback, and moto's S3 server.

    The S3 server is a process of its own, untagged (its CPU is the store's, not the
    pipeline's), with every object in a file under the cluster's temp folder: moto keeps an
    object in memory up to ``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE`` bytes (5 MiB by default, more
    than any part here), which at 1M rows would hold every part of every stage in RAM."""

    def __init__(self, env: dict[str, str], tag: str):
        import boto3

        self.tmp = tempfile.mkdtemp(prefix="se-mr-", dir="/tmp")
        self.s3_port = free_port()
        s3_dir = Path(self.tmp) / "s3"
        s3_dir.mkdir()
        s3_env = {**env, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": "1", "TMPDIR": str(s3_dir)}
        self.s3 = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
            env=s3_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.s3_dir = s3_dir
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        creds = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        client = boto3.client("s3", endpoint_url=self.endpoint, **creds)
        for _ in range(100):  # the server takes a few seconds to import
            try:
                client.create_bucket(Bucket="rehearsal")
                break
            except Exception:
                if self.s3.poll() is not None:
                    raise SystemExit(f"moto's S3 server exited (rc {self.s3.returncode})") from None
                time.sleep(0.3)
        else:
            raise SystemExit(f"moto's S3 server did not answer on {self.endpoint}")
        self.port = free_port()
        ray = str(Path(sys.executable).parent / "ray")
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]

        def ports():
            return [
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
            ]

        head = [ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.tmp}"]
        head += [f"--ray-client-server-port={free_port()}", *common, *ports()]
        worker = [ray, "start", f"--address=127.0.0.1:{self.port}", f"--temp-dir={self.tmp}/w", *common, *ports()]
        self.env = {**env, TAG_VAR: tag, "RAY_AUTH_MODE": "disabled"}
        for cmd in (head, worker):
            done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
            if done.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        self.tag = tag

    def stop(self):
        for pid in tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.s3.kill()
        self.s3.wait()

    def s3_figures(self) -> dict:
        """The S3 server's resident memory now and the bytes of its object files."""
        got = _cpu_rss(self.s3.pid)
        on_disk = 0  # its temp files are unlinked at creation: read them through its open descriptors
        for fd in Path(f"/proc/{self.s3.pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith(str(self.s3_dir)):
                    on_disk += os.stat(fd).st_size
            except OSError:
                continue
        return {"s3_server_rss_mib": round(got[1] / 2**20) if got else None, "s3_files_mib": round(on_disk / 2**20)}


# -- main --------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=1, help="generation.samples_per_seed (the paper: 5)")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--out", default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--where", choices=("local", "cluster"), default="local")
    ap.add_argument("--ed", default=str(REPO.parent / "shared" / "data" / "ed" / "valid.csv"))
    ap.add_argument("--kill-at", type=float, default=0.5, help="share of the discriminator's rows written")
    ap.add_argument("--no-kill", action="store_true")
    ap.add_argument("--pace", type=float, default=None, help="tokens/s per discriminator replica (a slower engine)")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "million_run.jsonl"))
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    out = Path(a.out or tempfile.mkdtemp(prefix="million-"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = out / f"seeds-{a.seeds}.jsonl"
    # The default --ed is beside the main checkout; from a worktree elsewhere it is missing
    # and the packaged seeds (shorter texts) stand in: say which, the figures differ.
    ed = a.ed if Path(a.ed).exists() else None
    source = f"EmpatheticDialogues pairs from {ed}" if ed else f"the packaged seeds (no file at {a.ed})"
    print(f"seeds: {source}", flush=True)
    if not seeds.exists():
        t = time.time()
        write_seeds(a.seeds, seeds, ed)
        print(f"wrote {a.seeds:,} seeds in {time.time() - t:.0f} s: {seeds}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    tag = f"mr-{os.getpid()}"
    cluster = None
    base = [f"--preset={a.preset}", f"seeds.path={seeds}", f"generation.samples_per_seed={a.samples}"]
    if a.where == "cluster":
        cluster = LoopbackCluster(env, tag)
        env = cluster.env
        # the product's own storage options, which travel to the cluster's workers with the stage
        base += [f"ray.address=127.0.0.1:{cluster.port}", f"storage.endpoint_url={cluster.endpoint}"]
        base += ["storage.key=testing", "storage.secret=testing", "storage.region=us-east-1"]
        output = "s3://rehearsal/runs"
        fs_options = {"client_kwargs": {"endpoint_url": cluster.endpoint}, "key": "testing", "secret": "testing"}
    else:
        output = str(out / "runs")
        fs_options = {}
    base += [f"output={output}", *a.overrides]
    common = {"machine": cpu_name(), "where": a.where, "seeds": a.seeds, "samples_per_seed": a.samples}
    common["preset"], common["overrides"], common["pace"] = a.preset, a.overrides, a.pace
    common["seed_source"] = "ed" if ed else "packaged"
    result: dict = {**common, "note": "stand-in engines and embedder: a benchmark instrument, not model output"}
    try:
        # 1. The whole run, watched.
        t = time.time()
        full = Attempt([*base, *standins(out / "counts" / "full", a.pace), "run_id=full"], env, out / "full.log", tag)
        rc = full.wait()
        folder = Folder(f"{output}/full", fs_options)
        result["full"] = {
            "rc": rc,
            "seconds": round(time.time() - t, 1),
            "stages": stage_rows(full, folder) if rc == 0 else [],
            "ids": check_ids(folder, a.seeds * a.samples) if rc == 0 else None,
        }
        if cluster:
            result["full"].update(cluster.s3_figures())
        record(a.results, {**common, "phase": "full", **result["full"]})
        if rc:
            print(f"the run failed (rc {rc}): see {out / 'full.log'}", file=sys.stderr)
            return 1
        if a.no_kill:
            return 0
        # 2. Killed halfway through the discriminator, then resumed.
        folder = Folder(f"{output}/killed", fs_options)
        total = a.seeds * a.samples
        counts = out / "counts" / "killed"
        killed = [*base, *standins(counts, a.pace), "run_id=killed"]
        first = Attempt(killed, env, out / "killed.log", tag)
        known: dict[str, int] = {}
        while first.proc.poll() is None:
            if first.current == "discriminated" and folder.rows_in_parts("discriminated", known) >= a.kill_at * total:
                break
            time.sleep(1.0)
        if first.proc.poll() is not None:
            print("the run ended before the kill", file=sys.stderr)
            return 1
        kill_s = first.kill(cluster=cluster is not None)
        kept = folder.rows_in_parts("discriminated", {})
        answered_before = answered(counts, "discriminator")
        t = time.time()
        second = Attempt(killed, env, out / "killed.log", tag)
        rc = second.wait()
        resumed = [e for e in second.events if e[1] == "discriminated"]
        start = next((e[0] for e in resumed if e[2] == "running"), None)
        salvage = next((e[0] for e in resumed if e[2] == "resuming"), None)
        answered_after = answered(counts, "discriminator") - answered_before
        result["kill"] = {
            "rc": rc,
            "killed_after_rows": kept,
            "kill_seconds": round(kill_s, 1),
            "resume_seconds": round(time.time() - t, 1),
            "salvage_seconds": round(salvage - start, 1) if start and salvage else None,
            "rows_answered_before_kill": answered_before,
            "rows_kept": kept,
            "rows_computed_twice": answered_before - kept,
            "rows_answered_on_resume": answered_after,
            "stages_on_resume": stage_rows(second, folder) if rc == 0 else [],
            "ids": check_ids(folder, total) if rc == 0 else None,
        }
        record(a.results, {**common, "phase": "kill", **result["kill"]})
        return 0 if rc == 0 and result["kill"]["ids"]["ok"] and result["full"]["ids"]["ok"] else 1
    finally:
        (out / "million_run.json").write_text(json.dumps(result, indent=1))
        if cluster:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
