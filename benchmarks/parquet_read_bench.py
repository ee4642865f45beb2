"""A Ray Data Parquet read of one small stage folder, Ray's footer readers vs one.

    .venv/bin/python benchmarks/parquet_read_bench.py <run folder>/generations [--rounds 2]

Ray Data lists a Parquet folder by reading each file's footer on a pool of actors
(``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``, 32 by default), each a new worker process,
started again for every read. Every pipeline stage reads its input this way once, so on
a small machine the pool's start-up is paid per stage. Each configuration runs in its own
local Ray (``num_cpus=5`` as the default run's), reads the folder four times with a
3 s pause (idle workers go, as between stages) and prints the seconds per read; the
configurations alternate, so a burst of load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from machine import cpu_name


def child(path: str, readers: str) -> dict:
    import ray
    from ray.data import DataContext

    env = {"TOKENIZERS_PARALLELISM": "false"}
    if readers != "ray-default":
        env["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = readers
    # The driver plans the read (and sizes the reader pool), so the variable must be in
    # its own environment, as synth_empathy.cluster.ray_init puts it.
    os.environ.update(env)
    ray.init(address="local", num_cpus=5, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    seconds, rows = [], 0
    for _ in range(4):
        t = time.perf_counter()
        rows = len(ray.data.read_parquet(path, file_extensions=["parquet"]).map(lambda r: r).take_all())
        seconds.append(round(time.perf_counter() - t, 2))
        time.sleep(3)
    return {"readers": readers, "rows": rows, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.path, args.child)))
        return 0
    print(f"# {cpu_name()}; {args.path}")
    for _ in range(args.rounds):
        for readers in ("ray-default", "1"):
            out = subprocess.run(
                [sys.executable, __file__, args.path, "--child", readers],
                capture_output=True,
                text=True,
                env=os.environ,
            )
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            print(lines[-1] if lines else out.stderr[-2000:], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
