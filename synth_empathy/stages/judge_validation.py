"""The judge validated on human replies: the reference set, the judging, the verdict.

The reference dialogues are the quality calibration's (``calibration.data``,
``calibration.layout``, ``calibration.limit``; empty data = the run's seed file, else the
shipped one), one reply each (:func:`synth_empathy.core.calibration.reference_rows`). Each
reference's true reply and its degraded replies
(:mod:`synth_empathy.core.judge_validation`) go through the judge stage itself - same
prompt, same engine, same scoring - and the verdict per criterion lands in
:data:`RESULT_FILE`. A criterion that is not discriminative is a warning (log, report,
card), never a stop: the run goes on, and its mean is not shown as the data's quality.

in:  reference dialogues (a seed source)
out: ``judge_validation/`` (the judged validation rows: :data:`SCHEMA`) and
     ``judge_calibration.json`` (:func:`validation_result`)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from synth_empathy import schemas
from synth_empathy.core.judge_validation import (
    DEGRADATIONS,
    EXPECTED,
    MIN_REFERENCES,
    not_discriminative,
    validation_rows,
    verdict,
)
from synth_empathy.core.sft_data import seed_row
from synth_empathy.errors import JudgeValidationError
from synth_empathy.stages import judge
from synth_empathy.stages.calibration import reference_pairs, reference_path, too_few
from synth_empathy.stages.contract import StageContract

log = logging.getLogger(__name__)

RESULT_FILE = "judge_calibration.json"

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("reference", pa.string()),
        ("kind", pa.string()),
        ("instruction", pa.string()),
        ("output", pa.string()),
        ("history", pa.list_(schemas.TURN)),
    ]
    + schemas.JUDGED_COLUMNS
)

CONTRACT = StageContract(
    name="judge_validation", input=None, requires=("sample_id", "output"), produces=SCHEMA, tokens="judge_num_tokens"
)

RULE = (
    "a criterion is discriminative when its ratings vary and its AUC interval lies above 0.5 against each "
    "degradation it should notice ("
    + "; ".join(f"{c}: {', '.join(d.replace('_', ' ') for d in ds)}" for c, ds in EXPECTED.items())
    + ")"
)


def reference_source(cfg: Any) -> str:
    """Where the reference dialogues come from: calibration.data, else the run's seed file."""
    return reference_path(cfg)[0]


def load_references(cfg: Any) -> list[dict[str, Any]]:
    """The reference dialogues as judge rows (``history, instruction, output`` + the pair's
    ``seed_id, emotion``): the quality calibration's own references
    (:func:`synth_empathy.stages.calibration.reference_pairs`); a one-line
    :class:`JudgeValidationError` when there are fewer than the minimum. Reads the seed
    source only: call it before Ray starts."""
    refs = reference_pairs(cfg)
    if len(refs) < MIN_REFERENCES:
        raise JudgeValidationError(
            f"judge validation: {too_few(cfg, len(refs))}: raise calibration.limit (now {cfg.calibration.limit}) "
            "or give calibration.data with more dialogues"
        )
    return [{**seed_row(r["context"], r["response"]), "seed_id": r["seed_id"], "emotion": r["emotion"]} for r in refs]


def validation_table(references: list[dict[str, Any]], seed: int) -> pa.Table:
    """The rows to judge, before judging (the judge's columns null)."""
    rows = validation_rows(references, seed)
    names = [n for n, _ in schemas.JUDGED_COLUMNS]
    return pa.Table.from_pylist([{**r, **dict.fromkeys(names)} for r in rows], schema=SCHEMA)


def judge_references(table: pa.Table, cfg: Any, model_path: str | None = None, served: Any = None) -> pa.Table:
    """Run the judge stage over the validation rows (needs Ray); returns them rated."""
    import ray

    todo = table.drop_columns([n for n, _ in schemas.JUDGED_COLUMNS])
    out = judge.judge_stage(
        ray.data.from_arrow(todo),
        cfg.judge,
        carry=todo.column_names,
        model_path=model_path,
        served=served,
        name="judge_validation",  # its own counts on a shared engine, apart from the judge stage's
    )
    blocks = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    rated = pa.concat_tables([t.select(SCHEMA.names).cast(SCHEMA) for t in blocks]) if blocks else SCHEMA.empty_table()
    return rated.sort_by("sample_id")


def validation_result(rated: pa.Table, references: int, cfg: Any, source: str) -> dict[str, Any]:
    """What :data:`RESULT_FILE` holds: the verdict per criterion and what it was measured on."""
    rows = rated.select(["reference", "kind", *judge.CRITERIA, "judge_reason"]).to_pylist()
    criteria = verdict(rows, references, cfg.calibration.bootstrap, cfg.seed)
    return {
        "data": source,
        "references": references,
        "judged_rows": rated.num_rows,
        "kinds": dict(sorted(Counter(r["kind"] for r in rows).items())),
        "reasons": dict(sorted(Counter(r["judge_reason"] for r in rows if r["judge_reason"]).items())),
        "model": cfg.judge.engine.model,
        "scoring": "one criterion per request; expected rating over the tokens 1, 2, 3 (top-20 logprobs)",
        "degradations": list(DEGRADATIONS),
        "rule": RULE,
        "bootstrap": cfg.calibration.bootstrap,
        "criteria": criteria,
        "not_discriminative": not_discriminative(criteria),
    }


def warn(result: dict[str, Any]) -> None:
    """The log's warning for each criterion that is not discriminative."""
    for c in result.get("not_discriminative") or []:
        log.warning(
            "[judge] %s is not discriminative on human replies (%s): its ratings are not a measure of the "
            "data's quality (%s)",
            c,
            result["criteria"][c]["why_not"],
            RESULT_FILE,
        )


def run_validation(
    runner: Any, store: Any, cfg: Any, references: list[dict[str, Any]], engine: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The checkpointed validation: judge the references (unless a finished
    ``judge_validation`` stage is there), write and return :data:`RESULT_FILE`'s content.
    ``engine()``: ``model_path`` and ``served``, as the judge stage gets them (called only
    when there is judging to do: a finished validation starts no engine)."""
    source = reference_source(cfg)

    def build() -> None:
        store.write_table(
            CONTRACT.name, judge_references(validation_table(references, cfg.seed), cfg, **engine()), SCHEMA
        )

    marker = runner.run(CONTRACT.name, build, key=CONTRACT.key)
    result = read_result(store) if marker.get("done_earlier") else None
    if result is not None:
        log.info("[judge] validation read back from %s", RESULT_FILE)
    if result is None:
        result = validation_result(store.read_table(CONTRACT.name), len(references), cfg, source)
        store.write_json(RESULT_FILE, result)
    warn(result)
    return result


def read_result(store: Any) -> dict[str, Any] | None:
    """:data:`RESULT_FILE` of a run folder, or None."""
    return store.read_json(RESULT_FILE, missing=None)


# --------------------------------------------------------------------------- report and card


def _cell(a: dict[str, Any], expected: bool) -> str:
    if a["auc"] is None:  # no pair of that kind with both ratings
        return "n/a"
    text = f"{a['auc']:.2f} [{a['low']:.2f}, {a['high']:.2f}]"
    return f"**{text}**" if expected else text


def markdown(result: dict[str, Any] | None, summary: dict[str, Any] | None, heading: str = "##") -> list[str]:
    """The judge's section of report.md and the card: the validation's AUC table, a warning
    for each criterion that is not discriminative, and the rows' mean ratings - under a
    heading that says so where they are not a measure of quality."""
    if not result and not summary:
        return []
    lines = ["", f"{heading} Judge", ""]
    if result:
        lines += [
            f"Validated on {result['references']} human reference dialogues ({result['data']}): the judge rated each "
            "true listener reply and degraded ones. AUC = P(the true reply is rated above the degraded one), "
            "ties 1/2, with a bootstrap 95 % interval over the dialogues; 0.5 is a coin. The rule: "
            f"{result['rule']}; those cells are in bold.",
            "",
            "| criterion | " + " | ".join(d.replace("_", " ") for d in result["degradations"]) + " | discriminative |",
            "| --- |" + " ---: |" * len(result["degradations"]) + " --- |",
        ]
        for c in judge.CRITERIA:  # the file's keys are sorted; the report keeps the criteria's order
            v = result["criteria"][c]
            cells = [_cell(v["auc"][d], d in v["expected"]) for d in result["degradations"]]
            verdict = "yes" if v["discriminative"] else f"**no**: {v['why_not']}"
            lines.append(f"| {c} | " + " | ".join(cells) + f" | {verdict} |")
        failing = result["not_discriminative"]
        if failing:
            lines += [
                "",
                f"**Warning:** the judge is not discriminative on {', '.join(failing)}: it does not tell human "
                "replies from degraded ones there, so its ratings of those criteria say nothing about this "
                "data's quality.",
            ]
    else:
        failing = None  # not validated: nothing is known either way
    if summary and summary.get("rows"):
        lines += _means(summary, result, failing, heading)
    return lines


def _means(
    summary: dict[str, Any], result: dict[str, Any] | None, failing: list[str] | None, heading: str
) -> list[str]:
    def table(criteria: list[str]) -> list[str]:
        rows = ["| criterion | mean | sd | min | max |", "| --- | ---: | ---: | ---: | ---: |"]
        for c in criteria:
            s = summary["criteria"][c]
            cells = ["n/a" if s[k] is None else f"{s[k]:.2f}" for k in ("mean", "sd", "min", "max")]
            rows.append(f"| {c} | " + " | ".join(cells) + " |")
        return rows

    rated = f"{summary['parsed']} of {summary['rows']} rows rated on all three criteria"
    reasons = f"; without a rating: {summary['reasons']}" if summary["reasons"] else ""
    lines = ["", f"{rated} (expected rating in [1, 3]){reasons}."]
    if result is None:
        return lines + [
            "",
            f"{heading}# Mean ratings (the judge was not validated in this run: not known to measure quality)",
            "",
            *table(list(summary["criteria"])),
        ]
    good = [c for c in summary["criteria"] if c not in failing]
    if good:
        lines += ["", f"{heading}# Mean ratings (criteria the judge passed)", "", *table(good)]
    if failing:
        lines += [
            "",
            f"{heading}# Mean ratings that are NOT a measure of quality (the judge failed its validation)",
            "",
            *table(failing),
        ]
    return lines
