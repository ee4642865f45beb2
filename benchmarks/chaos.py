"""Repeated faults: SIGKILL the driver at seeded random moments, resume, check the run.

    .venv/bin/python benchmarks/chaos.py [--kills 5] [--seed 0] [--out DIR] [key=value ...]

One small run of the real pipeline (real Ray, vLLM CPU engines, packaged models; every
stage, the judge included; parts of two rows so that a kill finds finished parts) is
started with ``python -m synth_empathy run``, and killed K times: for each kill a stage
is drawn (seeded) from the next three not finished yet and a delay of 10-120 s after
that stage starts (engine start-up, then batches finishing: parts being written); the
driver's process group and every process carrying this run's tag (raylet, GCS,
workers, vLLM engine cores) get SIGKILL. Then the same command resumes the run.
After the last kill the run is let finish, and the script checks:

* every expected ``sample_id`` is in every keyed stage exactly once (the generations
  hold seeds x samples_per_seed; each later stage holds exactly the ids its input
  passes on);
* no finished part was recomputed: every Parquet part that read back whole at a kill
  is still there, byte for byte, at the end; every marker written before a kill is
  unchanged;
* nothing is left running: after each kill no tagged process is alive, and none is a
  minute after the final run's driver exits (Ray's workers and vLLM's engine processes
  take a few seconds to notice; the time is recorded).

Prints one JSON record per kill and a summary, and writes ``chaos.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from machine import cpu_name

STAGES = ["seeds", "generations", "samples", "discriminated", "scored", "selected", "judged"]
KEYED = ["generations", "samples", "discriminated", "scored", "judged"]
SMALL_RUN = [
    "seeds.limit=8",
    "generation.sampling.max_tokens=160",
    "discriminator.sampling.max_tokens=32",
    "quality.threshold=0",  # every answered sample reaches selection and the judge
    "diversity.keep_ratio=0.75",
    "storage.part_rows=2",
    "generation.engine.batch_size=2",
    "discriminator.engine.batch_size=2",
    "judge.engine.batch_size=2",
    "generation.engine.max_num_seqs=2",  # batches finish one after another
    "discriminator.engine.max_num_seqs=2",
    "judge.engine.max_num_seqs=2",
]
TAG_VAR = "SE_CHAOS_TAG"


def tagged(tag: str) -> dict[int, str]:
    """Processes whose environment carries this run's tag; never anybody else's."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"{TAG_VAR}={tag}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
    return found


def kill_all(proc: subprocess.Popen, tag: str, timeout: float = 60) -> float:
    """SIGKILL the driver's group and every tagged process; seconds until none is left."""
    t0 = time.time()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while time.time() - t0 < timeout:
        left = tagged(tag)
        if not left:
            proc.wait()
            return time.time() - t0
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    raise SystemExit(f"processes still alive {timeout:.0f} s after the kill: {tagged(tag)}")


def running_stage(run: Path) -> str | None:
    """The first stage without its marker: the one the driver is working on."""
    return next((s for s in STAGES if not (run / f"{s}.done.json").exists()), None)


def snapshot(run: Path) -> dict[str, str]:
    """sha256 of every marker and of every Parquet part that reads back whole right now."""
    out = {}
    for path in sorted(run.glob("*.done.json")):
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    for stage in KEYED:
        for part in sorted((run / stage).glob("*.parquet")) if (run / stage).is_dir() else []:
            try:
                data = part.read_bytes()
                pq.read_metadata(part)
            except Exception:  # half-written: the resume may delete it
                continue
            out[f"{stage}/{part.name}"] = hashlib.sha256(data).hexdigest()
    return out


def ids(run: Path, stage: str, where=None) -> list[str]:
    table = pq.read_table(run / stage, columns=["sample_id"] + ([where[0]] if where else []))
    if where:
        table = table.filter(where[1](table.column(where[0])))
    return table.column("sample_id").to_pylist()


def check_run(run: Path) -> dict[str, object]:
    import pyarrow.compute as pc

    problems = []
    for stage in STAGES:
        if not (run / f"{stage}.done.json").exists():
            problems.append(f"{stage} has no marker")
    seeds = pq.read_table(run / "seeds").num_rows
    expected = {
        "generations": seeds,  # samples_per_seed = 1 in this run
        "samples": set(ids(run, "generations")),
        "discriminated": set(ids(run, "samples", ("drop_reason", lambda c: pc.is_null(c)))),
        "scored": set(ids(run, "discriminated")),
        "judged": set(ids(run, "selected")),
    }
    counts = {}
    for stage in KEYED:
        got = ids(run, stage)
        counts[stage] = len(got)
        if len(got) != len(set(got)):
            problems.append(f"{stage}: {len(got) - len(set(got))} doubled ids")
        want = expected[stage]
        if isinstance(want, int):
            if len(set(got)) != want:
                problems.append(f"{stage}: {len(set(got))} ids, expected {want}")
        elif set(got) != want:
            problems.append(f"{stage}: missing {sorted(want - set(got))[:5]}, extra {sorted(set(got) - want)[:5]}")
    return {"counts": counts, "problems": problems}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    out = Path(a.out or tempfile.mkdtemp(prefix="se-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    tag = f"chaos-{os.getpid()}"
    env = {**os.environ, TAG_VAR: tag, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "synth_empathy", "run", f"output={out}", "run_id=chaos", *SMALL_RUN, *a.overrides]
    run = out / "chaos"
    records, before_kills, t_all = [], {}, time.time()
    print(f"chaos: {a.kills} kills, seed {a.seed}, run {run}; {cpu_name()}", flush=True)

    for attempt in range(a.kills + 1):
        log = open(out / f"attempt-{attempt}.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.time()
        if attempt == a.kills:  # the last attempt runs to the end
            rc = proc.wait()
            log.close()
            wall = time.time() - started
            break
        left = [s for s in STAGES if not (run / f"{s}.done.json").exists()] or STAGES[-1:]
        target, delay = rng.choice(left[:3]), rng.uniform(10, 120)  # engine start-up to mid-stage
        # wait until the target stage runs (or the run passes it), then the delay
        while proc.poll() is None and STAGES.index(running_stage(run) or STAGES[-1]) < STAGES.index(target):
            time.sleep(0.2)
        t_target = time.time()
        while proc.poll() is None and time.time() - t_target < delay:
            time.sleep(0.1)
        if proc.poll() is not None:
            log.close()
            records.append({"attempt": attempt, "ended_before_kill": proc.returncode})
            print(json.dumps(records[-1]), flush=True)
            continue
        at = running_stage(run)
        snap = snapshot(run)
        gone_s = kill_all(proc, tag)
        log.close()
        before_kills.update(snap)
        records.append(
            {
                "attempt": attempt,
                "target": target,
                "delay_s": round(delay, 1),
                "killed_in": at,
                "after_s": round(t_target + delay - started, 1),
                "finished_parts": sum("/" in k for k in snap),
                "markers": sum("/" not in k for k in snap),
                "all_gone_after_s": round(gone_s, 1),
            }
        )
        print(json.dumps(records[-1]), flush=True)

    final = snapshot(run)
    changed = [k for k, h in before_kills.items() if final.get(k) != h]
    result = check_run(run)
    # After a normal exit Ray's workers and vLLM's engine processes notice their parent is
    # gone within seconds; anything still tagged after a minute was left behind.
    t_exit, leftover = time.time(), tagged(tag)
    while leftover and time.time() - t_exit < 60:
        time.sleep(1)
        leftover = tagged(tag)
    lingered = round(time.time() - t_exit, 1)
    summary = {
        "machine": cpu_name(),
        "load_avg_end": os.getloadavg(),
        "kills": sum("killed_in" in r for r in records),
        "records": records,
        "final_rc": rc,
        "final_attempt_s": round(wall, 1),
        "total_s": round(time.time() - t_all, 1),
        "counts": result["counts"],
        "problems": result["problems"],
        "recomputed_or_lost": changed,
        "left_running": leftover,
        "last_process_gone_after_exit_s": lingered,
        "ok": not result["problems"] and not changed and not leftover and rc in (0, 1),
    }
    (out / "chaos.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
