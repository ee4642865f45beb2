"""The run folder as a dataset: a Hugging Face dataset card (``README.md``) in every run.

The card's YAML front matter names the run's Parquet tables as dataset configs
(``selected`` by default, the other stages beside it; the JSONL exports are listed in
the text), so that
``datasets.load_dataset("<run folder>", "selected")`` loads the selection and uploading
the folder makes a well-formed dataset repository. The body holds the counts, the drop
reasons, the licenses, the resolved configuration and the report's plots.

Licenses: the corpus inherits its seed data's terms (the header's ``license:``, from
``seeds.license`` or detected from the seed source); the models' own licenses are listed
beside it, since a model's license may bind what it writes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from synth_empathy.config import redacted_yaml
from synth_empathy.core import standin
from synth_empathy.stages import calibration
from synth_empathy.stages.judge_validation import markdown

# (config name, data files, what it is); the first is the default
TABLES = [
    ("selected", "selected/*.parquet", "the diverse high-quality selection (k-center over the kept rows)"),
    ("scored", "scored/*.parquet", "every discriminated sample with its quality score, kept flag and drop reason"),
    ("samples", "samples/*.parquet", "every parsed generation: history, target, or a drop reason"),
    ("generations", "generations/*.parquet", "the generator's raw answers"),
    ("seeds", "seeds/*.parquet", "the seed pairs the run started from"),
    (
        "judged",
        "judged/*.parquet",
        "the selection with the judge's ratings (expected values in [1, 3]; the Judge section says whether they measure anything)",
    ),
]
# The exports are named in the card's text, not as configs: `datasets` picks one builder
# (Parquet here) for every config of a folder, and then fails on the JSONL files.
EXPORTS = [
    ("selected.alpaca.jsonl", "the selection as alpaca instruction/input/output records (LLaMA-Factory)"),
    ("selected.chat.jsonl", "the selection as chat messages"),
]


# The seed layouts that are EmpatheticDialogues' own files (synth_empathy.storage.seed_sources)
ED_LAYOUTS = frozenset({"ed_csv", "ed_parquet", "ed_turns_csv"})
PACKAGED_MODELS = {"packaged:smollm2", "packaged:all-minilm-l6-v2"}
# Hub repositories whose weights are Apache-2.0 (the packaged models' own)
APACHE_HUB = re.compile(r"(huggingfacetb/smollm2-[^/]+|sentence-transformers/all-minilm-l6-v2)")
LLAMA3 = re.compile(r"llama[-_]?(3(?:\.\d)?)(?!\d)")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def corpus_license(configured: str | None, seeds_path: str, layout: str) -> tuple[str, str]:
    """The corpus's Hugging Face license id, inherited from its seed data, and why.

    ``configured`` is ``seeds.license``; ``seeds_path`` empty means the packaged seeds;
    ``layout`` is the seed layout the run read.
    """
    if configured:
        return configured.strip().lower(), "as seeds.license names it"
    if not seeds_path:
        return "apache-2.0", "the packaged seed dialogues, written for synth-empathy, are Apache-2.0 like its code"
    if layout in ED_LAYOUTS:
        return "cc-by-nc-4.0", (
            f"EmpatheticDialogues (Rashkin et al., 2019; read as {layout}) is CC BY-NC 4.0: "
            "non-commercial use, with attribution"
        )
    return "unknown", (
        f"the license of the seed file ({layout} layout) is not known here; the corpus carries it. "
        "Name it with seeds.license=<Hugging Face license id> (e.g. cc-by-4.0, or other)"
    )


def model_license(spec: str) -> str:
    """A model's license in words, as far as its spec tells."""
    name = spec.rstrip("/").lower()
    if name in PACKAGED_MODELS or APACHE_HUB.fullmatch(name):
        return "Apache-2.0"
    llama = LLAMA3.search(name.rsplit("/", 1)[-1])
    if llama:
        version = llama.group(1)
        text = f"Llama {version} Community License (`llama{version}`)"
        if HUB_ID.fullmatch(spec) and not spec.startswith((".", "/")):
            return text
        return f"{text}, going by its name (a fine-tune keeps its base model's license); see the model's card"
    return "see the model's card"


def licenses_section(corpus: tuple[str, str], models: dict[str, str]) -> list[str]:
    """The card's "Licenses" lines: the corpus's terms, then each model's (role -> spec)."""
    license_id, why = corpus
    lines = [
        "## Licenses",
        "",
        f"- **This corpus**: `{license_id}`, inherited from its seed data: {why}.",
        "- **Models** (a model's license may also set terms on what it writes):",
    ]
    lines += [f"  - {role} `{spec}`: {model_license(spec)}" for role, spec in models.items()]
    lines += ["- **Code**: synth-empathy is Apache-2.0.", ""]
    return lines


def run_models(cfg: Any) -> dict[str, str]:
    """The models a run used, by role."""
    models = {
        "generator": cfg.generation.engine.model,
        "discriminator": cfg.discriminator.engine.model,
        "embedder": cfg.quality.embedder,
    }
    if cfg.judge.enabled:
        models["judge"] = cfg.judge.engine.model
    return models


def size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def front_matter(report: dict[str, Any], present: set[str], license_id: str = "unknown") -> dict[str, Any]:
    """The card's YAML header; ``present`` names the tables this run wrote."""
    configs = []
    for name, files, _ in TABLES:
        if name in present:
            entry = {"config_name": name, "data_files": [{"split": "train", "path": files}]}
            if name == "selected":
                entry["default"] = True
            configs.append(entry)
    return {
        "license": license_id,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["empathy", "dialogue", "synthetic", "synth-empathy"],
        "size_categories": [size_category(int(report.get("counts", {}).get("selected", 0)))],
        "configs": configs,
    }


def standin_lines(cfg: Any) -> list[str]:
    """The card's line saying that stand-ins made its rows (none for a real run)."""
    line = standin.notice(cfg)
    return [f"**{line}**", ""] if line else []


def card_text(report: dict[str, Any], cfg: Any, present: set[str], seeds_layout: str | None = None) -> str:
    """The card; ``seeds_layout`` is the layout the seed stage read (else ``seeds.layout``)."""
    counts = report.get("counts", {})
    corpus = corpus_license(cfg.seeds.license, cfg.seeds.path, seeds_layout or cfg.seeds.layout)
    lines = [
        "---",
        yaml.safe_dump(front_matter(report, present, corpus[0]), sort_keys=False).strip(),
        "---",
        "",
        "# Synthetic empathetic dialogues (synth-empathy run)",
        "",
        *standin_lines(cfg),
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
    if report.get("calibration"):
        lines += ["", "## The quality threshold, checked on human replies", ""]
        lines += calibration.markdown_lines(report["calibration"], report.get("quality"))
    lines += judge_section(report)
    lines += ["", *licenses_section(corpus, run_models(cfg)), "## Plots", ""]
    lines += [f"![{p}]({p})" for p in report.get("plots", [])]
    config = calibration.resolved_config_yaml(cfg, report["calibration"]) if report.get("calibration") else None
    lines += ["", "## Configuration", "", "```yaml", (config or redacted_yaml(cfg)).strip(), "```", ""]
    return "\n".join(lines)


def judge_section(report: dict[str, Any]) -> list[str]:
    """The judge's validation and ratings, as report.md shows them."""
    return markdown(report.get("judge_validation"), report.get("judge"))


def write_dataset_card(store, cfg: Any, report: dict[str, Any]) -> None:
    """Write ``README.md`` into the run folder (after the report: it quotes it)."""
    present = {name for name, files, _ in TABLES if store.fs.exists(store.path(files.split("/")[0]))}
    seeds_layout = None
    if store.fs.exists(store.path("seeds.json")):  # the seed stage's record of what it read
        with store.fs.open(store.path("seeds.json"), "r") as f:
            seeds_layout = json.load(f).get("layout")
    store.write_bytes("README.md", card_text(report, cfg, present, seeds_layout).encode())
