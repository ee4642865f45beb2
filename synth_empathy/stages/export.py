"""Writers for the selected set (method step 5): alpaca and chat-messages JSONL.

Both formats are the ones LLaMA-Factory reads; :func:`dataset_info_entry` gives the
matching ``dataset_info.json`` entries so users can drop the files into its ``data/``
folder next to the EmpatheticDialogues training set.

Input rows are mappings with at least ``seed_id, sample_id, instruction, output,
history`` (``history`` as in :class:`synth_empathy.core.turn_sampling.Sample`).

**Alpaca layout.** ``instruction`` carries the sampled dialogue itself (the
``Speaker:``/``Listener:`` lines ending in an open ``Listener:``), ``input`` is ``""``
and ``output`` is the target. Reasons: the dialogue already says what to do (the open
``Listener:`` line), it is exactly the prompt the discriminator answered during
quality selection, and it is how the authors laid out their training records. A fixed
task line in ``instruction`` with the dialogue in ``input`` would add the same constant
words to every sample, since LLaMA-Factory joins the two with a newline anyway.
Records carry exactly these three keys: row ids are left out, because extra keys are
read only when ``dataset_info.json`` maps them.

The writers are pure apart from :func:`write_jsonl`, which writes atomically, and
:func:`write_selected`, which streams a run's selection into both files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

ALPACA = "alpaca"
CHAT = "chat"

_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def iter_alpaca(rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, str]]:
    """Alpaca records: ``{"instruction": dialogue, "input": "", "output": target}``, one by one."""
    for row in rows:
        yield {"instruction": str(row["instruction"]), "input": "", "output": str(row["output"])}


def to_alpaca(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """:func:`iter_alpaca` as a list."""
    return list(iter_alpaca(rows))


def _turns(history: Any) -> list[dict[str, str]]:
    """Normalise a ``history`` value read back from any table format.

    Parquet gives a list (or a numpy array, via pandas) of dicts; a JSON column gives
    a string.
    """
    if isinstance(history, str):
        history = json.loads(history)
    return [{"role": str(t["role"]), "content": str(t["content"])} for t in history]


def to_chat_messages(
    rows: Iterable[Mapping[str, Any]], *, system: str | None = None
) -> list[dict[str, list[dict[str, str]]]]:
    """:func:`iter_chat_messages` as a list."""
    return list(iter_chat_messages(rows, system=system))


def iter_chat_messages(
    rows: Iterable[Mapping[str, Any]], *, system: str | None = None
) -> Iterator[dict[str, list[dict[str, str]]]]:
    """Chat records: ``{"messages": [system?, user, assistant, ..., user, assistant]}``.

    The history turns are followed by the target as the final assistant turn. When
    ``system`` is given it becomes a leading ``{"role": "system"}`` message, which
    LLaMA-Factory's sharegpt reader takes as the system prompt (via ``system_tag``).
    Raises ``ValueError`` for a history that does not alternate user/assistant starting
    and ending with a user turn, because LLaMA-Factory would silently skip such a row.
    """
    for row in rows:
        turns = _turns(row["history"])
        expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
        roles = [t["role"] for t in turns]
        if not turns or roles != expected or roles[-1] != "user":
            raise ValueError(
                f"sample {row.get('sample_id')!r}: history roles {roles} must alternate "
                "user/assistant, starting and ending with user"
            )
        messages = [{"role": "system", "content": system}] if system else []
        messages += turns
        messages.append({"role": "assistant", "content": str(row["output"])})
        yield {"messages": messages}


def _dump_lines(records: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    count = 0
    for record in records:
        # ensure_ascii=False keeps the files readable. json escapes \n and \r, but
        # leaves U+0085/U+2028/U+2029 raw, and str.splitlines() splits on them.
        line = json.dumps(record, ensure_ascii=False)
        out.write(line.translate(_LINE_BREAK_ESCAPES))
        out.write("\n")
        count += 1
    return count


def _is_local(fs: Any) -> bool:
    protocol = getattr(fs, "protocol", None)
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol or ())
    return any(p in ("file", "local") for p in protocols)


def write_jsonl(
    records: Iterable[Mapping[str, Any]],
    path_or_file: str | os.PathLike[str] | IO[str],
    fs: Any = None,
) -> int:
    """Write one JSON object per line; return the number of records written.

    * an open text file: written to as is (the caller owns it);
    * a local path (or an fsspec local filesystem): written to a temporary file in the
      same folder, flushed to disk, then renamed over the target, so a reader never
      sees a half-written file and a crash leaves the old file (or none);
    * an fsspec filesystem or a URL such as ``s3://bucket/out.jsonl``: written through
      ``fs.open`` inside ``fs.transaction``, so the object appears only once every
      record is written and a failed write leaves no partial object. (An fsspec
      filesystem instance holds one transaction at a time: don't share one instance
      between threads writing at once.)
    """
    if hasattr(path_or_file, "write"):
        return _dump_lines(records, path_or_file)  # type: ignore[arg-type]

    path = os.fspath(path_or_file)  # type: ignore[arg-type]
    if fs is None and "://" in path and not path.startswith("file://"):
        import fsspec  # only remote targets need it

        fs, path = fsspec.core.url_to_fs(path)
    if fs is not None and not _is_local(fs):
        # Closing an fsspec file publishes it even when the block raised; inside a
        # transaction the upload is committed only if everything was written.
        with fs.transaction, fs.open(path, "w", encoding="utf-8") as out:
            return _dump_lines(records, out)

    if path.startswith("file://"):
        path = path[len("file://") :]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            count = _dump_lines(records, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def dataset_info_entry(name: str, file_name: str, kind: str) -> dict[str, dict[str, Any]]:
    """The LLaMA-Factory ``dataset_info.json`` entry for a file written here.

    Returns ``{name: entry}`` so entries merge with ``dict.update``. ``kind`` is
    ``"alpaca"`` (from :func:`to_alpaca`) or ``"chat"`` (from :func:`to_chat_messages`).
    """
    if kind == ALPACA:
        entry: dict[str, Any] = {
            "file_name": file_name,
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    elif kind == CHAT:
        entry = {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    else:
        raise ValueError(f"dataset kind must be {ALPACA!r} or {CHAT!r}, got {kind!r}")
    return {name: entry}


EXPORT_COLUMNS = ["sample_id", "instruction", "output", "history", "pick_order"]
_WINDOW = 65_536  # rows per batch or window: what the export holds at a time


def rows_in_pick_order(data: Any, columns: list[str] = EXPORT_COLUMNS, window: int = _WINDOW) -> Iterator[dict]:
    """The rows of a selected table (a ``pyarrow.dataset.Dataset``) in pick order, streamed.

    The selection writes its parts in pick order, so they are read part by part, a batch
    at a time (checked on the ``pick_order`` column alone first). Parts in any other
    order are read one window of picks at a time, one scan per window.
    """
    import pyarrow.compute as pc

    picks = data.to_table(columns=["pick_order"]).column("pick_order").to_numpy()
    if len(picks) == 0:
        return
    if (np.diff(picks) > 0).all():
        for batch in data.to_batches(columns=columns, batch_size=window, batch_readahead=1, fragment_readahead=1):
            yield from batch.to_pylist()
        return
    for first in range(int(picks.min()), int(picks.max()) + 1, window):
        expr = (pc.field("pick_order") >= first) & (pc.field("pick_order") < first + window)
        yield from data.to_table(columns=columns, filter=expr).sort_by("pick_order").to_pylist()


def write_selected(store: Any) -> dict[str, int]:
    """Export a run's ``selected`` stage next to it: both JSONL files and their
    ``dataset_info.json``. Rows go out in pick order (the most diverse first), so a
    prefix of either file is itself a k-center selection. The rows are streamed, one
    batch at a time, once per file."""
    import pyarrow.dataset as pds

    data = pds.dataset(store.fresh(store.path("selected")), filesystem=store.arrow_fs, format="parquet")
    files = {ALPACA: "selected.alpaca.jsonl", CHAT: "selected.chat.jsonl"}
    counts = {
        ALPACA: write_jsonl(iter_alpaca(rows_in_pick_order(data)), store.path(files[ALPACA]), fs=store.fs),
        CHAT: write_jsonl(iter_chat_messages(rows_in_pick_order(data)), store.path(files[CHAT]), fs=store.fs),
    }
    info: dict[str, Any] = {}
    for kind, name in files.items():
        info.update(dataset_info_entry(f"synth_empathy_{kind}", name, kind))
    store.write_json("dataset_info.json", info)
    return counts
