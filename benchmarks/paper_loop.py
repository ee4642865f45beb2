"""The paper's loop, end to end, as commands a user would type.

    .venv/bin/python benchmarks/paper_loop.py [--out DIR] [--scale small|embedded] [key=value ...]

1. ``train`` the discriminator on ED (the held-out dialogues excluded) -> ``disc-ed``;
2. ``run`` the pipeline with the untuned discriminator (the packaged base model);
3. re-run only steps 3a-6 on the SAME generations and samples with ``disc-ed``: a copy
   of the run folder up to ``samples`` resumes there, so the keep rates compare the two
   discriminators on identical inputs;
4. fine-tune the base on ED alone (``ed-only``) and on ED plus the tuned run's selected
   set (``ed+selected``, the paper's mix), same base, same settings;
5. ``evaluate`` base, ``ed-only`` and ``ed+selected`` on the held-out ED dialogues.

Writes ``paper_loop.json`` (keep rates, drop reasons, repeats removed, the metric table,
seconds per step, the CPU) into ``--out``. On the 2-core CPU with the 135M model this
shows the plumbing, not the paper's effect: the corpus is tiny and the model small.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
ED = (REPO / ".." / "shared" / "data" / "ed" / "valid.csv").resolve()
SCALES = {
    # pairs to train on, seeds to generate from, held-out dialogues to answer
    "small": {"train": 200, "seeds": 24, "evaluate": 24, "gen_tokens": 200},
    "embedded": {"train": 800, "seeds": 98, "evaluate": 96, "gen_tokens": 300},
}


def sh(step: str, args: list[str], log_dir: Path, timings: dict) -> None:
    t0 = time.perf_counter()
    with open(log_dir / f"{step}.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "synth_empathy", *args], stdout=log, stderr=subprocess.STDOUT)
    timings[step] = round(time.perf_counter() - t0, 1)
    print(f"[{step}] exit {proc.returncode} in {timings[step]:.0f} s", flush=True)
    if proc.returncode not in (0, 1):  # 1: a run that selected nothing, still a result
        raise SystemExit(f"{step} failed; see {log_dir / (step + '.log')}")


def keep_figures(run: Path) -> dict:
    import pyarrow.parquet as pq

    report = json.loads((run / "report.json").read_text())
    scores = [
        s for s in pq.read_table(run / "scored", columns=["quality_score"]).column(0).to_pylist() if s is not None
    ]
    c = report["counts"]
    scored = report["dropped"].get("scored", {})
    return {
        "discriminated": c["discriminated"],
        "kept": c["kept"],
        "keep_rate": round(c["kept"] / c["discriminated"], 3) if c["discriminated"] else None,
        "selected": c["selected"],
        "repeats_removed": scored.get("target_repeats_history", 0) + scored.get("answer_repeats_history", 0),
        "dropped": scored,
        "quality_mean": report["quality"]["mean"],
        # the keep rate at other thresholds T: the distribution, not just one cut
        "at_or_above": {t: sum(s >= t for s in scores) for t in (30, 40, 50, 60)},
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/paper_loop")
    p.add_argument("--scale", choices=list(SCALES), default="small")
    p.add_argument("overrides", nargs="*", help="config overrides for every step")
    a = p.parse_args(argv)
    s, out = SCALES[a.scale], Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not ED.exists():
        raise SystemExit(f"needs the ED split at {ED}")
    timings: dict = {}
    print(f"paper loop ({a.scale}) -> {out}; {cpu_name()}", flush=True)
    train = [f"train.data=[{ED}]", f"train.limit={s['train']}", *a.overrides]

    # 1. the discriminator, fine-tuned on ED
    sh("train-disc", ["train", f"train.output={out}/disc-ed", *train], out, timings)
    # 2. the pipeline with the untuned discriminator
    run = [f"output={out}/runs", f"seeds.path={ED}", f"seeds.limit={s['seeds']}",
           f"generation.sampling.max_tokens={s['gen_tokens']}", *a.overrides]  # fmt: skip
    sh("run-untuned", ["run", "run_id=untuned", *run], out, timings)
    # 3. the same generations and samples, discriminated by the tuned model
    src, dst = out / "runs" / "untuned", out / "runs" / "tuned"
    if not (dst / "report.json").exists():
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for name in ("config.yaml", "seeds.json"):
            shutil.copy(src / name, dst / name)
        for stage in ("seeds", "generations", "samples"):
            shutil.copytree(src / stage, dst / stage)
            shutil.copy(src / f"{stage}.done.json", dst / f"{stage}.done.json")
    sh("run-tuned", ["run", "run_id=tuned", *run, f"discriminator.engine.model={out}/disc-ed/model"], out, timings)
    # 4. fine-tune on ED alone and on ED + the tuned run's selection, same base and settings
    sh("train-ed-only", ["train", f"train.output={out}/ed-only", *train], out, timings)
    mix = f"train.data=[{ED},{dst}/selected.chat.jsonl]"
    sh("train-ed+selected", ["train", f"train.output={out}/ed-selected", *train, mix], out, timings)
    # 5. evaluate on the held-out dialogues
    models = ["--model", "base=packaged:smollm2", "--model", f"ed-only={out}/ed-only/model",
              "--model", f"ed+selected={out}/ed-selected/model"]  # fmt: skip
    sh("evaluate", ["evaluate", f"{out}/evaluation", *models, "--data", str(ED), "evaluate.heldout_only=true",
                    f"evaluate.limit={s['evaluate']}", *a.overrides], out, timings)  # fmt: skip

    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    result = {
        "machine": cpu_name(),
        "load_avg": os.getloadavg(),
        "scale": a.scale,
        **s,
        "untuned": keep_figures(src),
        "tuned": keep_figures(dst),
        "train": {
            n: json.loads((out / d / "train_report.json").read_text())
            for n, d in (("disc-ed", "disc-ed"), ("ed-only", "ed-only"), ("ed+selected", "ed-selected"))
        },  # fmt: skip
        "evaluation": {m: r["metrics"] for m, r in evaluation["models"].items()},
        "seconds": timings,
    }
    (out / "paper_loop.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("untuned", "tuned", "evaluation", "seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
