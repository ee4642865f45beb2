"""``synth-empathy evaluate OUTPUT``: what a corpus is worth, measured on held-out dialogues.

Every model of ``evaluate.models`` answers the same held-out ED-style dialogues (a seed
file) through the discriminator
stage's own engine path (``ray.data.llm``, the engine settings of ``evaluate.engine``,
the discriminator's prompt layout), and the answers are scored against the dialogues'
own listener responses:

* BLEU-1/2/4 and ROUGE-L (:mod:`synth_empathy.core.text_metrics`), Distinct-1/2 of the
  answers, and the mean cosine between answer and reference in the quality stage's
  embedder (``quality.embedder``);
* optionally (``evaluate.judge=true``) the judge's three ratings of every answer.

With ``evaluate.heldout_only`` only the dialogues that ``train`` holds out are answered
(the split of :mod:`synth_empathy.core.heldout` with ``train.heldout_fraction`` and
``train.heldout_salt``: one setting, so training and evaluation cannot disagree).

``OUTPUT`` receives ``answers-<label>/`` (Parquet, one stage per model, resumable like
every stage), ``evaluation.json``, ``evaluation.md`` (the models side by side) and
``plots/evaluation.png``.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synth_empathy import schemas
from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input, load_with_aliases
from synth_empathy.errors import EvaluationInputError
from synth_empathy.logs import setup_logging

log = logging.getLogger(__name__)

METRICS = ("bleu_1", "bleu_2", "bleu_4", "rouge_l", "distinct_1", "distinct_2", "embedding_similarity")


def model_labels(specs: list[str]) -> list[tuple[str, str]]:
    """``[(label, spec)]``: ``label=spec`` as given, else the spec's last path part; made unique."""
    out, seen = [], {}
    for spec in specs:
        label, sep, rest = str(spec).partition("=")
        if sep and label and "/" not in label and ":" not in label:
            spec = rest
        else:
            label = re.split(r"[/:]", str(spec).rstrip("/"))[-1] or "model"
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)
        n = seen[label] = seen.get(label, 0) + 1
        out.append((label if n == 1 else f"{label}-{n}", spec))
    return out


def heldout_rows(cfg: Any, storage_options: dict | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The held-out pairs as discriminator rows (sorted by id, at most ``limit``), and what was read."""
    from synth_empathy.core.heldout import is_heldout
    from synth_empathy.core.sft_data import seed_row
    from synth_empathy.stages.seed_sources import default_seed_path, read_seeds

    e, fraction = cfg.evaluate, cfg.train.heldout_fraction if cfg.evaluate.heldout_only else None
    path = e.data or default_seed_path()
    seeds = read_seeds(path, layout=e.layout, storage_options=storage_options).to_arrow().sort_by("seed_id")
    rows = []
    for r in seeds.to_pylist():
        if fraction is not None and not is_heldout(r["context"], fraction, cfg.train.heldout_salt):
            continue
        rows.append(
            {"sample_id": r["seed_id"], "emotion": r.get("emotion") or "", **seed_row(r["context"], r["response"])}
        )
        if e.limit is not None and len(rows) >= e.limit:
            break
    if not rows:
        where = f"held out at train.heldout_fraction={fraction}" if fraction is not None else "in it"
        raise EvaluationInputError(f"evaluate.data {path}: no dialogue {where} to answer")
    info = {
        "data": path,
        "pairs_in_file": seeds.num_rows,
        "heldout_fraction": fraction,
        "answered": len(rows),
    }
    return pa.Table.from_pylist(rows, schema=schemas.EVAL_HELDOUT), info


def score_answers(answers: list[str], references: list[str], similarities: list[float]) -> dict[str, float]:
    """Every metric of one model's answers (pure; the similarities come from the embedder)."""
    from synth_empathy.core.diversity_metrics import distinct_n
    from synth_empathy.core.text_metrics import corpus_bleu, mean_rouge_l, tokens

    return {
        "bleu_1": corpus_bleu(answers, references, 1),
        "bleu_2": corpus_bleu(answers, references, 2),
        "bleu_4": corpus_bleu(answers, references, 4),
        "rouge_l": mean_rouge_l(answers, references),
        "distinct_1": distinct_n(answers, 1, tokens),
        "distinct_2": distinct_n(answers, 2, tokens),
        "embedding_similarity": sum(similarities) / len(similarities) if similarities else 0.0,
    }


def run_evaluation(output: str, cfg: Any) -> dict[str, Any]:
    """Answer the held-out set with every model into ``output``; returns the report."""
    from omegaconf import OmegaConf

    from synth_empathy.cli.judge import output_store
    from synth_empathy.cluster.ray_init import init_ray
    from synth_empathy.executor.runner import StageRunner
    from synth_empathy.models.embedder import encode
    from synth_empathy.models.weights import check_model, resolve_model
    from synth_empathy.stages.contract import StageContract
    from synth_empathy.stages.discriminator import discriminator_stage
    from synth_empathy.storage.run_store import storage_options

    e = cfg.evaluate
    if not e.models:
        raise EvaluationInputError("evaluate.models is empty: name at least one model")
    d = cfg.discriminator  # the prompt layout a trained discriminator learned
    labels = model_labels(list(e.models))
    for _, spec in labels:
        check_model(spec)
    check_model(cfg.quality.embedder)
    rows, info = heldout_rows(cfg, storage_options(e.data, cfg.storage) if e.data else None)
    store = output_store(output, storage_options(output, cfg.storage))
    store.check_writable()
    runner = StageRunner(store, progress_interval=cfg.ray.progress_interval_s)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for label, spec in labels:
        section = OmegaConf.create(  # the discriminator stage's fields, with this model
            {
                "engine": OmegaConf.merge(e.engine, {"model": spec}),
                "sampling": e.sampling,
                "system_prompt": d.system_prompt,
                "input_format": d.input_format,
            }
        )
        contract = StageContract(
            f"answers-{label}",
            None,
            ("sample_id", "instruction", "history"),
            schemas.EVAL_ANSWERS,
            tokens="disc_num_tokens",
        )

        def todo(salvage, section=section):
            import ray

            left = rows.filter(pc.invert(pc.is_in(rows.column("sample_id"), value_set=salvage.ids)))
            if left.num_rows == 0:
                return None
            init_ray(cfg, sections=("evaluate", "quality") + (("judge",) if e.judge else ()))
            return ray.data.from_arrow(left)

        log.info("[evaluate] %s (%s) answers %d held-out dialogues", label, spec, rows.num_rows)
        runner.keyed(
            contract,
            lambda ds, carry, section=section, spec=spec: discriminator_stage(
                ds, section, carry, model_path=resolve_model(spec)
            ),
            source=todo,
            columns=rows.column_names,
            part_rows=cfg.storage.part_rows,
        )
        table = store.read_table(contract.name).sort_by("sample_id")
        answers = [str(a or "") for a in table.column("disc_response").to_pylist()]
        refs = [str(r or "") for r in table.column("output").to_pylist()]
        vecs = encode(answers + refs, cfg.quality.embedder)
        n = len(answers)
        sims = [float(vecs[i] @ vecs[n + i]) for i in range(n) if answers[i].strip()]
        results[label] = {
            "model": spec,
            "rows": n,
            "errors": int(pc.sum(pc.invert(pc.is_null(table.column("disc_error")))).as_py() or 0),
            "empty_answers": sum(1 for a in answers if not a.strip()),
            "mean_answer_tokens": round(sum(table.column("disc_num_tokens").to_pylist()) / max(n, 1), 1),
            "metrics": score_answers(answers, refs, sims),
        }
        if e.judge:
            results[label]["judge"] = _judge_answers(cfg, runner, store, label, table)
    report = {
        "output": store.url,
        **info,
        "models": results,
        "sampling": OmegaConf.to_container(e.sampling),
        "input_format": d.input_format,
        "embedder": cfg.quality.embedder,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    store.write_json("evaluation.json", report)
    report["plot"] = _plot(store, results)
    store.write_json("evaluation.json", report)
    store.write_bytes("evaluation.md", to_markdown(report).encode())
    return report


def _judge_answers(cfg: Any, runner: Any, store: Any, label: str, answers: pa.Table) -> dict[str, Any]:
    """The judge's ratings of one model's answers (``output`` = the answer for the judge)."""
    from synth_empathy.stages.contract import StageContract
    from synth_empathy.stages.judge import judge_stage, judge_summary

    rows = answers.select(["sample_id", "instruction", "history"]).append_column(
        "output", answers.column("disc_response")
    )
    contract = StageContract(
        f"judged-{label}", None, ("sample_id", "output"), schemas.EVAL_JUDGED, tokens="judge_num_tokens"
    )

    def todo(salvage):
        import ray

        left = rows.filter(pc.invert(pc.is_in(rows.column("sample_id"), value_set=salvage.ids)))
        return ray.data.from_arrow(left) if left.num_rows else None

    from synth_empathy.models.weights import resolve_model

    runner.keyed(
        contract,
        lambda ds, carry: judge_stage(ds, cfg.judge, carry, model_path=resolve_model(cfg.judge.engine.model)),
        source=todo,
        columns=rows.column_names,
        part_rows=cfg.storage.part_rows,
    )
    return judge_summary(store.read_table(contract.name))


def _plot(store: Any, results: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from synth_empathy.report import save_plot

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(METRICS))
    for i, (label, r) in enumerate(results.items()):
        ax.bar(x + i * width, [r["metrics"][m] for m in METRICS], width, label=label)
    ax.set_xticks(x + width * (len(results) - 1) / 2, METRICS, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_title("held-out answers against the references")
    ax.legend(fontsize=8)
    return save_plot(store, fig, "plots/evaluation.png")


def to_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    lines = [
        "# Evaluation on held-out dialogues",
        "",
        f"{report['answered']} dialogues from `{report['data']}` (held-out fraction: "
        f"{report['heldout_fraction']}), greedy answers, {report['input_format']} input; similarity in "
        f"`{report['embedder']}`.",
        "",
        "| metric | " + " | ".join(models) + " |",
        "| --- | " + " | ".join("---:" for _ in models) + " |",
    ]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(f"{r['metrics'][m]:.4f}" for r in models.values()) + " |")
    for key in ("rows", "errors", "empty_answers", "mean_answer_tokens"):
        lines.append(f"| {key} | " + " | ".join(str(r[key]) for r in models.values()) + " |")
    if any("judge" in r for r in models.values()):
        for c in ("naturalness", "coherence", "empathy"):
            cells = [
                str((r.get("judge") or {}).get("criteria", {}).get(c, {}).get("mean", "")) for r in models.values()
            ]
            lines.append(f"| judge {c} | " + " | ".join(cells) + " |")
    lines += ["", f"![evaluation]({report.get('plot', 'plots/evaluation.png')})", ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="synth-empathy evaluate", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("output", help="output folder, path or URL")
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="[LABEL=]SPEC",
        help="a model to evaluate, repeatable (alias of evaluate.models)",
    )
    p.add_argument("--data", help="held-out seed file (alias of evaluate.data)")
    p.add_argument("--limit", type=int, help="most dialogues to answer (alias of evaluate.limit)")
    add_config_arguments(p)
    return p


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """``synth-empathy evaluate``: exit 0 on success, 2 with one ``error:`` line on bad input."""
    setup_logging()
    a = _parser().parse_args(argv)
    if a.models:
        a.overrides = [*a.overrides, "evaluate.models=[" + ",".join(f'"{m}"' for m in a.models) + "]"]
    cfg = load_with_aliases(a, {"data": "evaluate.data", "limit": "evaluate.limit"})
    from synth_empathy.training.inputs import ED_SOURCES, missing_local_file

    if cfg.evaluate.data and missing_local_file(cfg.evaluate.data):  # before any model is looked at
        raise EvaluationInputError(
            f"evaluate.data {cfg.evaluate.data}: no such file; pass EmpatheticDialogues' test.csv (Rashkin et al. "
            f"2019; {ED_SOURCES}), or leave evaluate.data empty for the shipped seeds"
        )
    report = run_evaluation(a.output, cfg)
    print(to_markdown(report))
    return 0
