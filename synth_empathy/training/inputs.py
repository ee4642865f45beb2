"""Reading training sources into discriminator rows (see :mod:`synth_empathy.core.sft_data`).

A source is a path or URL. JSONL (``.jsonl``/``.json``, optionally compressed) whose
records are alpaca (``instruction``/``input``/``output``) or chat (``messages``) records
- the pipeline's ``selected.alpaca.jsonl`` / ``selected.chat.jsonl`` exports - is read as
such; anything else goes through the seed readers
(:func:`synth_empathy.stages.seed_sources.read_seeds`: ED's CSV layouts, its Parquet,
``{context, response}`` pairs, the shipped dialogue file). Seed pairs are split by
dialogue (:mod:`synth_empathy.core.heldout`) and only the training side is used;
exported records carry no dialogue key and are used whole.

Every problem with a source is a :class:`TrainingInputError` naming it, raised before a
model loads or a worker starts.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any

import fsspec

from synth_empathy.core.heldout import is_heldout
from synth_empathy.core.sft_data import jsonl_rows, seed_row
from synth_empathy.errors import SeedError, TrainingInputError

log = logging.getLogger(__name__)

_JSON_SUFFIXES = (".jsonl", ".json")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def _strip_compression(path: str) -> str:
    for suffix in _COMPRESSION:
        if path.lower().endswith(suffix):
            return path[: -len(suffix)]
    return path


def _first_record(path: str, storage_options: dict | None) -> Any:
    """The first JSON value of a JSONL file (None if unreadable or empty)."""
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer", **(storage_options or {})) as f:
        for line in f:
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    return None
    return None


_EXPECTED_KEYS = {"messages", "instruction", "output", "context", "response", "turns"}


def _is_json(path: str) -> bool:
    return _strip_compression(path).lower().endswith(_JSON_SUFFIXES)


def _first_of_list(path: str, storage_options: dict | None) -> Any:
    """The first record of a JSON file holding one list (LLaMA-Factory's .json datasets)."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8", compression="infer", **(storage_options or {})) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data[0] if isinstance(data, list) and data else None


def _export_lines(path: str, storage_options: dict | None):
    """The records of an export as JSON lines, from JSONL or from a JSON list."""
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer", **(storage_options or {})) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            return [json.dumps(r) for r in json.loads(text)]
        except ValueError:
            pass
    return text.splitlines()


def is_export(path: str, storage_options: dict | None = None) -> bool:
    """True for JSONL (or a JSON list) of alpaca or chat records: the pipeline's exports,
    or a LLaMA-Factory dataset file such as the authors' ED + selected ``.json``."""
    if not _is_json(path):
        return False
    try:
        first = _first_record(path, storage_options)
    except (OSError, UnicodeDecodeError):
        return False  # the seed reader reports it properly
    if first is None and _strip_compression(path).lower().endswith(".json"):
        first = _first_of_list(path, storage_options)
    return isinstance(first, dict) and ("messages" in first or ("instruction" in first and "output" in first))


def _check_columns(path: str, storage_options: dict | None) -> None:
    """A JSON source that is no export must have seed columns (said better than the seed reader's layout error)."""
    try:
        first = _first_record(path, storage_options) if _is_json(path) else None
    except (OSError, UnicodeDecodeError):
        first = None  # missing or unreadable: the seed reader says so in its own words
    if isinstance(first, dict) and not _EXPECTED_KEYS & set(first):
        raise TrainingInputError(
            f"train.data {path}: none of the expected columns (alpaca instruction/input/output, chat messages, "
            f"seed context/response or dialogue turns); its first record has: {', '.join(sorted(first)[:8])}"
        )


def read_source(
    path: str,
    *,
    layout: str = "auto",
    heldout_fraction: float = 0.0,
    heldout_salt: str = "",
    storage_options: dict | None = None,
    heldout: list | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, info)`` for one source; ``info`` says its kind, how many rows were read,
    held out and dropped (by reason). The held-out rows are appended to ``heldout`` when
    given (training's validation loss)."""
    if is_export(path, storage_options):
        rows, dropped = jsonl_rows(_export_lines(path, storage_options))
        if not rows and set(dropped) <= {"unknown_record", "unreadable_line"}:
            raise TrainingInputError(
                f"train.data {path}: none of the expected columns (alpaca instruction/input/output or chat "
                f"messages) in any record"
            )
        return rows, {"path": path, "kind": "export", "rows": len(rows), "heldout": 0, "dropped": dict(dropped)}
    from synth_empathy.stages.seed_sources import read_seeds

    _check_columns(path, storage_options)
    try:
        seeds = read_seeds(path, layout=layout, storage_options=storage_options)
    except SeedError as e:
        raise TrainingInputError(f"train.data {path}: {e}") from None
    frame = seeds.frame
    rows, held = [], 0
    for context, response in zip(frame["context"], frame["response"]):
        if heldout_fraction and is_heldout(context, heldout_fraction, heldout_salt):
            held += 1
            if heldout is not None:
                heldout.append(seed_row(context, response))
            continue
        rows.append(seed_row(context, response))
    info = {
        "path": path,
        "kind": f"seeds ({seeds.layout})",
        "rows": len(rows),
        "heldout": held,
        "dropped": dict(seeds.dropped),
    }
    return rows, info


#: Where EmpatheticDialogues (Rashkin et al. 2019) is published, for the error on a missing source.
ED_SOURCES = (
    "https://dl.fbaipublicfiles.com/parlai/empatheticdialogues/empatheticdialogues.tar.gz, "
    "or facebook/empathetic_dialogues on the Hugging Face hub"
)


def missing_local_file(path: str) -> bool:
    """True for a local path (no URL) that does not exist; URLs are left to their readers."""
    protocol, local = fsspec.core.split_protocol(path)
    return protocol in (None, "file", "local") and not os.path.exists(local)


def source_paths(paths: list[str]) -> list[str]:
    """``train.data`` as read: an empty list is the seed file shipped in the package."""
    from synth_empathy.stages.seed_sources import default_seed_path

    return list(paths) or [default_seed_path()]


def check_sources(paths: list[str], *, layout: str, storage_options_for) -> None:
    """Cheap checks of every source before a model loads: a local file must exist (the
    message says where ED is published), a seed file must have a readable layout."""
    from synth_empathy.stages.seed_sources import validate_seed_source

    for path in source_paths(paths):
        if missing_local_file(path):
            hint = (
                ""
                if _is_json(path)
                else f"; pass EmpatheticDialogues' train.csv (Rashkin et al. 2019; {ED_SOURCES}), "
                "or leave train.data empty to train on the shipped seeds"
            )
            raise TrainingInputError(f"train.data {path}: no such file{hint}")
        if is_export(path, storage_options_for(path)):
            continue
        _check_columns(path, storage_options_for(path))
        try:
            validate_seed_source(path, layout, storage_options_for(path))
        except SeedError as e:
            raise TrainingInputError(f"train.data {path}: {e}") from None


def read_sources(
    paths: list[str],
    *,
    layout: str,
    heldout_fraction: float,
    heldout_salt: str,
    storage_options_for,
    heldout: list | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Counter]:
    """All sources, in order: ``(rows, per-source info, drops summed)``; no source = the
    shipped seed file (:func:`source_paths`); held-out rows go to ``heldout`` when given."""
    paths = source_paths(paths)
    rows, infos, dropped = [], [], Counter()
    for path in paths:
        got, info = read_source(
            path,
            layout=layout,
            heldout_fraction=heldout_fraction,
            heldout_salt=heldout_salt,
            storage_options=storage_options_for(path),
            heldout=heldout,
        )
        log.info(
            "[train] %s: %d rows (%s; held out %d, dropped %s)",
            path,
            len(got),
            info["kind"],
            info["heldout"],
            info["dropped"] or "none",
        )
        rows += got
        infos.append(info)
        dropped.update(info["dropped"])
    return rows, infos, dropped
