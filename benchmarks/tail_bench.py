"""The pipeline's tail at scale: scored rows -> selection -> export -> report and card.

Builds a run folder whose LLM stages are finished (seeds, generations, samples,
discriminated and scored, each with ``--rows`` rows and its done marker written by the
project's own :class:`StageRunner`, as the pipeline writes it), then resumes that run with
the real entry point (``python -m synth_empathy run``, judge disabled: it is an LLM stage
after the export) and records the wall time and peak memory of each step of the tail.

The rows are real text repeated under distinct ids: every dialogue of EmpatheticDialogues
``valid.csv`` (read from ``../shared/data/ed``, never copied into the repository) becomes
one sample (history, target, ``Speaker:/Listener:`` instruction, via
``synth_empathy.core.turn_sampling``), and row i takes dialogue ``i mod D``; the
discriminator's answer is another dialogue's target. Embeddings are clustered unit
vectors, d = 384 (``clustered_unit_vectors`` of kcenter_bench.py, made per chunk of
``--chunk`` rows, N/100 clusters in all). A share ``--kept`` of the rows passes the
quality threshold; the others are dropped with a reason and no embedding, as in a run.
Every table is written in chunks, so building needs memory for one chunk.

Peak memory: the resident set (RSS) summed over the run's process tree (the driver and
the Ray processes it starts), sampled every 0.2 s, and the driver's own RSS; shared pages
count in every process that maps them, so the tree figure is an upper bound. A step runs from one log
line of the run to the next: start-up (imports, preflight, Ray, the finished stages read
back) until ``[selected] running``, selection until ``[selected] done``, export until
``[export]``, report (with its plots) until ``report:``, card until ``dataset card:``.

    PYTHONPATH=. .venv/bin/python benchmarks/tail_bench.py --rows 100000
    PYTHONPATH=. .venv/bin/python benchmarks/tail_bench.py --rows 1000000 --keep 0.1

Results: ``benchmarks/out/tail.jsonl`` (one record per run) and a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from kcenter_bench import clustered_unit_vectors
from machine import cpu_name

from synth_empathy import schemas
from synth_empathy.core.turn_sampling import sample_turns
from synth_empathy.executor.runner import StageRunner
from synth_empathy.stages import discriminator, generation, quality, seeds, turns
from synth_empathy.stages.generation import sample_id
from synth_empathy.storage.run_store import RunStore

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
ED_VALID = HERE.parent.parent / "shared" / "data" / "ed" / "valid.csv"
D = 384
STEPS = (  # (step, the log line that ends it)
    ("start-up", "[selected] running"),
    ("selection", "[selected] done in"),
    ("export", "[export] "),
    ("report", "report: "),
    ("card", "dataset card: "),
)


# -- the synthetic run -------------------------------------------------------------------


def ed_dialogues(path: Path) -> pa.Table:
    """One sample per ED dialogue with at least two rounds (speaker turn, listener turn)."""
    if not path.exists():
        sys.exit(f"error: {path}: EmpatheticDialogues valid.csv not found (give --ed)")
    utterances: dict[str, list[tuple[int, str]]] = {}
    emotion: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            utterances.setdefault(row["dialogue_id"], []).append((int(row["turns"]), row["text"].strip()))
            emotion[row["dialogue_id"]] = row["dialogue_emotion"]
    cols: dict[str, list] = {
        k: []
        for k in (
            "context",
            "response",
            "emotion",
            "raw_text",
            "rounds",
            "instruction",
            "output",
            "n_history",
            "history",
        )
    }
    for did, turns_ in utterances.items():
        texts = [t for _, t in sorted(turns_)]
        rounds = [{"context": texts[i], "response": texts[i + 1]} for i in range(0, len(texts) - 1, 2)]
        sample = sample_turns(rounds, random.Random(did)) if len(rounds) >= 2 else None
        if sample is None:
            continue
        cols["context"].append(rounds[0]["context"])
        cols["response"].append(rounds[0]["response"])
        cols["emotion"].append(emotion[did])
        cols["raw_text"].append(
            "\n".join(
                f"Round {i + 1}\nContext: {r['context']}\nResponse: {r['response']}" for i, r in enumerate(rounds)
            )
        )
        cols["rounds"].append(rounds)
        cols["instruction"].append(sample.instruction)
        cols["output"].append(sample.output)
        cols["n_history"].append(sample.n_history)
        cols["history"].append(sample.history)
    table = pa.table(
        {
            **{k: cols[k] for k in ("context", "response", "emotion", "raw_text", "instruction", "output")},
            "rounds": pa.array(cols["rounds"], type=pa.list_(schemas.ROUND)),
            "n_history": pa.array(cols["n_history"], type=pa.int64()),
            "history": pa.array(cols["history"], type=pa.list_(schemas.TURN)),
        }
    )
    n = table.num_rows
    # the discriminator "answers" with the next dialogue's target: real text, different words
    table = table.append_column("disc_response", table.column("output").take(pa.array((np.arange(n) + 1) % n)))
    return table.append_column("n_rounds", pc.list_value_length(table.column("rounds")).cast(pa.int64()))


def chunk_table(stage: str, dialogues: pa.Table, first: int, n: int, kept_share: float, threshold: float) -> pa.Table:
    """Rows first..first+n-1 of a stage, as the pipeline's schema for it."""
    rows = np.arange(first, first + n)
    t = dialogues.take(pa.array(rows % dialogues.num_rows))
    seed_ids = [f"ed-{i:09d}" for i in rows]
    cols = {name: t.column(name) for name in t.column_names}
    cols["seed_id"] = pa.array(seed_ids)
    cols["sample_id"] = pa.array([sample_id(s, 0) for s in seed_ids])
    const = lambda v, type_=None: pa.array([v] * n, type=type_)  # noqa: E731
    if stage == "seeds":
        cols["source"] = const("ed:valid.csv (tail benchmark)")
        return schemas.conform(pa.table(cols), schemas.SEEDS)
    if stage == "generations":
        cols.update(
            prompt=const("(tail benchmark: prompt not kept)"),
            model=const("tail-benchmark"),
            num_generated_tokens=pa.array(np.full(n, 120, dtype=np.int64)),
            error=const(None, pa.string()),
        )
        return schemas.conform(pa.table(cols), schemas.GENERATIONS)
    cols.update(drop_reason=const(None, pa.string()))
    if stage == "samples":
        zeros = pa.array(np.zeros(n, dtype=np.int64))
        cols.update(incomplete_rounds=zeros, overlong_responses=zeros)
        return schemas.conform(pa.table(cols), schemas.SAMPLES)
    cols.update(
        disc_model=const("tail-benchmark"),
        disc_num_tokens=pa.array(np.full(n, 24, dtype=np.int64)),
        disc_error=const(None, pa.string()),
    )
    if stage == "discriminated":
        return schemas.conform(pa.table(cols), schemas.DISCRIMINATED)
    rng = np.random.default_rng(first)
    kept = rng.random(n) < kept_share
    score = np.where(kept, rng.uniform(threshold, 100.0, n), rng.uniform(0.0, threshold, n))
    x = clustered_unit_vectors(n, D, seed=first)  # one chunk's clusters: N/100 in all
    offsets = np.arange(n + 1, dtype=np.int32) * D
    emb = pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.reshape(-1)), mask=pa.array(~kept))
    cols.update(
        quality_score=pa.array(score),
        kept=pa.array(kept),
        drop_reason=pa.array([None if k else "below_quality_threshold" for k in kept], type=pa.string()),
        embedding=emb,
    )
    return schemas.conform(pa.table(cols), schemas.SCORED)


def build(store: RunStore, rows: int, chunk: int, kept_share: float, threshold: float, ed: Path) -> dict:
    """Write the finished LLM stages of the run, each in parts of ``chunk`` rows."""
    dialogues = ed_dialogues(ed)
    runner = StageRunner(store)
    seconds = {}
    for contract in (seeds.CONTRACT, generation.CONTRACT, turns.CONTRACT, discriminator.CONTRACT, quality.CONTRACT):
        start = time.perf_counter()

        def write(stage=contract.name):
            folder = store.begin(stage)
            for part, first in enumerate(range(0, rows, chunk)):
                table = chunk_table(stage, dialogues, first, min(chunk, rows - first), kept_share, threshold)
                pq.write_table(table, f"{folder}/part-{part:05d}.parquet", filesystem=store.arrow_fs)

        runner.run(contract.name, write, key=contract.key)  # verifies the ids, writes the marker
        seconds[contract.name] = round(time.perf_counter() - start, 1)
        print(f"built {contract.name}: {rows:,} rows in {seconds[contract.name]} s", file=sys.stderr, flush=True)
    store.write_json("seeds.json", {"path": str(ed), "layout": "tail-benchmark", "dropped": {}})
    return {"dialogues": dialogues.num_rows, "seconds": seconds}


def clear_tail(run: Path) -> None:
    """Forget what an earlier resume of this run wrote, so the tail runs again."""
    for name in ("selected", "judged", "plots"):
        shutil.rmtree(run / name, ignore_errors=True)
    for name in ("selected.done.json", "judged.done.json", "selection.json", "report.json", "report.md", "README.md"):
        (run / name).unlink(missing_ok=True)
    for name in ("selected.alpaca.jsonl", "selected.chat.jsonl", "dataset_info.json"):
        (run / name).unlink(missing_ok=True)


# -- the measured resume -----------------------------------------------------------------


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of the process and all its descendants, RSS of the process alone), bytes."""
    try:
        own = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    total = own
    for c in children:
        try:
            total += c.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total, own


def resume(output: Path, run_id: str, overrides: list[str], log_path: Path, code: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "synth_empathy", "run", f"output={output}", f"run_id={run_id}", *overrides]
    env = {**os.environ, "PYTHONPATH": str(code)} if code else None
    t0 = time.monotonic()
    # -m puts the working folder first on sys.path: a baseline must run from its own checkout
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=code)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, int, int]] = []
    lines: list[tuple[float, str]] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.monotonic() - t0, *tree_rss(ps)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log_path, "w") as log:
        for line in proc.stderr:
            lines.append((time.monotonic() - t0, line))
            log.write(line)
    rc = proc.wait()
    wall = time.monotonic() - t0
    done.set()
    sampler.join()
    if rc != 0:
        sys.exit(f"error: the resumed run failed (exit {rc}); its log: {log_path}")
    bounds, start, pending = [], 0.0, []
    for step, marker in STEPS:
        end = next((t for t, line in lines if marker in line and t >= start), None)
        pending.append(step)
        if end is None:  # code without this log line (an older revision): the step joins the next
            continue
        bounds.append((" + ".join(pending), start, end))
        start, pending = end, []
    bounds.append((" + ".join(pending + ["shutdown"]), start, wall))
    steps = {}
    for step, a, b in bounds:
        inside = [s for s in samples if a <= s[0] <= b] or [min(samples, key=lambda s: abs(s[0] - b))]
        steps[step] = {
            "seconds": round(b - a, 2),
            "peak_tree_gib": round(max(s[1] for s in inside) / 2**30, 3),
            "peak_driver_gib": round(max(s[2] for s in inside) / 2**30, 3),
        }
    return {
        "wall_s": round(wall, 2),
        "tail_s": round(bounds[-1][1] - bounds[1][1], 2),  # selection start .. last step before shutdown
        "peak_tree_gib": round(max(s[1] for s in samples) / 2**30, 3),
        "peak_driver_gib": round(max(s[2] for s in samples) / 2**30, 3),
        "steps": steps,
        # the selection's own lines: read / k-center / write seconds
        "selection_log": [line.split("synth-empathy ", 1)[-1].strip() for _, line in lines if "[selected] " in line],
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows in each LLM stage, scored included")
    p.add_argument("--keep", type=float, default=0.1, help="diversity.keep_ratio")
    p.add_argument("--kept", type=float, default=1.0, help="share of scored rows above the quality threshold")
    p.add_argument("--chunk", type=int, default=50_000, help="rows per built Parquet part")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tail_bench"), help="where the run folder goes")
    p.add_argument("--ed", type=Path, default=ED_VALID, help="EmpatheticDialogues valid.csv")
    p.add_argument("--reuse", action="store_true", help="resume an earlier build of the same size again")
    p.add_argument("--keep-run", action="store_true", help="leave the run folder (default: delete it)")
    p.add_argument("--code", type=Path, help="run this checkout's package instead (a baseline), via PYTHONPATH")
    p.add_argument("overrides", nargs="*", help="more key=value config overrides for the resumed run")
    a = p.parse_args(argv)

    output, run_id = a.workdir / f"rows-{a.rows}-kept-{a.kept:g}", "tail"
    run = output / run_id
    store = RunStore(str(output), run_id)
    threshold = 50.0
    built = None
    if a.reuse and (run / "scored.done.json").exists():
        clear_tail(run)
    else:
        shutil.rmtree(run, ignore_errors=True)
        start = time.perf_counter()
        built = build(store, a.rows, a.chunk, a.kept, threshold, a.ed)
        built["wall_s"] = round(time.perf_counter() - start, 1)
        built["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    disk = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    overrides = [
        "judge.enabled=false",  # an LLM stage after the export: not part of this measurement
        f"diversity.keep_ratio={a.keep}",
        f"quality.threshold={threshold:g}",
        *a.overrides,
    ]
    OUT.mkdir(exist_ok=True)
    load = os.getloadavg()[0]
    code = a.code.resolve() if a.code else HERE.parent
    rev = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(code), "status", "--porcelain", "synth_empathy"], capture_output=True, text=True
    )
    code_rev = (rev.stdout.strip() or "?") + ("+changes" if dirty.stdout.strip() else "")
    measured = resume(output, run_id, overrides, OUT / f"tail_{a.rows}.log", code if a.code else None)
    report = json.loads((run / "report.json").read_text())
    record = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": cpu_name(),
        "code": str(code),
        "revision": code_rev,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "rows": a.rows,
        "kept": report["counts"]["kept"],
        "selected": report["counts"]["selected"],
        "keep_ratio": a.keep,
        "overrides": overrides,
        "run_folder_gib": round(disk / 2**30, 2),
        "build": built,
        "selection": {k: report["selection"].get(k) for k in ("method", "device", "seconds", "radius")},
        "diversity_sampled": (report.get("diversity") or {}).get("sampled"),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        **measured,
    }
    with open(OUT / "tail.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if not a.keep_run:
        shutil.rmtree(output, ignore_errors=True)

    print(f"\ncode {code} at {code_rev}")
    print(
        f"{record['date']}, {record['machine']}, {record['memory_gib']} GiB; load {load:.1f} -> {record['load_after']}"
    )
    print(
        f"{a.rows:,} scored rows, {record['kept']:,} kept, {record['selected']:,} selected "
        f"(k-center {record['selection']['method']}: {record['selection']['seconds']:.1f} s); "
        f"run folder {record['run_folder_gib']} GiB\n"
    )
    print("\n".join(measured["selection_log"]) + "\n")
    print("| step | wall s | peak RSS, process tree (GiB) | peak RSS, driver (GiB) |")
    print("| --- | ---: | ---: | ---: |")
    for step, m in measured["steps"].items():
        print(f"| {step} | {m['seconds']:.1f} | {m['peak_tree_gib']:.2f} | {m['peak_driver_gib']:.2f} |")
    print(
        f"| **whole resume** | **{measured['wall_s']:.1f}** | **{measured['peak_tree_gib']:.2f}** | "
        f"**{measured['peak_driver_gib']:.2f}** |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
