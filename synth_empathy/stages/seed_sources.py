"""The seed stage: read seed sources into one seed table.

A *seed* is one dialogue history and the listener's reply to it. Every later stage starts
from the seed table this module returns:

=========  =====================================================================
column     meaning
=========  =====================================================================
seed_id    stable, unique id (same file in, same ids out)
context    the history up to the listener turn, one ``Speaker: ...`` /
           ``Listener: ...`` line per turn; the last line is always ``Speaker:``
response   the listener turn that answers ``context`` (one line, no prefix)
emotion    the dialogue's emotion label, ``""`` when the source has none
source     the seed file's name (no folders), for provenance
=========  =====================================================================

Layouts (detected from the file's content, or named with ``layout=``):

``shipped``
    Dialogue records, JSONL or a JSON list, like the package's own
    ``data/seeds.jsonl``: ``{"dialogue_id", "emotion", "situation", "turns": [...]}``.
    ``seed_id = <dialogue_id>:<turn>``.
``pairs``
    ``{"context", "response"}`` records (optional ``emotion``, ``seed_id``) as JSONL,
    a JSON list or Parquet (so a seed table written by this stage reads back).
    ``seed_id`` is the given one, else ``<file stem>:<position>``, where position is the
    1-based line number for JSONL and the 0-based record index for JSON and Parquet.
``ed_csv``
    EmpatheticDialogues' original release CSV (``conv_id, utterance_idx, context,
    prompt, speaker_idx, utterance, selfeval, tags``, commas written ``_comma_``).
    ``seed_id = ed:<conv_id>:<turn>``.
``ed_parquet``
    The same columns as Parquet (the Hugging Face copy).
``ed_turns_csv``
    ED's turn-level CSV (``,dialogue_id,turns,text,emotion,dialogue_emotion``); the
    emotion is ``dialogue_emotion``.
    ``seed_id = ed:<dialogue_id>:<turn>``.

Seed pairs: for every listener turn ``t`` of a dialogue (even, 1-based) the context is
turns ``1..t-1`` and the response is turn ``t``. Exact repeats of ``(context, response)``
are dropped and counted (the turn-level ED CSV holds most conversations twice).

Text cleanup, all layouts: ``_comma_`` becomes ``,``, whitespace (newlines included) is
collapsed to single spaces, ends are stripped, other control characters are removed and
lone surrogates become U+FFFD (so the table always encodes as UTF-8).

ED layouts are also *lightly detokenised*, because ED's text is lower-cased and split
into tokens (``"i do n't know , really ."``): contraction pieces are joined to the word
before (``do n't`` -> ``don't``, ``we 're`` -> ``we're``), the space before
``, . ! ? ; : %`` and inside brackets is removed, and spaced dots (``. . .``) become
``...``. Case is left alone and quotes are not touched (their side is ambiguous). On
ordinary untokenised text these rules change nothing.

Malformed input is skipped and counted by reason in :attr:`SeedTable.dropped`; what a
count counts depends on the reason (see :data:`DROP_REASONS`). A file that cannot be read
at all, or gives no usable seed, raises :class:`SeedError` with one line naming the path.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

import fsspec
import pandas as pd
import pyarrow as pa

from synth_empathy.errors import SeedError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

#: Columns of the seed table, in order.
COLUMNS: tuple[str, ...] = ("seed_id", "context", "response", "emotion", "source")

#: Layout names accepted by ``layout=`` (besides ``"auto"``).
LAYOUTS: tuple[str, ...] = ("shipped", "pairs", "ed_csv", "ed_parquet", "ed_turns_csv")

# Other spellings people are likely to write in a config.
_LAYOUT_ALIASES: dict[str, str] = {
    "dialogues": "shipped",
    "ed_original": "ed_csv",
    "ed_turns": "ed_turns_csv",
    "hf_parquet": "ed_parquet",
}

#: Why rows were skipped, and what one count stands for.
DROP_REASONS: dict[str, str] = {
    "bad_json": "a JSONL line that is not valid JSON (one per line)",
    "not_an_object": "a JSON record that is not an object (one per record)",
    "missing_field": "a record or row without a required field",
    "non_string": "a text field that is not a string (turns: not a list of strings)",
    "empty_text": "a text field that is empty after cleanup",
    "bad_number": "an ED index (utterance_idx, speaker_idx, turns) that is not an integer",
    "bad_seed_id": "a given seed_id that is neither a string nor an integer",
    "malformed_line": "a CSV line with the wrong number of fields (one per line)",
    "no_listener_turn": "a dialogue with fewer than two turns (one per dialogue)",
    "turn_gap": "an ED dialogue whose turn numbers skip or repeat; it is cut before the break (one per dialogue)",
    "non_alternating": "an ED dialogue where one person speaks twice in a row; it is cut "
    "before that turn (one per dialogue)",
    "context_not_speaker": "a given context whose last line is not a Speaker line",
    "duplicate_pair": "an exact repeat of an earlier (context, response) (one per seed)",
    "duplicate_seed_id": "a different seed reusing an earlier seed_id (one per seed)",
}

# How much of the file layout detection looks at.
_SNIFF_BYTES = 64 * 1024
_PARQUET_MAGIC = b"PAR1"
_ED_COLUMNS = ("conv_id", "utterance_idx", "context", "speaker_idx", "utterance")
_TURN_COLUMNS = ("dialogue_id", "turns", "text", "dialogue_emotion")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")


@dataclass(frozen=True, eq=False)
class SeedTable:
    """The seed stage's result: the table, and what was skipped on the way.

    ``frame`` has exactly :data:`COLUMNS`, all strings, in file order.
    ``dropped`` maps a reason from :data:`DROP_REASONS` to a count. When ``limit`` cut the
    read short, the counts cover only the part of the file that was read.
    """

    frame: pd.DataFrame
    dropped: dict[str, int]
    path: str
    layout: str

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """One line for logs and reports."""
        return _summary(len(self.frame), self.path, self.layout, self.dropped)

    def to_arrow(self) -> pa.Table:
        """The table as Arrow with an all-string schema (what Ray Data and Parquet want)."""
        return pa.table({c: pa.array(self.frame[c].tolist(), type=pa.string()) for c in COLUMNS})


class _Seed(NamedTuple):
    seed_id: str
    context: str
    response: str
    emotion: str


# ---------------------------------------------------------------------------
# Text helpers (pure)

_WS = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SPACED_DOTS = re.compile(r"\.(?:\s+\.)+")
_CONTRACTION = re.compile(r"(?<=\w)\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:%])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")
_SPACE_BEFORE_CLOSE = re.compile(r"\s+([)\]])")
_ROLE_LINE = re.compile(r"^(speaker|listener)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)


def clean_text(text: str) -> str:
    """Unescape ``_comma_``, drop control characters, collapse whitespace, strip."""
    text = text.replace("_comma_", ",")
    text = _SURROGATE.sub("\ufffd", text)
    text = _CONTROL.sub("", text)
    return _WS.sub(" ", text).strip()


def detokenize(text: str) -> str:
    """Undo the common parts of ED's tokenisation (see the module notes); keeps case."""
    text = _SPACED_DOTS.sub(lambda m: "." * m.group(0).count("."), text)
    text = _CONTRACTION.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    return _SPACE_BEFORE_CLOSE.sub(r"\1", text)


def format_context(turns: Iterable[str]) -> str:
    """History lines for turns that start with the speaker and alternate."""
    return "\n".join(f"{'Speaker' if i % 2 == 0 else 'Listener'}: {t}" for i, t in enumerate(turns))


def dialogue_pairs(turns: list[str]) -> list[tuple[int, str, str]]:
    """``(t, context, response)`` for every listener turn ``t`` (even, 1-based)."""
    return [(t, format_context(turns[: t - 1]), turns[t - 1]) for t in range(2, len(turns) + 1, 2)]


def normalize_context(raw: str) -> str | None:
    """A given context as ``Speaker:`` / ``Listener:`` lines, or None if it has no text.

    Text without a role prefix on its first line is one speaker turn. Otherwise every
    line that starts with a role starts a turn, other lines continue the turn before, and
    turns left empty are removed. The result may end with a Listener line; the caller
    checks that.
    """
    lines = [ln for ln in raw.replace("_comma_", ",").splitlines() if ln.strip()]
    if not lines or not _ROLE_LINE.match(lines[0].strip()):
        text = clean_text(raw)
        return f"Speaker: {text}" if text else None
    turns: list[list[str]] = []  # [role, text]
    for line in lines:
        m = _ROLE_LINE.match(line.strip())
        if m:
            turns.append([m.group(1).capitalize(), clean_text(m.group(2))])
        else:
            turns[-1][1] = clean_text(f"{turns[-1][1]} {line}")
    kept = [f"{role}: {text}" for role, text in turns if text]
    return "\n".join(kept) if kept else None


def _format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a short decimal string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value):
        return int(value)
    return None


def _id_text(value: Any) -> str | None:
    """An id from a string or an integer (not a bool); None when unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return clean_text(value) or None
    return None


# ---------------------------------------------------------------------------
# Opening files and telling layouts apart


def _is_local(path: str) -> bool:
    protocol, _ = fsspec.core.split_protocol(path)
    return protocol in (None, "file", "local")


def _file_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _file_stem(path: str) -> str:
    name = _file_name(path)
    for suffix in _COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.splitext(name)[0] or name


@contextmanager
def _open_binary(path: str, storage_options: Mapping[str, Any] | None) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading bytes; turn every I/O failure into a SeedError."""
    options = dict(storage_options or {})
    options.setdefault("compression", "infer")  # seeds.jsonl.gz reads like seeds.jsonl
    if _is_local(path):
        local = fsspec.core.split_protocol(path)[1]
        if not os.path.exists(local):
            raise SeedError(f"seed file not found: {path}")
        if os.path.isdir(local):
            raise SeedError(f"seed path is a folder, expected a file: {path}")
    try:
        opened = fsspec.open(path, mode="rb", **options)
        f = opened.open()
    except FileNotFoundError:
        raise SeedError(f"seed file not found: {path}") from None
    except Exception as exc:
        # Opening is where remote filesystems fail for configuration reasons (an unknown
        # protocol, a filesystem package not installed, a bad storage option, missing
        # credentials), and not all of those are OSErrors. Parsing below is not covered
        # by this broad catch, so bugs there still surface as themselves.
        raise SeedError(f"cannot open seed file {path}: {_one_line(exc)}") from exc
    try:
        yield f
    except SeedError:
        raise
    except FileNotFoundError:
        raise SeedError(f"seed file not found: {path}") from None
    except (OSError, EOFError, pa.ArrowException) as exc:
        # A dropped connection, a broken compressed stream or a corrupt Parquet file.
        raise SeedError(f"cannot read seed file {path}: {_one_line(exc)}") from exc
    finally:
        opened.close()


def _one_line(exc: BaseException) -> str:
    text = _WS.sub(" ", str(exc)).strip() or type(exc).__name__
    return text[:300]


def _text_stream(f: IO[bytes]) -> io.TextIOWrapper:
    # utf-8-sig drops a byte-order mark; "replace" keeps a stray bad byte from killing a
    # whole file; newline="" is what the csv module wants.
    return io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")


def _first_json_value(text: str) -> Any:
    """The first element of a JSON list that starts ``text`` (possibly cut), or None."""
    body = text.lstrip()[1:].lstrip()
    try:
        value, _ = json.JSONDecoder().raw_decode(body)
    except (ValueError, RecursionError):
        return None
    return value


def _layout_of_record(record: Any) -> str | None:
    if isinstance(record, dict):
        if "turns" in record:
            return "shipped"
        if "context" in record and "response" in record:
            return "pairs"
    return None


def _csv_header(text: str) -> list[str]:
    first = text.splitlines()[0] if text else ""
    try:
        row = next(csv.reader([first]), [])
    except csv.Error:
        return []
    return [c.strip().lower() for c in row]


def _container_of(head: bytes, path: str) -> str:
    """``parquet``, ``json``, ``jsonl`` or ``csv`` from the first bytes of a file."""
    if not head.replace(b"\xef\xbb\xbf", b"").strip():
        raise SeedError(f"seed file is empty: {path}")
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    start = head.decode("utf-8-sig", errors="replace").lstrip()[:1]
    return {"[": "json", "{": "jsonl"}.get(start, "csv")


def _parquet_columns(f: IO[bytes]) -> set[str]:
    import pyarrow.parquet as pq

    f.seek(0)
    return {n.lower() for n in pq.ParquetFile(f).schema_arrow.names}


def _detect(head: bytes, f: IO[bytes], container: str, path: str) -> str:
    """The layout of a file from its head (and, for Parquet, its schema)."""
    if container == "parquet":
        names = _parquet_columns(f)
        if {"conv_id", "utterance"} <= names:
            return "ed_parquet"
        if {"context", "response"} <= names:
            return "pairs"
        raise SeedError(
            f"cannot detect the seed layout of {path}: Parquet columns {sorted(names)} "
            "are neither ED's (conv_id, utterance, ...) nor context/response"
        )
    text = head.decode("utf-8-sig", errors="replace")
    if container == "json":
        layout = _layout_of_record(_first_json_value(text))
        if layout is None:
            raise SeedError(
                f"cannot detect the seed layout of {path}: the JSON list's first element "
                "is not a {turns} or {context, response} object"
            )
        return layout
    if container == "jsonl":
        lines = text.splitlines()
        if len(head) == _SNIFF_BYTES:
            lines = lines[:-1]  # the last line may be cut off
        for line in lines:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue
            layout = _layout_of_record(record)
            if layout is not None:
                return layout
        raise SeedError(
            f"cannot detect the seed layout of {path}: no JSON line in the first "
            f"{_SNIFF_BYTES // 1024} KiB has 'turns' or 'context' and 'response'"
        )
    header = _csv_header(text)
    if set(_ED_COLUMNS) <= set(header):
        return "ed_csv"
    if {"dialogue_id", "turns", "text"} <= set(header):
        return "ed_turns_csv"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    raise SeedError(
        f"cannot detect the seed layout of {path}: not Parquet, JSON, JSONL or a known ED CSV header (starts {first!r})"
    )


def _check_layout_name(layout: str, path: str) -> str:
    name = _LAYOUT_ALIASES.get(layout, layout)
    if name != "auto" and name not in LAYOUTS:
        raise SeedError(f"unknown seed layout {layout!r} for {path}; expected auto or one of {', '.join(LAYOUTS)}")
    return name


# Which containers a named layout reads, and the columns it needs there.
_CONTAINERS: dict[str, tuple[str, ...]] = {
    "shipped": ("json", "jsonl"),
    "pairs": ("json", "jsonl", "parquet"),
    "ed_parquet": ("parquet",),
    "ed_csv": ("csv",),
    "ed_turns_csv": ("csv",),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "pairs": ("context", "response"),
    "ed_parquet": _ED_COLUMNS,
    "ed_csv": _ED_COLUMNS,
    "ed_turns_csv": _TURN_COLUMNS,
}


def _missing_columns_error(path: str, layout: str, missing: list[str]) -> SeedError:
    return SeedError(f"seed file {path} is not layout {layout}: missing column(s) {', '.join(missing)}")


def _resolve(path: str, layout: str, storage_options: Mapping[str, Any] | None) -> tuple[str, str]:
    """Check the source and settle ``(layout, container)``; raises SeedError.

    A named layout is checked against what decides it cheaply: the container, and for
    CSV and Parquet the column names. Named JSON/JSONL layouts are not checked record by
    record: a file whose first records are broken still reads, and its drops are counted.
    """
    wanted = _check_layout_name(layout, path)
    with _open_binary(path, storage_options) as f:
        head = f.read(_SNIFF_BYTES)
        container = _container_of(head, path)
        if wanted == "auto":
            return _detect(head, f, container, path), container
        allowed = _CONTAINERS[wanted]
        if container not in allowed:
            raise SeedError(
                f"seed file {path} looks like {container.upper()}, which layout {wanted!r} "
                f"does not read (it reads {', '.join(a.upper() for a in allowed)})"
            )
        if container in ("csv", "parquet"):
            if container == "csv":
                names = set(_csv_header(head.decode("utf-8-sig", errors="replace")))
            else:
                names = _parquet_columns(f)
            missing = [c for c in _REQUIRED[wanted] if c not in names]
            if missing:
                raise _missing_columns_error(path, wanted, missing)
        return wanted, container


# ---------------------------------------------------------------------------
# Record sources: (position, record) from JSON, JSONL and Parquet


def _json_records(f: IO[bytes], path: str, drops: Counter[str]) -> Iterator[tuple[int, Any]]:
    try:
        data = json.load(_text_stream(f))
    except (ValueError, RecursionError) as exc:
        raise SeedError(f"cannot parse JSON in {path}: {_one_line(exc)}") from None
    if not isinstance(data, list):
        raise SeedError(f"seed file {path} holds a JSON {type(data).__name__}, expected a list")
    yield from enumerate(data)


def _jsonl_records(f: IO[bytes], path: str, drops: Counter[str]) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(_text_stream(f), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except (ValueError, RecursionError):
            # RecursionError: a line of thousands of nested brackets.
            drops["bad_json"] += 1


def _parquet_records(f: IO[bytes], path: str, columns: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    present = {n.lower(): n for n in pf.schema_arrow.names}
    wanted = [present[c] for c in columns if c in present]
    index = 0
    for batch in pf.iter_batches(columns=wanted, batch_size=65_536):
        for row in batch.to_pylist():
            yield index, {k.lower(): v for k, v in row.items()}
            index += 1


# ---------------------------------------------------------------------------
# Layout parsers: records -> seeds


def _shipped_seeds(records: Iterable[tuple[int, Any]], stem: str, drops: Counter[str]) -> Iterator[_Seed]:
    """Dialogue records ``{"dialogue_id", "emotion", "turns"}`` -> seeds."""
    for pos, record in records:
        if not isinstance(record, dict):
            drops["not_an_object"] += 1
            continue
        if "turns" not in record:
            drops["missing_field"] += 1
            continue
        raw_turns = record["turns"]
        if not isinstance(raw_turns, list) or not all(isinstance(t, str) for t in raw_turns):
            drops["non_string"] += 1
            continue
        turns = [clean_text(t) for t in raw_turns]
        if not all(turns):
            drops["empty_text"] += 1
            continue
        if len(turns) < 2:
            drops["no_listener_turn"] += 1
            continue
        if record.get("dialogue_id") is None:
            key = f"{stem}:{pos}"
        else:
            key = _id_text(record["dialogue_id"])
            if key is None:
                drops["bad_seed_id"] += 1
                continue
        emotion = record.get("emotion")
        emotion = clean_text(emotion) if isinstance(emotion, str) else ""
        for t, context, response in dialogue_pairs(turns):
            yield _Seed(f"{key}:{t}", context, response, emotion)


_LISTENER_PREFIX = re.compile(r"^listener\s*:\s*", re.IGNORECASE)


def _pair_seeds(records: Iterable[tuple[int, Any]], stem: str, drops: Counter[str]) -> Iterator[_Seed]:
    """``{"context", "response"}`` records -> seeds; the context is kept as given."""
    for pos, record in records:
        if not isinstance(record, dict):
            drops["not_an_object"] += 1
            continue
        if record.get("context") is None or record.get("response") is None:
            drops["missing_field"] += 1
            continue
        raw_context, raw_response = record["context"], record["response"]
        if not isinstance(raw_context, str) or not isinstance(raw_response, str):
            drops["non_string"] += 1
            continue
        context = normalize_context(raw_context)
        response = _LISTENER_PREFIX.sub("", clean_text(raw_response))
        if not context or not response:
            drops["empty_text"] += 1
            continue
        if not context.rsplit("\n", 1)[-1].startswith("Speaker: "):
            drops["context_not_speaker"] += 1
            continue
        given = record.get("seed_id")
        if given is None or given == "":
            seed_id = f"{stem}:{pos}"
        else:
            seed_id = _id_text(given)
            if seed_id is None:
                drops["bad_seed_id"] += 1
                continue
        emotion = record.get("emotion")
        emotion = clean_text(emotion) if isinstance(emotion, str) else ""
        yield _Seed(seed_id, context, response, emotion)


class _EdRow(NamedTuple):
    conv: str
    index: int
    text: str
    emotion: str
    speaker: int | None  # None: the role follows from the turn number


def _ed_row(
    conv: Any,
    index: Any,
    text: Any,
    emotion: Any,
    speaker: Any,
    *,
    has_speaker: bool,
    drops: Counter[str],
) -> _EdRow | None:
    """Validate one utterance row of any ED layout; count and return None when unusable."""
    if conv is None or index is None or text is None or (has_speaker and speaker is None):
        drops["missing_field"] += 1
        return None
    conv_id = _id_text(conv)
    if conv_id is None:
        drops["missing_field"] += 1
        return None
    idx = _as_int(index)
    spk = _as_int(speaker) if has_speaker else None
    if idx is None or (has_speaker and spk is None):
        drops["bad_number"] += 1
        return None
    if not isinstance(text, str):
        drops["non_string"] += 1
        return None
    cleaned = detokenize(clean_text(text))
    if not cleaned:
        drops["empty_text"] += 1
        return None
    label = clean_text(emotion) if isinstance(emotion, str) else ""
    return _EdRow(conv_id, idx, cleaned, label, spk)


def _ed_seeds(rows: Iterable[_EdRow], drops: Counter[str]) -> Iterator[_Seed]:
    """Group utterance rows into dialogues (first-seen order) and cut them into seeds.

    Rows are grouped by id over the whole file, not only when consecutive, so a file
    sorted some other way still reads. A dialogue is used up to its first break: a
    missing or repeated turn number (a skipped malformed line leaves one), or, where
    speakers are known, the same person twice in a row. A history with a hole in it
    would be a wrong context, so nothing after a break is used.
    """
    dialogues: dict[str, list[_EdRow]] = {}
    for row in rows:
        dialogues.setdefault(row.conv, []).append(row)
    for conv, conv_rows in dialogues.items():
        conv_rows.sort(key=lambda r: r.index)
        turns: list[str] = []
        cut: str | None = None
        first_speaker = conv_rows[0].speaker
        for i, row in enumerate(conv_rows):
            if row.index != i + 1:
                cut = "turn_gap"
                break
            if row.speaker is not None and (row.speaker == first_speaker) != (i % 2 == 0):
                cut = "non_alternating"
                break
            turns.append(row.text)
        if cut:
            drops[cut] += 1
        elif len(turns) < 2:
            drops["no_listener_turn"] += 1
        emotion = conv_rows[0].emotion
        for t, context, response in dialogue_pairs(turns):
            yield _Seed(f"ed:{conv}:{t}", context, response, emotion)


def _csv_rows(
    f: IO[bytes],
    path: str,
    required: tuple[str, ...],
    layout: str,
    drops: Counter[str],
    *,
    split_first: bool,
) -> Iterator[dict[str, str]]:
    """Rows of a headed CSV as dicts (lower-cased names); bad lines are counted.

    ED's original release is written without quoting (commas inside text are
    ``_comma_``), so its lines are split on commas first and only a line with the wrong
    field count gets a second try as quoted CSV; its few lines with stray extra commas
    are then skipped. The turn-level CSV is properly quoted and goes through ``csv``.
    """
    text = _text_stream(f)
    header_line = text.readline()
    header = [c.strip().lower() for c in next(csv.reader([header_line]), [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise _missing_columns_error(path, layout, missing)
    width = len(header)
    if split_first:
        for line in text:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(",")
            if len(fields) != width:
                try:
                    fields = next(csv.reader([line]), [])
                except csv.Error:
                    fields = []
            if len(fields) != width:
                drops["malformed_line"] += 1
                continue
            yield dict(zip(header, fields))
        return
    reader = csv.reader(text)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error:  # a field over the size limit, a NUL byte, ...
            drops["malformed_line"] += 1
            continue
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if len(fields) != width:
            drops["malformed_line"] += 1
            continue
        yield dict(zip(header, fields))


def _ed_csv_seeds(f: IO[bytes], path: str, drops: Counter[str]) -> Iterator[_Seed]:
    rows = (
        _ed_row(
            r["conv_id"],
            r["utterance_idx"],
            r["utterance"],
            r["context"],
            r["speaker_idx"],
            has_speaker=True,
            drops=drops,
        )
        for r in _csv_rows(f, path, _ED_COLUMNS, "ed_csv", drops, split_first=True)
    )
    return _ed_seeds((r for r in rows if r is not None), drops)


def _ed_turns_seeds(f: IO[bytes], path: str, drops: Counter[str]) -> Iterator[_Seed]:
    rows = (
        _ed_row(r["dialogue_id"], r["turns"], r["text"], r["dialogue_emotion"], None, has_speaker=False, drops=drops)
        for r in _csv_rows(f, path, _TURN_COLUMNS, "ed_turns_csv", drops, split_first=False)
    )
    return _ed_seeds((r for r in rows if r is not None), drops)


def _ed_parquet_seeds(f: IO[bytes], path: str, drops: Counter[str]) -> Iterator[_Seed]:
    missing = [c for c in _ED_COLUMNS if c not in _parquet_columns(f)]
    if missing:
        raise _missing_columns_error(path, "ed_parquet", missing)
    f.seek(0)
    rows = (
        _ed_row(
            r.get("conv_id"),
            r.get("utterance_idx"),
            r.get("utterance"),
            r.get("context"),
            r.get("speaker_idx"),
            has_speaker=True,
            drops=drops,
        )
        for _, r in _parquet_records(f, path, _ED_COLUMNS)
    )
    return _ed_seeds((r for r in rows if r is not None), drops)


_RecordSource = Callable[[IO[bytes], str, "Counter[str]"], Iterator[tuple[int, Any]]]


def _record_source(container: str) -> _RecordSource:
    if container == "json":
        return _json_records
    if container == "jsonl":
        return _jsonl_records
    return lambda f, path, drops: _parquet_records(f, path, ("context", "response", "emotion", "seed_id"))


def _seeds(f: IO[bytes], path: str, layout: str, container: str, drops: Counter[str]) -> Iterator[_Seed]:
    stem = _file_stem(path)
    if layout == "shipped":
        return _shipped_seeds(_record_source(container)(f, path, drops), stem, drops)
    if layout == "pairs":
        return _pair_seeds(_record_source(container)(f, path, drops), stem, drops)
    if layout == "ed_csv":
        return _ed_csv_seeds(f, path, drops)
    if layout == "ed_turns_csv":
        return _ed_turns_seeds(f, path, drops)
    return _ed_parquet_seeds(f, path, drops)


def _digest(*parts: str) -> bytes:
    """16 bytes standing for the strings (a set of them is ~10x smaller than of the strings)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.digest()


def _unique(seeds: Iterable[_Seed], drops: Counter[str], limit: int | None) -> Iterator[_Seed]:
    """Drop exact repeats and reused ids, keep file order, stop at ``limit``. Remembers a
    digest per seed, not its text: a million seeds cost ~150 MB here, not their size."""
    seen_pairs: set[bytes] = set()
    seen_ids: set[bytes] = set()
    kept = 0
    for seed in seeds:
        pair = _digest(seed.context, seed.response)
        if pair in seen_pairs:
            drops["duplicate_pair"] += 1
            continue
        sid = _digest(seed.seed_id)
        if sid in seen_ids:
            drops["duplicate_seed_id"] += 1
            continue
        seen_pairs.add(pair)
        seen_ids.add(sid)
        yield seed
        kept += 1
        if limit is not None and kept >= limit:
            return


# ---------------------------------------------------------------------------
# Public API


def default_seed_path() -> str:
    """Path of the seed file shipped inside the package (``synth_empathy/data/seeds.jsonl``)."""
    return str(importlib.resources.files("synth_empathy").joinpath("data", "seeds.jsonl"))


def validate_seed_source(path: str, layout: str = "auto", storage_options: dict[str, Any] | None = None) -> str:
    """Cheap pre-flight check, meant to run before any model loads.

    Checks that the file exists, is not empty and has a detectable (or the named) layout;
    reads only the head of the file (and a Parquet footer). Returns the layout name;
    raises :class:`SeedError` otherwise. Row-level problems are not looked for here.
    """
    path = os.fspath(path)
    layout, _ = _resolve(path, layout, storage_options)
    return layout


def _check_limit(path: str, limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SeedError(f"seed limit must be a positive integer or None, got {limit!r} (for {path})")


class SeedBatches:
    """A seed source read in Arrow batches of at most ``batch_rows`` seeds (the seed stage's
    parts), so a million seeds never sit in memory at once. Iterate it once; afterwards
    :attr:`dropped`, :attr:`kept` and :attr:`layout` say what the read found. Raises as
    :func:`read_seeds` does, the ``no usable seeds`` error after the last batch."""

    def __init__(
        self,
        path: str,
        *,
        layout: str = "auto",
        limit: int | None = None,
        storage_options: dict[str, Any] | None = None,
        batch_rows: int = 100_000,
    ) -> None:
        self.path = os.fspath(path)
        _check_limit(self.path, limit)
        self.layout, self._container = _resolve(self.path, layout, storage_options)
        self.limit, self.storage_options, self.batch_rows = limit, storage_options, batch_rows
        self.drops: Counter[str] = Counter()
        self.kept = 0

    @property
    def dropped(self) -> dict[str, int]:
        return {k: v for k, v in self.drops.items() if v}

    def summary(self) -> str:
        """One line for logs and reports."""
        return _summary(self.kept, self.path, self.layout, self.dropped)

    def __iter__(self) -> Iterator[pa.Table]:
        name = _file_name(self.path)
        with _open_binary(self.path, self.storage_options) as f:
            seeds = _unique(_seeds(f, self.path, self.layout, self._container, self.drops), self.drops, self.limit)
            batch: list[_Seed] = []
            try:
                for seed in seeds:
                    batch.append(seed)
                    if len(batch) >= self.batch_rows:
                        yield _arrow(batch, name)
                        self.kept += len(batch)
                        batch = []
            except UnicodeError as exc:  # defensive: decoding already uses errors="replace"
                raise SeedError(f"cannot decode seed file {self.path}: {_one_line(exc)}") from exc
            if batch:
                yield _arrow(batch, name)
                self.kept += len(batch)
        if not self.kept:
            why = _format_counts(self.dropped) if self.dropped else "no records found"
            raise SeedError(
                f"no usable seeds in {self.path} (layout {self.layout}): dropped {sum(self.dropped.values()):,} ({why})"
            )
        log.info("%s", self.summary())


def _summary(kept: int, path: str, layout: str, dropped: dict[str, int]) -> str:
    head = f"{kept:,} seeds from {path} (layout {layout})"
    if not dropped:
        return head + "; nothing dropped"
    return f"{head}; dropped {sum(dropped.values()):,}: {_format_counts(dropped)}"


def _arrow(seeds: list[_Seed], source: str) -> pa.Table:
    columns = {c: [getattr(s, c) for s in seeds] for c in ("seed_id", "context", "response", "emotion")}
    columns["source"] = [source] * len(seeds)
    return pa.table({c: pa.array(columns[c], type=pa.string()) for c in COLUMNS})


def read_seeds(
    path: str,
    *,
    layout: str = "auto",
    limit: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> SeedTable:
    """Read a seed source into a :class:`SeedTable`.

    ``path`` is a local path or an fsspec URL (``s3://...``), opened with
    ``fsspec.open(path, **storage_options)`` (compression inferred from the name unless
    ``storage_options`` sets it). ``layout`` is ``"auto"`` or one of :data:`LAYOUTS`.
    ``limit`` keeps the first ``limit`` seeds after de-duplication, in file order, so
    the same file and limit always give the same seeds. (:class:`SeedBatches` reads the
    same seeds a batch at a time.)

    Raises :class:`SeedError` (one line, naming the path) for a missing, empty,
    unreadable or unrecognised file, and when no usable seed is left.
    """
    batches = SeedBatches(path, layout=layout, limit=limit, storage_options=storage_options)
    table = pa.concat_tables(list(batches))
    frame = table.to_pandas()[list(COLUMNS)]
    return SeedTable(frame=frame, dropped=batches.dropped, path=batches.path, layout=batches.layout)
