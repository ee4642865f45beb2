"""Repeated faults: SIGKILL the driver while a drawn stage is half written, resume, check the run.

    .venv/bin/python benchmarks/chaos.py [--kills 5] [--seed 0] [--out DIR] [key=value ...]

One small run of the real pipeline (real Ray, vLLM CPU engines, packaged models; 16
seeds, every stage, the judge included; parts of two rows so that a kill finds finished
parts) is started with ``python -m synth_empathy run``, and killed K times. The kill
moment is read from the run folder, not from a clock, so it lands on a fast machine as
on a slow one:

* for each attempt a stage is drawn (seeded) from the next two LLM stages (generations,
  discriminated, judged) that have no ``.done.json`` marker yet and can still be caught
  half written (fewer than 2 parts left to write rules a stage out where that is known),
  and a fraction u in [0, 1);
* the driver is killed as soon as that stage has written ``wait_for`` Parquet parts in
  this attempt (parts that read back whole and were not in the folder when the attempt
  started) and still has no marker. ``expected``, the number of parts the attempt will
  write, is known once the stage's input is finished: its input rows (seeds x
  samples_per_seed, the samples kept for the discriminator, selected) less the rows of
  parts kept from earlier attempts, in parts of ``storage.part_rows`` rows. ``wait_for``
  is 1 + floor(u x share), share = (expected - 1) // kills still to land (at least 1),
  so within 1 .. expected-1 and leaving parts for the later kills; 1 where ``expected``
  is below 2;
* if the drawn stage gets its marker before the poll (every 50 ms) sees that state, the
  draw moves on to the next LLM stage in pipeline order without a marker, keeping u (the
  skipped stages are recorded as ``missed``); if the run ends without a kill, the attempt
  is recorded as ``ended_before_kill`` and, unless the run is finished, retried (at most
  ``--retries`` extra attempts in all). A finished run leaves nothing to kill in;
* the driver's process group and every process carrying this run's tag (raylet, GCS,
  workers, vLLM engine cores) get SIGKILL. Once they are gone the folder no longer
  changes, so the condition is checked again: a kill counts (``landed``) only if the
  stage was still half written when it took effect (it can finish between the poll and
  the kill). Then the same command resumes the run.

Stages that are never drawn: seeds and selected (not keyed) are each written whole in one
step and written again from scratch by the next attempt, so there is no half-written
state for a kill to land in or for a resume to keep. samples and scored (keyed, CPU) write
their parts in one go at the end, tens of milliseconds before their marker: a draw of
them would nearly always move on. They are still resumed past and checked like the rest.
The judge's parts often come out together as well (its batches are short and in flight
at once), so a draw of judged can miss and end the run without a kill.

Once K kills have landed (or the run finished, or the attempts ran out) the run is let
finish, and the script checks:

* every expected ``sample_id`` is in every keyed stage exactly once (the generations
  hold seeds x samples_per_seed; each later stage holds exactly the ids its input
  passes on);
* no finished part was recomputed: every Parquet part that read back whole at a kill
  is still there, byte for byte, at the end; every marker written before a kill is
  unchanged;
* nothing is left running: after each kill no tagged process is alive, and none is a
  minute after the final run's driver exits (Ray's workers and vLLM's engine processes
  take a few seconds to notice; the time is recorded).

``ok`` is true only if all checks pass and K kills landed; a run whose checks pass with
fewer landed kills is ``"inconclusive": true`` with ``ok`` false (exit status 2; a failed
check exits 1). Prints one JSON record per attempt and a summary, and writes
``chaos.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

STAGES = ["seeds", "generations", "samples", "discriminated", "scored", "selected", "judged"]
KEYED = ["generations", "samples", "discriminated", "scored", "judged"]
# The stages a kill is drawn in, each with its input stage: the LLM stages, which cut
# their input into parts of storage.part_rows rows and write each as its batch finishes.
PART_INPUT = {"generations": "seeds", "discriminated": "samples", "judged": "selected"}
DRAWN = list(PART_INPUT)
SMALL_RUN = [
    "seeds.limit=16",  # 8 generation parts: partial states for several kills
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
POLL_S = 0.05  # the discriminator's parts come ~0.5 s apart


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


# -- the run folder, read while the driver writes it -------------------------------------
def done(run: Path, stage: str) -> bool:
    return (run / f"{stage}.done.json").exists()


def running_stage(run: Path) -> str | None:
    """The first stage without its marker: the one the driver is working on."""
    return next((s for s in STAGES if not done(run, s)), None)


def unfinished(run: Path) -> list[str]:
    """The stages a kill can be drawn in that have no marker, in pipeline order."""
    return [s for s in DRAWN if not done(run, s)]


def next_unfinished(run: Path, after: str) -> str | None:
    """The first drawable stage after ``after`` in pipeline order that has no marker."""
    return next((s for s in DRAWN[DRAWN.index(after) + 1 :] if not done(run, s)), None)


def candidates(run: Path, before: dict[str, set[str]]) -> list[str]:
    """The next two unfinished drawable stages that can still be caught half written
    (fewer than 2 parts left to write, where that is known, rules a stage out); the first
    unfinished one if none can."""
    left = unfinished(run)
    able = [s for s in left if (n := expected_parts(run, s, before.get(s, set()))) is None or n >= 2]
    return able[:2] or left[:1]


_WHOLE: set[Path] = set()  # parts seen whole once stay whole (nothing rewrites a part in place)


def whole_parts(run: Path, stage: str) -> set[str]:
    """Names of the Parquet parts of ``stage`` whose footer reads back (a part being written has none)."""
    folder = run / stage
    names = set()
    for part in folder.glob("*.parquet") if folder.is_dir() else []:
        if part not in _WHOLE:
            try:
                pq.read_metadata(part)
            except Exception:  # half-written, or deleted since the listing
                continue
            _WHOLE.add(part)
        names.add(part.name)
    return names


def _rows(run: Path, stage: str, names) -> int:
    total = 0
    for name in names:
        try:
            total += pq.read_metadata(run / stage / name).num_rows
        except Exception:  # deleted by the resume since the listing
            continue
    return total


def expected_parts(run: Path, stage: str, kept: set[str]) -> int | None:
    """Parts this attempt will write in ``stage``, or None where that is not known.

    Known for the stages that cut their input into parts of ``storage.part_rows`` rows,
    once their input stage has its marker: the input rows that reach the stage, less
    the rows of the ``kept`` parts (those of earlier attempts, which the resume keeps).
    """
    import pyarrow.compute as pc
    import yaml

    source = PART_INPUT.get(stage)
    if source is None or not done(run, source) or not (run / "config.yaml").exists():
        return None
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    part_rows = int(cfg["storage"]["part_rows"])
    if stage == "generations":
        rows = pq.read_table(run / source).num_rows * int(cfg["generation"]["samples_per_seed"])
    elif stage == "discriminated":
        reason = pq.read_table(run / source, columns=["drop_reason"]).column("drop_reason")
        rows = int(pc.sum(pc.is_null(reason)).as_py() or 0)
    else:
        rows = pq.read_table(run / source, columns=["sample_id"]).num_rows
    return math.ceil(max(rows - _rows(run, stage, kept), 0) / part_rows)


def wait_for_parts(u: float, expected: int | None, kills_left: int = 1) -> int:
    """How many new parts to wait for, from the seeded fraction u in [0, 1): 1 .. share,
    share = (expected - 1) // kills_left (at least 1), so never all ``expected`` parts and
    never more than this kill's share of them; 1 where ``expected`` is unknown or below 2
    (then only the missing marker says "not all")."""
    if not expected or expected < 2:
        return 1
    share = max(1, (expected - 1) // max(1, kills_left))
    return 1 + min(int(u * share), share - 1)


def kill_moment(run: Path, stage: str, before: set[str], wait_for: int) -> bool:
    """True when ``stage`` has written at least ``wait_for`` whole parts not in ``before``
    and has no marker. The parts are counted first: the marker is written after the last
    part, so a missing marker after the count means the count was taken mid-stage."""
    new = len(whole_parts(run, stage) - before)
    return new >= wait_for and not done(run, stage)


def verdict(asked: int, landed: int, problems, changed, leftover, final_rc: int | None) -> dict[str, bool]:
    """ok only when every check passes and every asked kill landed; fewer kills with
    passing checks is inconclusive (never ok)."""
    failed = bool(problems or changed or leftover) or final_rc not in (0, 1)
    inconclusive = not failed and landed < asked
    return {"ok": not failed and not inconclusive, "inconclusive": inconclusive}


def exit_status(v: dict[str, bool]) -> int:
    return 0 if v["ok"] else 2 if v["inconclusive"] else 1


# -- the checks at the end ---------------------------------------------------------------
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
        if not done(run, stage):
            problems.append(f"{stage} has no marker")
    if problems:
        return {"counts": {}, "problems": problems}
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


# -- one attempt -------------------------------------------------------------------------
def attempt_until_kill(
    proc: subprocess.Popen, run: Path, target: str, u: float, before: dict, kills_left: int = 1
) -> dict:
    """Poll the run folder until the kill moment of ``target`` (moving on to the next
    unfinished stage when it finishes first) or until the driver exits; returns the state."""
    missed, wait_for, expected = [], None, None
    while proc.poll() is None:
        if target is None:  # every drawable stage finished before its kill moment: let it end
            time.sleep(POLL_S)
            continue
        if wait_for is None:
            source = PART_INPUT.get(target)
            if source is None or done(run, source):  # the stage can start: its size is fixed
                expected = expected_parts(run, target, before[target])
                wait_for = wait_for_parts(u, expected, kills_left)
        if wait_for is not None and kill_moment(run, target, before[target], wait_for):
            return {"target": target, "wait_for": wait_for, "expected": expected, "missed": missed, "fire": True}
        if done(run, target):
            missed.append(target)
            target, wait_for, expected = next_unfinished(run, target), None, None
            continue
        time.sleep(POLL_S)
    return {"target": target, "wait_for": wait_for, "expected": expected, "missed": missed, "fire": False}


def main(argv: list[str]) -> int:
    from machine import cpu_name

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retries", type=int, default=3, help="extra attempts for attempts that ended without a kill")
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

    attempt, landed = 0, 0
    while landed < a.kills and attempt < a.kills + a.retries:
        if not unfinished(run):  # the run finished: no stage is left to kill in
            break
        before = {s: whole_parts(run, s) for s in KEYED}  # the parts of earlier attempts
        target, u = rng.choice(candidates(run, before)), rng.random()
        log = open(out / f"attempt-{attempt}.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.time()
        state = attempt_until_kill(proc, run, target, u, before, a.kills - landed)
        record = {"attempt": attempt, "drawn": target, **state}
        del record["fire"]
        if not state["fire"]:
            proc.wait()
            log.close()
            record["ended_before_kill"] = proc.returncode
        else:
            t_kill = time.time()
            gone_s = kill_all(proc, tag)
            log.close()
            # everything is dead, so the folder is frozen: what was finished, and was the
            # stage still half written when the kill took effect?
            at, snap = running_stage(run), snapshot(run)
            before_kills.update(snap)
            now = whole_parts(run, state["target"]) - before[state["target"]]
            hit = kill_moment(run, state["target"], before[state["target"]], state["wait_for"])
            landed += hit
            record.update(
                killed_in=at,
                landed=hit,
                new_parts=len(now),
                after_s=round(t_kill - started, 1),
                finished_parts=sum("/" in k for k in snap),
                markers=sum("/" not in k for k in snap),
                all_gone_after_s=round(gone_s, 1),
            )
        records.append(record)
        print(json.dumps(record), flush=True)
        attempt += 1

    # the last attempt runs to the end
    with open(out / f"attempt-{attempt}.log", "w") as log:
        started = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        rc = proc.wait()
        wall = time.time() - started

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
    outcome = verdict(a.kills, landed, result["problems"], changed, leftover, rc)
    summary = {
        "machine": cpu_name(),
        "load_avg_end": os.getloadavg(),
        "kills_asked": a.kills,
        "kills": landed,
        "kills_not_landed": sum(r.get("landed") is False for r in records),
        "attempts_without_kill": sum("ended_before_kill" in r for r in records),
        "records": records,
        "final_rc": rc,
        "final_attempt_s": round(wall, 1),
        "total_s": round(time.time() - t_all, 1),
        "counts": result["counts"],
        "problems": result["problems"],
        "recomputed_or_lost": changed,
        "left_running": leftover,
        "last_process_gone_after_exit_s": lingered,
        **outcome,
    }
    (out / "chaos.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=2))
    return exit_status(outcome)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
