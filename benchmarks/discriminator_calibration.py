"""Discriminators compared on one calibration: AUC per foil, and each one's paired difference
from the first (issue 25, item 6: tuned against untuned, with intervals).

    .venv/bin/python benchmarks/discriminator_calibration.py --out /tmp/disc_cal \\
        --model untuned=packaged:smollm2 --model tuned=/tmp/disc_default/model \\
        -- calibration.data=../shared/data/ed/valid.csv calibration.heldout_only=true calibration.limit=null

Each ``--model LABEL=SPEC`` runs ``synth-empathy calibrate OUT/LABEL --model SPEC`` with the
overrides after ``--`` (the same reference dialogues for all: same data, seed and split), a
finished calibration being read back, not redone. Then the AUC of every discriminator per
foil with its 95 % interval, and the difference of each from the first with the interval of
the paired bootstrap (the same dialogues resampled for both; significant when it excludes
0), printed as Markdown and written to ``OUT/comparison.md`` / ``comparison.json``.
A label may carry extra overrides for that discriminator alone: ``--model
greedy=packaged:smollm2@discriminator.sampling.temperature=0``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from synth_empathy.core.calibration import FOILS, auc_difference


def calibrate(out: Path, spec: str, overrides: list[str]) -> dict:
    if not (out / "calibration.json").exists():
        model, _, extra = spec.partition("@")
        cmd = [sys.executable, "-m", "synth_empathy", "calibrate", str(out), "--model", model, *overrides]
        cmd += [x for x in extra.split(",") if x]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((out / "calibration.json").read_text())


def columns(out: Path) -> dict[str, list]:
    t = pq.read_table(out / "calibration_scores").sort_by("sample_id")
    return {c: t.column(c).to_pylist() for c in t.column_names}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", action="append", required=True, metavar="LABEL=SPEC[@k=v,...]")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    labels = [m.split("=", 1) for m in a.model]
    results, scores = {}, {}
    for label, spec in labels:
        results[label] = calibrate(a.out / label, spec, a.overrides)
        scores[label] = columns(a.out / label)
    base = labels[0][0]
    for label in results:
        if scores[label]["sample_id"] != scores[base]["sample_id"]:
            raise SystemExit(f"{label} calibrated other dialogues than {base}: give both the same data and seed")
    lines = [
        f"Reference: {results[base]['reference']} ({results[base]['dialogues']} dialogues). AUC of the true reply "
        "against each foil, 95 % interval; difference from the first row with its paired-bootstrap interval.",
        "",
        "| discriminator | mean answer vs true reply | " + " | ".join(FOILS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in FOILS) + " |",
    ]
    table = {}
    for label, spec in labels:
        r, cells, row = results[label], [], {}
        for kind in FOILS:
            f = r["foils"][kind]
            cell = f"{f['auc']:.3f} [{f['low']:.3f}, {f['high']:.3f}]"
            row[kind] = {"auc": f["auc"], "low": f["low"], "high": f["high"]}
            if label != base:
                d = auc_difference(
                    (scores[label]["human_score"], scores[label][f"{kind}_score"]),
                    (scores[base]["human_score"], scores[base][f"{kind}_score"]),
                    resamples=a.resamples,
                )
                sig = "significant" if d.low > 0 or d.high < 0 else "not significant"
                cell += f"; {d.point:+.3f} [{d.low:+.3f}, {d.high:+.3f}] {sig}"
                row[kind]["difference"] = {"point": d.point, "low": d.low, "high": d.high}
            cells.append(cell)
        table[label] = {"spec": spec, "human_mean": r["human"]["mean"], **row}
        lines.append(f"| {label} (`{spec}`) | {r['human']['mean']:.1f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (a.out / "comparison.md").write_text(text)
    (a.out / "comparison.json").write_text(json.dumps(table, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
