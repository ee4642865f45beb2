"""Method step 3a' - calibration: the quality score measured on human replies.

The quality score (step 3b) keeps a sample when its target agrees with the discriminator's own
answer. Whether that agreement means anything, and where to put the threshold T, is measured
here on dialogues written by people (the run's seed file by default, ``calibration.data``
otherwise): the discriminator answers each reference history exactly as it answers the samples
(:mod:`synth_empathy.stages.discriminator`, same engine, prompt and sampling), and the answer
is scored (:func:`synth_empathy.stages.quality.quality_scores`, same embedder) against

* the **true** listener reply of that dialogue (the human reply), and three foils
  (:mod:`synth_empathy.core.calibration`): **another dialogue's** reply, another dialogue's
  of the **same emotion**, and a **generic** reply that fits any dialogue.

``calibration.json`` gives, per foil, the AUC (how often the true reply outscores the foil)
with its bootstrap 95 % interval over the dialogues; the percentiles of the human replies'
scores; T (``quality.threshold=auto``: the score that ``calibration.share`` of the human
replies reach; a number: kept as given) and the keep rate of the human replies and of each
foil at T. A foil whose interval includes 0.5 is a warning: at that foil the score does not
tell a fitting reply from a misfit; the run goes on.

Three checkpointed stages, read back on resume:

* ``calibration_references`` - one pair per reference dialogue and its foils (the whole
  reference is read and checked before Ray starts: fewer than
  :data:`~synth_empathy.core.calibration.MIN_REFERENCES` dialogues is an error);
* ``calibration_answers`` - the discriminator's answers (an LLM stage, keyed, resumable);
* ``calibration_scores`` - each reference's human and foil scores, or its ``drop_reason``
  (``discriminator_error``, ``empty_discriminator_answer``), and ``calibration.json``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from synth_empathy import schemas
from synth_empathy.core import calibration as cal
from synth_empathy.core.heldout import is_heldout
from synth_empathy.core.sft_data import seed_row
from synth_empathy.errors import CalibrationInputError
from synth_empathy.models.embedder import encode
from synth_empathy.stages.contract import StageContract
from synth_empathy.stages.discriminator import discriminator_stage
from synth_empathy.stages.quality import drop_reason, quality_scores
from synth_empathy.stages.seed_sources import read_seeds
from synth_empathy.stages.seeds import seed_path
from synth_empathy.storage.run_store import storage_options

log = logging.getLogger(__name__)

REFERENCES = StageContract(
    name="calibration_references", input=None, requires=(), produces=schemas.CALIBRATION_REFERENCES
)
ANSWERS = StageContract(
    name="calibration_answers",
    input="calibration_references",
    requires=("sample_id", "instruction", "history"),
    produces=schemas.CALIBRATION_ANSWERS,
    tokens="disc_num_tokens",
)
SCORES = StageContract(
    name="calibration_scores", input="calibration_answers", requires=(), produces=schemas.CALIBRATION_SCORES
)
RESULT = "calibration.json"

#: Pairs read from the reference file per reference dialogue wanted: enough for ``limit``
#: distinct dialogues (ED's turn-level file holds each conversation under ~2 ids, ~2 pairs
#: each) without reading a million-seed file whole before Ray starts.
SCAN_PAIRS_PER_DIALOGUE = 25


def reference_path(cfg: Any) -> tuple[str, str]:
    """``(path, layout)`` of the reference dialogues: ``calibration.data``, else the seed file."""
    c = cfg.calibration
    return (c.data, c.layout) if c.data else (seed_path(cfg.seeds), cfg.seeds.layout)


def reference_pairs(cfg: Any) -> list[dict[str, Any]]:
    """One seed pair per reference dialogue (``seed_id, context, response, emotion, dialogue``),
    at most ``calibration.limit``: the references of this calibration and of the judge's validation
    (read once per process for the same settings: the run asks before Ray starts and again at each step)."""
    c = cfg.calibration
    path, layout = reference_path(cfg)
    fraction = cfg.train.heldout_fraction if c.heldout_only else None
    options = storage_options(path, cfg.storage)
    key = (path, layout, c.limit, cfg.seed, fraction, cfg.train.heldout_salt, repr(options))
    if key not in _READ:
        scan = c.limit * SCAN_PAIRS_PER_DIALOGUE if c.limit else None
        if scan and fraction:
            scan = math.ceil(scan / fraction)  # only that share of what is read is held out
        pairs = read_seeds(path, layout=layout, limit=scan, storage_options=options).to_arrow().to_pylist()
        if fraction is not None:
            pairs = [p for p in pairs if is_heldout(p["context"], fraction, cfg.train.heldout_salt)]
        _READ.clear()  # one set at a time: a process calibrates one run
        _READ[key] = cal.reference_rows(pairs, c.limit, cfg.seed)
    return [dict(r) for r in _READ[key]]


_READ: dict[tuple, list[dict[str, Any]]] = {}


def too_few(cfg: Any, n: int) -> str:
    """The one line saying that ``n`` reference dialogues cannot give an interval, and where they came from."""
    c = cfg.calibration
    path, _ = reference_path(cfg)
    where = "calibration.data" if c.data else "the seed file (seeds.path; or give calibration.data)"
    if c.heldout_only:
        where += f", held out at train.heldout_fraction={cfg.train.heldout_fraction}"
    return f"{where} {path}: {n} reference dialogues, at least {cal.MIN_REFERENCES} are needed for an interval"


def reference_table(cfg: Any) -> pa.Table:
    """The reference dialogues (one pair each) with their foils; raises
    :class:`CalibrationInputError` when there are fewer than ``MIN_REFERENCES``."""
    c = cfg.calibration
    refs = reference_pairs(cfg)
    if len(refs) < cal.MIN_REFERENCES:
        raise CalibrationInputError(
            f"{too_few(cfg, len(refs))}; give more dialogues, or a numeric quality.threshold with "
            "calibration.enabled=false"
        )
    foils = cal.foil_replies([r["response"] for r in refs], [r["emotion"] for r in refs], cfg.seed, c.generic_replies)
    rows = [
        {
            "sample_id": r["seed_id"],
            "emotion": r["emotion"] or "",
            **seed_row(r["context"], r["response"]),
            **{f"foil_{kind}": foils[kind][i] for kind in cal.FOILS},
        }
        for i, r in enumerate(refs)
    ]
    return pa.Table.from_pylist(rows, schema=schemas.CALIBRATION_REFERENCES)


def answers_stage(ds, cfg: Any, carry, model_path: str | None = None, served=None):
    """The discriminator answers the reference histories: the discriminator stage itself."""
    return discriminator_stage(ds, cfg.discriminator, carry, model_path=model_path, served=served)


def score_references(answers: pa.Table, cfg: Any) -> pa.Table:
    """Each reference's human and foil scores (100 x cosine with the discriminator's answer),
    or a drop reason: one embedding pass over every text."""
    q = cfg.quality
    rows = answers.sort_by("sample_id").to_pylist()
    texts: list[str] = []
    index: list[dict[str, int]] = []  # per row: which text is which
    reasons = []
    for r in rows:
        reason = drop_reason(r["disc_error"], r["disc_response"] or "")
        reasons.append(reason)
        at: dict[str, int] = {}
        if reason is None:
            for name, text in [("answer", r["disc_response"]), ("human", r["output"])] + [
                (kind, r[f"foil_{kind}"]) for kind in cal.FOILS
            ]:
                if text:
                    at[name] = len(texts)
                    texts.append(str(text))
        index.append(at)
    vecs = encode(texts, q.embedder, q.batch_size, dtype=q.dtype) if texts else np.zeros((0, 1), np.float32)

    def score(at: dict[str, int], name: str) -> float | None:
        if name not in at:
            return None
        return float(quality_scores(vecs[at["answer"]][None], vecs[at[name]][None])[0])

    out = {
        "sample_id": [r["sample_id"] for r in rows],
        "emotion": [r["emotion"] for r in rows],
        "human_score": [score(at, "human") for at in index],
        **{f"{kind}_score": [score(at, kind) for at in index] for kind in cal.FOILS},
        "drop_reason": reasons,
    }
    return pa.table(out, schema=schemas.CALIBRATION_SCORES)


def auto_threshold(human: list[float], share: float) -> float:
    """T for ``share``, as written: rounded down to 4 decimals, so that the share of human
    replies at or above the written T still holds."""
    return math.floor(cal.threshold_for_share(human, share) * 1e4) / 1e4


def summarize(scores: pa.Table, cfg: Any) -> dict[str, Any]:
    """``calibration.json``: T and where it came from, AUCs per foil, the human percentiles."""
    c, q = cfg.calibration, cfg.quality
    human = [v for v in scores.column("human_score").to_pylist() if v is not None]
    path, _ = reference_path(cfg)
    dropped = Counter(r for r in scores.column("drop_reason").to_pylist() if r)
    if len(human) < cal.MIN_REFERENCES:
        raise CalibrationInputError(
            f"calibration: only {len(human)} of {scores.num_rows} reference replies could be scored "
            f"(dropped: {dict(dropped) or 'none'}); at least {cal.MIN_REFERENCES} are needed"
        )
    auto = q.threshold == "auto"
    threshold = auto_threshold(human, c.share) if auto else float(q.threshold)
    true_all = scores.column("human_score").to_pylist()
    foils: dict[str, Any] = {}
    warnings = []
    for kind in cal.FOILS:
        foil = scores.column(f"{kind}_score").to_pylist()
        a = cal.auc_interval(true_all, foil, resamples=c.bootstrap, seed=cfg.seed)
        present = [v for v in foil if v is not None]
        foils[kind] = {
            **a.as_dict(),
            "mean": round(float(np.mean(present)), 2) if present else None,
            "keep_rate": _rate(cal.keep_rate(foil, threshold)),
        }
        if present and not a.discriminative:
            warnings.append(
                f"the quality score does not tell a human reply from the {kind.replace('_', '-')} foil: AUC "
                f"{a.point:.2f} [{a.low:.2f}, {a.high:.2f}] includes 0.5"
            )
    source = (
        f"auto: the score that {c.share:.0%} of {len(human)} human replies reach"
        if auto
        else "set: quality.threshold as given"
    )
    return {
        "threshold": threshold,
        "threshold_source": source,
        "share": c.share if auto else None,
        "reference": path,
        "dialogues": scores.num_rows,
        "scored": len(human),
        "dropped": dict(dropped),
        "discriminator": str(cfg.discriminator.engine.model),
        "embedder": q.embedder,
        "human": {
            "mean": round(float(np.mean(human)), 2),
            **cal.percentiles(human),
            "keep_rate": _rate(cal.keep_rate(human, threshold)),
        },
        "foils": foils,
        "by_share": by_share(scores),
        "discriminative": all(f["discriminative"] for f in foils.values() if f["pairs"]),
        "warnings": warnings,
        "bootstrap": {"resamples": c.bootstrap, "seed": cfg.seed, "level": 0.95},
    }


def markdown_lines(result: dict[str, Any], quality: dict[str, Any] | None = None, shares: bool = False) -> list[str]:
    """The calibration as Markdown (report.md, the dataset card, ``synth-empathy calibrate``);
    ``shares`` adds the table of what other shares would give."""
    h = result["human"]
    lines = [
        f"T = {result['threshold']:g} ({result['threshold_source']}). The discriminator "
        f"(`{result['discriminator']}`) answered {result['dialogues']} human reference dialogues from "
        f"`{result['reference']}` ({result['scored']} scored); each answer was scored against the dialogue's "
        "true reply and against foils. AUC: how often the true reply outscores the foil (0.5 = a coin), "
        "with its 95 % bootstrap interval over the dialogues.",
        "",
        "| reply | AUC of the true reply against it | mean score | share >= T |",
        "| --- | ---: | ---: | ---: |",
        f"| human (the true reply) | | {h['mean']:.1f} | {h['keep_rate']:.0%} |",
    ]
    for kind in (k for k in cal.FOILS if k in result["foils"]):  # JSON sorts the keys: report in the method's order
        f = result["foils"][kind]
        if not f["pairs"]:
            lines.append(f"| {kind.replace('_', ' ')} | no foil of this kind | | |")
            continue
        flag = "" if f["discriminative"] else " (not discriminative)"
        lines.append(
            f"| {kind.replace('_', ' ')} ({f['pairs']} dialogues) | {f['auc']:.2f} [{f['low']:.2f}, {f['high']:.2f}]"
            f"{flag} | {f['mean']:.1f} | {f['keep_rate']:.0%} |"
        )
    if quality and quality.get("keep_rate") is not None:
        lines.append(f"| generated samples of this run | | {quality['mean']:.1f} | {quality['keep_rate']:.0%} |")
    pct = ", ".join(f"p{q} {h[f'p{q}']:.1f}" for q in cal.PERCENTILES if f"p{q}" in h)
    lines += ["", f"Human replies' scores: {pct}."]
    if shares and result.get("by_share"):
        kinds = [k for k in cal.FOILS if result["foils"].get(k, {}).get("pairs")]
        lines += [
            "",
            "What another `calibration.share` would give: T, and the share of each kind of reply at or above it "
            "(of a foil: replies kept that do not fit).",
            "",
            "| share | T | human | " + " | ".join(k.replace("_", " ") for k in kinds) + " |",
            "| ---: | ---: | ---: | " + " | ".join("---:" for _ in kinds) + " |",
        ]
        for r in result["by_share"]:
            cells = " | ".join(f"{r[k]:.0%}" for k in kinds)
            lines.append(f"| {r['share']:.1f} | {r['threshold']:.1f} | {r['human']:.0%} | {cells} |")
    for w in result.get("warnings", []):
        lines.append(f"\n**Warning:** {w}: at this foil the score does not separate a fitting reply from a misfit.")
    return lines


#: The shares of human replies that :func:`by_share` tabulates.
SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def by_share(scores: pa.Table) -> list[dict[str, Any]]:
    """What each ``calibration.share`` would give: T, and the share of each foil's replies that
    reach it. A foil's keep rate is its false keeps; ``share - rate`` (Youden's J) is how far
    that T separates the true replies from the foil."""
    human = [v for v in scores.column("human_score").to_pylist() if v is not None]
    rows = []
    for share in SHARES:
        t = auto_threshold(human, share)
        rows.append(
            {
                "share": share,
                "threshold": t,
                "human": _rate(cal.keep_rate(human, t)),
                **{kind: _rate(cal.keep_rate(scores.column(f"{kind}_score").to_pylist(), t)) for kind in cal.FOILS},
            }
        )
    return rows


def manifest_entry(result: dict[str, Any]) -> dict[str, Any]:
    """What ``manifest.json`` keeps of the calibration: T, its source, the AUCs."""
    keep = ("threshold", "threshold_source", "share", "reference", "dialogues", "scored", "discriminative", "warnings")
    return {
        **{k: result[k] for k in keep},
        "auc": {k: {x: f[x] for x in ("auc", "low", "high")} for k, f in result["foils"].items() if f["pairs"]},
    }


def resolved_config_yaml(cfg: Any, result: dict[str, Any]) -> str:
    """``config.yaml`` with T as a number (the file reruns the same threshold), and a header
    saying where it came from."""
    from omegaconf import OmegaConf

    from synth_empathy.config import redacted_yaml

    resolved = OmegaConf.merge(cfg, {"quality": {"threshold": result["threshold"]}})
    aucs = _aucs(result, "; ")
    header = [
        f"# quality.threshold = {result['threshold']:g}: {result['threshold_source']} (calibration.json).",
        f"# AUC of the true reply against each foil, 95 % interval: {aucs}.",
    ]
    return "\n".join(header) + "\n" + redacted_yaml(resolved)


def _aucs(result: dict[str, Any], sep: str) -> str:
    """Each foil's AUC and interval, in the order of :data:`~synth_empathy.core.calibration.FOILS`."""
    foils = result["foils"]
    return sep.join(
        f"{k} {foils[k]['auc']:.2f} [{foils[k]['low']:.2f}, {foils[k]['high']:.2f}]"
        for k in cal.FOILS
        if k in foils and foils[k]["pairs"]
    )


def _rate(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def one_line(result: dict[str, Any]) -> str:
    """The calibration in one log line."""
    aucs = _aucs(result, ", ")
    return (
        f"T = {result['threshold']:.2f} ({result['threshold_source']}); keeps {result['human']['keep_rate']:.0%} "
        f"of human replies, median human score {result['human']['p50']:.1f}; AUC true reply vs {aucs}"
    )
