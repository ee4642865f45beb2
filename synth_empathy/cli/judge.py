"""Judging a dataset on its own: the judge stage (method step 6) over any corpus.

    synth-empathy judge INPUT OUTPUT [--preset NAME] [--sample N] [key=value ...]

Inside a run the judge rates the selected rows. This command rates any other set the
same way, so corpora can be compared on one scale: the seeds, a run's kept rows before
selection, another generator's output, or a run's export. ``INPUT`` (a local path or any
fsspec URL) is one of

* a Parquet file or folder with an ``output`` column and a ``history`` column (turns of
  ``role, content``) or an ``instruction`` column (the dialogue as text), like a run's
  ``selected/`` stage; the id column (``--id-column``, default ``sample_id``) is used when
  present, else rows are named ``row-<n>``;
* a JSONL file of alpaca records (``instruction``, ``input``, ``output``) or chat records
  (``messages``, the last one the assistant's answer to judge), like the
  ``selected.*.jsonl`` exports.

JSONL is read by the reader ``synth-empathy train`` uses too
(:mod:`synth_empathy.core.export_records`). Rows that cannot be judged are counted and
reported as dropped, never silently lost, under its reasons: ``no_output`` (empty or
missing answer, also in a Parquet ``output`` column), ``unreadable_line`` (not JSON),
``unknown_record`` (neither alpaca nor chat), ``no_answer_last`` (a chat record that does
not end with an assistant message). A missing column, an unreadable file or a doubled id
is an error (:class:`JudgeInputError`, one line) before Ray starts or a model loads.

``OUTPUT`` is a folder that receives ``judged/`` (Parquet: the input columns plus the
judge's, as in :data:`synth_empathy.schemas.JUDGE_OUTPUT`), ``judged.done.json`` and
``judge_report.json`` (means, distributions, reasons, rows/s and tokens/s). The judging is keyed by the row id
like the pipeline's LLM stages: run the same command again after a crash and only the
rows the finished Parquet parts do not hold are judged; a finished output is read back.
The judge's engine and sampling come from the ``judge`` section of the config (preset and
``key=value`` overrides, as for ``synth-empathy run``). Whether its ratings tell good
replies from bad ones is a separate measurement: ``synth-empathy judge-validate``.
"""

from __future__ import annotations

import argparse
import logging
import posixpath
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth_empathy import schemas
from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input, load_with_aliases
from synth_empathy.core.export_records import read_records, text
from synth_empathy.errors import JudgeInputError  # noqa: F401 (re-exported)
from synth_empathy.logs import setup_logging
from synth_empathy.stages.contract import StageContract
from synth_empathy.storage import parts

log = logging.getLogger(__name__)

REPORT_FILE = "judge_report.json"
STAGE = "judged"
# The judge stage's contract over a corpus from outside a run: the rows as read above.
COMMAND_CONTRACT = StageContract(
    name=STAGE, input=None, requires=("sample_id", "output"), produces=schemas.JUDGE_OUTPUT
)


# --------------------------------------------------------------------------- reading (pure)


def _turns(value: Any) -> list[dict[str, str]] | None:
    if value is None:
        return None
    return [{"role": str(t.get("role", "")), "content": str(t.get("content", ""))} for t in value]


def rows_from_table(table: pa.Table, id_column: str = "sample_id", where: str = "input") -> tuple[pa.Table, Counter]:
    """Normalise a Parquet table to :data:`~synth_empathy.schemas.JUDGE_INPUT`; returns ``(rows, dropped)``."""
    names = table.column_names
    if "output" not in names:
        raise JudgeInputError(f"{where}: no column 'output' (the answer to judge); columns: {', '.join(names)}")
    if "history" not in names and "instruction" not in names:
        raise JudgeInputError(
            f"{where}: needs a 'history' or an 'instruction' column with the dialogue; columns: {', '.join(names)}"
        )
    n = table.num_rows
    ids = (
        [str(v) for v in table.column(id_column).to_pylist()] if id_column in names else [f"row-{i}" for i in range(n)]
    )
    outputs = table.column("output").to_pylist()
    instructions = table.column("instruction").to_pylist() if "instruction" in names else [None] * n
    histories = table.column("history").to_pylist() if "history" in names else [None] * n
    rows, dropped = [], Counter()
    for i in range(n):
        if not text(outputs[i]):
            dropped["no_output"] += 1
            continue
        rows.append(
            {
                "sample_id": ids[i],
                "instruction": text(instructions[i]),
                "output": text(outputs[i]),
                "history": _turns(histories[i]),
            }
        )
    return _check_ids(pa.Table.from_pylist(rows, schema=schemas.JUDGE_INPUT), where), dropped


def rows_from_jsonl(lines, where: str = "input") -> tuple[pa.Table, Counter, list[int]]:
    """Normalise JSONL text lines; returns ``(rows, dropped, unreadable line numbers)``."""
    rows, dropped, bad = read_records(lines)
    return _check_ids(pa.Table.from_pylist(rows, schema=schemas.JUDGE_INPUT), where), dropped, bad


def _check_ids(table: pa.Table, where: str) -> pa.Table:
    ids = table.column("sample_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids).to_pylist()
        doubled = [c["values"] for c in counts if c["counts"] > 1][:3]
        raise JudgeInputError(f"{where}: ids must be unique (a re-run skips rows by id); doubled: {doubled}")
    return table


def sample_rows(table: pa.Table, n: int | None, seed: int) -> pa.Table:
    """A seeded random subset of ``n`` rows (all rows when ``n`` is None or larger)."""
    if n is None or n >= table.num_rows:
        return table
    picks = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=n, replace=False))
    return table.take(pa.array(picks))


def read_input(
    input: str, id_column: str = "sample_id", storage_options: dict | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """Read and normalise ``input``; returns ``(rows, info)`` with ``info["dropped"]``."""
    import fsspec
    import pyarrow.dataset as pds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    try:
        fs, path = fsspec.core.url_to_fs(input, **(storage_options or {}))
        exists = fs.exists(path)
    except Exception as e:
        raise JudgeInputError(f"input {input}: cannot open ({type(e).__name__}: {e})") from None
    if not exists:
        raise JudgeInputError(f"input {input}: no such file or folder")
    if path.endswith((".jsonl", ".json")):
        try:
            with fs.open(path, "r", encoding="utf-8") as f:
                table, dropped, bad = rows_from_jsonl(f, where=f"input {input}")
        except UnicodeDecodeError as e:
            raise JudgeInputError(f"input {input}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        info = {"format": "jsonl", "unreadable_lines": bad[:20]}
    else:
        try:
            data = pds.dataset(path, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs)))
            raw = data.to_table()
        except Exception as e:
            raise JudgeInputError(
                f"input {input}: cannot read as Parquet or JSONL ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        table, dropped = rows_from_table(raw, id_column, where=f"input {input}")
        info = {"format": "parquet", "id_column": id_column if id_column in raw.column_names else None}
    info["dropped"] = dict(sorted(dropped.items()))
    info["rows_read"] = table.num_rows + sum(dropped.values())
    return table, info


# --------------------------------------------------------------------------- the job


def output_store(output: str, storage_options: dict | None = None):
    """A :class:`~synth_empathy.storage.run_store.RunStore` whose run folder is ``output`` itself."""
    from synth_empathy.storage.run_store import RunStore

    protocol, _, path = output.rpartition("://")
    path = path.rstrip("/")
    parent, name = posixpath.split(path or "")
    if not name or name in (".", ".."):
        raise JudgeInputError(f"output {output!r}: name a folder to write into")
    if protocol and protocol not in ("file", "local"):
        if not parent:
            raise JudgeInputError(
                f"output {output!r}: name a folder inside the bucket, e.g. {output.rstrip('/')}/judged"
            )
        return RunStore(f"{protocol}://{parent}", name, storage_options)
    return RunStore(parent or ".", name, storage_options)


def run_judging(
    input: str, output: str, cfg: Any, *, id_column: str = "sample_id", sample: int | None = None
) -> dict[str, Any]:
    """Judge ``input`` into ``output`` with ``cfg.judge``; returns the report."""
    from synth_empathy.cluster.ray_init import init_ray
    from synth_empathy.executor.runner import StageRunner
    from synth_empathy.models.weights import check_model, resolve_model
    from synth_empathy.stages.judge import judge_stage, judge_summary
    from synth_empathy.storage.run_store import storage_options

    if sample is not None and sample < 1:
        raise JudgeInputError(f"--sample must be at least 1, got {sample}")
    t0 = time.perf_counter()
    j = cfg.judge
    check_model(j.engine.model)
    opts = storage_options(input, cfg.storage)
    rows, info = read_input(input, id_column, opts)
    if rows.num_rows == 0:
        raise JudgeInputError(f"input {input}: no row to judge (dropped: {info['dropped'] or 'none'})")
    rows = sample_rows(rows, sample, cfg.seed)
    store = output_store(output, storage_options(output, cfg.storage))
    store.check_writable()

    todo = rows.slice(0, 0)

    def remaining(salvage):
        """The rows no salvaged part holds, as a Ray Dataset; None when none is left."""
        nonlocal todo
        import ray

        todo = rows.filter(pc.invert(pc.is_in(rows.column("sample_id"), value_set=salvage.ids)))
        if salvage.rows_kept:
            log.info("[judge] resuming: %d rows already judged, %d to go", salvage.rows_kept, todo.num_rows)
        if todo.num_rows == 0:  # no engine start for nothing to judge
            return None
        init_ray(cfg, sections=("judge",))
        log.info("[judge] rating %d rows with %s", todo.num_rows, j.engine.model)
        return ray.data.from_arrow(todo)

    marker = StageRunner(store, progress_interval=cfg.ray.progress_interval_s).keyed(
        COMMAND_CONTRACT,
        lambda ds, carry: judge_stage(ds, j, carry, model_path=resolve_model(j.engine.model)),
        source=remaining,
        columns=rows.column_names,
        part_rows=parts.part_rows(cfg.storage, j),
    )
    seconds = time.perf_counter() - t0
    table = store.read_table(STAGE, columns=["sample_id"] + [c for c, _ in schemas.JUDGED_COLUMNS])
    new = pc.is_in(table.column("sample_id"), value_set=todo.column("sample_id"))
    tokens = pc.sum(table.filter(new).column("judge_num_tokens")).as_py() or 0
    report = {
        "input": input,
        "output": store.url,
        **info,
        "sampled": sample,
        "seed": cfg.seed,
        "rows_judged": table.num_rows,
        "judge": judge_summary(table),
        "model": j.engine.model,
        "scoring": "one criterion per request; expected rating over the tokens 1, 2, 3 (top-20 logprobs)",
        # Wall time of this command, engine start-up included; the rates count only the
        # rows it judged itself (not those a finished or salvaged output already held).
        "this_call": {
            "rows": todo.num_rows,
            "seconds": round(seconds, 2),
            "rows_per_s": round(todo.num_rows / seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2),
        },
        "resumed": None if marker.get("done_earlier") else marker.get("salvaged"),
    }
    store.write_json(REPORT_FILE, report)
    return report


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="synth-empathy judge", description="Rate a dataset's answers 1-3 on naturalness, coherence and empathy."
    )
    p.add_argument("input", help="Parquet file/folder or JSONL (alpaca or chat records), path or URL")
    p.add_argument("output", help="output folder, path or URL")
    p.add_argument("--id-column", default="sample_id", help="row id column of a Parquet input")
    p.add_argument("--sample", type=int, help="judge a random subset of this many rows (seeded by `seed`)")
    add_config_arguments(p)  # e.g. judge.engine.replicas=4
    return p


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """``synth-empathy judge``: exit 0 on success, 2 with one ``error:`` line on bad input."""
    setup_logging()
    a = _parser().parse_args(argv)
    cfg = load_with_aliases(a, {})
    report = run_judging(a.input, a.output, cfg, id_column=a.id_column, sample=a.sample)
    s = report["judge"]
    # Means only: whether they measure quality is judge-validate's question, not this command's.
    means = ", ".join(f"{c} {v['mean']}" for c, v in s["criteria"].items())
    print(
        f"judged {s['parsed']} of {report['rows_judged']} rows (mean ratings {means}; dropped before judging: "
        f"{report['dropped'] or 'none'}) -> {report['output']}"
    )
    return 0 if s["parsed"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
