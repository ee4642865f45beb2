"""The run folder as a dataset: a Hugging Face dataset card (``README.md``) in every run.

The card's YAML front matter names the run's Parquet tables as dataset configs
(``selected`` by default, the other stages beside it; the JSONL exports are listed in
the text), so that
``datasets.load_dataset("<run folder>", "selected")`` loads the selection and uploading
the folder makes a well-formed dataset repository. The body holds the counts, the drop
reasons, the resolved configuration and the report's plots.
"""

from __future__ import annotations

from typing import Any

import yaml

from synth_empathy.config import redacted_yaml

# (config name, data files, what it is); the first is the default
TABLES = [
    ("selected", "selected/*.parquet", "the diverse high-quality selection (k-center over the kept rows)"),
    ("scored", "scored/*.parquet", "every discriminated sample with its quality score, kept flag and drop reason"),
    ("samples", "samples/*.parquet", "every parsed generation: history, target, or a drop reason"),
    ("generations", "generations/*.parquet", "the generator's raw answers"),
    ("seeds", "seeds/*.parquet", "the seed pairs the run started from"),
    ("judged", "judged/*.parquet", "the selection with the judge's ratings (1-3)"),
]
# The exports are named in the card's text, not as configs: `datasets` picks one builder
# (Parquet here) for every config of a folder, and then fails on the JSONL files.
EXPORTS = [
    ("selected.alpaca.jsonl", "the selection as alpaca instruction/input/output records (LLaMA-Factory)"),
    ("selected.chat.jsonl", "the selection as chat messages"),
]


def size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def front_matter(report: dict[str, Any], present: set[str]) -> dict[str, Any]:
    """The card's YAML header; ``present`` names the tables this run wrote."""
    configs = []
    for name, files, _ in TABLES:
        if name in present:
            entry = {"config_name": name, "data_files": [{"split": "train", "path": files}]}
            if name == "selected":
                entry["default"] = True
            configs.append(entry)
    return {
        "license": "other",
        "license_name": "derived-from-seeds",
        "license_details": "Derived from the run's seed dialogues and written by its generator model: "
        "the seed data's license (EmpatheticDialogues: CC BY-NC 4.0) and the model's apply.",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["empathy", "dialogue", "synthetic", "synth-empathy"],
        "size_categories": [size_category(int(report.get("counts", {}).get("selected", 0)))],
        "configs": configs,
    }


def card_text(report: dict[str, Any], cfg: Any, present: set[str]) -> str:
    counts = report.get("counts", {})
    lines = [
        "---",
        yaml.safe_dump(front_matter(report, present), sort_keys=False).strip(),
        "---",
        "",
        "# Synthetic empathetic dialogues (synth-empathy run)",
        "",
        "Made with synth-empathy following Synth-Empathy (Liang, Sun et al., 2024): "
        "an LLM wrote new multi-round dialogues from seed dialogues, a discriminator LLM answered each "
        "sampled history itself, samples whose target agreed with it (quality score = 100 x cosine) were "
        "kept, and greedy k-center kept a diverse subset.",
        "",
        "## Configs",
        "",
        "| config | files | what |",
        "| --- | --- | --- |",
        *[f"| `{n}` | `{f}` | {w} |" for n, f, w in TABLES if n in present],
        "",
        '`datasets.load_dataset("<this folder>", "selected")` loads the selection. The fine-tuning '
        'exports beside it (load them with `datasets.load_dataset("json", data_files=...)`):',
        "",
        *[f"- `{name}`: {what}" for name, what in EXPORTS],
        "",
        "## Counts",
        "",
        "| " + " | ".join(counts) + " |",
        "| " + " | ".join("---" for _ in counts) + " |",
        "| " + " | ".join(str(v) for v in counts.values()) + " |",
        "",
        "## Dropped, by stage and reason",
        "",
    ]
    for stage, reasons in report.get("dropped", {}).items():
        text = ", ".join(f"{r}: {n}" for r, n in reasons.items()) or "none"
        lines.append(f"- **{stage}**: {text}")
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in report.get("plots", [])]
    lines += ["", "## Configuration", "", "```yaml", redacted_yaml(cfg).strip(), "```", ""]
    return "\n".join(lines)


def write_dataset_card(store, cfg: Any, report: dict[str, Any]) -> None:
    """Write ``README.md`` into the run folder (after the report: it quotes it)."""
    present = {name for name, files, _ in TABLES if store.fs.exists(store.path(files.split("/")[0]))}
    store.write_bytes("README.md", card_text(report, cfg, present).encode())
