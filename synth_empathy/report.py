"""The run report: counts at every stage, drop reasons, timings, throughput, plots.

Everything is computed from the run folder's stage tables (not from counters kept in
memory), so the report of a resumed run is as complete as that of a run in one go, and
a report can be rebuilt from a run folder at any time (:func:`write_report`).

Counts, drop reasons and score statistics are exact, from projected numeric columns
(Arrow compute, no Python rows). The diversity metrics read texts and embeddings, so
they use bounded samples: at most ``DIVERSITY_ROWS`` kept rows and half as many
selected rows, drawn with the run's seed; the report says how many of how many.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth_empathy.core import standin
from synth_empathy.core.diversity_metrics import bounded_sample, diversity_report
from synth_empathy.stages import judge_validation
from synth_empathy.stages.calibration import markdown_lines as calibration_markdown
from synth_empathy.stages.judge import CRITERIA, judge_summary

log = logging.getLogger(__name__)

STAGES = ("seeds", "generations", "samples", "discriminated", "scored", "selected")
DIVERSITY_ROWS = 20_000  # kept rows the diversity metrics read at most (selected rows: half)


def _counts(table, column: str) -> Counter:
    """Non-null values of a column and how often each occurs, without Python rows."""
    counts = pc.value_counts(pc.drop_null(table.column(column)))
    return Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def _value_counts(table, column: str) -> dict[str, int]:
    counts = _counts(table, column)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _scores(table) -> np.ndarray:
    """The non-null quality scores as float64."""
    return pc.drop_null(table.column("quality_score")).to_numpy().astype(np.float64, copy=False)


def _read_json(store, name: str) -> dict[str, Any]:
    return store.read_json(name, missing={})


def build_report(store, cfg, timings: dict[str, float]) -> dict[str, Any]:
    gens = store.read_table("generations", columns=["num_generated_tokens", "error"])
    samples = store.read_table("samples", columns=["n_rounds", "n_history", "drop_reason"])
    disc = store.read_table("discriminated", columns=["disc_num_tokens"])
    scored = store.read_table("scored", columns=["quality_score", "kept", "drop_reason"])
    selected = store.read_table("selected", columns=["n_history", "quality_score"])
    seeds_info = _read_json(store, "seeds.json")

    counts = {
        "seeds": store.count_rows("seeds"),
        "generations": gens.num_rows,
        "parsed": int(pc.sum(pc.greater(samples.column("n_rounds"), 0)).as_py() or 0),
        "samples": int(pc.sum(pc.is_null(samples.column("drop_reason"))).as_py() or 0),
        "discriminated": disc.num_rows,
        "kept": int(pc.sum(scored.column("kept")).as_py() or 0),
        "selected": selected.num_rows,
    }
    selection_info = _read_json(store, "selection.json")
    drops = {
        "seeds": seeds_info.get("dropped", {}),
        "samples": _value_counts(samples, "drop_reason"),
        "scored": _value_counts(scored, "drop_reason"),
        # rows removed before k-center (near duplicates), a reason each
        "selection": {r: n for r, n in selection_info.get("dropped", {}).items() if n},
    }
    tokens = {
        "generated": int(pc.sum(gens.column("num_generated_tokens")).as_py() or 0),
        "discriminator": int(pc.sum(disc.column("disc_num_tokens")).as_py() or 0),
    }
    if store.is_done("judged"):
        judged = store.read_table("judged", columns=["judge_num_tokens"])
        tokens["judge"] = int(pc.sum(judged.column("judge_num_tokens")).as_py() or 0)
    rows_in = {
        "generations": counts["generations"],
        "samples": counts["generations"],
        "discriminated": counts["discriminated"],
        "scored": counts["discriminated"],
        "selected": counts["kept"],
        "judged": counts["selected"],
    }
    throughput = {}
    for name, n in rows_in.items():
        secs = timings.get(name) or 0.0
        entry = {"rows": n, "seconds": secs, "rows_per_s": round(n / secs, 3) if secs else None}
        if name == "generations":
            entry["tokens_per_s"] = round(tokens["generated"] / secs, 2) if secs else None
        if name == "discriminated":
            entry["tokens_per_s"] = round(tokens["discriminator"] / secs, 2) if secs else None
        if name == "judged" and "judge" in tokens:
            entry["tokens_per_s"] = round(tokens["judge"] / secs, 2) if secs else None
        throughput[name] = entry

    scores = _scores(scored)
    selected_scores = _scores(selected)
    calibrated = _read_json(store, "calibration.json")
    threshold = calibrated["threshold"] if calibrated else float(cfg.quality.threshold)
    return {
        "run_id": store.run_id,
        "output": store.url,
        "counts": counts,
        "dropped": drops,
        "seconds": timings,
        "total_seconds": round(sum(timings.values()), 2),
        "throughput": throughput,
        "tokens": tokens,
        "quality": {
            "threshold": threshold,
            "threshold_source": calibrated.get("threshold_source", "set: quality.threshold as given"),
            "scored": int(len(scores)),
            "mean": float(scores.mean()) if len(scores) else None,
            "median": float(np.median(scores)) if len(scores) else None,
            # before the repeat check: the share of samples the threshold alone lets through
            "keep_rate": round(float((scores >= threshold).mean()), 4) if len(scores) else None,
            "kept_mean": float(selected_scores.mean()) if len(selected_scores) else None,
        },
        "calibration": calibrated or None,
        "history_lengths": {
            "samples": _value_counts_int(samples.filter(pc.is_null(samples.column("drop_reason"))), "n_history"),
            "selected": _value_counts_int(selected, "n_history"),
        },
        "selection": selection_info,
        "diversity": _diversity(store, cfg.seed),
        "judge": judge_summary(store.read_table("judged", columns=[*CRITERIA, "judge_reason"]))
        if store.is_done("judged")
        else None,
        "judge_validation": judge_validation.read_result(store),
        "models": {
            "generator": cfg.generation.engine.model,
            "discriminator": cfg.discriminator.engine.model,
            "embedder": cfg.quality.embedder,
        },
    }


def _diversity(store, seed: int, max_rows: int = DIVERSITY_ROWS) -> dict[str, Any]:
    """distinct-n and mean pairwise distance: the selected set vs random same-size subsets.

    From bounded samples (:func:`bounded_sample`, ids in ``sample_id`` order so the draw
    is a function of the rows and the seed): only the sampled rows' texts and embeddings
    are read, in one projected scan of the scored stage.
    """
    import pyarrow.dataset as pds

    from synth_empathy.core.arrow_matrix import list_matrix

    data = pds.dataset(store.fresh(store.path("scored")), filesystem=store.arrow_fs, format="parquet")
    kept_ids = data.to_table(columns=["sample_id"], filter=pc.field("kept")).column("sample_id").combine_chunks()
    if len(kept_ids) == 0:
        return {}
    selected_ids = store.read_table("selected", columns=["sample_id"]).column("sample_id").combine_chunks()
    kept_ids, selected_ids = (a.take(pc.sort_indices(a)) for a in (kept_ids, selected_ids))
    kept_s = kept_ids.take(pa.array(bounded_sample(len(kept_ids), max_rows, seed)))
    selected_s = selected_ids.take(pa.array(bounded_sample(len(selected_ids), max_rows // 2, seed + 1)))
    wanted = pc.unique(pa.concat_arrays([kept_s, selected_s]))
    rows = data.to_table(
        columns=["sample_id", "output", "embedding"],
        filter=pc.field("kept") & pc.field("sample_id").isin(wanted),
        batch_size=8192,
        batch_readahead=2,
        fragment_readahead=1,
    )

    def fetch(ids):
        part = rows.take(pc.index_in(ids, value_set=rows.column("sample_id")))
        return part.column("output").to_pylist(), list_matrix(part.column("embedding"))

    report = diversity_report(*fetch(selected_s), *fetch(kept_s), seed=seed)
    report["sampled"] = {
        "max_rows": max_rows,
        "kept": {"rows": len(kept_ids), "used": len(kept_s)},
        "selected": {"rows": len(selected_ids), "used": len(selected_s)},
    }
    return report


def _value_counts_int(table, column: str) -> dict[str, int]:
    counts = _counts(table, column)
    return {str(k): counts[k] for k in sorted(counts)}


def _plots(store, report: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster workers or CI
    import matplotlib.pyplot as plt

    written = []
    scores = _scores(store.read_table("scored", columns=["quality_score"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    # counted by numpy, drawn as 40 weighted bars: the figure holds 40 values, not every score
    counts, edges = np.histogram(scores, bins=np.linspace(scores.min(initial=0.0), 100, 41))
    ax.hist(edges[:-1], bins=edges, weights=counts, color="#4c78a8")
    t = report["quality"]["threshold"]
    ax.axvline(t, color="#d62728", linestyle="--", label=f"threshold T = {t:g}")
    ax.set_xlabel("quality score (100 x cosine)")
    ax.set_ylabel("samples")
    ax.set_title(f"Quality scores ({len(scores)} samples, {report['counts']['kept']} kept)")
    ax.legend()
    written.append(save_plot(store, fig, "plots/quality_scores.png"))
    if report.get("calibration") and store.is_done("calibration_scores"):
        human = _human_scores(store)
        written.append(_calibration_plot(store, scores, human, t))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    hist = report["history_lengths"]
    keys = sorted(set(hist["samples"]) | set(hist["selected"]), key=int)
    xs = np.arange(len(keys))
    ax.bar(xs - 0.2, [hist["samples"].get(k, 0) for k in keys], 0.4, label="samples")
    ax.bar(xs + 0.2, [hist["selected"].get(k, 0) for k in keys], 0.4, label="selected")
    ax.set_xticks(xs, keys)
    ax.set_xlabel("history rounds k")
    ax.set_ylabel("rows")
    ax.set_title("History length distribution")
    ax.legend()
    written.append(save_plot(store, fig, "plots/history_lengths.png"))
    return written


def _human_scores(store) -> np.ndarray:
    table = store.read_table("calibration_scores", columns=["human_score"])
    return pc.drop_null(table.column("human_score")).to_numpy().astype(np.float64, copy=False)


def _calibration_plot(store, generated: np.ndarray, human: np.ndarray, t: float) -> str:
    """The run's samples against the human replies: both score distributions as shares."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    low = min(generated.min(initial=0.0), human.min(initial=0.0))
    edges = np.linspace(low, 100, 41)
    for values, label, color in ((generated, "generated samples", "#4c78a8"), (human, "human replies", "#f58518")):
        counts, _ = np.histogram(values, bins=edges)
        share = counts / max(len(values), 1)
        kept = float((values >= t).mean()) if len(values) else 0.0
        ax.stairs(share, edges, label=f"{label} (n={len(values)}, {kept:.0%} >= T)", color=color, linewidth=1.8)
    ax.axvline(t, color="#d62728", linestyle="--", label=f"T = {t:g}")
    ax.set_xlabel("quality score (100 x cosine with the discriminator's answer)")
    ax.set_ylabel("share of rows")
    ax.set_title("Generated samples against human replies")
    ax.legend(fontsize=8)
    return save_plot(store, fig, "plots/quality_vs_human.png")


def save_plot(store, fig, name: str) -> str:
    """Write a matplotlib figure as PNG to ``name`` (under ``plots/``) in ``store``, close it;
    returns ``name``. The run report's plots and ``evaluate``'s use it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    store.fs.makedirs(store.path("plots"), exist_ok=True)
    store.write_bytes(name, buf.getvalue())
    return name


def near_duplicate_lines(s: dict[str, Any]) -> list[str]:
    """The report's lines on near-duplicate removal from the selection info ``s`` (none when off):
    how many rows went, and how they were found (exact, or an approximate index and its audit)."""
    if s.get("near_duplicate_cosine") is None:
        return []
    lines = [
        f"- near duplicates: {s['dropped']['near_duplicate']} of {s['rows_before_near_duplicates']} kept rows "
        f"dropped before k-center (cosine >= {s['near_duplicate_cosine']:g} to an earlier kept row)"
    ]
    nd = s.get("near_duplicates") or {}
    if nd.get("audit"):
        a = nd["audit"]
        lines.append(
            f"  - found with an approximate index ({nd['method']}): of {a['rows']} kept rows checked exactly, "
            f"{a['missed']} had an earlier kept row within the threshold (about "
            f"{a['estimated_missed_drops']} near duplicates missed in all)"
        )
    elif nd.get("method"):
        lines.append(f"  - found exactly ({nd['method']})")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    c = report["counts"]
    lines = [
        f"# synth-empathy run `{report['run_id']}`",
        "",
        f"Output: `{report['output']}`",
        "",
        *standin_lines(report),
        "## Counts",
        "",
        "| stage | rows |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v:,} |" for k, v in c.items()]
    lines += ["", "## Dropped, with reasons", "", "| stage | reason | rows |", "| --- | --- | ---: |"]
    for stage, reasons in report["dropped"].items():
        lines += [f"| {stage} | {r} | {n:,} |" for r, n in reasons.items()]
    lines += [
        "",
        "## Time and throughput",
        "",
        "| stage | seconds | rows/s | tokens/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for stage, secs in report["seconds"].items():
        tp = report["throughput"].get(stage, {})
        lines.append(f"| {stage} | {secs:.1f} | {tp.get('rows_per_s') or ''} | {tp.get('tokens_per_s') or ''} |")
    lines.append(f"| total | {report['total_seconds']:.1f} | | |")
    q, s = report["quality"], report["selection"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    lines += [
        "",
        "## Quality and diversity",
        "",
        f"- threshold T = {q['threshold']:g} ({q['threshold_source']}); mean score {fmt(q['mean'])}, "
        f"median {fmt(q['median'])}",
        f"- k-center: {s.get('selected', 0)} of {s.get('candidates', 0)} kept rows selected "
        f"({s.get('method')}), covering radius {s.get('radius')}",
    ]
    lines += near_duplicate_lines(s)
    div = report.get("diversity") or {}
    if div:
        lines += [
            "",
            "| set | rows | distinct-1 | distinct-2 | mean pairwise distance | NN distance mean | NN distance median |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in ("selected", "random", "kept"):
            d = div[name]
            nn = f"{d['nn_distance_mean']:.3f} | {d['nn_distance_median']:.3f}" if "nn_distance_mean" in d else " | "
            lines.append(
                f"| {name} | {d['n']} | {d['distinct_1']:.3f} | {d['distinct_2']:.3f} | {d['mean_pairwise_distance']:.3f} | {nn} |"
            )
        lines.append(
            f"\n(random: mean of {div['random']['repeats']} seeded random subsets of the kept rows, same size as the selection;"
            f" NN distance: {div['method'].get('nn_distance', '')})"
        )
        sampled = div.get("sampled")
        if sampled:  # bounded samples: say from how many rows
            k, sel = sampled["kept"], sampled["selected"]
            lines.append(
                f"\nRows the metrics read: {k['used']:,} of {k['rows']:,} kept and {sel['used']:,} of "
                f"{sel['rows']:,} selected (at most {sampled['max_rows']:,} kept rows, a seeded uniform sample)"
            )
    cal = report.get("calibration")
    if cal:
        lines += ["", "## Calibration against human replies", "", *calibration_markdown(cal, q, shares=True)]
        lines += ["", "![generated against human](plots/quality_vs_human.png)"]
    # The judge's section (validation first, then the means, labelled by what it found).
    lines += judge_validation.markdown(report.get("judge_validation"), report.get("judge"))
    lines += [
        "",
        "![quality scores](plots/quality_scores.png)",
        "",
        "![history lengths](plots/history_lengths.png)",
        "",
    ]
    return "\n".join(lines)


def standin_lines(report: dict[str, Any]) -> list[str]:
    """The report's line saying that stand-ins made its rows (none for a real run)."""
    return [f"**{standin.NOTICE}**: {', '.join(report['standin'])}", ""] if report.get("standin") else []


def write_report(store, cfg, timings: dict[str, float]) -> dict[str, Any]:
    report = build_report(store, cfg, timings)
    report["standin"] = standin.used(cfg)
    report["plots"] = _plots(store, report)
    store.write_json("report.json", report)
    store.write_bytes("report.md", to_markdown(report).encode())
    c = report["counts"]
    log.info("counts: %s", ", ".join(f"{k} {v}" for k, v in c.items()))
    log.info("report: %s/report.md", store.url)
    return report
