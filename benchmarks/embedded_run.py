"""Wall time of the default embedded run (issue target: at most 10 minutes on 2 cores).

    .venv/bin/python benchmarks/embedded_run.py [key=value ...]

Runs ``python -m synth_empathy run`` exactly as ``make run`` does (fresh run id, engine
start-ups included, the packaged models already converted), then prints one Markdown
row: wall time, per-stage seconds from the run's report, counts, and the machine's load
average before and after (this machine is often shared; a loaded run is slower).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name


def main(argv: list[str]) -> int:
    out = Path(tempfile.mkdtemp(prefix="se-embedded-"))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "synth_empathy", "run", f"output={out}", "run_id=bench", *argv],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    if proc.returncode not in (0, 1):
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    report = json.loads((out / "bench" / "report.json").read_text())
    s, c = report["seconds"], report["counts"]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in s.items())
    print(
        "| date | machine | wall (s) | budget 600 s: ratio | stages (s) | seeds / generations / samples / kept / selected | load before / after |"
    )
    print("| --- | --- | ---: | ---: | --- | --- | --- |")
    print(
        f"| {time.strftime('%Y-%m-%d')} | {cpu_name()} | {wall:.0f} | {wall / 600:.2f} | "
        f"{stages} | {c['seeds']} / {c['generations']} / {c['samples']} / {c['kept']} / {c['selected']} | "
        f"{load_before:.1f} / {load_after:.1f} |"
    )
    return 0 if c["selected"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
