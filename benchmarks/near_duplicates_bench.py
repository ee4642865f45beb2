"""Near-duplicate removal: an approximate FAISS index against exact, same rows, same run.

``synth_empathy.core.near_duplicates.near_duplicates`` with ``index=exact`` (blocked numpy
products, O(N^2 d)) and with approximate indexes (``ivf``, ``hnsw``, with parameters:
``ivf:nprobe=4``). For each approximate run: seconds, the ratio to exact's seconds
in the same process (wall and process CPU seconds: on a shared machine the CPU
seconds move less with the load), and :func:`compare` against exact - recall (share of the rows exact
drops that the index also drops), precision, agreement (same keep/drop decision), whether
the kept sets are identical - and the run's own :func:`audit` (1,000 kept rows checked
exactly; its seconds are not in the index's). ``--no-exact`` skips exact (1M rows: exact
takes over an hour; give its time from a smaller measured run, N^2).

Data: ``repeating_corpus`` of faiss_bench.py (clustered unit vectors, d = 384, with 20 %
of the rows near copies of others at cosine about 0.98, shuffled), or ``--data ed``:
MiniLM embeddings of the distinct utterances of ED valid.csv (kcenter_bench.py, cached).

    PYTHONPATH=. .venv/bin/python benchmarks/near_duplicates_bench.py --rows 100000 --specs ivf hnsw
    PYTHONPATH=. .venv/bin/python benchmarks/near_duplicates_bench.py --rows 1000000 --no-exact --specs ivf
    PYTHONPATH=. .venv/bin/python benchmarks/near_duplicates_bench.py --data ed --threshold 0.9

One JSON record per run, appended to ``--out`` (default benchmarks/out/near_duplicates.jsonl).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kcenter_bench import OUT  # noqa: E402
from machine import cpu_name, record  # noqa: E402


def data(kind: str, rows: int, ed_csv: str | None) -> np.ndarray:
    if kind == "ed":
        import kcenter_bench

        if ed_csv:
            kcenter_bench.ED_VALID = Path(ed_csv)
        x = kcenter_bench.ed_embeddings()
        return x[:rows] if rows else x
    from faiss_bench import repeating_corpus

    return repeating_corpus(rows)


def main(argv=None) -> int:
    from synth_empathy.core.near_duplicates import audit, compare, near_duplicates

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows (ed: at most this many; 0 = all)")
    p.add_argument("--data", choices=("syn", "ed"), default="syn")
    p.add_argument("--ed-csv", help="ED valid.csv (default: ../shared/data/ed/valid.csv beside the repository)")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--specs", nargs="+", default=["ivf", "hnsw"], help="approximate indexes to time")
    p.add_argument("--no-exact", action="store_true", help="do not run exact (1M rows: over an hour)")
    p.add_argument("--out", default=str(OUT / "near_duplicates.jsonl"))
    a = p.parse_args(argv)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    x = data(a.data, a.rows, a.ed_csv)
    base = {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_name(),
        "data": "repeating_corpus" if a.data == "syn" else "ed_valid_distinct_minilm",
        "rows": len(x),
        "d": int(x.shape[1]),
        "threshold": a.threshold,
    }
    print(f"# {len(x):,} x {x.shape[1]} rows in {time.perf_counter() - t:.1f} s; {base['cpu']}", flush=True)
    exact = None
    if not a.no_exact:
        load = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        exact = near_duplicates(x, a.threshold, index="exact")
        sec_exact, cpu_exact = time.perf_counter() - t, time.process_time() - c
        rec = {**base, "spec": "exact", "method": exact.method, "seconds": sec_exact, "cpu_seconds": cpu_exact}
        rec["dropped"] = exact.dropped
        record(a.out, {**rec, "load": [load, os.getloadavg()[0]]})
    for spec in a.specs:
        load = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        got = near_duplicates(x, a.threshold, index=spec)
        sec, cpu = time.perf_counter() - t, time.process_time() - c
        load_after = os.getloadavg()[0]
        t = time.perf_counter()
        aud = audit(x, got)
        rec = {**base, "spec": spec, "method": got.method, "seconds": sec, "cpu_seconds": cpu, "dropped": got.dropped}
        rec["audit"] = aud
        rec.update(audit_seconds=time.perf_counter() - t, load=[load, load_after])
        if exact is not None:
            rec["compare"] = compare(exact, got)
            rec.update(exact_seconds=sec_exact, ratio_to_exact=sec / sec_exact, cpu_ratio_to_exact=cpu / cpu_exact)
        record(a.out, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
