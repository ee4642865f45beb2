"""The paper's ablation, end to end, as commands a user would type.

    .venv/bin/python benchmarks/paper_loop.py [--out DIR] [--scale small|ablation] [key=value ...]

EmpatheticDialogues (``../shared/data/ed/valid.csv``, the only split at hand) is split by
dialogue (:mod:`synth_empathy.core.heldout`, ``train.heldout_fraction``): the held-out side is
never trained on, never used as a seed, and is what the models are evaluated on.

1. ``train`` the discriminator on the training side -> ``disc-ed``;
2. ``run`` the pipeline on training-side seeds with ``disc-ed`` as the discriminator and the
   calibrated threshold (``quality.threshold=auto``, calibrated on the held-out dialogues:
   human replies the discriminator never saw);
3. fine-tune the same base, same settings, on (a) ED only, (b) ED + the selected rows,
   (c) ED + a seeded random subset of the generated samples of the size of (b), (d) ED +
   every kept row before k-center;
4. ``evaluate`` the base and the four on the held-out pairs: every metric with its 95 %
   interval, and the paired difference of every pair of models (``evaluate`` lists each
   later model against each earlier one; ``ed-only`` comes first among the fine-tuned).

A finished step is read back, not redone (each step's own output says it finished), so an
interrupted loop resumes. Writes ``paper_loop.json`` and ``paper_loop.md`` (the table with
intervals, the significant differences, seconds per step, the CPU) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
ED = (REPO / ".." / "shared" / "data" / "ed" / "valid.csv").resolve()
SCALES = {
    # ED pairs per training, training-side seeds to generate from, held-out pairs to answer,
    # the generator's token budget
    "small": {"train": 200, "seeds": 48, "evaluate": 64, "gen_tokens": 200},
    "ablation": {"train": 600, "seeds": 1000, "evaluate": 548, "gen_tokens": 240},
}
ARMS = ("ed-only", "ed+selected", "ed+random", "ed+kept")


def sh(step: str, args: list[str], out: Path, timings: dict, done: Path) -> None:
    """Run ``synth-empathy ARGS`` unless ``done`` exists (the step finished earlier)."""
    if done.exists():
        print(f"[{step}] finished earlier ({done})", flush=True)
        return
    t0 = time.perf_counter()
    with open(out / f"{step}.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "synth_empathy", *args], stdout=log, stderr=subprocess.STDOUT)
    timings[step] = round(time.perf_counter() - t0, 1)
    print(f"[{step}] exit {proc.returncode} in {timings[step]:.0f} s", flush=True)
    if proc.returncode not in (0, 1) or not done.exists():  # 1: a run that selected nothing, still a result
        raise SystemExit(f"{step} failed; see {out / (step + '.log')}")


def training_side_seeds(path: Path, fraction: float) -> int:
    """The ED pairs training may see, as a ``pairs`` JSONL (seed file of the run)."""
    from synth_empathy.core.heldout import is_heldout
    from synth_empathy.stages.seed_sources import read_seeds

    rows = [r for r in read_seeds(str(ED)).to_arrow().to_pylist() if not is_heldout(r["context"], fraction)]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("seed_id", "context", "response", "emotion")}) + "\n")
    return len(rows)


def arm_files(run: Path, out: Path, seed: int) -> dict:
    """(c) a random subset of the generated samples of the selection's size, (d) every kept
    row before k-center: alpaca JSONL like the run's own export of (b)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synth_empathy.stages.export import iter_alpaca

    selected = pq.read_table(run / "selected", columns=["sample_id"]).num_rows
    samples = pq.read_table(run / "samples", columns=["sample_id", "instruction", "output", "drop_reason"])
    samples = samples.filter(pc.is_null(samples.column("drop_reason"))).sort_by("sample_id").to_pylist()
    scored = pq.read_table(run / "scored", columns=["sample_id", "instruction", "output", "kept"])
    kept = scored.filter(scored.column("kept")).sort_by("sample_id").to_pylist()
    subset = random.Random(seed).sample(samples, min(selected, len(samples)))
    sizes = {"selected": selected, "samples": len(samples), "random": len(subset), "kept": len(kept)}
    for name, rows in (("random", subset), ("kept", kept)):
        with open(out / f"{name}.alpaca.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in iter_alpaca(rows))
    return sizes


def markdown(evaluation: dict, models: list[str]) -> list[str]:
    """Every metric per model with its interval, then the significant paired differences."""
    ms = evaluation["models"]
    metrics = list(next(iter(ms.values()))["metrics"])
    lines = ["| metric | " + " | ".join(models) + " |", "| --- | " + " | ".join("---:" for _ in models) + " |"]
    for m in metrics:
        cells = []
        for label in models:
            v, span = ms[label]["metrics"][m], ms[label]["intervals"][m]
            cells.append(f"{v:.4f} [{span['low']:.4f}, {span['high']:.4f}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model - baseline | metric | difference [95 % interval] | significant |",
        "| --- | --- | ---: | --- |",
    ]
    for d in evaluation["differences"]:
        for m, x in d["metrics"].items():
            lines.append(
                f"| {d['model']} - {d['baseline']} | {m} | {x['difference']:+.4f} [{x['low']:+.4f}, {x['high']:+.4f}] "
                f"| {'yes' if x['significant'] else 'no'} |"
            )
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/paper_loop")
    p.add_argument("--scale", choices=list(SCALES), default="small")
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("overrides", nargs="*", help="config overrides for every step")
    a = p.parse_args(argv)
    s, out = SCALES[a.scale], Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not ED.exists():
        raise SystemExit(f"needs the ED split at {ED}")
    timings: dict = {}
    print(f"paper ablation ({a.scale}) -> {out}; {cpu_name()}", flush=True)
    split = [f"train.heldout_fraction={a.heldout_fraction}"]
    train = [f"train.limit={s['train']}", *split, *a.overrides]
    seeds = out / "seeds-train.jsonl"
    n_train_side = training_side_seeds(seeds, a.heldout_fraction)

    # 1. the discriminator, fine-tuned on the training side of ED
    sh("train-disc", ["train", f"train.data=[{ED}]", f"train.output={out}/disc-ed", *train], out, timings,
       out / "disc-ed" / "train_report.json")  # fmt: skip
    # 2. the pipeline: training-side seeds, the tuned discriminator, T calibrated on held-out human replies
    run = out / "runs" / "tuned"
    sh("run", ["run", f"output={out}/runs", "run_id=tuned", f"seeds.path={seeds}", f"seeds.limit={s['seeds']}",
               f"generation.sampling.max_tokens={s['gen_tokens']}", f"discriminator.engine.model={out}/disc-ed/model",
               "quality.threshold=auto", f"calibration.data={ED}", "calibration.heldout_only=true",
               "calibration.limit=null", "judge.enabled=false", *split, *a.overrides],
       out, timings, run / "report.json")  # fmt: skip
    sizes = arm_files(run, out, seed=0)
    # 3. the same base, the same settings, four training sets
    extra = {"ed-only": [], "ed+selected": [run / "selected.alpaca.jsonl"],
             "ed+random": [out / "random.alpaca.jsonl"], "ed+kept": [out / "kept.alpaca.jsonl"]}  # fmt: skip
    for arm in ARMS:
        data = ",".join(str(x) for x in [ED, *extra[arm]])
        sh(f"train-{arm}", ["train", f"train.data=[{data}]", f"train.output={out}/{arm}", *train], out, timings,
           out / arm / "train_report.json")  # fmt: skip
    # 4. every model on the held-out pairs
    models = ["base=packaged:smollm2"] + [f"{arm}={out}/{arm}/model" for arm in ARMS]
    sh("evaluate", ["evaluate", f"{out}/evaluation", *[x for m in models for x in ("--model", m)], "--data", str(ED),
                    "evaluate.heldout_only=true", f"evaluate.limit={s['evaluate']}", *split, *a.overrides],
       out, timings, out / "evaluation" / "evaluation.json")  # fmt: skip

    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    report = json.loads((run / "report.json").read_text())
    result = {
        "machine": cpu_name(),
        "load_avg": os.getloadavg(),
        "scale": a.scale,
        **s,
        "training_side_pairs": n_train_side,
        "run": {"counts": report["counts"], "quality": report["quality"], "calibration": report.get("calibration")},
        "arm_sizes": sizes,
        "train": {arm: json.loads((out / arm / "train_report.json").read_text()) for arm in ("disc-ed", *ARMS)},
        "evaluation": {
            m: {"metrics": r["metrics"], "intervals": r["intervals"]} for m, r in evaluation["models"].items()
        },
        "differences": evaluation["differences"],
        "seconds": timings,
    }
    (out / "paper_loop.json").write_text(json.dumps(result, indent=2, default=str))
    order = ["base", *(arm.replace("+", "-") for arm in ARMS)]  # evaluate's labels ("+" is not kept)
    text = "\n".join(markdown(evaluation, [m for m in order if m in evaluation["models"]])) + "\n"
    (out / "paper_loop.md").write_text(text)
    print(json.dumps({k: result[k] for k in ("run", "arm_sizes", "seconds")}, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
